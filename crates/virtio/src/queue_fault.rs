//! Queues a driver made unusable, and what a device does about it.
//!
//! A bad descriptor chain is the driver's mistake about one request: the device returns it
//! used (with an error status where the device type has one) and carries on. A bad *ring* is
//! different: an avail index that moved by more than the queue size, an avail entry that
//! cannot be read, a used ring that cannot be written. The device cannot tell which requests
//! are real, so it stops using the queue, sets DEVICE_NEEDS_RESET and raises a
//! configuration-change interrupt (virtio 1.x §2.1.2) through [`Interrupt::set_needs_reset`];
//! it serves again only after the driver resets it.
//!
//! [`pop_chain`] replaces `QueueT::pop_descriptor_chain`, which logs these errors and answers
//! "empty", so a worker that re-checks the ring (`enable_notification` says "more") would
//! spin forever on a corrupt index.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use arch::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::device::Interrupt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueFault {
    #[error("avail index {avail} is {pending} entries ahead of the device (queue size {size})")]
    AvailIndex { avail: u16, pending: u16, size: u16 },
    #[error("avail ring cannot be read")]
    AvailRing,
    #[error("a chain cannot be returned through the used ring (bad head index or ring)")]
    UsedRing,
}

/// The next available chain, `Ok(None)` when the driver made none available, or the fault
/// that makes the queue unusable.
pub fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueFault> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| QueueFault::AvailRing)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending == 0 {
        return Ok(None);
    }
    if pending > queue.size() {
        return Err(QueueFault::AvailIndex {
            avail: avail.0,
            pending,
            size: queue.size(),
        });
    }
    match queue.iter(mem) {
        Ok(mut chains) => chains.next().map(Some).ok_or(QueueFault::AvailRing),
        Err(virtio_queue::Error::InvalidAvailRingIndex) => Err(QueueFault::AvailIndex {
            avail: avail.0,
            pending,
            size: queue.size(),
        }),
        Err(_) => Err(QueueFault::AvailRing),
    }
}

/// Logs `fault` (rate-limited) and asks the transport for NEEDS_RESET.
pub fn report(device: &str, queue: u16, fault: &QueueFault, interrupt: &dyn Interrupt) {
    crate::warn_limited!(
        device,
        queue,
        fault = %fault,
        "queue unusable; device needs a reset"
    );
    interrupt.set_needs_reset();
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn empty_queue_pops_nothing() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(matches!(pop_chain(&mut q, &m), Ok(None)));
    }

    #[test]
    fn avail_index_jump_beyond_the_queue_size_is_a_fault() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().idx().store(17);
        assert_eq!(
            pop_chain(&mut q, &m).err(),
            Some(QueueFault::AvailIndex {
                avail: 17,
                pending: 17,
                size: 16
            })
        );
        // exactly the queue size is legal: 16 chains (here: heads 0, zero descriptors)
        vq.avail().idx().store(16);
        assert!(matches!(pop_chain(&mut q, &m), Ok(Some(_))));
    }

    #[test]
    fn wrapped_avail_index_counts_modulo_2_16() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_next_avail(65530);
        vq.avail().idx().store(3); // 9 ahead, across the wrap
        assert!(matches!(pop_chain(&mut q, &m), Ok(Some(_))));
        vq.avail().idx().store(65529); // behind the device: 65535 ahead
        assert!(pop_chain(&mut q, &m).is_err());
    }
}
