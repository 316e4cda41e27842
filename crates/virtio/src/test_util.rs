//! Helpers for the device tests, above all the hostile-driver ones: guest memory, a ring the
//! test writes raw from the driver's side (any flags, any `next`, any avail index), the
//! catalogue of broken chains every device must survive, and an interrupt that records what
//! the device raised.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arch::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{Interrupt, InterruptKind, QueueHandle, VirtioDevice};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;
/// Guest RAM of the tests: 1 MiB at 0.
pub const MEM_SIZE: u64 = 1 << 20;
/// Queue size of the test rings.
pub const QSIZE: u16 = 16;
/// Where test data buffers live (above the rings).
pub const BUF: u64 = 0x8_0000;

pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory")
}

/// An interrupt that records the queue/config interrupts and NEEDS_RESET requests.
#[derive(Default)]
pub struct Recorder {
    pub kinds: Mutex<Vec<InterruptKind>>,
    pub needs_reset: AtomicUsize,
}

impl Recorder {
    pub fn needs_reset(&self) -> usize {
        self.needs_reset.load(Ordering::Acquire)
    }
}

impl Interrupt for Recorder {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        self.kinds.lock().expect("lock").push(kind);
        Ok(())
    }

    fn set_needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::AcqRel);
        let _ = self.trigger(InterruptKind::Config);
    }
}

/// One raw descriptor: (addr, len, flags, next).
pub type Desc = (u64, u32, u16, u16);

/// A chain scenario: descriptors stored from index 0, and the heads made available.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub descs: Vec<Desc>,
    pub heads: Vec<u16>,
}

fn sc(name: &'static str, descs: Vec<Desc>, heads: Vec<u16>) -> Scenario {
    Scenario { name, descs, heads }
}

/// Broken chains, built around `good`: a chain the device accepts (descriptors from index
/// 0, at most 4). Each must end in a used element, a failed status or NEEDS_RESET.
pub fn hostile_scenarios(good: &[Desc]) -> Vec<Scenario> {
    let n = good.len() as u16;
    let flip = |d: &Desc| (d.0, d.1, d.2 ^ F_WRITE, d.3);
    let mut out = vec![
        sc("the good chain itself", good.to_vec(), vec![0]),
        sc(
            "every buffer outside guest memory",
            good.iter()
                .map(|d| (d.0 + (1 << 40), d.1, d.2, d.3))
                .collect(),
            vec![0],
        ),
        sc(
            "address + length past the end of guest memory",
            good.iter()
                .map(|d| (MEM_SIZE - 4, d.1.max(64), d.2, d.3))
                .collect(),
            vec![0],
        ),
        sc(
            "address + length overflows u64",
            good.iter()
                .map(|d| (u64::MAX - 8, d.1.max(64), d.2, d.3))
                .collect(),
            vec![0],
        ),
        sc(
            "length u32::MAX",
            good.iter().map(|d| (d.0, u32::MAX, d.2, d.3)).collect(),
            vec![0],
        ),
        sc(
            "zero-length descriptors",
            good.iter().map(|d| (d.0, 0, d.2, d.3)).collect(),
            vec![0],
        ),
        sc(
            "every direction flipped",
            good.iter().map(flip).collect(),
            vec![0],
        ),
        sc(
            "first descriptor only, length 1 (header too short)",
            vec![(good[0].0, 1, good[0].2 & !F_NEXT, 0)],
            vec![0],
        ),
        sc(
            "first descriptor alone (chain cut short)",
            vec![(good[0].0, good[0].1, good[0].2 & !F_NEXT, 0)],
            vec![0],
        ),
        sc(
            "descriptor loop back to the head",
            {
                let mut v = good.to_vec();
                let last = v.len() - 1;
                v[last].2 |= F_NEXT;
                v[last].3 = 0;
                v
            },
            vec![0],
        ),
        sc(
            "descriptor pointing at itself",
            vec![(good[0].0, good[0].1, good[0].2 | F_NEXT, 0)],
            vec![0],
        ),
        sc(
            "next index outside the table",
            vec![(good[0].0, good[0].1, good[0].2 | F_NEXT, 999)],
            vec![0],
        ),
        sc(
            "head index outside the queue",
            good.to_vec(),
            vec![QSIZE + 3],
        ),
        sc(
            "the same chain made available twice",
            good.to_vec(),
            vec![0, 0],
        ),
        sc(
            "indirect table outside guest memory",
            vec![(1 << 40, 64, F_INDIRECT, 0)],
            vec![0],
        ),
        sc(
            "indirect table of a length not a multiple of 16",
            vec![(BUF + 0x4_0000, 17, F_INDIRECT, 0)],
            vec![0],
        ),
        sc(
            "indirect table of length 0",
            vec![(BUF + 0x4_0000, 0, F_INDIRECT, 0)],
            vec![0],
        ),
        sc(
            "a full queue of broken heads",
            vec![(1 << 40, 4096, 0, 0)],
            (0..QSIZE).map(|i| i % 2).collect(),
        ),
    ];
    // a chain with every descriptor both NEXT and INDIRECT
    out.push(sc(
        "descriptors both NEXT and INDIRECT",
        good.iter()
            .enumerate()
            .map(|(i, d)| (d.0, d.1, d.2 | F_NEXT | F_INDIRECT, (i as u16 + 1) % n))
            .collect(),
        vec![0],
    ));
    out
}

/// A driver-side ring at `base` whose descriptors and avail ring the test writes raw:
/// descriptor table at `base`, avail ring at `base + 0x100`, used ring at `base + 0x200`.
/// (virtio-queue's `MockSplitQueue` lets the used ring overlap the upper half of the avail
/// ring, so a device's used writes would corrupt avail entries 6 and up.)
pub struct RawRing<'m> {
    mem: &'m GuestMemoryMmap,
    base: u64,
}

impl<'m> RawRing<'m> {
    pub fn new(mem: &'m GuestMemoryMmap, base: u64) -> Self {
        let ring = RawRing { mem, base };
        for off in (0..0x300).step_by(2) {
            ring.put(off, 0u16);
        }
        ring
    }

    fn put<T: vm_memory::ByteValued>(&self, off: u64, v: T) {
        self.mem
            .write_obj(v, GuestAddress(self.base + off))
            .expect("ring write");
    }

    fn get<T: vm_memory::ByteValued>(&self, off: u64) -> T {
        self.mem
            .read_obj(GuestAddress(self.base + off))
            .expect("ring read")
    }

    /// The guest memory the ring lives in.
    pub fn memory(&self) -> &'m GuestMemoryMmap {
        self.mem
    }

    /// The device's view of the ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue");
        let addr = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = addr(self.base);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = addr(self.base + 0x100);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = addr(self.base + 0x200);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// Stores descriptor `i`.
    pub fn load_desc(&self, i: u16, (addr, len, flags, next): Desc) {
        let d = 16 * u64::from(i);
        self.put(d, addr);
        self.put(d + 8, len);
        self.put(d + 12, flags);
        self.put(d + 14, next);
    }

    /// Stores `descs` from index 0 and makes `heads` available.
    pub fn load(&self, s: &Scenario) {
        for (i, d) in s.descs.iter().enumerate() {
            self.load_desc(i as u16, *d);
        }
        for (i, &h) in s.heads.iter().enumerate() {
            self.put(0x104 + 2 * (i as u64 % u64::from(QSIZE)), h);
        }
        self.put(0x102, s.heads.len() as u16);
    }

    /// Puts `head` in avail slot `idx` (modulo the queue size) and publishes `idx + 1`.
    pub fn publish(&self, idx: u16, head: u16) {
        self.put(0x104 + 2 * u64::from(idx % QSIZE), head);
        self.put(0x102, idx.wrapping_add(1));
    }

    /// Makes the avail index jump past the queue size.
    pub fn corrupt_avail_index(&self) {
        self.put(0x102, QSIZE + 1);
    }

    pub fn used_idx(&self) -> u16 {
        self.get(0x202)
    }

    /// The used element at running index `idx` (modulo the queue size): (head, len).
    pub fn used_at(&self, idx: u16) -> (u32, u32) {
        let e = 0x204 + 8 * u64::from(idx % QSIZE);
        (self.get(e), self.get(e + 4))
    }

    /// The used elements: (head, len).
    pub fn used(&self) -> Vec<(u32, u32)> {
        (0..self.used_idx().min(QSIZE))
            .map(|i| self.used_at(i))
            .collect()
    }
}

/// Checks a scenario's outcome: every head made available came back used, or the device
/// asked for a reset; used lengths never exceed what the chain offered.
/// Activates a one-queue device on a raw ring at 0: the ring, the queue's kick and the
/// interrupts it raises.
pub fn activate_one_queue<'m>(
    dev: &mut dyn VirtioDevice,
    mem: &'m GuestMemoryMmap,
) -> (RawRing<'m>, EventFd, Arc<Recorder>) {
    let ring = RawRing::new(mem, 0);
    let kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let irq = Arc::new(Recorder::default());
    dev.activate(
        mem.clone(),
        irq.clone(),
        vec![QueueHandle {
            index: 0,
            queue: ring.queue(),
            kick: kick.try_clone().expect("eventfd"),
        }],
    )
    .expect("activate");
    (ring, kick, irq)
}

pub fn check_outcome(s: &Scenario, ring: &RawRing<'_>, irq: &Recorder) {
    let used = ring.used();
    if irq.needs_reset() > 0 {
        return;
    }
    assert_eq!(
        used.len(),
        s.heads.len(),
        "{}: every available chain must be used (or NEEDS_RESET)",
        s.name
    );
    let offered: u64 = s.descs.iter().map(|d| u64::from(d.1)).sum();
    for (_, len) in used {
        assert!(
            u64::from(len) <= offered.max(1 << 20),
            "{}: used len {len}",
            s.name
        );
    }
}

/// Reads and writes the device's configuration space at every offset of the page (and a
/// few absurd ones) with every access size: nothing panics, bytes past `config_len` read as
/// zero and nothing the driver writes changes what it reads (no device here has a
/// driver-writable field).
pub fn check_config_space(dev: &mut dyn VirtioDevice, config_len: u64) {
    let mut before = vec![0u8; config_len as usize];
    dev.read_config(0, &mut before);
    let offsets = (0..0x1000u64).chain([u64::MAX, u64::MAX - 3, 1 << 32, 1 << 63]);
    for offset in offsets {
        for size in [0usize, 1, 2, 3, 4, 5, 6, 7, 8, 16, 64, 4096] {
            let mut buf = vec![0xa5u8; size];
            dev.read_config(offset, &mut buf);
            for (i, b) in buf.iter().enumerate() {
                let at = offset.checked_add(i as u64);
                if at.is_none_or(|a| a >= config_len) {
                    assert_eq!(*b, 0, "config byte at {offset}+{i} past the end");
                }
            }
            dev.write_config(offset, &vec![0x5au8; size]);
        }
    }
    let mut after = vec![0u8; config_len as usize];
    dev.read_config(0, &mut after);
    assert_eq!(
        before, after,
        "configuration space changed by driver writes"
    );
}
