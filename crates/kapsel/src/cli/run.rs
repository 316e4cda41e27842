//! `kapsel run`: boot one VM in the foreground, its serial console on stdin/stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use vmm::config::{DEFAULT_CMDLINE, DEFAULT_MEMORY};
use vmm::exit::code;
use vmm::{parse_size, VmConfig};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest kernel: bzImage, or ELF vmlinux (PVH entry when the kernel has one).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initial ramdisk (initramfs) for the kernel.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u16,
    /// Guest memory, e.g. 512M or 4G (a plain number is MiB).
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// Print a timestamp (since process start) for every byte the guest writes to port 0x80.
    #[arg(long)]
    pub boot_timer: bool,
}

fn config(args: RunArgs) -> Result<VmConfig, vmm::config::ConfigError> {
    let memory = if args.memory.is_empty() {
        DEFAULT_MEMORY
    } else {
        parse_size(&args.memory)?
    };
    Ok(VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory,
        boot_timer: args.boot_timer,
    })
}

/// Runs the VM and maps its end to the process exit code; errors are one line on stderr.
pub fn run(args: RunArgs, start: Instant) -> ExitCode {
    let config = match config(args) {
        Ok(c) => c,
        Err(e) => return super::fail(&e, code::CONFIG_ERROR),
    };
    match vmm::run_vm(&config, start) {
        Ok(reason) => {
            if reason.is_failure() {
                eprintln!("kapsel: {reason}");
            }
            ExitCode::from(reason.exit_code())
        }
        Err(e) => super::fail(&e, code::CONFIG_ERROR),
    }
}
