//! Run-time I/O limits: the rate limiters of every disk and network card by id, read and
//! changed by the per-VM API (`GET`/`PUT /vm/disks/{id}/limits`, `/vm/nets/{id}/limits`).
//!
//! Every disk and card gets a limiter when it is built, an unlimited one when the
//! configuration sets no limits, so any of them can be limited later without a restart.

use std::sync::Arc;

use api::vm::{IoLimit, NetLimits};
use virtio::rate_limiter::{BucketConfig, RateLimit, RateLimiter, RateLimiterError};

use crate::net_config::LimitSpec;

#[derive(Debug, thiserror::Error)]
pub enum IoLimitError {
    #[error("no disk '{id}' (disks: {known})")]
    UnknownDisk { id: String, known: String },
    #[error("no network card '{id}' (cards: {known})")]
    UnknownNet { id: String, known: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot change the limits")]
    Limiter(#[from] RateLimiterError),
}

impl IoLimitError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            IoLimitError::UnknownDisk { .. } | IoLimitError::UnknownNet { .. } => 404,
            IoLimitError::Invalid(_) => 400,
            IoLimitError::Limiter(_) => 500,
        }
    }
}

/// The limiters of one network card.
#[derive(Debug, Clone)]
pub struct NetLimiters {
    /// Host → guest.
    pub rx: Arc<RateLimiter>,
    /// Guest → host.
    pub tx: Arc<RateLimiter>,
}

/// The rate limiters of a VM's devices, by device id.
#[derive(Debug, Default)]
pub struct IoLimits {
    disks: Vec<(String, Arc<RateLimiter>)>,
    nets: Vec<(String, NetLimiters)>,
}

fn bucket(rate: Option<u64>, burst: Option<u64>) -> Option<BucketConfig> {
    rate.map(|r| {
        let mut b = BucketConfig::with_rate(r);
        if let Some(burst) = burst {
            b.burst = burst;
        }
        b
    })
}

/// The device-level limits of an API or configuration limit.
pub fn rate_limit(l: &IoLimit) -> RateLimit {
    RateLimit {
        bytes: bucket(l.bytes_per_sec, l.bytes_burst),
        ops: bucket(l.ops_per_sec, l.ops_burst),
    }
}

/// A device's limits as the API shows them (bursts filled in).
pub fn io_limit(r: &RateLimit) -> IoLimit {
    IoLimit {
        bytes_per_sec: r.bytes.map(|b| b.rate),
        bytes_burst: r.bytes.map(|b| b.burst),
        ops_per_sec: r.ops.map(|b| b.rate),
        ops_burst: r.ops.map(|b| b.burst),
    }
}

/// The API form of a configured limit.
pub fn from_spec(s: &LimitSpec) -> IoLimit {
    IoLimit {
        bytes_per_sec: s.bytes_per_sec,
        bytes_burst: s.bytes_burst,
        ops_per_sec: s.ops_per_sec,
        ops_burst: s.ops_burst,
    }
}

/// The configuration form of an API limit (so snapshots keep run-time changes).
pub fn to_spec(l: &IoLimit) -> LimitSpec {
    LimitSpec {
        bytes_per_sec: l.bytes_per_sec,
        bytes_burst: l.bytes_burst,
        ops_per_sec: l.ops_per_sec,
        ops_burst: l.ops_burst,
    }
}

fn known<T>(list: &[(String, T)]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn checked(l: &IoLimit) -> Result<RateLimit, IoLimitError> {
    l.check().map_err(IoLimitError::Invalid)?;
    Ok(rate_limit(l))
}

impl IoLimits {
    pub fn add_disk(&mut self, id: &str, limiter: Arc<RateLimiter>) {
        self.disks.push((id.to_string(), limiter));
    }

    pub fn add_net(&mut self, id: &str, limiters: NetLimiters) {
        self.nets.push((id.to_string(), limiters));
    }

    fn disk(&self, id: &str) -> Result<(usize, &Arc<RateLimiter>), IoLimitError> {
        self.disks
            .iter()
            .enumerate()
            .find(|(_, (d, _))| d == id)
            .map(|(i, (_, l))| (i, l))
            .ok_or_else(|| IoLimitError::UnknownDisk {
                id: id.to_string(),
                known: known(&self.disks),
            })
    }

    fn net(&self, id: &str) -> Result<(usize, &NetLimiters), IoLimitError> {
        self.nets
            .iter()
            .enumerate()
            .find(|(_, (d, _))| d == id)
            .map(|(i, (_, l))| (i, l))
            .ok_or_else(|| IoLimitError::UnknownNet {
                id: id.to_string(),
                known: known(&self.nets),
            })
    }

    /// The limits of disk `id` in effect.
    pub fn disk_limits(&self, id: &str) -> Result<IoLimit, IoLimitError> {
        Ok(io_limit(&self.disk(id)?.1.limit()))
    }

    /// Replaces the limits of disk `id`; returns the disk's position in the configuration.
    pub fn set_disk_limits(&self, id: &str, limit: &IoLimit) -> Result<usize, IoLimitError> {
        let (index, limiter) = self.disk(id)?;
        limiter.update(checked(limit)?)?;
        tracing::info!(disk = id, ?limit, "disk limits changed");
        Ok(index)
    }

    /// The limits of network card `id` in effect.
    pub fn net_limits(&self, id: &str) -> Result<NetLimits, IoLimitError> {
        let l = self.net(id)?.1;
        Ok(NetLimits {
            rx: io_limit(&l.rx.limit()),
            tx: io_limit(&l.tx.limit()),
        })
    }

    /// Replaces the limits of network card `id`; returns its position in the configuration.
    pub fn set_net_limits(&self, id: &str, limits: &NetLimits) -> Result<usize, IoLimitError> {
        let (index, l) = self.net(id)?;
        let (rx, tx) = (checked(&limits.rx)?, checked(&limits.tx)?);
        l.rx.update(rx)?;
        l.tx.update(tx)?;
        tracing::info!(net = id, ?limits, "network limits changed");
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(l: RateLimit) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(l).expect("limiter"))
    }

    fn limits() -> IoLimits {
        let mut l = IoLimits::default();
        l.add_disk("disk0", limiter(RateLimit::default()));
        l.add_disk("data", limiter(RateLimit::default()));
        l.add_net(
            "net0",
            NetLimiters {
                rx: limiter(RateLimit::default()),
                tx: limiter(RateLimit::default()),
            },
        );
        l
    }

    #[test]
    fn disk_limits_round_trip_with_default_burst() {
        let l = limits();
        assert!(l.disk_limits("data").expect("get").is_unlimited());
        let want = IoLimit {
            bytes_per_sec: Some(20 << 20),
            ..IoLimit::default()
        };
        assert_eq!(l.set_disk_limits("data", &want).expect("set"), 1);
        let got = l.disk_limits("data").expect("get");
        assert_eq!(got.bytes_per_sec, Some(20 << 20));
        assert_eq!(got.bytes_burst, Some(2 << 20), "a tenth of a second");
        assert_eq!(got.ops_per_sec, None);
        assert!(l.disk_limits("disk0").expect("get").is_unlimited());
        // back to unlimited
        l.set_disk_limits("data", &IoLimit::default()).expect("set");
        assert!(l.disk_limits("data").expect("get").is_unlimited());
    }

    #[test]
    fn net_limits_set_each_direction() {
        let l = limits();
        let want = NetLimits {
            rx: IoLimit {
                ops_per_sec: Some(100),
                ops_burst: Some(7),
                ..IoLimit::default()
            },
            tx: IoLimit::default(),
        };
        assert_eq!(l.set_net_limits("net0", &want).expect("set"), 0);
        assert_eq!(l.net_limits("net0").expect("get"), want);
    }

    #[test]
    fn unknown_ids_and_bad_limits_are_named() {
        let l = limits();
        let e = l.disk_limits("disk9").unwrap_err();
        assert_eq!(e.status(), 404);
        assert_eq!(e.to_string(), "no disk 'disk9' (disks: disk0, data)");
        let e = l.net_limits("net1").unwrap_err();
        assert_eq!(e.to_string(), "no network card 'net1' (cards: net0)");
        let zero = IoLimit {
            bytes_per_sec: Some(0),
            ..IoLimit::default()
        };
        let e = l.set_disk_limits("disk0", &zero).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("bytes_per_sec"), "{e}");
        let e = IoLimits::default().disk_limits("disk0").unwrap_err();
        assert_eq!(e.to_string(), "no disk 'disk0' (disks: none)");
    }

    #[test]
    fn config_and_api_forms_convert_both_ways() {
        let spec = LimitSpec {
            bytes_per_sec: Some(1),
            bytes_burst: None,
            ops_per_sec: Some(3),
            ops_burst: Some(4),
        };
        assert_eq!(to_spec(&from_spec(&spec)), spec);
    }
}
