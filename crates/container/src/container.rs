//! The [`Container`] type: create, start, state, kill, pause/resume, wait, delete.
//! The CLI (`kapsel oci …`, `kapsel container run`) and, later, the daemon drive it.

use crate::config::{valid_id, ContainerConfig, IdMap, RootfsSource};
use crate::console::{self, Pty};
use crate::error::ContainerError;
use crate::init::{self, PlanInputs};
use crate::process::{self, Handshake, Outcome, Stdio};
use crate::state::{proc_start, OciState, Op, StateFile, Status, STATE_FORMAT};
use sandbox::cgroup::{self, CgroupManager, Stats};
use sandbox::namespace::Namespace;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// The default directory for container state.
pub const DEFAULT_STATE_ROOT: &str = "/run/kapsel/containers";

/// How to create a container.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Directory holding one state directory per container.
    pub state_root: PathBuf,
    pub stdio: Stdio,
    /// OCI `--console-socket`: where to send the pty master when `process.terminal` is set.
    pub console_socket: Option<PathBuf>,
    /// `true`: stop before `execve` until [`Container::start`] (OCI create);
    /// `false`: run at once (`kapsel container run`).
    pub wait_for_start: bool,
}

impl CreateOptions {
    /// OCI semantics: wait for `start`, inherit stdio.
    pub fn oci(state_root: impl Into<PathBuf>) -> Self {
        CreateOptions {
            state_root: state_root.into(),
            stdio: Stdio::default(),
            console_socket: None,
            wait_for_start: true,
        }
    }
}

/// One container, backed by its state directory.
#[derive(Debug)]
pub struct Container {
    dir: PathBuf,
    state: StateFile,
    cgroup: Box<dyn CgroupManager>,
    console: Option<OwnedFd>,
}

/// Removes a half-created container's pieces unless disarmed.
struct Cleanup<'a> {
    dir: &'a Path,
    cgroup: Option<&'a dyn CgroupManager>,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(cg) = self.cgroup {
            let _ = cg.remove();
        }
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

fn cpath(p: &Path) -> Result<CString, ContainerError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ContainerError::Init(format!("path {} has a NUL byte", p.display())))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_id_map(pid: i32, file: &str, maps: &[IdMap]) -> Result<(), ContainerError> {
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect();
    std::fs::write(format!("/proc/{pid}/{file}"), text).map_err(ContainerError::io(file))
}

impl Container {
    /// Creates the container: cgroup, namespaces, root filesystem, and a first process
    /// that waits for [`Container::start`] (or runs at once, see [`CreateOptions`]).
    pub fn create(
        cfg: &ContainerConfig,
        opts: &CreateOptions,
    ) -> Result<Container, ContainerError> {
        if !valid_id(&cfg.id) {
            return Err(ContainerError::InvalidId(cfg.id.clone()));
        }
        std::fs::create_dir_all(&opts.state_root).map_err(ContainerError::io(format!(
            "create {}",
            opts.state_root.display()
        )))?;
        let cg = cgroup::open(&cfg.cgroups_path)?;
        let dir = opts.state_root.join(&cfg.id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::Exists(cfg.id.clone()))
            }
            Err(e) => return Err(ContainerError::io("create state directory")(e)),
        }
        let mut cleanup = Cleanup {
            dir: &dir,
            cgroup: None,
            armed: true,
        };
        cleanup.cgroup = Some(cg.as_ref());
        cg.create()?;
        cg.apply(&cfg.resources)?;
        let (rootfs, overlay) = prepare_rootfs(cfg, &dir)?;
        let fifo = if opts.wait_for_start {
            Some(make_fifo(&dir.join("exec.fifo"))?)
        } else {
            None
        };
        let pty = if cfg.process.terminal {
            Some(console::open_pty(None)?)
        } else {
            None
        };
        let join = open_join_fds(cfg)?;
        let hs = Handshake::new()?;
        let plan = init::build(
            cfg,
            PlanInputs {
                rootfs: rootfs.clone(),
                overlay: overlay.clone(),
                cgroup_dirs: cg.dirs(),
                join: join.iter().map(|(fd, f)| (fd.as_raw_fd(), *f)).collect(),
                console: pty
                    .as_ref()
                    .map(|p| (p.slave.as_raw_fd(), p.slave_path.clone())),
                status_fd: hs.status_fd(),
                exec_fifo_fd: fifo.as_ref().map(|f| f.as_raw_fd()),
            },
        )?;
        let flags = clone_flags(cfg);
        let userns = cfg.has_namespace(Namespace::User);
        let spawned = process::spawn(&plan, flags, opts.stdio, hs, |pid| {
            cg.add_task(pid)?;
            if userns {
                write_id_map(pid, "uid_map", &cfg.uid_mappings)?;
                write_id_map(pid, "gid_map", &cfg.gid_mappings)?;
            }
            Ok(())
        })?;
        let mut outcome = spawned.outcome;
        if outcome == Outcome::Ready && !opts.wait_for_start {
            outcome = process::exec_outcome(spawned.status.as_raw_fd());
            if outcome != Outcome::Ready {
                process::kill_and_reap(spawned.pid);
            }
        }
        match outcome {
            Outcome::Ready => {}
            Outcome::Failed(f) => return Err(ContainerError::Init(f.describe(&plan))),
            Outcome::Died => return Err(ContainerError::InitDied),
        }
        let pid = spawned.pid;
        let console = match (pty, &opts.console_socket) {
            (Some(Pty { master, .. }), Some(sock)) => {
                console::send_fd(sock, master.as_raw_fd())?;
                None
            }
            (Some(Pty { master, .. }), None) => Some(master),
            (None, _) => None,
        };
        let state = StateFile {
            format: STATE_FORMAT,
            id: cfg.id.clone(),
            pid,
            pid_start: proc_start(pid).map_or(0, |(s, _)| s),
            bundle: cfg.bundle.clone(),
            rootfs,
            overlay: overlay.is_some(),
            upper: cfg.overlay_upper.as_ref().map(|u| u.join("upper")),
            cgroups_path: cfg.cgroups_path.clone(),
            created: now_secs(),
            paused: false,
            annotations: cfg.annotations.clone(),
        };
        state.save(&dir)?;
        cleanup.armed = false;
        drop(cleanup);
        debug!(id = %cfg.id, pid, "container created");
        Ok(Container {
            dir,
            state,
            cgroup: cg,
            console,
        })
    }

    /// Opens an existing container from its state directory.
    pub fn load(state_root: &Path, id: &str) -> Result<Container, ContainerError> {
        if !valid_id(id) {
            return Err(ContainerError::InvalidId(id.to_string()));
        }
        let dir = state_root.join(id);
        let state = StateFile::load(&dir, id)?;
        let cgroup = cgroup::open(&state.cgroups_path)?;
        Ok(Container {
            dir,
            state,
            cgroup,
            console: None,
        })
    }

    /// Ids of the containers under `state_root`.
    pub fn list(state_root: &Path) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(state_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    /// The pty master when the container has a terminal and no console socket was given.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// The status, read from the process table and the state directory.
    pub fn status(&self) -> Status {
        match proc_start(self.state.pid) {
            Some((start, false)) if start == self.state.pid_start => {
                if self.state.paused {
                    Status::Paused
                } else if self.dir.join("exec.fifo").exists() {
                    Status::Created
                } else {
                    Status::Running
                }
            }
            _ => Status::Stopped,
        }
    }

    /// The OCI state document.
    pub fn oci_state(&self) -> OciState {
        let status = self.status();
        OciState {
            oci_version: "1.0.2".into(),
            id: self.state.id.clone(),
            status,
            pid: if status == Status::Stopped {
                0
            } else {
                self.state.pid
            },
            bundle: self
                .state
                .bundle
                .as_ref()
                .map(|b| b.display().to_string())
                .unwrap_or_default(),
            annotations: self.state.annotations.clone(),
        }
    }

    fn require(&self, op: Op, wanted: &'static str) -> Result<Status, ContainerError> {
        let status = self.status();
        if status.allows(op) {
            Ok(status)
        } else {
            Err(ContainerError::WrongState {
                id: self.state.id.clone(),
                op: op_name(op),
                status,
                wanted,
            })
        }
    }

    /// Releases the process blocked in `create`: it `execve`s the container's program.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        self.require(Op::Start, "created")?;
        let fifo = self.dir.join("exec.fifo");
        let path = cpath(&fifo)?;
        // SAFETY: path is a valid C string; the fd is wrapped in an OwnedFd below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(ContainerError::last_os("open exec fifo"));
        }
        // SAFETY: fd was just opened and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let read_byte = || {
            let mut b = [0u8; 1];
            // SAFETY: reading one byte into a local buffer.
            unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 1 }
        };
        loop {
            if read_byte() {
                break;
            }
            if self.status() == Status::Stopped {
                // Its byte may have arrived between the read and the status check: a
                // program that ends at once was still started.
                if read_byte() {
                    break;
                }
                return Err(ContainerError::InitDied);
            }
            if Instant::now() > deadline {
                return Err(ContainerError::Timeout("the container process to start"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        std::fs::remove_file(&fifo).map_err(ContainerError::io("remove exec fifo"))?;
        Ok(())
    }

    /// Sends `signal` to the first process, or to every process of the container.
    pub fn kill(&self, signal: i32, all: bool) -> Result<(), ContainerError> {
        self.require(Op::Kill, "created, running or paused")?;
        let pids = if all {
            self.cgroup.pids()?
        } else {
            vec![self.state.pid]
        };
        for pid in pids {
            // SAFETY: kill takes plain integers.
            if unsafe { libc::kill(pid, signal) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(ContainerError::Io {
                        op: format!("kill {pid}"),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// Starts `process` inside the running container (its namespaces, cgroup, and the
    /// confinement of `process`: capabilities, no_new_privs, the default seccomp profile).
    /// Returns the new process's host pid; the caller (its parent) reaps it.
    pub fn exec(
        &self,
        process: &crate::config::ProcessConfig,
        stdio: Stdio,
    ) -> Result<i32, ContainerError> {
        self.exec_inner(process, stdio, None)
    }

    /// [`Container::exec`] on a terminal: the process starts a new session with `terminal`
    /// (a pty slave) as its controlling terminal and standard input, output and error, so
    /// Ctrl-C, job control and a hang-up reach it as on a login.
    pub fn exec_on_terminal(
        &self,
        process: &crate::config::ProcessConfig,
        terminal: RawFd,
    ) -> Result<i32, ContainerError> {
        let stdio = Stdio {
            stdin: Some(terminal),
            stdout: Some(terminal),
            stderr: Some(terminal),
        };
        self.exec_inner(process, stdio, Some(terminal))
    }

    fn exec_inner(
        &self,
        process: &crate::config::ProcessConfig,
        stdio: Stdio,
        terminal: Option<RawFd>,
    ) -> Result<i32, ContainerError> {
        self.require(Op::Exec, "running")?;
        let pid = self.state.pid;
        let mut join = Vec::new();
        for ns in Namespace::ALL {
            let theirs = format!("/proc/{pid}/ns/{}", ns.proc_name());
            let ours = format!("/proc/self/ns/{}", ns.proc_name());
            let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
                continue;
            };
            if std::os::unix::fs::MetadataExt::ino(&a) == std::os::unix::fs::MetadataExt::ino(&b) {
                continue;
            }
            let f = std::fs::File::open(&theirs)
                .map_err(ContainerError::io(format!("open {theirs}")))?;
            join.push((OwnedFd::from(f), ns.clone_flag()));
        }
        let mut cfg = ContainerConfig::new(
            &self.state.id,
            RootfsSource::Bind(PathBuf::from("/")),
            process.args.clone(),
        );
        cfg.process = process.clone();
        cfg.hostname = None;
        cfg.mounts.clear();
        cfg.devices.clear();
        let hs = Handshake::new()?;
        let mut plan = init::build(
            &cfg,
            PlanInputs {
                rootfs: PathBuf::from("/"),
                status_fd: hs.status_fd(),
                ..PlanInputs::default()
            },
        )?;
        // Only the process steps run for an exec: setsid and TIOCSCTTY on the terminal.
        plan.console = terminal;
        // The container's root as its first process has it. Joining a mount namespace puts a
        // process at whatever is mounted on top of the namespace's root: the container's
        // root only if the runtime's own root was that top mount. A runtime in a chroot
        // would start the process in the host's `/`; so the process enters this directory
        // itself once it has joined.
        let root_path = format!("/proc/{pid}/root");
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&root_path)
            .map_err(ContainerError::io(format!("open {root_path}")))?;
        let raw: Vec<(i32, i32)> = join.iter().map(|(fd, f)| (fd.as_raw_fd(), *f)).collect();
        let cg = &self.cgroup;
        process::spawn_exec(&plan, &raw, root.as_raw_fd(), stdio, hs, |child| {
            Ok(cg.add_task(child)?)
        })
    }

    /// Freezes every process (cgroup freezer).
    pub fn pause(&mut self) -> Result<(), ContainerError> {
        self.require(Op::Pause, "running")?;
        self.cgroup.set_frozen(true)?;
        self.state.paused = true;
        self.state.save(&self.dir)
    }

    /// Thaws a paused container.
    pub fn resume(&mut self) -> Result<(), ContainerError> {
        self.require(Op::Resume, "paused")?;
        self.cgroup.set_frozen(false)?;
        self.state.paused = false;
        self.state.save(&self.dir)
    }

    /// Resource counters of the container's cgroup (CPU time, memory, OOM kills, tasks).
    pub fn stats(&self) -> Result<Stats, ContainerError> {
        Ok(self.cgroup.stats()?)
    }

    /// The writable upper directory of an overlay root (what a snapshot copies).
    pub fn upper_dir(&self) -> Option<PathBuf> {
        self.state.overlay.then(|| {
            self.state
                .upper
                .clone()
                .unwrap_or_else(|| self.dir.join("upper"))
        })
    }

    /// Copies the writable upper directory of an overlay root to `dest` (a new directory),
    /// with the container frozen for the copy when it is running so the files are
    /// consistent. This is a container snapshot: image + this copy = the filesystem.
    pub fn snapshot_upper(&self, dest: &Path) -> Result<(), ContainerError> {
        let upper = self.upper_dir().ok_or_else(|| {
            ContainerError::Init("the root is not an overlay: nothing to snapshot".into())
        })?;
        let freeze = self.status() == Status::Running;
        if freeze {
            self.cgroup.set_frozen(true)?;
        }
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg(&upper)
            .arg(dest)
            .output();
        if freeze {
            self.cgroup.set_frozen(false)?;
        }
        let out = out.map_err(ContainerError::io("run cp"))?;
        if !out.status.success() {
            return Err(ContainerError::Init(format!(
                "copying {}: {}",
                upper.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Waits for the first process to exit and returns its exit code (128 + signal when
    /// killed). Only the process that created the container (its parent) can wait.
    pub fn wait(&self) -> Result<i32, ContainerError> {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child; status is a valid out-pointer.
            let rc = unsafe { libc::waitpid(self.state.pid, &mut status, libc::__WALL) };
            if rc >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(ContainerError::Io {
                    op: "waitpid".into(),
                    source: e,
                });
            }
        }
        Ok(if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            libc::WEXITSTATUS(status)
        })
    }

    /// SIGTERM, then SIGKILL after `grace`, until the first process is gone.
    pub fn stop(&self, grace: Duration) -> Result<(), ContainerError> {
        if self.status() == Status::Stopped {
            return Ok(());
        }
        if self.status() == Status::Paused {
            self.cgroup.set_frozen(false)?;
        }
        self.kill(libc::SIGTERM, false)?;
        if self.wait_stopped(grace) {
            return Ok(());
        }
        self.kill(libc::SIGKILL, true)?;
        if self.wait_stopped(Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(ContainerError::Timeout("the container to stop"))
        }
    }

    fn wait_stopped(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.status() == Status::Stopped {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// Removes the container. A live one needs `force` (it is killed first).
    pub fn delete(self, force: bool) -> Result<(), ContainerError> {
        let status = self.status();
        if status != Status::Stopped {
            if !force {
                return Err(ContainerError::WrongState {
                    id: self.state.id.clone(),
                    op: "delete",
                    status,
                    wanted: "stopped (or --force)",
                });
            }
            if status == Status::Paused {
                let _ = self.cgroup.set_frozen(false);
            }
            for pid in self.cgroup.pids().unwrap_or_default() {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // SAFETY: as above.
            unsafe { libc::kill(self.state.pid, libc::SIGKILL) };
        }
        // Reap the first process if it is our child (no-op otherwise).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // SAFETY: non-blocking reap of a possible child.
            unsafe { libc::waitpid(self.state.pid, std::ptr::null_mut(), libc::WNOHANG) };
            let empty = self.cgroup.pids().map(|p| p.is_empty()).unwrap_or(true);
            if empty || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(e) = self.cgroup.remove() {
            warn!("removing cgroup of {}: {e}", self.state.id);
        }
        std::fs::remove_dir_all(&self.dir).map_err(ContainerError::io("remove state directory"))
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Start => "start",
        Op::Kill => "kill",
        Op::Pause => "pause",
        Op::Resume => "resume",
        Op::Exec => "exec",
        Op::Delete => "delete",
    }
}

/// CLONE_NEW* flags for namespaces to create. The cgroup namespace is left to the child,
/// which unshares it once the parent has moved it into its group.
fn clone_flags(cfg: &ContainerConfig) -> i32 {
    cfg.namespaces
        .iter()
        .filter(|(ns, path)| path.is_none() && *ns != Namespace::Cgroup)
        .fold(0, |acc, (ns, _)| acc | ns.clone_flag())
}

fn open_join_fds(cfg: &ContainerConfig) -> Result<Vec<(OwnedFd, i32)>, ContainerError> {
    cfg.namespaces
        .iter()
        .filter_map(|(ns, p)| p.as_ref().map(|p| (*ns, p)))
        .map(|(ns, p)| {
            let f = std::fs::File::open(p).map_err(ContainerError::io(format!(
                "open namespace {}",
                p.display()
            )))?;
            Ok((OwnedFd::from(f), ns.clone_flag()))
        })
        .collect()
}

fn make_fifo(path: &Path) -> Result<OwnedFd, ContainerError> {
    let c = cpath(path)?;
    // SAFETY: c is a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o622) } < 0 {
        return Err(ContainerError::last_os("mkfifo"));
    }
    // SAFETY: as above; O_PATH keeps the FIFO reachable after pivot_root via /proc/self/fd.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(ContainerError::last_os("open exec fifo"));
    }
    // SAFETY: fd was just opened and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The host ids of container root when a user namespace maps it.
fn mapped_root(cfg: &ContainerConfig) -> Option<(u32, u32)> {
    if !cfg.has_namespace(Namespace::User) {
        return None;
    }
    let find = |maps: &[IdMap]| maps.iter().find(|m| m.container_id == 0).map(|m| m.host_id);
    Some((find(&cfg.uid_mappings)?, find(&cfg.gid_mappings)?))
}

/// The host path the root is mounted at, and overlay options if it is an overlay.
fn prepare_rootfs(
    cfg: &ContainerConfig,
    dir: &Path,
) -> Result<(PathBuf, Option<String>), ContainerError> {
    match &cfg.rootfs {
        RootfsSource::Bind(p) => {
            let p = p.canonicalize().map_err(ContainerError::io(format!(
                "root filesystem {}",
                p.display()
            )))?;
            Ok((p, None))
        }
        RootfsSource::Overlay(lowers) => {
            let mut lower = Vec::new();
            for l in lowers {
                let l = l
                    .canonicalize()
                    .map_err(ContainerError::io(format!("image {}", l.display())))?;
                lower.push(l.display().to_string());
            }
            let layer = cfg.overlay_upper.as_deref().unwrap_or(dir);
            let (upper, work, merged) =
                (layer.join("upper"), layer.join("work"), dir.join("rootfs"));
            let root_ids = mapped_root(cfg);
            for d in [&upper, &work, &merged] {
                let made = if cfg.overlay_upper.is_some() {
                    std::fs::create_dir_all(d)
                } else {
                    std::fs::create_dir(d)
                };
                made.map_err(ContainerError::io(format!("mkdir {}", d.display())))?;
                if let Some((uid, gid)) = root_ids {
                    std::os::unix::fs::chown(d, Some(uid), Some(gid))
                        .map_err(ContainerError::io(format!("chown {}", d.display())))?;
                }
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                upper.display(),
                work.display()
            );
            Ok((merged, Some(opts)))
        }
    }
}
