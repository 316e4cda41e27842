//! `GET /metrics`: Prometheus text format with per-guest CPU, memory, disk and network
//! counters (from the guest's cgroup, the VMM's `/proc/PID/io` and its TAP devices) and the
//! daemon's own footprint.

use std::fmt::Write;

use api::daemon::Instance;

use crate::db::StoredProcess;
use crate::state::Daemon;
use crate::{netsetup, process};

fn read_io(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("read_bytes:"), get("write_bytes:"))
}

/// Per running guest and NIC: bytes and packets the guest received and sent, read from its
/// TAP (the TAP's transmit side is the guest's receive side).
fn render_nic_counters(
    out: &mut String,
    instances: &[(Instance, Option<StoredProcess>)],
    procs: &[(String, i32)],
) {
    for (metric, kind, text) in [
        (
            "kapsel_instance_network_bytes_total",
            "bytes",
            "Bytes through the guest's NIC.",
        ),
        (
            "kapsel_instance_network_packets_total",
            "packets",
            "Packets through the guest's NIC.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {text}\n# TYPE {metric} counter");
        for (inst, _) in instances {
            if !procs.iter().any(|(n, _)| n == &inst.name) {
                continue;
            }
            for (i, network) in inst.config.networks.iter().enumerate() {
                // A container's NIC is its veth; its host end counts like a VM's TAP.
                let tap = if inst.kind == api::daemon::InstanceKind::Container {
                    crate::container::net::host_if(&inst.name)
                } else {
                    netsetup::tap_name(&inst.name, i)
                };
                for (direction, stat) in [("rx", "tx"), ("tx", "rx")] {
                    let v = netsetup::iface_stat(&tap, &format!("{stat}_{kind}"));
                    let _ = writeln!(
                        out,
                        "{metric}{{name=\"{}\",nic=\"{i}\",network=\"{network}\",direction=\"{direction}\"}} {v}",
                        inst.name
                    );
                }
            }
        }
    }
}

/// Renders all metrics.
pub fn render(d: &Daemon) -> String {
    let mut out = String::new();
    let instances = d.db().instances().unwrap_or_default();
    let procs: Vec<(String, i32)> = d.procs().iter().map(|(n, p)| (n.clone(), p.pid)).collect();
    let help = |out: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
    };
    help(
        &mut out,
        "kapsel_instance_up",
        "gauge",
        "1 while the guest's VMM runs.",
    );
    for (inst, _) in &instances {
        let up = procs.iter().any(|(n, _)| n == &inst.name);
        let _ = writeln!(
            out,
            "kapsel_instance_up{{name=\"{}\"}} {}",
            inst.name,
            u8::from(up)
        );
    }
    help(
        &mut out,
        "kapsel_instance_restarts_total",
        "counter",
        "Supervised restarts since the last explicit start.",
    );
    for (inst, _) in &instances {
        let _ = writeln!(
            out,
            "kapsel_instance_restarts_total{{name=\"{}\"}} {}",
            inst.name, inst.restarts
        );
    }
    help(
        &mut out,
        "kapsel_instance_cpu_seconds_total",
        "counter",
        "CPU time of the guest's cgroup.",
    );
    help(
        &mut out,
        "kapsel_instance_memory_bytes",
        "gauge",
        "Memory charged to the guest's cgroup.",
    );
    help(
        &mut out,
        "kapsel_instance_rss_bytes",
        "gauge",
        "Resident memory of the VMM process.",
    );
    help(
        &mut out,
        "kapsel_instance_disk_read_bytes_total",
        "counter",
        "Bytes the VMM read from storage.",
    );
    help(
        &mut out,
        "kapsel_instance_disk_written_bytes_total",
        "counter",
        "Bytes the VMM wrote to storage.",
    );
    for (name, pid) in &procs {
        if let Some(s) = d.cgroups.stats(name) {
            let _ = writeln!(
                out,
                "kapsel_instance_cpu_seconds_total{{name=\"{name}\"}} {:.3}",
                s.cpu_usage_ns as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "kapsel_instance_memory_bytes{{name=\"{name}\"}} {}",
                s.memory_usage
            );
        }
        if let Some(rss) = process::rss_bytes(*pid) {
            let _ = writeln!(out, "kapsel_instance_rss_bytes{{name=\"{name}\"}} {rss}");
        }
        let (r, w) = read_io(*pid);
        let _ = writeln!(
            out,
            "kapsel_instance_disk_read_bytes_total{{name=\"{name}\"}} {r}"
        );
        let _ = writeln!(
            out,
            "kapsel_instance_disk_written_bytes_total{{name=\"{name}\"}} {w}"
        );
    }
    render_nic_counters(&mut out, &instances, &procs);
    crate::network::render_metrics(d, &mut out);
    help(
        &mut out,
        "kapsel_daemon_rss_bytes",
        "gauge",
        "Resident memory of the daemon.",
    );
    let me = std::process::id() as i32;
    let _ = writeln!(
        out,
        "kapsel_daemon_rss_bytes {}",
        process::rss_bytes(me).unwrap_or(0)
    );
    help(
        &mut out,
        "kapsel_daemon_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    let _ = writeln!(
        out,
        "kapsel_daemon_uptime_seconds {}",
        d.started.elapsed().as_secs()
    );
    out
}
