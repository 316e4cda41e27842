//! What the device fuzz targets share: guest memory, a split queue whose descriptor table,
//! avail ring and avail index come straight from the fuzz input, and a reader of that input.
#![allow(dead_code)]

use std::io;
use std::sync::Arc;

use arch::GuestMemoryMmap;
use virtio::{Interrupt, InterruptKind, QueueHandle};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const MEM_SIZE: u64 = 1 << 20;
/// Queue size of every fuzzed ring.
pub const QSIZE: u16 = 16;
/// Guest buffers live from here to the end of memory (rings are below).
pub const DATA_BASE: u64 = 0x1_0000;

/// Reads the fuzz input front to back; past its end every value is 0.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(got);
        b
    }
    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn mem() -> Option<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).ok()
}

/// An interrupt that goes nowhere.
pub struct NullIrq;
impl Interrupt for NullIrq {
    fn trigger(&self, _kind: InterruptKind) -> io::Result<()> {
        Ok(())
    }
}

/// A guest address: mostly inside the data area (so the deeper checks run), sometimes near
/// the end of memory or anywhere at all.
fn addr(input: &mut Input<'_>) -> u64 {
    let raw = input.u64();
    match raw & 3 {
        0 | 1 => DATA_BASE + (raw >> 2) % (MEM_SIZE - DATA_BASE),
        2 => MEM_SIZE - ((raw >> 2) % 64),
        _ => raw,
    }
}

/// A descriptor length: mostly small, sometimes anything.
fn len(input: &mut Input<'_>) -> u32 {
    let raw = input.u32();
    if raw & 1 == 0 {
        (raw >> 1) % 0x2000
    } else {
        raw
    }
}

/// Builds queue `index` at `base` (descriptor table, then avail ring at +0x100, used ring at
/// +0x200) from the input: a count, that many descriptors and avail entries (the rest stay
/// zero, so short inputs still reach the device), and the avail index.
pub fn ring(mem: &GuestMemoryMmap, base: u64, index: u16, input: &mut Input<'_>) -> QueueHandle {
    let count = u64::from(input.u8() % (QSIZE as u8 + 1));
    for i in 0..count {
        let a = addr(input);
        let l = len(input);
        let flags = input.u16() & 0x7;
        let next = input.u16() % (QSIZE + 2);
        let d = base + i * 16;
        let _ = mem.write_obj(a, GuestAddress(d));
        let _ = mem.write_obj(l, GuestAddress(d + 8));
        let _ = mem.write_obj(flags, GuestAddress(d + 12));
        let _ = mem.write_obj(next, GuestAddress(d + 14));
    }
    let avail = base + 0x100;
    for i in 0..count {
        let head = input.u16() % (QSIZE + 2);
        let _ = mem.write_obj(head, GuestAddress(avail + 4 + 2 * i));
    }
    let idx_raw = input.u16();
    // mostly the chains just written; sometimes a jump past the queue size
    let idx = if idx_raw & 0x8000 == 0 {
        (idx_raw % (QSIZE + 1)).min(count as u16)
    } else {
        idx_raw
    };
    let _ = mem.write_obj(idx, GuestAddress(avail + 2));
    let mut q = Queue::new(QSIZE).expect("queue size");
    let lo = |a: u64| Some(a as u32);
    let hi = |a: u64| Some((a >> 32) as u32);
    q.set_desc_table_address(lo(base), hi(base));
    q.set_avail_ring_address(lo(avail), hi(avail));
    q.set_used_ring_address(lo(base + 0x200), hi(base + 0x200));
    q.set_event_idx(input.u8() & 1 == 1);
    q.set_ready(true);
    QueueHandle {
        index,
        queue: q,
        kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    }
}

/// Fills the data area with input bytes (headers the devices parse live there).
/// A virtio-net worker on `rx` and `tx` with unlimited rate limiters, frames to and from
/// `io`, and no interrupts.
pub fn net_worker(
    mem: &GuestMemoryMmap,
    io: Arc<dyn virtio::net::worker::FrameIo>,
    rx: QueueHandle,
    tx: QueueHandle,
) -> virtio::net::worker::Worker {
    use virtio::rate_limiter::{RateLimit, RateLimiter};
    let limiter = || Arc::new(RateLimiter::new(RateLimit::default()).expect("limiter"));
    let parts = virtio::net::worker::WorkerParts {
        mem: mem.clone(),
        interrupt: Arc::new(NullIrq),
        io,
        rx_limiter: limiter(),
        tx_limiter: limiter(),
        counters: Arc::new(virtio::net::worker::NetCounters::default()),
    };
    virtio::net::worker::Worker::new(parts, rx, tx)
}

pub fn fill_data(mem: &GuestMemoryMmap, input: &mut Input<'_>, n: usize) {
    let bytes = input.bytes(n).to_vec();
    let mut at = DATA_BASE;
    for chunk in bytes.chunks(64) {
        let _ = mem.write_slice(chunk, GuestAddress(at));
        at += 0x1000;
    }
}
