//! The host side of the serial console: guest output to stdout, stdin to the guest, raw
//! terminal mode when stdin is a terminal, and the `Ctrl-A x` escape that stops the VM.
//!
//! With `--console socket:PATH` ([`use_socket`]) the console is a UNIX socket instead, so it
//! outlives whoever started the VMM: one client at a time reads output and writes input, a
//! bounded ring of recent output is replayed to each new client, and detaching (closing the
//! connection) leaves the VM running. Escapes are the client's business in that mode.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use devices::SerialDevice;
use vmm_sys_util::eventfd::EventFd;

/// Unbuffered writes to fd 1, so console output appears byte by byte as the guest sends it.
#[derive(Debug, Default)]
pub struct RawStdout;

impl io::Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(hub) = HUB.get() {
            hub.output(buf);
            return Ok(buf.len());
        }
        loop {
            // SAFETY: writes from a valid, live buffer of `buf.len()` bytes to fd 1.
            let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Puts a terminal into raw mode and restores it when dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Switches `fd` to raw mode if it is a terminal; `None` otherwise.
    pub fn enable(fd: RawFd) -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain old data; zeroed is a valid value to be overwritten.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to fill for a valid fd.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: sets attributes from a valid termios on a valid fd.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved from this same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Ctrl-A, the escape prefix (like QEMU's): `Ctrl-A x` stops the VM, `Ctrl-A Ctrl-A` sends one
/// Ctrl-A to the guest.
const ESCAPE: u8 = 0x01;

/// Tracks the escape sequence across reads.
#[derive(Debug, Default)]
struct EscapeFilter {
    pending: bool,
}

impl EscapeFilter {
    /// Returns the bytes for the guest, and whether the user asked to stop.
    fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => return (out, true),
                    ESCAPE => out.push(ESCAPE),
                    other => {
                        out.push(ESCAPE);
                        out.push(other);
                    }
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// Feeds stdin into the serial device until EOF. With `escape` set (a terminal), `Ctrl-A x`
/// writes `stop_evt`. With a console socket configured ([`use_socket`]), serves the socket
/// instead and leaves stdin alone.
pub fn spawn_stdin_reader(
    serial: Arc<Mutex<SerialDevice>>,
    escape: bool,
    stop_evt: EventFd,
) -> io::Result<()> {
    if let Some(path) = SOCKET_PATH.get() {
        return serve_socket(path, serial);
    }
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || stdin_loop(&serial, escape, &stop_evt))?;
    Ok(())
}

fn stdin_loop(serial: &Mutex<SerialDevice>, escape: bool, stop_evt: &EventFd) {
    let mut buf = [0u8; 256];
    let mut esc = EscapeFilter::default();
    loop {
        // SAFETY: reads into a valid buffer of its length from fd 0.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return;
        }
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let input = &buf[..n as usize];
        let (bytes, stop) = if escape {
            esc.filter(input)
        } else {
            (input.to_vec(), false)
        };
        feed(serial, &bytes);
        if stop {
            let _ = stop_evt.write(1);
            return;
        }
    }
}

/// Queues all of `bytes`, waiting while the guest's receive FIFO is full.
fn feed(serial: &Mutex<SerialDevice>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let accepted = {
            let mut dev = serial.lock().unwrap_or_else(|p| p.into_inner());
            dev.enqueue_input(bytes).unwrap_or(0)
        };
        bytes = &bytes[accepted..];
        if !bytes.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Bytes of recent output replayed to a client that attaches.
const RING_BYTES: usize = 64 * 1024;

static SOCKET_PATH: OnceLock<PathBuf> = OnceLock::new();
static HUB: OnceLock<Arc<Hub>> = OnceLock::new();

/// Serves the console on a UNIX socket at `path` instead of stdin/stdout. Call once, before
/// the VM runs; the socket appears once the VM is built.
pub fn use_socket(path: PathBuf) {
    let _ = SOCKET_PATH.set(path);
}

/// Removes the console socket (at VMM exit).
pub fn remove_socket() {
    if let Some(path) = SOCKET_PATH.get() {
        let _ = std::fs::remove_file(path);
    }
}

/// Recent output plus the attached client, under one lock so a new client gets the replay
/// and then every later byte, with no gap and no repeat.
#[derive(Debug, Default)]
struct HubState {
    ring: VecDeque<u8>,
    client: Option<(u64, UnixStream)>,
}

#[derive(Debug, Default)]
struct Hub {
    state: Mutex<HubState>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guest output: into the ring, and to the client without ever blocking the vCPU (a
    /// client that does not keep up misses bytes; they stay in the ring).
    fn output(&self, buf: &[u8]) {
        let mut st = self.lock();
        push_ring(&mut st.ring, buf);
        let failed = match &st.client {
            Some((_, stream)) => send_nonblocking(stream, buf).is_err(),
            None => false,
        };
        if failed {
            st.client = None;
        }
    }
}

fn push_ring(ring: &mut VecDeque<u8>, buf: &[u8]) {
    let buf = &buf[buf.len().saturating_sub(RING_BYTES)..];
    let excess = (ring.len() + buf.len()).saturating_sub(RING_BYTES);
    ring.drain(..excess);
    ring.extend(buf);
}

/// One `send` with MSG_DONTWAIT; a full socket buffer drops the rest, a dead peer errors.
fn send_nonblocking(stream: &UnixStream, buf: &[u8]) -> io::Result<()> {
    // SAFETY: sends from a valid buffer of `buf.len()` bytes on a socket we own.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// The socket is bound (and listening, with its mode set) under a temporary name and renamed
/// into place, so whoever sees `path` exist (the daemon waits for it) can connect at once.
fn serve_socket(path: &Path, serial: Arc<Mutex<SerialDevice>>) -> io::Result<()> {
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(".binding");
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    std::fs::rename(&tmp, path)?;
    let hub = HUB.get_or_init(|| Arc::new(Hub::default())).clone();
    std::thread::Builder::new()
        .name("console-sock".into())
        .spawn(move || accept_loop(&listener, &hub, &serial))?;
    Ok(())
}

fn accept_loop(listener: &UnixListener, hub: &Arc<Hub>, serial: &Arc<Mutex<SerialDevice>>) {
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else {
            continue;
        };
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        {
            let mut st = hub.lock();
            if st.client.is_some() {
                let _ = stream.write_all(b"kapsel: console busy: another client is attached\r\n");
                continue;
            }
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let (a, b) = st.ring.as_slices();
            if stream
                .write_all(a)
                .and_then(|()| stream.write_all(b))
                .is_err()
            {
                continue;
            }
            next_id += 1;
            st.client = Some((next_id, stream));
        }
        let (hub2, serial, id) = (hub.clone(), serial.clone(), next_id);
        let spawned = std::thread::Builder::new()
            .name("console-client".into())
            .spawn(move || client_loop(reader, &hub2, &serial, id));
        if spawned.is_err() {
            hub.lock().client = None;
        }
    }
}

/// Feeds one client's input to the guest until it detaches.
fn client_loop(mut reader: UnixStream, hub: &Hub, serial: &Mutex<SerialDevice>, id: u64) {
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => feed(serial, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let mut st = hub.lock();
    if st.client.as_ref().is_some_and(|(c, _)| *c == id) {
        st.client = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_bytes() {
        let mut r = VecDeque::new();
        push_ring(&mut r, &[1u8; RING_BYTES - 2]);
        push_ring(&mut r, &[2, 3, 4, 5]);
        assert_eq!(r.len(), RING_BYTES);
        assert_eq!(
            r.iter().rev().take(4).copied().collect::<Vec<_>>(),
            [5, 4, 3, 2]
        );
        push_ring(&mut r, &vec![9u8; RING_BYTES * 2]);
        assert!(r.iter().all(|&b| b == 9));
    }

    #[test]
    fn hub_replays_then_streams_and_drops_dead_clients() {
        let hub = Hub::default();
        hub.output(b"early ");
        let (a, mut b) = UnixStream::pair().unwrap();
        {
            let mut st = hub.lock();
            let (x, y) = st.ring.as_slices();
            let mut replay = x.to_vec();
            replay.extend_from_slice(y);
            (&a).write_all(&replay).unwrap();
            st.client = Some((1, a));
        }
        hub.output(b"late");
        let mut got = [0u8; 10];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"early late");
        drop(b);
        hub.output(b"x");
        hub.output(b"y");
        assert!(hub.lock().client.is_none());
    }

    #[test]
    fn escape_x_stops_and_keeps_preceding_bytes() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"ab\x01x"), (b"ab".to_vec(), true));
    }

    #[test]
    fn double_escape_sends_one() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"\x01\x01z"), (b"\x01z".to_vec(), false));
    }

    #[test]
    fn escape_split_across_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"q\x01"), (b"q".to_vec(), false));
        assert_eq!(f.filter(b"x"), (Vec::new(), true));
    }

    #[test]
    fn other_byte_after_escape_passes_both() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"\x01c"), (b"\x01c".to_vec(), false));
    }
}
