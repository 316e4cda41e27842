//! CMOS RTC at ports 0x70/0x71.

use crate::io::{inb, outb};

pub const SECONDS: u8 = 0x00;
pub const MINUTES: u8 = 0x02;
pub const HOURS: u8 = 0x04;
pub const DAY: u8 = 0x07;
pub const MONTH: u8 = 0x08;
pub const YEAR: u8 = 0x09;
pub const STATUS_A: u8 = 0x0a;
pub const STATUS_B: u8 = 0x0b;
pub const CENTURY: u8 = 0x32;

/// Reads one CMOS register (NMI stays enabled: bit 7 of the index is clear).
pub fn read(reg: u8) -> u8 {
    outb(0x70, reg & 0x7f);
    inb(0x71)
}

/// True while the RTC is updating its time registers (status A bit 7).
pub fn update_in_progress() -> bool {
    read(STATUS_A) & 0x80 != 0
}

/// Busy-waits until the seconds register has changed `n` times, giving up after a bounded
/// number of reads (a missing RTC must not hang the guest).
pub fn wait_seconds(n: u32) {
    let mut last = read(SECONDS);
    let mut changes = 0;
    for _ in 0..5_000_000u32 {
        let now = read(SECONDS);
        if now != last {
            changes += 1;
            last = now;
            if changes >= n {
                return;
            }
        }
        core::hint::spin_loop();
    }
}

/// BCD byte to binary; `None` if a nibble is not a decimal digit.
pub fn bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0xf);
    (hi < 10 && lo < 10).then_some(hi * 10 + lo)
}

#[cfg(test)]
mod tests {
    use super::bcd;

    #[test]
    fn bcd_decodes_and_rejects() {
        assert_eq!(bcd(0x59), Some(59));
        assert_eq!(bcd(0x00), Some(0));
        assert_eq!(bcd(0x5a), None);
        assert_eq!(bcd(0xff), None);
    }
}
