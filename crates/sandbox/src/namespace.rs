//! Linux namespace kinds, their clone flags and their `/proc/PID/ns` names.

use thiserror::Error;

/// A namespace kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    Mount,
    Pid,
    Uts,
    Ipc,
    Network,
    Cgroup,
    User,
}

/// A namespace name that is not known.
#[derive(Debug, Error)]
#[error("unknown namespace type {0:?}")]
pub struct UnknownNamespace(pub String);

impl Namespace {
    /// Every kind, in the order they are joined with `setns` (user first).
    pub const ALL: [Namespace; 7] = [
        Namespace::User,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Network,
        Namespace::Pid,
        Namespace::Cgroup,
        Namespace::Mount,
    ];

    /// The `CLONE_NEW*` flag.
    pub fn clone_flag(self) -> i32 {
        match self {
            Namespace::Mount => libc::CLONE_NEWNS,
            Namespace::Pid => libc::CLONE_NEWPID,
            Namespace::Uts => libc::CLONE_NEWUTS,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Network => libc::CLONE_NEWNET,
            Namespace::Cgroup => libc::CLONE_NEWCGROUP,
            Namespace::User => libc::CLONE_NEWUSER,
        }
    }

    /// The file name under `/proc/PID/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Namespace::Mount => "mnt",
            Namespace::Pid => "pid",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Network => "net",
            Namespace::Cgroup => "cgroup",
            Namespace::User => "user",
        }
    }

    /// Parses the OCI runtime-spec name (`"mount"`, `"network"`, ...).
    pub fn from_oci(name: &str) -> Result<Self, UnknownNamespace> {
        Ok(match name {
            "mount" => Namespace::Mount,
            "pid" => Namespace::Pid,
            "uts" => Namespace::Uts,
            "ipc" => Namespace::Ipc,
            "network" => Namespace::Network,
            "cgroup" => Namespace::Cgroup,
            "user" => Namespace::User,
            other => return Err(UnknownNamespace(other.to_string())),
        })
    }
}

/// The OR of the clone flags of `set`.
pub fn clone_flags(set: impl IntoIterator<Item = Namespace>) -> i32 {
    set.into_iter().fold(0, |acc, ns| acc | ns.clone_flag())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names_round_trip_to_distinct_flags() {
        let names = ["mount", "pid", "uts", "ipc", "network", "cgroup", "user"];
        let all: Vec<_> = names
            .iter()
            .map(|n| Namespace::from_oci(n).unwrap())
            .collect();
        let flags = clone_flags(all.iter().copied());
        assert_eq!(flags.count_ones(), 7);
        assert!(Namespace::from_oci("time").is_err());
    }
}
