//! The daemon client verbs (`launch`, `list`, `info`, `start`, `stop`, …), one file per verb
//! or verb family, all talking to `kapsel daemon` over its socket.
//!
//! Exit codes: 0 success, 1 invalid request, 5 daemon unreachable, 6 not found,
//! 7 conflict (busy, exists, wrong state), 8 not supported yet, 9 daemon error.

mod config;
mod console;
mod copy;
mod events;
mod exec;
mod image;
mod info;
mod launch;
mod lifecycle;
mod list;
mod network;
mod snapshot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use client::daemon::DaemonClient;
use client::{ClientError, Endpoint};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/kapsel/daemon.sock";

/// How to reach the daemon (every client verb takes it).
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The daemon's API socket.
    #[arg(long, env = "KAPSEL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl Conn {
    pub fn client(&self) -> DaemonClient {
        DaemonClient::new(Endpoint::new(&self.socket))
    }
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Create an instance from an image and start it.
    Launch(launch::LaunchArgs),
    /// List instances (table, or `--format json`).
    #[command(alias = "ls")]
    List(list::ListArgs),
    /// Show one instance's state and configuration.
    Info(info::InfoArgs),
    /// Start a stopped instance.
    Start(lifecycle::NameArgs),
    /// Stop a running instance (`--force` kills its VMM).
    Stop(lifecycle::StopArgs),
    /// Stop and start an instance.
    Restart(lifecycle::NameArgs),
    /// Pause an instance's vCPUs.
    Pause(lifecycle::NameArgs),
    /// Resume a paused instance.
    Resume(lifecycle::NameArgs),
    /// Delete an instance (`--force` stops it first).
    #[command(alias = "rm")]
    Delete(lifecycle::DeleteArgs),
    /// Attach to an instance's serial console (detach with Ctrl-]).
    Console(console::ConsoleArgs),
    /// Run a command in a running container; its output and exit status come back.
    Exec(exec::ExecArgs),
    /// Instance snapshots.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Copy an instance (configuration and disk) to a new, stopped one.
    Copy(copy::CopyArgs),
    /// Show or change an instance's configuration (`config set NAME key=value ...`).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print lifecycle events (`--follow` to keep watching).
    Events(events::EventsArgs),
    /// Images in the storage pool.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Managed networks (bridge, DHCP/DNS, NAT).
    #[command(subcommand)]
    Network(network::NetworkCommand),
}

pub fn run(cmd: InstanceCommand) -> ExitCode {
    let result = match cmd {
        InstanceCommand::Launch(a) => launch::run(a),
        InstanceCommand::List(a) => list::run(a),
        InstanceCommand::Info(a) => info::run(a),
        InstanceCommand::Start(a) => lifecycle::start(a),
        InstanceCommand::Stop(a) => lifecycle::stop(a),
        InstanceCommand::Restart(a) => lifecycle::restart(a),
        InstanceCommand::Pause(a) => lifecycle::pause(a),
        InstanceCommand::Resume(a) => lifecycle::resume(a),
        InstanceCommand::Delete(a) => lifecycle::delete(a),
        InstanceCommand::Console(a) => console::run(a),
        InstanceCommand::Exec(a) => match exec::run(a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        InstanceCommand::Snapshot(c) => snapshot::run(c),
        InstanceCommand::Copy(a) => copy::run(a),
        InstanceCommand::Config(c) => config::run(c),
        InstanceCommand::Events(a) => events::run(a),
        InstanceCommand::Image(c) => image::run(c),
        InstanceCommand::Network(c) => network::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// A client verb failed: the daemon's error or a local one.
#[derive(Debug, thiserror::Error)]
pub enum VerbError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The distinct exit code for an error.
pub fn exit_code(e: &VerbError) -> u8 {
    match e {
        VerbError::Usage(_) | VerbError::Io { .. } => 1,
        VerbError::Client(ClientError::Connect { .. }) => 5,
        VerbError::Client(ClientError::Status { status, .. }) => match status {
            404 => 6,
            409 => 7,
            501 => 8,
            400..=499 => 1,
            _ => 9,
        },
        VerbError::Client(_) => 9,
    }
}

fn fail(e: &VerbError) -> ExitCode {
    let code = exit_code(e);
    if let VerbError::Client(ClientError::Connect { path, .. }) = e {
        eprintln!(
            "kapsel: cannot reach the daemon at {} (is `kapsel daemon` running?)",
            path.display()
        );
        return ExitCode::from(code);
    }
    super::fail(e, code)
}

pub type VerbResult = Result<(), VerbError>;

/// Prints `v` as pretty JSON.
pub fn print_json<T: serde::Serialize>(v: &T) -> VerbResult {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| VerbError::Usage(format!("cannot encode output: {e}")))?;
    println!("{text}");
    Ok(())
}

/// `512M`, `4G` or plain MiB → MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    vmm::parse_size(s)
        .map(|b| b >> 20)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_cause() {
        let st = |status| {
            VerbError::Client(ClientError::Status {
                status,
                message: String::new(),
            })
        };
        let codes = [
            exit_code(&st(400)),
            exit_code(&VerbError::Client(ClientError::Connect {
                path: "/x".into(),
                source: std::io::Error::from_raw_os_error(2),
            })),
            exit_code(&st(404)),
            exit_code(&st(409)),
            exit_code(&st(501)),
            exit_code(&st(500)),
        ];
        assert_eq!(codes, [1, 5, 6, 7, 8, 9]);
    }
}
