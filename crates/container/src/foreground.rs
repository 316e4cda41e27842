//! Running a container in the foreground: signals forwarded to it, its pty proxied to the
//! caller's terminal, its exit status returned, and the container removed afterwards.

use crate::config::ContainerConfig;
use crate::container::{Container, CreateOptions};
use crate::error::ContainerError;
use crate::process::Stdio;
use crate::signals::{read_signal, sigset};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Signals passed on to the container (SIGWINCH resizes its terminal instead).
const FORWARDED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Puts the caller's terminal in raw mode and restores it on drop.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: isatty/tcgetattr/tcsetattr on a descriptor with a local termios.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(fd, libc::TCSANOW, &raw);
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes read in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

fn copy_winsize(from: RawFd, to: RawFd) {
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a local winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Copies what is readable on `from` to `to`; `false` on EOF or error.
fn pump(from: RawFd, to: RawFd) -> bool {
    let mut buf = [0u8; 4096];
    // SAFETY: reading into a local buffer.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return false;
    }
    let mut off = 0;
    while off < n as usize {
        // SAFETY: writing the filled part of the buffer.
        let w = unsafe { libc::write(to, buf[off..n as usize].as_ptr().cast(), n as usize - off) };
        if w <= 0 {
            return false;
        }
        off += w as usize;
    }
    true
}

/// Creates and runs `cfg` in the foreground and returns its exit code (128 + signal when
/// killed). The container is deleted when it ends.
pub fn run(cfg: &ContainerConfig, state_root: &Path) -> Result<i32, ContainerError> {
    let set = sigset(&FORWARDED);
    let mut old = sigset(&[]);
    // SAFETY: blocking signals for this thread so signalfd receives them; the child
    // unblocks everything before it runs the container's program.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    let result = run_blocked(cfg, state_root, &set);
    // SAFETY: restoring the previous mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

fn run_blocked(
    cfg: &ContainerConfig,
    state_root: &Path,
    set: &libc::sigset_t,
) -> Result<i32, ContainerError> {
    // SAFETY: signalfd on a valid set; the fd is wrapped right away.
    let sfd = unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC) };
    if sfd < 0 {
        return Err(ContainerError::last_os("signalfd"));
    }
    // SAFETY: sfd is a fresh descriptor we own.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
    let opts = CreateOptions {
        state_root: state_root.to_path_buf(),
        stdio: Stdio::default(),
        console_socket: None,
        wait_for_start: false,
    };
    let mut c = Container::create(cfg, &opts)?;
    let master = c.take_console();
    let _raw = master.as_ref().and_then(|_| RawMode::enter(0));
    if let Some(m) = &master {
        copy_winsize(0, m.as_raw_fd());
    }
    let code = supervise(&c, sfd.as_raw_fd(), master.as_ref().map(AsRawFd::as_raw_fd));
    drop(_raw);
    let _ = c.delete(true);
    code
}

/// Runs until the container's first process exits. A second SIGINT/SIGTERM/SIGHUP/SIGQUIT
/// becomes SIGKILL: the first process is pid 1 of its namespace, which the kernel shields
/// from signals it installed no handler for.
fn supervise(c: &Container, sfd: RawFd, master: Option<RawFd>) -> Result<i32, ContainerError> {
    // A pidfd, not SIGCHLD: in a multi-threaded caller SIGCHLD may go to another thread.
    // SAFETY: pidfd_open takes a pid and flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, c.pid(), 0) } as RawFd;
    if pidfd < 0 {
        return Err(ContainerError::last_os("pidfd_open"));
    }
    // SAFETY: pidfd is a fresh descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut stdin_open = master.is_some();
    let mut terminations = 0;
    loop {
        let mut fds = vec![
            crate::process::poll_in(sfd),
            crate::process::poll_in(pidfd.as_raw_fd()),
        ];
        if let Some(m) = master {
            fds.push(crate::process::poll_in(m));
            if stdin_open {
                fds.push(crate::process::poll_in(0));
            }
        }
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        if let Some(m) = master {
            if fds[2].revents != 0 {
                pump(m, 1);
            }
            if stdin_open && fds.get(3).is_some_and(|f| f.revents != 0) && !pump(0, m) {
                stdin_open = false;
            }
        }
        if fds[1].revents != 0 {
            if let Some(m) = master {
                while pump_ready(m) {}
            }
            return c.wait();
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let Some(sig) = read_signal(sfd) else {
                continue;
            };
            if sig == libc::SIGWINCH {
                if let Some(m) = master {
                    copy_winsize(0, m);
                }
            } else {
                let fatal = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
                if fatal.contains(&sig) {
                    terminations += 1;
                }
                let sig = if terminations > 1 { libc::SIGKILL } else { sig };
                let _ = c.kill(sig, false);
            }
        }
    }
}

/// Drains output still buffered in the pty after the process exited.
fn pump_ready(m: RawFd) -> bool {
    let mut pfd = crate::process::poll_in(m);
    // SAFETY: polling one valid pollfd without waiting.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) } > 0 && pfd.revents & libc::POLLIN != 0;
    ready && pump(m, 1)
}
