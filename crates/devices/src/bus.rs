//! The I/O bus: maps address ranges (port I/O or MMIO) to devices.
//!
//! A vCPU exit hands the faulting address to [`Bus::read`] or [`Bus::write`];
//! the bus finds the device whose range contains the address and forwards the
//! access with the address made relative to the range's base. The bus holds
//! no lock while the device runs: it clones the device's `Arc` under a short
//! read lock, then locks only that device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// A device that answers accesses to one range of a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset`, relative to the base the device
    /// was inserted at.
    ///
    /// `data.len()` is usually 1, 2, 4 or 8 but is guest-controlled and may
    /// be anything, and `offset + data.len()` may run past the device's
    /// range: implementations bounds-check and never panic.
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset`, relative to the device's base. The same
    /// rules as for [`BusDevice::read`] apply.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (for example
/// the stdin thread that feeds a serial port).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of [`Bus`] operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A range of length zero was given.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Base of the rejected range.
        base: u64,
    },
    /// `base + len` does not fit in 64 bits.
    #[error("bus range {base:#x} + {len:#x} overflows the address space")]
    Overflow {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The new range overlaps a range already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps existing range {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Base of the range already present.
        other_base: u64,
        /// Length of the range already present.
        other_len: u64,
    },
    /// No range starts at the given base.
    #[error("no bus range starts at {base:#x}")]
    NotFound {
        /// The base that was looked up.
        base: u64,
    },
}

/// One entry of the bus: the range's length and its device (the key of the
/// map is the range's base).
#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        let mut list = f.debug_list();
        for (base, entry) in ranges.iter() {
            list.entry(&format_args!("{base:#x}+{:#x}", entry.len));
        }
        list.finish()
    }
}

/// Locks a device, recovering the guard if a previous holder panicked: a
/// device whose handler panicked once must not take the vCPU thread with it.
pub(crate) fn lock_device<T: ?Sized>(dev: &Mutex<T>) -> MutexGuard<'_, T> {
    dev.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers a read of a one-byte register: `value` in the first byte, `0xff` in any further
/// byte of a wider (guest-chosen) access, as a PC port with nothing behind it reads.
pub(crate) fn byte_register_read(data: &mut [u8], value: u8) {
    data.fill(0xff);
    if let Some(first) = data.first_mut() {
        *first = value;
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `dev` on the bus at `base..base + len`.
    pub fn insert(&self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        // The closest range starting at or below `base` must end at or before it.
        if let Some((&other_base, other)) = ranges.range(..=base).next_back() {
            // `other_base + other.len` was checked on insert; saturate anyway.
            if other_base.saturating_add(other.len) > base {
                return Err(overlap(base, len, other_base, other.len));
            }
        }
        // The first range starting above `base` must start at or after `end`.
        if let Some((&other_base, other)) = ranges.range(base..).next() {
            if other_base < end {
                return Err(overlap(base, len, other_base, other.len));
            }
        }
        ranges.insert(base, Entry { len, dev });
        Ok(())
    }

    /// Removes the range that starts at `base` and returns its device.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        ranges
            .remove(&base)
            .map(|entry| entry.dev)
            .ok_or(BusError::NotFound { base })
    }

    /// Finds the device covering `addr`: returns the range's base and the
    /// device.
    fn lookup(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        // `addr >= base` by the range query, so the subtraction cannot wrap.
        if addr - base < entry.len {
            Some((base, Arc::clone(&entry.dev)))
        } else {
            None
        }
    }

    /// Forwards a read at `addr` to the device covering it.
    ///
    /// Returns false when no device covers `addr`; the caller then fills
    /// `data` with `0xff` as an unclaimed bus would. An access that starts
    /// inside a range goes to that device even if it runs past the end.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((base, dev)) = self.lookup(addr) else {
            return false;
        };
        lock_device(&dev).read(addr - base, data);
        true
    }

    /// Forwards a write at `addr` to the device covering it. Returns false
    /// when no device covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((base, dev)) = self.lookup(addr) else {
            return false;
        };
        lock_device(&dev).write(addr - base, data);
        true
    }
}

fn overlap(base: u64, len: u64, other_base: u64, other_len: u64) -> BusError {
    BusError::Overlap {
        base,
        len,
        other_base,
        other_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access it saw; reads return the low byte of the offset.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, usize, bool)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.last = Some((offset, data.len(), false));
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.len(), true));
        }
    }

    fn probe() -> (Arc<Mutex<Probe>>, SharedDevice) {
        let p = Arc::new(Mutex::new(Probe::default()));
        let shared: SharedDevice = p.clone();
        (p, shared)
    }

    #[test]
    fn insert_rejects_zero_length() {
        let bus = Bus::new();
        let (_, dev) = probe();
        assert_eq!(
            bus.insert(dev, 0x10, 0),
            Err(BusError::ZeroLength { base: 0x10 })
        );
    }

    #[test]
    fn insert_rejects_overflow() {
        let bus = Bus::new();
        let (_, dev) = probe();
        assert!(matches!(
            bus.insert(dev, u64::MAX, 2),
            Err(BusError::Overflow { .. })
        ));
    }

    #[test]
    fn insert_accepts_range_ending_at_top() {
        let bus = Bus::new();
        let (_, dev) = probe();
        bus.insert(dev, u64::MAX - 1, 1).expect("fits");
        assert!(bus.read(u64::MAX - 1, &mut [0u8; 1]));
        assert!(!bus.read(u64::MAX, &mut [0u8; 1]));
    }

    #[test]
    fn insert_rejects_every_kind_of_overlap() {
        let bus = Bus::new();
        let (_, a) = probe();
        bus.insert(a, 0x100, 0x10).expect("first range");
        for (base, len) in [
            (0x100, 0x10), // identical
            (0xf8, 0x10),  // runs into the start
            (0x108, 0x10), // starts inside
            (0x104, 0x2),  // contained
            (0xf0, 0x100), // contains
        ] {
            let (_, b) = probe();
            assert!(
                matches!(bus.insert(b, base, len), Err(BusError::Overlap { .. })),
                "{base:#x}+{len:#x} should overlap"
            );
        }
    }

    #[test]
    fn insert_accepts_adjacent_ranges() {
        let bus = Bus::new();
        let (_, a) = probe();
        let (_, b) = probe();
        let (_, c) = probe();
        bus.insert(a, 0x100, 0x10).expect("middle");
        bus.insert(b, 0xf0, 0x10).expect("just below");
        bus.insert(c, 0x110, 0x10).expect("just above");
    }

    #[test]
    fn lookup_respects_boundaries_and_offsets() {
        let bus = Bus::new();
        let (p, dev) = probe();
        bus.insert(dev, 0x3f8, 8).expect("insert");

        assert!(!bus.read(0x3f7, &mut [0u8; 1]));
        assert!(!bus.write(0x400, &[0u8; 1]));

        let mut data = [0u8; 1];
        assert!(bus.read(0x3f8, &mut data));
        assert_eq!(data, [0]);
        assert!(bus.read(0x3ff, &mut data));
        assert_eq!(data, [7]);
        assert!(bus.write(0x3fc, &[1, 2]));
        assert_eq!(lock_device(&p).last, Some((4, 2, true)));
    }

    #[test]
    fn access_running_past_the_end_goes_to_the_device() {
        let bus = Bus::new();
        let (p, dev) = probe();
        bus.insert(dev, 0x60, 5).expect("insert");
        let mut data = [0u8; 8];
        assert!(bus.read(0x64, &mut data));
        assert_eq!(lock_device(&p).last, Some((4, 8, false)));
    }

    #[test]
    fn remove_frees_the_range() {
        let bus = Bus::new();
        let (_, dev) = probe();
        bus.insert(dev, 0x70, 2).expect("insert");
        bus.remove(0x70).expect("remove");
        assert!(!bus.read(0x70, &mut [0u8; 1]));
        assert!(matches!(
            bus.remove(0x70),
            Err(BusError::NotFound { base: 0x70 })
        ));
        let (_, again) = probe();
        bus.insert(again, 0x70, 2).expect("reinsert");
    }

    #[test]
    fn poisoned_device_does_not_panic_the_bus() {
        let bus = Bus::new();
        let (p, dev) = probe();
        bus.insert(dev, 0x80, 1).expect("insert");
        let poisoner = Arc::clone(&p);
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("poison the device mutex");
        })
        .join();
        assert!(p.is_poisoned());
        assert!(bus.write(0x80, &[0x41]));
        assert_eq!(lock_device(&p).last, Some((0, 1, true)));
    }
}
