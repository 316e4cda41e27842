//! Helpers shared by the device unit tests.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::bus::{lock_device, BusDevice};

/// A `Write` whose contents the test can look at afterwards (clones share them).
#[derive(Clone, Default)]
pub(crate) struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    /// What was written so far.
    pub(crate) fn contents(&self) -> Vec<u8> {
        lock_device(&self.0).clone()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock_device(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes a hostile guest might write: zero, all ones, and the values that
/// mean something to one of our devices (reset, S5 sleep, ...).
const PATTERNS: [u8; 6] = [0x00, 0xff, 0xfe, 0x34, 0x01, 0x80];

/// Hits `dev` with reads and writes of every size 0..=9 at every offset
/// 0..=16 and at a few absurd offsets. The test passes if nothing panics.
pub(crate) fn hammer(dev: &mut dyn BusDevice) {
    let offsets = (0..=16u64).chain([u64::MAX, u64::MAX - 3, 1 << 32]);
    for offset in offsets {
        for size in 0..=9usize {
            for pattern in PATTERNS {
                let mut buf = vec![pattern; size];
                dev.read(offset, &mut buf);
                dev.write(offset, &buf);
            }
        }
    }
}
