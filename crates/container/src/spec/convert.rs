//! OCI [`Spec`] → [`ContainerConfig`]: validation and defaults in one place.

use super::{Spec, SpecError};
use crate::config::{
    default_devices, ContainerConfig, DeviceNode, IdMap, MountConfig, ProcessConfig, RootfsSource,
    SeccompPolicy,
};
use sandbox::caps::{CapSet, Capabilities};
use sandbox::cgroup::{DeviceRule, Resources, Throttle, ThrottleKind};
use sandbox::namespace::Namespace;
use sandbox::rlimit::{resource_from_name, Rlimit};
use std::path::{Path, PathBuf};

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

/// Converts a parsed spec from `bundle` into a container config named `id`.
pub fn to_config(spec: &Spec, id: &str, bundle: &Path) -> Result<ContainerConfig, SpecError> {
    let unsupported = spec.unsupported();
    if !unsupported.is_empty() {
        return Err(SpecError::Unsupported(unsupported));
    }
    let root = spec
        .root
        .as_ref()
        .ok_or_else(|| invalid("root is required"))?;
    let root_path = absolute(bundle, &root.path);
    let process = spec
        .process
        .as_ref()
        .ok_or_else(|| invalid("process is required"))?;
    if process.args.is_empty() {
        return Err(invalid("process.args must not be empty"));
    }
    if !process.cwd.starts_with('/') {
        return Err(invalid("process.cwd must be an absolute path"));
    }
    let mut cfg = ContainerConfig::new(id, RootfsSource::Bind(root_path), process.args.clone());
    cfg.rootfs_readonly = root.readonly;
    cfg.hostname = spec.hostname.clone();
    cfg.process = convert_process(process)?;
    cfg.mounts = spec
        .mounts
        .iter()
        .map(|m| {
            let source = m.source.clone().unwrap_or_default();
            let is_bind = m.options.iter().any(|o| o == "bind" || o == "rbind");
            let source = if is_bind && !source.starts_with('/') {
                absolute(bundle, &source).display().to_string()
            } else {
                source
            };
            let kind = m.kind.clone().unwrap_or_else(|| {
                if is_bind {
                    "bind".into()
                } else {
                    "none".into()
                }
            });
            MountConfig {
                destination: m.destination.clone(),
                kind,
                source,
                options: m.options.clone(),
            }
        })
        .collect();
    cfg.bundle = Some(bundle.to_path_buf());
    cfg.annotations = spec.annotations.clone();
    cfg.seccomp = SeccompPolicy::Default;
    match &spec.linux {
        Some(linux) => convert_linux(&mut cfg, linux)?,
        None => {
            cfg.namespaces.clear();
            cfg.masked_paths.clear();
            cfg.readonly_paths.clear();
        }
    }
    Ok(cfg)
}

fn absolute(bundle: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        bundle.join(p)
    }
}

fn caps(names: &[String], what: &str) -> Result<CapSet, SpecError> {
    CapSet::from_names(names).map_err(|e| invalid(format!("process.capabilities.{what}: {e}")))
}

fn convert_process(p: &super::Process) -> Result<ProcessConfig, SpecError> {
    let mut out = ProcessConfig::new(p.args.clone());
    out.env = p.env.clone();
    out.cwd = p.cwd.clone();
    out.uid = p.user.uid;
    out.gid = p.user.gid;
    out.additional_gids = p.user.additional_gids.clone();
    out.terminal = p.terminal;
    out.no_new_privileges = p.no_new_privileges;
    out.oom_score_adj = p.oom_score_adj;
    out.capabilities = match &p.capabilities {
        // The spec: absent sets mean empty sets.
        Some(c) => Capabilities {
            bounding: caps(&c.bounding, "bounding")?,
            effective: caps(&c.effective, "effective")?,
            permitted: caps(&c.permitted, "permitted")?,
            inheritable: caps(&c.inheritable, "inheritable")?,
            ambient: caps(&c.ambient, "ambient")?,
        },
        None => Capabilities::default(),
    };
    out.rlimits = p
        .rlimits
        .iter()
        .map(|r| {
            let resource = resource_from_name(&r.kind)
                .map_err(|e| invalid(format!("process.rlimits: {e}")))?;
            Ok(Rlimit {
                resource,
                soft: r.soft,
                hard: r.hard,
            })
        })
        .collect::<Result<_, SpecError>>()?;
    Ok(out)
}

fn propagation(name: &str) -> Result<u64, SpecError> {
    let f = match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        other => {
            return Err(invalid(format!(
                "linux.rootfsPropagation: unknown {other:?}"
            )))
        }
    };
    Ok(f)
}

fn convert_linux(cfg: &mut ContainerConfig, l: &super::Linux) -> Result<(), SpecError> {
    cfg.namespaces = l
        .namespaces
        .iter()
        .map(|n| {
            let ns = Namespace::from_oci(&n.kind)
                .map_err(|e| invalid(format!("linux.namespaces: {e}")))?;
            let path = n.path.as_ref().filter(|p| !p.is_empty()).map(PathBuf::from);
            if path.is_some() && matches!(ns, Namespace::Pid | Namespace::User | Namespace::Mount) {
                return Err(SpecError::Unsupported(vec![format!(
                    "linux.namespaces[type={}].path (joining an existing {} namespace)",
                    n.kind, n.kind
                )]));
            }
            Ok((ns, path))
        })
        .collect::<Result<_, SpecError>>()?;
    let map = |m: &super::IdMapping| IdMap {
        container_id: m.container_id,
        host_id: m.host_id,
        size: m.size,
    };
    cfg.uid_mappings = l.uid_mappings.iter().map(map).collect();
    cfg.gid_mappings = l.gid_mappings.iter().map(map).collect();
    if cfg.has_namespace(Namespace::User) && cfg.uid_mappings.is_empty() {
        return Err(invalid("a user namespace needs linux.uidMappings"));
    }
    if let Some(p) = &l.cgroups_path {
        if p.contains(':') {
            return Err(SpecError::Unsupported(vec![format!(
                "linux.cgroupsPath {p:?} (systemd slice:prefix:name syntax)"
            )]));
        }
        cfg.cgroups_path = p.clone();
    }
    let mut devices = default_devices();
    for d in &l.devices {
        let kind = d.kind.chars().next().filter(|c| "cbup".contains(*c));
        let kind = kind.ok_or_else(|| invalid(format!("linux.devices: bad type {:?}", d.kind)))?;
        devices.retain(|x| x.path != d.path);
        devices.push(DeviceNode {
            path: d.path.clone(),
            kind,
            major: d.major,
            minor: d.minor,
            mode: d.file_mode.unwrap_or(0o666),
            uid: d.uid.unwrap_or(0),
            gid: d.gid.unwrap_or(0),
        });
    }
    cfg.devices = devices;
    cfg.masked_paths = l.masked_paths.clone();
    cfg.readonly_paths = l.readonly_paths.clone();
    cfg.sysctl = l.sysctl.clone();
    if let Some(p) = &l.rootfs_propagation {
        cfg.rootfs_propagation = propagation(p)?;
    }
    if let Some(r) = &l.resources {
        cfg.resources = convert_resources(r)?;
    }
    if !cfg.resources.devices.is_empty() {
        cfg.resources
            .devices
            .extend(implicit_device_rules(&cfg.devices));
    }
    if let Some(sc) = &l.seccomp {
        cfg.seccomp = SeccompPolicy::Profile(convert_seccomp(sc)?);
    }
    Ok(())
}

/// Device-cgroup rules appended after the spec's own (as runc does): the container's device
/// nodes and its terminals stay usable even under a "deny all" rule.
fn implicit_device_rules(devices: &[DeviceNode]) -> Vec<DeviceRule> {
    let rule = |kind, major, minor: Option<i64>| DeviceRule {
        allow: true,
        kind,
        major: Some(major),
        minor,
        access: "rwm".into(),
    };
    let mut rules: Vec<DeviceRule> = devices
        .iter()
        .filter(|d| d.kind == 'c' || d.kind == 'b')
        .map(|d| rule(d.kind, d.major, Some(d.minor)))
        .collect();
    rules.push(rule('c', 5, Some(1))); // /dev/console
    rules.push(rule('c', 5, Some(2))); // /dev/ptmx
    rules.push(rule('c', 136, None)); // /dev/pts/*
    rules
}

fn convert_seccomp(sc: &super::Seccomp) -> Result<sandbox::seccomp::Profile, SpecError> {
    use sandbox::seccomp::{Action, ArgCmp, Profile, SyscallRule};
    let action = |name: &str, errno: Option<u32>| {
        Action::from_oci(name, errno)
            .ok_or_else(|| invalid(format!("linux.seccomp: unknown action {name:?}")))
    };
    let rules = sc
        .syscalls
        .iter()
        .map(|c| {
            Ok(SyscallRule {
                names: c.names.clone(),
                action: action(&c.action, c.errno_ret)?,
                args: c
                    .args
                    .iter()
                    .map(|a| {
                        Ok(ArgCmp {
                            index: a.index,
                            value: a.value,
                            value_two: a.value_two,
                            op: a
                                .op
                                .0
                                .ok_or_else(|| invalid("linux.seccomp: argument without op"))?,
                        })
                    })
                    .collect::<Result<_, SpecError>>()?,
            })
        })
        .collect::<Result<_, SpecError>>()?;
    Ok(Profile {
        default_action: action(&sc.default_action, sc.default_errno_ret)?,
        rules,
    })
}

fn convert_resources(r: &super::Resources) -> Result<Resources, SpecError> {
    let mut out = Resources::default();
    if let Some(m) = &r.memory {
        out.memory_limit = m.limit;
        out.memory_reservation = m.reservation;
        out.memory_swap = m.swap;
    }
    if let Some(c) = &r.cpu {
        out.cpu_shares = c.shares;
        out.cpu_quota = c.quota;
        out.cpu_period = c.period;
        out.cpuset_cpus = c.cpus.clone().filter(|s| !s.is_empty());
        out.cpuset_mems = c.mems.clone().filter(|s| !s.is_empty());
    }
    if let Some(p) = &r.pids {
        out.pids_limit = Some(p.limit);
    }
    if let Some(b) = &r.block_io {
        out.blkio_weight = b.weight;
        let lists = [
            (&b.throttle_read_bps_device, ThrottleKind::ReadBps),
            (&b.throttle_write_bps_device, ThrottleKind::WriteBps),
            (&b.throttle_read_iops_device, ThrottleKind::ReadIops),
            (&b.throttle_write_iops_device, ThrottleKind::WriteIops),
        ];
        for (list, kind) in lists {
            out.blkio_throttle.extend(list.iter().map(|t| Throttle {
                major: t.major,
                minor: t.minor,
                kind,
                rate: t.rate,
            }));
        }
    }
    out.devices = r
        .devices
        .iter()
        .map(|d| DeviceRule {
            allow: d.allow,
            kind: d
                .kind
                .as_deref()
                .and_then(|k| k.chars().next())
                .unwrap_or('a'),
            major: d.major,
            minor: d.minor,
            access: d.access.clone().unwrap_or_else(|| "rwm".into()),
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::RUNC_SPEC;

    #[test]
    fn runc_spec_converts() {
        let spec = Spec::parse(RUNC_SPEC).unwrap();
        let cfg = to_config(&spec, "t1", Path::new("/b")).unwrap();
        assert_eq!(cfg.rootfs, RootfsSource::Bind("/b/rootfs".into()));
        assert!(cfg.rootfs_readonly);
        assert_eq!(cfg.hostname.as_deref(), Some("runc"));
        assert!(!cfg.has_namespace(Namespace::Cgroup));
        assert!(cfg.has_namespace(Namespace::Pid));
        assert_eq!(cfg.process.capabilities.bounding.0.count_ones(), 3);
        assert_eq!(cfg.devices.len(), 6);
        assert!(!cfg.resources.devices[0].allow, "deny-all first");
        assert!(cfg.resources.devices[1..].iter().all(|d| d.allow));
        assert_eq!(cfg.resources.devices.len(), 1 + 6 + 3);
        assert_eq!(cfg.process.rlimits[0].soft, 1024);
    }

    #[test]
    fn joining_a_pid_namespace_is_unsupported_and_named() {
        let text = r#"{"ociVersion":"1.0.2","root":{"path":"r"},
            "process":{"args":["true"],"cwd":"/"},
            "linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#;
        let err = to_config(&Spec::parse(text).unwrap(), "x", Path::new("/b")).unwrap_err();
        assert!(
            err.to_string().contains("linux.namespaces[type=pid].path"),
            "{err}"
        );
    }

    #[test]
    fn seccomp_profile_converts_and_flags_are_unsupported() {
        let text = r#"{"ociVersion":"1.0.2","root":{"path":"r"},
            "process":{"args":["true"],"cwd":"/"},
            "linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
              "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]}]}}}"#;
        let cfg = to_config(&Spec::parse(text).unwrap(), "x", Path::new("/b")).unwrap();
        let SeccompPolicy::Profile(p) = &cfg.seccomp else {
            panic!("no profile: {:?}", cfg.seccomp);
        };
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.compile().unwrap().len(), 1);
        let flagged = text.replace(
            r#""syscalls""#,
            r#""flags":["SECCOMP_FILTER_FLAG_LOG"],"syscalls""#,
        );
        let err = to_config(&Spec::parse(&flagged).unwrap(), "x", Path::new("/b")).unwrap_err();
        assert!(err.to_string().contains("linux.seccomp.flags"), "{err}");
    }

    #[test]
    fn bad_capability_is_invalid() {
        let text = r#"{"ociVersion":"1.0.2","root":{"path":"r"},
            "process":{"args":["true"],"cwd":"/","capabilities":{"bounding":["CAP_FLY"]}}}"#;
        let err = to_config(&Spec::parse(text).unwrap(), "x", Path::new("/b")).unwrap_err();
        assert!(err.to_string().contains("CAP_FLY"), "{err}");
    }
}
