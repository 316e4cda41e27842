//! A hostile driver against virtio-vsock: every broken TX chain (packets the guest sends,
//! header parsed by `virtio-vsock`) and RX chain (buffers for the device's packets) of
//! [`hostile_scenarios`] is used or resets the device; an avail index jumping past the queue
//! size stops the device (NEEDS_RESET); the configuration space is bounded and read-only.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::packet::{Hdr, OP_REQUEST, TYPE_STREAM};
use super::worker::{VsockCounters, Worker, EVT_INDEX, RX_INDEX, TX_INDEX};
use super::HOST_CID;
use crate::test_util::*;
use crate::QueueHandle;

const CID: u64 = 3;
const HDR_LEN: u32 = 44;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "kapsel-vsock-hostile-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    Dir(d)
}

fn handle(ring: &RawRing<'_>, index: u16) -> QueueHandle {
    QueueHandle {
        index,
        queue: ring.queue(),
        kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    }
}

struct Dev<'m> {
    worker: Worker,
    irq: Arc<Recorder>,
    rx: RawRing<'m>,
    tx: RawRing<'m>,
    _dir: Dir,
}

fn dev<'m>(mem: &'m arch::GuestMemoryMmap, name: &str) -> Dev<'m> {
    let d = dir(name);
    let path = d.0.join("v.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let mux = Muxer::new(CID, path, Arc::new(listener)).expect("muxer");
    let rx = RawRing::new(mem, 0);
    let tx = RawRing::new(mem, 0x1_0000);
    let evt = RawRing::new(mem, 0x2_0000);
    let irq = Arc::new(Recorder::default());
    let worker = Worker::new(
        mem.clone(),
        irq.clone(),
        [
            handle(&rx, RX_INDEX),
            handle(&tx, TX_INDEX),
            handle(&evt, EVT_INDEX),
        ],
        mux,
        Arc::new(VsockCounters::default()),
    );
    Dev {
        worker,
        irq,
        rx,
        tx,
        _dir: d,
    }
}

/// A connection request to a host port nobody listens on: the device answers RST.
fn request() -> Hdr {
    Hdr {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 1000,
        dst_port: 1234,
        type_: TYPE_STREAM,
        op: OP_REQUEST,
        buf_alloc: 1 << 16,
        ..Hdr::default()
    }
}

/// Writes `h` in the wire layout at `addr`.
fn write_hdr(mem: &arch::GuestMemoryMmap, addr: u64, h: &Hdr) {
    let mut b = Vec::with_capacity(HDR_LEN as usize);
    b.extend_from_slice(&h.src_cid.to_le_bytes());
    b.extend_from_slice(&h.dst_cid.to_le_bytes());
    b.extend_from_slice(&h.src_port.to_le_bytes());
    b.extend_from_slice(&h.dst_port.to_le_bytes());
    b.extend_from_slice(&h.len.to_le_bytes());
    b.extend_from_slice(&h.type_.to_le_bytes());
    b.extend_from_slice(&h.op.to_le_bytes());
    b.extend_from_slice(&h.flags.to_le_bytes());
    b.extend_from_slice(&h.buf_alloc.to_le_bytes());
    b.extend_from_slice(&h.fwd_cnt.to_le_bytes());
    mem.write_slice(&b, GuestAddress(addr)).expect("header");
}

fn good_tx() -> Vec<Desc> {
    vec![(BUF, HDR_LEN, F_NEXT, 1), (BUF + 0x1000, 64, 0, 0)]
}

fn good_rx() -> Vec<Desc> {
    vec![
        (BUF + 0x2000, HDR_LEN, F_WRITE | F_NEXT, 1),
        (BUF + 0x3000, 4096, F_WRITE, 0),
    ]
}

#[test]
fn every_broken_tx_chain_is_used_or_resets_the_device() {
    for s in hostile_scenarios(&good_tx()) {
        let mem = mem();
        write_hdr(&mem, BUF, &request());
        let mut d = dev(&mem, "tx");
        d.tx.load(&s);
        d.worker.process_tx();
        check_outcome(&s, &d.tx, &d.irq);
        if s.name == "the good chain itself" {
            assert!(
                d.worker.muxer().has_packets(),
                "RST for the refused request"
            );
        }
    }
}

#[test]
fn every_broken_rx_chain_is_used_or_resets_the_device() {
    for s in hostile_scenarios(&good_rx()) {
        let mem = mem();
        let mut d = dev(&mem, "rx");
        // one pending packet (an RST) for every buffer the driver offers
        for port in 0..s.heads.len() as u32 {
            d.worker.muxer().handle_guest(
                Hdr {
                    src_port: 2000 + port,
                    ..request()
                },
                &[],
            );
        }
        d.rx.load(&s);
        d.worker.process_rx();
        check_outcome(&s, &d.rx, &d.irq);
        if s.name == "the good chain itself" {
            assert_eq!(d.rx.used(), [(0, HDR_LEN)]);
        }
    }
}

#[test]
fn avail_index_jump_on_either_queue_stops_the_device() {
    for tx_side in [true, false] {
        let mem = mem();
        let mut d = dev(&mem, "jump");
        d.worker.muxer().handle_guest(request(), &[]);
        if tx_side {
            d.tx.corrupt_avail_index();
            d.worker.process_tx();
        } else {
            d.rx.corrupt_avail_index();
            d.worker.process_rx();
        }
        assert_eq!(d.irq.needs_reset(), 1, "tx_side={tx_side}");
        assert!(d.worker.is_broken());
        write_hdr(&mem, BUF, &request());
        d.tx.load(&Scenario {
            name: "good",
            descs: good_tx(),
            heads: vec![0],
        });
        d.worker.process_tx();
        assert_eq!(d.tx.used_idx(), 0, "stopped until the reset");
        assert_eq!(d.irq.needs_reset(), 1);
    }
}

#[test]
fn config_space_accesses_are_bounded_and_read_only() {
    let d = dir("config");
    let mut v = super::Vsock::new(&super::VsockConfig {
        cid: 42,
        socket: d.0.join("v.sock"),
    })
    .expect("vsock");
    check_config_space(&mut v, 8);
}
