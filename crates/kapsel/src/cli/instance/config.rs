//! `kapsel config show NAME` and `kapsel config set NAME key=value ...`.

use api::daemon::InstanceUpdate;
use clap::{Args, Subcommand};

use super::launch::parse_policy;
use super::{parse_mib, print_json, Conn, VerbError, VerbResult};

/// Keys `config set` knows, with what they take.
pub const KEYS: &[(&str, &str)] = &[
    ("cpus", "vCPUs (next start)"),
    ("memory", "guest memory, e.g. 512M (next start)"),
    ("cmdline", "extra kernel command line (next start)"),
    ("restart", "no, on-failure or always"),
    ("autostart", "true or false"),
    ("cpu.weight", "1-10000, 0 clears (live)"),
    ("cpu.cap", "percent of one host CPU, 0 clears (live)"),
    ("cpuset", "host CPUs like 0-1, empty clears (live)"),
    (
        "memory.limit",
        "VMM memory limit, e.g. 1G, 0 = default (live)",
    ),
    (
        "disk.limits",
        "root disk: bw=20M,iops=500,bw_burst=…,iops_burst=…, empty clears (live)",
    ),
    (
        "net.limits",
        "every NIC: rx_bw=10M,tx_bw=…,rx_ops=…,tx_ops=… (bw=/ops= both ways), empty clears (live)",
    ),
    (
        "balloon",
        "balloon target, e.g. 256M, 0 deflated (live; the next start adds the balloon)",
    ),
    (
        "memory.backing",
        "prealloc, lock, hugepages comma-separated, empty clears (next start)",
    ),
];

#[derive(Debug, Args)]
pub struct SetArgs {
    pub name: String,
    /// `key=value` pairs.
    #[arg(required = true)]
    pub pairs: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Change settings; limits apply to a running guest at once.
    Set(SetArgs),
    /// Print the configuration.
    Show(ShowArgs),
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{key}={v:?}: expected a number"))
}

/// Builds the update from `key=value` pairs; an unknown key is an error naming the known ones.
pub fn update_from_pairs(pairs: &[String]) -> Result<InstanceUpdate, String> {
    let mut u = InstanceUpdate::default();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected key=value"))?;
        match k {
            "cpus" => u.cpus = Some(number(k, v)?),
            "memory" => u.memory_mib = Some(parse_mib(v)?),
            "cmdline" => u.cmdline = Some(v.to_string()),
            "restart" => u.restart = Some(parse_policy(v)?),
            "autostart" => u.autostart = Some(number(k, v)?),
            "cpu.weight" => u.cpu_weight = Some(number(k, v)?),
            "cpu.cap" => u.cpu_cap_percent = Some(number(k, v.trim_end_matches('%'))?),
            "cpuset" => u.cpuset = Some(v.to_string()),
            "memory.limit" => u.memory_limit_mib = Some(if v == "0" { 0 } else { parse_mib(v)? }),
            "pids" => u.pids_limit = Some(number(k, v)?),
            "memory.backing" => u.memory_backing = Some(v.to_string()),
            "balloon" => u.balloon_mib = Some(if v == "0" { 0 } else { parse_mib(v)? }),
            "disk.limits" => {
                let l = vmm::net_config::parse_disk_limits("disk.limits", v)
                    .map_err(|e| e.to_string())?;
                u.disk_limits = Some(vmm::io_limits::from_spec(&l));
            }
            "net.limits" => {
                let (rx, tx) = vmm::net_config::parse_net_limits("net.limits", v)
                    .map_err(|e| e.to_string())?;
                u.net_limits = Some(api::vm::NetLimits {
                    rx: vmm::io_limits::from_spec(&rx),
                    tx: vmm::io_limits::from_spec(&tx),
                });
            }
            _ => {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "unknown key {k:?}; known keys: {}",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(u)
}

pub fn run(c: ConfigCommand) -> VerbResult {
    match c {
        ConfigCommand::Show(a) => {
            let inst = a.conn.client().get(&a.name).map_err(VerbError::from)?;
            print_json(&inst.config)
        }
        ConfigCommand::Set(a) => {
            let upd = update_from_pairs(&a.pairs).map_err(VerbError::Usage)?;
            let inst = a
                .conn
                .client()
                .update(&a.name, &upd)
                .map_err(VerbError::from)?;
            print_json(&inst.config)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_map_to_fields() {
        let u = update_from_pairs(&[
            "cpu.cap=50%".into(),
            "cpu.weight=300".into(),
            "memory=1G".into(),
            "restart=always".into(),
        ])
        .unwrap();
        assert_eq!(u.cpu_cap_percent, Some(50));
        assert_eq!(u.cpu_weight, Some(300));
        assert_eq!(u.memory_mib, Some(1024));
        assert_eq!(u.restart, Some(api::daemon::RestartPolicy::Always));
    }

    #[test]
    fn unknown_and_malformed_keys_are_errors() {
        let e = update_from_pairs(&["colour=red".into()]).unwrap_err();
        assert!(e.contains("unknown key") && e.contains("cpu.cap"), "{e}");
        assert!(update_from_pairs(&["cpus".into()]).is_err());
        assert!(update_from_pairs(&["cpus=many".into()]).is_err());
    }
}
