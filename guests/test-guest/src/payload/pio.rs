//! `pio`: unmapped port reads give all-ones, unmapped port writes and MMIO accesses inside
//! the PCI hole are ignored (reads all-ones) and the VM keeps running.

use super::Outcome;
use crate::io;
use crate::out::fact;

const UNMAPPED_PORT: u16 = 0x510;
const UNMAPPED_MMIO: u64 = 0xd000_0000;

pub fn run() -> Outcome {
    io::outb(UNMAPPED_PORT, 0x5a);
    io::outw(0x1234, 0xbeef);
    io::outl(0xcf0, 0xdead_beef);
    let b = io::inb(UNMAPPED_PORT);
    let w = io::inw(UNMAPPED_PORT);
    let l = io::inl(UNMAPPED_PORT);
    fact("unmapped_pio").hex(u64::from(b)).nl();
    fact("unmapped_pio16").hex(u64::from(w)).nl();
    fact("unmapped_pio32").hex(u64::from(l)).nl();

    let before = io::mmio_read32(UNMAPPED_MMIO);
    io::mmio_write32(UNMAPPED_MMIO, 0x1234_5678);
    let after = io::mmio_read32(UNMAPPED_MMIO);
    let byte = io::mmio_read8(UNMAPPED_MMIO + 3);
    fact("unmapped_mmio").hex(u64::from(after)).nl();
    fact("unmapped_mmio_before_write")
        .hex(u64::from(before))
        .nl();
    fact("unmapped_mmio8").hex(u64::from(byte)).nl();

    if b != 0xff || w != 0xffff || l != 0xffff_ffff {
        return Err("unmapped port read is not all-ones");
    }
    if before != 0xffff_ffff || after != 0xffff_ffff || byte != 0xff {
        return Err("unmapped MMIO read is not all-ones");
    }
    Ok(())
}
