//! The memory balloon of a VM: the `--balloon` option, adding the device, and the run-time
//! operations behind `GET`/`PUT /vm/balloon` (`kapsel vm balloon`) and the metrics.
//!
//! ```text
//! --balloon [deflate_on_oom=on][,stats_period=SECS][,free_page_reporting=on]
//! ```

use std::time::Duration;

use api::vm::{BalloonInfo, BalloonStats};
use serde::{Deserialize, Serialize};
use virtio::balloon::{Balloon, BalloonConfig, BalloonControl, GuestStats};

use crate::net_config::{key_values, OptionError};
use crate::VmmError;

/// The PCI id of the balloon.
pub const BALLOON_ID: &str = "balloon0";
/// Longest statistics period accepted (one day).
const MAX_STATS_PERIOD: u64 = 86_400;
const PAGE_SHIFT: u32 = 12;

/// The balloon device's options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonSpec {
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests; `None`: no statistics queue.
    pub stats_period_secs: Option<u64>,
    pub free_page_reporting: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("this VM has no balloon device (start it with --balloon)")]
    NoBalloon,
    #[error("target_mib {asked} is more than the guest's {memory} MiB of memory")]
    TooBig { asked: u64, memory: u64 },
}

impl BalloonError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            BalloonError::NoBalloon => 404,
            BalloonError::TooBig { .. } => 400,
        }
    }
}

fn on_off(opt: &'static str, key: &str, value: &str) -> Result<bool, OptionError> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(OptionError::BadValue {
            opt,
            key: key.into(),
            value: value.into(),
            why: "expected on or off",
        }),
    }
}

/// Parses the `--balloon` value (empty: a plain balloon).
pub fn parse_balloon(s: &str) -> Result<BalloonSpec, OptionError> {
    const OPT: &str = "balloon";
    let mut spec = BalloonSpec::default();
    for (key, value) in key_values(OPT, s)? {
        match key {
            "deflate_on_oom" => spec.deflate_on_oom = on_off(OPT, key, value)?,
            "free_page_reporting" => spec.free_page_reporting = on_off(OPT, key, value)?,
            "stats_period" => {
                let n: u64 = value
                    .trim_end_matches('s')
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_STATS_PERIOD).contains(n))
                    .ok_or_else(|| OptionError::BadValue {
                        opt: OPT,
                        key: key.into(),
                        value: value.into(),
                        why: "expected whole seconds from 1 to 86400",
                    })?;
                spec.stats_period_secs = Some(n);
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    opt: OPT,
                    key: key.into(),
                    known: "deflate_on_oom, stats_period, free_page_reporting",
                })
            }
        }
    }
    Ok(spec)
}

/// The balloon of a running VM.
#[derive(Debug, Clone)]
pub struct VmBalloon {
    spec: BalloonSpec,
    control: BalloonControl,
}

/// Adds the balloon if the configuration asks for one.
pub fn add_balloon(
    pci: &mut crate::pci::PciDevices,
    config: &crate::VmConfig,
) -> Result<Option<VmBalloon>, VmmError> {
    let Some(spec) = config.balloon else {
        return Ok(None);
    };
    let control = BalloonControl::default();
    let device = Balloon::new(
        BALLOON_ID,
        BalloonConfig {
            deflate_on_oom: spec.deflate_on_oom,
            stats_period: spec.stats_period_secs.map(Duration::from_secs),
            free_page_reporting: spec.free_page_reporting,
        },
        control.clone(),
    );
    pci.add_virtio_pci(Box::new(device), BALLOON_ID)?;
    Ok(Some(VmBalloon { spec, control }))
}

fn api_stats(s: &GuestStats, age_ms: u64) -> BalloonStats {
    BalloonStats {
        age_ms,
        swap_in: s.get(0),
        swap_out: s.get(1),
        major_faults: s.get(2),
        minor_faults: s.get(3),
        free_memory: s.get(4),
        total_memory: s.get(5),
        available_memory: s.get(6),
        disk_caches: s.get(7),
        hugetlb_allocations: s.get(8),
        hugetlb_failures: s.get(9),
        oom_kills: s.get(10),
        alloc_stalls: s.get(11),
        async_scans: s.get(12),
        direct_scans: s.get(13),
        async_reclaims: s.get(14),
        direct_reclaims: s.get(15),
    }
}

impl VmBalloon {
    pub fn info(&self) -> BalloonInfo {
        let s = self.control.status();
        BalloonInfo {
            target_mib: (u64::from(s.target_pages) << PAGE_SHIFT) >> 20,
            actual_mib: (u64::from(s.actual_pages) << PAGE_SHIFT) >> 20,
            active: s.active,
            deflate_on_oom: self.spec.deflate_on_oom,
            stats_period_secs: self.spec.stats_period_secs,
            free_page_reporting: self.spec.free_page_reporting,
            inflated_bytes: s.inflated_bytes,
            deflated_bytes: s.deflated_bytes,
            reported_bytes: s.reported_bytes,
            stats: s.stats.map(|(st, age)| api_stats(&st, age)),
        }
    }

    /// Sets the target to `mib`, which must fit in the guest's `memory` bytes.
    pub fn set_target(&self, mib: u64, memory: u64) -> Result<BalloonInfo, BalloonError> {
        let memory_mib = memory >> 20;
        if mib > memory_mib {
            return Err(BalloonError::TooBig {
                asked: mib,
                memory: memory_mib,
            });
        }
        // guest memory is far below 2^32 pages (16 TiB), so this fits
        let pages = u32::try_from((mib << 20) >> PAGE_SHIFT).unwrap_or(u32::MAX);
        self.control.set_target(pages);
        tracing::info!(target_mib = mib, "balloon target set");
        Ok(self.info())
    }

    /// The balloon's Prometheus metrics.
    pub fn metrics(&self, out: &mut String) {
        let info = self.info();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "kapsel_vm_balloon_target_bytes",
            "gauge",
            "Balloon size the host asked for.",
            info.target_mib << 20,
        );
        metric(
            "kapsel_vm_balloon_actual_bytes",
            "gauge",
            "Balloon size the guest reached.",
            info.actual_mib << 20,
        );
        metric(
            "kapsel_vm_balloon_inflated_bytes_total",
            "counter",
            "Memory the guest handed to the balloon (freed on the host).",
            info.inflated_bytes,
        );
        metric(
            "kapsel_vm_balloon_deflated_bytes_total",
            "counter",
            "Memory the guest took back from the balloon.",
            info.deflated_bytes,
        );
        metric(
            "kapsel_vm_balloon_reported_bytes_total",
            "counter",
            "Free guest memory reported by the guest and freed on the host.",
            info.reported_bytes,
        );
        let Some(stats) = info.stats else {
            return;
        };
        for (name, help, value) in [
            (
                "kapsel_vm_guest_memory_total_bytes",
                "Guest memory the guest's kernel manages (balloon statistics).",
                stats.total_memory,
            ),
            (
                "kapsel_vm_guest_memory_free_bytes",
                "Free guest memory (balloon statistics).",
                stats.free_memory,
            ),
            (
                "kapsel_vm_guest_memory_available_bytes",
                "Guest memory available to new programs (balloon statistics).",
                stats.available_memory,
            ),
        ] {
            if let Some(v) = value {
                metric(name, "gauge", help, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balloon_options_parse() {
        assert_eq!(parse_balloon(""), Ok(BalloonSpec::default()));
        assert_eq!(
            parse_balloon("deflate_on_oom=on,stats_period=5,free_page_reporting=on"),
            Ok(BalloonSpec {
                deflate_on_oom: true,
                stats_period_secs: Some(5),
                free_page_reporting: true,
            })
        );
        for bad in [
            "stats_period=0",
            "stats_period=x",
            "stats_period=100000",
            "deflate_on_oom=maybe",
            "size=1G",
            "deflate_on_oom",
            "deflate_on_oom=on,deflate_on_oom=off",
        ] {
            let e = parse_balloon(bad).unwrap_err().to_string();
            assert!(e.starts_with("--balloon: "), "{bad}: {e}");
        }
    }

    #[test]
    fn targets_above_guest_memory_are_refused() {
        let b = VmBalloon {
            spec: BalloonSpec::default(),
            control: BalloonControl::default(),
        };
        assert_eq!(
            b.set_target(513, 512 << 20),
            Err(BalloonError::TooBig {
                asked: 513,
                memory: 512
            })
        );
        let info = b.set_target(256, 512 << 20).unwrap();
        assert_eq!(info.target_mib, 256);
        assert_eq!(info.actual_mib, 0);
        assert!(!info.active);
        let mut m = String::new();
        b.metrics(&mut m);
        assert!(
            m.contains("kapsel_vm_balloon_target_bytes 268435456\n"),
            "{m}"
        );
    }
}
