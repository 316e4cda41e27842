//! Guest memory to and from the snapshot's memory file: regions back to back, all-zero pages
//! left as holes (the file is sparse), mapped back privately so restore is copy-on-write.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use arch::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

const PAGE: usize = 4096;
const CHUNK: usize = 1 << 20;

/// Where each guest RAM region sits in the memory file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    pub regions: Vec<MemoryRegionInfo>,
    pub file_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionInfo {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

fn is_zero(page: &[u8]) -> bool {
    // SAFETY: reinterpreting initialised bytes as u64 words is valid for any bit pattern;
    // align_to hands back the unaligned head and tail separately.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn pwrite_all(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writes from a valid buffer of `buf.len()` bytes to an open file.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
        }
        buf = &buf[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// Writes every region of `mem` into `file`; returns the layout. The guest must be paused
/// (nothing may write guest memory while it is read).
pub fn dump(mem: &GuestMemoryMmap, file: &mut File) -> std::io::Result<MemoryLayout> {
    let mut layout = MemoryLayout::default();
    let mut offset = 0u64;
    for region in mem.iter() {
        let size = region.len();
        layout.regions.push(MemoryRegionInfo {
            guest_addr: region.start_addr().0,
            size,
            file_offset: offset,
        });
        let host = region.as_ptr();
        // SAFETY: `host` is the start of this region's live mapping of `size` bytes, owned by
        // `mem` for the duration of this call; the vCPUs are paused, so the bytes are only
        // read here. Guest memory holds no Rust references, so a shared slice is sound.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, size as usize) };
        // Anonymous memory the guest never touched reads as zeros: skip it without reading
        // (a read would fault in the zero page, page by page). Memory mapped from a snapshot
        // file is different: its untouched pages hold the file's data.
        let resident = if region.file_offset().is_none() {
            touched_pages(host, size as usize)
        } else {
            None
        };
        write_sparse(file, bytes, offset, resident.as_deref())?;
        offset += size;
    }
    file.set_len(offset)?;
    layout.file_size = offset;
    Ok(layout)
}

/// Which pages of the anonymous mapping at `host` the guest ever touched, one flag per page,
/// from `/proc/self/pagemap` (present or swapped out); `None` when it cannot be read (then
/// every page is read). Untouched anonymous pages read as zeros.
fn touched_pages(host: *mut u8, size: usize) -> Option<Vec<bool>> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let pages = size.div_ceil(PAGE);
    let mut raw = vec![0u8; pages * 8];
    let start = (host as usize / PAGE) as u64 * 8;
    let mut done = 0;
    while done < raw.len() {
        let n = pagemap
            .read_at(&mut raw[done..], start + done as u64)
            .ok()?;
        if n == 0 {
            return None;
        }
        done += n;
    }
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let mut b = [0u8; 8];
                b.copy_from_slice(e);
                u64::from_le_bytes(b) & (PRESENT | SWAPPED) != 0
            })
            .collect(),
    )
}

/// Writes `bytes` at `offset`, leaving all-zero pages (and pages `resident` marks untouched)
/// as holes; runs of non-zero pages go in one write each.
fn write_sparse(
    file: &File,
    bytes: &[u8],
    offset: u64,
    resident: Option<&[bool]>,
) -> std::io::Result<()> {
    let pages = bytes.len().div_ceil(PAGE);
    let page = |i: usize| &bytes[i * PAGE..((i + 1) * PAGE).min(bytes.len())];
    let has_data =
        |i: usize| resident.is_none_or(|r| r.get(i).copied().unwrap_or(true)) && !is_zero(page(i));
    let mut i = 0;
    while i < pages {
        if !has_data(i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < pages && has_data(i) && (i - start) * PAGE < CHUNK {
            i += 1;
        }
        let end = (i * PAGE).min(bytes.len());
        pwrite_all(
            file,
            &bytes[start * PAGE..end],
            offset + (start * PAGE) as u64,
        )?;
    }
    Ok(())
}

/// Maps `file` per `layout` as private guest memory.
pub fn map(file: &File, layout: &MemoryLayout) -> Result<GuestMemoryMmap, String> {
    let mut regions = Vec::with_capacity(layout.regions.len());
    for r in &layout.regions {
        let fd = file.try_clone().map_err(|e| e.to_string())?;
        let mapping = MmapRegionBuilder::new(r.size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::from_arc(Arc::new(fd), r.file_offset))
            .build()
            .map_err(|e| e.to_string())?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| format!("region at {:#x} overflows", r.guest_addr))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn dump_and_map_roundtrip_with_holes() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 8 * PAGE),
            (GuestAddress(1 << 30), 4 * PAGE),
        ])
        .unwrap();
        mem.write_obj(0xdead_beef_u64, GuestAddress(3 * PAGE as u64))
            .unwrap();
        mem.write_obj(0x1234_u32, GuestAddress((1 << 30) + 5))
            .unwrap();
        let path = std::env::temp_dir().join(format!("kapsel-memfile-{}", std::process::id()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let layout = dump(&mem, &mut f).unwrap();
        assert_eq!(layout.file_size, 12 * PAGE as u64);
        let restored = map(&f, &layout).unwrap();
        assert_eq!(
            restored
                .read_obj::<u64>(GuestAddress(3 * PAGE as u64))
                .unwrap(),
            0xdead_beef
        );
        assert_eq!(
            restored
                .read_obj::<u32>(GuestAddress((1 << 30) + 5))
                .unwrap(),
            0x1234
        );
        // Private mapping: writes do not reach the file.
        restored.write_obj(7u64, GuestAddress(0)).unwrap();
        let again = map(&f, &layout).unwrap();
        assert_eq!(again.read_obj::<u64>(GuestAddress(0)).unwrap(), 0);
        // A snapshot of restored (file-backed) memory keeps the file's data, resident or not.
        let path2 = path.with_extension("again");
        let mut f2 = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path2)
            .unwrap();
        let layout2 = dump(&again, &mut f2).unwrap();
        let third = map(&f2, &layout2).unwrap();
        assert_eq!(
            third.read_obj::<u32>(GuestAddress((1 << 30) + 5)).unwrap(),
            0x1234
        );
        std::fs::remove_file(&path2).unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
