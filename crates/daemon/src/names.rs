//! Validation of user-chosen names and sizes, in one place.

use crate::error::{DaemonError, Result};
use api::daemon::InstanceConfig;

/// Longest instance or image name (keeps socket paths under the 108-byte limit).
pub const MAX_NAME: usize = 40;
/// Longest network name: the bridge is `kapsel-NAME`, and interface names have 15 bytes.
pub const MAX_NETWORK_NAME: usize = 8;
/// Largest guest RAM the daemon accepts, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Smallest guest RAM, in MiB.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Most vCPUs per guest.
pub const MAX_CPUS: u16 = 254;
/// Longest extra kernel command line.
pub const MAX_CMDLINE: usize = 2048;

/// Checks a name: 1..=`max` bytes of `a-z`, `0-9` and `-`, starting with a letter, not
/// ending with `-`.
pub fn check_name(kind: &str, name: &str, max: usize) -> Result<()> {
    let bad = |why: &str| {
        Err(DaemonError::BadRequest(format!(
            "invalid {kind} name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > max {
        return bad(&format!("must be 1 to {max} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("must start with a lowercase letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("only a-z, 0-9 and '-' are allowed");
    }
    if name.ends_with('-') {
        return bad("must not end with '-'");
    }
    Ok(())
}

/// Checks an instance configuration's sizes and values against the daemon's limits and the
/// host's (`host_cpus`, `host_memory_mib`).
pub fn check_config(c: &InstanceConfig, host_cpus: usize, host_memory_mib: u64) -> Result<()> {
    let bad = |m: String| Err(DaemonError::BadRequest(m));
    if c.cpus == 0 || c.cpus > MAX_CPUS {
        return bad(format!("cpus must be 1 to {MAX_CPUS}, not {}", c.cpus));
    }
    if c.memory_mib < MIN_MEMORY_MIB {
        return bad(format!(
            "memory_mib {} is below the minimum of {MIN_MEMORY_MIB}",
            c.memory_mib
        ));
    }
    if c.memory_mib > MAX_MEMORY_MIB || c.memory_mib > host_memory_mib {
        return bad(format!(
            "memory_mib {} is more than this host's {host_memory_mib} MiB",
            c.memory_mib
        ));
    }
    if c.cmdline.len() > MAX_CMDLINE || c.cmdline.contains(['\0', '\n']) {
        return bad(format!(
            "cmdline must be one line of at most {MAX_CMDLINE} bytes"
        ));
    }
    if let Some(w) = c.cpu_weight {
        if !(1..=10_000).contains(&w) {
            return bad(format!("cpu_weight must be 1 to 10000, not {w}"));
        }
    }
    if let Some(p) = c.cpu_cap_percent {
        let max = 100 * host_cpus as u64;
        if p == 0 || u64::from(p) > max {
            return bad(format!(
                "cpu_cap_percent must be 1 to {max} on this host, not {p}"
            ));
        }
    }
    if let Some(set) = &c.cpuset {
        check_cpuset(set, host_cpus)?;
    }
    if let Some(m) = c.memory_limit_mib {
        if m < c.memory_mib || m > MAX_MEMORY_MIB {
            return bad(format!(
                "memory_limit_mib {m} must be at least memory_mib ({}) and at most {MAX_MEMORY_MIB}",
                c.memory_mib
            ));
        }
    }
    for n in &c.networks {
        check_name("network", n, MAX_NETWORK_NAME)?;
    }
    if let Some(b) = c.balloon_mib {
        if b > c.memory_mib {
            return bad(format!(
                "balloon_mib {b} must be at most memory_mib ({})",
                c.memory_mib
            ));
        }
        if c.memory_backing.contains("lock") || c.memory_backing.contains("hugepages") {
            return bad(
                "a balloon cannot free locked or hugepage memory: drop lock/hugepages from memory_backing"
                    .into(),
            );
        }
    }
    for word in c.memory_backing.split(',').filter(|w| !w.is_empty()) {
        if !["prealloc", "lock", "hugepages"].contains(&word) {
            return bad(format!(
                "memory_backing: unknown option {word:?} (known: prealloc, lock, hugepages)"
            ));
        }
    }
    Ok(())
}

/// Checks a cpuset list (`0`, `0-1`, `0,2-3`) against the host's CPU count.
pub fn check_cpuset(set: &str, host_cpus: usize) -> Result<()> {
    let bad = || {
        Err(DaemonError::BadRequest(format!(
            "invalid cpuset {set:?}: expected CPU numbers below {host_cpus} like 0-1 or 0,2"
        )))
    };
    if set.is_empty() || set.len() > 256 {
        return bad();
    }
    for part in set.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
            return bad();
        };
        if a > b || b >= host_cpus {
            return bad();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::config;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "x9", &"a".repeat(MAX_NAME)] {
            assert!(check_name("instance", ok, MAX_NAME).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "a-",
            "A",
            "a_b",
            "a/b",
            "../x",
            "a b",
            "é",
            &"a".repeat(MAX_NAME + 1),
        ] {
            let e = check_name("instance", bad, MAX_NAME).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
    }

    #[test]
    fn absurd_sizes_are_rejected() {
        let host = |c: &InstanceConfig| check_config(c, 2, 4096);
        assert!(host(&config()).is_ok());
        let mut c = config();
        c.memory_mib = u64::MAX;
        assert!(host(&c).is_err());
        c = config();
        c.cpus = 0;
        assert!(host(&c).is_err());
        c = config();
        c.cpu_cap_percent = Some(201);
        assert!(host(&c).is_err());
        c.cpu_cap_percent = Some(200);
        assert!(host(&c).is_ok());
        c.cpu_weight = Some(0);
        assert!(host(&c).is_err());
        c = config();
        c.cmdline = "a\nb".into();
        assert!(host(&c).is_err());
        c = config();
        c.memory_limit_mib = Some(1);
        assert!(host(&c).is_err());
    }

    #[test]
    fn cpusets() {
        assert!(check_cpuset("0-1", 2).is_ok());
        assert!(check_cpuset("1", 2).is_ok());
        assert!(check_cpuset("0,1", 2).is_ok());
        for bad in ["", "2", "1-0", "a", "0-", "-1", "0,,1"] {
            assert!(check_cpuset(bad, 2).is_err(), "{bad}");
        }
    }
}
