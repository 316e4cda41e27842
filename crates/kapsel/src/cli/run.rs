//! `kapsel run`: boot one VM in the foreground.

use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest kernel: bzImage or ELF vmlinux.
    #[arg(long)]
    pub kernel: std::path::PathBuf,
}

pub fn run(_args: RunArgs) -> ExitCode {
    ExitCode::FAILURE
}
