//! Subcommands, one file each.

use clap::{Parser, Subcommand};
use std::error::Error;
use std::process::ExitCode;
use std::time::Instant;

/// Server virtualization for Linux hosts: KVM virtual machines and containers.
#[derive(Debug, Parser)]
#[command(name = "kapsel", version, about)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `vmm=debug`.
    #[arg(long, global = true, env = "KAPSEL_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot one virtual machine in the foreground, its serial console on stdin/stdout.
    Run(Box<run::RunArgs>),
    /// Restore a VM from a snapshot directory in this process and run it in the foreground.
    Restore(restore::RestoreArgs),
    /// Control a running VM through its API socket (info, pause, resume, snapshot, …).
    Vm(vm::VmArgs),
    /// OCI runtime commands (create, start, state, kill, delete) for container bundles.
    Oci(oci::OciArgs),
    /// Containers without the daemon: `container run` in the foreground.
    Container(self::container::ContainerArgs),
    /// Disk images: `disk create` (raw, qcow2, copy-on-write overlays), `disk info`.
    Disk(disk::DiskArgs),
    /// Run the host daemon in the foreground: owns every guest, REST API on a UNIX socket.
    Daemon(daemon::DaemonArgs),
    #[command(flatten)]
    Instance(instance::InstanceCommand),
    /// A daemon-managed container's monitor (started by the daemon, not by hand).
    #[command(hide = true)]
    ContainerMonitor(daemon::MonitorArgs),
}

mod container;
mod daemon;
mod disk;
mod instance;
mod oci;
mod restore;
mod run;
mod vm;

/// Parses the command line, runs the subcommand and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let start = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    init_logging(&cli.log);
    match cli.command {
        Command::Run(args) => run::run(*args, start),
        Command::Restore(args) => restore::run(args, start),
        Command::Vm(args) => vm::run(args),
        Command::Oci(args) => oci::run(args),
        Command::Container(args) => self::container::run(args),
        Command::Disk(args) => self::disk::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::Instance(cmd) => instance::run(cmd),
        Command::ContainerMonitor(args) => daemon::monitor(args),
    }
}

/// Help and version go to stdout as clap prints them; a usage error is one line on stderr
/// (clap's first line, without the "For more information" hint) and exit code 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let line = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    eprintln!("kapsel: {line}");
    ExitCode::from(2)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Prints `e` and its causes as one line (`kapsel: what: why: why`) and returns `code`.
pub fn fail(e: &dyn Error, code: u8) -> ExitCode {
    ::container::oci::print_error(e);
    ExitCode::from(code)
}
