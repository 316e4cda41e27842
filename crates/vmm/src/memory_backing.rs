//! How guest RAM is backed (`kapsel run --memory-backing prealloc,lock,hugepages`), so a
//! memory guarantee is real: `prealloc` faults every page in before the guest starts
//! (`MADV_POPULATE_WRITE`, or a write per page on kernels without it), `lock` pins it in RAM
//! (`mlock`, which also faults it in), `hugepages` maps it from the host's reserved 2 MiB
//! pages (`MAP_HUGETLB`), refused with one line when too few are free.

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use arch::GuestMemoryMmap;

/// The backing options; all off is plain lazily backed anonymous memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBacking {
    #[serde(default)]
    pub prealloc: bool,
    #[serde(default)]
    pub lock: bool,
    #[serde(default)]
    pub hugepages: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("--memory-backing: unknown option '{0}' (known: prealloc, lock, hugepages)")]
    Unknown(String),
    #[error(
        "hugepages: guest memory of {needed_mib} MiB needs that many MiB of free {page_kib} KiB \
         hugepages, {free_mib} MiB are free (reserve more with /proc/sys/vm/nr_hugepages)"
    )]
    NoHugepages {
        needed_mib: u64,
        free_mib: u64,
        page_kib: u64,
    },
    #[error("hugepages: guest memory regions must be multiples of {page_kib} KiB")]
    Unaligned { page_kib: u64 },
    #[error("cannot map {size} bytes of guest memory from hugepages")]
    Map {
        size: usize,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("cannot lock {size} bytes of guest memory in RAM (RLIMIT_MEMLOCK or the cgroup's memory limit)")]
    Lock {
        size: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("guest memory layout: {0}")]
    Layout(String),
}

impl MemoryBacking {
    /// Parses `prealloc`, `lock`, `hugepages`, comma-separated (empty: none).
    pub fn parse(s: &str) -> Result<Self, BackingError> {
        let mut b = MemoryBacking::default();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "prealloc" => b.prealloc = true,
                "lock" => b.lock = true,
                "hugepages" => b.hugepages = true,
                _ => return Err(BackingError::Unknown(word.to_string())),
            }
        }
        Ok(b)
    }
}

/// `(free bytes, page size)` of the default hugepage pool, from /proc/meminfo text.
fn hugepages_free(meminfo: &str) -> (u64, u64) {
    let field = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let page = field("Hugepagesize:") * 1024;
    (field("HugePages_Free:") * page, page)
}

/// Maps guest RAM from hugepages, after checking enough are free (a hugetlb mapping that
/// runs out faults the guest with SIGBUS later, so the check comes first).
pub fn hugepage_memory(ranges: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, BackingError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (free, page) = hugepages_free(&meminfo);
    let needed: u64 = ranges.iter().map(|(_, len)| *len as u64).sum();
    if page == 0 || free < needed {
        return Err(BackingError::NoHugepages {
            needed_mib: needed >> 20,
            free_mib: free >> 20,
            page_kib: (page >> 10).max(2048),
        });
    }
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        if !(len as u64).is_multiple_of(page) || !addr.0.is_multiple_of(page) {
            return Err(BackingError::Unaligned {
                page_kib: page >> 10,
            });
        }
        let map = MmapRegion::build(
            None,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_HUGETLB,
        )
        .map_err(|source| BackingError::Map { size: len, source })?;
        let region = GuestRegionMmap::new(map, addr)
            .ok_or_else(|| BackingError::Layout(format!("region at {:#x} overflows", addr.0)))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| BackingError::Layout(e.to_string()))
}

/// Faults in (`prealloc`) and/or locks (`lock`) every page of `mem`.
pub fn commit(mem: &GuestMemoryMmap, backing: MemoryBacking) -> Result<(), BackingError> {
    for region in mem.iter() {
        let (ptr, len) = (region.as_ptr(), region.len() as usize);
        if backing.lock {
            // SAFETY: [ptr, ptr+len) is a live mapping owned by `mem`; mlock only pins it.
            if unsafe { libc::mlock(ptr.cast(), len) } != 0 {
                return Err(BackingError::Lock {
                    size: len,
                    source: std::io::Error::last_os_error(),
                });
            }
        } else if backing.prealloc {
            // SAFETY: as above; MADV_POPULATE_WRITE only faults the pages in.
            let populated =
                unsafe { libc::madvise(ptr.cast(), len, libc::MADV_POPULATE_WRITE) } == 0;
            if !populated {
                // kernels before 5.14: touch each page (the memory is still all zeros)
                for off in (0..len).step_by(4096) {
                    // SAFETY: off < len, inside the mapping; a volatile write of the zero
                    // already there forces the page to be allocated.
                    unsafe { std::ptr::write_volatile(ptr.add(off), 0u8) };
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_and_names_unknown_ones() {
        assert_eq!(MemoryBacking::parse("").unwrap(), MemoryBacking::default());
        let b = MemoryBacking::parse("prealloc,lock,hugepages").unwrap();
        assert!(b.prealloc && b.lock && b.hugepages);
        let e = MemoryBacking::parse("prealloc,huge")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'huge'"), "{e}");
    }

    #[test]
    fn reads_the_hugepage_pool() {
        let m = "MemTotal: 1000 kB\nHugePages_Total:      8\nHugePages_Free:       3\nHugepagesize:       2048 kB\n";
        assert_eq!(hugepages_free(m), (3 * (2 << 20), 2 << 20));
        assert_eq!(hugepages_free("MemTotal: 1 kB\n"), (0, 0));
    }

    #[test]
    fn too_few_hugepages_is_one_clear_error() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let (free, _) = hugepages_free(&meminfo);
        // more than is free, whatever this host reserved
        let len = ((free >> 21) + 1) << 21;
        let e = hugepage_memory(&[(GuestAddress(0), len as usize)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nr_hugepages"), "{e}");
    }

    /// Resident pages of the mapping (mincore), not the process RSS other tests move.
    fn resident_pages(mem: &GuestMemoryMmap) -> usize {
        let region = mem.iter().next().unwrap();
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: the range is a live mapping; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(region.as_ptr().cast(), len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn prealloc_and_lock_fault_every_page_in() {
        for backing in [
            MemoryBacking {
                prealloc: true,
                ..Default::default()
            },
            MemoryBacking {
                lock: true,
                ..Default::default()
            },
        ] {
            let size = 64usize << 20;
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap();
            assert_eq!(resident_pages(&mem), 0);
            commit(&mem, backing).unwrap();
            assert_eq!(resident_pages(&mem), size / 4096, "{backing:?}");
        }
    }
}
