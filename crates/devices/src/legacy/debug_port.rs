//! Boot-timing debug port (0x80), as Cloud Hypervisor has: the guest writes
//! a code byte at a milestone and the VMM records when it happened.
//!
//! Each written byte is kept with the time elapsed since the VMM process
//! started (at most [`MAX_TIMESTAMPS`] of them: the guest decides how many
//! writes there are) and, when an output is given, printed as one line
//! `kapsel: boot-timer: code=0x41 elapsed_us=12345`.
//!
//! Reads return `0xff`, like a port no device answers; a guest gains
//! nothing from reading it.
//!
//! Note: Linux's `io_delay` also writes port 0x80 unless the hypervisor
//! advertises `KVM_FEATURE_NOP_IO_DELAY` (or the kernel is booted with
//! `io_delay=none`); those writes show up here too.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::bus::BusDevice;
use crate::log_limit::LogLimiter;

/// How many timestamps are kept; later writes are counted but not stored.
pub const MAX_TIMESTAMPS: usize = 1024;

/// The debug port device.
pub struct DebugPort {
    start: Instant,
    out: Option<Box<dyn Write + Send>>,
    timestamps: Vec<(u8, Duration)>,
    dropped: u64,
    out_errors: LogLimiter,
}

impl std::fmt::Debug for DebugPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugPort")
            .field("timestamps", &self.timestamps.len())
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl DebugPort {
    /// `start` is the VMM process start; when `out` is `Some`, every byte
    /// written is printed there as one line.
    pub fn new(start: Instant, out: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            start,
            out,
            timestamps: Vec::new(),
            dropped: 0,
            out_errors: LogLimiter::default(),
        }
    }

    /// The codes written so far with their time since `start`, oldest
    /// first, at most [`MAX_TIMESTAMPS`].
    pub fn timestamps(&self) -> &[(u8, Duration)] {
        &self.timestamps
    }

    /// Writes that came after the timestamp list was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn record(&mut self, code: u8) {
        let elapsed = self.start.elapsed();
        if self.timestamps.len() < MAX_TIMESTAMPS {
            self.timestamps.push((code, elapsed));
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
        if let Some(out) = self.out.as_mut() {
            let res = writeln!(out, "{}", format_line(code, elapsed)).and_then(|()| out.flush());
            if let Err(err) = res {
                if self.out_errors.should_log() {
                    tracing::warn!(error = %err, count = self.out_errors.count(), "debug port: output failed");
                }
            }
        }
    }
}

/// The line printed for one code.
fn format_line(code: u8, elapsed: Duration) -> String {
    format!(
        "kapsel: boot-timer: code={code:#04x} elapsed_us={}",
        elapsed.as_micros()
    )
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        for &code in data {
            self.record(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{hammer, SharedBuf};

    #[test]
    fn records_codes_in_order_with_rising_times() {
        let start = Instant::now();
        let mut dev = DebugPort::new(start, None);
        dev.write(0, &[0x41]);
        dev.write(0, &[0x42]);
        let ts = dev.timestamps();
        assert_eq!(ts.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [0x41, 0x42]);
        assert!(ts[0].1 <= ts[1].1);
        assert!(ts[1].1 <= start.elapsed());
    }

    #[test]
    fn timestamps_are_capped() {
        let mut dev = DebugPort::new(Instant::now(), None);
        for i in 0..(MAX_TIMESTAMPS + 10) {
            dev.write(0, &[i as u8]);
        }
        assert_eq!(dev.timestamps().len(), MAX_TIMESTAMPS);
        assert_eq!(dev.dropped(), 10);
    }

    #[test]
    fn prints_one_line_per_byte() {
        let buf = SharedBuf::default();
        let mut dev = DebugPort::new(Instant::now(), Some(Box::new(buf.clone())));
        dev.write(0, &[0x41, 0x07]);
        let text = String::from_utf8(buf.contents()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("kapsel: boot-timer: code=0x41 elapsed_us="));
        assert!(lines[1].starts_with("kapsel: boot-timer: code=0x07 elapsed_us="));
        let us = lines[0].rsplit('=').next().expect("value");
        assert!(us.parse::<u128>().is_ok(), "{us}");
    }

    #[test]
    fn line_format() {
        assert_eq!(
            format_line(0x41, Duration::from_micros(12345)),
            "kapsel: boot-timer: code=0x41 elapsed_us=12345"
        );
    }

    #[test]
    fn reads_return_ff_and_other_offsets_are_ignored() {
        let mut dev = DebugPort::new(Instant::now(), None);
        let mut data = [0u8; 2];
        dev.read(0, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        dev.write(1, &[0x41]);
        assert!(dev.timestamps().is_empty());
    }

    #[test]
    fn survives_hostile_accesses() {
        let mut dev = DebugPort::new(Instant::now(), Some(Box::new(std::io::sink())));
        hammer(&mut dev);
    }
}
