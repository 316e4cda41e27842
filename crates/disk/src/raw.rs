//! A raw image: the file is the disk, byte for byte. Flush is `fdatasync`; discard and
//! write-zeroes use `fallocate` where the filesystem can, zero writes where it cannot.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{DiskError, DiskImage};

#[derive(Debug)]
pub struct RawImage {
    file: File,
    read_only: bool,
    size: u64,
}

impl RawImage {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let file = crate::open_file(path, !read_only)?;
        Self::from_file(file, read_only).map_err(|e| DiskError::io(path, e))
    }

    /// Serves an open file; its length is the disk's size.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(RawImage {
            file,
            read_only,
            size: meta.len(),
        })
    }

    fn check(&self, offset: u64, len: u64, write: bool) -> io::Result<()> {
        if write && self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
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

    fn write_zero_bytes(&self, mut offset: u64, mut left: u64) -> io::Result<()> {
        let zeros = vec![0u8; 64 << 10];
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset)?;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(())
    }
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64, false)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64, true)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len, true)?;
        // Filesystems without hole punching get zeros instead: a discarded range may read
        // back as anything, zeros included.
        if self
            .fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .is_err()
        {
            self.write_zero_bytes(offset, len)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.check(offset, len, true)?;
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        if self.fallocate(mode, offset, len).is_err() {
            self.write_zero_bytes(offset, len)?;
        }
        Ok(())
    }

    fn raw_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_reads_writes_and_zeroes_in_bounds_only() {
        let dir = crate::qcow2::tests::tmpdir("raw");
        let path = dir.join("d.raw");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let img = RawImage::open(&path, false).unwrap();
        assert_eq!(img.size(), 8192);
        img.write_at(&[1, 2, 3], 100).unwrap();
        let mut b = [0u8; 4];
        img.read_at(&mut b, 99).unwrap();
        assert_eq!(b, [7, 1, 2, 3]);
        img.write_zeroes(0, 4096, false).unwrap();
        img.discard(4096, 512).unwrap();
        img.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [0; 4]);
        assert!(img.read_at(&mut b, 8190).is_err());
        assert!(img.write_at(&b, u64::MAX - 1).is_err());
        let ro = RawImage::open(&path, true).unwrap();
        assert!(ro.write_at(&b, 0).is_err());
        assert!(ro.discard(0, 512).is_err());
        assert!(matches!(
            RawImage::open(&dir, false),
            Err(DiskError::NotAFile { .. }) | Err(DiskError::Io { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
