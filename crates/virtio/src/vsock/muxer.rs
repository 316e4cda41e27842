//! Every connection of one vsock device: the listener for host-initiated connections, their
//! `CONNECT <port>` handshakes, the guest-initiated connections to `PATH_<port>`, and the
//! packets waiting for the guest's RX queue.
//!
//! Everything here is driven by guest packets ([`Muxer::handle_guest`]) and by readiness of
//! host sockets ([`Muxer::handle_event`]); the worker pulls packets for the guest with
//! [`Muxer::next_packet`]. A packet the guest gets wrong resets its connection; nothing
//! panics.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{Conn, ConnState};
use super::packet::*;
use super::HOST_CID;

/// Epoll token of the listener; streams get tokens from [`FIRST_STREAM_TOKEN`] on.
pub const LISTENER_TOKEN: u64 = 8;
pub const FIRST_STREAM_TOKEN: u64 = 16;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_LINE: usize = 32;
/// Host-side ports for host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// (our port, the guest's port)
type Key = (u32, u32);

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

enum Slot {
    Handshake(Handshake),
    Conn(Key),
}

pub struct Muxer {
    cid: u64,
    path: PathBuf,
    listener: Arc<UnixListener>,
    epoll: Epoll,
    slots: HashMap<u64, Slot>,
    conns: HashMap<Key, Conn>,
    /// Header-only packets for the guest, in order.
    control: VecDeque<Hdr>,
    /// Connections whose host stream has data (or EOF) for the guest.
    ready: VecDeque<Key>,
    next_token: u64,
    next_local_port: u32,
}

/// `PATH_<port>`: where guest-initiated connections to `port` go.
pub fn guest_initiated_path(path: &Path, port: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim();
    let port = s.strip_prefix("CONNECT ")?.trim();
    port.parse().ok()
}

impl Muxer {
    pub fn new(cid: u64, path: PathBuf, listener: Arc<UnixListener>) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Muxer {
            cid,
            path,
            listener,
            epoll,
            slots: HashMap::new(),
            conns: HashMap::new(),
            control: VecDeque::new(),
            ready: VecDeque::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The epoll set of the host sockets (the worker adds its own fds with tokens < 8).
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether a packet for the guest is waiting.
    pub fn has_packets(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn watch(&self, fd: RawFd, token: u64, events: EventSet) {
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        {
            tracing::warn!(error = %e, "vsock: cannot poll a host socket");
        }
    }

    fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Polls a connection's stream for what it needs now.
    fn refresh(&mut self, key: Key) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if conn.hup {
            return;
        }
        let mut events = EventSet::empty();
        if conn.wants_read() {
            events |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if conn.wants_write() {
            events |= EventSet::OUT;
        }
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            conn.stream.as_raw_fd(),
            EpollEvent::new(events, conn.token),
        );
    }

    fn reply_rst(&mut self, to: &Hdr) {
        self.control.push_back(Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Hdr::default()
        });
    }

    /// Forgets a connection; with `rst`, tells the guest.
    fn remove(&mut self, key: Key, rst: bool) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        if !conn.hup {
            self.unwatch(conn.stream.as_raw_fd());
        }
        self.slots.remove(&conn.token);
        if rst {
            let h = conn.hdr(self.cid, OP_RST);
            self.control.push_back(h);
        }
        tracing::debug!(local = key.0, peer = key.1, rst, "vsock connection closed");
    }

    fn queue(&mut self, key: Key, op: u16, flags: u32) {
        if let Some(conn) = self.conns.get_mut(&key) {
            let mut h = conn.hdr(self.cid, op);
            h.flags = flags;
            self.control.push_back(h);
        }
    }

    /// Writes buffered guest data; resets the connection on failure, completes a close.
    fn flush(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Err(e) = conn.flush() {
            tracing::debug!(error = %e, "vsock: host stream failed");
            self.remove(key, true);
            return;
        }
        if conn.state == ConnState::Closing && conn.tx_pending() == 0 {
            self.remove(key, true);
            return;
        }
        if conn.needs_credit_update() {
            self.queue(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Handles one packet the guest sent on its TX queue.
    pub fn handle_guest(&mut self, hdr: Hdr, data: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.cid {
            tracing::debug!(?hdr, "vsock: packet with wrong CIDs dropped");
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.reply_rst(&hdr);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if !self.conns.contains_key(&key) {
            match hdr.op {
                OP_REQUEST => self.connect_guest_initiated(&hdr),
                OP_RST => {}
                _ => self.reply_rst(&hdr),
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.update_peer_credit(&hdr);
        }
        match hdr.op {
            OP_RESPONSE => self.on_response(key),
            OP_RW => self.on_data(key, data),
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => self.queue(key, OP_CREDIT_UPDATE, 0),
            OP_SHUTDOWN => self.on_shutdown(key, hdr.flags),
            OP_RST => self.remove(key, false),
            _ => self.remove(key, true),
        }
        self.refresh(key);
    }

    fn connect_guest_initiated(&mut self, hdr: &Hdr) {
        let path = guest_initiated_path(&self.path, hdr.dst_port);
        let stream = match UnixStream::connect(&path).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "vsock: guest connect refused");
                self.reply_rst(hdr);
                return;
            }
        };
        let key = (hdr.dst_port, hdr.src_port);
        let token = self.new_token();
        let mut conn = Conn::new(
            stream,
            hdr.dst_port,
            hdr.src_port,
            ConnState::Established,
            token,
        );
        conn.update_peer_credit(hdr);
        self.watch(conn.stream.as_raw_fd(), token, EventSet::empty());
        self.slots.insert(token, Slot::Conn(key));
        self.conns.insert(key, conn);
        self.queue(key, OP_RESPONSE, 0);
        self.refresh(key);
        tracing::debug!(port = hdr.dst_port, "vsock: guest-initiated connection");
    }

    fn on_response(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != ConnState::Connecting {
            self.remove(key, true);
            return;
        }
        conn.state = ConnState::Established;
        let line = format!("OK {}\n", conn.local_port);
        conn.push_front_line(line.as_bytes());
        self.flush(key);
    }

    fn on_data(&mut self, key: Key, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state == ConnState::Connecting {
            self.remove(key, true);
            return;
        }
        if let Err(e) = conn.push_guest_data(data) {
            tracing::debug!(error = %e, "vsock: connection reset");
            self.remove(key, true);
            return;
        }
        self.flush(key);
    }

    fn on_shutdown(&mut self, key: Key, flags: u32) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if flags & SHUTDOWN_SEND != 0 {
            conn.peer_shutdown_send();
        }
        if flags & SHUTDOWN_RCV != 0 && flags & SHUTDOWN_SEND != 0 {
            conn.state = ConnState::Closing;
        }
        self.flush(key);
    }

    /// Handles readiness of the listener or a host stream.
    pub fn handle_event(&mut self, token: u64, events: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept_all();
            return;
        }
        match self.slots.get(&token) {
            Some(Slot::Handshake(_)) => self.read_handshake(token),
            Some(Slot::Conn(key)) => {
                let key = *key;
                self.stream_event(key, events);
            }
            None => {}
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.new_token();
                    self.watch(stream.as_raw_fd(), token, EventSet::IN);
                    self.slots.insert(
                        token,
                        Slot::Handshake(Handshake {
                            stream,
                            line: Vec::new(),
                        }),
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!(error = %e, "vsock: accept failed");
                    }
                    return;
                }
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line byte by byte (what follows it is connection data).
    fn read_handshake(&mut self, token: u64) {
        let Some(Slot::Handshake(hs)) = self.slots.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let done = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(parse_connect(&hs.line)),
                Ok(_) if hs.line.len() >= MAX_LINE => break Err(()),
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(Slot::Handshake(hs)) = self.slots.remove(&token) else {
            return;
        };
        let Ok(Some(port)) = done else {
            tracing::debug!("vsock: bad CONNECT line; host connection closed");
            self.unwatch(hs.stream.as_raw_fd());
            return;
        };
        let local_port = self.alloc_local_port(port);
        let key = (local_port, port);
        let conn = Conn::new(hs.stream, local_port, port, ConnState::Connecting, token);
        self.slots.insert(token, Slot::Conn(key));
        self.conns.insert(key, conn);
        self.queue(key, OP_REQUEST, 0);
        self.refresh(key);
        tracing::debug!(port, local_port, "vsock: host-initiated connection");
    }

    fn alloc_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    fn stream_event(&mut self, key: Key, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::HANG_UP) || events.contains(EventSet::ERROR) {
            // fully closed: stop polling (HUP would fire forever), drain what is left
            conn.hup = true;
            let fd = conn.stream.as_raw_fd();
            self.unwatch(fd);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) && !conn.hup {
            self.flush(key);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let readable = events.intersects(
            EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
        );
        if readable && conn.state == ConnState::Established && !conn.in_ready && !conn.host_eof {
            conn.in_ready = true;
            self.ready.push_back(key);
        }
        self.refresh(key);
    }

    /// The next header-only packet for the guest, if any.
    pub fn next_control(&mut self) -> Option<(Hdr, usize)> {
        self.control.pop_front().map(|h| (h, 0))
    }

    /// The next packet for the guest: a header, and `n` data bytes in `buf` (RW packets).
    /// `buf.len()` bounds the data (the guest buffer's size).
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Option<(Hdr, usize)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, 0));
        }
        while let Some(key) = self.ready.pop_front() {
            let cid = self.cid;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            match conn.read_for_guest(buf) {
                Ok(0) => {
                    conn.in_ready = false;
                    conn.host_eof = true;
                    let flags = if conn.hup {
                        SHUTDOWN_RCV | SHUTDOWN_SEND
                    } else {
                        SHUTDOWN_SEND
                    };
                    let mut h = conn.hdr(cid, OP_SHUTDOWN);
                    h.flags = flags;
                    self.refresh(key);
                    return Some((h, 0));
                }
                Ok(n) => {
                    let mut h = conn.hdr(cid, OP_RW);
                    h.len = n as u32;
                    self.ready.push_back(key);
                    return Some((h, n));
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    conn.in_ready = false;
                    self.refresh(key);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: host stream read failed");
                    conn.in_ready = false;
                    self.remove(key, true);
                    if let Some(h) = self.control.pop_front() {
                        return Some((h, 0));
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CID: u64 = 3;

    struct Rig {
        mux: Muxer,
        path: PathBuf,
        _dir: TempDir,
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rig(name: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("kapsel-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        listener.set_nonblocking(true).expect("nb");
        let mux = Muxer::new(CID, path.clone(), Arc::new(listener)).expect("muxer");
        Rig {
            mux,
            path,
            _dir: TempDir(dir),
        }
    }

    fn guest(op: u16, src_port: u32, dst_port: u32) -> Hdr {
        Hdr {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            ..Hdr::default()
        }
    }

    /// Runs the event loop once without blocking long.
    fn pump(mux: &mut Muxer) {
        let mut events = vec![EpollEvent::default(); 16];
        let n = mux.epoll().wait(200, &mut events).expect("wait");
        for ev in &events[..n] {
            mux.handle_event(ev.data(), ev.event_set());
        }
    }

    fn packets(mux: &mut Muxer) -> Vec<(Hdr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Some((h, n)) = mux.next_packet(&mut buf) {
            out.push((h, buf[..n].to_vec()));
        }
        out
    }

    #[test]
    fn connect_lines_parse() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT x",
            b"connect 5",
            b"CONNECT 99999999999",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None);
        }
    }

    #[test]
    fn host_initiated_connection_round_trip() {
        let mut r = rig("host");
        let mut host = UnixStream::connect(&r.path).expect("connect");
        host.write_all(b"CONNECT 1234\n").expect("w");
        pump(&mut r.mux); // accept
        pump(&mut r.mux); // handshake line
        let p = packets(&mut r.mux);
        assert_eq!(p.len(), 1);
        let req = p[0].0;
        assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 1234, CID));
        // guest accepts and sends data
        r.mux
            .handle_guest(guest(OP_RESPONSE, 1234, req.src_port), &[]);
        let mut rw = guest(OP_RW, 1234, req.src_port);
        rw.len = 5;
        r.mux.handle_guest(rw, b"hello");
        let mut got = [0u8; 3 + 1 + 10 + 1 + 5];
        let expect = format!("OK {}\nhello", req.src_port);
        host.read_exact(&mut got[..expect.len()]).expect("read");
        assert_eq!(&got[..expect.len()], expect.as_bytes());
        // host answers
        host.write_all(b"world").expect("w");
        pump(&mut r.mux);
        let p = packets(&mut r.mux);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.op, OP_RW);
        assert_eq!(p[0].1, b"world");
        // host closes: the guest hears SHUTDOWN, answers RST, the connection is gone
        drop(host);
        pump(&mut r.mux);
        let p = packets(&mut r.mux);
        assert_eq!(p.last().map(|x| x.0.op), Some(OP_SHUTDOWN));
        r.mux.handle_guest(guest(OP_RST, 1234, req.src_port), &[]);
        assert_eq!(r.mux.connection_count(), 0);
    }

    #[test]
    fn guest_initiated_connection_goes_to_port_socket() {
        let mut r = rig("guest");
        let port_path = guest_initiated_path(&r.path, 52);
        let listener = UnixListener::bind(&port_path).expect("bind");
        r.mux.handle_guest(guest(OP_REQUEST, 7000, 52), &[]);
        let p = packets(&mut r.mux);
        assert_eq!(p[0].0.op, OP_RESPONSE);
        let (mut host, _) = listener.accept().expect("accept");
        let mut rw = guest(OP_RW, 7000, 52);
        rw.len = 3;
        r.mux.handle_guest(rw, b"abc");
        r.mux.handle_guest(
            Hdr {
                flags: 3,
                ..guest(OP_SHUTDOWN, 7000, 52)
            },
            &[],
        );
        let mut all = Vec::new();
        host.read_to_end(&mut all)
            .expect("eof after guest shutdown");
        assert_eq!(all, b"abc");
        let p = packets(&mut r.mux);
        assert_eq!(p.last().map(|x| x.0.op), Some(OP_RST));
        assert_eq!(r.mux.connection_count(), 0);
    }

    #[test]
    fn guest_connect_without_listener_is_reset() {
        let mut r = rig("refused");
        r.mux.handle_guest(guest(OP_REQUEST, 7000, 99), &[]);
        let p = packets(&mut r.mux);
        assert_eq!(p[0].0.op, OP_RST);
        assert_eq!((p[0].0.src_port, p[0].0.dst_port), (99, 7000));
    }

    #[test]
    fn hostile_packets_never_panic() {
        let mut r = rig("hostile");
        // data for a connection that does not exist → RST
        r.mux.handle_guest(guest(OP_RW, 1, 2), b"x");
        // unknown op, wrong type, wrong CIDs
        r.mux.handle_guest(guest(200, 1, 2), &[]);
        r.mux.handle_guest(
            Hdr {
                type_: 9,
                ..guest(OP_REQUEST, 1, 2)
            },
            &[],
        );
        r.mux.handle_guest(
            Hdr {
                src_cid: 77,
                ..guest(OP_REQUEST, 1, 2)
            },
            &[],
        );
        // a guest overflowing its credit on a real connection is reset
        let port_path = guest_initiated_path(&r.path, 5);
        let _listener = UnixListener::bind(&port_path).expect("bind");
        r.mux.handle_guest(guest(OP_REQUEST, 9, 5), &[]);
        let big = vec![0u8; 64 * 1024];
        for _ in 0..16 {
            let mut rw = guest(OP_RW, 9, 5);
            rw.len = big.len() as u32;
            r.mux.handle_guest(rw, &big);
        }
        let ops: Vec<u16> = packets(&mut r.mux).iter().map(|p| p.0.op).collect();
        assert!(ops.contains(&OP_RESPONSE), "{ops:?}");
        assert!(ops.iter().filter(|&&o| o == OP_RST).count() >= 4, "{ops:?}");
        assert_eq!(r.mux.connection_count(), 0);
    }

    #[test]
    fn bad_connect_line_closes_the_host_socket() {
        let mut r = rig("badline");
        let mut host = UnixStream::connect(&r.path).expect("connect");
        host.write_all(b"HELLO\n").expect("w");
        pump(&mut r.mux);
        pump(&mut r.mux);
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).expect("eof"), 0);
        assert!(!r.mux.has_packets());
    }
}
