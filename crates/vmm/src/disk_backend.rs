//! Run-time disk image switches (`GET`/`PUT /vm/disks/{id}/backend`): a paused VM's disk
//! continues on another image, a qcow2 overlay over the one it has open. This is how the
//! daemon freezes a running instance's disk into a snapshot layer without copying it: it
//! moves the open image to a layer (same inode, new name), puts a fresh overlay over it
//! where the image was, and switches the disk to the overlay.
//!
//! The image a disk has open is known by its device and inode, taken when it was opened, as
//! its name may change under the VMM. The new image's backing chain must contain that file,
//! and the new image must have the disk's size: the guest then reads the same bytes before
//! and after the switch. The virtio-blk device does the switch itself
//! ([`virtio::block::Block::replace_disk`]): requests in flight complete on the old image,
//! which is flushed before the new one is opened.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use api::vm::{DiskBackend, DiskBackendRequest, DiskFormat};
use virtio::block::{Block, ReplaceError};

use crate::disk_config::DiskConfig;
use crate::pci::PciDevices;
use crate::state::VmState;

#[derive(Debug, thiserror::Error)]
pub enum DiskBackendError {
    #[error("no disk '{id}' (disks: {known})")]
    UnknownDisk { id: String, known: String },
    #[error("switching a disk's image needs a paused VM; the VM is {0} (pause it first)")]
    NotPaused(VmState),
    #[error("cannot read the backing chain of {path}")]
    Chain {
        path: PathBuf,
        #[source]
        source: disk::DiskError,
    },
    #[error(
        "{path} does not build on the image disk '{id}' has open ({open}): its chain is \
         [{chain}]"
    )]
    NotOverlay {
        path: PathBuf,
        id: String,
        open: String,
        chain: String,
    },
    #[error("disk '{id}' keeps its image")]
    Replace {
        id: String,
        #[source]
        source: ReplaceError,
    },
}

impl DiskBackendError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            DiskBackendError::UnknownDisk { .. } => 404,
            DiskBackendError::NotPaused(_) => 409,
            DiskBackendError::Chain { .. } | DiskBackendError::NotOverlay { .. } => 400,
            DiskBackendError::Replace { source, .. } => match source {
                ReplaceError::Open(_) | ReplaceError::Size { .. } | ReplaceError::Access { .. } => {
                    400
                }
                _ => 500,
            },
        }
    }

    /// The error and its causes as one line (the API's answer).
    pub fn line(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            line.push_str(": ");
            line.push_str(&s.to_string());
            source = s.source();
        }
        line
    }
}

/// The file an image is: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {:#x} inode {}", self.dev, self.ino)
    }
}

/// The image each disk has open, by disk id, in configuration order.
#[derive(Debug, Default)]
pub struct DiskBackends {
    disks: Vec<(String, Option<FileId>)>,
}

fn format_of(d: &DiskConfig) -> DiskFormat {
    match d.format {
        Some(disk::Format::Qcow2) => DiskFormat::Qcow2,
        _ => DiskFormat::Raw,
    }
}

impl DiskBackends {
    /// Records disk `id`, just opened from `path`.
    pub fn add(&mut self, id: &str, path: &Path) {
        self.disks.push((id.to_string(), FileId::of(path)));
    }

    fn index(&self, id: &str) -> Result<usize, DiskBackendError> {
        self.disks
            .iter()
            .position(|(d, _)| d == id)
            .ok_or_else(|| DiskBackendError::UnknownDisk {
                id: id.to_string(),
                known: if self.disks.is_empty() {
                    "none".into()
                } else {
                    self.disks
                        .iter()
                        .map(|(d, _)| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// The image disk `id` serves; `disks` is the VM's configuration.
    pub fn get(
        &self,
        id: &str,
        disks: &[DiskConfig],
        pci: &PciDevices,
    ) -> Result<DiskBackend, DiskBackendError> {
        let index = self.index(id)?;
        let unknown = || DiskBackendError::UnknownDisk {
            id: id.to_string(),
            known: String::new(),
        };
        let cfg = disks.get(index).ok_or_else(unknown)?;
        let sectors = pci
            .with_device::<Block, _>(id, |b| b.sectors())
            .ok_or_else(unknown)?;
        Ok(DiskBackend {
            path: cfg.path.display().to_string(),
            format: format_of(cfg),
            read_only: cfg.read_only,
            size_bytes: sectors << virtio::block::SECTOR_SHIFT,
        })
    }

    /// Switches disk `id` of a paused VM to `req`'s image and records it in `disks` (so a
    /// later snapshot names the new image).
    pub fn set(
        &mut self,
        id: &str,
        req: &DiskBackendRequest,
        state: VmState,
        disks: &mut [DiskConfig],
        pci: &PciDevices,
    ) -> Result<DiskBackend, DiskBackendError> {
        let index = self.index(id)?;
        if state != VmState::Paused {
            return Err(DiskBackendError::NotPaused(state));
        }
        let path = PathBuf::from(&req.path);
        let format = match req.format {
            DiskFormat::Raw => disk::Format::Raw,
            DiskFormat::Qcow2 => disk::Format::Qcow2,
        };
        self.check_chain(index, &path, format)?;
        let read_only = disks.get(index).is_some_and(|d| d.read_only);
        let replaced = pci.with_device::<Block, _>(id, |b| {
            b.replace_disk(|| disk::open(&path, format, read_only))
        });
        match replaced {
            None => {
                return Err(DiskBackendError::UnknownDisk {
                    id: id.to_string(),
                    known: String::new(),
                })
            }
            Some(Err(source)) => {
                return Err(DiskBackendError::Replace {
                    id: id.to_string(),
                    source,
                })
            }
            Some(Ok(())) => {}
        }
        if let Some(d) = disks.get_mut(index) {
            d.path = path.clone();
            d.format = Some(format);
        }
        self.disks[index].1 = FileId::of(&path);
        tracing::info!(disk = id, path = %path.display(), %format, "disk switched to a new image");
        self.get(id, disks, pci)
    }

    /// Refuses an image whose chain does not contain the one disk `index` has open.
    fn check_chain(
        &self,
        index: usize,
        path: &Path,
        format: disk::Format,
    ) -> Result<(), DiskBackendError> {
        let (id, open) = &self.disks[index];
        let chain =
            disk::info_chain(path, Some(format)).map_err(|source| DiskBackendError::Chain {
                path: path.to_path_buf(),
                source,
            })?;
        let found =
            open.is_some_and(|open| chain.iter().any(|i| FileId::of(&i.path) == Some(open)));
        if found {
            return Ok(());
        }
        Err(DiskBackendError::NotOverlay {
            path: path.to_path_buf(),
            id: id.clone(),
            open: open.map_or_else(|| "unknown file".into(), |o| o.to_string()),
            chain: chain
                .iter()
                .map(|i| i.path.display().to_string())
                .collect::<Vec<_>>()
                .join(" ← "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kapsel-dbk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn overlay(base: &Path, base_format: disk::Format, at: &Path) {
        disk::create(
            at,
            &disk::CreateOptions {
                backing: Some((base.display().to_string(), base_format)),
                ..Default::default()
            },
        )
        .unwrap();
    }

    #[test]
    fn only_images_over_the_open_one_are_accepted() {
        let dir = scratch("chain");
        let base = dir.join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 16]).unwrap();
        let other = dir.join("other.raw");
        std::fs::write(&other, vec![0u8; 1 << 16]).unwrap();
        let mut b = DiskBackends::default();
        b.add("disk0", &base);
        // renamed after opening: found by inode
        let moved = dir.join("moved.raw");
        std::fs::rename(&base, &moved).unwrap();
        let good = dir.join("good.qcow2");
        overlay(&moved, disk::Format::Raw, &good);
        b.check_chain(0, &good, disk::Format::Qcow2).unwrap();
        let bad = dir.join("bad.qcow2");
        overlay(&other, disk::Format::Raw, &bad);
        let e = b.check_chain(0, &bad, disk::Format::Qcow2).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("does not build on"), "{e}");
        let e = b
            .check_chain(0, &dir.join("missing.qcow2"), disk::Format::Qcow2)
            .unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.line().contains("missing.qcow2"), "{}", e.line());
        let e = b.index("disk9").unwrap_err();
        assert_eq!(e.to_string(), "no disk 'disk9' (disks: disk0)");
        assert_eq!(e.status(), 404);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
