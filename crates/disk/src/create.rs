//! New images: raw (sparse) or qcow2 version 3, optionally over a backing image. The file
//! appears complete or not at all (written under a temporary name, fsync'ed, then linked
//! into place, which also refuses to replace an existing file).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::qcow2::header::{Header, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, V3_HEADER_LEN};
use crate::{DiskError, Format};

/// Largest virtual size `create` makes (1 PiB).
pub const MAX_SIZE: u64 = 1 << 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    pub format: Format,
    /// Virtual size in bytes (a multiple of 512); defaults to the backing image's.
    pub size: Option<u64>,
    /// Backing file name as recorded in the new image (a relative name is relative to the
    /// new image's directory) and its format. qcow2 only.
    pub backing: Option<(String, Format)>,
    /// qcow2 cluster size as a power of two (9..=21; QEMU's default is 16, 64 KiB).
    pub cluster_bits: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            format: Format::Qcow2,
            size: None,
            backing: None,
            cluster_bits: 16,
        }
    }
}

/// Creates the image at `path`; returns its virtual size.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<u64, DiskError> {
    let bad = |s: String| Err(DiskError::BadRequest(s));
    if path.exists() {
        return Err(DiskError::Exists {
            path: path.to_path_buf(),
        });
    }
    let backing_size = match &opts.backing {
        None => None,
        Some(_) if opts.format != Format::Qcow2 => {
            return bad("a backing file needs format qcow2".into())
        }
        Some((name, _)) if name.is_empty() || name.len() > 1023 || name.contains('\0') => {
            return bad(format!(
                "backing file name '{name}' is empty, too long or has NUL"
            ))
        }
        Some((name, format)) => {
            let bpath = crate::resolve_backing(path, name);
            Some(crate::open(&bpath, *format, true)?.size())
        }
    };
    let size = match (opts.size, backing_size) {
        (Some(s), _) => s,
        (None, Some(b)) => b.div_ceil(512) * 512,
        (None, None) => return bad("a size is needed when there is no backing file".into()),
    };
    if size == 0 || size % 512 != 0 || size > MAX_SIZE {
        return bad(format!(
            "size {size} must be a positive multiple of 512 of at most {MAX_SIZE}"
        ));
    }
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&opts.cluster_bits) {
        return bad(format!(
            "cluster_bits {} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}",
            opts.cluster_bits
        ));
    }
    let bytes = match opts.format {
        Format::Raw => None,
        Format::Qcow2 => Some(qcow2_bytes(size, opts)?),
    };
    write_new(path, size, bytes.as_deref())?;
    Ok(size)
}

/// The complete initial qcow2 file: header cluster, refcount table, one refcount block and
/// the L1 table, each cluster with refcount 1.
fn qcow2_bytes(size: u64, opts: &CreateOptions) -> Result<Vec<u8>, DiskError> {
    let cb = opts.cluster_bits;
    let cs = 1u64 << cb;
    let l1_entries = size.div_ceil(cs * (cs / 8));
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    let clusters = 3 + l1_clusters;
    // One refcount block of 16-bit entries must cover the initial clusters.
    if clusters > cs / 2 || l1_entries > u64::from(u32::MAX) {
        return Err(DiskError::BadRequest(format!(
            "size {size} is too large for {cs}-byte clusters"
        )));
    }
    let h = Header {
        version: 3,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: cb,
        size,
        crypt_method: 0,
        l1_size: l1_entries as u32,
        l1_table_offset: 3 * cs,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: 4,
        header_length: V3_HEADER_LEN,
        compression_type: 0,
        backing_file: opts.backing.as_ref().map(|(n, _)| n.clone()),
        backing_format: opts.backing.as_ref().map(|(_, f)| f.as_str().to_string()),
    };
    let head = h.to_bytes();
    if head.len() as u64 > cs {
        return Err(DiskError::BadRequest(format!(
            "backing file name does not fit a {cs}-byte header cluster"
        )));
    }
    let mut b = vec![0u8; (clusters * cs) as usize];
    b[..head.len()].copy_from_slice(&head);
    // Refcount table entry 0 -> the block in cluster 2.
    let rt = cs as usize;
    b[rt..rt + 8].copy_from_slice(&(2 * cs).to_be_bytes());
    let rb = 2 * cs as usize;
    for i in 0..clusters as usize {
        b[rb + 2 * i..rb + 2 * i + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(b)
}

fn write_new(path: &Path, size: u64, bytes: Option<&[u8]>) -> Result<(), DiskError> {
    let io = |e| DiskError::io(path, e);
    let name = path
        .file_name()
        .ok_or_else(|| DiskError::BadRequest(format!("{}: not a file name", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        match bytes {
            Some(b) => f.write_all(b)?,
            None => f.set_len(size)?,
        }
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(DiskError::Exists {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io(e)),
    }
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io)
}
