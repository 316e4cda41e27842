//! `start`, `stop`, `restart`, `pause`, `resume`, `delete`.

use clap::Args;

use super::{Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct NameArgs {
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub name: String,
    /// Kill the VMM instead of asking it to stop.
    #[arg(long, short)]
    pub force: bool,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub name: String,
    /// Stop it first if it runs.
    #[arg(long, short)]
    pub force: bool,
    #[command(flatten)]
    pub conn: Conn,
}

fn report(r: Result<api::daemon::Instance, client::ClientError>) -> VerbResult {
    let inst = r.map_err(VerbError::from)?;
    println!("{} {}", inst.name, inst.status.as_str());
    Ok(())
}

pub fn start(a: NameArgs) -> VerbResult {
    report(a.conn.client().start(&a.name))
}

pub fn stop(a: StopArgs) -> VerbResult {
    report(a.conn.client().stop(&a.name, a.force))
}

pub fn restart(a: NameArgs) -> VerbResult {
    report(a.conn.client().restart(&a.name))
}

pub fn pause(a: NameArgs) -> VerbResult {
    report(a.conn.client().pause(&a.name))
}

pub fn resume(a: NameArgs) -> VerbResult {
    report(a.conn.client().resume(&a.name))
}

pub fn delete(a: DeleteArgs) -> VerbResult {
    a.conn
        .client()
        .delete(&a.name, a.force)
        .map_err(VerbError::from)?;
    println!("{} deleted", a.name);
    Ok(())
}
