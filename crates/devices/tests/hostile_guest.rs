//! A guest that pokes every legacy port with random sizes and values must
//! not panic the VMM. Builds the full PC legacy bus as the VMM does and
//! replays a long pseudo-random access sequence against it.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::legacy::{
    ACPI_PM_LEN, ACPI_PM_PORT, CMOS_LEN, CMOS_PORT, COM1_PORT, COM_LEN, DEBUG_PORT, DEBUG_PORT_LEN,
    I8042_LEN, I8042_PORT,
};
use devices::{AcpiPmDevice, Bus, Cmos, DebugPort, SerialDevice, I8042};
use vmm_sys_util::eventfd::EventFd;

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// xorshift64*: deterministic, so a failure replays the same sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn legacy_bus() -> Bus {
    let bus = Bus::new();
    let serial = SerialDevice::new(eventfd(), Box::new(io::sink()));
    bus.insert(Arc::new(Mutex::new(serial)), COM1_PORT, COM_LEN)
        .expect("serial");
    bus.insert(
        Arc::new(Mutex::new(I8042::new(eventfd(), eventfd()))),
        I8042_PORT,
        I8042_LEN,
    )
    .expect("i8042");
    bus.insert(
        Arc::new(Mutex::new(Cmos::new(3 << 30, 2 << 30))),
        CMOS_PORT,
        CMOS_LEN,
    )
    .expect("cmos");
    bus.insert(
        Arc::new(Mutex::new(DebugPort::new(Instant::now(), None))),
        DEBUG_PORT,
        DEBUG_PORT_LEN,
    )
    .expect("debug port");
    bus.insert(
        Arc::new(Mutex::new(AcpiPmDevice::new(eventfd(), eventfd()))),
        ACPI_PM_PORT,
        ACPI_PM_LEN,
    )
    .expect("acpi pm");
    bus
}

#[test]
fn random_port_io_never_panics() {
    let bus = legacy_bus();
    let ports = [COM1_PORT, I8042_PORT, CMOS_PORT, DEBUG_PORT, ACPI_PM_PORT];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut claimed = 0u32;
    for _ in 0..200_000 {
        let r = rng.next();
        let base = ports[(r % ports.len() as u64) as usize];
        let port = base + (r >> 8) % 10;
        let len = ((r >> 16) % 10) as usize;
        let mut data = vec![(r >> 24) as u8; len];
        let hit = if r >> 63 == 0 {
            bus.read(port, &mut data)
        } else {
            bus.write(port, &data)
        };
        claimed += u32::from(hit);
    }
    assert!(claimed > 0);
}

#[test]
fn unclaimed_ports_report_no_device() {
    let bus = legacy_bus();
    for port in [
        0x0,
        0x5f,
        0x65,
        0x72,
        0x81,
        0x3f7,
        0x400,
        0x5ff,
        0x604,
        u64::MAX,
    ] {
        assert!(!bus.read(port, &mut [0u8; 1]), "port {port:#x}");
    }
}
