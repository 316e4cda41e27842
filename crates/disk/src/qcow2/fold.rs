//! Folding a backing layer into the image above it: the chain `A ← B ← C` becomes `A ← C`
//! with C reading byte for byte as before, so B can go.
//!
//! Every cluster C does not allocate itself but whose contents B decides (B allocates it,
//! as data, zeros or compressed; or it lies past B's end, where B reads zeros but A might
//! not) is written into C as C reads it now: data clusters as data, all-zero ones as zero
//! clusters. Then C's data and metadata are made durable (the ordered write-back), and only
//! then does C's header name A in place of B, in one write of the header's first bytes
//! (one 512-byte sector unless the names are long). A crash before the header write leaves
//! C backed by B with some clusters copied (it reads the same; folding again finishes the
//! job); after it, the fold is done.
//!
//! Nothing C already allocated is moved or rewritten, and no host cluster is reused: clusters
//! are only added at the end of C's file. That is why a process that merely *reads* C while
//! it is folded (a VMM whose disk chain runs through C) keeps a correct view: its cached
//! tables of C say "unallocated" for the new clusters, so it reads them from its own open B,
//! which is unchanged, and everything its tables do point at stays as it was. C must not be
//! open for writing anywhere else.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::header;
use super::metadata::Cluster;
use super::Qcow2Image;
use crate::{DiskError, DiskImage, Format};

/// What a fold did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FoldOutcome {
    /// The layer folded in (no longer in the chain; the caller may remove it).
    pub folded: PathBuf,
    /// What the image backs onto now, as recorded in its header.
    pub backing: Option<(String, Format)>,
    /// Clusters copied as data.
    pub copied: u64,
    /// Clusters recorded as zeros.
    pub zeroed: u64,
}

/// Folds the qcow2 backing layer of the qcow2 image at `path` into it (see the module
/// documentation). The backing layer is only read; removing it is the caller's business.
pub fn fold_backing(path: &Path) -> Result<FoldOutcome, DiskError> {
    let top_header = super::read_header(path)?;
    let Some(b_name) = top_header.backing_file.clone() else {
        return Err(DiskError::BadRequest(format!(
            "{}: has no backing file to fold",
            path.display()
        )));
    };
    match top_header.backing_format.as_deref() {
        Some("qcow2") => {}
        other => {
            return Err(DiskError::BadRequest(format!(
                "{}: backing file {b_name} is {}, only a qcow2 layer folds into its overlay",
                path.display(),
                other.unwrap_or("of unrecorded format")
            )))
        }
    }
    let b_path = crate::resolve_backing(path, &b_name);
    let b_header = super::read_header(&b_path)?;
    let backing = match (&b_header.backing_file, &b_header.backing_format) {
        (None, _) => None,
        (Some(name), Some(f)) => {
            let format = f.parse::<Format>().map_err(|e| DiskError::Unsupported {
                path: b_path.clone(),
                what: e,
            })?;
            Some((rename_for(path, &b_path, name)?, format))
        }
        (Some(name), None) => {
            return Err(DiskError::Unsupported {
                path: b_path.clone(),
                what: format!("backing file {name} has no recorded format"),
            })
        }
    };

    let top = Qcow2Image::open(path, false)?;
    let base = Qcow2Image::open(&b_path, true)?;
    let (copied, zeroed) =
        copy_decided_clusters(&top, &base).map_err(|e| DiskError::io(path, e))?;
    // Data and tables durable before the header stops naming B.
    top.flush().map_err(|e| DiskError::io(path, e))?;
    drop(top);
    drop(base);
    set_backing(path, backing.as_ref().map(|(n, f)| (n.as_str(), *f)))?;
    tracing::info!(
        image = %path.display(),
        folded = %b_path.display(),
        copied,
        zeroed,
        "backing layer folded in"
    );
    Ok(FoldOutcome {
        folded: b_path,
        backing,
        copied,
        zeroed,
    })
}

/// B's backing name as C must record it: absolute names as they are; a relative name
/// (relative to B's directory) stays when C lives in the same directory, else it becomes
/// absolute.
fn rename_for(top: &Path, b_path: &Path, name: &str) -> Result<String, DiskError> {
    if Path::new(name).is_absolute() || top.parent() == b_path.parent() {
        return Ok(name.to_string());
    }
    let resolved = crate::resolve_backing(b_path, name);
    let abs = std::path::absolute(&resolved).map_err(|e| DiskError::io(&resolved, e))?;
    Ok(abs.display().to_string())
}

/// Writes into `top` every cluster whose contents `base` decides; returns (data clusters,
/// zero clusters) written.
pub(super) fn copy_decided_clusters(
    top: &Qcow2Image,
    base: &Qcow2Image,
) -> std::io::Result<(u64, u64)> {
    let cs = top.inner().meta.cluster_size();
    let b_size = base.size;
    // Past B's end B reads zeros; after the fold C would read A there.
    let a_size = base.inner().backing.as_ref().map_or(0, |a| a.size());
    let mut buf = vec![0u8; cs as usize];
    let (mut copied, mut zeroed) = (0, 0);
    let mut off = 0;
    while off < top.size {
        let len = cs.min(top.size - off);
        let own = top.inner().meta.lookup(off)? != Cluster::Unallocated;
        let decided = !own
            && (allocated_in(base, off, (off + len).min(b_size))?
                || (off + len > b_size && off < a_size));
        if decided {
            let piece = &mut buf[..len as usize];
            top.read_at(piece, off)?;
            if piece.iter().all(|&b| b == 0) {
                top.write_zeroes(off, len, false)?;
                zeroed += 1;
            } else {
                top.write_at(piece, off)?;
                copied += 1;
            }
        }
        off += len;
    }
    Ok((copied, zeroed))
}

/// Whether `img` allocates anything (data, zeros, compressed) in `[start, end)`.
fn allocated_in(img: &Qcow2Image, start: u64, end: u64) -> std::io::Result<bool> {
    let mut inner = img.inner();
    let cs = inner.meta.cluster_size();
    let mut pos = start & !(cs - 1);
    while pos < end {
        if inner.meta.lookup(pos)? != Cluster::Unallocated {
            return Ok(true);
        }
        pos += cs;
    }
    Ok(false)
}

/// Rewrites the header of the qcow2 image at `path` to back onto `backing` (or nothing), in
/// one write, and makes it durable. Everything else in the header stays.
pub(crate) fn set_backing(path: &Path, backing: Option<(&str, Format)>) -> Result<(), DiskError> {
    let io_err = |e| DiskError::io(path, e);
    let file = crate::open_file(path, true)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let h = super::header_of(&file, path, file_len)?;
    let mut first = vec![0u8; (1u64 << h.cluster_bits).min(file_len) as usize];
    file.read_exact_at(&mut first, 0).map_err(io_err)?;
    let bytes = header::with_backing(&first, backing.map(|(n, f)| (n, f.as_str())))
        .map_err(|what| DiskError::BadRequest(format!("{}: {what}", path.display())))?;
    file.write_all_at(&bytes, 0).map_err(io_err)?;
    file.sync_data().map_err(io_err)?;
    Ok(())
}
