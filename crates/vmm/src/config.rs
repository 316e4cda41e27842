//! The VM's configuration and its validation, in one place.

use std::path::PathBuf;

use arch::layout::{MAX_VCPUS, MIN_MEMORY};

/// What one VM is made of. The same type serves the CLI, the API and snapshots.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u16,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Print a timestamped line for each write to the debug port 0x80.
    pub boot_timer: bool,
    /// Network cards (`--net`), in PCI slot order.
    #[serde(default)]
    pub nets: Vec<crate::net_config::NetSpec>,
    /// The vsock device (`--vsock`).
    #[serde(default)]
    pub vsock: Option<crate::net_config::VsockSpec>,
    /// Disks (`--disk`), in PCI slot order: the first is `/dev/vda`.
    #[serde(default)]
    pub disks: Vec<crate::disk_config::DiskConfig>,
    /// The virtio entropy device (`--rng`).
    #[serde(default)]
    pub rng: bool,
    /// The memory balloon (`--balloon`).
    #[serde(default)]
    pub balloon: Option<crate::balloon::BalloonSpec>,
    /// How guest RAM is backed (`--memory-backing`).
    #[serde(default)]
    pub memory_backing: crate::memory_backing::MemoryBacking,
}

/// The default kernel command line: serial console, reboot through the i8042, and no
/// waiting on panic (the process ends instead).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// Default guest memory.
pub const DEFAULT_MEMORY: u64 = 512 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid size '{0}': expected a number with an optional K, M, G or T suffix (e.g. 512M, 4G)")]
    BadSize(String),
    #[error("--cpus must be at least 1")]
    NoCpus,
    #[error("--cpus {asked} is above the limit of {limit} vCPUs on this host")]
    TooManyCpus { asked: u16, limit: usize },
    #[error("--memory {asked} MiB is below the minimum of {min} MiB")]
    TooLittleMemory { asked: u64, min: u64 },
    #[error("--memory {asked} MiB is more than this host's {host} MiB of RAM")]
    TooMuchMemory { asked: u64, host: u64 },
    #[error(
        "--balloon cannot give back memory that --memory-backing {0} pins; use one or the other"
    )]
    BalloonPinned(&'static str),
    #[error(transparent)]
    DeviceOption(#[from] crate::net_config::OptionError),
    #[error(transparent)]
    Disk(#[from] crate::disk_config::DiskOptionError),
}

/// Parses a size such as `512M`, `4G`, `5GiB`, `1048576K` or a plain number of MiB.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = match suffix.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 1u64 << 20,
        "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

impl VmConfig {
    /// Checks the sizes against kapsel's and the host's limits.
    pub fn validate(&self, host_memory: u64, max_vcpus: usize) -> Result<(), ConfigError> {
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        crate::disk_config::disk_ids(&self.disks)?;
        let limit = max_vcpus.min(MAX_VCPUS);
        if usize::from(self.cpus) > limit {
            return Err(ConfigError::TooManyCpus {
                asked: self.cpus,
                limit,
            });
        }
        if self.memory < MIN_MEMORY {
            return Err(ConfigError::TooLittleMemory {
                asked: self.memory >> 20,
                min: MIN_MEMORY >> 20,
            });
        }
        if self.memory > host_memory {
            return Err(ConfigError::TooMuchMemory {
                asked: self.memory >> 20,
                host: host_memory >> 20,
            });
        }
        // a balloon frees guest pages with MADV_DONTNEED, which locked or hugetlb memory
        // refuses (prealloc is fine: the balloon takes part of the guarantee back)
        if self.balloon.is_some() {
            if self.memory_backing.lock {
                return Err(ConfigError::BalloonPinned("lock"));
            }
            if self.memory_backing.hugepages {
                return Err(ConfigError::BalloonPinned("hugepages"));
            }
        }
        Ok(())
    }
}

/// Total RAM of this host, from `/proc/meminfo`.
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cpus: u16, memory: u64) -> VmConfig {
        VmConfig {
            kernel: "k".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            cpus,
            memory,
            boot_timer: false,
            nets: Vec::new(),
            vsock: None,
            disks: Vec::new(),
            rng: false,
            balloon: None,
            memory_backing: Default::default(),
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("5G"), Ok(5 << 30));
        assert_eq!(parse_size("5GiB"), Ok(5 << 30));
        assert_eq!(parse_size("256"), Ok(256 << 20));
        assert_eq!(parse_size("1024k"), Ok(1 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn malformed_sizes_are_rejected() {
        for s in [
            "",
            "M",
            "12QB",
            "-1G",
            "1.5G",
            "99999999999999999999G",
            "4G4",
        ] {
            assert_eq!(parse_size(s), Err(ConfigError::BadSize(s.into())), "{s}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let host = 24u64 << 30;
        assert_eq!(
            config(0, 128 << 20).validate(host, 288),
            Err(ConfigError::NoCpus)
        );
        assert!(matches!(
            config(300, 128 << 20).validate(host, 288),
            Err(ConfigError::TooManyCpus { limit: 254, .. })
        ));
        assert!(matches!(
            config(1, 1 << 20).validate(host, 288),
            Err(ConfigError::TooLittleMemory { .. })
        ));
        assert!(matches!(
            config(1, 99 << 30).validate(host, 288),
            Err(ConfigError::TooMuchMemory { .. })
        ));
        assert_eq!(config(32, 16 << 30).validate(host, 288), Ok(()));
    }

    #[test]
    fn a_balloon_cannot_go_with_pinned_memory() {
        let host = 24u64 << 30;
        let mut c = config(1, 256 << 20);
        c.balloon = Some(crate::balloon::BalloonSpec::default());
        c.memory_backing.prealloc = true;
        assert_eq!(c.validate(host, 288), Ok(()));
        c.memory_backing.lock = true;
        let e = c.validate(host, 288).unwrap_err();
        assert_eq!(e, ConfigError::BalloonPinned("lock"));
        assert!(
            e.to_string().starts_with("--balloon cannot give back"),
            "{e}"
        );
        c.memory_backing.lock = false;
        c.memory_backing.hugepages = true;
        assert_eq!(
            c.validate(host, 288),
            Err(ConfigError::BalloonPinned("hugepages"))
        );
    }
}
