//! Interactive exec (`kapsel exec -t`): a command on a new pty of the container's own devpts,
//! as its controlling terminal, relayed over the API connection after a `101` upgrade as
//! [`api::exec_stream`] frames: the client's input and window size to the terminal, the
//! terminal's output to the client, and finally the command's exit code.
//!
//! The relay is one `poll` loop on the connection's thread: input is written to the pty only
//! as fast as the command reads it (the connection is not read while input waits), output is
//! read even when the client is slow to take it (the socket write then waits). A client that
//! goes away hangs the terminal up: SIGHUP to the command's session, SIGKILL after
//! [`HANGUP_GRACE`].

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use api::daemon::ExecRequest;
use api::exec_stream::Frame;
use container::{Container, ProcessConfig};

use crate::container::ops::{check_command, container_pty, exec_timeout, require_running};
use crate::error::{DaemonError, Result};
use crate::state::Daemon;

/// How long a hung-up command gets before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(5);
/// How long the client may take to send the rest of a frame it started.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A started interactive exec, waiting for its connection to be upgraded.
#[derive(Debug)]
pub struct TtyExec {
    name: String,
    program: String,
    pid: i32,
    pidfd: OwnedFd,
    master: OwnedFd,
    deadline: Option<Instant>,
}

/// Starts `req.command` in container `name` on a new pty.
pub fn start(d: &Daemon, name: &str, req: &ExecRequest) -> Result<TtyExec> {
    check_command(req)?;
    if !req.tty {
        return Err(DaemonError::BadRequest(
            "interactive exec needs tty: true".into(),
        ));
    }
    let deadline = match req.timeout_secs {
        None => None,
        Some(_) => Some(Instant::now() + exec_timeout(req)?),
    };
    require_running(d, name, "exec")?;
    let c = Container::load(&d.config.container_state_root(), name)?;
    let pty = container_pty(c.pid(), req.size)?;
    let pid = c.exec_on_terminal(
        &ProcessConfig::new(req.command.clone()),
        pty.slave.as_raw_fd(),
    )?;
    drop(pty.slave);
    let pidfd = match crate::process::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = crate::process::kill(pid, libc::SIGKILL);
            crate::container::ops::wait_child(pid, Instant::now());
            return Err(DaemonError::io("watch", "the exec'd process", e));
        }
    };
    set_nonblocking(pty.master.as_raw_fd());
    Ok(TtyExec {
        name: name.to_string(),
        program: req.command[0].clone(),
        pid,
        pidfd,
        master: pty.master,
        deadline,
    })
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on our own descriptor with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// What a read of the pty master gave.
enum Read {
    Data(usize),
    /// Nothing now (EAGAIN).
    Empty,
    /// No process holds the terminal any more (EIO) or it failed.
    Closed,
}

fn read_master(fd: i32, buf: &mut [u8]) -> Read {
    // SAFETY: reading into a live buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n > 0 {
        return Read::Data(n as usize);
    }
    let e = std::io::Error::last_os_error();
    if n < 0
        && matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        )
    {
        Read::Empty
    } else {
        Read::Closed
    }
}

/// The terminal's end-of-file input for a client whose input ended: in canonical mode the
/// VEOF character (twice after a partial line: the first only ends the line), nothing when
/// the command put its terminal in raw mode.
fn eof_input(master: i32, last: u8) -> Vec<u8> {
    // SAFETY: tcgetattr fills a local termios from our pty master (the slave's settings).
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::tcgetattr(master, &mut t) } != 0 || t.c_lflag & libc::ICANON == 0 {
        return Vec::new();
    }
    let veof = t.c_cc[libc::VEOF];
    if last == b'\n' {
        vec![veof]
    } else {
        vec![veof, veof]
    }
}

fn resize(master: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a local winsize; the kernel signals SIGWINCH to the terminal's
    // foreground process group.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
}

fn poll_fd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

impl TtyExec {
    /// Relays the terminal over `stream` (already answered with `101`) until the command
    /// exits, then sends its exit code.
    pub fn serve(self, d: &Daemon, mut stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(FRAME_TIMEOUT));
        let master = self.master.as_raw_fd();
        let mut input: Vec<u8> = Vec::new();
        let mut last_input = b'\n';
        let mut client = true;
        let mut master_open = true;
        let mut kill_at = self.deadline;
        let mut killed = false;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let now = Instant::now();
            if !killed && kill_at.is_some_and(|t| now >= t) {
                // the whole session: the command and whatever it started on the terminal
                // SAFETY: killpg takes plain integers; the command leads its own session.
                unsafe { libc::killpg(self.pid, libc::SIGKILL) };
                let _ = crate::process::kill(self.pid, libc::SIGKILL);
                killed = true;
            }
            let timeout = match kill_at {
                Some(t) if !killed => t.saturating_duration_since(now).as_millis() as i32 + 1,
                _ => -1,
            };
            let mut fds = [
                poll_fd(
                    if client && input.is_empty() {
                        stream.as_raw_fd()
                    } else {
                        -1
                    },
                    libc::POLLIN,
                ),
                poll_fd(
                    if master_open { master } else { -1 },
                    libc::POLLIN | if input.is_empty() { 0 } else { libc::POLLOUT },
                ),
                poll_fd(self.pidfd.as_raw_fd(), libc::POLLIN),
            ];
            // SAFETY: fds is a valid array of pollfd for its length.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) } < 0 {
                continue;
            }
            if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match read_master(master, &mut buf) {
                    Read::Data(n) => {
                        if client && !send(&mut stream, &buf[..n]) {
                            client = false;
                            kill_at = Some(self.hang_up());
                        }
                    }
                    Read::Empty => {}
                    Read::Closed => master_open = false,
                }
            }
            if fds[1].revents & libc::POLLOUT != 0 && !input.is_empty() {
                // SAFETY: writing from a live buffer to our non-blocking pty master.
                let n = unsafe { libc::write(master, input.as_ptr().cast(), input.len()) };
                if n > 0 {
                    input.drain(..n as usize);
                }
            }
            if fds[0].revents != 0 {
                match Frame::read(&mut stream) {
                    Ok(Some(Frame::Stdin(data))) => {
                        if let Some(&b) = data.last() {
                            last_input = b;
                        }
                        input.extend_from_slice(&data);
                    }
                    Ok(Some(Frame::StdinEof)) => {
                        input.extend(eof_input(master, last_input));
                        last_input = b'\n';
                    }
                    Ok(Some(Frame::Resize { rows, cols })) => resize(master, rows, cols),
                    Ok(Some(other)) => {
                        tracing::warn!(instance = %self.name, frame = ?other, "client sent a daemon's exec frame; hanging up");
                        client = false;
                        kill_at = Some(self.hang_up());
                    }
                    Ok(None) | Err(_) => {
                        client = false;
                        kill_at = Some(self.hang_up());
                    }
                }
            }
            if fds[2].revents != 0 {
                break;
            }
        }
        // What the command wrote just before it ended.
        while master_open {
            match read_master(master, &mut buf) {
                Read::Data(n) => {
                    if client && !send(&mut stream, &buf[..n]) {
                        client = false;
                    }
                }
                Read::Empty | Read::Closed => master_open = false,
            }
        }
        let code = crate::container::ops::wait_child(self.pid, Instant::now() + HANGUP_GRACE);
        if client {
            let _ = stream.write_all(&Frame::Exit(code).encode());
        }
        d.event(
            "instance-exec",
            Some(&self.name),
            &format!("{} (interactive) → exit {code}", self.program),
        );
    }

    /// The client is gone: SIGHUP to the command's session; returns when to SIGKILL it.
    fn hang_up(&self) -> Instant {
        tracing::info!(instance = %self.name, pid = self.pid, "exec client gone: hanging up the command");
        // SAFETY: killpg takes plain integers; the command leads its own session.
        unsafe { libc::killpg(self.pid, libc::SIGHUP) };
        Instant::now() + HANGUP_GRACE
    }
}

fn send(stream: &mut UnixStream, data: &[u8]) -> bool {
    stream
        .write_all(&Frame::data_frames(data, Frame::Output))
        .is_ok()
}
