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

/// Raises queue `index`'s interrupt once the device added used buffers, unless the driver
/// suppressed it (its no-interrupt flag or used-event index). A used ring that cannot be
/// read notifies anyway: the driver will see what it sees. A failed trigger is logged.
pub fn notify_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn Interrupt,
    index: u16,
) {
    use virtio_queue::QueueT;
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.trigger(InterruptKind::Queue(index)) {
            crate::warn_limited!(error = %e, queue = index, "virtio interrupt failed");
        }
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

    /// Snapshot, step 1: stops the workers and saves the device. Every device here completes
    /// each request before its worker looks at the next event, so once the workers have
    /// stopped no I/O is in flight and nothing writes guest memory until
    /// [`VirtioDevice::resume`]: the snapshot holds no half-done request. A device that was
    /// never activated saves no queues.
    fn pause_and_save(&mut self) -> Result<DeviceState, StateError> {
        Err(StateError::Unsupported(self.device_type()))
    }

    /// Snapshot, step 2: serves the queues again from where the workers stopped (no-op for a
    /// device that was not active).
    fn resume(&mut self) -> Result<(), StateError> {
        Err(StateError::Unsupported(self.device_type()))
    }

    /// Restore, before the transport re-activates the device: takes the saved negotiated
    /// features and checks the saved configuration against this device (opened from the
    /// possibly overridden configuration). Queue positions are applied by the transport.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let _ = state;
        Err(StateError::Unsupported(self.device_type()))
    }

    /// The device model itself, for run-time operations only one kind of device has (a
    /// disk's backend switch): the VMM downcasts it to the model it expects. `None` for
    /// devices without such operations.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// Where a device's workers left one queue: the ring positions (the transport keeps the
/// ring addresses and sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueProgress {
    pub index: u16,
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueueProgress {
    pub fn of(index: u16, queue: &Queue) -> Self {
        use virtio_queue::QueueT;
        QueueProgress {
            index,
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }
}

/// The saved state of one virtio device (its transport's state is saved beside it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceState {
    /// The virtio device ID, checked on restore.
    pub device_type: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The device configuration space as the driver could read it (MAC, CID, capacity, …).
    pub config: Vec<u8>,
    /// Queue positions when the device was active; empty otherwise.
    pub queues: Vec<QueueProgress>,
}

impl DeviceState {
    /// Checks that this state belongs to a device of `device_type` offering `offered`.
    pub fn check(&self, device_type: u32, offered: u64) -> Result<(), StateError> {
        if self.device_type != device_type {
            return Err(StateError::WrongType {
                saved: self.device_type,
                this: device_type,
            });
        }
        if self.acked_features & !offered != 0 {
            return Err(StateError::Features {
                saved: self.acked_features,
                offered,
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("virtio device type {0} cannot be snapshotted")]
    Unsupported(u32),
    #[error("saved state is of virtio device type {saved}, the device here is type {this}")]
    WrongType { saved: u32, this: u32 },
    #[error("saved features {saved:#x} include some the device does not offer ({offered:#x})")]
    Features { saved: u64, offered: u64 },
    #[error("{0}")]
    Mismatch(String),
    #[error("the device worker ended abnormally; its queues are lost")]
    WorkerLost,
    #[error("cannot restart the device")]
    Resume(#[source] ActivateError),
    #[error("cannot flush the disk image before the snapshot")]
    Flush(#[source] std::io::Error),
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

    #[test]
    fn state_of_another_device_or_with_unoffered_features_is_refused() {
        let st = DeviceState {
            device_type: 2,
            acked_features: 1 << 32 | 1,
            config: vec![],
            queues: vec![],
        };
        assert!(st.check(2, 1 << 32 | 3).is_ok());
        let e = st.check(1, 1 << 32 | 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "saved state is of virtio device type 2, the device here is type 1"
        );
        assert!(matches!(
            st.check(2, 1 << 32),
            Err(StateError::Features { .. })
        ));
    }
}
