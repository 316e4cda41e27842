//! `kapsel snapshot create|list|delete|restore NAME [SNAPSHOT]`.

use clap::{Args, Subcommand};

use super::{print_json, Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct SnapArgs {
    /// The instance.
    pub name: String,
    /// The snapshot.
    pub snapshot: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot an instance: a running or paused VM (paused for it, resumed after), or a
    /// container's writable layer (copied while it is frozen).
    Create(SnapArgs),
    /// List an instance's snapshots.
    List(ListArgs),
    /// Restore from a snapshot: a VM resumes the snapshot in a new VMM; a stopped
    /// container gets the snapshot's files back.
    Restore(SnapArgs),
    /// Delete a snapshot.
    Delete(SnapArgs),
}

pub fn run(c: SnapshotCommand) -> VerbResult {
    match c {
        SnapshotCommand::List(a) => print_json(
            &a.conn
                .client()
                .snapshots(&a.name)
                .map_err(VerbError::from)?,
        ),
        SnapshotCommand::Create(a) => {
            let s = a
                .conn
                .client()
                .create_snapshot(&a.name, &a.snapshot)
                .map_err(VerbError::from)?;
            println!("{} {} {}", s.instance, s.name, s.path);
            Ok(())
        }
        SnapshotCommand::Delete(a) => {
            a.conn
                .client()
                .delete_snapshot(&a.name, &a.snapshot)
                .map_err(VerbError::from)?;
            println!("{} {} deleted", a.name, a.snapshot);
            Ok(())
        }
        SnapshotCommand::Restore(a) => {
            let inst = a
                .conn
                .client()
                .restore_snapshot(&a.name, &a.snapshot)
                .map_err(VerbError::from)?;
            println!("{} {}", inst.name, inst.status.as_str());
            Ok(())
        }
    }
}
