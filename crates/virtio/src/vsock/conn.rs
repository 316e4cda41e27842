//! One vsock stream connection between a guest port and a host UNIX stream.
//!
//! Credit accounting (virtio 1.2, 5.10.6.3): we tell the guest how much we can buffer
//! (`buf_alloc`) and how much we have forwarded to the host (`fwd_cnt`); the guest never sends
//! more than fits. The guest tells us the same, and we never send it more than it can hold.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{Hdr, TYPE_STREAM};
use super::HOST_CID;

/// Bytes from the guest we buffer per connection while the host side is slow.
pub const BUF_ALLOC: u32 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
    /// The guest shut down both directions: flush, then RST and forget.
    Closing,
}

#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    /// Our port (the host side).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    pub state: ConnState,
    /// The epoll token of `stream`.
    pub token: u64,
    /// The stream was reported readable and waits in the muxer's ready list.
    pub in_ready: bool,
    /// The host closed or half-closed its side (read returned 0).
    pub host_eof: bool,
    /// The host side hung up completely (fd no longer polled).
    pub hup: bool,
    /// Guest → host bytes not yet written to the stream.
    tx_buf: VecDeque<u8>,
    /// Bytes received from the guest.
    recv_cnt: Wrapping<u32>,
    /// Bytes written to the host stream.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The guest will send no more: shut the stream's write side once flushed.
    peer_shut_send: bool,
    write_shut: bool,
    /// Leading bytes of `tx_buf` that are ours (the `OK` line), not guest data.
    ctrl_bytes: usize,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the guest sent more than its credit")]
    CreditOverflow,
    #[error("host stream failed")]
    Stream(#[source] io::Error),
}

impl Conn {
    pub fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
        token: u64,
    ) -> Self {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            token,
            in_ready: false,
            host_eof: false,
            hup: false,
            tx_buf: VecDeque::new(),
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            peer_shut_send: false,
            write_shut: false,
            ctrl_bytes: 0,
        }
    }

    /// A header from us to the guest, carrying our current credit.
    pub fn hdr(&mut self, guest_cid: u64, op: u16) -> Hdr {
        self.last_fwd_sent = self.fwd_cnt;
        Hdr {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
            ..Hdr::default()
        }
    }

    /// Takes the guest's credit information from any packet it sent.
    pub fn update_peer_credit(&mut self, hdr: &Hdr) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the stream should be polled for reading.
    pub fn wants_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && !self.hup
            && !self.in_ready
            && self.peer_credit() > 0
    }

    /// Whether buffered guest data waits for the stream to become writable.
    pub fn wants_write(&self) -> bool {
        !self.tx_buf.is_empty() && !self.hup
    }

    pub fn tx_pending(&self) -> usize {
        self.tx_buf.len()
    }

    /// Queues host-bound bytes that are not guest data (the `OK <port>` line).
    pub fn push_front_line(&mut self, line: &[u8]) {
        for b in line.iter().rev() {
            self.tx_buf.push_front(*b);
        }
        self.ctrl_bytes += line.len();
    }

    /// Buffers data the guest sent.
    pub fn push_guest_data(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let in_flight = (self.recv_cnt - self.fwd_cnt).0 as usize;
        if in_flight + data.len() > BUF_ALLOC as usize {
            return Err(ConnError::CreditOverflow);
        }
        self.tx_buf.extend(data);
        self.recv_cnt += Wrapping(data.len() as u32);
        Ok(())
    }

    /// The guest said it will send no more.
    pub fn peer_shutdown_send(&mut self) {
        self.peer_shut_send = true;
    }

    /// Writes buffered guest data to the stream until done or it would block.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => {
                    return Err(ConnError::Stream(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let ctrl = n.min(self.ctrl_bytes);
                    self.ctrl_bytes -= ctrl;
                    self.fwd_cnt += Wrapping((n - ctrl) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Stream(e)),
            }
        }
        if self.peer_shut_send && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// Whether the guest should hear about freed buffer space now: once its view of our free
    /// space dropped below half and we forwarded something since we last told it.
    pub fn needs_credit_update(&self) -> bool {
        let guest_view_used = (self.recv_cnt - self.last_fwd_sent).0;
        self.fwd_cnt != self.last_fwd_sent && guest_view_used > BUF_ALLOC / 2
    }

    /// Reads host data for the guest, at most its credit and `buf.len()`.
    /// `Ok(0)` means end of stream.
    pub fn read_for_guest(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(self.peer_credit() as usize);
        if max == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.stream.read(&mut buf[..max])?;
        self.rx_cnt += Wrapping(n as u32);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nb");
        (Conn::new(a, 1024, 5000, ConnState::Established, 99), b)
    }

    #[test]
    fn credit_limits_guest_bound_reads() {
        let (mut c, mut host) = pair();
        host.write_all(&[7u8; 100]).expect("w");
        let mut buf = [0u8; 64];
        assert!(c.read_for_guest(&mut buf).is_err(), "no credit yet");
        c.update_peer_credit(&Hdr {
            buf_alloc: 40,
            fwd_cnt: 0,
            ..Hdr::default()
        });
        assert_eq!(c.read_for_guest(&mut buf).expect("r"), 40);
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_read());
        c.update_peer_credit(&Hdr {
            buf_alloc: 40,
            fwd_cnt: 40,
            ..Hdr::default()
        });
        assert_eq!(c.read_for_guest(&mut buf).expect("r"), 40);
    }

    #[test]
    fn guest_overflowing_its_credit_is_an_error() {
        let (mut c, _host) = pair();
        c.push_guest_data(&vec![0u8; BUF_ALLOC as usize])
            .expect("fits");
        assert!(matches!(
            c.push_guest_data(&[1]),
            Err(ConnError::CreditOverflow)
        ));
    }

    #[test]
    fn flush_forwards_and_counts() {
        let (mut c, mut host) = pair();
        c.push_guest_data(b"hello").expect("push");
        c.push_front_line(b"OK 1024\n");
        c.flush().expect("flush");
        let mut got = [0u8; 13];
        host.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"OK 1024\nhello");
        assert_eq!(c.tx_pending(), 0);
        assert_eq!(c.hdr(3, 6).fwd_cnt, 5, "only guest data counts");
    }

    #[test]
    fn credit_update_after_half_the_buffer() {
        let (mut c, mut host) = pair();
        let chunk = vec![0u8; 64 * 1024];
        let mut sink = vec![0u8; 64 * 1024];
        for _ in 0..3 {
            c.push_guest_data(&chunk).expect("push");
            c.flush().expect("flush");
            host.read_exact(&mut sink).expect("drain");
        }
        assert!(c.needs_credit_update());
        let _ = c.hdr(3, 6);
        assert!(!c.needs_credit_update());
    }

    #[test]
    fn peer_shutdown_send_closes_write_side_after_flush() {
        let (mut c, mut host) = pair();
        c.push_guest_data(b"bye").expect("push");
        c.peer_shutdown_send();
        c.flush().expect("flush");
        let mut all = Vec::new();
        host.read_to_end(&mut all).expect("eof");
        assert_eq!(all, b"bye");
    }
}
