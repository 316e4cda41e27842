//! How a virtio device behind this transport interrupts the guest: the vector the driver
//! chose for the event (configuration change or a queue), raised through MSI-X, and the
//! ISR status bits.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use virtio::{Interrupt, InterruptKind};

use crate::msix::Msix;

/// "No vector" as virtio-pci spells it.
pub const NO_VECTOR: u16 = 0xffff;
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// The vectors the driver assigned: one for configuration changes, one per queue.
#[derive(Debug)]
pub struct Vectors {
    pub config: AtomicU16,
    pub queues: Vec<AtomicU16>,
}

impl Vectors {
    pub fn new(queues: usize) -> Self {
        Vectors {
            config: AtomicU16::new(NO_VECTOR),
            queues: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        }
    }

    pub fn reset(&self) {
        self.config.store(NO_VECTOR, Ordering::Release);
        for q in &self.queues {
            q.store(NO_VECTOR, Ordering::Release);
        }
    }
}

pub struct VirtioInterrupt {
    pub msix: Arc<Msix>,
    pub vectors: Arc<Vectors>,
    pub isr: Arc<AtomicU8>,
    /// Set by the device's worker when it needs a reset; the common configuration shows it
    /// as DEVICE_NEEDS_RESET in the status register and clears it on reset.
    pub needs_reset: Arc<AtomicBool>,
}

impl Interrupt for VirtioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let (bit, vector) = match kind {
            InterruptKind::Config => (ISR_CONFIG, self.vectors.config.load(Ordering::Acquire)),
            InterruptKind::Queue(i) => match self.vectors.queues.get(usize::from(i)) {
                Some(v) => (ISR_QUEUE, v.load(Ordering::Acquire)),
                None => return Ok(()),
            },
        };
        self.isr.fetch_or(bit, Ordering::AcqRel);
        if vector != NO_VECTOR {
            self.msix.trigger(vector);
        }
        Ok(())
    }

    fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            let _ = self.trigger(InterruptKind::Config);
        }
    }
}
