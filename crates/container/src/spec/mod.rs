//! The OCI runtime-spec `config.json`, the subset kapsel implements.
//!
//! Every struct keeps the keys it does not know in an `other` map, and [`Spec::unsupported`]
//! names each of them with its JSON path: a field kapsel does not implement is an error, never
//! silently ignored. Values that are present but set to their "off" default (an empty hook
//! list, an empty AppArmor profile) are accepted.

mod convert;

pub use convert::to_config;

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use thiserror::Error;

/// Reading or checking `config.json` failed.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid OCI runtime config")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported OCI config field(s): {}", .0.join(", "))]
    Unsupported(Vec<String>),
    #[error("invalid OCI config: {0}")]
    Invalid(String),
}

type Other = BTreeMap<String, Value>;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub oci_version: String,
    pub process: Option<Process>,
    pub root: Option<Root>,
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    pub linux: Option<Linux>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub hooks: Option<Value>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub apparmor_profile: Option<String>,
    pub selinux_label: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    pub umask: Option<u32>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Root {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default)]
    pub gid_mappings: Vec<IdMapping>,
    pub resources: Option<Resources>,
    pub cgroups_path: Option<String>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    pub rootfs_propagation: Option<String>,
    pub mount_label: Option<String>,
    pub seccomp: Option<Seccomp>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    pub default_action: String,
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub syscalls: Vec<SeccompSyscall>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompSyscall {
    pub names: Vec<String>,
    pub action: String,
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<SeccompArg>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompArg {
    pub index: u8,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    #[serde(default)]
    pub op: SeccompOp,
}

/// The operator name, kept as text and checked in conversion.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct SeccompOp(#[serde(deserialize_with = "op_name")] pub Option<sandbox::seccomp::CmpOp>);

fn op_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<sandbox::seccomp::CmpOp>, D::Error> {
    let s = String::deserialize(d)?;
    sandbox::seccomp::CmpOp::from_oci(&s)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown seccomp operator {s:?}")))
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdMapping {
    #[serde(rename = "containerID")]
    pub container_id: u32,
    #[serde(rename = "hostID")]
    pub host_id: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    pub file_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default)]
    pub devices: Vec<DeviceCgroup>,
    pub memory: Option<Memory>,
    pub cpu: Option<Cpu>,
    pub pids: Option<Pids>,
    #[serde(rename = "blockIO")]
    pub block_io: Option<BlockIo>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeviceCgroup {
    pub allow: bool,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Memory {
    pub limit: Option<i64>,
    pub reservation: Option<i64>,
    pub swap: Option<i64>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Cpu {
    pub shares: Option<u64>,
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pids {
    pub limit: i64,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockIo {
    pub weight: Option<u16>,
    #[serde(default)]
    pub throttle_read_bps_device: Vec<ThrottleDevice>,
    #[serde(default)]
    pub throttle_write_bps_device: Vec<ThrottleDevice>,
    #[serde(default)]
    pub throttle_read_iops_device: Vec<ThrottleDevice>,
    #[serde(default)]
    pub throttle_write_iops_device: Vec<ThrottleDevice>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct ThrottleDevice {
    pub major: i64,
    pub minor: i64,
    pub rate: u64,
}

impl Spec {
    /// Reads and parses `bundle/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|source| SpecError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Result<Spec, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// JSON paths of every field present that kapsel does not implement.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut other = |prefix: &str, map: &Other| {
            out.extend(map.keys().map(|k| format!("{prefix}{k}")));
        };
        other("", &self.other);
        if let Some(p) = &self.process {
            other("process.", &p.other);
            other("process.user.", &p.user.other);
            if let Some(c) = &p.capabilities {
                other("process.capabilities.", &c.other);
            }
        }
        if let Some(r) = &self.root {
            other("root.", &r.other);
        }
        for (i, m) in self.mounts.iter().enumerate() {
            other(&format!("mounts[{i}]."), &m.other);
        }
        if let Some(l) = &self.linux {
            other("linux.", &l.other);
            for (i, n) in l.namespaces.iter().enumerate() {
                other(&format!("linux.namespaces[{i}]."), &n.other);
            }
            for (i, d) in l.devices.iter().enumerate() {
                other(&format!("linux.devices[{i}]."), &d.other);
            }
            if let Some(sc) = &l.seccomp {
                other("linux.seccomp.", &sc.other);
                for (i, c) in sc.syscalls.iter().enumerate() {
                    other(&format!("linux.seccomp.syscalls[{i}]."), &c.other);
                }
            }
            if let Some(r) = &l.resources {
                other("linux.resources.", &r.other);
                for (i, d) in r.devices.iter().enumerate() {
                    other(&format!("linux.resources.devices[{i}]."), &d.other);
                }
                if let Some(m) = &r.memory {
                    other("linux.resources.memory.", &m.other);
                }
                if let Some(c) = &r.cpu {
                    other("linux.resources.cpu.", &c.other);
                }
                if let Some(p) = &r.pids {
                    other("linux.resources.pids.", &p.other);
                }
                if let Some(b) = &r.block_io {
                    other("linux.resources.blockIO.", &b.other);
                }
            }
        }
        self.unsupported_values(&mut out);
        out.sort();
        out
    }

    /// Known keys whose value asks for something kapsel does not do.
    fn unsupported_values(&self, out: &mut Vec<String>) {
        let hooks_set = match &self.hooks {
            Some(Value::Object(m)) => m
                .values()
                .any(|v| !matches!(v, Value::Array(a) if a.is_empty())),
            Some(Value::Null) | None => false,
            Some(_) => true,
        };
        if hooks_set {
            out.push("hooks".into());
        }
        if let Some(p) = &self.process {
            if p.apparmor_profile.as_deref().is_some_and(|s| !s.is_empty()) {
                out.push("process.apparmorProfile".into());
            }
            if p.selinux_label.as_deref().is_some_and(|s| !s.is_empty()) {
                out.push("process.selinuxLabel".into());
            }
        }
        if let Some(l) = &self.linux {
            if l.mount_label.as_deref().is_some_and(|s| !s.is_empty()) {
                out.push("linux.mountLabel".into());
            }
            if l.seccomp.as_ref().is_some_and(|s| !s.flags.is_empty()) {
                out.push("linux.seccomp.flags".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `runc spec` writes (runc 1.1, Debian 12).
    pub(crate) const RUNC_SPEC: &str = include_str!("testdata/runc-spec.json");

    #[test]
    fn runc_spec_parses_with_nothing_unsupported() {
        let spec = Spec::parse(RUNC_SPEC).unwrap();
        assert_eq!(spec.unsupported(), Vec::<String>::new());
        assert_eq!(spec.mounts.len(), 7);
        assert_eq!(spec.process.unwrap().args, vec!["sh"]);
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let text = r#"{"ociVersion":"1.0.2","linux":{"intelRdt":{},"resources":{"hugepageLimits":[]}},
            "process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0},"ioPriority":{}},
            "hooks":{"prestart":[{"path":"/bin/true"}]}}"#;
        let spec = Spec::parse(text).unwrap();
        let mut u = spec.unsupported();
        u.sort();
        assert_eq!(
            u,
            vec![
                "hooks",
                "linux.intelRdt",
                "linux.resources.hugepageLimits",
                "process.ioPriority"
            ]
        );
    }

    #[test]
    fn empty_hooks_and_profiles_are_accepted() {
        let text = r#"{"ociVersion":"1.0.2","hooks":{"prestart":[]},
            "process":{"args":["true"],"cwd":"/","apparmorProfile":""}}"#;
        assert!(Spec::parse(text).unwrap().unsupported().is_empty());
    }
}
