//! virtio-balloon: arbitrary inflate, deflate, statistics and free page reporting rings
//! (PFN arrays of any length and value, stats entries with any tag, reported ranges of any
//! address, length and direction, loops, bad heads, avail index jumps) through the device's
//! queue service, then a statistics request. Inflated and reported ranges are freed only
//! inside guest memory.
#![no_main]

mod common;

use std::sync::Arc;

use common::*;
use libfuzzer_sys::fuzz_target;
use virtio::balloon::{BalloonControl, QueueRole, Queues};

fuzz_target!(|data: &[u8]| {
    let Some(mem) = mem() else { return };
    let mut input = Input(data);
    let roles = [
        QueueRole::Inflate,
        QueueRole::Deflate,
        QueueRole::Stats,
        QueueRole::Reporting,
    ];
    let queues = roles
        .iter()
        .enumerate()
        .map(|(i, role)| {
            let q = ring(&mem, i as u64 * 0x400, i as u16, &mut input);
            (*role, q.index, q.queue)
        })
        .collect();
    let n = input.0.len();
    fill_data(&mem, &mut input, n);
    let control = BalloonControl::default();
    let mut q = Queues::new(mem, Arc::new(NullIrq), queues, control.clone());
    for i in 0..4 {
        q.kick(i);
    }
    q.request_stats();
    q.kick(2);
    let _ = control.status();
});
