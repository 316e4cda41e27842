//! `virtio`: paravirtual device models (block, network, entropy, vsock, balloon) on top of
//! `virtio-queue`, independent of the transport that carries them (virtio-pci lives in the
//! `pci` crate).
//!
//! The contract between a transport and a device is [`VirtioDevice`]: the transport owns the
//! common configuration (feature negotiation, queue addresses, status) and, once the driver
//! sets DRIVER_OK, hands the device its queues with their notification eventfds
//! (ioeventfds registered with KVM) and an [`Interrupt`] to signal the guest. The device
//! then serves its queues on its own worker thread(s).

pub mod balloon;
pub mod block;
pub mod device;
pub mod log_limit;
pub mod net;
pub mod queue_fault;
pub mod rate_limiter;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_util;
pub mod vsock;
pub mod worker;
pub mod worker_slot;

pub use device::{
    ActivateError, DeviceState, Interrupt, InterruptKind, QueueHandle, QueueProgress, StateError,
    VirtioDevice,
};
