//! The virtio-net worker: one thread per card moving frames between the queues and the TAP.
//!
//! Frames carry the 12-byte virtio-net header both ways: the TAP speaks the same header
//! (`IFF_VNET_HDR`), so offload metadata passes through untouched. Bad chains (wrong
//! direction, bad addresses, too long, too short) are returned used with length 0 and
//! counted. A corrupt ring (avail index jumping past the queue size, a head index the used
//! ring refuses) stops the card and asks the driver for a reset (NEEDS_RESET); nothing a
//! guest writes panics the VMM.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arch::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tap::Tap;
use super::{MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::queue_fault::{pop_chain, QueueFault};
use crate::rate_limiter::RateLimiter;
use crate::worker::DeviceLoop;
use crate::{Interrupt, QueueHandle};

pub const RX_INDEX: u16 = 0;
pub const TX_INDEX: u16 = 1;

/// Where frames go and come from: the TAP, or a fake in tests.
pub trait FrameIo: Send + Sync {
    /// One frame with its header; `WouldBlock` when none is waiting.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize>;
    /// The fd to poll for readable frames.
    fn fd(&self) -> Option<RawFd>;
}

impl FrameIo for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        Tap::write_frame(self, buf)
    }
    fn fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

/// Per-card counters, readable while the worker runs.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Chains the guest got wrong.
    pub bad_chains: AtomicU64,
    /// Frames dropped (TAP errors, frames larger than the guest's buffer).
    pub dropped: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor has the wrong direction")]
    Direction,
    #[error("descriptor points outside guest memory")]
    Address,
    #[error("chain longer than {MAX_FRAME_LEN} bytes")]
    TooLong,
    #[error("chain shorter than the virtio-net header")]
    TooShort,
}

/// Copies the readable chain into `buf`; returns the length.
fn read_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::Direction);
        }
        let n = desc.len() as usize;
        let end = len.checked_add(n).ok_or(ChainError::TooLong)?;
        let dst = buf.get_mut(len..end).ok_or(ChainError::TooLong)?;
        mem.read_slice(dst, desc.addr())
            .map_err(|_| ChainError::Address)?;
        len = end;
    }
    if len < VNET_HDR_LEN {
        return Err(ChainError::TooShort);
    }
    Ok(len)
}

/// Copies `frame` into the writable chain; returns the bytes written, or `TooLong` when the
/// chain cannot hold the frame.
fn write_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> Result<usize, ChainError> {
    let mut done = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::Direction);
        }
        if done == frame.len() {
            break;
        }
        let n = (desc.len() as usize).min(frame.len() - done);
        mem.write_slice(&frame[done..done + n], desc.addr())
            .map_err(|_| ChainError::Address)?;
        done += n;
    }
    if done < frame.len() {
        return Err(ChainError::TooLong);
    }
    Ok(done)
}

/// The state of one card's data path.
pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    rx: QueueHandle,
    tx: QueueHandle,
    io: Arc<dyn FrameIo>,
    rx_limiter: Arc<RateLimiter>,
    tx_limiter: Arc<RateLimiter>,
    counters: Arc<NetCounters>,
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` waiting for a guest buffer (0: none).
    rx_pending: usize,
    /// The pending frame already passed the RX limiter.
    rx_admitted: bool,
    tx_buf: Vec<u8>,
    /// The driver corrupted a ring: the card stops until it is reset (NEEDS_RESET).
    broken: bool,
}

/// What the worker needs besides its queues.
pub struct WorkerParts {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    pub io: Arc<dyn FrameIo>,
    pub rx_limiter: Arc<RateLimiter>,
    pub tx_limiter: Arc<RateLimiter>,
    pub counters: Arc<NetCounters>,
}

const TOKEN_STOP: u64 = 0;
const TOKEN_RX_KICK: u64 = 1;
const TOKEN_TX_KICK: u64 = 2;
const TOKEN_TAP: u64 = 3;
const TOKEN_RX_TIMER: u64 = 4;
const TOKEN_TX_TIMER: u64 = 5;

impl Worker {
    pub fn new(parts: WorkerParts, rx: QueueHandle, tx: QueueHandle) -> Self {
        Worker {
            mem: parts.mem,
            interrupt: parts.interrupt,
            rx,
            tx,
            io: parts.io,
            rx_limiter: parts.rx_limiter,
            tx_limiter: parts.tx_limiter,
            counters: parts.counters,
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_pending: 0,
            rx_admitted: false,
            tx_buf: vec![0; MAX_FRAME_LEN],
            broken: false,
        }
    }

    /// Whether a corrupt ring stopped the card.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn fail(&mut self, queue: u16, fault: &QueueFault) {
        self.broken = true;
        crate::queue_fault::report("virtio-net", queue, fault, self.interrupt.as_ref());
    }

    fn notify(&mut self, which: u16) {
        let queue = if which == RX_INDEX {
            &mut self.rx.queue
        } else {
            &mut self.tx.queue
        };
        crate::device::notify_used(queue, &self.mem, self.interrupt.as_ref(), which);
    }

    /// Sends every frame the guest queued, as far as the TX limiter allows.
    pub fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        match self.drain_tx() {
            Ok(used) => {
                if used {
                    self.notify(TX_INDEX);
                }
            }
            Err(fault) => self.fail(TX_INDEX, &fault),
        }
    }

    /// The TX loop of [`Worker::process_tx`]; returns whether chains were used.
    fn drain_tx(&mut self) -> Result<bool, QueueFault> {
        let mut used = false;
        loop {
            let _ = self.tx.queue.disable_notification(&self.mem);
            while !self.tx_limiter.is_blocked() {
                let Some(chain) = pop_chain(&mut self.tx.queue, &self.mem)? else {
                    break;
                };
                let head = chain.head_index();
                match read_chain(&self.mem, chain, &mut self.tx_buf) {
                    Ok(len) => {
                        if !self.tx_limiter.consume(len as u64) {
                            self.tx.queue.go_to_previous_position();
                            break;
                        }
                        match self.io.write_frame(&self.tx_buf[..len]) {
                            Ok(_) => {
                                bump(&self.counters.tx_frames, 1);
                                bump(&self.counters.tx_bytes, (len - VNET_HDR_LEN) as u64);
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "TAP write failed; frame dropped");
                                bump(&self.counters.dropped, 1);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "bad virtio-net TX chain");
                        bump(&self.counters.bad_chains, 1);
                    }
                }
                self.tx
                    .queue
                    .add_used(&self.mem, head, 0)
                    .map_err(|_| QueueFault::UsedRing)?;
                used = true;
            }
            if self.tx_limiter.is_blocked() {
                return Ok(used);
            }
            // with EVENT_IDX, re-enabling tells whether the guest queued more meanwhile
            match self.tx.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => return Ok(used),
                Err(_) => return Err(QueueFault::UsedRing),
            }
        }
    }

    /// Delivers frames from the TAP while the guest has buffers and the RX limiter allows.
    pub fn process_rx(&mut self) {
        if self.broken {
            return;
        }
        match self.fill_rx() {
            Ok(used) => {
                if used {
                    self.notify(RX_INDEX);
                }
            }
            Err(fault) => self.fail(RX_INDEX, &fault),
        }
    }

    /// The RX loop of [`Worker::process_rx`]; returns whether chains were used.
    fn fill_rx(&mut self) -> Result<bool, QueueFault> {
        let mut used = false;
        loop {
            if self.rx_pending == 0 {
                match self.io.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => {
                        self.rx_pending = n;
                        self.rx_admitted = false;
                    }
                    Ok(_) => {
                        bump(&self.counters.dropped, 1);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "TAP read failed");
                        break;
                    }
                }
            }
            if !self.rx_admitted {
                if !self.rx_limiter.consume(self.rx_pending as u64) {
                    break;
                }
                self.rx_admitted = true;
            }
            let Some(chain) = pop_chain(&mut self.rx.queue, &self.mem)? else {
                // out of guest buffers: ask for a kick when the guest adds some (with
                // EVENT_IDX this publishes avail_event; without it the guest never kicks
                // the RX queue again), unless it added some meanwhile
                match self.rx.queue.enable_notification(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(_) => return Err(QueueFault::UsedRing),
                }
            };
            let head = chain.head_index();
            let len = self.rx_pending;
            // num_buffers = 1: the TAP leaves those two header bytes alone
            self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = match write_chain(&self.mem, chain, &self.rx_buf[..len]) {
                Ok(n) => {
                    bump(&self.counters.rx_frames, 1);
                    bump(&self.counters.rx_bytes, (n - VNET_HDR_LEN) as u64);
                    self.rx_pending = 0;
                    n
                }
                Err(ChainError::TooLong) => {
                    bump(&self.counters.dropped, 1);
                    self.rx_pending = 0;
                    0
                }
                Err(e) => {
                    // keep the frame for the next buffer
                    tracing::debug!(error = %e, "bad virtio-net RX chain");
                    bump(&self.counters.bad_chains, 1);
                    0
                }
            };
            let written = u32::try_from(written).unwrap_or(0);
            self.rx
                .queue
                .add_used(&self.mem, head, written)
                .map_err(|_| QueueFault::UsedRing)?;
            used = true;
        }
        Ok(used)
    }

    /// Where the worker left its queues (RX, then TX).
    pub fn progress(&self) -> Vec<crate::QueueProgress> {
        [&self.rx, &self.tx]
            .iter()
            .map(|h| crate::QueueProgress::of(h.index, &h.queue))
            .collect()
    }
}

impl DeviceLoop for Worker {
    /// Serves the queues until `stop` is written; the worker can run again afterwards
    /// (a snapshot pauses it this way). A frame read from the TAP that found no guest
    /// buffer yet stays in the worker.
    fn run(&mut self, stop: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, token: u64, events: EventSet| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(stop.as_raw_fd(), TOKEN_STOP, EventSet::IN)?;
        add(self.rx.kick.as_raw_fd(), TOKEN_RX_KICK, EventSet::IN)?;
        add(self.tx.kick.as_raw_fd(), TOKEN_TX_KICK, EventSet::IN)?;
        if let Some(fd) = self.io.fd() {
            add(fd, TOKEN_TAP, EventSet::IN | EventSet::EDGE_TRIGGERED)?;
        }
        add(self.rx_limiter.as_raw_fd(), TOKEN_RX_TIMER, EventSet::IN)?;
        add(self.tx_limiter.as_raw_fd(), TOKEN_TX_TIMER, EventSet::IN)?;

        // the guest may have queued frames before we listened
        self.process_tx();
        self.process_rx();
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_RX_KICK => {
                        let _ = self.rx.kick.read();
                        self.process_rx();
                    }
                    TOKEN_TX_KICK => {
                        let _ = self.tx.kick.read();
                        self.process_tx();
                    }
                    TOKEN_TAP => self.process_rx(),
                    TOKEN_RX_TIMER => {
                        self.rx_limiter.timer_fired();
                        self.process_rx();
                    }
                    TOKEN_TX_TIMER => {
                        self.tx_limiter.timer_fired();
                        self.process_tx();
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::{BucketConfig, RateLimit};
    use crate::InterruptKind;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Default)]
    struct FakeIo {
        to_guest: Mutex<VecDeque<Vec<u8>>>,
        from_guest: Mutex<Vec<Vec<u8>>>,
    }

    impl FrameIo for FakeIo {
        fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
            let mut q = self.to_guest.lock().expect("lock");
            match q.pop_front() {
                Some(f) => {
                    buf[..f.len()].copy_from_slice(&f);
                    Ok(f.len())
                }
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
            self.from_guest.lock().expect("lock").push(buf.to_vec());
            Ok(buf.len())
        }
        fn fd(&self) -> Option<RawFd> {
            None
        }
    }

    #[derive(Default)]
    struct CountIrq(AtomicU64);
    impl Interrupt for CountIrq {
        fn trigger(&self, _kind: InterruptKind) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    const RX_RING: u64 = 0x0;
    const TX_RING: u64 = 0x1_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory")
    }

    fn handle(q: Queue, index: u16) -> QueueHandle {
        QueueHandle {
            index,
            queue: q,
            kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        }
    }

    struct Rig {
        worker: Worker,
        io: Arc<FakeIo>,
        irq: Arc<CountIrq>,
        counters: Arc<NetCounters>,
    }

    fn rig(mem: &GuestMemoryMmap, rx_limit: RateLimit, tx_limit: RateLimit) -> Rig {
        let rxq = MockSplitQueue::create(mem, GuestAddress(RX_RING), 16);
        let txq = MockSplitQueue::create(mem, GuestAddress(TX_RING), 16);
        let io = Arc::new(FakeIo::default());
        let irq = Arc::new(CountIrq::default());
        let counters = Arc::new(NetCounters::default());
        let parts = WorkerParts {
            mem: mem.clone(),
            interrupt: irq.clone(),
            io: io.clone(),
            rx_limiter: Arc::new(RateLimiter::new(rx_limit).expect("limiter")),
            tx_limiter: Arc::new(RateLimiter::new(tx_limit).expect("limiter")),
            counters: counters.clone(),
        };
        let worker = Worker::new(
            parts,
            handle(rxq.create_queue().expect("queue"), RX_INDEX),
            handle(txq.create_queue().expect("queue"), TX_INDEX),
        );
        Rig {
            worker,
            io,
            irq,
            counters,
        }
    }

    /// Puts chains (each a list of (addr, len, writable)) on the ring at `ring`.
    fn add_chains(mem: &GuestMemoryMmap, ring: u64, chains: &[&[(u64, u32, bool)]]) {
        let q = MockSplitQueue::create(mem, GuestAddress(ring), 16);
        let mut descs = Vec::new();
        for chain in chains {
            let base = descs.len() as u16;
            for (i, &(addr, len, w)) in chain.iter().enumerate() {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                let last = i + 1 == chain.len();
                if !last {
                    flags |= virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { base + i as u16 + 1 };
                descs.push(RawDescriptor::from(SplitDescriptor::new(
                    addr, len, flags, next,
                )));
            }
        }
        q.add_desc_chains(&descs, 0).expect("chains");
    }

    fn used_len(mem: &GuestMemoryMmap, q: &QueueHandle, i: u64) -> (u16, u32) {
        let used = GuestAddress(q.queue.used_ring());
        let idx: u16 = mem.read_obj(used.unchecked_add(2)).expect("used idx");
        let elem = used.unchecked_add(4 + 8 * i);
        let len: u32 = mem.read_obj(elem.unchecked_add(4)).expect("used len");
        (idx, len)
    }

    use vm_memory::Address;

    #[test]
    fn tx_frame_reaches_the_tap_with_its_header() {
        let mem = mem();
        let mut r = rig(&mem, RateLimit::default(), RateLimit::default());
        let frame: Vec<u8> = (0..100u8).collect();
        mem.write_slice(&frame[..12], GuestAddress(0x10_0000))
            .expect("w");
        mem.write_slice(&frame[12..], GuestAddress(0x20_0000))
            .expect("w");
        add_chains(
            &mem,
            TX_RING,
            &[&[(0x10_0000, 12, false), (0x20_0000, 88, false)]],
        );
        r.worker.process_tx();
        assert_eq!(r.io.from_guest.lock().expect("l").as_slice(), &[frame]);
        assert_eq!(used_len(&mem, &r.worker.tx, 0), (1, 0));
        assert_eq!(r.counters.tx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(r.irq.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rx_frame_lands_in_guest_buffer() {
        let mem = mem();
        let mut r = rig(&mem, RateLimit::default(), RateLimit::default());
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(b"hello guest");
        r.io.to_guest.lock().expect("l").push_back(frame.clone());
        add_chains(&mem, RX_RING, &[&[(0x30_0000, 1526, true)]]);
        r.worker.process_rx();
        let mut got = vec![0u8; frame.len()];
        mem.read_slice(&mut got, GuestAddress(0x30_0000))
            .expect("r");
        assert_eq!(&got[12..], b"hello guest");
        assert_eq!(&got[10..12], &[1, 0], "num_buffers");
        assert_eq!(used_len(&mem, &r.worker.rx, 0), (1, frame.len() as u32));
    }

    #[test]
    fn rx_waits_for_buffers_then_delivers() {
        let mem = mem();
        let mut r = rig(&mem, RateLimit::default(), RateLimit::default());
        r.io.to_guest.lock().expect("l").push_back(vec![7u8; 60]);
        r.worker.process_rx();
        assert_eq!(
            r.worker.rx_pending, 60,
            "held until the guest posts a buffer"
        );
        add_chains(&mem, RX_RING, &[&[(0x30_0000, 2048, true)]]);
        r.worker.process_rx();
        assert_eq!(r.worker.rx_pending, 0);
        assert_eq!(used_len(&mem, &r.worker.rx, 0), (1, 60));
    }

    #[test]
    fn hostile_tx_chains_are_consumed_not_sent() {
        let mem = mem();
        let mut r = rig(&mem, RateLimit::default(), RateLimit::default());
        add_chains(
            &mem,
            TX_RING,
            &[
                // write-only descriptor on TX
                &[(0x10_0000, 64, true)],
                // outside guest memory
                &[(0xffff_ffff_0000, 64, false)],
                // shorter than the header
                &[(0x10_0000, 4, false)],
                // longer than any frame
                &[(0x10_0000, u32::MAX, false)],
                // straddling the end of memory
                &[(0x3f_fff0, 64, false)],
            ],
        );
        r.worker.process_tx();
        assert!(r.io.from_guest.lock().expect("l").is_empty());
        assert_eq!(r.counters.bad_chains.load(Ordering::Relaxed), 5);
        assert_eq!(
            used_len(&mem, &r.worker.tx, 0).0,
            5,
            "all returned to the guest"
        );
    }

    #[test]
    fn hostile_rx_chains_are_consumed_and_frame_kept() {
        let mem = mem();
        let mut r = rig(&mem, RateLimit::default(), RateLimit::default());
        r.io.to_guest.lock().expect("l").push_back(vec![1u8; 100]);
        add_chains(
            &mem,
            RX_RING,
            &[
                &[(0x30_0000, 2048, false)],
                &[(0xffff_ffff_0000, 2048, true)],
                &[(0x30_0000, 2048, true)],
            ],
        );
        r.worker.process_rx();
        assert_eq!(r.counters.bad_chains.load(Ordering::Relaxed), 2);
        assert_eq!(r.counters.rx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(used_len(&mem, &r.worker.rx, 2), (3, 100));
    }

    #[test]
    fn rx_frame_bigger_than_buffer_is_dropped() {
        let mem = mem();
        let mut r = rig(&mem, RateLimit::default(), RateLimit::default());
        r.io.to_guest.lock().expect("l").push_back(vec![1u8; 3000]);
        add_chains(&mem, RX_RING, &[&[(0x30_0000, 1500, true)]]);
        r.worker.process_rx();
        assert_eq!(r.counters.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(used_len(&mem, &r.worker.rx, 0), (1, 0));
    }

    #[test]
    fn tx_limiter_holds_frames_back() {
        let mem = mem();
        let limit = RateLimit {
            bytes: None,
            ops: Some(BucketConfig { rate: 1, burst: 1 }),
        };
        let mut r = rig(&mem, RateLimit::default(), limit);
        add_chains(
            &mem,
            TX_RING,
            &[&[(0x10_0000, 64, false)], &[(0x10_0000, 64, false)]],
        );
        r.worker.process_tx();
        assert_eq!(r.io.from_guest.lock().expect("l").len(), 1);
        assert!(r.worker.tx_limiter.is_blocked());
        assert_eq!(
            used_len(&mem, &r.worker.tx, 0).0,
            1,
            "second chain still queued"
        );
        r.worker
            .tx_limiter
            .update(RateLimit::default())
            .expect("update");
        r.worker.tx_limiter.timer_fired();
        r.worker.process_tx();
        assert_eq!(r.io.from_guest.lock().expect("l").len(), 2);
    }

    #[test]
    fn rx_limiter_keeps_frame_pending() {
        let mem = mem();
        let limit = RateLimit {
            bytes: Some(BucketConfig {
                rate: 100,
                burst: 100,
            }),
            ops: None,
        };
        let mut r = rig(&mem, limit, RateLimit::default());
        for _ in 0..2 {
            r.io.to_guest.lock().expect("l").push_back(vec![1u8; 100]);
        }
        add_chains(
            &mem,
            RX_RING,
            &[&[(0x30_0000, 2048, true)], &[(0x31_0000, 2048, true)]],
        );
        r.worker.process_rx();
        assert_eq!(r.counters.rx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(r.worker.rx_pending, 100);
    }
}
