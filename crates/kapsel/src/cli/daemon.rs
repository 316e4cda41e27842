//! `kapsel daemon`: the host daemon in the foreground (see the `daemon` crate).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Exit code when the daemon cannot start (state, socket, another daemon running).
const DAEMON_FAILED: u8 = 1;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// State: SQLite database, images and instance disks.
    #[arg(long, env = "KAPSEL_STATE_DIR", default_value = "/var/lib/kapsel")]
    pub state_dir: PathBuf,
    /// Runtime files: VMM console sockets.
    #[arg(long, env = "KAPSEL_RUN_DIR", default_value = "/run/kapsel")]
    pub run_dir: PathBuf,
    /// The API socket.
    #[arg(long, env = "KAPSEL_SOCKET", default_value = super::instance::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The kapsel binary that runs each VMM (default: this one).
    #[arg(long)]
    pub vmm_bin: Option<PathBuf>,
    /// Parent cgroup of all guests (relative to each hierarchy root).
    #[arg(long, default_value = "kapsel/vm")]
    pub cgroup_root: String,
    /// First delay before a supervised restart, in milliseconds (doubles while failing).
    #[arg(long, default_value_t = 1000)]
    pub restart_delay_ms: u64,
    /// Seconds `stop` waits for a clean VMM exit before killing it.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
}

pub fn run(args: DaemonArgs) -> ExitCode {
    let vmm_bin = match args.vmm_bin.map_or_else(std::env::current_exe, Ok) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kapsel: cannot find the kapsel binary to run VMMs: {e}");
            return ExitCode::from(DAEMON_FAILED);
        }
    };
    let config = daemon::DaemonConfig {
        state_dir: args.state_dir,
        run_dir: args.run_dir,
        socket: args.socket,
        vmm_bin,
        cgroup_root: args.cgroup_root,
        restart_delay: Duration::from_millis(args.restart_delay_ms),
        stop_timeout: Duration::from_secs(args.stop_timeout),
    };
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e, DAEMON_FAILED),
    }
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The spec file the daemon wrote (`monitor.json` in the instance's run directory).
    pub spec: PathBuf,
}

/// `kapsel container-monitor SPEC`: runs one daemon-managed container until it ends and
/// exits with its exit code (0 after a stop request).
pub fn monitor(args: MonitorArgs) -> ExitCode {
    match daemon::container::monitor::run(&args.spec) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => super::fail(&e, DAEMON_FAILED),
    }
}
