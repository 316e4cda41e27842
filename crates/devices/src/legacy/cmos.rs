//! MC146818 CMOS RTC and NVRAM on ports 0x70 (index) and 0x71 (data).
//!
//! The time registers show the host's UTC wall clock plus an offset the
//! guest can change by writing them (so `hwclock --systohc` works). The
//! other 114 bytes are plain RAM, preset with the memory sizes firmware
//! (SeaBIOS) and some boot code read, laid out as QEMU does. No RTC
//! interrupts are generated; status C always reads 0.

use std::time::{SystemTime, UNIX_EPOCH};

use super::rtc_time::DateTime;
use super::state::CmosState;
use crate::bus::BusDevice;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
/// Bit 7 of the index port disables NMIs; it is not part of the index.
const NMI_DISABLE: u8 = 0x80;
const CMOS_SIZE: usize = 128;

// Time registers.
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_CENTURY: u8 = 0x32;
// Status registers.
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;

/// Status A: 32.768 kHz time base, 1024 Hz rate; update-in-progress clear.
const STATUS_A_DEFAULT: u8 = 0x26;
const STATUS_A_UIP: u8 = 0x80;
/// Status B: 24-hour mode, BCD.
const STATUS_B_DEFAULT: u8 = 0x02;
const STATUS_B_SET: u8 = 0x80;
const STATUS_B_BINARY: u8 = 0x04;
const STATUS_B_24H: u8 = 0x02;
/// Status D: valid RAM and time (battery good).
const STATUS_D_VRT: u8 = 0x80;
const HOUR_PM: u8 = 0x80;

// Memory size registers (QEMU/SeaBIOS layout).
const REG_BASE_MEM_LO: u8 = 0x15;
const REG_EXT_MEM_LO: u8 = 0x17;
const REG_EXT_MEM2_LO: u8 = 0x30;
const REG_MEM_ABOVE_16M_LO: u8 = 0x34;
const REG_MEM_ABOVE_4G_LO: u8 = 0x5b;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Base memory reported: 640 KiB.
const BASE_MEM_KIB: u64 = 640;

/// Errors of the CMOS device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmosError {
    /// A saved state's RAM is not 128 bytes.
    #[error("saved CMOS state has {0} bytes of RAM, expected {CMOS_SIZE}")]
    StateRamSize(usize),
}

/// Source of the host's wall clock, in seconds since the epoch.
type Clock = fn() -> i64;

fn host_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Host clock before 1970: report the epoch.
        Err(_) => 0,
    }
}

/// The CMOS RTC device.
pub struct Cmos {
    index: u8,
    ram: [u8; CMOS_SIZE],
    /// Guest time minus host time, in seconds.
    offset_secs: i64,
    /// While status B's SET bit is on, the clock is frozen here and the
    /// guest's writes edit it; clearing SET makes it the new time.
    latched: Option<DateTime>,
    clock: Clock,
}

impl std::fmt::Debug for Cmos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmos")
            .field("index", &self.index)
            .field("offset_secs", &self.offset_secs)
            .finish_non_exhaustive()
    }
}

impl Cmos {
    /// Creates the CMOS with the guest's RAM below and above 4 GiB, in
    /// bytes, recorded in the memory size registers.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, host_now)
    }

    fn with_clock(mem_below_4g: u64, mem_above_4g: u64, clock: Clock) -> Self {
        let mut ram = [0u8; CMOS_SIZE];
        ram[usize::from(REG_A)] = STATUS_A_DEFAULT;
        ram[usize::from(REG_B)] = STATUS_B_DEFAULT;
        ram[usize::from(REG_D)] = STATUS_D_VRT;

        let ext_kib = (mem_below_4g.saturating_sub(MIB) / KIB).min(0xffff);
        let above_16m = (mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff);
        let above_4g = (mem_above_4g / (64 * KIB)).min(0xff_ffff);
        put_le(&mut ram, REG_BASE_MEM_LO, BASE_MEM_KIB, 2);
        put_le(&mut ram, REG_EXT_MEM_LO, ext_kib, 2);
        put_le(&mut ram, REG_EXT_MEM2_LO, ext_kib, 2);
        put_le(&mut ram, REG_MEM_ABOVE_16M_LO, above_16m, 2);
        put_le(&mut ram, REG_MEM_ABOVE_4G_LO, above_4g, 3);

        Self {
            index: 0,
            ram,
            offset_secs: 0,
            latched: None,
            clock,
        }
    }

    /// Restores a CMOS saved with [`Cmos::state`]. The guest clock keeps
    /// its offset from the host's UTC clock, so it has moved on by the time
    /// the VM spent saved, as a battery-backed RTC would.
    pub fn from_state(state: &CmosState) -> Result<Self, CmosError> {
        let ram: [u8; CMOS_SIZE] = state
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| CmosError::StateRamSize(state.ram.len()))?;
        Ok(Self {
            index: state.index & !NMI_DISABLE,
            ram,
            offset_secs: state.offset_secs,
            latched: state.latched_unix.map(DateTime::from_unix),
            clock: host_now,
        })
    }

    /// The CMOS RAM, index and guest clock offset, for a snapshot.
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            ram: self.ram.to_vec(),
            offset_secs: self.offset_secs,
            latched_unix: self.latched.map(DateTime::to_unix),
        }
    }

    fn guest_time(&self) -> DateTime {
        match self.latched {
            Some(t) => t,
            None => DateTime::from_unix((self.clock)().saturating_add(self.offset_secs)),
        }
    }

    fn status_b(&self) -> u8 {
        self.ram[usize::from(REG_B)]
    }

    /// Encodes a field in the guest's chosen format (BCD or binary).
    fn encode(&self, value: u8) -> u8 {
        if self.status_b() & STATUS_B_BINARY != 0 {
            value
        } else {
            to_bcd(value)
        }
    }

    fn decode(&self, raw: u8) -> Option<u8> {
        if self.status_b() & STATUS_B_BINARY != 0 {
            Some(raw)
        } else {
            from_bcd(raw)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.status_b() & STATUS_B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, raw: u8) -> Option<u8> {
        if self.status_b() & STATUS_B_24H != 0 {
            return self.decode(raw).filter(|h| *h < 24);
        }
        let h12 = self
            .decode(raw & !HOUR_PM)
            .filter(|h| (1..=12).contains(h))?;
        let pm = raw & HOUR_PM != 0;
        Some(h12 % 12 + if pm { 12 } else { 0 })
    }

    fn read_register(&self, reg: u8) -> u8 {
        let t = self.guest_time();
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(year_part(t.year % 100)),
            REG_CENTURY => self.encode(year_part(t.year / 100)),
            REG_A => self.ram[usize::from(REG_A)] & !STATUS_A_UIP,
            REG_C => 0,
            REG_D => STATUS_D_VRT,
            _ => self.ram[usize::from(reg)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY | REG_MONTH | REG_YEAR
            | REG_CENTURY => self.write_time(reg, value),
            // Derived from the date; accept and forget.
            REG_WEEKDAY => {}
            REG_A => self.ram[usize::from(REG_A)] = value & !STATUS_A_UIP,
            REG_B => self.write_status_b(value),
            REG_C | REG_D => {}
            _ => self.ram[usize::from(reg)] = value,
        }
    }

    fn write_status_b(&mut self, value: u8) {
        let was_set = self.status_b() & STATUS_B_SET != 0;
        let now_set = value & STATUS_B_SET != 0;
        if !was_set && now_set {
            self.latched = Some(self.guest_time());
        }
        if was_set && !now_set {
            if let Some(t) = self.latched.take() {
                self.set_guest_time(t);
            }
        }
        self.ram[usize::from(REG_B)] = value;
    }

    fn write_time(&mut self, reg: u8, value: u8) {
        let mut t = self.guest_time();
        let decoded = if reg == REG_HOURS {
            self.decode_hour(value)
        } else {
            self.decode(value)
        };
        let Some(v) = decoded else {
            tracing::debug!(reg, value, "cmos: ignored invalid time value");
            return;
        };
        let valid = match reg {
            REG_SECONDS if v < 60 => {
                t.second = v;
                true
            }
            REG_MINUTES if v < 60 => {
                t.minute = v;
                true
            }
            REG_HOURS => {
                t.hour = v;
                true
            }
            REG_DAY if (1..=31).contains(&v) => {
                t.day = v;
                true
            }
            REG_MONTH if (1..=12).contains(&v) => {
                t.month = v;
                true
            }
            REG_YEAR if v < 100 => {
                t.year = t.year.div_euclid(100) * 100 + i64::from(v);
                true
            }
            REG_CENTURY if v < 100 => {
                t.year = i64::from(v) * 100 + t.year.rem_euclid(100);
                true
            }
            _ => false,
        };
        if !valid {
            tracing::debug!(reg, value, "cmos: ignored out-of-range time value");
            return;
        }
        match self.latched.as_mut() {
            Some(latched) => *latched = t,
            None => self.set_guest_time(t),
        }
    }

    fn set_guest_time(&mut self, t: DateTime) {
        self.offset_secs = t.to_unix().saturating_sub((self.clock)());
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA_OFFSET, 1) => self.read_register(self.index),
            // The index port is write-only.
            _ => 0xff,
        };
        crate::bus::byte_register_read(data, value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            return;
        };
        match offset {
            INDEX_OFFSET => self.index = value & !NMI_DISABLE,
            DATA_OFFSET => self.write_register(self.index, value),
            _ => {}
        }
    }
}

/// Stores the low `bytes` bytes of `value` little-endian at `reg`.
fn put_le(ram: &mut [u8; CMOS_SIZE], reg: u8, value: u64, bytes: usize) {
    let start = usize::from(reg);
    for (i, b) in value.to_le_bytes().iter().take(bytes).enumerate() {
        if let Some(slot) = ram.get_mut(start + i) {
            *slot = *b;
        }
    }
}

/// A two-digit year or century, clamped for years outside 0..=9999.
fn year_part(v: i64) -> u8 {
    u8::try_from(v.rem_euclid(100)).unwrap_or(0)
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    (hi < 10 && lo < 10).then_some(hi * 10 + lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::hammer;

    const GIB: u64 = 1024 * MIB;

    /// 2024-02-29T23:59:30Z, a Thursday.
    const FIXED: i64 = 1_709_251_170;

    fn fixed_clock() -> i64 {
        FIXED
    }

    fn read_reg(dev: &mut Cmos, reg: u8) -> u8 {
        dev.write(INDEX_OFFSET, &[reg]);
        let mut data = [0u8];
        dev.read(DATA_OFFSET, &mut data);
        data[0]
    }

    fn write_reg(dev: &mut Cmos, reg: u8, value: u8) {
        dev.write(INDEX_OFFSET, &[reg]);
        dev.write(DATA_OFFSET, &[value]);
    }

    /// Reads the clock as Linux does: retry until the seconds did not
    /// change while the other fields were read.
    fn read_clock(dev: &mut Cmos) -> i64 {
        loop {
            let first = read_reg(dev, REG_SECONDS);
            let field = |dev: &mut Cmos, reg| from_bcd(read_reg(dev, reg)).expect("valid bcd");
            let t = DateTime {
                year: i64::from(field(dev, REG_CENTURY)) * 100 + i64::from(field(dev, REG_YEAR)),
                month: field(dev, REG_MONTH),
                day: field(dev, REG_DAY),
                hour: field(dev, REG_HOURS),
                minute: field(dev, REG_MINUTES),
                second: field(dev, REG_SECONDS),
                weekday: field(dev, REG_WEEKDAY),
            };
            if read_reg(dev, REG_SECONDS) == first {
                return t.to_unix();
            }
        }
    }

    #[test]
    fn time_registers_read_host_clock_in_bcd() {
        let mut dev = Cmos::new(GIB, 0);
        let before = host_now();
        let guest = read_clock(&mut dev);
        let after = host_now();
        assert!(
            (before - 1..=after + 1).contains(&guest),
            "guest {guest} host {before}..={after}"
        );
        let weekday = from_bcd(read_reg(&mut dev, REG_WEEKDAY)).expect("bcd");
        assert!((1..=7).contains(&weekday));
    }

    #[test]
    fn fixed_time_fields_and_status_registers() {
        let mut dev = Cmos::with_clock(GIB, 0, fixed_clock);
        assert_eq!(read_reg(&mut dev, REG_SECONDS), 0x30);
        assert_eq!(read_reg(&mut dev, REG_MINUTES), 0x59);
        assert_eq!(read_reg(&mut dev, REG_HOURS), 0x23);
        assert_eq!(read_reg(&mut dev, REG_WEEKDAY), 0x05);
        assert_eq!(read_reg(&mut dev, REG_DAY), 0x29);
        assert_eq!(read_reg(&mut dev, REG_MONTH), 0x02);
        assert_eq!(read_reg(&mut dev, REG_YEAR), 0x24);
        assert_eq!(read_reg(&mut dev, REG_CENTURY), 0x20);
        assert_eq!(read_reg(&mut dev, REG_A), 0x26);
        assert_eq!(read_reg(&mut dev, REG_B), 0x02);
        assert_eq!(read_reg(&mut dev, REG_C), 0x00);
        assert_eq!(read_reg(&mut dev, REG_D), 0x80);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut dev = Cmos::with_clock(GIB, 0, fixed_clock);
        write_reg(&mut dev, REG_B, STATUS_B_BINARY);
        assert_eq!(read_reg(&mut dev, REG_SECONDS), 30);
        assert_eq!(read_reg(&mut dev, REG_HOURS), 11 | HOUR_PM);
        write_reg(&mut dev, REG_B, 0);
        assert_eq!(read_reg(&mut dev, REG_HOURS), 0x11 | HOUR_PM);
    }

    #[test]
    fn guest_can_set_the_clock() {
        let mut dev = Cmos::with_clock(GIB, 0, fixed_clock);
        write_reg(&mut dev, REG_B, STATUS_B_DEFAULT | STATUS_B_SET);
        write_reg(&mut dev, REG_YEAR, 0x30);
        write_reg(&mut dev, REG_MONTH, 0x01);
        write_reg(&mut dev, REG_DAY, 0x31);
        write_reg(&mut dev, REG_HOURS, 0x08);
        write_reg(&mut dev, REG_MINUTES, 0x00);
        write_reg(&mut dev, REG_SECONDS, 0x00);
        write_reg(&mut dev, REG_B, STATUS_B_DEFAULT);
        // 2030-01-31T08:00:00Z.
        assert_eq!(dev.offset_secs, 1_896_076_800 - FIXED);
        assert_eq!(read_reg(&mut dev, REG_DAY), 0x31);
        assert_eq!(read_reg(&mut dev, REG_HOURS), 0x08);

        // A single write outside SET applies at once.
        write_reg(&mut dev, REG_MINUTES, 0x15);
        assert_eq!(read_reg(&mut dev, REG_MINUTES), 0x15);
        // Invalid BCD and out-of-range values are ignored.
        write_reg(&mut dev, REG_MONTH, 0x13);
        write_reg(&mut dev, REG_SECONDS, 0xff);
        assert_eq!(read_reg(&mut dev, REG_MONTH), 0x01);
    }

    #[test]
    fn memory_size_bytes_for_5_gib_guest() {
        // 3 GiB below the PCI hole, 2 GiB above 4 GiB.
        let mut dev = Cmos::new(3 * GIB, 2 * GIB);
        let base = u16::from_le_bytes([read_reg(&mut dev, 0x15), read_reg(&mut dev, 0x16)]);
        assert_eq!(base, 640);
        let ext = u16::from_le_bytes([read_reg(&mut dev, 0x17), read_reg(&mut dev, 0x18)]);
        assert_eq!(ext, 0xffff);
        let ext2 = u16::from_le_bytes([read_reg(&mut dev, 0x30), read_reg(&mut dev, 0x31)]);
        assert_eq!(ext2, 0xffff);
        let above_16m = u16::from_le_bytes([read_reg(&mut dev, 0x34), read_reg(&mut dev, 0x35)]);
        assert_eq!(u64::from(above_16m), (3 * GIB - 16 * MIB) / (64 * KIB));
        let above_4g = u32::from_le_bytes([
            read_reg(&mut dev, 0x5b),
            read_reg(&mut dev, 0x5c),
            read_reg(&mut dev, 0x5d),
            0,
        ]);
        assert_eq!(u64::from(above_4g), 2 * GIB / (64 * KIB));
    }

    #[test]
    fn small_guest_memory_bytes() {
        let mut dev = Cmos::new(8 * MIB, 0);
        let ext = u16::from_le_bytes([read_reg(&mut dev, 0x17), read_reg(&mut dev, 0x18)]);
        assert_eq!(ext, 7 * 1024);
        assert_eq!(read_reg(&mut dev, 0x34), 0);
        assert_eq!(read_reg(&mut dev, 0x35), 0);
    }

    #[test]
    fn nmi_bit_is_masked_off_the_index() {
        let mut dev = Cmos::with_clock(GIB, 0, fixed_clock);
        write_reg(&mut dev, 0x40, 0xab);
        assert_eq!(read_reg(&mut dev, 0x40 | NMI_DISABLE), 0xab);
        assert_eq!(read_reg(&mut dev, REG_SECONDS | NMI_DISABLE), 0x30);
    }

    #[test]
    fn every_index_maps_into_128_bytes() {
        let mut dev = Cmos::with_clock(GIB, 0, fixed_clock);
        for index in 0..=u8::MAX {
            write_reg(&mut dev, index, 0x5a);
            assert!(dev.index < 128);
            let _ = read_reg(&mut dev, index);
        }
        assert_eq!(read_reg(&mut dev, 0xff), 0x5a, "0xff wraps to 0x7f");
    }

    #[test]
    fn index_port_reads_ff_and_wide_accesses_are_ignored() {
        let mut dev = Cmos::with_clock(GIB, 0, fixed_clock);
        let mut data = [0u8];
        dev.read(INDEX_OFFSET, &mut data);
        assert_eq!(data, [0xff]);
        dev.write(INDEX_OFFSET, &[0x40, 0x00]);
        let mut wide = [0u8; 2];
        dev.read(DATA_OFFSET, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut dev = Cmos::new(3 * GIB, 2 * GIB);
        write_reg(&mut dev, 0x40, 0x99);
        write_reg(&mut dev, REG_YEAR, 0x35);
        dev.write(INDEX_OFFSET, &[0x41]);
        let saved = dev.state();
        let json = serde_json::to_string(&saved).expect("serialize");
        let loaded: CmosState = serde_json::from_str(&json).expect("deserialize");

        let mut restored = Cmos::from_state(&loaded).expect("restore");
        assert_eq!(restored.state(), saved);
        assert_eq!(read_reg(&mut restored, 0x40), 0x99);
        assert_eq!(read_reg(&mut restored, REG_YEAR), 0x35);
        assert_eq!(read_reg(&mut restored, 0x5b), read_reg(&mut dev, 0x5b));
    }

    #[test]
    fn restore_rejects_bad_ram_and_masks_index() {
        let dev = Cmos::new(GIB, 0);
        let mut state = dev.state();
        state.ram.push(0);
        assert_eq!(
            Cmos::from_state(&state).err(),
            Some(CmosError::StateRamSize(129))
        );
        let mut state = dev.state();
        state.index = 0xff;
        let restored = Cmos::from_state(&state).expect("restore");
        assert_eq!(restored.index, 0x7f);
    }

    #[test]
    fn survives_hostile_accesses() {
        let mut dev = Cmos::new(3 * GIB, 2 * GIB);
        hammer(&mut dev);
    }
}
