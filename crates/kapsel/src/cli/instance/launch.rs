//! `kapsel launch [--container] IMAGE NAME [--cpus --memory --restart ...] [-- COMMAND...]`.

use api::daemon::{CreateInstance, InstanceKind, RestartPolicy};
use clap::Args;

use super::config::update_from_pairs;
use super::{parse_mib, Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The image is a container image: run a container (its memory is its limit, --cpus
    /// caps it, the command after `--` runs instead of a shell on its console).
    #[arg(long)]
    pub container: bool,
    /// Image to boot (see `kapsel image list`).
    pub image: String,
    /// Name of the new instance (a-z, 0-9, '-').
    pub name: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u16,
    /// Guest memory, e.g. 256M or 2G.
    #[arg(long, default_value = "256M", value_parser = parse_mib)]
    pub memory: u64,
    /// Extra kernel command line, appended to the image's.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Restart policy: no, on-failure or always.
    #[arg(long, default_value = "no", value_parser = parse_policy)]
    pub restart: RestartPolicy,
    /// Start with the daemon.
    #[arg(long)]
    pub autostart: bool,
    /// CPU weight under contention (1-10000, default 100).
    #[arg(long)]
    pub cpu_weight: Option<u32>,
    /// CPU cap in percent of one host CPU.
    #[arg(long)]
    pub cpu_cap: Option<u32>,
    /// Host CPUs the VMM may run on (e.g. 0-1).
    #[arg(long)]
    pub cpuset: Option<String>,
    /// Memory limit of the VMM process (default: guest memory + 128M).
    #[arg(long, value_parser = parse_mib)]
    pub memory_limit: Option<u64>,
    /// Attach a NIC on this managed network (repeatable; a container has at most one).
    #[arg(long = "net", alias = "network")]
    pub networks: Vec<String>,
    /// Containers: the most tasks (processes and threads) it may have.
    #[arg(long = "pids")]
    pub pids_limit: Option<u64>,
    /// Containers: the command to run (default /bin/sh on the console).
    #[arg(last = true)]
    pub command: Vec<String>,
    /// Only create it, do not start it.
    #[arg(long)]
    pub no_start: bool,
    /// A setting as `kapsel config set` takes it (repeatable), e.g. `-c balloon=256M
    /// -c disk.limits=bw=20M -c memory.backing=prealloc`; in force from the first start.
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn parse_policy(s: &str) -> Result<RestartPolicy, String> {
    RestartPolicy::parse(s).ok_or_else(|| format!("{s:?}: expected no, on-failure or always"))
}

pub fn run(a: LaunchArgs) -> VerbResult {
    let settings = if a.settings.is_empty() {
        None
    } else {
        Some(update_from_pairs(&a.settings).map_err(VerbError::Usage)?)
    };
    let req = CreateInstance {
        name: a.name,
        image: a.image,
        kind: a.container.then_some(InstanceKind::Container),
        cpus: a.cpus,
        memory_mib: a.memory,
        cmdline: a.cmdline,
        restart: a.restart,
        autostart: a.autostart,
        cpu_weight: a.cpu_weight,
        cpu_cap_percent: a.cpu_cap,
        cpuset: a.cpuset,
        memory_limit_mib: a.memory_limit,
        networks: a.networks,
        command: a.command,
        pids_limit: a.pids_limit,
        start: !a.no_start,
        settings,
    };
    let inst = a.conn.client().create(&req).map_err(VerbError::from)?;
    println!("{} {}", inst.name, inst.status.as_str());
    Ok(())
}
