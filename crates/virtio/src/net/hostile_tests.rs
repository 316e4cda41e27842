//! A hostile driver against virtio-net: every broken TX chain (frames the guest sends) and
//! RX chain (buffers the device fills) of [`hostile_scenarios`] is used or resets the card;
//! an avail index jumping past the queue size stops the card (NEEDS_RESET); the
//! configuration space is bounded and read-only.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{FrameIo, NetCounters, Worker, WorkerParts, RX_INDEX, TX_INDEX};
use super::{NetConfig, TapSpec, VNET_HDR_LEN};
use crate::rate_limiter::{RateLimit, RateLimiter};
use crate::test_util::*;
use crate::QueueHandle;

const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;

#[derive(Default)]
struct FakeIo {
    to_guest: Mutex<VecDeque<Vec<u8>>>,
    sent: Mutex<Vec<Vec<u8>>>,
}

impl FrameIo for FakeIo {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.to_guest.lock().expect("lock").pop_front() {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        self.sent.lock().expect("lock").push(buf.to_vec());
        Ok(buf.len())
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

fn handle(ring: &RawRing<'_>, index: u16) -> QueueHandle {
    QueueHandle {
        index,
        queue: ring.queue(),
        kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    }
}

struct Card<'m> {
    worker: Worker,
    io: Arc<FakeIo>,
    irq: Arc<Recorder>,
    counters: Arc<NetCounters>,
    rx: RawRing<'m>,
    tx: RawRing<'m>,
}

fn card(mem: &arch::GuestMemoryMmap) -> Card<'_> {
    let rx = RawRing::new(mem, RX_RING);
    let tx = RawRing::new(mem, TX_RING);
    let io = Arc::new(FakeIo::default());
    let irq = Arc::new(Recorder::default());
    let counters = Arc::new(NetCounters::default());
    let parts = WorkerParts {
        mem: mem.clone(),
        interrupt: irq.clone(),
        io: io.clone(),
        rx_limiter: Arc::new(RateLimiter::new(RateLimit::default()).expect("limiter")),
        tx_limiter: Arc::new(RateLimiter::new(RateLimit::default()).expect("limiter")),
        counters: counters.clone(),
    };
    let worker = Worker::new(parts, handle(&rx, RX_INDEX), handle(&tx, TX_INDEX));
    Card {
        worker,
        io,
        irq,
        counters,
        rx,
        tx,
    }
}

fn good_tx() -> Vec<Desc> {
    vec![
        (BUF, VNET_HDR_LEN as u32, F_NEXT, 1),
        (BUF + 0x1000, 60, 0, 0),
    ]
}

fn good_rx() -> Vec<Desc> {
    vec![
        (BUF, VNET_HDR_LEN as u32, F_WRITE | F_NEXT, 1),
        (BUF + 0x1000, 1514, F_WRITE, 0),
    ]
}

#[test]
fn every_broken_tx_chain_is_used_and_never_sent_out_of_bounds() {
    for s in hostile_scenarios(&good_tx()) {
        let mem = mem();
        let mut c = card(&mem);
        c.tx.load(&s);
        c.worker.process_tx();
        check_outcome(&s, &c.tx, &c.irq);
        for frame in c.io.sent.lock().unwrap().iter() {
            assert!(frame.len() <= super::MAX_FRAME_LEN, "{}", s.name);
        }
        if s.name == "the good chain itself" {
            assert_eq!(c.counters.tx_frames.load(Ordering::Relaxed), 1);
            assert_eq!(c.io.sent.lock().unwrap()[0].len(), VNET_HDR_LEN + 60);
        }
    }
}

#[test]
fn every_broken_rx_chain_is_used_and_the_frame_kept_or_dropped() {
    for s in hostile_scenarios(&good_rx()) {
        let mem = mem();
        let mut c = card(&mem);
        // a frame for every buffer: the device only uses buffers it has frames for
        for _ in &s.heads {
            c.io.to_guest
                .lock()
                .unwrap()
                .push_back(vec![7u8; VNET_HDR_LEN + 100]);
        }
        c.rx.load(&s);
        c.worker.process_rx();
        check_outcome(&s, &c.rx, &c.irq);
        if s.name == "the good chain itself" {
            assert_eq!(c.rx.used(), [(0, (VNET_HDR_LEN + 100) as u32)]);
        }
    }
}

#[test]
fn avail_index_jump_on_either_queue_stops_the_card() {
    for tx_side in [true, false] {
        let mem = mem();
        let mut c = card(&mem);
        c.io.to_guest.lock().unwrap().push_back(vec![1u8; 64]);
        if tx_side {
            c.tx.corrupt_avail_index();
            c.worker.process_tx();
        } else {
            c.rx.corrupt_avail_index();
            c.worker.process_rx();
        }
        assert_eq!(c.irq.needs_reset(), 1, "tx_side={tx_side}");
        assert!(c.worker.is_broken());
        // both directions stay stopped until the reset
        c.tx.load(&Scenario {
            name: "good",
            descs: good_tx(),
            heads: vec![0],
        });
        c.worker.process_tx();
        c.worker.process_rx();
        assert_eq!(c.tx.used_idx(), 0);
        assert!(c.io.sent.lock().unwrap().is_empty());
        assert_eq!(c.irq.needs_reset(), 1);
    }
}

#[test]
fn config_space_accesses_are_bounded_and_read_only() {
    let config = NetConfig {
        tap: TapSpec::Auto,
        mac: Some([0x52, 0x54, 0, 1, 2, 3]),
        host_ip: None,
        rx_limit: RateLimit::default(),
        tx_limit: RateLimit::default(),
    };
    let mut net = super::Net::with_io(Arc::new(FakeIo::default()), "fake0", &config).unwrap();
    check_config_space(&mut net, 8);
}
