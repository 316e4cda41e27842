//! The entropy device: one queue of device-writable buffers, each filled with random bytes.

use std::sync::Arc;

use arch::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use crate::device::{
    ActivateError, DeviceState, Interrupt, QueueHandle, QueueProgress, StateError, VirtioDevice,
};
use crate::queue_fault::{pop_chain, QueueFault};
use crate::worker::{Worker, WorkerEvent};
use crate::worker_slot::WorkerSlot;

pub const TYPE_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 256;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Most bytes served per buffer chain (keeps one request from hogging the worker).
const MAX_CHAIN_BYTES: usize = 64 << 10;

pub struct Rng {
    id: String,
    acked: u64,
    worker: WorkerSlot<Worker<RngQueue>>,
}

/// What the worker owns.
struct RngQueue {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    handle: QueueHandle,
    broken: bool,
}

impl Rng {
    pub fn new(id: &str) -> Self {
        Rng {
            id: id.to_string(),
            acked: 0,
            worker: WorkerSlot::default(),
        }
    }
}

/// Serves `q` on a new worker thread.
fn spawn(id: &str, q: RngQueue) -> Result<Worker<RngQueue>, ActivateError> {
    let kick = q.handle.kick.try_clone().map_err(ActivateError::Worker)?;
    Worker::spawn_with(format!("{id}-rng"), vec![kick], vec![], q, |q, ev| {
        if q.broken || !matches!(ev, WorkerEvent::Kick(_)) {
            return;
        }
        let index = q.handle.index;
        if let Err(fault) = serve(&q.mem, &mut q.handle.queue, index, q.interrupt.as_ref()) {
            crate::queue_fault::report("virtio-rng", index, &fault, q.interrupt.as_ref());
            q.broken = true;
        }
    })
    .map_err(ActivateError::Worker)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

/// Fills the writable buffers of one chain; returns how many bytes were written.
fn fill_chain(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let mut written = 0usize;
    let mut buf = Vec::new();
    for desc in chain {
        if !desc.is_write_only() {
            crate::warn_limited!("virtio-rng: device-readable descriptor; chain ends here");
            break;
        }
        let len = (desc.len() as usize).min(MAX_CHAIN_BYTES - written);
        if len == 0 {
            break;
        }
        buf.resize(len, 0);
        if getrandom(&mut buf).is_err() || mem.write_slice(&buf, desc.addr()).is_err() {
            crate::warn_limited!("virtio-rng: cannot fill a buffer (bad guest address?)");
            break;
        }
        written += len;
    }
    written as u32
}

/// Serves every available chain; a fault means the driver corrupted the ring and the device
/// must stop using it.
pub fn serve(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    index: u16,
    interrupt: &dyn Interrupt,
) -> Result<(), QueueFault> {
    let mut used_any = false;
    let result = loop {
        if queue.disable_notification(mem).is_err() {
            break Err(QueueFault::UsedRing);
        }
        let drained = loop {
            let chain = match pop_chain(queue, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break Ok(()),
                Err(fault) => break Err(fault),
            };
            let head = chain.head_index();
            let len = fill_chain(mem, chain);
            if queue.add_used(mem, head, len).is_err() {
                break Err(QueueFault::UsedRing);
            }
            used_any = true;
        };
        if drained.is_err() {
            break drained;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break Ok(()),
            Err(_) => break Err(QueueFault::UsedRing),
        }
    };
    if used_any {
        crate::device::notify_used(queue, mem, interrupt, index);
    }
    result
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<QueueHandle>,
    ) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        let mut queues = queues;
        crate::device::check_queue_count(1, &queues)?;
        let q = RngQueue {
            mem,
            interrupt,
            handle: queues.remove(0),
            broken: false,
        };
        self.worker.set_running(spawn(&self.id, q)?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker.reset();
        self.acked = 0;
        true
    }

    fn pause_and_save(&mut self) -> Result<DeviceState, StateError> {
        let paused = self.worker.pause()?;
        Ok(DeviceState {
            device_type: TYPE_RNG,
            acked_features: self.acked,
            config: Vec::new(),
            queues: paused
                .iter()
                .map(|q| QueueProgress::of(q.handle.index, &q.handle.queue))
                .collect(),
        })
    }

    fn resume(&mut self) -> Result<(), StateError> {
        self.worker.resume(|q| spawn(&self.id, q))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        state.check(TYPE_RNG, self.features())?;
        self.acked = state.acked_features;
        Ok(())
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

    const F_WRITE: u16 = 2;

    fn run(descs: &[RawDescriptor]) -> (u32, Vec<InterruptKind>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let irqs = Recorder::default();
        assert_eq!(serve(&mem, &mut q, 0, &irqs), Ok(()));
        let used: VirtqUsedElem = vq.used().ring().ref_at(0).unwrap().load();
        (used.len(), irqs.kinds.into_inner().unwrap())
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn fills_writable_buffers() {
        let (len, irqs) = run(&[d(0x8000, 512, F_WRITE)]);
        assert_eq!(len, 512);
        assert_eq!(irqs, [InterruptKind::Queue(0)]);
    }

    #[test]
    fn pause_saves_where_the_worker_left_the_queue() {
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[d(0x8000, 64, F_WRITE), d(0x9000, 64, F_WRITE)], 0)
            .unwrap();
        let mut rng = Rng::new("rng0");
        rng.ack_features(VIRTIO_F_VERSION_1);
        let handle = QueueHandle {
            index: 0,
            queue: vq.create_queue().unwrap(),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        rng.activate(mem.clone(), Arc::new(Recorder::default()), vec![handle])
            .unwrap();
        // The worker serves both chains at start; wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while vq.used().idx().load() != 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let st = rng.pause_and_save().unwrap();
        assert_eq!(
            st.queues,
            [crate::QueueProgress {
                index: 0,
                next_avail: 2,
                next_used: 2
            }]
        );
        assert_eq!(st.acked_features, VIRTIO_F_VERSION_1);
        rng.resume().unwrap();
        let mut fresh = Rng::new("rng1");
        fresh.restore_state(&st).unwrap();
        let mut foreign = st;
        foreign.device_type = 2;
        assert!(fresh.restore_state(&foreign).is_err());
        assert!(rng.reset());
    }

    #[test]
    fn readable_or_out_of_memory_buffers_complete_empty() {
        assert_eq!(run(&[d(0x8000, 512, 0)]).0, 0);
        assert_eq!(run(&[d(0xfff_0000, 512, F_WRITE)]).0, 0);
        assert_eq!(run(&[d(0xf_ff00, 0x1000, F_WRITE)]).0, 0);
        assert_eq!(run(&[d(0x8000, u32::MAX, F_WRITE)]).0, 64 << 10);
    }
}
