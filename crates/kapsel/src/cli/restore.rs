//! `kapsel restore DIR`: resume a snapshotted VM in a new process, optionally as a clone with
//! its own TAP, vsock socket and disk (see `vmm::restore_overrides`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use super::run::{finish, parse_console, ConsoleArg, ControlArgs};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot directory (holding `state` and `memory`).
    pub snapshot: PathBuf,
    /// Override a network card of the snapshot: `id=net0,tap=NAME|auto[,mac=…][,ip=ADDR/N]`
    /// (repeatable). The guest keeps using the MAC it read at boot.
    #[arg(long = "net", value_name = "id=ID,tap=NAME[,mac=…][,ip=…]")]
    pub nets: Vec<String>,
    /// Override the vsock device: `socket=PATH[,cid=N]`.
    #[arg(long, value_name = "socket=PATH[,cid=N]")]
    pub vsock: Option<String>,
    /// Override a disk's image: `id=disk0,path=FILE[,format=raw|qcow2]` (repeatable; the
    /// saved format without `format=`); same size as the snapshot's disk.
    #[arg(long = "disk", value_name = "id=ID,path=FILE[,format=raw|qcow2]")]
    pub disks: Vec<String>,
    /// The serial console: `stdio` or `socket:PATH`, as for `kapsel run` (the daemon
    /// restores its instances with their console socket).
    #[arg(long, default_value = "stdio", value_parser = parse_console)]
    pub console: ConsoleArg,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub fn run(args: RestoreArgs, start: Instant) -> ExitCode {
    let overrides =
        match vmm::RestoreOverrides::parse(&args.nets, args.vsock.as_deref(), &args.disks) {
            Ok(o) => o,
            Err(e) => return super::fail(&e, vmm::exit::code::CONFIG_ERROR),
        };
    if let ConsoleArg::Socket(path) = &args.console {
        vmm::console::use_socket(path.clone());
    }
    let code = finish(vmm::restore_and_run(
        &args.snapshot,
        &overrides,
        start,
        &args.control.options(),
    ));
    vmm::console::remove_socket();
    code
}
