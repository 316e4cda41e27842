//! virtio-rng: arbitrary request rings (writable and readable buffers, lengths up to 4 GiB,
//! loops, bad heads, avail index jumps) through the device's queue service.
#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(mem) = mem() else { return };
    let mut input = Input(data);
    let mut q = ring(&mem, 0, 0, &mut input);
    // Ok or a fault (NEEDS_RESET); never a panic or a write outside guest memory
    let _ = virtio::rng::serve(&mem, &mut q.queue, 0, &NullIrq);
    let _ = virtio::rng::serve(&mem, &mut q.queue, 0, &NullIrq);
});
