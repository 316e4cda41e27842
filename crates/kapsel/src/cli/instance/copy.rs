//! `kapsel copy NAME NEW`: a new stopped instance with the same configuration and a linked
//! clone of the disk (a running VM is paused for a moment while its disk freezes into a
//! layer both share).

use clap::Args;

use super::{Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct CopyArgs {
    pub name: String,
    pub new_name: String,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run(a: CopyArgs) -> VerbResult {
    let inst = a
        .conn
        .client()
        .copy(&a.name, &a.new_name)
        .map_err(VerbError::from)?;
    println!("{} {}", inst.name, inst.status.as_str());
    Ok(())
}
