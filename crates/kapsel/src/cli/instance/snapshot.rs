//! `kapsel snapshot create|list|restore|delete`: answered by the daemon (not supported until
//! the VMM's snapshot API is wired in).

use clap::{Args, Subcommand};
use client::ClientError;

use super::{Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct SnapArgs {
    pub name: String,
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    Create(SnapArgs),
    List(SnapArgs),
    Restore(SnapArgs),
    Delete(SnapArgs),
}

pub fn run(c: SnapshotCommand) -> VerbResult {
    let (a, method) = match c {
        SnapshotCommand::List(a) => (a, "GET"),
        SnapshotCommand::Create(a) | SnapshotCommand::Restore(a) | SnapshotCommand::Delete(a) => {
            (a, "POST")
        }
    };
    let client = a.conn.client();
    let path = format!("/v1/instances/{}/snapshots", a.name);
    let resp = client
        .endpoint()
        .request_raw(method, &path, b"")
        .map_err(VerbError::from)?;
    let message = serde_json::from_slice::<api::ErrorBody>(&resp.body)
        .map(|e| e.error)
        .unwrap_or_else(|_| format!("HTTP {}", resp.status));
    Err(VerbError::Client(ClientError::Status {
        status: resp.status,
        message,
    }))
}
