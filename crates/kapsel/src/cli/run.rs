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
    /// The serial console: `stdio` (stdin/stdout) or `socket:PATH` (a UNIX socket one client
    /// at a time attaches to; recent output is replayed to a client that attaches later).
    #[arg(long, default_value = "stdio", value_parser = parse_console)]
    pub console: ConsoleArg,
    /// A network card on a TAP (repeatable):
    /// `tap=NAME|auto[,mac=MAC][,ip=ADDR/PREFIX][,bw=BYTES/s][,ops=N/s][,rx_bw=…][,tx_bw=…]…`.
    #[arg(long = "net", value_name = "OPTIONS")]
    pub nets: Vec<String>,
    /// A vsock device: `cid=N,socket=PATH` (host-initiated: `CONNECT <port>` on PATH;
    /// guest-initiated to port P: PATH_P).
    #[arg(long, value_name = "OPTIONS")]
    pub vsock: Option<String>,
    /// A virtio-blk disk (repeatable; the first is /dev/vda):
    /// `path=FILE[,format=raw|qcow2][,readonly=on][,id=NAME]` (id: also the disk's serial;
    /// default diskN). Without format= the file is raw, and one that starts with a qcow2
    /// header is refused rather than guessed (a guest can write one into a raw disk).
    #[arg(long = "disk", value_name = "OPTIONS")]
    pub disks: Vec<String>,
    /// Add a virtio entropy device fed from the host's getrandom (off by default).
    #[arg(long)]
    pub rng: bool,
    /// A memory balloon, resized at run time with `kapsel vm balloon`:
    /// `[deflate_on_oom=on][,stats_period=SECS][,free_page_reporting=on]` (bare `--balloon`:
    /// none of these).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "")]
    pub balloon: Option<String>,
    /// Guest RAM backing, so a memory guarantee is real: `prealloc` (every page allocated
    /// before the guest starts), `lock` (pinned in RAM), `hugepages` (from the host's reserved
    /// 2 MiB pages; refused when too few are free), comma-separated.
    #[arg(long, value_name = "prealloc,lock,hugepages", default_value = "", value_parser = parse_backing)]
    pub memory_backing: vmm::memory_backing::MemoryBacking,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// How the VMM process itself is driven (shared by `run` and `restore`).
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Serve the per-VM control API (REST/JSON) on this UNIX socket.
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Start with the vCPUs paused; resume through the API.
    #[arg(long)]
    pub paused: bool,
    /// Run without the VMM's system-call filter (for debugging a call it blocks).
    #[arg(long)]
    pub no_seccomp: bool,
}

impl ControlArgs {
    pub fn options(&self) -> vmm::RunOptions {
        vmm::RunOptions {
            api_socket: self.api_socket.clone(),
            paused: self.paused,
            no_seccomp: self.no_seccomp,
        }
    }
}

/// Maps the end of a VM run to the process exit code; errors are one line on stderr.
pub fn finish(result: Result<vmm::VmExitReason, vmm::VmmError>) -> ExitCode {
    match result {
        Ok(reason) => {
            if reason.is_failure() {
                eprintln!("kapsel: {reason}");
            }
            ExitCode::from(reason.exit_code())
        }
        Err(e) => super::fail(&e, code::CONFIG_ERROR),
    }
}

fn config(args: &RunArgs) -> Result<VmConfig, vmm::config::ConfigError> {
    let memory = if args.memory.is_empty() {
        DEFAULT_MEMORY
    } else {
        parse_size(&args.memory)?
    };
    Ok(VmConfig {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        cpus: args.cpus,
        memory,
        boot_timer: args.boot_timer,
        nets: args
            .nets
            .iter()
            .map(|n| vmm::net_config::parse_net(n))
            .collect::<Result<_, _>>()?,
        vsock: args
            .vsock
            .as_deref()
            .map(vmm::net_config::parse_vsock)
            .transpose()?,
        disks: args
            .disks
            .iter()
            .map(|d| vmm::disk_config::parse_disk(d))
            .collect::<Result<_, _>>()?,
        rng: args.rng,
        balloon: args
            .balloon
            .as_deref()
            .map(vmm::balloon::parse_balloon)
            .transpose()?,
        memory_backing: args.memory_backing,
    })
}

fn parse_backing(s: &str) -> Result<vmm::memory_backing::MemoryBacking, String> {
    vmm::memory_backing::MemoryBacking::parse(s).map_err(|e| e.to_string())
}

/// Runs the VM and maps its end to the process exit code; errors are one line on stderr.
pub fn run(args: RunArgs, start: Instant) -> ExitCode {
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => return super::fail(&e, code::CONFIG_ERROR),
    };
    if let ConsoleArg::Socket(path) = &args.console {
        vmm::console::use_socket(path.clone());
    }
    let code = finish(vmm::run_vm(&config, start, &args.control.options()));
    vmm::console::remove_socket();
    code
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleArg {
    Stdio,
    Socket(PathBuf),
}

pub fn parse_console(s: &str) -> Result<ConsoleArg, String> {
    match s.split_once(':') {
        None if s == "stdio" => Ok(ConsoleArg::Stdio),
        Some(("socket", path)) if !path.is_empty() => Ok(ConsoleArg::Socket(PathBuf::from(path))),
        _ => Err(format!(
            "invalid console {s:?}: expected stdio or socket:PATH"
        )),
    }
}
