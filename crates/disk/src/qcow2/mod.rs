//! qcow2 images, versions 2 and 3.
//!
//! Guest offsets map through a two-level table: the L1 table (kept in memory) points at L2
//! tables, whose entries point at data clusters; unallocated clusters read from the backing
//! image (or as zeros), zero clusters (v3) read as zeros, compressed clusters are inflated.
//! Every cluster in use has a reference count of 1 in the refcount blocks, reached through
//! the refcount table. New clusters are appended at the end of the file.
//!
//! Durability: data is written in place right away; changed L2 tables, refcount blocks and
//! L1 entries stay in [`Metadata`]'s write-back cache until a flush, which writes them in a
//! safe order, each step fdatasync'ed before the next: refcounts (and the guest's data),
//! then L2 tables, then L1 entries, then the refcount decrements of freed clusters. A crash
//! in between at worst leaks clusters; it never leaves a table pointing at a cluster whose
//! refcount is zero or whose data is not on disk.
//!
//! Hostile images: every offset read from the file is checked (alignment, range) before use,
//! every table read is one cluster at most, and the L1 and refcount tables are read only when
//! the file really holds them; a bad entry fails that request with `InvalidData`.
//!
//! - [`header`]: the header and its extensions.
//! - [`metadata`]: tables, refcounts, allocation and the ordered flush.
//! - [`fold`]: folding a backing layer into its overlay ([`fold_backing`]).

mod fold;
pub mod header;
mod metadata;

pub use fold::{fold_backing, FoldOutcome};

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use header::{
    Header, INCOMPAT_COMPRESSION, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY,
    INCOMPAT_EXTL2,
};
use metadata::{Cluster, Metadata};

use crate::{DiskError, DiskImage, Format};

/// Largest L1 table accepted (as QEMU: 32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted (as QEMU: 8 MiB).
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

pub struct Qcow2Image {
    path: PathBuf,
    size: u64,
    read_only: bool,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish()
    }
}

struct Inner {
    meta: Metadata,
    backing: Option<Box<dyn DiskImage>>,
    /// The last compressed cluster inflated: (its L2 entry, its bytes).
    inflated: Option<(u64, Vec<u8>)>,
}

fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads and checks the header of the qcow2 image in `file`.
fn header_of(file: &File, path: &Path, file_len: u64) -> Result<Header, DiskError> {
    let io_err = |e| DiskError::io(path, e);
    let corrupt_err = |what: String| DiskError::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let mut first = vec![0u8; (header::V2_HEADER_LEN as u64).min(file_len) as usize];
    file.read_exact_at(&mut first, 0).map_err(io_err)?;
    if first.len() < 4 || first[..4] != crate::QCOW2_MAGIC {
        return Err(DiskError::NotQcow2 {
            path: path.to_path_buf(),
        });
    }
    let cluster_bits = header::peek_cluster_bits(&first).map_err(corrupt_err)?;
    let mut hbuf = vec![0u8; (1u64 << cluster_bits).min(file_len) as usize];
    file.read_exact_at(&mut hbuf, 0).map_err(io_err)?;
    Header::parse(&hbuf).map_err(corrupt_err)
}

/// The header of the qcow2 image at `path` (for describing it; opening checks more).
pub fn read_header(path: &Path) -> Result<Header, DiskError> {
    let file = crate::open_file(path, false)?;
    let len = file.metadata().map_err(|e| DiskError::io(path, e))?.len();
    header_of(&file, path, len)
}

impl Qcow2Image {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        Self::open_at_depth(path, read_only, 0)
    }

    pub(crate) fn open_at_depth(
        path: &Path,
        read_only: bool,
        depth: usize,
    ) -> Result<Self, DiskError> {
        let io_err = |e| DiskError::io(path, e);
        let corrupt_err = |what: String| DiskError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let unsupported = |what: String| DiskError::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let file = crate::open_file(path, !read_only)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let h = header_of(&file, path, file_len)?;

        if h.crypt_method != 0 {
            return Err(unsupported(format!(
                "encrypted (crypt_method {}); kapsel does not decrypt images",
                h.crypt_method
            )));
        }
        let known = [
            (
                INCOMPAT_DIRTY,
                "dirty (not closed cleanly with lazy refcounts: run `qemu-img check -r all` first)",
            ),
            (
                INCOMPAT_CORRUPT,
                "marked corrupt (run `qemu-img check -r all` first)",
            ),
            (INCOMPAT_DATA_FILE, "external data file"),
            (INCOMPAT_COMPRESSION, "compression type other than deflate"),
            (INCOMPAT_EXTL2, "extended L2 entries (subclusters)"),
        ];
        for (bit, what) in known {
            if h.incompatible_features & bit != 0 {
                return Err(unsupported(what.to_string()));
            }
        }
        let unknown = h.incompatible_features & !0x1f;
        if unknown != 0 {
            return Err(unsupported(format!(
                "unknown incompatible feature bits 0x{unknown:x}"
            )));
        }
        if h.compression_type != 0 {
            return Err(unsupported(format!(
                "compression type {}",
                h.compression_type
            )));
        }
        if h.nb_snapshots != 0 && !read_only {
            return Err(unsupported(format!(
                "has {} internal snapshots; kapsel opens such images read-only only",
                h.nb_snapshots
            )));
        }

        let cs = 1u64 << h.cluster_bits;
        let l2_entries = cs / 8;
        let l1_needed = h.size.div_ceil(cs * l2_entries);
        if h.size == 0 || h.size > (1u64 << 62) {
            return Err(corrupt_err(format!("virtual size {} is invalid", h.size)));
        }
        if u64::from(h.l1_size) < l1_needed {
            return Err(corrupt_err(format!(
                "L1 table has {} entries, the size needs {l1_needed}",
                h.l1_size
            )));
        }
        let l1_bytes = u64::from(h.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(unsupported(format!("L1 table of {l1_bytes} bytes")));
        }
        let in_file = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= file_len);
        if h.l1_table_offset % cs != 0 || (l1_bytes > 0 && !in_file(h.l1_table_offset, l1_bytes)) {
            return Err(corrupt_err("L1 table offset is invalid".into()));
        }
        let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(unsupported(format!("refcount table of {rt_bytes} bytes")));
        }
        if h.refcount_table_offset % cs != 0
            || h.refcount_table_clusters == 0
            || !in_file(h.refcount_table_offset, rt_bytes)
        {
            return Err(corrupt_err("refcount table offset is invalid".into()));
        }

        let backing = match &h.backing_file {
            None => None,
            Some(name) => {
                let format = match h.backing_format.as_deref() {
                    Some(f) => f
                        .parse::<Format>()
                        .map_err(|e| unsupported(format!("backing file {name}: {e}")))?,
                    None => {
                        return Err(unsupported(format!(
                            "backing file {name} has no recorded format (kapsel does not \
                             guess; rebase it with `qemu-img rebase -F raw|qcow2`)"
                        )))
                    }
                };
                let bpath = crate::resolve_backing(path, name);
                Some(crate::open_at_depth(&bpath, format, true, depth + 1)?)
            }
        };

        let meta = Metadata::load(file, &h, file_len, read_only).map_err(io_err)?;
        Ok(Qcow2Image {
            path: path.to_path_buf(),
            size: h.size,
            read_only,
            inner: Mutex::new(Inner {
                meta,
                backing,
                inflated: None,
            }),
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

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Splits `[offset, offset+len)` at cluster boundaries: (guest offset, length).
    fn pieces(&self, offset: u64, len: u64, cs: u64) -> impl Iterator<Item = (u64, u64)> {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let n = (cs - (pos & (cs - 1))).min(end - pos);
            let piece = (pos, n);
            pos += n;
            Some(piece)
        })
    }
}

impl Inner {
    /// Reads `buf.len()` bytes of the backing image at `offset`; past its end reads zeros.
    fn read_backing(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.fill(0);
        if let Some(b) = &self.backing {
            let bsize = b.size();
            if offset < bsize {
                let n = (bsize - offset).min(buf.len() as u64) as usize;
                b.read_at(&mut buf[..n], offset)?;
            }
        }
        Ok(())
    }

    /// The whole guest cluster at `cluster_off` as it reads now.
    fn cluster_contents(&mut self, cluster_off: u64, c: Cluster, out: &mut [u8]) -> io::Result<()> {
        match c {
            Cluster::Unallocated => self.read_backing(out, cluster_off),
            Cluster::Zero { .. } => {
                out.fill(0);
                Ok(())
            }
            Cluster::Data(host) => self.meta.read_data(out, host),
            Cluster::Compressed(entry) => {
                let data = self.inflate(entry)?;
                out.copy_from_slice(data);
                Ok(())
            }
        }
    }

    fn inflate(&mut self, entry: u64) -> io::Result<&[u8]> {
        if self.inflated.as_ref().is_none_or(|(e, _)| *e != entry) {
            let data = self.meta.inflate(entry)?;
            self.inflated = Some((entry, data));
        }
        match &self.inflated {
            Some((_, d)) => Ok(d),
            None => Err(corrupt("compressed cluster cache")),
        }
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let cs = self.meta.cluster_size();
        let in_cluster = (offset & (cs - 1)) as usize;
        match self.meta.lookup(offset)? {
            Cluster::Unallocated => self.read_backing(buf, offset),
            Cluster::Zero { .. } => {
                buf.fill(0);
                Ok(())
            }
            Cluster::Data(host) => self.meta.read_data(buf, host + in_cluster as u64),
            Cluster::Compressed(entry) => {
                let data = self.inflate(entry)?;
                buf.copy_from_slice(&data[in_cluster..in_cluster + buf.len()]);
                Ok(())
            }
        }
    }

    /// Writes one piece inside one cluster.
    fn write(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let cs = self.meta.cluster_size();
        let in_cluster = offset & (cs - 1);
        let cluster_off = offset - in_cluster;
        let c = self.meta.lookup(offset)?;
        if let Cluster::Data(host) = c {
            return self.meta.write_data(buf, host + in_cluster);
        }
        // Copy on write: the cluster's current contents, the new bytes over them, into a
        // cluster of its own.
        let mut whole = vec![0u8; cs as usize];
        if buf.len() as u64 != cs {
            self.cluster_contents(cluster_off, c, &mut whole)?;
        }
        whole[in_cluster as usize..in_cluster as usize + buf.len()].copy_from_slice(buf);
        let host = match c {
            Cluster::Zero { host: Some(h) } => h,
            _ => self.meta.allocate_cluster()?,
        };
        self.meta.write_data(&whole, host)?;
        self.meta.set_data(offset, host)?;
        if let Cluster::Compressed(entry) = c {
            self.meta.free_compressed(entry);
            self.inflated = None;
        }
        self.meta.maybe_write_back()
    }

    /// Makes one piece inside one cluster read as zeros.
    fn zero(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let cs = self.meta.cluster_size();
        let c = self.meta.lookup(offset)?;
        let whole = len == cs;
        match c {
            Cluster::Zero { .. } => return Ok(()),
            Cluster::Unallocated if self.backing.is_none() => return Ok(()),
            _ => {}
        }
        if !whole || !self.meta.has_zero_flag() {
            // Partial cluster, or version 2 (no zero flag): write zero bytes.
            let zeros = vec![0u8; len as usize];
            return self.write(&zeros, offset);
        }
        match c {
            Cluster::Data(host) => {
                self.meta.set_zero(offset, Some(host))?;
                if unmap {
                    self.meta.punch(host);
                }
            }
            Cluster::Compressed(entry) => {
                self.meta.set_zero(offset, None)?;
                self.meta.free_compressed(entry);
                self.inflated = None;
            }
            Cluster::Unallocated => self.meta.set_zero(offset, None)?,
            Cluster::Zero { .. } => {}
        }
        self.meta.maybe_write_back()
    }
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64, false)?;
        let mut inner = self.inner();
        let cs = inner.meta.cluster_size();
        let mut done = 0usize;
        for (pos, n) in self.pieces(offset, buf.len() as u64, cs) {
            inner.read(&mut buf[done..done + n as usize], pos)?;
            done += n as usize;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64, true)?;
        let mut inner = self.inner();
        let cs = inner.meta.cluster_size();
        let mut done = 0usize;
        for (pos, n) in self.pieces(offset, buf.len() as u64, cs) {
            inner.write(&buf[done..done + n as usize], pos)?;
            done += n as usize;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.inner().meta.write_back()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.check(offset, len, true)?;
        let mut inner = self.inner();
        let cs = inner.meta.cluster_size();
        for (pos, n) in self.pieces(offset, len, cs) {
            inner.zero(pos, n, unmap)?;
        }
        Ok(())
    }
}

impl Drop for Qcow2Image {
    fn drop(&mut self) {
        if !self.read_only {
            if let Err(e) = self.inner().meta.write_back() {
                tracing::error!(path = %self.path.display(), "qcow2 metadata write-back on close: {e}");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
