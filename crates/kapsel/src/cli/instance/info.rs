//! `kapsel info NAME`.

use clap::Args;

use super::{print_json, Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct InfoArgs {
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run(a: InfoArgs) -> VerbResult {
    let inst = a.conn.client().get(&a.name).map_err(VerbError::from)?;
    print_json(&inst)
}
