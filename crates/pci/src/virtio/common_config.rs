//! The virtio-pci common configuration structure (virtio 1.x §4.1.4.3) and the device
//! lifecycle it drives: feature negotiation, queue setup, DRIVER_OK → activation, reset.
//!
//! Everything here is guest-written: wrong widths, out-of-range queue indices, features the
//! device never offered, queues in guest memory that does not exist. Each is ignored or ends
//! in `NEEDS_RESET`, never in a panic.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use arch::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio::{DeviceState, Interrupt, InterruptKind, QueueHandle, StateError, VirtioDevice};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::{Vectors, NO_VECTOR};

pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Size of the structure in the BAR.
pub const COMMON_CONFIG_LEN: u64 = 0x38;

/// The transport state behind the common configuration registers.
pub struct CommonConfig {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
    /// MSI-X table size: vectors at or above it read back as NO_VECTOR.
    msix_vectors: u16,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    status: u8,
    /// Raised by the device's worker (through its interrupt) when a queue became unusable;
    /// reads as DEVICE_NEEDS_RESET until the driver resets the device.
    needs_reset: Arc<AtomicBool>,
    active: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommonConfigError {
    #[error("device queue {index} has invalid maximum size {size}")]
    QueueSize { index: usize, size: u16 },
    #[error("device has {0} queues; the transport supports 1 to 1024")]
    QueueCount(usize),
    #[error("cannot create a queue notification eventfd")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("saved state does not fit this device: {0}")]
    StateMismatch(String),
    #[error("the device did not take its restored queues (see the warning above)")]
    RestoreActivate,
}

/// The saved registers of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegs {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub msix_vector: u16,
}

/// The saved common configuration and, inside it, the device's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommonConfigState {
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub queue_select: u16,
    pub status: u8,
    /// The device was serving its queues (DRIVER_OK and activated).
    pub active: bool,
    pub config_msix_vector: u16,
    pub queues: Vec<QueueRegs>,
    pub device: DeviceState,
}

impl CommonConfig {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        vectors: Arc<Vectors>,
        isr: Arc<AtomicU8>,
        msix_vectors: u16,
    ) -> Result<Self, CommonConfigError> {
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.is_empty() || sizes.len() > 1024 {
            return Err(CommonConfigError::QueueCount(sizes.len()));
        }
        let mut queues = Vec::with_capacity(sizes.len());
        let mut kicks = Vec::with_capacity(sizes.len());
        for (index, &size) in sizes.iter().enumerate() {
            queues
                .push(Queue::new(size).map_err(|_| CommonConfigError::QueueSize { index, size })?);
            kicks.push(
                EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                    .map_err(CommonConfigError::EventFd)?,
            );
        }
        Ok(CommonConfig {
            device,
            mem,
            interrupt,
            vectors,
            isr,
            msix_vectors,
            queues,
            kicks,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            status: 0,
            needs_reset: Arc::new(AtomicBool::new(false)),
            active: false,
        })
    }

    /// Shares the flag the device's interrupt sets when the device needs a reset.
    pub fn with_needs_reset(mut self, flag: Arc<AtomicBool>) -> Self {
        self.needs_reset = flag;
        self
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The per-queue notification eventfds (registered as ioeventfds by the VMM).
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u8 {
        if self.needs_reset.load(Ordering::Acquire) {
            self.status | STATUS_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn queue(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Queue registers may only change before DRIVER_OK.
    fn queue_mut(&mut self) -> Option<&mut Queue> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn check_vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Reads the structure; accesses of the wrong width read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if data.len() == 8 && offset.is_multiple_of(8) && offset >= 0x20 {
            let (lo, hi) = data.split_at_mut(4);
            self.read(offset, lo);
            self.read(offset + 4, hi);
            return;
        }
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => self.device.features() & 0xffff_ffff,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.vectors.config.load(Ordering::Acquire)),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status()),
            (0x15, 1) => 0,
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => self.queue().map_or(0, |q| u64::from(q.size())),
            (0x1a, 2) => self
                .vectors
                .queues
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| {
                    u64::from(v.load(Ordering::Acquire))
                }),
            (0x1c, 2) => self.queue().map_or(0, |q| u64::from(q.ready())),
            (0x1e, 2) => self.queue().map_or(0, |_| u64::from(self.queue_select)),
            (0x20..=0x37, 4) if offset.is_multiple_of(4) => self.queue().map_or(0, |q| {
                let addr = match offset & !7 {
                    0x20 => q.desc_table(),
                    0x28 => q.avail_ring(),
                    _ => q.used_ring(),
                };
                if offset.is_multiple_of(8) {
                    addr & 0xffff_ffff
                } else {
                    addr >> 32
                }
            }),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    /// Writes the structure; accesses of the wrong width or to read-only fields are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 8 && offset.is_multiple_of(8) && offset >= 0x20 {
            self.write(offset, &data[..4]);
            self.write(offset + 4, &data[4..]);
            return;
        }
        let mut b = [0u8; 4];
        if data.len() > 4 {
            return;
        }
        b[..data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(b);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v,
            (0x08, 4) => self.driver_feature_select = v,
            (0x0c, 4) => self.write_driver_features(v),
            (0x10, 2) => {
                let vec = self.check_vector(v as u16);
                self.vectors.config.store(vec, Ordering::Release);
            }
            (0x14, 1) => self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) => {
                if let Some(q) = self.queue_mut() {
                    // virtio-queue rejects sizes that are zero, too big or not a power of two.
                    q.set_size(v as u16);
                }
            }
            (0x1a, 2) => {
                let vec = self.check_vector(v as u16);
                if self.status & STATUS_DRIVER_OK == 0 {
                    if let Some(slot) = self.vectors.queues.get(usize::from(self.queue_select)) {
                        slot.store(vec, Ordering::Release);
                    }
                }
            }
            (0x1c, 2) => {
                if v == 1 {
                    if let Some(q) = self.queue_mut() {
                        q.set_ready(true);
                    }
                }
            }
            (0x20..=0x37, 4) if offset.is_multiple_of(4) => {
                let (lo, hi) = if offset.is_multiple_of(8) {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                if let Some(q) = self.queue_mut() {
                    match offset & !7 {
                        0x20 => q.set_desc_table_address(lo, hi),
                        0x28 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => virtio::warn_limited!(offset, len = data.len(), "ignored common config write"),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let v = u64::from(v);
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
            _ => {}
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // NEEDS_RESET is the device's to set: the driver's bit 0x40 is ignored
        let mut new = (v & !STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET);
        let newly = new & !old;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if ok {
                self.device.ack_features(self.driver_features);
            } else {
                virtio::warn_limited!(
                    features = self.driver_features,
                    offered,
                    "driver accepted features the device does not offer (or not VERSION_1)"
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        if newly & STATUS_DRIVER_OK != 0 {
            if new & STATUS_FEATURES_OK == 0 {
                new &= !STATUS_DRIVER_OK;
            } else if !self.activate() {
                new |= STATUS_NEEDS_RESET;
            }
        }
        self.status = new;
        if newly & STATUS_DRIVER_OK != 0 && new & STATUS_NEEDS_RESET != 0 {
            let _ = self.interrupt.trigger(InterruptKind::Config);
        }
    }

    /// Hands the ready queues to the device. False if they are unusable or the device refuses.
    fn activate(&mut self) -> bool {
        if self.active {
            return true;
        }
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut handles = Vec::new();
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                virtio::warn_limited!(index, "queue set up outside guest memory or misaligned");
                return false;
            }
            let Ok(mut copy) = Queue::try_from(q.state()) else {
                return false;
            };
            copy.set_event_idx(event_idx);
            let Ok(kick) = self.kicks[index].try_clone() else {
                return false;
            };
            handles.push(QueueHandle {
                index: index as u16,
                queue: copy,
                kick,
            });
        }
        match self
            .device
            .activate(self.mem.clone(), Arc::clone(&self.interrupt), handles)
        {
            Ok(()) => {
                self.active = true;
                true
            }
            Err(e) => {
                virtio::warn_limited!(error = %e, "device activation failed");
                false
            }
        }
    }

    /// Snapshot: pauses the device (see [`VirtioDevice::pause_and_save`]) and saves the
    /// registers with the device's state. [`CommonConfig::resume`] undoes the pause.
    pub fn pause_and_save(&mut self) -> Result<CommonConfigState, StateError> {
        let device = self.device.pause_and_save()?;
        let queues = self
            .queues
            .iter()
            .zip(&self.vectors.queues)
            .map(|(q, v)| QueueRegs {
                size: q.size(),
                ready: q.ready(),
                desc_table: q.desc_table(),
                avail_ring: q.avail_ring(),
                used_ring: q.used_ring(),
                msix_vector: v.load(Ordering::Acquire),
            })
            .collect();
        Ok(CommonConfigState {
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            status: self.status(),
            active: self.active,
            config_msix_vector: self.vectors.config.load(Ordering::Acquire),
            queues,
            device,
        })
    }

    /// Lets a device paused by [`CommonConfig::pause_and_save`] serve its queues again.
    pub fn resume(&mut self) -> Result<(), StateError> {
        self.device.resume()
    }

    /// Restore into a freshly built transport: registers, the device's state, and, for a
    /// device that was active, its queues handed over again at the saved ring positions.
    /// Everything in `st` is checked against this device first; a mismatch is an error.
    pub fn restore_state(&mut self, st: &CommonConfigState) -> Result<(), CommonConfigError> {
        let mismatch = |m: String| Err(CommonConfigError::StateMismatch(m));
        if st.queues.len() != self.queues.len() {
            return mismatch(format!(
                "{} queues saved, the device has {}",
                st.queues.len(),
                self.queues.len()
            ));
        }
        if st.driver_features & !self.device.features() != 0 {
            return mismatch(format!(
                "saved driver features {:#x} are not all offered ({:#x})",
                st.driver_features,
                self.device.features()
            ));
        }
        for (index, (q, saved)) in self.queues.iter_mut().zip(&st.queues).enumerate() {
            q.set_size(saved.size);
            if q.size() != saved.size {
                return mismatch(format!("queue {index}: invalid size {}", saved.size));
            }
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(saved.desc_table);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(saved.avail_ring);
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(saved.used_ring);
            q.set_used_ring_address(lo, hi);
            q.set_ready(saved.ready);
        }
        for (slot, saved) in self.vectors.queues.iter().zip(&st.queues) {
            slot.store(self.check_vector(saved.msix_vector), Ordering::Release);
        }
        self.vectors
            .config
            .store(self.check_vector(st.config_msix_vector), Ordering::Release);
        self.device_feature_select = st.device_feature_select;
        self.driver_feature_select = st.driver_feature_select;
        self.driver_features = st.driver_features;
        self.queue_select = st.queue_select;
        self.device.restore_state(&st.device)?;
        self.status = st.status;
        let needs_reset = st.status & STATUS_NEEDS_RESET != 0;
        self.needs_reset.store(needs_reset, Ordering::Release);
        // A device that needed a reset stays stopped until the driver resets it.
        if st.active && !needs_reset {
            for p in &st.device.queues {
                let Some(q) = self.queues.get_mut(usize::from(p.index)) else {
                    return mismatch(format!("saved progress of queue {} it lacks", p.index));
                };
                q.set_next_avail(p.next_avail);
                q.set_next_used(p.next_used);
            }
            if !self.activate() {
                return Err(CommonConfigError::RestoreActivate);
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        if self.active && !self.device.reset() {
            tracing::warn!("device cannot be reset; it stays inactive until the VM restarts");
        }
        // the worker is stopped: nothing sets the flag again until the next activation
        self.needs_reset.store(false, Ordering::Release);
        self.active = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.vectors.reset();
        self.isr.store(0, Ordering::Release);
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.status = 0;
    }
}
