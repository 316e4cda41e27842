//! The virtio-pci transport and PCI configuration space under arbitrary guest register
//! traffic (BAR 0 and config space, any size, any offset, any value), around a virtio-rng
//! device with real queues in guest memory.
//!
//! Input: records of 12 bytes: op (u8), size selector (u8), offset (u16/u32 by op), value.
#![no_main]

use std::sync::{Arc, Mutex};

use arch::GuestMemoryMmap;
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use pci::bus::PciDevice;
use pci::{MsiSink, PciBus, PciConfigIo, PciConfigMmio, VirtioPciDevice};
use vm_memory::GuestAddress;

struct NullSink;
impl MsiSink for NullSink {
    fn route(&self, _vector: u16, _msg: hv::MsiMessage) {}
    fn fire(&self, _vector: u16) {}
}

const BAR: u64 = 0xc000_0000;

fuzz_target!(|data: &[u8]| {
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]) else {
        return;
    };
    let rng = Box::new(virtio::rng::Rng::new("fuzz"));
    let Ok(dev) = VirtioPciDevice::new("fuzz", rng, mem, BAR, Box::new(NullSink)) else {
        return;
    };
    let dev = Arc::new(Mutex::new(dev));
    let bus = PciBus::new();
    if bus.add(dev.clone()).is_err() {
        return;
    }
    let mut cfg_io = PciConfigIo::new(bus.clone());
    let mut cfg_mmio = PciConfigMmio::new(bus);
    for rec in data.chunks_exact(12) {
        let size = [1usize, 2, 4, 8, 3, 0, 16, 4][usize::from(rec[1] & 7)];
        let off32 = u32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]);
        let value = [rec[6], rec[7], rec[8], rec[9], rec[10], rec[11], rec[6], rec[7]];
        let mut buf = vec![0u8; size];
        let wdata: Vec<u8> = value.iter().cycle().take(size).copied().collect();
        let mut d = dev.lock().unwrap_or_else(|p| p.into_inner());
        match rec[0] % 8 {
            // Mostly the common configuration and the notify area, where the state is.
            0 => BusDevice::write(&mut *d, u64::from(off32 % 0x40), &wdata),
            1 => BusDevice::read(&mut *d, u64::from(off32 % 0x40), &mut buf),
            2 => BusDevice::write(&mut *d, u64::from(off32 % 0x8000), &wdata),
            3 => BusDevice::read(&mut *d, u64::from(off32), &mut buf),
            4 => d.config_write((off32 % 80) as usize, u64::from(rec[1] >> 4), &wdata),
            5 => {
                drop(d);
                cfg_io.write(u64::from(off32 % 8), &wdata);
                cfg_io.read(u64::from(rec[1] % 9), &mut buf);
            }
            6 => {
                drop(d);
                cfg_mmio.write(u64::from(off32 % 0x10_0000), &wdata);
                cfg_mmio.read(u64::from(off32), &mut buf);
            }
            _ => {
                let _ = d.config_read((off32 % 70) as usize);
            }
        }
    }
});
