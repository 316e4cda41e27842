//! The host side of the serial console: guest output to stdout, stdin to the guest, raw
//! terminal mode when stdin is a terminal, and the `Ctrl-A x` escape that stops the VM.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::SerialDevice;
use vmm_sys_util::eventfd::EventFd;

/// Unbuffered writes to fd 1, so console output appears byte by byte as the guest sends it.
#[derive(Debug, Default)]
pub struct RawStdout;

impl io::Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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
/// writes `stop_evt`.
pub fn spawn_stdin_reader(
    serial: Arc<Mutex<SerialDevice>>,
    escape: bool,
    stop_evt: EventFd,
) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
