//! The device side of the virtio contract, shared by every device model and transport.

use std::io;
use std::sync::Arc;

use arch::GuestMemoryMmap;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Which interrupt a device raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device configuration space changed.
    Config,
    /// Used buffers were added to queue `index`.
    Queue(u16),
}

/// How a device signals the guest (MSI-X vectors through irqfds for virtio-pci).
pub trait Interrupt: Send + Sync {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;

    /// The device cannot go on without a reset (a queue the driver corrupted): the transport
    /// sets DEVICE_NEEDS_RESET (0x40) in the device status until the driver resets the
    /// device, and raises a configuration-change interrupt (virtio 1.x §2.1.2, §4.1.4.3).
    /// The default only raises the interrupt, for transports without a status register.
    fn set_needs_reset(&self) {
        let _ = self.trigger(InterruptKind::Config);
    }
}

/// One activated queue: the negotiated ring and the eventfd the guest's kicks arrive on.
#[derive(Debug)]
pub struct QueueHandle {
    pub index: u16,
    pub queue: Queue,
    pub kick: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, the driver enabled {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device already active")]
    AlreadyActive,
    #[error("cannot start the device worker")]
    Worker(#[source] io::Error),
    #[error("device backend failed: {0}")]
    Backend(String),
}

/// A virtio device model. All methods take guest-controlled values (offsets, lengths,
/// features): implementations bound-check them and never panic.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 net, 2 block, 4 entropy, 19 vsock, …).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of [`VirtioDevice::features`]; the transport
    /// masks anything else out).
    fn ack_features(&mut self, features: u64);
    /// Reads device-specific configuration at `offset`; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration; read-only or out-of-range bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving `queues` (the driver set DRIVER_OK).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<QueueHandle>,
    ) -> Result<(), ActivateError>;
    /// Stops the workers and returns the device to its pre-activation state (driver reset).
    /// Returns false if the device cannot be reset (the transport then sets NEEDS_RESET).
    fn reset(&mut self) -> bool;
}

/// Reads device configuration bytes at `offset` out of `config`; bytes past its end (or an
/// offset a guest made huge) read as zero. The guest controls `offset` and `data.len()`.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let len = config.len() as u64;
    let start = offset.min(len) as usize;
    let end = offset.saturating_add(data.len() as u64).min(len) as usize;
    if start < end {
        data[..end - start].copy_from_slice(&config[start..end]);
    }
}

/// Fails activation unless the driver enabled exactly `expected` queues.
pub fn check_queue_count(expected: usize, queues: &[QueueHandle]) -> Result<(), ActivateError> {
    if queues.len() == expected {
        Ok(())
    } else {
        Err(ActivateError::QueueCount {
            expected,
            got: queues.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 3];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0, 0, 0]);
        let mut whole = [0u8; 4];
        read_config_bytes(&cfg, 0, &mut whole);
        assert_eq!(whole, cfg);
    }
}
