//! Creating the container's first process: `clone` into new namespaces, a go/ready
//! handshake over two pipes, and the child running its [`InitPlan`].

use crate::error::ContainerError;
use crate::init::{self, Failure, InitPlan};
use sandbox::syscall::LinuxSyscall;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Descriptors to become the container's stdin, stdout and stderr (`None`: inherit).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdio {
    pub stdin: Option<RawFd>,
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
}

/// What the parent learned from the child's status pipe.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Ready and blocked on the exec FIFO (`create`), or already `execve`d (`run`).
    Ready,
    /// Setup failed.
    Failed(Failure),
    /// Exited without a word.
    Died,
}

/// A pipe with both ends close-on-exec: (read, write).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(ContainerError::last_os("pipe2"));
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A `poll` entry waiting for `fd` to become readable.
pub fn poll_in(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The pipes of one spawn; the child's ends are handed to [`InitPlan::status_fd`].
#[derive(Debug)]
pub struct Handshake {
    go_r: OwnedFd,
    go_w: OwnedFd,
    status_r: OwnedFd,
    status_w: OwnedFd,
}

impl Handshake {
    pub fn new() -> Result<Self, ContainerError> {
        let (go_r, go_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        Ok(Handshake {
            go_r,
            go_w,
            status_r,
            status_w,
        })
    }

    /// The descriptor the child reports on.
    pub fn status_fd(&self) -> RawFd {
        self.status_w.as_raw_fd()
    }

    /// The parent side once child `pid` is cloned: closes the child's ends, calls
    /// `setup(pid)` (the child is killed if it fails), tells the child to go on (`what` names
    /// the child in the error) and returns the status pipe's read end.
    fn release(
        self,
        pid: i32,
        setup: impl FnOnce(i32) -> Result<(), ContainerError>,
        what: &str,
    ) -> Result<OwnedFd, ContainerError> {
        let Handshake {
            go_r,
            go_w,
            status_r,
            status_w,
        } = self;
        drop(go_r);
        drop(status_w);
        if let Err(e) = setup(pid) {
            kill_and_reap(pid);
            return Err(e);
        }
        write_all(go_w.as_raw_fd(), b"G").map_err(ContainerError::io(format!("signal {what}")))?;
        drop(go_w);
        Ok(status_r)
    }

    /// The child side right after the clone (async-signal-safe only: no allocation): the
    /// signal mask cleared and SIGPIPE back to default, the parent's pipe ends closed, `stdio`
    /// on 0, 1 and 2; then waits for the parent's go (exits 1 if the parent went away).
    fn child_start(&self, stdio: Stdio) {
        // SAFETY: only async-signal-safe calls on descriptors and signal state this process
        // owns.
        unsafe {
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Rust ignores SIGPIPE; ignored dispositions survive execve, so restore it.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::close(self.go_w.as_raw_fd());
            libc::close(self.status_r.as_raw_fd());
            for (fd, target) in [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)] {
                if let Some(fd) = fd {
                    libc::dup2(fd, target);
                }
            }
        }
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte into a local buffer.
        if unsafe { libc::read(self.go_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } != 1 {
            // SAFETY: _exit is always safe.
            unsafe { libc::_exit(1) };
        }
    }
}

/// A raw `clone` with `flags` (CLONE_* and the exit signal), without CLONE_VM and without a
/// new stack: like fork, the child gets a copy of this address space and sees 0.
fn raw_clone(flags: i32) -> libc::c_long {
    // SAFETY: without CLONE_VM the child has its own copy of the address space, so returning
    // into it on the same stack is sound (what fork does).
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    }
}

/// A spawned first process.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub outcome: Outcome,
    /// The status pipe, still open: in run mode, EOF on it means `execve` succeeded.
    pub status: OwnedFd,
}

/// Clones the child with `flags` (CLONE_NEW*), calls `setup(pid)` in the parent (cgroup,
/// id maps), lets the child run `plan`, and waits for its ready record or failure.
pub fn spawn(
    plan: &InitPlan,
    flags: i32,
    stdio: Stdio,
    hs: Handshake,
    setup: impl FnOnce(i32) -> Result<(), ContainerError>,
) -> Result<Spawned, ContainerError> {
    // Everything the child needs is built before the clone: no allocation after it.
    let sys = LinuxSyscall;
    let pid = raw_clone(flags | libc::SIGCHLD);
    if pid < 0 {
        return Err(ContainerError::last_os("clone"));
    }
    if pid == 0 {
        child(plan, &sys, stdio, &hs);
    }
    let pid = pid as i32;
    let status_r = hs.release(pid, setup, "the container")?;
    let outcome = read_outcome(status_r.as_raw_fd());
    if outcome != Outcome::Ready {
        kill_and_reap(pid);
    }
    Ok(Spawned {
        pid,
        outcome,
        status: status_r,
    })
}

/// The child side: never returns.
fn child(plan: &InitPlan, sys: &LinuxSyscall, stdio: Stdio, hs: &Handshake) -> ! {
    hs.child_start(stdio);
    let failure = init::run(sys, plan);
    let record = failure.encode();
    if write_all(plan.status_fd, &record).is_err() {
        // The parent stopped listening after `create`: say it on stderr.
        let _ = write_all(2, b"kapsel: container process failed after start\n");
    }
    // SAFETY: _exit is always safe.
    unsafe { libc::_exit(127) }
}

/// Starts a process inside a running container: a first child joins the namespaces in
/// `join` (fd, CLONE_NEW* flag; the mount namespace last) and makes `root` (a directory fd:
/// the container's root) its root, then clones the real process with `CLONE_PARENT` so it is
/// our child and, having been created after `setns(pid)`, lives in the container's pid
/// namespace. Returns its pid once it has `execve`d.
pub fn spawn_exec(
    plan: &InitPlan,
    join: &[(RawFd, i32)],
    root: RawFd,
    stdio: Stdio,
    hs: Handshake,
    setup: impl FnOnce(i32) -> Result<(), ContainerError>,
) -> Result<i32, ContainerError> {
    let sys = LinuxSyscall;
    let pid = raw_clone(libc::SIGCHLD);
    if pid < 0 {
        return Err(ContainerError::last_os("clone"));
    }
    if pid == 0 {
        exec_child(plan, join, root, &sys, stdio, &hs);
    }
    let pid = pid as i32;
    let status_r = hs.release(pid, setup, "the exec child")?;
    let fd = status_r.as_raw_fd();
    let mut tag = [0u8; 1];
    let first = read_exact(fd, &mut tag);
    // SAFETY: reaping the intermediate child, which exits right after the clone.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    if first.is_err() {
        return Err(ContainerError::InitDied);
    }
    if tag[0] == b'E' {
        let mut buf = [0u8; 13];
        buf[0] = b'E';
        return match read_exact(fd, &mut buf[1..])
            .ok()
            .and_then(|()| Failure::decode(&buf))
        {
            Some(f) => Err(ContainerError::Init(format!("{:?}: {}", f.step, f.errno))),
            None => Err(ContainerError::InitDied),
        };
    }
    let mut word = [0u8; 4];
    if tag[0] != b'P' || read_exact(fd, &mut word).is_err() {
        return Err(ContainerError::InitDied);
    }
    let child = i32::from_ne_bytes(word);
    match read_outcome(fd) {
        Outcome::Ready => {}
        Outcome::Failed(f) => {
            kill_and_reap(child);
            return Err(ContainerError::Init(f.describe(plan)));
        }
        Outcome::Died => {
            kill_and_reap(child);
            return Err(ContainerError::InitDied);
        }
    }
    match exec_outcome(fd) {
        Outcome::Ready => Ok(child),
        Outcome::Failed(f) => {
            kill_and_reap(child);
            Err(ContainerError::Init(f.describe(plan)))
        }
        Outcome::Died => Err(ContainerError::InitDied),
    }
}

fn exec_child(
    plan: &InitPlan,
    join: &[(RawFd, i32)],
    root: RawFd,
    sys: &LinuxSyscall,
    stdio: Stdio,
    hs: &Handshake,
) -> ! {
    hs.child_start(stdio);
    for (i, (fd, flag)) in join.iter().enumerate() {
        use sandbox::syscall::Syscall;
        if let Err(errno) = sys.setns(*fd, *flag) {
            let f = Failure {
                step: init::Step::Setns,
                index: i as u32,
                errno,
            };
            let _ = write_all(plan.status_fd, &f.encode());
            // SAFETY: _exit is always safe.
            unsafe { libc::_exit(1) };
        }
    }
    // Into the container's root (reported as one more setns step when it fails).
    // SAFETY: fchdir to a directory fd we hold and chroot to the cwd: plain syscalls.
    if unsafe { libc::fchdir(root) } < 0 || unsafe { libc::chroot(c".".as_ptr()) } < 0 {
        let f = Failure {
            step: init::Step::Setns,
            index: join.len() as u32,
            errno: sandbox::syscall::Errno::last(),
        };
        let _ = write_all(plan.status_fd, &f.encode());
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(1) };
    }
    // The new process waits on `hold` until our `P` record is written: the parent reads
    // `P` (the pid) first and the process's own `R` or failure after it, never the other
    // way round (a fast process on a busy host used to win that race).
    let mut hold = [-1; 2];
    // SAFETY: pipe2 fills a valid two-element array.
    if unsafe { libc::pipe2(hold.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(1) };
    }
    // CLONE_PARENT makes the new process our parent's child.
    let pid = raw_clone(libc::CLONE_PARENT | libc::SIGCHLD);
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: closing our copy of the write end, then waiting for EOF (the intermediate
        // process exits after writing `P`) into a local buffer; both ends are ours.
        unsafe {
            libc::close(hold[1]);
            while libc::read(hold[0], b.as_mut_ptr().cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::close(hold[0]);
        }
        let failure = init::run_exec(sys, plan);
        let _ = write_all(plan.status_fd, &failure.encode());
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(127) };
    }
    let mut msg = [0u8; 5];
    msg[0] = b'P';
    msg[1..].copy_from_slice(&(pid as i32).to_ne_bytes());
    let _ = write_all(plan.status_fd, if pid > 0 { &msg } else { b"" });
    // Exiting closes `hold`'s write end: the new process goes on.
    // SAFETY: _exit is always safe.
    unsafe { libc::_exit(0) }
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: pointer and length describe `buf`.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads the child's records: `R` means ready; `E…` a failure; EOF before `R` means died.
/// The tag is read alone so an `E` that follows an `R` stays in the pipe for the next call.
fn read_outcome(fd: RawFd) -> Outcome {
    let mut tag = [0u8; 1];
    if read_exact(fd, &mut tag).is_err() {
        return Outcome::Died;
    }
    if tag[0] == b'R' {
        return Outcome::Ready;
    }
    let mut buf = [0u8; 13];
    buf[0] = tag[0];
    if read_exact(fd, &mut buf[1..]).is_err() {
        return Outcome::Died;
    }
    Failure::decode(&buf).map_or(Outcome::Died, Outcome::Failed)
}

fn read_exact(fd: RawFd, buf: &mut [u8]) -> Result<(), ()> {
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reading into the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return Err(());
        }
        len += n as usize;
    }
    Ok(())
}

/// Reads on after `Ready` in run mode: EOF means `execve` succeeded.
pub fn exec_outcome(status_r: RawFd) -> Outcome {
    match read_outcome(status_r) {
        Outcome::Died => Outcome::Ready,
        other => other,
    }
}

/// SIGKILL and reap a child that must not live on.
pub fn kill_and_reap(pid: i32) {
    // SAFETY: signalling and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Step;
    use sandbox::syscall::Errno;

    #[test]
    fn outcome_parsing() {
        let (r, w) = pipe().unwrap();
        write_all(w.as_raw_fd(), b"R").unwrap();
        assert_eq!(read_outcome(r.as_raw_fd()), Outcome::Ready);
        drop(w);
        assert_eq!(exec_outcome(r.as_raw_fd()), Outcome::Ready);

        let (r, w) = pipe().unwrap();
        let f = Failure {
            step: Step::Exec,
            index: 0,
            errno: Errno(libc::ENOENT),
        };
        write_all(w.as_raw_fd(), &f.encode()).unwrap();
        drop(w);
        assert_eq!(read_outcome(r.as_raw_fd()), Outcome::Failed(f));
    }
}
