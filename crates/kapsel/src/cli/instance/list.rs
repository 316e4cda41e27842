//! `kapsel list [--format table|json]`.

use api::daemon::Instance;
use clap::{Args, ValueEnum};

use super::{print_json, Conn, VerbError, VerbResult};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub conn: Conn,
}

/// The table `list` prints.
pub fn table(instances: &[Instance]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "TYPE".into(),
        "STATUS".into(),
        "CPUS".into(),
        "MEMORY".into(),
        "PID".into(),
        "RESTARTS".into(),
        "IMAGE".into(),
    ]];
    for i in instances {
        rows.push([
            i.name.clone(),
            i.kind.as_str().into(),
            i.status.as_str().into(),
            i.config.cpus.to_string(),
            format!("{}M", i.config.memory_mib),
            i.pid.map_or("-".into(), |p| p.to_string()),
            i.restarts.to_string(),
            i.image.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn run(a: ListArgs) -> VerbResult {
    let list = a.conn.client().list().map_err(VerbError::from)?;
    match a.format {
        Format::Json => print_json(&list),
        Format::Table => {
            print!("{}", table(&list));
            Ok(())
        }
    }
}
