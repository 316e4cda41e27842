//! `idle`: a long-running guest for daemon tests. Halts between LAPIC timer ticks (one per
//! second) and prints `heartbeat N` on each, forever; ends only when the VMM is stopped.

use super::Outcome;
use crate::io::{self, mmio_write32};
use crate::out::con;
use crate::trap::{LAPIC_BASE, LAPIC_TICKS, LAPIC_TIMER_VECTOR, SPURIOUS_VECTOR};
use core::sync::atomic::Ordering;

const SVR: u64 = 0xf0;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_DIVIDE: u64 = 0x3e0;
const PERIODIC: u32 = 1 << 17;
/// Divide by 128: 7_812_500 counts are one second at KVM's 1 GHz APIC bus.
const DIVIDE_128: u32 = 0xa;
const ONE_SECOND: u32 = 7_812_500;

pub fn run() -> Outcome {
    crate::trap::install_irq_vectors();
    let base = io::rdmsr(0x1b) & 0xffff_f000;
    LAPIC_BASE.store(base, Ordering::SeqCst);
    mmio_write32(base + SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    mmio_write32(base + TIMER_DIVIDE, DIVIDE_128);
    mmio_write32(base + LVT_TIMER, u32::from(LAPIC_TIMER_VECTOR) | PERIODIC);
    mmio_write32(base + TIMER_INITIAL, ONE_SECOND);
    con().s("IDLE-READY").nl();
    let mut seen = LAPIC_TICKS.load(Ordering::SeqCst);
    loop {
        io::wait_for_interrupt();
        let now = LAPIC_TICKS.load(Ordering::SeqCst);
        if now != seen {
            seen = now;
            con().s("heartbeat ").dec(u64::from(now)).nl();
        }
    }
}
