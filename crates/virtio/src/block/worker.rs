//! Serving the request queue: pop a chain, parse it, admit it through the [`RequestGate`],
//! do the I/O, write the status, return the chain, and interrupt the guest once per batch.

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::Bytes;

use arch::GuestMemoryMmap;

use super::io::DiskFile;
use super::request::{ParseFailure, Request, RequestError, RequestType};
use super::{ID_BYTES, STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
use crate::device::Interrupt;
use crate::queue_fault::{pop_chain, QueueFault};

/// Where a rate limiter plugs in: every parsed request asks the gate first. A refused
/// request goes back on the queue untouched and the worker stops serving until the gate's
/// wake-up fd (if any) fires.
pub trait RequestGate: Send {
    /// May `req` run now? `false` defers it.
    fn admit(&mut self, req: &Request) -> bool;
    /// An fd that becomes readable when deferred requests may be retried.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Called when [`RequestGate::wake_fd`] fired (consume the event here).
    fn on_wake(&mut self) {}
}

/// No limit.
#[derive(Debug, Default)]
pub struct Unlimited;

impl RequestGate for Unlimited {
    fn admit(&mut self, _req: &Request) -> bool {
        true
    }
}

/// Counters a test (or later, metrics) can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub completed: u64,
    pub errors: u64,
}

/// The per-queue state of the worker.
pub struct QueueServer {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub index: u16,
    pub disk: std::sync::Arc<DiskFile>,
    pub serial: [u8; ID_BYTES],
    pub gate: Box<dyn RequestGate>,
    pub stats: Stats,
    /// Set when the queue itself is corrupt (bad ring indices): the device stops using it.
    pub broken: bool,
}

/// What happened to one popped chain.
enum Outcome {
    Done(u32),
    Deferred,
}

impl QueueServer {
    /// Serves everything available; interrupts the guest if anything was completed. A ring
    /// the driver corrupted stops the queue and asks for a reset (NEEDS_RESET).
    pub fn serve(&mut self, interrupt: &dyn Interrupt) {
        if self.broken {
            return;
        }
        let mem = self.mem.clone();
        let (completed, fault) = self.serve_ring(&mem);
        if let Some(fault) = fault {
            self.broken = true;
            crate::queue_fault::report("virtio-blk", self.index, &fault, interrupt);
        }
        if completed {
            crate::device::notify_used(&mut self.queue, &mem, interrupt, self.index);
        }
    }

    /// Pops and completes chains until the ring is empty or the gate defers one; returns
    /// whether anything completed and the fault that stopped it, if any.
    fn serve_ring(&mut self, mem: &GuestMemoryMmap) -> (bool, Option<QueueFault>) {
        let mut completed = false;
        loop {
            if self.queue.disable_notification(mem).is_err() {
                return (completed, Some(QueueFault::UsedRing));
            }
            loop {
                let chain = match pop_chain(&mut self.queue, mem) {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break,
                    Err(fault) => return (completed, Some(fault)),
                };
                let head = chain.head_index();
                match self.handle(mem, chain) {
                    Outcome::Done(len) => {
                        if self.queue.add_used(mem, head, len).is_err() {
                            return (completed, Some(QueueFault::UsedRing));
                        }
                        completed = true;
                    }
                    Outcome::Deferred => {
                        self.queue
                            .set_next_avail(self.queue.next_avail().wrapping_sub(1));
                        return (completed, None);
                    }
                }
            }
            match self.queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return (completed, None),
                Err(_) => return (completed, Some(QueueFault::UsedRing)),
            }
        }
    }

    fn handle(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Outcome {
        let descs: Vec<_> = chain
            .map(|d| (d.addr(), d.len(), d.is_write_only()))
            .take(super::request::MAX_DATA_DESCRIPTORS + 3)
            .collect();
        let req = match Request::parse(mem, &descs, self.disk.sectors()) {
            Ok(r) => r,
            Err(ParseFailure { error, status }) => {
                crate::warn_limited!(error = %error, "virtio-blk: bad request");
                self.stats.errors += 1;
                let code = if matches!(error, RequestError::Unsupported(_)) {
                    STATUS_UNSUPP
                } else {
                    STATUS_IOERR
                };
                return match status {
                    Some(addr) if mem.write_obj(code, addr).is_ok() => Outcome::Done(1),
                    _ => Outcome::Done(0),
                };
            }
        };
        if !self.gate.admit(&req) {
            return Outcome::Deferred;
        }
        let (status, written) = self.execute(mem, &req);
        if status != STATUS_OK {
            self.stats.errors += 1;
        }
        self.stats.completed += 1;
        if mem.write_obj(status, req.status).is_err() {
            return Outcome::Done(0);
        }
        Outcome::Done(written.saturating_add(1))
    }

    /// Runs the request; returns its status and the bytes written into guest buffers.
    fn execute(&self, mem: &GuestMemoryMmap, req: &Request) -> (u8, u32) {
        let result = match req.kind {
            RequestType::In => self
                .disk
                .read(mem, req.sector, &req.data)
                .map(|_| req.data_len as u32),
            RequestType::Out => self.disk.write(mem, req.sector, &req.data).map(|_| 0),
            RequestType::Flush => self.disk.flush().map(|_| 0),
            RequestType::Discard => self.disk.discard(&req.segments).map(|_| 0),
            RequestType::WriteZeroes => self.disk.write_zeroes(&req.segments).map(|_| 0),
            RequestType::GetId => Ok(self.write_id(mem, req)),
            RequestType::Unsupported(_) => return (STATUS_UNSUPP, 0),
        };
        match result {
            Ok(n) => (STATUS_OK, n),
            Err(e) => {
                crate::warn_limited!(kind = ?req.kind, sector = req.sector, error = %e, "virtio-blk: I/O error");
                (STATUS_IOERR, 0)
            }
        }
    }

    fn write_id(&self, mem: &GuestMemoryMmap, req: &Request) -> u32 {
        let mut left: &[u8] = &self.serial;
        let mut written = 0u32;
        for &(addr, len) in &req.data {
            let n = left.len().min(len as usize);
            if n == 0 || mem.write_slice(&left[..n], addr).is_err() {
                break;
            }
            left = &left[n..];
            written += n as u32;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Recorder;
    use std::sync::Arc;
    use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use crate::block::request::*;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    struct Deny;
    impl RequestGate for Deny {
        fn admit(&mut self, _: &Request) -> bool {
            false
        }
    }

    fn disk(read_only: bool) -> (Arc<DiskFile>, std::path::PathBuf) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "kapsel-blkw-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, vec![0x5a; 64 * 512]).unwrap();
        (Arc::new(DiskFile::open(&path, read_only).unwrap()), path)
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Runs one chain through a fresh queue; returns (used len, status byte, stats).
    fn run_one(
        descs: &[RawDescriptor],
        header: (u32, u64),
        read_only: bool,
        gate: Box<dyn RequestGate>,
    ) -> (Option<u32>, u8, Stats, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(header.0, GuestAddress(0x1000)).unwrap();
        mem.write_obj(header.1, GuestAddress(0x1008)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(0x9000)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // Chain the descriptors with NEXT (the mock keeps our flags and `next` fields).
        let chained: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let s = SplitDescriptor::from(*raw);
                let last = i + 1 == descs.len();
                let flags = if last { s.flags() } else { s.flags() | F_NEXT };
                RawDescriptor::from(SplitDescriptor::new(
                    s.addr().0,
                    s.len(),
                    flags,
                    i as u16 + 1,
                ))
            })
            .collect();
        vq.add_desc_chains(&chained, 0).unwrap();
        let (disk, path) = disk(read_only);
        let mut server = QueueServer {
            mem: mem.clone(),
            queue: vq.create_queue().unwrap(),
            index: 0,
            disk,
            serial: *b"kapsel-test-serial-0",
            gate,
            stats: Stats::default(),
            broken: false,
        };
        let irqs = Recorder::default();
        server.serve(&irqs);
        std::fs::remove_file(path).unwrap();
        let used_idx: u16 = vq.used().idx().load();
        let used = (used_idx == 1).then(|| {
            let e: VirtqUsedElem = vq.used().ring().ref_at(0).unwrap().load();
            e.len()
        });
        let status = mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap();
        (used, status, server.stats, mem)
    }

    fn hdr() -> RawDescriptor {
        d(0x1000, 16, 0)
    }
    fn st() -> RawDescriptor {
        d(0x9000, 1, F_WRITE)
    }

    #[test]
    fn read_fills_guest_buffers() {
        let (used, status, _, mem) = run_one(
            &[hdr(), d(0x4000, 1024, F_WRITE), st()],
            (VIRTIO_BLK_T_IN, 2),
            false,
            Box::new(Unlimited),
        );
        assert_eq!((used, status), (Some(1025), STATUS_OK));
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x4000 + 1023)).unwrap(),
            0x5a
        );
    }

    #[test]
    fn read_only_disk_fails_writes_with_ioerr() {
        let (used, status, stats, _) = run_one(
            &[hdr(), d(0x4000, 512, 0), st()],
            (VIRTIO_BLK_T_OUT, 0),
            true,
            Box::new(Unlimited),
        );
        assert_eq!((used, status, stats.errors), (Some(1), STATUS_IOERR, 1));
    }

    #[test]
    fn get_id_returns_the_serial() {
        let (used, status, _, mem) = run_one(
            &[hdr(), d(0x4000, 20, F_WRITE), st()],
            (VIRTIO_BLK_T_GET_ID, 0),
            false,
            Box::new(Unlimited),
        );
        assert_eq!((used, status), (Some(21), STATUS_OK));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(0x4000)).unwrap();
        assert_eq!(&id, b"kapsel-test-serial-0");
    }

    #[test]
    fn bad_chains_complete_with_an_error_and_never_panic() {
        // (chain, request type, sector, expected used length, expected status)
        type Case = (Vec<RawDescriptor>, u32, u64, Option<u32>, u8);
        let cases: Vec<Case> = vec![
            // Unknown request type → UNSUPP.
            (vec![hdr(), st()], 77, 0, Some(1), STATUS_UNSUPP),
            // Data in the wrong direction.
            (
                vec![hdr(), d(0x4000, 512, 0), st()],
                VIRTIO_BLK_T_IN,
                0,
                Some(1),
                STATUS_IOERR,
            ),
            // Data outside guest memory.
            (
                vec![hdr(), d(0xff_ff00, 512, F_WRITE), st()],
                VIRTIO_BLK_T_IN,
                0,
                Some(1),
                STATUS_IOERR,
            ),
            // Beyond the disk.
            (
                vec![hdr(), d(0x4000, 512, F_WRITE), st()],
                VIRTIO_BLK_T_IN,
                64,
                Some(1),
                STATUS_IOERR,
            ),
            // No writable status: nothing can be reported.
            (
                vec![hdr(), d(0x9000, 1, 0)],
                VIRTIO_BLK_T_IN,
                0,
                Some(0),
                0xff,
            ),
            // Header outside memory.
            (
                vec![d(0xfff_0000, 16, 0), st()],
                VIRTIO_BLK_T_IN,
                0,
                Some(1),
                STATUS_IOERR,
            ),
        ];
        for (descs, kind, sector, used, status) in cases {
            let r = run_one(&descs, (kind, sector), false, Box::new(Unlimited));
            assert_eq!((r.0, r.1), (used, status), "{descs:?}");
        }
    }

    #[test]
    fn a_refused_request_stays_on_the_queue() {
        let (used, status, stats, _) = run_one(
            &[hdr(), d(0x4000, 512, F_WRITE), st()],
            (VIRTIO_BLK_T_IN, 0),
            false,
            Box::new(Deny),
        );
        assert_eq!((used, status, stats.completed), (None, 0xff, 0));
    }

    #[test]
    fn a_batch_of_requests_all_complete() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0u64, GuestAddress(0x1008)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // Five 3-descriptor chains (header, 512-byte buffer, status), like an I/O depth of 5,
        // served in one pass.
        let mut descs = Vec::new();
        for i in 0..5u16 {
            let base = i * 3;
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                0x1000,
                16,
                F_NEXT,
                base + 1,
            )));
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                0x4000 + u64::from(i) * 0x1000,
                512,
                F_NEXT | F_WRITE,
                base + 2,
            )));
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                0x9000 + u64::from(i),
                1,
                F_WRITE,
                0,
            )));
        }
        vq.add_desc_chains(&descs, 0).unwrap();
        // used_event (after the 16 avail entries): interrupt once the first request is used.
        mem.write_obj(0u16, GuestAddress(vq.avail_addr().0 + 4 + 2 * 16))
            .unwrap();
        let (disk, path) = disk(false);
        let mut queue: Queue = vq.create_queue().unwrap();
        queue.set_event_idx(true);
        let mut server = QueueServer {
            mem: mem.clone(),
            queue,
            index: 0,
            disk,
            serial: [0; 20],
            gate: Box::new(Unlimited),
            stats: Stats::default(),
            broken: false,
        };
        let irqs = Recorder::default();
        server.serve(&irqs);
        std::fs::remove_file(path).unwrap();
        assert_eq!(vq.used().idx().load(), 5);
        assert_eq!(server.stats.completed, 5);
        // At most one interrupt for the whole batch (event-idx suppression may skip it).
        assert!(irqs.kinds.lock().unwrap().len() <= 1);
        for i in 0..5u64 {
            assert_eq!(
                mem.read_obj::<u8>(GuestAddress(0x9000 + i)).unwrap(),
                STATUS_OK
            );
        }
    }

    #[test]
    fn descriptor_loops_end() {
        // Two descriptors pointing at each other: the chain iterator's TTL stops it.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let looped = [
            RawDescriptor::from(SplitDescriptor::new(0x1000, 16, F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x9000, 1, F_NEXT | F_WRITE, 0)),
        ];
        vq.add_desc_chains(&looped, 0).unwrap();
        let path = std::env::temp_dir().join(format!("kapsel-blk-loop-{}", std::process::id()));
        std::fs::write(&path, vec![0; 4096]).unwrap();
        let mut server = QueueServer {
            mem: mem.clone(),
            queue: vq.create_queue().unwrap(),
            index: 0,
            disk: Arc::new(DiskFile::open(&path, false).unwrap()),
            serial: [0; 20],
            gate: Box::new(Unlimited),
            stats: Stats::default(),
            broken: false,
        };
        server.serve(&Recorder::default());
        std::fs::remove_file(path).unwrap();
        assert_eq!(vq.used().idx().load(), 1);
    }
}
