//! virtio-vsock: arbitrary TX rings parsed into packets (`virtio-vsock`'s header parser),
//! then a stream of arbitrary packets (every op, port, length, credit value) through the
//! muxer, host clients writing arbitrary handshake lines, and the muxer's answers filled into
//! arbitrary RX rings. Host sockets live in a temporary directory; port 5 has a host
//! listener so guest-initiated connections really open.
#![no_main]

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use common::*;
use libfuzzer_sys::fuzz_target;
use virtio::vsock::muxer::{guest_initiated_path, Muxer};
use virtio::vsock::packet::Hdr;
use virtio::vsock::worker::{VsockCounters, Worker};
use vmm_sys_util::epoll::EpollEvent;

const CID: u64 = 3;
/// A host port with a listener (guest → host connections succeed).
const OPEN_PORT: u32 = 5;

struct Host {
    path: PathBuf,
    listener: Arc<UnixListener>,
    port_listener: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kapsel-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port_listener =
            UnixListener::bind(guest_initiated_path(&path, OPEN_PORT)).expect("bind");
        port_listener.set_nonblocking(true).expect("nonblocking");
        Host {
            path,
            listener: Arc::new(listener),
            port_listener,
        }
    })
}

fn header(input: &mut Input<'_>) -> Hdr {
    let sel = input.u8();
    let port = |v: u8| [1000, 1001, OPEN_PORT, 1234][usize::from(v & 3)];
    Hdr {
        src_cid: if sel & 1 == 0 { CID } else { input.u64() },
        dst_cid: if sel & 2 == 0 { 2 } else { input.u64() },
        src_port: port(sel >> 2),
        dst_port: port(sel >> 4),
        len: input.u32() % 0x2_0000,
        type_: if sel & 0x40 == 0 { 1 } else { input.u16() },
        op: u16::from(input.u8() % 9),
        flags: input.u32() & 7,
        buf_alloc: input.u32(),
        fwd_cnt: input.u32(),
    }
}

/// Runs the muxer's ready host events once, without waiting.
fn pump(mux: &mut Muxer) {
    let mut events = vec![EpollEvent::default(); 16];
    if let Ok(n) = mux.epoll().wait(0, &mut events) {
        for ev in &events[..n] {
            mux.handle_event(ev.data(), ev.event_set());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mem) = mem() else { return };
    let h = host();
    let Ok(mux) = Muxer::new(CID, h.path.clone(), h.listener.clone()) else {
        return;
    };
    let mut input = Input(data);
    let rx = ring(&mem, 0, 0, &mut input);
    let tx = ring(&mem, 0x1000, 1, &mut input);
    let evt = ring(&mem, 0x2000, 2, &mut Input(&[]));
    fill_data(&mem, &mut input, 2048);
    let mut worker = Worker::new(
        mem.clone(),
        Arc::new(NullIrq),
        [rx, tx, evt],
        mux,
        Arc::new(VsockCounters::default()),
    );
    worker.process_tx();
    let mut clients = Vec::new();
    while !input.is_empty() {
        match input.u8() % 4 {
            0 => {
                // a host program connecting with an arbitrary handshake line
                if let Ok(mut c) = UnixStream::connect(&h.path) {
                    let line = input.bytes(24).to_vec();
                    let _ = c.write_all(&line);
                    clients.push(c);
                }
            }
            _ => {
                let hdr = header(&mut input);
                let n = usize::from(input.u8()) * 4;
                let payload = input.bytes(n).to_vec();
                worker.muxer().handle_guest(hdr, &payload);
            }
        }
        pump(worker.muxer());
        worker.process_rx();
    }
    drop(worker);
    // forget the connections guest packets opened to the host listener
    while h.port_listener.accept().is_ok() {}
});
