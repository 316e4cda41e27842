//! `kapsel network create|list|delete`.

use api::daemon::CreateNetwork;
use clap::{Args, Subcommand};

use super::lifecycle::NameArgs;
use super::{print_json, Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name (at most 8 characters; the bridge is `kapsel-NAME`).
    pub name: String,
    /// The bridge's address with prefix, e.g. 10.77.0.1/24.
    #[arg(long)]
    pub address: String,
    /// No NAT to the host's uplink.
    #[arg(long)]
    pub no_nat: bool,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    Create(CreateArgs),
    List(ListArgs),
    Delete(NameArgs),
}

pub fn run(c: NetworkCommand) -> VerbResult {
    match c {
        NetworkCommand::Create(a) => {
            let req = CreateNetwork {
                name: a.name,
                address: a.address,
                nat: !a.no_nat,
            };
            let net = a
                .conn
                .client()
                .create_network(&req)
                .map_err(VerbError::from)?;
            println!("{} {} {}", net.name, net.bridge, net.address);
            Ok(())
        }
        NetworkCommand::List(a) => {
            print_json(&a.conn.client().networks().map_err(VerbError::from)?)
        }
        NetworkCommand::Delete(a) => {
            a.conn
                .client()
                .delete_network(&a.name)
                .map_err(VerbError::from)?;
            println!("{} deleted", a.name);
            Ok(())
        }
    }
}
