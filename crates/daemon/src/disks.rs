//! Instance disks as qcow2 copy-on-write overlays.
//!
//! An instance's root disk is `root.qcow2` in its directory, an overlay over its image's
//! `disk.raw` in the pool: creating an instance copies nothing. Freezing turns the overlay
//! into a read-only layer under `<state>/layers/` and puts a fresh overlay over it: `copy`
//! makes a linked clone that way (the source and the clone each get an overlay over the
//! layer), and a snapshot keeps its disk that way (`snapshots.rs`; a running VM's VMM is
//! switched to the new overlay while paused). A layer is never written again.
//!
//! Freezing never leaves the disk's name empty: the layer is a second name (hard link) of
//! the overlay's file, and the new overlay, made complete under a temporary name, replaces
//! the old name by rename. A VMM that has the file open keeps using it, now as the layer,
//! until it switches.
//!
//! Deletion respects backing chains: deleting an instance or a snapshot removes every layer
//! no remaining disk's chain and no snapshot's layer chain reaches (layers are kept while
//! still needed, never refused); deleting an image whose disk is in some chain is refused
//! (409). Instances created before overlays (`root.raw` copies) keep working as raw disks.
//!
//! Chains do not pile up ([`compact`]): a layer that no snapshot names and exactly one image
//! backs onto is folded into that image (`disk::fold_backing`: the image reads byte for byte
//! as before and backs onto the layer's own backing file) and removed, after a snapshot or
//! an instance is deleted, a snapshot restored, a VM stopped, and at daemon start. The
//! image is another layer (safe while VMMs read it: a fold never changes what a reader
//! sees) or a stopped instance's disk, never a disk a VMM writes: the layer right under a
//! running VM's disk waits for the VM's next stop.

use std::path::{Path, PathBuf};

use api::daemon::InstanceStatus;
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

/// A new, unused layer path for `owner`'s disk (the layers directory is created).
pub fn new_layer(d: &Daemon, owner: &str) -> Result<PathBuf> {
    let layers = d.config.layer_dir();
    std::fs::create_dir_all(&layers).map_err(|e| DaemonError::io("create", &layers, e))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos())
        .unwrap_or(0);
    Ok(layers.join(format!("{owner}-{stamp}-{seq}.qcow2")))
}

/// Freezes the overlay at `disk` into a new read-only layer and puts a fresh overlay over
/// that layer at `disk`; returns the layer. The disk's owner must be stopped, and the caller
/// holds [`layers_lock`] until every overlay over the new layer exists.
pub fn freeze(d: &Daemon, disk: &Path, owner: &str) -> Result<PathBuf> {
    let layer = new_layer(d, owner)?;
    freeze_to(disk, &layer)?;
    Ok(layer)
}

/// Freezes the overlay at `disk` into the layer `layer` (a new name of the same file) and
/// replaces `disk` by a fresh overlay over it. On an error nothing changed. The caller holds
/// [`layers_lock`]; nothing may write the disk meanwhile (its VM is stopped or paused).
pub fn freeze_to(disk: &Path, layer: &Path) -> Result<()> {
    std::fs::hard_link(disk, layer).map_err(|e| DaemonError::io("link", layer, e))?;
    let next = disk.with_extension("qcow2.next");
    let _ = std::fs::remove_file(&next); // left by a daemon that died here
    let made = create_overlay(layer, Format::Qcow2, &next).and_then(|()| {
        std::fs::rename(&next, disk).map_err(|e| DaemonError::io("rename", &next, e))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&next);
        let _ = std::fs::remove_file(layer);
        return Err(e);
    }
    for dir in [disk.parent(), layer.parent()].into_iter().flatten() {
        sync_dir(dir);
    }
    Ok(())
}

/// Undoes [`freeze_to`]: the layer's file (the old overlay, which a VMM may still have open)
/// takes the disk's name again, replacing the new overlay.
pub fn unfreeze(disk: &Path, layer: &Path) -> Result<()> {
    std::fs::rename(layer, disk).map_err(|e| DaemonError::io("rename", layer, e))?;
    if let Some(dir) = disk.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Makes renames and links in `dir` durable (best effort: a failure is logged).
fn sync_dir(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|f| f.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot sync directory");
    }
}

/// One disk chain the daemon must keep, top first.
struct Chain {
    /// `NAME` or `NAME (snapshot SNAP)`.
    owner: String,
    /// The instance whose disk this chain is (not set for a snapshot's layer chain).
    instance: Option<String>,
    files: Vec<PathBuf>,
}

/// Every disk chain the daemon must keep: each instance's disk and each snapshot's layer.
fn chains(d: &Daemon) -> Result<Vec<Chain>> {
    let mut tops: Vec<(String, Option<String>, PathBuf, Format)> = Vec::new();
    {
        let db = d.db();
        for (inst, _) in db.instances()? {
            if let Some(p) = inst.disk.as_deref().map(PathBuf::from) {
                let f = format_of(&p);
                tops.push((inst.name.clone(), Some(inst.name), p, f));
            }
        }
        for (inst, snap, layer) in db.snapshot_layers()? {
            tops.push((
                format!("{inst} (snapshot {snap})"),
                None,
                PathBuf::from(layer),
                Format::Qcow2,
            ));
        }
    }
    let mut out = Vec::with_capacity(tops.len());
    for (owner, instance, top, format) in tops {
        if !top.exists() {
            continue;
        }
        let files = disk::info_chain(&top, Some(format))?
            .into_iter()
            .map(|i| absolute(&i.path))
            .collect();
        out.push(Chain {
            owner,
            instance,
            files,
        });
    }
    Ok(out)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The instances (and snapshots) whose disk chains reach `file`.
pub fn users_of(d: &Daemon, file: &Path) -> Result<Vec<String>> {
    let file = std::path::absolute(file).map_err(|e| DaemonError::io("resolve", file, e))?;
    Ok(chains(d)?
        .into_iter()
        .filter(|c| c.files.contains(&file))
        .map(|c| c.owner)
        .collect())
}

/// Removes the layers no instance disk's chain and no snapshot's chain reaches any more.
pub fn collect_garbage(d: &Daemon) -> Result<()> {
    let _held = layers_lock();
    let layers = d.config.layer_dir();
    let Ok(entries) = std::fs::read_dir(&layers) else {
        return Ok(());
    };
    let keep: Vec<PathBuf> = chains(d)?.into_iter().flat_map(|c| c.files).collect();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "qcow2") && !keep.contains(&absolute(&p)) {
            std::fs::remove_file(&p).map_err(|e| DaemonError::io("remove", &p, e))?;
            tracing::info!(layer = %p.display(), "removed unreferenced disk layer");
        }
    }
    Ok(())
}

/// Held by a compaction from planning a fold until it is done, so two never fold into
/// one image at once.
static COMPACTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A layer to fold into the one image that backs onto it; `_claim` keeps a stopped
/// instance from starting while its disk is the image.
struct Fold<'a> {
    layer: PathBuf,
    into: PathBuf,
    _claim: Option<crate::state::BusyGuard<'a>>,
}

/// Shortens disk chains: every layer no snapshot names and exactly one image backs onto
/// is folded into that image (`disk::fold_backing`: the image reads as before, now
/// backed by the layer's own backing file) and removed. The image may be another layer
/// (a VMM whose chain runs through it only reads it, and a fold never changes what a
/// reader sees: see `disk::qcow2::fold`) or the disk of a stopped instance, never a disk
/// some VMM writes. `held` is the instance whose busy claim the caller holds; other
/// instances' disks are folded into only when their claim is free. Returns how many layers
/// went. A crash midway leaves every chain valid; the next compaction finishes the job.
pub fn compact(d: &Daemon, held: Option<&str>) -> Result<usize> {
    let _one = COMPACTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut folded = 0;
    loop {
        // Planned under the layers lock; folded outside it (a fold copies data, and a
        // snapshot of a paused guest waits for that lock). Once no snapshot names a layer,
        // nothing puts a new overlay over it, so the plan stays true meanwhile.
        let plan = {
            let _held = layers_lock();
            next_fold(d, held)?
        };
        let Some(fold) = plan else {
            return Ok(folded);
        };
        let out = disk::fold_backing(&fold.into)?;
        tracing::info!(
            layer = %fold.layer.display(),
            into = %fold.into.display(),
            copied = out.copied,
            zeroed = out.zeroed,
            "disk layer folded into the image above it"
        );
        let layer = fold.layer.clone();
        drop(fold);
        collect_garbage(d)?;
        if layer.exists() {
            // Still reached from somewhere: planning it again would loop.
            return Err(DaemonError::Conflict(format!(
                "disk layer {} was folded but is still in use",
                layer.display()
            )));
        }
        folded += 1;
    }
}

/// [`compact`], a failure logged (the chains stay valid; a later compaction tries again).
pub fn compact_or_warn(d: &Daemon, held: Option<&str>) {
    match compact(d, held) {
        Ok(0) => {}
        Ok(n) => tracing::info!(layers = n, "disk chains compacted"),
        Err(e) => tracing::warn!(error = %e.line(), "disk layers not compacted"),
    }
}

/// The next layer to fold, if any.
fn next_fold<'a>(d: &'a Daemon, held: Option<&str>) -> Result<Option<Fold<'a>>> {
    let layer_dir = absolute(&d.config.layer_dir());
    let named: std::collections::HashSet<PathBuf> = d
        .db()
        .snapshot_layers()?
        .into_iter()
        .map(|(_, _, l)| absolute(Path::new(&l)))
        .collect();
    let chains = chains(d)?;
    // Which images back directly onto each file, and whose disk each top is.
    let mut above: std::collections::BTreeMap<&Path, std::collections::BTreeSet<&Path>> =
        Default::default();
    let mut disk_of: std::collections::HashMap<&Path, &str> = Default::default();
    for c in &chains {
        for pair in c.files.windows(2) {
            above.entry(&pair[1]).or_default().insert(&pair[0]);
        }
        if let (Some(inst), Some(top)) = (&c.instance, c.files.first()) {
            disk_of.insert(top, inst);
        }
    }
    for (layer, images) in above {
        if !layer.starts_with(&layer_dir) || named.contains(layer) || images.len() != 1 {
            continue;
        }
        let Some(&into) = images.iter().next() else {
            continue;
        };
        let claim = match disk_of.get(into) {
            None if into.starts_with(&layer_dir) => None,
            None => continue,
            Some(&inst) if Some(inst) == held => None,
            Some(&inst) => match d.claim(inst, "layer fold") {
                Ok(g) => Some(g),
                Err(_) => continue,
            },
        };
        if let Some(&inst) = disk_of.get(into) {
            // A VMM writes that disk (folded at its next stop), or a supervised restart is
            // due (it must find the claim free).
            let status = d.db().instance(inst)?.0.status;
            let at_rest = matches!(status, InstanceStatus::Stopped | InstanceStatus::Error);
            if d.procs().contains_key(inst) || !at_rest {
                continue;
            }
        }
        return Ok(Some(Fold {
            layer: layer.to_path_buf(),
            into: into.to_path_buf(),
            _claim: claim,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezing_keeps_the_file_and_never_empties_the_name() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.qcow2");
        disk::create(
            &disk,
            &CreateOptions {
                size: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        let before = std::fs::metadata(&disk).unwrap().ino();
        let layer = dir.path().join("layer.qcow2");
        freeze_to(&disk, &layer).unwrap();
        assert_eq!(std::fs::metadata(&layer).unwrap().ino(), before);
        let chain = disk::info_chain(&disk, Some(Format::Qcow2)).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].path, layer);
        // taken again: refused, nothing changed
        assert!(freeze_to(&disk, &layer).is_err());
        assert_eq!(
            disk::info_chain(&disk, Some(Format::Qcow2)).unwrap().len(),
            2
        );
        unfreeze(&disk, &layer).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().ino(), before);
        assert!(!layer.exists());
        // a layer whose overlay cannot be made: the link goes again
        let missing_dir = dir.path().join("no/such/dir/root.qcow2");
        assert!(freeze_to(&missing_dir, &layer).is_err());
        assert!(!layer.exists());
    }

    #[test]
    fn formats_follow_the_file_name() {
        assert_eq!(format_of(Path::new("/a/root.qcow2")), Format::Qcow2);
        assert_eq!(format_of(Path::new("/a/root.raw")), Format::Raw);
        assert_eq!(format_of(Path::new("/a/root")), Format::Raw);
    }
}
