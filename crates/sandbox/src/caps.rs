//! Capability names, sets and the default set a container keeps.

use crate::syscall::{SysResult, Syscall};
use thiserror::Error;

/// Capability names in kernel number order (`CAP_CHOWN` is 0).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The set a container keeps when its config names none (Docker's and Podman's default).
pub const DEFAULT: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A capability name that is not known.
#[derive(Debug, Error)]
#[error("unknown capability {0:?}")]
pub struct UnknownCapability(pub String);

/// A set of capabilities as a bit mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Parses names like `CAP_KILL` (the `CAP_` prefix is optional, case-insensitive).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, UnknownCapability> {
        let mut bits = 0u64;
        for name in names {
            let raw = name.as_ref();
            let upper = raw.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let idx = NAMES
                .iter()
                .position(|n| *n == full)
                .ok_or_else(|| UnknownCapability(raw.to_string()))?;
            bits |= 1 << idx;
        }
        Ok(CapSet(bits))
    }

    /// The default container set, [`DEFAULT`].
    pub fn default_container() -> Self {
        // The names in DEFAULT are all in NAMES (checked by a unit test).
        Self::from_names(&DEFAULT).unwrap_or_default()
    }

    /// Whether `cap` (kernel number) is in the set.
    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }
}

/// The capability sets of a process, as OCI `process.capabilities` describes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub bounding: CapSet,
    pub effective: CapSet,
    pub permitted: CapSet,
    pub inheritable: CapSet,
    pub ambient: CapSet,
}

impl Capabilities {
    /// The same set in every field except ambient (empty).
    pub fn uniform(set: CapSet) -> Self {
        Capabilities {
            bounding: set,
            effective: set,
            permitted: set,
            inheritable: CapSet::default(),
            ambient: CapSet::default(),
        }
    }
}

/// Drops every capability outside `caps.bounding` from the bounding set. Needs
/// `CAP_SETPCAP`, so it runs before [`apply_sets`].
pub fn drop_bounding(sys: &dyn Syscall, caps: &Capabilities) -> SysResult<()> {
    for cap in 0..NAMES.len() as u32 {
        if !caps.bounding.contains(cap) {
            sys.drop_bounding_cap(cap)?;
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable, then the ambient set. Ambient capabilities
/// that are not also permitted and inheritable cannot be raised and are left out, as runc does.
pub fn apply_sets(sys: &dyn Syscall, caps: &Capabilities) -> SysResult<()> {
    sys.capset(caps.effective.0, caps.permitted.0, caps.inheritable.0)?;
    let ambient = caps.ambient.0 & caps.permitted.0 & caps.inheritable.0;
    sys.set_ambient(ambient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    #[test]
    fn parses_names_with_and_without_prefix() {
        let set = CapSet::from_names(&["CAP_KILL", "net_bind_service"]).unwrap();
        assert!(set.contains(5));
        assert!(set.contains(10));
        assert!(!set.contains(21));
        assert!(CapSet::from_names(&["CAP_NOPE"]).is_err());
    }

    #[test]
    fn default_set_excludes_sys_admin_and_module() {
        let set = CapSet::default_container();
        assert_eq!(set.0.count_ones(), DEFAULT.len() as u32);
        assert!(!set.contains(21), "CAP_SYS_ADMIN");
        assert!(!set.contains(16), "CAP_SYS_MODULE");
        assert!(!set.contains(22), "CAP_SYS_BOOT");
    }

    #[test]
    fn drop_bounding_drops_everything_not_kept() {
        let fake = RecordingSyscall::new();
        let caps = Capabilities::uniform(CapSet::from_names(&["CAP_KILL"]).unwrap());
        drop_bounding(&fake, &caps).unwrap();
        let calls = fake.calls();
        assert_eq!(calls.len(), NAMES.len() - 1);
        assert!(!calls.contains(&Call::DropBoundingCap(5)));
    }

    #[test]
    fn ambient_is_limited_to_permitted_and_inheritable() {
        let fake = RecordingSyscall::new();
        let kill = CapSet::from_names(&["CAP_KILL"]).unwrap();
        let mut caps = Capabilities::uniform(kill);
        caps.ambient = kill;
        apply_sets(&fake, &caps).unwrap();
        assert_eq!(fake.calls()[1], Call::Ambient(0));
        caps.inheritable = kill;
        let fake = RecordingSyscall::new();
        apply_sets(&fake, &caps).unwrap();
        assert_eq!(fake.calls()[1], Call::Ambient(kill.0));
    }
}
