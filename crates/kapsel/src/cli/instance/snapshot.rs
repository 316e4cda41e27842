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
    /// Snapshot an instance: a running or paused VM's memory, state and disk (paused for it,
    /// resumed after; the disk becomes a copy-on-write layer), a stopped VM's disk, or a
    /// container's writable layer (copied while it is frozen).
    Create(SnapArgs),
    /// List an instance's snapshots.
    List(ListArgs),
    /// Restore from a snapshot: a VM's disk goes back to the snapshot's (later writes are
    /// dropped), then a snapshot with memory resumes in a new VMM, and a disk-only one
    /// leaves the VM stopped (or boots it again if it was running); a stopped container
    /// gets the snapshot's files back.
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
