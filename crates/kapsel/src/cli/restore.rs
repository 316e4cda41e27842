//! `kapsel restore DIR`: resume a snapshotted VM in a new process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use super::run::{finish, ControlArgs};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot directory (holding `state` and `memory`).
    pub snapshot: PathBuf,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub fn run(args: RestoreArgs, start: Instant) -> ExitCode {
    finish(vmm::restore_and_run(
        &args.snapshot,
        start,
        &args.control.options(),
    ))
}
