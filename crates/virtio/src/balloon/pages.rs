//! Guest page ranges handed back to the host: the 4 KiB page frame numbers of the inflate
//! and deflate queues, checked against guest memory and merged into ranges, and the discard
//! of a range (`madvise(MADV_DONTNEED)` on the host mapping, which frees the host pages; an
//! anonymous mapping reads back zeros, a snapshot's private file mapping the file's bytes).

use arch::GuestMemoryMmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The balloon's page size, whatever the guest's own page size (virtio spec 5.5.6).
pub const PAGE_SIZE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;

/// A run of guest-physical memory inside one memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub addr: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscardError {
    #[error("range {addr:#x}+{len:#x} is not 4 KiB aligned")]
    Unaligned { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} is not inside one guest memory region")]
    OutOfRange { addr: u64, len: u64 },
    #[error("madvise failed: errno {0}")]
    Madvise(i32),
}

/// Decodes little-endian 32-bit PFNs; a trailing partial PFN is dropped. Returns the PFNs
/// and whether bytes were left over.
pub fn decode_pfns(bytes: &[u8]) -> (Vec<u32>, bool) {
    let chunks = bytes.chunks_exact(4);
    let odd = !chunks.remainder().is_empty();
    let pfns = chunks
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (pfns, odd)
}

/// The start address of the region holding `addr`, if any.
fn region_start(mem: &GuestMemoryMmap, addr: u64) -> Option<u64> {
    mem.find_region(GuestAddress(addr))
        .map(|r| r.start_addr().0)
}

/// Turns PFNs (any order, repeats allowed) into sorted, merged ranges inside guest memory.
/// Returns the ranges and how many PFNs were outside guest memory (dropped).
pub fn pfn_ranges(mem: &GuestMemoryMmap, pfns: &[u32]) -> (Vec<Range>, usize) {
    let mut sorted = pfns.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<Range> = Vec::new();
    let mut last_region = None;
    let mut bad = 0;
    for pfn in sorted {
        let addr = u64::from(pfn) << PAGE_SHIFT;
        let Some(region) = region_start(mem, addr) else {
            bad += 1;
            continue;
        };
        // the page must lie wholly in the region (regions are page aligned, but check)
        if region_start(mem, addr + PAGE_SIZE - 1) != Some(region) {
            bad += 1;
            continue;
        }
        match ranges.last_mut() {
            Some(r) if last_region == Some(region) && r.addr + r.len == addr => r.len += PAGE_SIZE,
            _ => ranges.push(Range {
                addr,
                len: PAGE_SIZE,
            }),
        }
        last_region = Some(region);
    }
    (ranges, bad)
}

/// Frees the host pages behind `range`; the guest reads zeros (or, after a snapshot restore,
/// the snapshot's bytes) there next time. The range is checked here: it must be 4 KiB
/// aligned and inside one region of `mem`.
pub fn discard(mem: &GuestMemoryMmap, range: Range) -> Result<(), DiscardError> {
    let Range { addr, len } = range;
    if addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        return Err(DiscardError::Unaligned { addr, len });
    }
    let out = DiscardError::OutOfRange { addr, len };
    if len == 0 {
        return Ok(());
    }
    let (region, offset) = mem.to_region_addr(GuestAddress(addr)).ok_or(out)?;
    let end = offset.0.checked_add(len).ok_or(out)?;
    if end > region.len() {
        return Err(out);
    }
    let host = region.get_host_address(offset).map_err(|_| out)?;
    let len = usize::try_from(len).map_err(|_| out)?;
    // SAFETY: [host, host + len) lies inside the live mapping of one guest memory region
    // (checked above), which `mem` keeps mapped. MADV_DONTNEED only replaces the pages'
    // contents (zero or file pages on next touch); guest memory is only ever accessed
    // through volatile copies, never through Rust references that assume its contents.
    let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(DiscardError::Madvise(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        // two regions with a hole, like RAM below and above the PCI window
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x20_0000), 0x10_0000),
        ])
        .unwrap()
    }

    #[test]
    fn pfns_decode_little_endian_and_drop_a_partial_one() {
        assert_eq!(decode_pfns(&[1, 0, 0, 0, 2, 0, 0, 0]), (vec![1, 2], false));
        assert_eq!(decode_pfns(&[1, 0, 0, 0, 9, 9]), (vec![1], true));
        assert_eq!(decode_pfns(&[]), (vec![], false));
    }

    #[test]
    fn pfns_merge_within_a_region_and_out_of_range_ones_are_dropped() {
        let m = mem();
        // 0xff is the last page of region 0, 0x200 the first of region 1: not merged
        let (r, bad) = pfn_ranges(&m, &[3, 1, 2, 2, 0xff, 0x200, 0x201, 0x150, u32::MAX]);
        assert_eq!(
            r,
            [
                Range {
                    addr: 0x1000,
                    len: 0x3000
                },
                Range {
                    addr: 0xff000,
                    len: 0x1000
                },
                Range {
                    addr: 0x20_0000,
                    len: 0x2000
                },
            ]
        );
        assert_eq!(bad, 2);
    }

    #[test]
    fn discard_zeroes_pages_and_checks_the_range() {
        let m = mem();
        m.write_obj(0xdead_beef_u32, GuestAddress(0x2000)).unwrap();
        m.write_obj(0x1234_u32, GuestAddress(0x3000)).unwrap();
        discard(
            &m,
            Range {
                addr: 0x2000,
                len: 0x1000,
            },
        )
        .unwrap();
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x2000)).unwrap(), 0);
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x3000)).unwrap(), 0x1234);
        let bad = [
            (0x2001, 0x1000),
            (0x2000, 0x800),
            (0xff000, 0x2000),   // runs into the hole
            (0x15_0000, 0x1000), // in the hole
            (0x30_0000, 0x1000), // past the end
            (0x2f_f000, !0xfff), // wraps around
        ];
        for (addr, len) in bad {
            assert!(
                discard(&m, Range { addr, len }).is_err(),
                "{addr:#x}+{len:#x}"
            );
        }
    }
}
