//! Guest RAM regions and the e820 memory map derived from the layout.

use crate::layout::*;

/// The kind of an e820 / PVH memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Ram = 1,
    Reserved = 2,
}

/// One entry of the memory map handed to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

/// The guest RAM regions (guest address, size) for `mem_size` bytes: one below the 32-bit
/// hole and, when needed, one from 4 GiB on.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MEM_32BIT_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MEM_32BIT_GAP_START),
            (RAM_64BIT_START, mem_size - MEM_32BIT_GAP_START),
        ]
    }
}

/// The end of RAM below 4 GiB.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MEM_32BIT_GAP_START)
}

/// The memory map (e820) for a guest with `mem_size` bytes of RAM, sorted by address.
/// `mem_size` must be at least [`MIN_MEMORY`].
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let ram = |addr, size| MemoryMapEntry {
        addr,
        size,
        kind: MemoryKind::Ram,
    };
    let reserved = |addr, size| MemoryMapEntry {
        addr,
        size,
        kind: MemoryKind::Reserved,
    };
    let mut map = vec![
        ram(0, EBDA_START),
        reserved(EBDA_START, 0xa0000 - EBDA_START),
        reserved(ACPI_START, HIMEM_START - ACPI_START),
        ram(HIMEM_START, low_ram_end(mem_size) - HIMEM_START),
    ];
    if mem_size > MEM_32BIT_GAP_START {
        map.push(ram(RAM_64BIT_START, mem_size - MEM_32BIT_GAP_START));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram_total(map: &[MemoryMapEntry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_has_one_region_and_no_high_ram() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        let map = memory_map(128 << 20);
        assert_eq!(
            map.last().unwrap().addr + map.last().unwrap().size,
            128 << 20
        );
        // RAM minus the hole between the EBDA and 1 MiB.
        assert_eq!(ram_total(&map), (128 << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_guest_skips_the_pci_hole() {
        let size = 5u64 << 30;
        assert_eq!(ram_regions(size), vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
        let map = memory_map(size);
        assert!(map.iter().all(|e| e.kind != MemoryKind::Ram
            || e.addr + e.size <= MEM_32BIT_GAP_START
            || e.addr >= RAM_64BIT_START));
        assert_eq!(ram_total(&map), size - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn map_is_sorted_and_disjoint() {
        for size in [64u64 << 20, 3 << 30, (3 << 30) + 4096, 16 << 30] {
            let map = memory_map(size);
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{size}: {w:?}");
            }
        }
    }
}
