//! `spin`: a busy loop for CPU-limit tests. Burns its vCPU without exits, printing
//! `spin N` every 2^30 iterations so a host can see it progress; never ends.

use super::Outcome;
use crate::out::con;

pub fn run() -> Outcome {
    con().s("SPIN-READY").nl();
    let mut n: u64 = 0;
    loop {
        n = n.wrapping_add(1);
        if n & ((1 << 30) - 1) == 0 {
            con().s("spin ").dec(n >> 30).nl();
        }
    }
}
