//! `kapsel exec NAME [-t] -- COMMAND...`: runs a command in a running container through the
//! daemon, prints its output and exits with its exit code.

use std::io::Write;
use std::process::ExitCode;

use api::daemon::ExecRequest;
use clap::Args;
use client::daemon::DaemonClient;
use client::Endpoint;

use super::{Conn, VerbError};

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub name: String,
    /// Run the command on a terminal (its errors then arrive with its output).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Kill the command after this many seconds (default 60).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs the command; `Ok` carries the command's exit code.
pub fn run(a: ExecArgs) -> Result<ExitCode, VerbError> {
    let req = ExecRequest {
        command: a.command,
        tty: a.tty,
        timeout_secs: a.timeout,
    };
    let wait = std::time::Duration::from_secs(a.timeout.unwrap_or(60) + 30);
    let client = DaemonClient::new(Endpoint::new(&a.conn.socket).with_timeout(wait));
    let r = client.exec(&a.name, &req).map_err(VerbError::from)?;
    let _ = std::io::stdout().write_all(r.stdout.as_bytes());
    let _ = std::io::stderr().write_all(r.stderr.as_bytes());
    Ok(ExitCode::from(r.exit_code.clamp(0, 255) as u8))
}
