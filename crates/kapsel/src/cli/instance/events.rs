//! `kapsel events [--follow] [--since ID] [--format json]`.

use clap::Args;

use super::list::Format;
use super::{Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events as they happen.
    #[arg(long, short)]
    pub follow: bool,
    /// Only events after this id.
    #[arg(long, default_value_t = 0)]
    pub since: i64,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run(a: EventsArgs) -> VerbResult {
    let format = a.format;
    a.conn
        .client()
        .events(a.since, a.follow, |ev| {
            let line = match format {
                Format::Json => serde_json::to_string(&ev).unwrap_or_default(),
                Format::Table => format!(
                    "{} {:>6} {:<22} {:<16} {}",
                    ev.time_ms,
                    ev.id,
                    ev.kind,
                    ev.instance.as_deref().unwrap_or("-"),
                    ev.detail
                ),
            };
            use std::io::Write;
            let mut out = std::io::stdout();
            writeln!(out, "{line}").is_ok() && out.flush().is_ok()
        })
        .map_err(VerbError::from)
}
