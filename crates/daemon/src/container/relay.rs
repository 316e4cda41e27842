//! The container console on a UNIX socket: the monitor keeps the pty master, copies the
//! container's output to every connected client (and into a small backlog a new client gets
//! first), and client input to the container. Output is read even with nobody attached, so
//! a chatty container never blocks on its terminal.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crate::error::{DaemonError, Result};

/// Output kept for clients that attach later.
const BACKLOG: usize = 64 * 1024;

/// The console socket and its clients.
#[derive(Debug)]
pub struct Relay {
    master: OwnedFd,
    master_open: bool,
    listener: UnixListener,
    clients: Vec<UnixStream>,
    backlog: VecDeque<u8>,
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: reading into a local buffer of the given length.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

fn write_all_fd(fd: RawFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: writing from a live slice of the given length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

impl Relay {
    /// Serves `master` on a new socket at `path`.
    pub fn bind(path: &Path, master: OwnedFd) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| DaemonError::io("bind", path, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| DaemonError::io("configure", path, e))?;
        Ok(Relay {
            master,
            master_open: true,
            listener,
            clients: Vec::new(),
            backlog: VecDeque::new(),
        })
    }

    /// The descriptors to poll for input, in the order [`Relay::handle`] expects.
    pub fn poll_fds(&self) -> Vec<libc::pollfd> {
        use container::process::poll_in as fd;
        let mut v = vec![
            fd(if self.master_open {
                self.master.as_raw_fd()
            } else {
                -1
            }),
            fd(self.listener.as_raw_fd()),
        ];
        v.extend(self.clients.iter().map(|c| fd(c.as_raw_fd())));
        v
    }

    /// Handles what `poll` reported on the descriptors from [`Relay::poll_fds`].
    pub fn handle(&mut self, fds: &[libc::pollfd]) {
        if fds.first().is_some_and(|f| f.revents != 0) {
            self.pump_output();
        }
        if fds.get(1).is_some_and(|f| f.revents != 0) {
            self.accept();
        }
        let mut gone = Vec::new();
        for (i, f) in fds.iter().skip(2).enumerate() {
            if f.revents == 0 {
                continue;
            }
            let Some(client) = self.clients.get_mut(i) else {
                continue;
            };
            let mut buf = [0u8; 1024];
            match client.read(&mut buf) {
                Ok(0) | Err(_) => gone.push(i),
                Ok(n) => {
                    if self.master_open {
                        write_all_fd(self.master.as_raw_fd(), &buf[..n]);
                    }
                }
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
        }
    }

    /// Copies what the container wrote to the clients and the backlog.
    fn pump_output(&mut self) {
        let mut buf = [0u8; 4096];
        let n = read_fd(self.master.as_raw_fd(), &mut buf);
        if n <= 0 {
            // EIO: every process holding the terminal has exited.
            self.master_open = false;
            return;
        }
        let data = &buf[..n as usize];
        self.backlog.extend(data);
        let excess = self.backlog.len().saturating_sub(BACKLOG);
        self.backlog.drain(..excess);
        self.clients.retain_mut(|c| c.write_all(data).is_ok());
    }

    fn accept(&mut self) {
        while let Ok((mut c, _)) = self.listener.accept() {
            let _ = c.set_nonblocking(false);
            // A client that stops reading is dropped rather than stalling the container.
            let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
            let (a, b) = self.backlog.as_slices();
            if c.write_all(a).is_ok() && c.write_all(b).is_ok() {
                self.clients.push(c);
            }
        }
    }

    /// Reads output still buffered after the container's first process ended.
    pub fn drain(&mut self) {
        for _ in 0..64 {
            let mut pfd = container::process::poll_in(self.master.as_raw_fd());
            // SAFETY: polling one valid pollfd without waiting.
            let ready = unsafe { libc::poll(&mut pfd, 1, 0) } > 0;
            if !self.master_open || !ready {
                break;
            }
            self.pump_output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_reaches_late_clients_and_input_reaches_the_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let pty = container::console::open_pty(None).unwrap();
        // Raw mode on the slave so bytes pass unchanged.
        // SAFETY: tcgetattr/cfmakeraw/tcsetattr on our own pty slave with a local termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            libc::tcgetattr(pty.slave.as_raw_fd(), &mut t);
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(pty.slave.as_raw_fd(), libc::TCSANOW, &t);
        }
        let mut relay = Relay::bind(&sock, pty.master).unwrap();
        let step = |relay: &mut Relay| {
            let mut fds = relay.poll_fds();
            // SAFETY: fds is a valid array for its length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
            relay.handle(&fds);
        };
        assert!(write_all_fd(pty.slave.as_raw_fd(), b"early"));
        step(&mut relay);
        let mut client = UnixStream::connect(&sock).unwrap();
        step(&mut relay);
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"early");
        client.write_all(b"in").unwrap();
        step(&mut relay);
        let mut input = [0u8; 2];
        assert_eq!(read_fd(pty.slave.as_raw_fd(), &mut input), 2);
        assert_eq!(&input, b"in");
    }
}
