//! Instance disks as qcow2 copy-on-write overlays.
//!
//! An instance's root disk is `root.qcow2` in its directory, an overlay over its image's
//! `disk.raw` in the pool: creating an instance copies nothing. `copy` makes a linked clone:
//! the source's overlay is frozen into a read-only layer under `<state>/layers/`, and the
//! source and the clone each get a fresh overlay over it. A layer is never written again.
//!
//! Deletion respects backing chains: deleting an instance removes its own overlay, then
//! every layer no remaining disk's chain reaches (layers are kept while still needed, never
//! refused); deleting an image whose disk is in some instance's chain is refused (409).
//! Instances created before overlays (`root.raw` copies) keep working as raw disks.

use std::path::{Path, PathBuf};

use disk::{CreateOptions, Format};

use crate::error::{DaemonError, Result};
use crate::state::Daemon;

/// The format of an instance disk, from its name (the daemon always says it to the VMM).
pub fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => Format::Qcow2,
        _ => Format::Raw,
    }
}

/// Held while layers are made and linked (`copy`) and while unreferenced ones are removed,
/// so the removal never sees a fresh layer before the overlays that use it exist.
static LAYERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`LAYERS`].
pub fn layers_lock() -> std::sync::MutexGuard<'static, ()> {
    LAYERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The file name of a new instance's root disk.
pub const ROOT_DISK: &str = "root.qcow2";

/// Creates the overlay `dst` over `base` (recorded by absolute path).
pub fn create_overlay(base: &Path, base_format: Format, dst: &Path) -> Result<()> {
    let base = std::path::absolute(base).map_err(|e| DaemonError::io("resolve", base, e))?;
    let opts = CreateOptions {
        backing: Some((base.display().to_string(), base_format)),
        ..Default::default()
    };
    disk::create(dst, &opts)?;
    Ok(())
}

/// Freezes the overlay at `disk` into a new read-only layer and puts a fresh overlay over
/// that layer at `disk`; returns the layer. The disk's owner must be stopped, and the caller
/// holds [`layers_lock`] until every overlay over the new layer exists.
pub fn freeze(d: &Daemon, disk: &Path, owner: &str) -> Result<PathBuf> {
    let layers = d.config.layer_dir();
    std::fs::create_dir_all(&layers).map_err(|e| DaemonError::io("create", &layers, e))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos())
        .unwrap_or(0);
    let layer = layers.join(format!("{owner}-{stamp}-{seq}.qcow2"));
    std::fs::rename(disk, &layer).map_err(|e| DaemonError::io("move", disk, e))?;
    if let Err(e) = create_overlay(&layer, Format::Qcow2, disk) {
        let _ = std::fs::rename(&layer, disk);
        return Err(e);
    }
    Ok(layer)
}

/// Every file in the chains of the instances' disks.
fn referenced(d: &Daemon) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (inst, _) in d.db().instances()? {
        let Some(p) = inst.disk.as_deref().map(PathBuf::from) else {
            continue;
        };
        if !p.exists() {
            continue;
        }
        for i in disk::info_chain(&p, Some(format_of(&p)))? {
            files.push(std::path::absolute(&i.path).unwrap_or(i.path));
        }
    }
    Ok(files)
}

/// The instances whose disk chains reach `file`.
pub fn users_of(d: &Daemon, file: &Path) -> Result<Vec<String>> {
    let file = std::path::absolute(file).map_err(|e| DaemonError::io("resolve", file, e))?;
    let mut users = Vec::new();
    for (inst, _) in d.db().instances()? {
        let Some(p) = inst.disk.as_deref().map(PathBuf::from) else {
            continue;
        };
        if !p.exists() {
            continue;
        }
        let chain = disk::info_chain(&p, Some(format_of(&p)))?;
        if chain
            .iter()
            .any(|i| std::path::absolute(&i.path).is_ok_and(|a| a == file))
        {
            users.push(inst.name);
        }
    }
    Ok(users)
}

/// Removes the layers no instance disk's chain reaches any more.
pub fn collect_garbage(d: &Daemon) -> Result<()> {
    let _held = layers_lock();
    let layers = d.config.layer_dir();
    let Ok(entries) = std::fs::read_dir(&layers) else {
        return Ok(());
    };
    let keep = referenced(d)?;
    for e in entries.flatten() {
        let p = e.path();
        let abs = std::path::absolute(&p).unwrap_or_else(|_| p.clone());
        if p.extension().is_some_and(|x| x == "qcow2") && !keep.contains(&abs) {
            std::fs::remove_file(&p).map_err(|e| DaemonError::io("remove", &p, e))?;
            tracing::info!(layer = %p.display(), "removed unreferenced disk layer");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_file_name() {
        assert_eq!(format_of(Path::new("/a/root.qcow2")), Format::Qcow2);
        assert_eq!(format_of(Path::new("/a/root.raw")), Format::Raw);
        assert_eq!(format_of(Path::new("/a/root")), Format::Raw);
    }
}
