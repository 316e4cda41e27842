//! The init plan: every path, string and filter the container's first process needs,
//! prepared in the parent so the child only makes syscalls (no allocation after `clone`).

use super::mount_opts;
use crate::config::{ContainerConfig, SeccompPolicy};
use sandbox::caps::Capabilities;
use sandbox::namespace::Namespace;
use sandbox::rlimit::Rlimit;
use sandbox::syscall::Ids;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Preparing the plan failed.
#[derive(Debug, Error)]
pub enum PlanError {
    #[error("{what} contains a NUL byte")]
    Nul { what: String },
    #[error("mount destination {0:?} must be absolute and must not contain '..'")]
    BadDestination(String),
    #[error("a hostname needs a UTS namespace")]
    HostnameWithoutUts,
    #[error(transparent)]
    Seccomp(#[from] sandbox::seccomp::SeccompError),
}

fn cstr(s: impl Into<Vec<u8>>, what: &str) -> Result<CString, PlanError> {
    CString::new(s).map_err(|_| PlanError::Nul { what: what.into() })
}

fn cpath(p: &Path) -> Result<CString, PlanError> {
    use std::os::unix::ffi::OsStrExt;
    cstr(p.as_os_str().as_bytes(), &p.display().to_string())
}

/// One filesystem operation on the host side of `pivot_root` (absolute host paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    Mkdir(CString),
    Touch(CString),
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: u64,
        data: Option<CString>,
    },
    Mknod {
        path: CString,
        mode: u32,
        dev: u64,
        ids: Ids,
    },
    Symlink {
        target: CString,
        link: CString,
    },
}

impl FsOp {
    fn mount(source: Option<&str>, target: &CString, fstype: Option<&str>, flags: u64) -> Self {
        FsOp::Mount {
            source: source.and_then(|s| CString::new(s).ok()),
            target: target.clone(),
            fstype: fstype.and_then(|s| CString::new(s).ok()),
            flags,
            data: None,
        }
    }

    /// A one-line description for error messages.
    pub fn describe(&self) -> String {
        match self {
            FsOp::Mkdir(p) => format!("mkdir {p:?}"),
            FsOp::Touch(p) => format!("create {p:?}"),
            FsOp::Mount {
                source,
                target,
                fstype,
                ..
            } => format!("mount {source:?} ({fstype:?}) on {target:?}"),
            FsOp::Mknod { path, .. } => format!("mknod {path:?}"),
            FsOp::Symlink { link, .. } => format!("symlink {link:?}"),
        }
    }
}

/// How the root filesystem is mounted at [`InitPlan::rootfs`] before pivoting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootMount {
    /// Bind the directory onto itself (pivot_root needs a mount point).
    Bind,
    /// overlayfs with these options.
    Overlay(CString),
}

/// Everything the child does, in order; see [`super::run`].
#[derive(Debug)]
pub struct InitPlan {
    /// Existing namespaces to join: (fd, CLONE_NEW* flag).
    pub join: Vec<(i32, i32)>,
    /// In a new user namespace: become its root (mapped) before touching any filesystem.
    pub become_ns_root: bool,
    /// Unshare the cgroup namespace after the parent moved us into our cgroup.
    pub unshare_cgroup: bool,
    /// Terminal to make the controlling tty and stdio.
    pub console: Option<i32>,
    pub propagation: u64,
    pub rootfs: CString,
    pub root_mount: RootMount,
    /// Mounts, device nodes and links under `rootfs` (host paths, before pivot_root).
    pub fs_ops: Vec<FsOp>,
    /// Paths (inside the container) to hide and to make read-only, after pivot_root.
    pub masked: Vec<CString>,
    pub readonly: Vec<CString>,
    pub rootfs_readonly: bool,
    pub hostname: Option<CString>,
    pub sysctl: Vec<(CString, CString)>,
    pub oom_score_adj: Option<CString>,
    pub rlimits: Vec<Rlimit>,
    pub cwd: CString,
    pub caps: Capabilities,
    pub ids: Ids,
    pub groups: Vec<libc::gid_t>,
    pub no_new_privs: bool,
    pub seccomp: Vec<Vec<libc::sock_filter>>,
    /// Where the parent reads 'R'eady / 'E'rror records.
    pub status_fd: i32,
    /// `/proc/self/fd/N` of the exec FIFO to block on until `start`, if any.
    pub exec_fifo: Option<CString>,
    /// Paths to try for `argv[0]` (PATH search done by hand, allocation-free).
    pub exec_paths: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// NULL-terminated pointer arrays into `argv` and `envp`, built here because the child
    /// must not allocate (another thread of the parent may have held the allocator's lock
    /// at `clone` time; the child would wait for it forever).
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

/// Inputs that come from the parent's setup rather than the config.
#[derive(Debug, Default)]
pub struct PlanInputs {
    /// Where the root filesystem is (to be) mounted on the host.
    pub rootfs: PathBuf,
    /// overlayfs options when the root is an overlay.
    pub overlay: Option<String>,
    /// The group's host directories, keyed by the name under `/sys/fs/cgroup`.
    pub cgroup_dirs: Vec<(String, PathBuf)>,
    /// Join-namespace fds opened by the parent.
    pub join: Vec<(i32, i32)>,
    /// The console: (slave fd, slave path on the host).
    pub console: Option<(i32, PathBuf)>,
    pub status_fd: i32,
    pub exec_fifo_fd: Option<i32>,
}

impl InitPlan {
    /// `argv` as a NULL-terminated pointer array.
    pub fn argv_ptrs(&self) -> &[*const libc::c_char] {
        &self.argv_ptrs
    }

    /// `envp` as a NULL-terminated pointer array.
    pub fn envp_ptrs(&self) -> &[*const libc::c_char] {
        &self.envp_ptrs
    }
}

fn ptrs(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Joins an in-container absolute path onto `root`, refusing `..`.
fn under(root: &Path, dest: &str) -> Result<PathBuf, PlanError> {
    if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
        return Err(PlanError::BadDestination(dest.into()));
    }
    Ok(root.join(dest.trim_start_matches('/')))
}

/// `mkdir` for every directory from just below `root` down to `dir`.
fn mkdir_chain(root: &Path, dir: &Path, ops: &mut Vec<FsOp>) -> Result<(), PlanError> {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        cur.push(comp);
        ops.push(FsOp::Mkdir(cpath(&cur)?));
    }
    Ok(())
}

/// Builds the plan for `cfg` with the parent-side inputs `inp`.
pub fn build(cfg: &ContainerConfig, inp: PlanInputs) -> Result<InitPlan, PlanError> {
    let userns = cfg.has_namespace(Namespace::User);
    if cfg.hostname.is_some() && !cfg.has_namespace(Namespace::Uts) {
        return Err(PlanError::HostnameWithoutUts);
    }
    let mut fs_ops = Vec::new();
    let mut has_devpts = false;
    for m in &cfg.mounts {
        has_devpts |= m.kind == "devpts";
        mount_ops(&inp, m, &mut fs_ops)?;
    }
    device_ops(cfg, &inp.rootfs, userns, has_devpts, &mut fs_ops)?;
    if let Some((_, slave_path)) = &inp.console {
        let console = cpath(&inp.rootfs.join("dev/console"))?;
        fs_ops.push(FsOp::Touch(console.clone()));
        let src = slave_path.to_string_lossy();
        fs_ops.push(FsOp::mount(Some(&src), &console, None, libc::MS_BIND));
    }
    let process = &cfg.process;
    let exec_paths = exec_candidates(&process.args[0], &process.env)
        .into_iter()
        .map(|p| cstr(p, "process.args[0]"))
        .collect::<Result<_, _>>()?;
    let seccomp = match &cfg.seccomp {
        SeccompPolicy::Default => sandbox::seccomp::default_profile()?,
        SeccompPolicy::Profile(p) => p.compile()?,
        SeccompPolicy::Unconfined => Vec::new(),
    };
    let argv: Vec<CString> = process
        .args
        .iter()
        .map(|a| cstr(a.as_str(), "process.args"))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = process
        .env
        .iter()
        .map(|e| cstr(e.as_str(), "process.env"))
        .collect::<Result<_, _>>()?;
    // The pointers stay valid when the Vecs move into the plan: CString data is on the heap.
    let (argv_ptrs, envp_ptrs) = (ptrs(&argv), ptrs(&envp));
    Ok(InitPlan {
        join: inp.join,
        become_ns_root: userns,
        unshare_cgroup: cfg
            .namespaces
            .iter()
            .any(|(n, p)| *n == Namespace::Cgroup && p.is_none()),
        console: inp.console.as_ref().map(|(fd, _)| *fd),
        propagation: cfg.rootfs_propagation,
        rootfs: cpath(&inp.rootfs)?,
        root_mount: match inp.overlay {
            Some(o) => RootMount::Overlay(cstr(o, "overlay options")?),
            None => RootMount::Bind,
        },
        fs_ops,
        masked: cfg
            .masked_paths
            .iter()
            .map(|p| cstr(p.as_str(), "linux.maskedPaths"))
            .collect::<Result<_, _>>()?,
        readonly: cfg
            .readonly_paths
            .iter()
            .map(|p| cstr(p.as_str(), "linux.readonlyPaths"))
            .collect::<Result<_, _>>()?,
        rootfs_readonly: cfg.rootfs_readonly,
        hostname: cfg
            .hostname
            .as_deref()
            .map(|h| cstr(h, "hostname"))
            .transpose()?,
        sysctl: cfg
            .sysctl
            .iter()
            .map(|(k, v)| {
                let path = format!("/proc/sys/{}", k.replace('.', "/"));
                Ok((
                    cstr(path, "linux.sysctl")?,
                    cstr(v.as_str(), "linux.sysctl")?,
                ))
            })
            .collect::<Result<_, PlanError>>()?,
        oom_score_adj: process
            .oom_score_adj
            .map(|v| cstr(v.to_string(), "oomScoreAdj"))
            .transpose()?,
        rlimits: process.rlimits.clone(),
        cwd: cstr(process.cwd.as_str(), "process.cwd")?,
        caps: process.capabilities,
        ids: Ids {
            uid: process.uid,
            gid: process.gid,
        },
        groups: process.additional_gids.clone(),
        no_new_privs: process.no_new_privileges,
        seccomp,
        status_fd: inp.status_fd,
        exec_fifo: inp
            .exec_fifo_fd
            .map(|fd| cstr(format!("/proc/self/fd/{fd}"), "fifo"))
            .transpose()?,
        exec_paths,
        argv,
        envp,
        argv_ptrs,
        envp_ptrs,
    })
}

/// Candidate executables for `arg0`: itself if it has a slash, else each PATH entry.
fn exec_candidates(arg0: &str, env: &[String]) -> Vec<String> {
    if arg0.contains('/') {
        return vec![arg0.to_string()];
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}/{arg0}", d.trim_end_matches('/')))
        .collect()
}

fn mount_ops(
    inp: &PlanInputs,
    m: &crate::config::MountConfig,
    ops: &mut Vec<FsOp>,
) -> Result<(), PlanError> {
    let target_path = under(&inp.rootfs, &m.destination)?;
    let target = cpath(&target_path)?;
    let o = mount_opts::parse(&m.options);
    let bind = o.bind || m.kind == "bind";
    let source_is_file = bind && !Path::new(&m.source).is_dir();
    if source_is_file {
        if let Some(parent) = target_path.parent() {
            mkdir_chain(&inp.rootfs, parent, ops)?;
        }
        ops.push(FsOp::Touch(target.clone()));
    } else {
        mkdir_chain(&inp.rootfs, &target_path, ops)?;
    }
    let ro = o.flags & libc::MS_RDONLY != 0;
    if m.kind == "cgroup" {
        return cgroup_ops(inp, &target_path, o.flags, ro, ops);
    }
    if bind {
        let rec = if o.recursive { libc::MS_REC } else { 0 };
        ops.push(FsOp::mount(
            Some(&m.source),
            &target,
            None,
            libc::MS_BIND | rec,
        ));
        let extra = o.flags & !(libc::MS_REMOUNT);
        if extra != 0 {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | rec | extra;
            ops.push(FsOp::mount(None, &target, None, flags));
        }
    } else {
        ops.push(FsOp::Mount {
            source: Some(cstr(m.source.as_str(), "mount source")?),
            target: target.clone(),
            fstype: Some(cstr(m.kind.as_str(), "mount type")?),
            flags: o.flags,
            data: (!o.data.is_empty())
                .then(|| cstr(o.data.as_str(), "mount options"))
                .transpose()?,
        });
    }
    if o.propagation != 0 {
        ops.push(FsOp::mount(None, &target, None, o.propagation));
    }
    Ok(())
}

/// `/sys/fs/cgroup`: the container's own group directories, bind-mounted (read-only when
/// asked), under a tmpfs on v1; the group's unified directory itself on v2.
fn cgroup_ops(
    inp: &PlanInputs,
    target_path: &Path,
    flags: u64,
    ro: bool,
    ops: &mut Vec<FsOp>,
) -> Result<(), PlanError> {
    let target = cpath(target_path)?;
    let bind_ro = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    let unified = inp.cgroup_dirs.len() == 1 && inp.cgroup_dirs[0].0.is_empty();
    if unified {
        let src = inp.cgroup_dirs[0].1.to_string_lossy();
        ops.push(FsOp::mount(Some(&src), &target, None, libc::MS_BIND));
        if ro {
            ops.push(FsOp::mount(None, &target, None, bind_ro));
        }
        return Ok(());
    }
    let tmpfs_flags =
        (flags & !libc::MS_RDONLY) | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    ops.push(FsOp::Mount {
        source: Some(c"tmpfs".into()),
        target: target.clone(),
        fstype: Some(c"tmpfs".into()),
        flags: tmpfs_flags,
        data: Some(c"mode=755".into()),
    });
    for (name, dir) in &inp.cgroup_dirs {
        let sub = cpath(&target_path.join(name))?;
        ops.push(FsOp::Mkdir(sub.clone()));
        let src = dir.to_string_lossy();
        ops.push(FsOp::mount(Some(&src), &sub, None, libc::MS_BIND));
        if ro {
            ops.push(FsOp::mount(None, &sub, None, bind_ro));
        }
    }
    if ro {
        let flags = libc::MS_REMOUNT | libc::MS_RDONLY | tmpfs_flags;
        ops.push(FsOp::mount(None, &target, None, flags));
    }
    Ok(())
}

fn device_ops(
    cfg: &ContainerConfig,
    rootfs: &Path,
    userns: bool,
    has_devpts: bool,
    ops: &mut Vec<FsOp>,
) -> Result<(), PlanError> {
    for d in &cfg.devices {
        let path = under(rootfs, &d.path)?;
        if let Some(parent) = path.parent() {
            if parent != rootfs.join("dev") {
                mkdir_chain(rootfs, parent, ops)?;
            }
        }
        let cpath = cpath(&path)?;
        if userns {
            // Device nodes cannot be created in a user namespace: bind the host's.
            ops.push(FsOp::Touch(cpath.clone()));
            ops.push(FsOp::mount(Some(&d.path), &cpath, None, libc::MS_BIND));
            continue;
        }
        let kind = match d.kind {
            'b' => libc::S_IFBLK,
            'p' => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        ops.push(FsOp::Mknod {
            path: cpath,
            mode: kind | (d.mode & 0o7777),
            dev: libc::makedev(d.major as u32, d.minor as u32),
            ids: Ids {
                uid: d.uid,
                gid: d.gid,
            },
        });
    }
    let mut links = vec![
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
        ("/proc/kcore", "dev/core"),
    ];
    if has_devpts && !cfg.devices.iter().any(|d| d.path == "/dev/ptmx") {
        links.push(("pts/ptmx", "dev/ptmx"));
    }
    for (target, link) in links {
        ops.push(FsOp::Symlink {
            target: cstr(target, "link")?,
            link: cpath(&rootfs.join(link))?,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{default_devices, RootfsSource};

    fn cfg() -> ContainerConfig {
        let mut c = ContainerConfig::new("t", RootfsSource::Bind("/r".into()), vec!["sh".into()]);
        c.devices = default_devices();
        c
    }

    fn inputs() -> PlanInputs {
        PlanInputs {
            rootfs: "/r".into(),
            cgroup_dirs: vec![("memory".into(), "/sys/fs/cgroup/memory/kapsel/t".into())],
            ..Default::default()
        }
    }

    fn targets(plan: &InitPlan) -> Vec<String> {
        plan.fs_ops
            .iter()
            .filter_map(|o| match o {
                FsOp::Mount { target, fstype, .. } if fstype.is_some() => {
                    Some(target.to_string_lossy().into_owned())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn standard_mounts_land_under_the_rootfs_in_order() {
        let plan = build(&cfg(), inputs()).unwrap();
        assert_eq!(
            targets(&plan),
            vec![
                "/r/proc",
                "/r/dev",
                "/r/dev/pts",
                "/r/dev/shm",
                "/r/dev/mqueue",
                "/r/sys",
                "/r/sys/fs/cgroup"
            ]
        );
        assert!(plan.fs_ops.contains(&FsOp::Mkdir(c"/r/sys/fs".into())));
    }

    #[test]
    fn devices_are_mknod_without_userns_and_bind_with_it() {
        let plan = build(&cfg(), inputs()).unwrap();
        let mknods = plan
            .fs_ops
            .iter()
            .filter(|o| matches!(o, FsOp::Mknod { .. }))
            .count();
        assert_eq!(mknods, 6);
        let plan = build(&cfg().with_user_namespace(100_000, 65536), inputs()).unwrap();
        assert!(!plan.fs_ops.iter().any(|o| matches!(o, FsOp::Mknod { .. })));
        assert!(plan.fs_ops.contains(&FsOp::Touch(c"/r/dev/null".into())));
    }

    #[test]
    fn path_search_uses_the_container_path() {
        let env = vec!["PATH=/bin:/usr/bin".to_string()];
        assert_eq!(exec_candidates("sh", &env), vec!["/bin/sh", "/usr/bin/sh"]);
        assert_eq!(exec_candidates("/x/y", &env), vec!["/x/y"]);
    }

    #[test]
    fn dotdot_destinations_are_refused() {
        let mut c = cfg();
        c.mounts[0].destination = "/../../etc".into();
        assert!(matches!(
            build(&c, inputs()),
            Err(PlanError::BadDestination(_))
        ));
    }

    #[test]
    fn hostname_needs_uts() {
        let mut c = cfg();
        c.namespaces.retain(|(n, _)| *n != Namespace::Uts);
        assert!(matches!(
            build(&c, inputs()),
            Err(PlanError::HostnameWithoutUts)
        ));
    }

    #[test]
    fn readonly_bind_is_remounted() {
        let mut c = cfg();
        c.mounts = vec![crate::config::MountConfig {
            destination: "/data".into(),
            kind: "bind".into(),
            source: "/tmp".into(),
            options: vec!["rbind".into(), "ro".into()],
        }];
        let plan = build(&c, inputs()).unwrap();
        let remount = plan.fs_ops.iter().any(|o| {
            matches!(o, FsOp::Mount { flags, .. }
                if flags & libc::MS_REMOUNT != 0 && flags & libc::MS_RDONLY != 0)
        });
        assert!(remount);
    }
}
