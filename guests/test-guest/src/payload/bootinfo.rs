//! `bootinfo`: entry path, command line and memory map, checked against the layout kapsel
//! promises (RAM at 0, the [3 GiB, 4 GiB) PCI hole, sorted non-overlapping entries).

use super::Outcome;
use crate::bootinfo::{BootInfo, MemEntry, MAX_MAP};
use crate::out::fact;

const GIB: u64 = 1 << 30;
const HOLE: core::ops::Range<u64> = 3 * GIB..4 * GIB;

pub fn run(boot: &BootInfo) -> Outcome {
    fact("entry").s(boot.entry.name()).nl();
    fact("boot_info").hex(boot.info_addr).nl();
    fact("cmdline").bytes(boot.cmdline()).nl();
    fact("rsdp").hex(boot.rsdp).nl();
    fact("e820_entries").dec(boot.map_declared).nl();
    for e in boot.map() {
        fact("e820")
            .hex(e.addr)
            .s("-")
            .hex(e.addr.saturating_add(e.size))
            .s(" ")
            .dec(u64::from(e.kind))
            .nl();
    }
    let mut map = [MemEntry::default(); MAX_MAP];
    let mut n = 0;
    for (slot, e) in map.iter_mut().zip(boot.map()) {
        *slot = e;
        n += 1;
    }
    let ram = check_map(&map[..n])?;
    fact("ram_bytes").dec(ram).nl();
    fact("ram_mib").dec(ram >> 20).nl();
    Ok(())
}

/// Checks the memory map and returns the RAM total in bytes.
pub fn check_map(map: &[MemEntry]) -> Result<u64, &'static str> {
    if map.is_empty() {
        return Err("empty memory map");
    }
    let mut ram = 0u64;
    let mut prev_end = 0u64;
    let mut ram_at_zero = false;
    for (i, e) in map.iter().enumerate() {
        let end = e
            .addr
            .checked_add(e.size)
            .ok_or("memory map entry wraps around")?;
        if e.size == 0 {
            return Err("zero-sized memory map entry");
        }
        if i > 0 && e.addr < prev_end {
            return Err("memory map entries unsorted or overlapping");
        }
        prev_end = end;
        if e.kind == 1 {
            if e.addr == 0 {
                ram_at_zero = true;
            }
            if e.addr < HOLE.end && end > HOLE.start {
                return Err("RAM inside the PCI hole [3 GiB, 4 GiB)");
            }
            ram += e.size;
        }
    }
    if !ram_at_zero {
        return Err("no RAM entry at address 0");
    }
    Ok(ram)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: u64, size: u64, kind: u32) -> MemEntry {
        MemEntry { addr, size, kind }
    }

    fn layout(mem: u64) -> std::vec::Vec<MemEntry> {
        let low_end = mem.min(3 * GIB);
        let mut v = vec![
            e(0, 0x9fc00, 1),
            e(0x9fc00, 0x400, 2),
            e(0xe0000, 0x20000, 2),
            e(0x100000, low_end - 0x100000, 1),
        ];
        if mem > 3 * GIB {
            v.push(e(4 * GIB, mem - 3 * GIB, 1));
        }
        v
    }

    #[test]
    fn accepts_the_promised_layout() {
        // RAM total = requested size minus the 0x9fc00..0x100000 gap below 1 MiB.
        let gap = 0x100000 - 0x9fc00;
        assert_eq!(check_map(&layout(128 << 20)), Ok((128 << 20) - gap));
        assert_eq!(check_map(&layout(5 * GIB)), Ok(5 * GIB - gap));
    }

    #[test]
    fn rejects_ram_in_the_hole_and_overlaps() {
        assert!(check_map(&[e(0, 4 * GIB, 1)]).is_err());
        assert!(check_map(&[e(0, 0x1000, 1), e(0x800, 0x1000, 1)]).is_err());
        assert!(check_map(&[e(0x1000, 0x1000, 1)]).is_err());
        assert!(check_map(&[]).is_err());
        assert!(check_map(&[e(0, u64::MAX, 1)]).is_err());
    }
}
