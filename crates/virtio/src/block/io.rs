//! The disk image: a raw file, read and written at request offsets straight from/into guest
//! memory (no bounce buffer), flushed with `fdatasync`, discarded with `fallocate`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use arch::GuestMemoryMmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::request::{Segment, WRITE_ZEROES_UNMAP};
use super::{SECTOR_SHIFT, SECTOR_SIZE};

#[derive(Debug)]
pub struct DiskFile {
    file: File,
    read_only: bool,
    sectors: u64,
}

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    FileToGuest,
    GuestToFile,
}

impl DiskFile {
    /// Opens `path` (read-only when asked); its size, rounded down to whole sectors, is the
    /// disk's capacity.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(
                "not a regular file (raw image files only)",
            ));
        }
        Ok(DiskFile {
            file,
            read_only,
            sectors: meta.len() >> SECTOR_SHIFT,
        })
    }

    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let sectors = file.metadata()?.len() >> SECTOR_SHIFT;
        Ok(DiskFile {
            file,
            read_only,
            sectors,
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
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
        if self.read_only {
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
        let mut offset = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        for &(addr, len) in bufs {
            let slice = mem
                .get_slice(addr, len as usize)
                .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
            let guard = slice.ptr_guard_mut();
            let ptr = guard.as_ptr();
            let mut done = 0usize;
            let len = len as usize;
            while done < len {
                let pos = offset + done as u64;
                // SAFETY: `ptr..ptr+len` is one contiguous slice of guest memory that
                // `get_slice` checked; the mapping lives as long as `mem`, which we borrow.
                // The guest may change the bytes concurrently, which is harmless for
                // pread/pwrite (the kernel copies raw bytes).
                let n = unsafe {
                    let p = ptr.add(done);
                    match dir {
                        Dir::FileToGuest => libc::pread64(
                            self.file.as_raw_fd(),
                            p.cast(),
                            len - done,
                            pos as libc::off64_t,
                        ),
                        Dir::GuestToFile => libc::pwrite64(
                            self.file.as_raw_fd(),
                            p.cast(),
                            len - done,
                            pos as libc::off64_t,
                        ),
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
                done += n as usize;
            }
            offset += len as u64;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn fallocate(&self, mode: libc::c_int, seg: &Segment) -> io::Result<()> {
        let offset = seg.sector * SECTOR_SIZE;
        let len = u64::from(seg.sectors) * SECTOR_SIZE;
        // SAFETY: fallocate on an owned fd with plain integer arguments.
        let rc = unsafe {
            libc::fallocate64(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off64_t,
                len as libc::off64_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Deallocates the ranges (they read back as zeros on a raw file).
    pub fn discard(&self, segs: &[Segment]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        for s in segs {
            // Filesystems without hole punching (ramfs) get zeros instead: a discarded
            // range may read back as anything, zeros included.
            if self
                .fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, s)
                .is_err()
            {
                self.write_zero_bytes(s)?;
            }
        }
        Ok(())
    }

    /// Zeroes the ranges: punches holes when the driver allows unmapping, else
    /// `FALLOC_FL_ZERO_RANGE`, else plain zero writes.
    pub fn write_zeroes(&self, segs: &[Segment]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        for s in segs {
            let first = if s.flags & WRITE_ZEROES_UNMAP != 0 {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            if self.fallocate(first, s).is_err() {
                self.write_zero_bytes(s)?;
            }
        }
        Ok(())
    }

    fn write_zero_bytes(&self, s: &Segment) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let zeros = vec![0u8; 64 << 10];
        let mut offset = s.sector * SECTOR_SIZE;
        let mut left = u64::from(s.sectors) * SECTOR_SIZE;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset)?;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
