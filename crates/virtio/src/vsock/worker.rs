//! The vsock worker: one thread serving the three queues and every host socket.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arch::GuestMemoryMmap;
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::Hdr;
use super::MAX_PKT_DATA;
use crate::queue_fault::{pop_chain, QueueFault};
use crate::worker::DeviceLoop;
use crate::{Interrupt, InterruptKind, QueueHandle};

pub const RX_INDEX: u16 = 0;
pub const TX_INDEX: u16 = 1;
pub const EVT_INDEX: u16 = 2;

const TOKEN_STOP: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_EVT: u64 = 3;

/// Per-device counters.
#[derive(Debug, Default)]
pub struct VsockCounters {
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    /// Chains the guest got wrong (returned used with length 0).
    pub bad_chains: AtomicU64,
}

pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    rx: QueueHandle,
    tx: QueueHandle,
    evt: QueueHandle,
    mux: Muxer,
    buf: Vec<u8>,
    counters: Arc<VsockCounters>,
    /// The driver corrupted a ring: the device stops until it is reset (NEEDS_RESET).
    broken: bool,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Worker {
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: [QueueHandle; 3],
        mux: Muxer,
        counters: Arc<VsockCounters>,
    ) -> Self {
        let [rx, tx, evt] = queues;
        Worker {
            mem,
            interrupt,
            rx,
            tx,
            evt,
            mux,
            buf: vec![0; MAX_PKT_DATA as usize],
            counters,
            broken: false,
        }
    }

    /// Whether a corrupt ring stopped the device.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn fail(&mut self, queue: u16, fault: &QueueFault) {
        self.broken = true;
        crate::queue_fault::report("virtio-vsock", queue, fault, self.interrupt.as_ref());
    }

    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.mux
    }

    fn notify(&mut self, index: u16) {
        let queue = if index == RX_INDEX {
            &mut self.rx.queue
        } else {
            &mut self.tx.queue
        };
        crate::device::notify_used(queue, &self.mem, self.interrupt.as_ref(), index);
    }

    /// Takes every packet the guest queued and hands it to the muxer.
    pub fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        match self.drain_tx() {
            Ok(true) => self.notify(TX_INDEX),
            Ok(false) => {}
            Err(fault) => self.fail(TX_INDEX, &fault),
        }
    }

    /// The loop of [`Worker::process_tx`]; returns whether chains were used.
    fn drain_tx(&mut self) -> Result<bool, QueueFault> {
        let mut used = false;
        while let Some(mut chain) = pop_chain(&mut self.tx.queue, &self.mem)? {
            let head = chain.head_index();
            let parsed =
                VsockPacket::from_tx_virtq_chain(&self.mem, &mut chain, MAX_PKT_DATA).map(|pkt| {
                    let hdr = Hdr::from_packet(&pkt);
                    let n = pkt.data_slice().map_or(0, |s| {
                        let n = s.len().min(self.buf.len());
                        s.copy_to(&mut self.buf[..n])
                    });
                    (hdr, n)
                });
            match parsed {
                Ok((hdr, n)) => {
                    bump(&self.counters.tx_packets);
                    self.mux.handle_guest(hdr, &self.buf[..n]);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad vsock TX chain");
                    bump(&self.counters.bad_chains);
                }
            }
            self.tx
                .queue
                .add_used(&self.mem, head, 0)
                .map_err(|_| QueueFault::UsedRing)?;
            used = true;
        }
        Ok(used)
    }

    /// Fills the guest's RX buffers with waiting packets.
    pub fn process_rx(&mut self) {
        if self.broken {
            return;
        }
        match self.fill_rx() {
            Ok(true) => self.notify(RX_INDEX),
            Ok(false) => {}
            Err(fault) => self.fail(RX_INDEX, &fault),
        }
    }

    /// The loop of [`Worker::process_rx`]; returns whether chains were used.
    fn fill_rx(&mut self) -> Result<bool, QueueFault> {
        let mut used = false;
        while self.mux.has_packets() {
            let Some(mut chain) = pop_chain(&mut self.rx.queue, &self.mem)? else {
                break;
            };
            let head = chain.head_index();
            let mut pkt =
                match VsockPacket::from_rx_virtq_chain(&self.mem, &mut chain, MAX_PKT_DATA) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(error = %e, "bad vsock RX chain");
                        bump(&self.counters.bad_chains);
                        self.rx
                            .queue
                            .add_used(&self.mem, head, 0)
                            .map_err(|_| QueueFault::UsedRing)?;
                        used = true;
                        continue;
                    }
                };
            let cap = pkt.data_slice().map_or(0, |s| s.len()).min(self.buf.len());
            let next = if cap == 0 {
                self.mux.next_control()
            } else {
                self.mux.next_packet(&mut self.buf[..cap])
            };
            let Some((hdr, n)) = next else {
                self.rx.queue.go_to_previous_position();
                break;
            };
            let header_ok = pkt
                .header_slice()
                .write_slice(&[0u8; PKT_HEADER_SIZE], 0)
                .is_ok();
            hdr.write_to(&mut pkt);
            if let (Some(data), true) = (pkt.data_slice(), n > 0) {
                data.copy_from(&self.buf[..n]);
            }
            if !header_ok {
                bump(&self.counters.bad_chains);
            }
            bump(&self.counters.rx_packets);
            let len = (PKT_HEADER_SIZE + n) as u32;
            self.rx
                .queue
                .add_used(&self.mem, head, len)
                .map_err(|_| QueueFault::UsedRing)?;
            used = true;
        }
        Ok(used)
    }

    /// Where the worker left its queues (RX, TX, event).
    pub fn progress(&self) -> Vec<crate::QueueProgress> {
        [&self.rx, &self.tx, &self.evt]
            .iter()
            .map(|h| crate::QueueProgress::of(h.index, &h.queue))
            .collect()
    }

    /// Tells the driver that every connection is gone (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`
    /// in the next event buffer): a restored guest drops the connections it had and reads
    /// its CID again. Returns false when the driver left no event buffer.
    pub fn send_transport_reset(&mut self) -> bool {
        /// `struct virtio_vsock_event { le32 id; }` with id 0: transport reset.
        const TRANSPORT_RESET: [u8; 4] = [0; 4];
        let Some(chain) = self.evt.queue.pop_descriptor_chain(&self.mem) else {
            return false;
        };
        let head = chain.head_index();
        let mut written = 0u32;
        for desc in chain {
            if desc.is_write_only() && desc.len() >= 4 {
                if self.mem.write_slice(&TRANSPORT_RESET, desc.addr()).is_ok() {
                    written = 4;
                }
                break;
            }
        }
        if written == 0 {
            bump(&self.counters.bad_chains);
        }
        if self.evt.queue.add_used(&self.mem, head, written).is_err() {
            bump(&self.counters.bad_chains);
        }
        if let Err(e) = self.interrupt.trigger(InterruptKind::Queue(EVT_INDEX)) {
            tracing::warn!(error = %e, "vsock interrupt failed");
        }
        written != 0
    }

    fn serve(&mut self, fixed: &[(std::os::fd::RawFd, u64); 4]) -> io::Result<()> {
        for &(fd, token) in fixed {
            self.mux.epoll().ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        self.process_tx();
        self.process_rx();
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.mux.epoll().wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_RX => {
                        let _ = self.rx.kick.read();
                    }
                    TOKEN_TX => {
                        let _ = self.tx.kick.read();
                        self.process_tx();
                    }
                    TOKEN_EVT => {
                        // the event queue only carries transport resets, which we never send
                        let _ = self.evt.kick.read();
                    }
                    token => self.mux.handle_event(token, ev.event_set()),
                }
            }
            self.process_rx();
        }
    }
}

impl DeviceLoop for Worker {
    /// Serves the device until `stop` is written; the worker (and its connections) can run
    /// again afterwards (a snapshot pauses it this way).
    fn run(&mut self, stop: &EventFd) -> io::Result<()> {
        let fixed = [
            (stop.as_raw_fd(), TOKEN_STOP),
            (self.rx.kick.as_raw_fd(), TOKEN_RX),
            (self.tx.kick.as_raw_fd(), TOKEN_TX),
            (self.evt.kick.as_raw_fd(), TOKEN_EVT),
        ];
        let result = self.serve(&fixed);
        for (fd, token) in fixed {
            let _ = self.mux.epoll().ctl(
                ControlOperation::Delete,
                fd,
                EpollEvent::new(EventSet::IN, token),
            );
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::test_util::{mem, RawRing, Recorder, Scenario, BUF};

    const F_WRITE: u16 = 2;

    #[test]
    fn a_restored_device_tells_the_driver_its_connections_are_gone() {
        let mem = mem();
        let dir = std::env::temp_dir().join(format!("kapsel-vsock-reset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mux = Muxer::new(3, path, Arc::new(listener)).unwrap();
        let rings = [
            RawRing::new(&mem, 0),
            RawRing::new(&mem, 0x1_0000),
            RawRing::new(&mem, 0x2_0000),
        ];
        // the driver's event buffer: 4 writable bytes, pre-filled with garbage
        mem.write_obj(0xffff_ffffu32, GuestAddress(BUF)).unwrap();
        rings[2].load(&Scenario {
            name: "event buffer",
            descs: vec![(BUF, 4, F_WRITE, 0)],
            heads: vec![0],
        });
        let handle = |i: usize| QueueHandle {
            index: i as u16,
            queue: rings[i].queue(),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        let irq = Arc::new(Recorder::default());
        let mut w = Worker::new(
            mem.clone(),
            irq.clone(),
            [handle(0), handle(1), handle(2)],
            mux,
            Arc::new(VsockCounters::default()),
        );
        assert!(w.send_transport_reset());
        assert_eq!(rings[2].used(), [(0, 4)]);
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(BUF)).unwrap(),
            0,
            "TRANSPORT_RESET"
        );
        assert_eq!(
            *irq.kinds.lock().unwrap(),
            [InterruptKind::Queue(EVT_INDEX)]
        );
        let progress = w.progress();
        assert_eq!(progress[2].next_used, 1);
        // no buffer left: reported, nothing written
        assert!(!w.send_transport_reset());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
