//! The disk image behind the device: any [`disk::DiskImage`]. A raw file is read and written
//! at request offsets straight from/into guest memory (no bounce buffer); other formats
//! (qcow2) go through a bounded bounce buffer and the image's own `read_at`/`write_at`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use arch::GuestMemoryMmap;
use disk::DiskImage;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::request::{Segment, WRITE_ZEROES_UNMAP};
use super::{SECTOR_SHIFT, SECTOR_SIZE};

/// Largest bounce buffer for images that are not raw files (qcow2).
const BOUNCE_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub struct DiskFile {
    image: Box<dyn DiskImage>,
    sectors: u64,
}

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    FileToGuest,
    GuestToFile,
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// A segment's byte range.
fn byte_range(s: &Segment) -> io::Result<(u64, u64)> {
    let offset = s.sector.checked_mul(SECTOR_SIZE).ok_or_else(einval)?;
    Ok((offset, u64::from(s.sectors) * SECTOR_SIZE))
}

impl DiskFile {
    /// Opens `path` as a raw image (read-only when asked); its size, rounded down to whole
    /// sectors, is the disk's capacity.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let image = disk::raw::RawImage::open(path, read_only).map_err(|e| match e {
            disk::DiskError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })?;
        Ok(Self::from_image(Box::new(image)))
    }

    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let image = disk::raw::RawImage::from_file(file, read_only)?;
        Ok(Self::from_image(Box::new(image)))
    }

    /// Serves any disk image (raw or qcow2).
    pub fn from_image(image: Box<dyn DiskImage>) -> Self {
        let sectors = image.size() >> SECTOR_SHIFT;
        DiskFile { image, sectors }
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.image.read_only()
    }

    /// Reads sectors starting at `sector` into the guest buffers `bufs`.
    pub fn read(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> io::Result<()> {
        self.transfer(mem, sector, bufs, Dir::FileToGuest)
    }

    /// Writes the guest buffers `bufs` to the disk starting at `sector`.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> io::Result<()> {
        if self.read_only() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.transfer(mem, sector, bufs, Dir::GuestToFile)
    }

    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        bufs: &[(GuestAddress, u32)],
        dir: Dir,
    ) -> io::Result<()> {
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(einval)?;
        match self.image.raw_file() {
            Some(file) => transfer_direct(file, mem, offset, bufs, dir),
            None => self.transfer_bounced(mem, offset, bufs, dir),
        }
    }

    /// Through a bounded bounce buffer, for images whose offsets are not the file's.
    fn transfer_bounced(
        &self,
        mem: &GuestMemoryMmap,
        mut offset: u64,
        bufs: &[(GuestAddress, u32)],
        dir: Dir,
    ) -> io::Result<()> {
        let efault = |_| io::Error::from_raw_os_error(libc::EFAULT);
        let mut bounce = Vec::new();
        for &(addr, len) in bufs {
            let mut done = 0usize;
            let len = len as usize;
            while done < len {
                let n = (len - done).min(BOUNCE_BYTES);
                bounce.resize(n, 0);
                let at = addr
                    .0
                    .checked_add(done as u64)
                    .map(GuestAddress)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
                match dir {
                    Dir::FileToGuest => {
                        self.image.read_at(&mut bounce, offset)?;
                        mem.write_slice(&bounce, at).map_err(efault)?;
                    }
                    Dir::GuestToFile => {
                        mem.read_slice(&mut bounce, at).map_err(efault)?;
                        self.image.write_at(&bounce, offset)?;
                    }
                }
                done += n;
                offset += n as u64;
            }
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        self.image.flush()
    }

    /// Deallocates the ranges (they read back as zeros).
    pub fn discard(&self, segs: &[Segment]) -> io::Result<()> {
        if self.read_only() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        for s in segs {
            let (offset, len) = byte_range(s)?;
            self.image.discard(offset, len)?;
        }
        Ok(())
    }

    /// Zeroes the ranges, releasing their storage when the driver allows unmapping.
    pub fn write_zeroes(&self, segs: &[Segment]) -> io::Result<()> {
        if self.read_only() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        for s in segs {
            let (offset, len) = byte_range(s)?;
            self.image
                .write_zeroes(offset, len, s.flags & WRITE_ZEROES_UNMAP != 0)?;
        }
        Ok(())
    }
}

/// Straight between a raw file and guest memory (no bounce buffer): one `preadv`/`pwritev`
/// over all of a request's guest buffers (a 1 MiB request is up to 256 of them), repeated
/// only for short transfers.
fn transfer_direct(
    file: &File,
    mem: &GuestMemoryMmap,
    offset: u64,
    bufs: &[(GuestAddress, u32)],
    dir: Dir,
) -> io::Result<()> {
    let mut iovs = Vec::with_capacity(bufs.len());
    // the guards keep the slices' pointers valid while the iovecs are in use
    let mut guards = Vec::with_capacity(bufs.len());
    for &(addr, len) in bufs {
        if len == 0 {
            continue;
        }
        let slice = mem
            .get_slice(addr, len as usize)
            .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
        let guard = slice.ptr_guard_mut();
        iovs.push(libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: len as usize,
        });
        guards.push(guard);
    }
    let mut pos = offset;
    let mut first = 0usize;
    while first < iovs.len() {
        let rest = &iovs[first..];
        let count = rest.len().min(IOV_MAX) as libc::c_int;
        let at = libc::off64_t::try_from(pos).map_err(|_| einval())?;
        // SAFETY: every iovec points into a guest-memory slice that `get_slice` bounds-checked
        // and whose guard in `guards` lives until the end of this function; `count` iovecs of
        // `rest` exist. The guest may change the bytes concurrently, which is harmless for
        // preadv/pwritev (the kernel copies raw bytes).
        let n = unsafe {
            match dir {
                Dir::FileToGuest => libc::preadv64(file.as_raw_fd(), rest.as_ptr(), count, at),
                Dir::GuestToFile => libc::pwritev64(file.as_raw_fd(), rest.as_ptr(), count, at),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            // Past the end of the file (it shrank under us).
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut n = n as usize;
        pos += n as u64;
        // drop the iovecs done, shorten a partly done one
        while n > 0 {
            let iov = &mut iovs[first];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                first += 1;
            } else {
                // SAFETY: `n < iov_len`, so the advanced pointer stays inside the same slice.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n).cast() };
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
    drop(guards);
    Ok(())
}

/// Linux's limit on iovecs per call (UIO_MAXIOV).
const IOV_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::{Read, Seek, Write};
    use vm_memory::Bytes;

    fn tmp_disk(sectors: u64) -> (File, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("kapsel-blk-{}-{}", std::process::id(), sectors));
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / 512) as u8)
            .collect();
        f.write_all(&data).unwrap();
        f.rewind().unwrap();
        (f, path)
    }

    #[test]
    fn read_write_discard_roundtrip() {
        let (f, path) = tmp_disk(16);
        let disk = DiskFile::from_file(f.try_clone().unwrap(), false).unwrap();
        assert_eq!(disk.sectors(), 16);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        disk.read(
            &mem,
            3,
            &[(GuestAddress(0x1000), 512), (GuestAddress(0x3000), 512)],
        )
        .unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 3);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 4);
        mem.write_slice(&[0xaa; 512], GuestAddress(0x5000)).unwrap();
        disk.write(&mem, 1, &[(GuestAddress(0x5000), 512)]).unwrap();
        disk.flush().unwrap();
        disk.write_zeroes(&[Segment {
            sector: 2,
            sectors: 1,
            flags: 0,
        }])
        .unwrap();
        disk.discard(&[Segment {
            sector: 5,
            sectors: 1,
            flags: 0,
        }])
        .unwrap();
        let mut all = Vec::new();
        let mut f = f;
        f.rewind().unwrap();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(all[512], 0xaa);
        assert_eq!(all[2 * 512], 0);
        assert_eq!(all[5 * 512 + 7], 0);
        assert_eq!(all[6 * 512], 6);
        // Guest buffers outside memory fail cleanly.
        assert!(disk.read(&mem, 0, &[(GuestAddress(0xff00), 512)]).is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn scattered_buffers_move_in_order_and_past_the_end_fails() {
        // one request over many uneven buffers (one preadv/pwritev): every byte lands in order
        // (24 sectors: tmp_disk's file name is per size, and tests run in parallel)
        let (f, path) = tmp_disk(24);
        let disk = DiskFile::from_file(f.try_clone().unwrap(), false).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        let lens = [100u32, 412, 0, 1, 1535, 512, 1536];
        let bufs: Vec<(GuestAddress, u32)> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (GuestAddress(0x1000 * (i as u64 + 1) + 3), l))
            .collect();
        disk.read(&mem, 1, &bufs).unwrap();
        let mut expect = 512u64;
        for &(addr, len) in &bufs {
            for k in 0..u64::from(len) {
                let got = mem.read_obj::<u8>(GuestAddress(addr.0 + k)).unwrap();
                assert_eq!(got, ((expect + k) / 512) as u8, "byte {}", expect + k);
            }
            expect += u64::from(len);
        }
        // write them back one sector further on and compare the file
        disk.write(&mem, 0, &bufs).unwrap();
        let mut all = Vec::new();
        let mut f = f;
        f.rewind().unwrap();
        f.read_to_end(&mut all).unwrap();
        for (i, &b) in all[..4096].iter().enumerate() {
            assert_eq!(b, ((i + 512) / 512) as u8, "file byte {i}");
        }
        // a request reaching past the end of the file is an error, not a hang or a panic
        assert!(disk.read(&mem, 21, &bufs).is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn read_only_disk_refuses_changes() {
        let (f, path) = tmp_disk(4);
        let disk = DiskFile::from_file(f, true).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert!(disk.write(&mem, 0, &[(GuestAddress(0), 512)]).is_err());
        assert!(disk
            .discard(&[Segment {
                sector: 0,
                sectors: 1,
                flags: 0
            }])
            .is_err());
        assert!(disk
            .write_zeroes(&[Segment {
                sector: 0,
                sectors: 1,
                flags: 0
            }])
            .is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn qcow2_overlay_serves_guest_buffers() {
        let dir = std::env::temp_dir().join(format!("kapsel-blk-qcow2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base: Vec<u8> = (0..64 * SECTOR_SIZE).map(|i| (i / 512) as u8).collect();
        std::fs::write(dir.join("base.raw"), &base).unwrap();
        let top = dir.join("top.qcow2");
        disk::create(
            &top,
            &disk::CreateOptions {
                backing: Some(("base.raw".into(), disk::Format::Raw)),
                cluster_bits: 12,
                ..Default::default()
            },
        )
        .unwrap();
        let disk = DiskFile::from_image(disk::open(&top, disk::Format::Qcow2, false).unwrap());
        assert_eq!(disk.sectors(), 64);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xaa; 1024], GuestAddress(0x5000))
            .unwrap();
        disk.write(&mem, 7, &[(GuestAddress(0x5000), 1024)])
            .unwrap();
        disk.write_zeroes(&[Segment {
            sector: 16,
            sectors: 8,
            flags: WRITE_ZEROES_UNMAP,
        }])
        .unwrap();
        disk.flush().unwrap();
        disk.read(&mem, 6, &[(GuestAddress(0x1000), 2048)]).unwrap();
        let mut got = [0u8; 2048];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got[0], 6);
        assert!(got[512..1536].iter().all(|&b| b == 0xaa));
        assert_eq!(got[1536], 9);
        disk.read(&mem, 16, &[(GuestAddress(0x1000), 512)]).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0);
        assert!(disk.read(&mem, 0, &[(GuestAddress(0xff00), 512)]).is_err());
        assert_eq!(std::fs::read(dir.join("base.raw")).unwrap(), base);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
