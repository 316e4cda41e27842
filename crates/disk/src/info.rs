//! What an image is: format, sizes, cluster size, backing file; and its whole chain.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{DiskError, Format};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    pub path: PathBuf,
    pub format: Format,
    /// Bytes the guest sees.
    pub virtual_size: u64,
    /// Bytes the file occupies on the host filesystem.
    pub disk_usage: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qcow2_version: Option<u32>,
    /// The backing file's name as the image records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// Where that name resolves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_format: Option<Format>,
}

/// Describes one image of known format.
pub fn info(path: &Path, format: Format) -> Result<ImageInfo, DiskError> {
    let meta = std::fs::metadata(path).map_err(|e| DiskError::io(path, e))?;
    if !meta.is_file() {
        return Err(DiskError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut info = ImageInfo {
        path: path.to_path_buf(),
        format,
        virtual_size: meta.len(),
        disk_usage: meta.blocks() * 512,
        cluster_size: None,
        qcow2_version: None,
        backing_file: None,
        backing_path: None,
        backing_format: None,
    };
    if format == Format::Qcow2 {
        let h = crate::qcow2::read_header(path)?;
        info.virtual_size = h.size;
        info.cluster_size = Some(1 << h.cluster_bits);
        info.qcow2_version = Some(h.version);
        info.backing_path = h
            .backing_file
            .as_deref()
            .map(|n| crate::resolve_backing(path, n));
        info.backing_file = h.backing_file;
        info.backing_format = match h.backing_format {
            Some(f) => Some(f.parse().map_err(|e: String| DiskError::Unsupported {
                path: path.to_path_buf(),
                what: e,
            })?),
            None => None,
        };
    }
    Ok(info)
}

/// Describes the image and every backing image under it, top first. `format` `None`
/// probes the top image's format (fine for describing; never for serving a guest).
pub fn info_chain(path: &Path, format: Option<Format>) -> Result<Vec<ImageInfo>, DiskError> {
    let mut format = match format {
        Some(f) => f,
        None => crate::probe(path)?,
    };
    let mut path = path.to_path_buf();
    let mut chain = Vec::new();
    loop {
        if chain.len() >= crate::MAX_CHAIN_DEPTH {
            return Err(DiskError::ChainTooDeep { path });
        }
        let i = info(&path, format)?;
        let next = match (&i.backing_path, i.backing_format, &i.backing_file) {
            (Some(p), Some(f), _) => Some((p.clone(), f)),
            (_, None, Some(name)) => {
                return Err(DiskError::Unsupported {
                    path,
                    what: format!("backing file {name} has no recorded format"),
                })
            }
            _ => None,
        };
        chain.push(i);
        match next {
            Some((p, f)) => {
                path = p;
                format = f;
            }
            None => return Ok(chain),
        }
    }
}
