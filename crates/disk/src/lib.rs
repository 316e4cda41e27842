//! Disk images behind one trait, [`DiskImage`], which the virtio-blk device serves.
//!
//! - [`raw`]: a plain file, byte for byte the disk.
//! - [`qcow2`]: qcow2 versions 2 and 3: cluster allocation, L1/L2 tables, refcounts kept
//!   exact (so `qemu-img check` finds no errors or leaks), zero and compressed clusters,
//!   read-only backing files (raw or qcow2) in a bounded chain.
//! - [`create`]: makes new images (`kapsel disk create`, the daemon's overlays).
//! - [`info`]: describes an image and its backing chain (`kapsel disk info`).
//! - [`fold_backing`]: folds a qcow2 backing layer into the image above it, so chains
//!   shrink (the daemon's snapshot layers).
//!
//! The format is always said, never guessed from the content for a guest's disk: a raw
//! disk's guest can write a qcow2 header into its own disk, and a guessing host would then
//! follow that header's backing-file name to any file on the host. [`check_unstated_format`]
//! is the safe default for callers that let the user omit the format.

pub mod create;
pub mod info;
pub mod qcow2;
pub mod raw;

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub use create::{create, CreateOptions};
pub use info::{info_chain, ImageInfo};
pub use qcow2::{fold_backing, FoldOutcome};

/// Longest backing chain followed (the image itself included); deeper chains, and loops,
/// are refused.
pub const MAX_CHAIN_DEPTH: usize = 16;

/// A virtual disk: byte-addressed, `size()` bytes long.
///
/// Errors are I/O errors the device reports to the guest as a failed request. Metadata a
/// hostile image gets wrong reads as `InvalidData`, never as a panic.
pub trait DiskImage: Send + Sync + fmt::Debug {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Fills `buf` from the disk at `offset`; the range must lie inside the disk.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` to the disk at `offset`; the range must lie inside the disk.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (data, then metadata, each fdatasync'ed).
    fn flush(&self) -> io::Result<()>;
    /// The range may read back as anything afterwards (here: zeros).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads back as zeros; `unmap` allows releasing its storage.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// A raw image's file, whose offsets are the disk's: callers may move data between it
    /// and memory directly instead of through `read_at`/`write_at`.
    fn raw_file(&self) -> Option<&File> {
        None
    }
}

/// On-disk format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(format!("unknown disk format '{s}' (known: raw, qcow2)")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: not a qcow2 image (no QFI\\xfb magic)")]
    NotQcow2 { path: PathBuf },
    #[error("{path}: corrupt qcow2 image: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: unsupported qcow2 image: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: backing chain longer than {MAX_CHAIN_DEPTH} images (or a loop)")]
    ChainTooDeep { path: PathBuf },
    #[error(
        "{path}: starts with a qcow2 header but no format was given: say format=qcow2, or \
         format=raw if it is a raw disk (kapsel does not guess formats: a guest can write \
         such a header into its raw disk)"
    )]
    UnstatedQcow2 { path: PathBuf },
    #[error("{path}: already exists")]
    Exists { path: PathBuf },
    #[error("{0}")]
    BadRequest(String),
}

impl DiskError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        DiskError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Opens an image file, refusing anything but a regular file. `O_NONBLOCK` keeps a FIFO
/// named by a hostile backing-file name from blocking the open (it has no effect on
/// regular files).
pub(crate) fn open_file(path: &Path, write: bool) -> Result<File, DiskError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| DiskError::io(path, e))?;
    let meta = file.metadata().map_err(|e| DiskError::io(path, e))?;
    if !meta.is_file() {
        return Err(DiskError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// The qcow2 magic, "QFI\xfb".
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Guesses the format from the first bytes (for describing a file, never for serving a
/// guest's disk).
pub fn probe(path: &Path) -> Result<Format, DiskError> {
    use std::os::unix::fs::FileExt;
    let file = open_file(path, false)?;
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) if magic == QCOW2_MAGIC => Ok(Format::Qcow2),
        Ok(()) => Ok(Format::Raw),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Format::Raw),
        Err(e) => Err(DiskError::io(path, e)),
    }
}

/// The default when a user omits the format: raw, unless the file starts with a qcow2
/// header, in which case the user must say which they mean.
pub fn check_unstated_format(path: &Path) -> Result<Format, DiskError> {
    match probe(path)? {
        Format::Raw => Ok(Format::Raw),
        Format::Qcow2 => Err(DiskError::UnstatedQcow2 {
            path: path.to_path_buf(),
        }),
    }
}

/// Opens `path` as `format`; a qcow2 image's backing chain is opened read-only.
pub fn open(path: &Path, format: Format, read_only: bool) -> Result<Box<dyn DiskImage>, DiskError> {
    open_at_depth(path, format, read_only, 0)
}

pub(crate) fn open_at_depth(
    path: &Path,
    format: Format,
    read_only: bool,
    depth: usize,
) -> Result<Box<dyn DiskImage>, DiskError> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(DiskError::ChainTooDeep {
            path: path.to_path_buf(),
        });
    }
    Ok(match format {
        Format::Raw => Box::new(raw::RawImage::open(path, read_only)?),
        Format::Qcow2 => Box::new(qcow2::Qcow2Image::open_at_depth(path, read_only, depth)?),
    })
}

/// Where a backing file named `name` inside the image at `image` lives: absolute names as
/// they are, relative names against the image's directory.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        assert_eq!("raw".parse::<Format>(), Ok(Format::Raw));
        assert_eq!("qcow2".parse::<Format>(), Ok(Format::Qcow2));
        assert!("vmdk".parse::<Format>().is_err());
        assert_eq!(Format::Qcow2.to_string(), "qcow2");
    }

    #[test]
    fn backing_names_resolve_against_the_image_directory() {
        assert_eq!(
            resolve_backing(Path::new("/a/b/over.qcow2"), "base.raw"),
            PathBuf::from("/a/b/base.raw")
        );
        assert_eq!(
            resolve_backing(Path::new("/a/b/over.qcow2"), "/c/base.raw"),
            PathBuf::from("/c/base.raw")
        );
        assert_eq!(
            resolve_backing(Path::new("over.qcow2"), "base.raw"),
            PathBuf::from("base.raw")
        );
    }
}
