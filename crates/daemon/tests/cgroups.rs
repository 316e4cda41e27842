//! Resource guarantees with real VMM processes: a 50 % CPU cap holds for a busy-looping
//! guest, and CPU weights split a contended CPU in proportion (cgroup v1 on this host; the
//! same code drives v2 through the sandbox crate).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use api::daemon::{InstanceUpdate, RestartPolicy};
use common::{request, require_kvm, TestDaemon};

fn cpu_usage_ns(d: &TestDaemon, name: &str) -> u64 {
    let v1 = d.cgroup_dir("cpuacct", name).join("cpuacct.usage");
    if let Ok(s) = std::fs::read_to_string(&v1) {
        return s.trim().parse().unwrap();
    }
    let v2 = Path::new("/sys/fs/cgroup")
        .join(&d.cgroup_root)
        .join(name)
        .join("cpu.stat");
    let s = std::fs::read_to_string(v2).expect("cpu usage of the guest cgroup");
    let usec: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    usec * 1000
}

/// CPU used by each group over `window`, as a fraction of one CPU.
fn measure(d: &TestDaemon, names: &[&str], window: Duration) -> Vec<f64> {
    let before: Vec<u64> = names.iter().map(|n| cpu_usage_ns(d, n)).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    names
        .iter()
        .zip(before)
        .map(|(n, b)| (cpu_usage_ns(d, n) - b) as f64 / 1e9 / secs)
        .collect()
}

/// The two tests measure CPU time: never run them at the same time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Measures until a sample lands in `range` (at most 3 tries: the host is shared with other
/// work, which can only push a capped guest below its cap, never above). Every sample must
/// respect the upper bound.
fn measure_in(d: &TestDaemon, name: &str, range: std::ops::RangeInclusive<f64>) -> Vec<f64> {
    let mut samples = Vec::new();
    for _ in 0..3 {
        let used = measure(d, &[name], Duration::from_secs(2))[0];
        samples.push(used);
        assert!(used <= *range.end(), "cap exceeded: {samples:?}");
        if range.contains(&used) {
            break;
        }
    }
    samples
}

fn has_cgroups() -> bool {
    Path::new("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists()
        || Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

#[test]
fn cpu_cap_holds_and_changes_live() {
    require_kvm();
    assert!(has_cgroups(), "no cgroup hierarchy mounted");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = TestDaemon::start();
    let mut r = request("capped", "spin", RestartPolicy::No);
    r.cpu_cap_percent = Some(50);
    d.client().create(&r).unwrap();
    d.boost_cpu_weight();
    std::thread::sleep(Duration::from_millis(500));
    let used = measure_in(&d, "capped", 0.45..=0.55);
    assert!(
        used.iter().any(|u| (0.45..=0.55).contains(u)),
        "50 % cap: used {used:?}"
    );

    let upd = InstanceUpdate {
        cpu_cap_percent: Some(20),
        ..Default::default()
    };
    d.client().update("capped", &upd).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let used = measure_in(&d, "capped", 0.17..=0.23);
    assert!(
        used.iter().any(|u| (0.17..=0.23).contains(u)),
        "20 % cap: used {used:?}"
    );
}

#[test]
fn weights_split_a_contended_cpu_in_proportion() {
    require_kvm();
    assert!(has_cgroups(), "no cgroup hierarchy mounted");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = TestDaemon::start();
    let cpu = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        "1"
    } else {
        "0"
    };
    for (name, weight) in [("light", 100), ("heavy", 300)] {
        let mut r = request(name, "spin", RestartPolicy::No);
        r.cpu_weight = Some(weight);
        r.cpuset = Some(cpu.into());
        d.client().create(&r).unwrap();
    }
    d.boost_cpu_weight();
    std::thread::sleep(Duration::from_millis(500));
    let used = measure(&d, &["light", "heavy"], Duration::from_secs(3));
    let ratio = used[1] / used[0];
    assert!(
        (2.4..=3.6).contains(&ratio),
        "weights 300:100 on one CPU gave {:.3}:{:.3} (ratio {ratio:.2})",
        used[1],
        used[0]
    );
    assert!(used[0] + used[1] > 0.2, "both guests ran: {used:?}");
}
