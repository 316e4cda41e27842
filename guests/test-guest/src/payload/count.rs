//! `count`: counts forever, printing `count: N` about every 100 ms (by the TSC, assuming a
//! ~2 GHz clock; the pace only needs to be roughly right). The number lives only in guest
//! registers and memory, so a count that goes on from where it was proves that
//! pause/resume and snapshot/restore kept the CPU and memory state.

use super::Outcome;

/// TSC cycles between two lines.
const CYCLES_PER_LINE: u64 = 200_000_000;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter into edx:eax.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn run() -> Outcome {
    let mut n: u64 = 0;
    let mut next = rdtsc();
    loop {
        while rdtsc() < next {}
        next = rdtsc().saturating_add(CYCLES_PER_LINE);
        crate::out::con().s("count: ").dec(n).nl();
        n += 1;
    }
}
