//! `rtc`: the CMOS clock as `fact: rtc=YYYY-MM-DDTHH:MM:SS` (the host compares it with UTC).

use super::Outcome;
use crate::cmos::{self, bcd};
use crate::out::fact;

#[derive(PartialEq, Eq, Clone, Copy)]
struct Raw([u8; 7]);

fn read_raw() -> Raw {
    for _ in 0..1_000_000 {
        if !cmos::update_in_progress() {
            break;
        }
        core::hint::spin_loop();
    }
    Raw([
        cmos::read(cmos::SECONDS),
        cmos::read(cmos::MINUTES),
        cmos::read(cmos::HOURS),
        cmos::read(cmos::DAY),
        cmos::read(cmos::MONTH),
        cmos::read(cmos::YEAR),
        cmos::read(cmos::CENTURY),
    ])
}

pub fn run() -> Outcome {
    let status_b = cmos::read(cmos::STATUS_B);
    let binary = status_b & 0x04 != 0;
    let h24 = status_b & 0x02 != 0;
    fact("rtc_status_b").hex(u64::from(status_b)).nl();
    // Read until two consecutive reads agree (no update in between).
    let mut raw = read_raw();
    for _ in 0..10 {
        let again = read_raw();
        if again == raw {
            break;
        }
        raw = again;
    }
    let conv = |v: u8| if binary { Some(v) } else { bcd(v) };
    let [s, mi, h, d, mo, y, c] = raw.0;
    let pm = !h24 && h & 0x80 != 0;
    let sec = conv(s).ok_or("seconds not BCD")?;
    let min = conv(mi).ok_or("minutes not BCD")?;
    let mut hour = conv(h & 0x7f).ok_or("hours not BCD")?;
    if !h24 {
        hour = (hour % 12) + if pm { 12 } else { 0 };
    }
    let day = conv(d).ok_or("day not BCD")?;
    let month = conv(mo).ok_or("month not BCD")?;
    let year = conv(y).ok_or("year not BCD")?;
    let century = conv(c).filter(|c| (19..=21).contains(c)).unwrap_or(20);
    fact("rtc")
        .dec_width(u64::from(century) * 100 + u64::from(year), 4)
        .s("-")
        .dec_width(u64::from(month), 2)
        .s("-")
        .dec_width(u64::from(day), 2)
        .s("T")
        .dec_width(u64::from(hour), 2)
        .s(":")
        .dec_width(u64::from(min), 2)
        .s(":")
        .dec_width(u64::from(sec), 2)
        .nl();
    fact("rtc_bcd").dec(u64::from(!binary)).nl();
    fact("rtc_24h").dec(u64::from(h24)).nl();
    if sec > 59 || min > 59 || hour > 23 || !(1..=31).contains(&day) || !(1..=12).contains(&month) {
        return Err("RTC time out of range");
    }
    Ok(())
}
