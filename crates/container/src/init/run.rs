//! Runs an [`InitPlan`] through a [`Syscall`]: the order of the confinement steps lives here.
//!
//! Order (as runc and crun do it): join/unshare namespaces → console → mount propagation →
//! root mount → mounts, devices, links → pivot_root → sysctl, masked and read-only paths →
//! read-only root → hostname, rlimits, cwd → bounding set → no_new_privs → seccomp →
//! uid/gid → capability sets → ready → wait for `start` → execve.

use super::plan::{FsOp, InitPlan, RootMount};
use sandbox::caps;
use sandbox::syscall::{Errno, Syscall};

/// The step that failed (sent to the parent as a number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Setns = 1,
    UnshareCgroup,
    Console,
    Propagation,
    RootMount,
    FsOp,
    PivotRoot,
    Sysctl,
    MaskPath,
    ReadonlyPath,
    RootReadonly,
    Hostname,
    OomScoreAdj,
    Rlimit,
    Chdir,
    BoundingCaps,
    NoNewPrivs,
    Seccomp,
    SetIds,
    Capset,
    Ready,
    ExecFifo,
    Exec,
}

impl Step {
    const ALL: [Step; 23] = [
        Step::Setns,
        Step::UnshareCgroup,
        Step::Console,
        Step::Propagation,
        Step::RootMount,
        Step::FsOp,
        Step::PivotRoot,
        Step::Sysctl,
        Step::MaskPath,
        Step::ReadonlyPath,
        Step::RootReadonly,
        Step::Hostname,
        Step::OomScoreAdj,
        Step::Rlimit,
        Step::Chdir,
        Step::BoundingCaps,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::SetIds,
        Step::Capset,
        Step::Ready,
        Step::ExecFifo,
        Step::Exec,
    ];

    /// The step with wire number `n`.
    pub fn from_u32(n: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u32 == n)
    }
}

/// Why the child did not reach `execve`: a step, an index within it, an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub index: u32,
    pub errno: Errno,
}

impl Failure {
    /// The 13-byte wire record: `E`, step, index, errno (native endian).
    pub fn encode(&self) -> [u8; 13] {
        let mut b = [0u8; 13];
        b[0] = b'E';
        b[1..5].copy_from_slice(&(self.step as u32).to_ne_bytes());
        b[5..9].copy_from_slice(&self.index.to_ne_bytes());
        b[9..13].copy_from_slice(&self.errno.0.to_ne_bytes());
        b
    }

    /// Parses a record written by [`Failure::encode`].
    pub fn decode(b: &[u8]) -> Option<Failure> {
        if b.len() != 13 || b[0] != b'E' {
            return None;
        }
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Some(Failure {
            step: Step::from_u32(u32::from_ne_bytes(word(1)))?,
            index: u32::from_ne_bytes(word(5)),
            errno: Errno(i32::from_ne_bytes(word(9))),
        })
    }

    /// A message naming what failed, with details from the plan.
    pub fn describe(&self, plan: &InitPlan) -> String {
        let i = self.index as usize;
        let what = match self.step {
            Step::FsOp => plan.fs_ops.get(i).map(FsOp::describe),
            Step::MaskPath => plan.masked.get(i).map(|p| format!("mask {p:?}")),
            Step::ReadonlyPath => plan.readonly.get(i).map(|p| format!("read-only {p:?}")),
            Step::Sysctl => plan.sysctl.get(i).map(|(p, _)| format!("sysctl {p:?}")),
            Step::Exec => plan.argv.first().map(|a| format!("exec {a:?}")),
            Step::Chdir => Some(format!("chdir {:?}", plan.cwd)),
            _ => None,
        };
        let what = what.unwrap_or_else(|| format!("{:?}", self.step));
        format!("{what}: {}", self.errno)
    }
}

type R = Result<(), Failure>;

fn at(step: Step, index: usize) -> impl Fn(Errno) -> Failure {
    move |errno| Failure {
        step,
        index: index as u32,
        errno,
    }
}

/// Runs the plan. Returns only on failure: on success the process has become `argv[0]`.
pub fn run(sys: &dyn Syscall, plan: &InitPlan) -> Failure {
    match run_steps(sys, plan) {
        Ok(()) => exec(sys, plan),
        Err(f) => f,
    }
}

/// Runs the process part of a plan in namespaces already joined (`exec` into a running
/// container): settings, confinement, ready, `execve`. Returns only on failure.
pub fn run_exec(sys: &dyn Syscall, plan: &InitPlan) -> Failure {
    let steps = || -> R {
        if let Some(fd) = plan.console {
            sys.setsid().map_err(at(Step::Console, 0))?;
            sys.set_console(fd).map_err(at(Step::Console, 1))?;
        }
        for (i, r) in plan.rlimits.iter().enumerate() {
            sys.setrlimit(r.resource, r.soft, r.hard)
                .map_err(at(Step::Rlimit, i))?;
        }
        sys.chdir(&plan.cwd).map_err(at(Step::Chdir, 0))?;
        confine(sys, plan)?;
        sys.write(plan.status_fd, b"R").map_err(at(Step::Ready, 0))
    };
    match steps() {
        Ok(()) => exec(sys, plan),
        Err(f) => f,
    }
}

fn run_steps(sys: &dyn Syscall, plan: &InitPlan) -> R {
    namespaces(sys, plan)?;
    if let Some(fd) = plan.console {
        sys.setsid().map_err(at(Step::Console, 0))?;
        sys.set_console(fd).map_err(at(Step::Console, 1))?;
    }
    filesystem(sys, plan)?;
    pivot(sys, plan)?;
    after_pivot(sys, plan)?;
    process_settings(sys, plan)?;
    confine(sys, plan)?;
    sys.write(plan.status_fd, b"R")
        .map_err(at(Step::Ready, 0))?;
    if let Some(fifo) = &plan.exec_fifo {
        let fd = sys
            .open(fifo, libc::O_WRONLY | libc::O_CLOEXEC)
            .map_err(at(Step::ExecFifo, 0))?;
        sys.write(fd, b"0").map_err(at(Step::ExecFifo, 1))?;
        let _ = sys.close(fd);
    }
    Ok(())
}

fn namespaces(sys: &dyn Syscall, plan: &InitPlan) -> R {
    for (i, (fd, flag)) in plan.join.iter().enumerate() {
        sys_setns(sys, *fd, *flag).map_err(at(Step::Setns, i))?;
    }
    if plan.become_ns_root {
        // Until now this process runs with the host ids it was cloned with, which the
        // new namespace does not map; files it created would be unrepresentable.
        let root = sandbox::syscall::Ids { uid: 0, gid: 0 };
        sys.set_ids(root, &[]).map_err(at(Step::SetIds, 3))?;
    }
    if plan.unshare_cgroup {
        sys.unshare(libc::CLONE_NEWCGROUP)
            .map_err(at(Step::UnshareCgroup, 0))?;
    }
    Ok(())
}

fn sys_setns(sys: &dyn Syscall, fd: i32, flag: i32) -> Result<(), Errno> {
    sys.setns(fd, flag)
}

fn filesystem(sys: &dyn Syscall, plan: &InitPlan) -> R {
    sys.mount(None, c"/", None, plan.propagation, None)
        .map_err(at(Step::Propagation, 0))?;
    match &plan.root_mount {
        RootMount::Bind => sys.mount(
            Some(&plan.rootfs),
            &plan.rootfs,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        ),
        RootMount::Overlay(data) => sys.mount(
            Some(c"overlay"),
            &plan.rootfs,
            Some(c"overlay"),
            0,
            Some(data),
        ),
    }
    .map_err(at(Step::RootMount, 0))?;
    // pivot_root refuses a new root whose mount is shared.
    sys.mount(None, &plan.rootfs, None, libc::MS_PRIVATE, None)
        .map_err(at(Step::RootMount, 1))?;
    for (i, op) in plan.fs_ops.iter().enumerate() {
        fs_op(sys, op).map_err(at(Step::FsOp, i))?;
    }
    Ok(())
}

fn fs_op(sys: &dyn Syscall, op: &FsOp) -> Result<(), Errno> {
    match op {
        FsOp::Mkdir(p) => sys.mkdir(p, 0o755),
        FsOp::Touch(p) => sys.touch(p),
        FsOp::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys.mount(
            source.as_deref(),
            target,
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        FsOp::Mknod {
            path,
            mode,
            dev,
            ids,
        } => sys.mknod(path, *mode, *dev, *ids),
        FsOp::Symlink { target, link } => sys.symlink(target, link),
    }
}

/// `pivot_root(".", ".")` then detach the old root stacked on top, as runc does: no
/// temporary directory inside the new root is needed.
fn pivot(sys: &dyn Syscall, plan: &InitPlan) -> R {
    sys.chdir(&plan.rootfs).map_err(at(Step::PivotRoot, 0))?;
    sys.pivot_root(c".", c".").map_err(at(Step::PivotRoot, 1))?;
    sys.umount2(c".", libc::MNT_DETACH)
        .map_err(at(Step::PivotRoot, 2))?;
    sys.chdir(c"/").map_err(at(Step::PivotRoot, 3))
}

fn after_pivot(sys: &dyn Syscall, plan: &InitPlan) -> R {
    for (i, (path, value)) in plan.sysctl.iter().enumerate() {
        sys.write_file(path, value.as_bytes())
            .map_err(at(Step::Sysctl, i))?;
    }
    for (i, p) in plan.masked.iter().enumerate() {
        mask(sys, p).map_err(at(Step::MaskPath, i))?;
    }
    for (i, p) in plan.readonly.iter().enumerate() {
        readonly(sys, p).map_err(at(Step::ReadonlyPath, i))?;
    }
    if plan.rootfs_readonly {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        sys.mount(None, c"/", None, flags, None)
            .map_err(at(Step::RootReadonly, 0))?;
    }
    Ok(())
}

/// Hides a path: `/dev/null` over a file, an empty read-only tmpfs over a directory.
fn mask(sys: &dyn Syscall, path: &std::ffi::CStr) -> Result<(), Errno> {
    match sys.mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None) {
        Ok(()) | Err(Errno(libc::ENOENT)) => Ok(()),
        Err(Errno(libc::ENOTDIR)) => {
            sys.mount(Some(c"tmpfs"), path, Some(c"tmpfs"), libc::MS_RDONLY, None)
        }
        Err(e) => Err(e),
    }
}

fn readonly(sys: &dyn Syscall, path: &std::ffi::CStr) -> Result<(), Errno> {
    match sys.mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None) {
        Ok(()) => {}
        Err(Errno(libc::ENOENT)) => return Ok(()),
        Err(e) => return Err(e),
    }
    let flags = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_RDONLY
        | libc::MS_REC
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    sys.mount(None, path, None, flags, None)
}

fn process_settings(sys: &dyn Syscall, plan: &InitPlan) -> R {
    if let Some(h) = &plan.hostname {
        sys.sethostname(h.as_bytes())
            .map_err(at(Step::Hostname, 0))?;
    }
    if let Some(v) = &plan.oom_score_adj {
        sys.write_file(c"/proc/self/oom_score_adj", v.as_bytes())
            .map_err(at(Step::OomScoreAdj, 0))?;
    }
    for (i, r) in plan.rlimits.iter().enumerate() {
        sys.setrlimit(r.resource, r.soft, r.hard)
            .map_err(at(Step::Rlimit, i))?;
    }
    sys.chdir(&plan.cwd).map_err(at(Step::Chdir, 0))
}

/// Capabilities, no_new_privs, seccomp and ids. seccomp goes before the uid change so a
/// filter can still be installed without no_new_privs (that needs CAP_SYS_ADMIN).
fn confine(sys: &dyn Syscall, plan: &InitPlan) -> R {
    caps::drop_bounding(sys, &plan.caps).map_err(at(Step::BoundingCaps, 0))?;
    if plan.no_new_privs {
        sys.set_no_new_privs().map_err(at(Step::NoNewPrivs, 0))?;
    }
    for (i, prog) in plan.seccomp.iter().enumerate() {
        sys.seccomp(prog).map_err(at(Step::Seccomp, i))?;
    }
    let switching = plan.ids.uid != 0;
    if switching {
        sys.set_keep_caps(true).map_err(at(Step::SetIds, 0))?;
    }
    sys.set_ids(plan.ids, &plan.groups)
        .map_err(at(Step::SetIds, 1))?;
    if switching {
        sys.set_keep_caps(false).map_err(at(Step::SetIds, 2))?;
    }
    caps::apply_sets(sys, &plan.caps).map_err(at(Step::Capset, 0))
}

fn exec(sys: &dyn Syscall, plan: &InitPlan) -> Failure {
    let argv = plan.argv_ptrs();
    let envp = plan.envp_ptrs();
    let mut last = Errno(libc::ENOENT);
    for path in &plan.exec_paths {
        last = sys.execve(path, argv, envp);
        if !matches!(last.0, libc::ENOENT | libc::ENOTDIR | libc::EACCES) {
            break;
        }
    }
    Failure {
        step: Step::Exec,
        index: 0,
        errno: last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{default_devices, ContainerConfig, RootfsSource};
    use crate::init::plan::{build, PlanInputs};
    use sandbox::syscall::{Call, RecordingSyscall};

    fn plan() -> InitPlan {
        let mut c = ContainerConfig::new("t", RootfsSource::Bind("/r".into()), vec!["sh".into()]);
        c.devices = default_devices();
        build(
            &c,
            PlanInputs {
                rootfs: "/r".into(),
                cgroup_dirs: vec![(String::new(), "/sys/fs/cgroup/kapsel/t".into())],
                status_fd: 9,
                exec_fifo_fd: Some(7),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn pos(fake: &RecordingSyscall, kind: &str) -> usize {
        fake.position(|c| c.kind() == kind)
            .unwrap_or_else(|| panic!("no {kind} call"))
    }

    #[test]
    fn steps_run_in_the_documented_order() {
        let fake = RecordingSyscall::new();
        let p = plan();
        let failure = run(&fake, &p);
        // The fake's execve "fails" with ENOENT for every PATH candidate.
        assert_eq!(failure.step, Step::Exec);
        let order = [
            "unshare",
            "mount",
            "pivot_root",
            "umount2",
            "sethostname",
            "drop_bounding_cap",
            "no_new_privs",
            "seccomp",
            "set_ids",
            "capset",
            "open",
            "execve",
        ];
        let positions: Vec<usize> = order.iter().map(|k| pos(&fake, k)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        assert_eq!(fake.calls()[0], Call::Unshare(libc::CLONE_NEWCGROUP));
        let ready = fake
            .position(|c| *c == Call::Write(9, b"R".to_vec()))
            .unwrap();
        assert!(
            ready < pos(&fake, "open"),
            "ready before blocking on the FIFO"
        );
    }

    #[test]
    fn all_mounts_happen_before_pivot_and_masks_after() {
        let fake = RecordingSyscall::new();
        let _ = run(&fake, &plan());
        let pivot = pos(&fake, "pivot_root");
        let calls = fake.calls();
        let proc_mount = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { target, .. } if target == "/r/proc"));
        assert!(proc_mount.unwrap() < pivot);
        let mask = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { target, .. } if target == "/proc/kcore"));
        assert!(mask.unwrap() > pivot);
    }

    #[test]
    fn failure_names_the_step_and_survives_the_wire() {
        let fake = RecordingSyscall::failing("pivot_root", libc::EINVAL);
        let p = plan();
        let f = run(&fake, &p);
        assert_eq!(f.step, Step::PivotRoot);
        assert_eq!(Failure::decode(&f.encode()), Some(f));
        assert!(f.describe(&p).contains("Invalid argument"));
        assert!(!fake.calls().iter().any(|c| c.kind() == "execve"));
    }

    #[test]
    fn missing_masked_paths_are_skipped() {
        let fake = RecordingSyscall::failing("mount", libc::ENOENT);
        let mut p = plan();
        p.fs_ops.clear();
        p.propagation = 0;
        // Propagation and root mounts fail first with this fake; test mask() directly.
        assert_eq!(mask(&fake, c"/proc/nope"), Ok(()));
        assert_eq!(readonly(&fake, c"/proc/nope"), Ok(()));
    }
}
