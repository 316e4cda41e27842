//! Serving the balloon's queues (all guest-controlled input):
//!
//! - inflate: device-readable arrays of le32 PFNs; the pages are freed on the host.
//! - deflate: the same; the guest takes the pages back (they fault in again on touch).
//! - stats: one device-readable buffer of (tag, value) entries the device holds on to and
//!   hands back, every stats period, to ask for fresh numbers.
//! - reporting: device-writable buffers, each one range of free guest memory the host frees.
//!
//! Buffers in the wrong direction, PFNs outside guest memory and partial entries are
//! skipped (logged, rate limited) and the chain is still completed, so the driver never
//! waits on the device. A ring the driver corrupted stops the whole device and asks for
//! NEEDS_RESET ([`crate::queue_fault`]).

use std::sync::Arc;

use arch::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::Bytes;

use crate::device::{Interrupt, QueueProgress};
use crate::queue_fault::{pop_chain, QueueFault};

use super::control::BalloonControl;
use super::pages::{self, Range};
use super::stats::GuestStats;

/// Largest PFN array read from one chain (Linux sends at most 256 PFNs at a time).
const MAX_PFN_BYTES: usize = 64 << 10;
/// Largest statistics buffer read (the spec defines 16 tags of 10 bytes).
const MAX_STATS_BYTES: usize = 4 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

struct Served {
    role: QueueRole,
    index: u16,
    queue: Queue,
}

/// The balloon's queues on its worker thread.
pub struct Queues {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    queues: Vec<Served>,
    control: BalloonControl,
    /// The stats buffer the device holds until it wants fresh numbers.
    stats_head: Option<u16>,
    /// A ring was corrupted: nothing is served until the driver resets the device.
    broken: bool,
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Reads the device-readable bytes of `chain`, at most `max`. Returns the bytes and whether
/// a device-writable descriptor or an unreadable address was met (the chain ends there).
fn read_chain(mem: &GuestMemoryMmap, chain: Chain<'_>, max: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    for desc in chain {
        if desc.is_write_only() {
            return (out, true);
        }
        let len = (desc.len() as usize).min(max - out.len());
        if len == 0 {
            break;
        }
        let start = out.len();
        out.resize(start + len, 0);
        if mem.read_slice(&mut out[start..], desc.addr()).is_err() {
            out.truncate(start);
            return (out, true);
        }
    }
    (out, false)
}

impl Queues {
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<(QueueRole, u16, Queue)>,
        control: BalloonControl,
    ) -> Self {
        Queues {
            mem,
            interrupt,
            queues: queues
                .into_iter()
                .map(|(role, index, queue)| Served { role, index, queue })
                .collect(),
            control,
            stats_head: None,
            broken: false,
        }
    }

    /// Where each queue stands, for a snapshot.
    pub fn progress(&self) -> Vec<QueueProgress> {
        self.queues
            .iter()
            .map(|q| QueueProgress::of(q.index, &q.queue))
            .collect()
    }

    /// The statistics buffer the device holds (saved by a snapshot: the driver will not
    /// send it again).
    pub fn stats_head(&self) -> Option<u16> {
        self.stats_head
    }

    /// Holds `head` as the statistics buffer (after a restore).
    pub fn hold_stats_head(&mut self, head: Option<u16>) {
        self.stats_head = head;
    }

    /// Serves the `i`th served queue after a kick.
    pub fn kick(&mut self, i: usize) {
        if self.broken {
            return;
        }
        let Some(q) = self.queues.get(i) else {
            return;
        };
        let (role, index) = (q.role, q.index);
        if let Err(fault) = self.serve(i, role) {
            self.fail(index, &fault);
        }
    }

    fn fail(&mut self, index: u16, fault: &QueueFault) {
        crate::queue_fault::report("virtio-balloon", index, fault, self.interrupt.as_ref());
        self.broken = true;
    }

    /// Hands the held statistics buffer back so the driver refills it.
    pub fn request_stats(&mut self) {
        if self.broken {
            return;
        }
        let Some(head) = self.stats_head.take() else {
            return;
        };
        let Some(i) = self.queues.iter().position(|q| q.role == QueueRole::Stats) else {
            return;
        };
        let q = &mut self.queues[i];
        if q.queue.add_used(&self.mem, head, 0).is_err() {
            let index = q.index;
            self.fail(index, &QueueFault::UsedRing);
            return;
        }
        crate::device::notify_used(&mut q.queue, &self.mem, self.interrupt.as_ref(), q.index);
    }

    /// Pops and handles every available chain of queue `i`.
    fn serve(&mut self, i: usize, role: QueueRole) -> Result<(), QueueFault> {
        let mem = self.mem.clone();
        let mut used_any = false;
        let result = self.drain(i, role, &mem, &mut used_any);
        let q = &mut self.queues[i];
        if used_any {
            crate::device::notify_used(&mut q.queue, &mem, self.interrupt.as_ref(), q.index);
        }
        result
    }

    fn drain(
        &mut self,
        i: usize,
        role: QueueRole,
        mem: &GuestMemoryMmap,
        used_any: &mut bool,
    ) -> Result<(), QueueFault> {
        loop {
            if self.queues[i].queue.disable_notification(mem).is_err() {
                return Err(QueueFault::UsedRing);
            }
            while let Some(chain) = pop_chain(&mut self.queues[i].queue, mem)? {
                let head = chain.head_index();
                match role {
                    QueueRole::Inflate | QueueRole::Deflate => {
                        self.pfns(chain, role == QueueRole::Inflate)
                    }
                    QueueRole::Reporting => self.report(chain),
                    QueueRole::Stats => {
                        self.stats(chain);
                        // hold the newest buffer; an older one goes back at once
                        if let Some(old) = self.stats_head.replace(head) {
                            if self.queues[i].queue.add_used(mem, old, 0).is_err() {
                                return Err(QueueFault::UsedRing);
                            }
                            *used_any = true;
                        }
                        continue;
                    }
                }
                if self.queues[i].queue.add_used(mem, head, 0).is_err() {
                    return Err(QueueFault::UsedRing);
                }
                *used_any = true;
            }
            match self.queues[i].queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(_) => return Err(QueueFault::UsedRing),
            }
        }
    }

    fn pfns(&self, chain: Chain<'_>, inflate: bool) {
        let (bytes, wrong) = read_chain(&self.mem, chain, MAX_PFN_BYTES);
        if wrong {
            crate::warn_limited!(
                "virtio-balloon: PFN buffer device-writable or outside guest memory"
            );
        }
        let (pfns, odd) = pages::decode_pfns(&bytes);
        if odd {
            crate::warn_limited!(
                len = bytes.len(),
                "virtio-balloon: PFN buffer length is not a multiple of 4"
            );
        }
        let (ranges, mut bad) = pages::pfn_ranges(&self.mem, &pfns);
        let mut good = 0u64;
        for r in &ranges {
            if inflate {
                if let Err(e) = pages::discard(&self.mem, *r) {
                    crate::warn_limited!(error = %e, "virtio-balloon: cannot free inflated pages");
                    bad += (r.len / pages::PAGE_SIZE) as usize;
                    continue;
                }
            }
            good += r.len / pages::PAGE_SIZE;
        }
        if bad > 0 {
            crate::warn_limited!(bad, "virtio-balloon: PFNs outside guest memory skipped");
        }
        if inflate {
            self.control.add_inflated(good, bad as u64);
        } else {
            self.control.add_deflated(good, bad as u64);
        }
    }

    fn stats(&self, chain: Chain<'_>) {
        let (bytes, wrong) = read_chain(&self.mem, chain, MAX_STATS_BYTES);
        if wrong {
            crate::warn_limited!(
                "virtio-balloon: stats buffer device-writable or outside guest memory"
            );
        }
        let (stats, notes) = GuestStats::parse(&bytes);
        if notes.unknown_tags > 0 || notes.partial_entry {
            crate::warn_limited!(
                unknown_tags = notes.unknown_tags,
                partial = notes.partial_entry,
                "virtio-balloon: odd statistics entries skipped"
            );
        }
        if !bytes.is_empty() {
            self.control.set_stats(stats);
        }
    }

    /// Frees each device-writable range of a free page report.
    fn report(&self, chain: Chain<'_>) {
        let (mut freed, mut bad) = (0u64, 0u64);
        for desc in chain {
            let len = u64::from(desc.len());
            if !desc.is_write_only() {
                crate::warn_limited!("virtio-balloon: device-readable free page report skipped");
                bad = bad.saturating_add(len);
                continue;
            }
            let range = Range {
                addr: desc.addr().0,
                len,
            };
            match pages::discard(&self.mem, range) {
                Ok(()) => freed += len,
                Err(e) => {
                    crate::warn_limited!(error = %e, "virtio-balloon: reported range skipped");
                    bad = bad.saturating_add(len);
                }
            }
        }
        self.control.add_reported(freed, bad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Recorder;
    use crate::InterruptKind;
    use virtio_queue::desc::split::VirtqUsedElem;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const MEM: u64 = 4 << 20;

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        dn(addr, len, flags, 0)
    }

    fn dn(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
        pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    /// Runs `descs` (written at 0x1000.. with `payload` at 0x8000) through one queue of
    /// `role`; returns the memory, the control, the used lengths and the interrupts.
    fn run(
        role: QueueRole,
        descs: &[RawDescriptor],
        payload: &[u8],
    ) -> (
        GuestMemoryMmap,
        BalloonControl,
        Vec<u32>,
        Vec<InterruptKind>,
    ) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        mem.write_slice(payload, GuestAddress(0x8000)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        let irqs = Arc::new(Recorder::default());
        let control = BalloonControl::default();
        let mut queues = Queues::new(
            mem.clone(),
            irqs.clone(),
            vec![(role, 3, q)],
            control.clone(),
        );
        queues.kick(0);
        let used_idx = vq.used().idx().load();
        let used = (0..used_idx)
            .map(|i| {
                let e: VirtqUsedElem = vq.used().ring().ref_at(i.into()).unwrap().load();
                e.len()
            })
            .collect();
        queues.request_stats();
        let used_after = vq.used().idx().load();
        let mut lens: Vec<u32> = used;
        lens.extend((used_idx..used_after).map(|_| u32::MAX));
        let irqs = irqs.kinds.lock().unwrap().clone();
        (mem, control, lens, irqs)
    }

    #[test]
    fn inflate_frees_valid_pages_and_skips_the_rest() {
        // page 0x100 holds data; the balloon gets it, one PFN past memory, and 2 odd bytes
        let mut payload = pfn_bytes(&[0x100, 0x101, (MEM >> 12) as u32, u32::MAX]);
        payload.extend([0xaa, 0xbb]);
        let len = payload.len() as u32;
        let (_, control, used, irqs) = run(QueueRole::Inflate, &[d(0x8000, len, 0)], &payload);
        assert_eq!(used, [0]);
        assert_eq!(irqs, [InterruptKind::Queue(3)]);
        let s = control.status();
        assert_eq!(s.inflated_bytes, 2 * 4096);
        assert_eq!(s.bad_pages, 2);
    }

    #[test]
    fn inflated_pages_read_back_as_zero() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        mem.write_obj(0x5555_u32, GuestAddress(0x10_0000)).unwrap();
        let (ranges, bad) = pages::pfn_ranges(&mem, &[0x100]);
        assert_eq!(bad, 0);
        pages::discard(&mem, ranges[0]).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(), 0);
    }

    #[test]
    fn hostile_buffers_complete_without_effect() {
        let payload = pfn_bytes(&[0x100]);
        let cases: Vec<Vec<RawDescriptor>> = vec![
            // device-writable PFN buffer
            vec![d(0x8000, 4, F_WRITE)],
            // buffer outside guest memory, and one that runs off its end
            vec![d(MEM + 0x1000, 4, 0)],
            vec![d(MEM - 2, 4, 0)],
            // short buffer: less than one PFN
            vec![d(0x8000, 3, 0)],
            vec![d(0x8000, 0, 0)],
        ];
        for descs in cases {
            for role in [QueueRole::Inflate, QueueRole::Deflate] {
                let (_, control, used, _) = run(role, &descs, &payload);
                assert_eq!(used, [0], "{role:?} {descs:?}");
                let s = control.status();
                assert_eq!(s.inflated_bytes + s.deflated_bytes, 0, "{role:?} {descs:?}");
            }
        }
        // a huge length is capped, not allocated
        let (_, control, used, _) = run(QueueRole::Deflate, &[d(0x8000, u32::MAX, 0)], &payload);
        assert_eq!(used, [0]);
        assert!(control.status().deflated_bytes <= (MAX_PFN_BYTES as u64 / 4) * 4096);
    }

    #[test]
    fn deflate_counts_pages_back() {
        let payload = pfn_bytes(&[0x200, 0x201, 0x203]);
        let (_, control, used, _) = run(QueueRole::Deflate, &[d(0x8000, 12, 0)], &payload);
        assert_eq!(used, [0]);
        assert_eq!(control.status().deflated_bytes, 3 * 4096);
    }

    fn stat(tag: u16, v: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend(v.to_le_bytes());
        e
    }

    #[test]
    fn stats_are_kept_and_the_buffer_held_until_asked() {
        let mut payload = stat(super::super::stats::TAG_TOTAL, 1 << 29);
        payload.extend(stat(77, 5));
        payload.extend([1, 2]);
        let len = payload.len() as u32;
        let (_, control, used, irqs) = run(QueueRole::Stats, &[d(0x8000, len, 0)], &payload);
        // nothing used at the kick; the buffer came back (u32::MAX marker) when asked
        assert_eq!(used, [u32::MAX]);
        assert_eq!(irqs, [InterruptKind::Queue(3)]);
        let (stats, _) = control.status().stats.unwrap();
        assert_eq!(stats.get(super::super::stats::TAG_TOTAL), Some(1 << 29));
        // a wrong-direction stats buffer is held too but leaves no stats
        let (_, control, used, _) = run(QueueRole::Stats, &[d(0x8000, len, F_WRITE)], &payload);
        assert_eq!(used, [u32::MAX]);
        assert!(control.status().stats.is_none());
    }

    #[test]
    fn reports_free_writable_aligned_ranges_only() {
        let descs = [
            dn(0x10_0000, 0x20_0000, F_WRITE | F_NEXT, 1),
            dn(0x1000, 0x1000, F_NEXT, 2), // wrong direction
            dn(0x30_0800, 0x1000, F_WRITE | F_NEXT, 3), // unaligned
            dn(MEM - 0x1000, 0x2000, F_WRITE, 0), // runs past memory
        ];
        let (_, control, used, _) = run(QueueRole::Reporting, &descs, &[]);
        assert_eq!(used, [0]);
        let s = control.status();
        assert_eq!(s.reported_bytes, 0x20_0000);
        assert_eq!(s.bad_pages, (0x1000 + 0x1000 + 0x2000) / 4096);
    }

    #[test]
    fn a_corrupt_avail_index_stops_the_device_and_asks_for_a_reset() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[d(0x8000, 4, 0)], 0).unwrap();
        vq.avail().idx().store(100);
        let q: Queue = vq.create_queue().unwrap();
        let irqs = Arc::new(Recorder::default());
        let control = BalloonControl::default();
        let mut queues = Queues::new(
            mem.clone(),
            irqs.clone(),
            vec![(QueueRole::Inflate, 0, q)],
            control.clone(),
        );
        queues.kick(0);
        queues.kick(0);
        queues.request_stats();
        assert_eq!(*irqs.kinds.lock().unwrap(), [InterruptKind::Config]);
        assert_eq!(vq.used().idx().load(), 0);
        assert_eq!(control.status().inflated_bytes, 0);
    }
}
