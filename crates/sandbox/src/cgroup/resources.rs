//! The limits a group can carry, independent of the hierarchy version.

/// Which block I/O limit a [`Throttle`] sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleKind {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

/// A per-device block I/O limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub major: i64,
    pub minor: i64,
    pub kind: ThrottleKind,
    pub rate: u64,
}

/// A device access rule (`c 1:3 rwm`); `None` major/minor means any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    /// `a`, `c` or `b`.
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl DeviceRule {
    /// A rule: `allow` or deny `access` (letters from `rwm`) to devices of `kind` (`a`, `b`,
    /// `c`) with the given numbers (`None` = any).
    pub fn new(
        allow: bool,
        kind: char,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> Self {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: access.to_string(),
        }
    }

    /// The v1 `devices.allow`/`devices.deny` line.
    pub fn v1_line(&self) -> String {
        let n = |v: Option<i64>| v.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// Resource limits; `None` leaves the kernel default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU shares in v1 units (2..=262144, 1024 is the default weight).
    pub cpu_shares: Option<u64>,
    /// CPU weight in v2 units (1..=10000, 100 is the default); v2 writes it as it is instead
    /// of converting `cpu_shares` (OCI's formula maps 1024 shares to weight 39, not 100), v1
    /// ignores it.
    pub cpu_weight: Option<u64>,
    /// CPU time allowed per period, in µs; with `cpu_period` this is the cap.
    pub cpu_quota: Option<i64>,
    /// Period for `cpu_quota`, in µs (default 100000).
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Memory + swap limit in bytes (v1 semantics; v2 gets the difference as swap.max).
    pub memory_swap: Option<i64>,
    /// Soft limit in bytes.
    pub memory_reservation: Option<i64>,
    /// Maximum number of tasks.
    pub pids_limit: Option<i64>,
    /// Block I/O weight (10..=1000).
    pub blkio_weight: Option<u16>,
    pub blkio_throttle: Vec<Throttle>,
    /// Device rules in order: v1 `devices.allow`/`deny` lines, or a v2 eBPF device program.
    pub devices: Vec<DeviceRule>,
}

impl Resources {
    /// A CPU cap as a fraction of one core, e.g. `0.5` for 50 %.
    pub fn with_cpu_cap(mut self, cores: f64) -> Self {
        let period = 100_000u64;
        self.cpu_period = Some(period);
        self.cpu_quota = Some((cores * period as f64) as i64);
        self
    }

    /// The v2 `cpu.weight` (1..=10000) for v1 shares, as crun converts it.
    pub fn shares_to_weight(shares: u64) -> u64 {
        let shares = shares.clamp(2, 262_144);
        1 + ((shares - 2) * 9999) / 262_142
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_convert_to_weight_range() {
        assert_eq!(Resources::shares_to_weight(2), 1);
        assert_eq!(Resources::shares_to_weight(262_144), 10_000);
        assert_eq!(Resources::shares_to_weight(1024), 39);
    }

    #[test]
    fn device_rule_lines() {
        let r = DeviceRule {
            allow: false,
            kind: 'a',
            major: None,
            minor: None,
            access: "rwm".into(),
        };
        assert_eq!(r.v1_line(), "a *:* rwm");
    }

    #[test]
    fn cpu_cap_half_core() {
        let r = Resources::default().with_cpu_cap(0.5);
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(50_000), Some(100_000)));
    }
}
