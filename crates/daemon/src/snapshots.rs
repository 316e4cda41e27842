//! VM instance snapshots: the guest's memory and device state, through its VMM's control
//! API, and its disk, frozen into a copy-on-write layer (`disks.rs`). Containers have their
//! own snapshots (`container/ops.rs`).
//!
//! Taking one of a running or paused VM: pause → the VMM writes state and memory into the
//! snapshot directory (flushing its disks) → the disk freezes: `root.qcow2` becomes a
//! read-only layer under `<state>/layers/` (the same file under a second name, so the VMM's
//! open image is the layer now) and a fresh overlay over the layer takes its name → the VMM
//! switches its disk to that overlay (`PUT /vm/disks/disk0/backend`) → resume. Nothing
//! writes the disk while the VM is paused, so the layer holds what the snapshot's memory
//! expects (plus, at most, requests the snapshot records as pending, which a restored VM
//! replays). A failure at any step rolls back: the layer's file takes the disk's name again
//! (the VMM never stopped using that file), the snapshot's directory and record go, and the
//! guest resumes as it was.
//!
//! A stopped VM's snapshot is its disk alone (`stateful` false), frozen the same way. A VM
//! without a disk gets memory and state only.
//!
//! Restoring: `root.qcow2` is replaced by a fresh overlay over the snapshot's layer (what
//! the disk held after the snapshot is gone: restoring means going back), then a stateful
//! snapshot is resumed by a new VMM (`kapsel restore`; its state names `root.qcow2`), and a
//! disk-only one leaves the instance stopped, or boots it afresh if it was running. The layer
//! is never written, so a snapshot restores any number of times. Deleting a snapshot, an
//! instance or restoring removes the layers no disk chain and no snapshot reaches any more,
//! and folds each layer no snapshot names into the one image over it (`disks::compact`),
//! so taking and deleting snapshots keeps chains short.
//!
//! `copy` of a live VM freezes its disk the same way ([`freeze_running`]), without the
//! memory and state.
//! Snapshots recorded before disks were captured (no layer) restore as they did, on the
//! disk as it is.
//!
//! A snapshot is recorded before it is taken and marked complete at the end; one a daemon
//! left half-taken (it died meanwhile) is settled at the next start ([`recover`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use api::daemon::{Instance, InstanceStatus, Snapshot};
use api::vm::{DiskBackendRequest, DiskFormat};
use client::vm::VmClient;
use client::{ClientError, Endpoint};

use crate::db::{now, StoredSnapshot};
use crate::disks;
use crate::error::{DaemonError, Result};
use crate::lifecycle::{self, StartReason};
use crate::names::{check_name, MAX_NAME};
use crate::state::Daemon;

/// The disk id the daemon's VMMs give the instance disk (`--disk` without `id=`).
const DISK_ID: &str = "disk0";

fn view(d: &Daemon, instance: &str, s: &StoredSnapshot) -> Snapshot {
    Snapshot {
        instance: instance.to_string(),
        name: s.name.clone(),
        created_at: s.created_at,
        path: d
            .config
            .snapshot_dir(instance, &s.name)
            .display()
            .to_string(),
        stateful: s.stateful,
        disk_layer: s.layer.clone(),
    }
}

fn vmm_error(what: &str, e: ClientError) -> DaemonError {
    match e {
        ClientError::Status { status, message } if status < 500 => {
            DaemonError::Conflict(format!("VMM refused {what}: {message}"))
        }
        e => DaemonError::Vmm(format!("{what} through the VMM API failed: {e}")),
    }
}

pub fn list(d: &Daemon, instance: &str) -> Result<Vec<Snapshot>> {
    d.db().instance(instance)?;
    let rows = d.db().snapshots(instance)?;
    Ok(rows
        .iter()
        .filter(|s| s.complete)
        .map(|s| view(d, instance, s))
        .collect())
}

/// The instance's disk if it can be frozen (a qcow2 overlay), after checking that its chain
/// can take one more layer.
fn freezable_disk(inst: &Instance) -> Result<Option<PathBuf>> {
    let Some(disk) = inst.disk.as_deref().map(PathBuf::from) else {
        return Ok(None);
    };
    if disks::format_of(&disk) != disk::Format::Qcow2 {
        // A raw copy from before overlays: it cannot become a layer.
        return Ok(None);
    }
    let depth = disk::info_chain(&disk, Some(disk::Format::Qcow2))?.len();
    if depth >= disk::MAX_CHAIN_DEPTH {
        return Err(DaemonError::Conflict(format!(
            "the disk of '{}' is a chain of {depth} images already, the most kapsel opens is \
             {}: another snapshot layer would make it unusable",
            inst.name,
            disk::MAX_CHAIN_DEPTH
        )));
    }
    Ok(Some(disk))
}

/// Snapshots an instance: a running or paused VM with its memory, state and disk, a stopped
/// one with its disk.
pub fn create(d: &Daemon, instance: &str, name: &str) -> Result<Snapshot> {
    check_name("snapshot", name, MAX_NAME)?;
    let _guard = d.claim(instance, "snapshot")?;
    let (inst, _) = d.db().instance(instance)?;
    let live = d.procs().contains_key(instance);
    let running = inst.status == InstanceStatus::Running;
    if live && !(running || inst.status == InstanceStatus::Paused) {
        return Err(DaemonError::Conflict(format!(
            "instance '{instance}' is {}: a VM is snapshotted running, paused or stopped",
            inst.status.as_str()
        )));
    }
    let disk = freezable_disk(&inst)?;
    if !live && disk.is_none() {
        return Err(DaemonError::Conflict(format!(
            "instance '{instance}' is {} and has no qcow2 disk: there is nothing to snapshot",
            inst.status.as_str()
        )));
    }
    let layer = disk
        .as_ref()
        .map(|_| disks::new_layer(d, instance))
        .transpose()?;
    let stored = StoredSnapshot {
        name: name.to_string(),
        created_at: now(),
        stateful: live,
        layer: layer.as_ref().map(|l| l.display().to_string()),
        complete: false,
    };
    // Recorded first: a taken name stops here, and the layer counts as referenced from the
    // moment it exists.
    d.db().insert_snapshot(instance, &stored)?;
    let dir = d.config.snapshot_dir(instance, name);
    let stray = dir.exists(); // not this snapshot's to remove
    let taken = match (live, disk.as_deref().zip(layer.as_deref())) {
        (true, disk) => take_live(d, instance, running, &dir, disk),
        (false, Some((disk, layer))) => take_disk(&dir, disk, layer),
        (false, None) => Ok(()),
    };
    if let Err(e) = taken {
        let _ = d.db().delete_snapshot(instance, name);
        if !stray {
            let _ = std::fs::remove_dir_all(&dir);
        }
        tracing::warn!(instance, snapshot = name, error = %e.line(), "snapshot rolled back");
        return Err(e);
    }
    if let Err(e) = d.db().set_snapshot_complete(instance, name) {
        // Settled at the next daemon start (the disk switch is done).
        tracing::warn!(instance, snapshot = name, error = %e.line(), "snapshot not marked complete");
    }
    d.event("snapshot-created", Some(instance), name);
    Ok(view(
        d,
        instance,
        &StoredSnapshot {
            complete: true,
            ..stored
        },
    ))
}

/// A stopped VM's snapshot: its disk frozen into `layer`.
fn take_disk(dir: &Path, disk: &Path, layer: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| DaemonError::io("create", dir, e))?;
    let _held = disks::layers_lock();
    disks::freeze_to(disk, layer)
}

/// A live VM's snapshot: paused (if running), VMM snapshot into `dir`, disk frozen and
/// switched, resumed. Rolled back on any failure but the final resume.
fn take_live(
    d: &Daemon,
    instance: &str,
    running: bool,
    dir: &Path,
    disk: Option<(&Path, &Path)>,
) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DaemonError::io("create", parent, e))?;
    }
    with_paused(d, instance, running, |vm| {
        vm.snapshot(&dir.display().to_string())
            .map_err(|e| vmm_error("snapshot", e))?;
        match disk {
            Some((disk, layer)) => {
                let _held = disks::layers_lock();
                freeze_live(vm, disk, layer)
            }
            None => Ok(()),
        }
    })
}

/// Freezes the disk of a live VM into `layer` and switches its VMM onto a fresh overlay
/// over it, the guest paused meanwhile (if `running`; a paused one stays paused): what a
/// snapshot does to the disk, for `copy` of a running VM. On a failure the VMM's disk is as
/// it was. The caller holds [`disks::layers_lock`] until every overlay over `layer` exists.
pub(crate) fn freeze_running(
    d: &Daemon,
    instance: &str,
    running: bool,
    disk: &Path,
    layer: &Path,
) -> Result<()> {
    with_paused(d, instance, running, |vm| freeze_live(vm, disk, layer))
}

/// Runs `f` on the VMM of `instance` with its guest paused: paused first if `running`,
/// resumed after whatever `f` returned. A failed resume after `f` succeeded is logged (the
/// guest stays paused; resume it by hand) and does not fail the operation.
fn with_paused(
    d: &Daemon,
    instance: &str,
    running: bool,
    f: impl FnOnce(&VmClient) -> Result<()>,
) -> Result<()> {
    let vm = VmClient::new(
        Endpoint::new(d.config.api_socket(instance)).with_timeout(Duration::from_secs(120)),
    );
    if running {
        vm.pause().map_err(|e| vmm_error("pause", e))?;
    }
    let done = f(&vm);
    if running {
        if let Err(e) = vm.resume() {
            let e = vmm_error("resume", e);
            return match done {
                Ok(()) => {
                    tracing::error!(instance, error = %e.line(), "disk frozen, guest left paused");
                    Ok(())
                }
                Err(first) => Err(first),
            };
        }
    }
    done
}

/// Freezes the disk of a paused VM and switches its VMM to the new overlay; on a failed
/// switch the VMM's image takes the disk's name again. The caller holds
/// [`disks::layers_lock`].
fn freeze_live(vm: &VmClient, disk: &Path, layer: &Path) -> Result<()> {
    disks::freeze_to(disk, layer)?;
    let req = DiskBackendRequest {
        path: disk.display().to_string(),
        format: DiskFormat::Qcow2,
    };
    if let Err(e) = vm.set_disk_backend(DISK_ID, &req) {
        let e = vmm_error("disk switch", e);
        if let Err(undo) = disks::unfreeze(disk, layer) {
            // The VMM still serves the layer's file; the disk's name has a new overlay.
            tracing::error!(disk = %disk.display(), layer = %layer.display(), error = %undo.line(),
                "cannot put the disk back after a failed switch");
        }
        return Err(e);
    }
    Ok(())
}

/// Brings an instance back to a snapshot: its disk becomes a fresh overlay over the
/// snapshot's layer; a stateful snapshot is resumed by a new VMM (the old one, if any, is
/// killed: its state is gone anyway); a disk-only one leaves the VM stopped, or boots it
/// afresh if it was running.
pub fn restore(d: &Daemon, instance: &str, name: &str) -> Result<Instance> {
    let _guard = d.claim(instance, "snapshot restore")?;
    let (inst, _) = d.db().instance(instance)?;
    let snap = d.db().snapshot(instance, name)?;
    let dir = d.config.snapshot_dir(instance, name);
    if !snap.complete {
        return Err(DaemonError::Conflict(format!(
            "snapshot '{name}' of '{instance}' is not complete"
        )));
    }
    if snap.stateful && !dir.join("state").is_file() {
        return Err(DaemonError::Conflict(format!(
            "snapshot '{name}' of '{instance}' has no state file in {}",
            dir.display()
        )));
    }
    // The new disk is made first: a missing layer stops the restore before anything changed.
    let staged = match (snap.layer.as_deref(), inst.disk.as_deref()) {
        (Some(layer), Some(disk)) => Some(stage_disk(Path::new(layer), Path::new(disk))?),
        _ => None,
    };
    let was_live = d.procs().contains_key(instance);
    let switched = (|| -> Result<()> {
        if was_live {
            lifecycle::stop(d, instance, true)?;
        }
        if let Some((staged, disk)) = &staged {
            std::fs::rename(staged, disk).map_err(|e| DaemonError::io("rename", staged, e))?;
        }
        Ok(())
    })();
    if let Err(e) = switched {
        if let Some((staged, _)) = &staged {
            let _ = std::fs::remove_file(staged);
        }
        return Err(e);
    }
    if let Err(e) = disks::collect_garbage(d) {
        tracing::warn!(instance, error = %e.line(), "disk layers kept after a restore");
    }
    disks::compact_or_warn(d, Some(instance));
    let inst = if snap.stateful {
        lifecycle::start_from(d, instance, StartReason::User, Some(&dir))?
    } else if was_live {
        lifecycle::start(d, instance, StartReason::User)?
    } else {
        d.db().instance(instance)?.0
    };
    d.event("snapshot-restored", Some(instance), name);
    Ok(inst)
}

/// A fresh overlay over `layer` beside `disk`, to take its name; returns (overlay, disk).
fn stage_disk(layer: &Path, disk: &Path) -> Result<(PathBuf, PathBuf)> {
    if !layer.is_file() {
        return Err(DaemonError::Conflict(format!(
            "the snapshot's disk layer {} is missing",
            layer.display()
        )));
    }
    let staged = disk.with_extension("qcow2.restoring");
    let _ = std::fs::remove_file(&staged); // left by a daemon that died here
    disks::create_overlay(layer, disk::Format::Qcow2, &staged)?;
    Ok((staged, disk.to_path_buf()))
}

/// Deletes a snapshot; its layer goes once no disk chain needs it.
pub fn delete(d: &Daemon, instance: &str, name: &str) -> Result<()> {
    let _guard = d.claim(instance, "snapshot delete")?;
    d.db().instance(instance)?;
    d.db().delete_snapshot(instance, name)?;
    let dir = d.config.snapshot_dir(instance, name);
    if dir.starts_with(d.config.instance_dir(instance)) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) = disks::collect_garbage(d) {
        tracing::warn!(instance, error = %e.line(), "disk layers kept after a snapshot delete");
    }
    disks::compact_or_warn(d, Some(instance));
    d.event("snapshot-deleted", Some(instance), name);
    Ok(())
}

/// Settles the snapshots a previous daemon left half-taken (it died while taking them):
/// a disk whose VMM had switched to the new overlay (or a stopped VM's disk already frozen)
/// keeps its layer and the snapshot is complete; otherwise the disk goes back to the file
/// the guest was using and the record and directory go. A guest the snapshot paused (its
/// VMM paused while the instance is recorded running) runs again. Runs at daemon start,
/// after VMMs are re-attached and before anything starts.
pub fn recover(d: &Daemon) -> Result<()> {
    let pending = d.db().incomplete_snapshots()?;
    for (instance, snap) in pending {
        let (inst, _) = d.db().instance(&instance)?;
        let pid = d.procs().get(&instance).map(|p| p.pid);
        let kept = settle(&inst, &snap, pid).unwrap_or_else(|e| {
            tracing::warn!(instance, snapshot = %snap.name, error = %e.line(), "cannot settle a half-taken snapshot");
            false
        });
        if kept {
            d.db().set_snapshot_complete(&instance, &snap.name)?;
        } else {
            d.db().delete_snapshot(&instance, &snap.name)?;
            let dir = d.config.snapshot_dir(&instance, &snap.name);
            let _ = std::fs::remove_dir_all(&dir);
        }
        tracing::info!(instance, snapshot = %snap.name, kept, "half-taken snapshot settled");
        if pid.is_some() && inst.status == InstanceStatus::Running {
            resume_if_paused(d, &instance);
        }
    }
    disks::collect_garbage(d)?;
    // Finishes what a daemon that died while folding a layer left (or what it never did).
    disks::compact_or_warn(d, None);
    Ok(())
}

/// Whether a half-taken snapshot is in fact complete; if not, undoes its disk freeze.
fn settle(inst: &Instance, snap: &StoredSnapshot, pid: Option<i32>) -> Result<bool> {
    let (Some(layer), Some(disk)) = (snap.layer.as_deref(), inst.disk.as_deref()) else {
        return Ok(false);
    };
    let (layer, disk) = (Path::new(layer), Path::new(disk));
    let _ = std::fs::remove_file(disk.with_extension("qcow2.next"));
    let (Some(layer_id), Some(disk_id)) = (file_id(layer), file_id(disk)) else {
        return Ok(false);
    };
    if layer_id == disk_id {
        // Linked, not yet replaced: the second name goes.
        std::fs::remove_file(layer).map_err(|e| DaemonError::io("remove", layer, e))?;
        return Ok(false);
    }
    let chain = disk::info_chain(disk, Some(disk::Format::Qcow2))?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if chain.get(1).is_none_or(|i| abs(&i.path) != abs(layer)) {
        return Ok(false);
    }
    let switched = match pid {
        // A stopped VM's snapshot is complete once the overlay is in place.
        None if !snap.stateful => true,
        Some(pid) => open_file_ids(pid).contains(&disk_id),
        None => false,
    };
    if !switched {
        // The guest's writes since went to the layer's file: it takes the disk's name again.
        disks::unfreeze(disk, layer)?;
    }
    Ok(switched)
}

fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The files process `pid` has open, as (device, inode).
fn open_file_ids(pid: i32) -> Vec<(u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| r.flatten().filter_map(|e| file_id(&e.path())).collect())
        .unwrap_or_default()
}

/// Resumes the VMM of a guest recorded running that is paused.
fn resume_if_paused(d: &Daemon, instance: &str) {
    let vm = VmClient::new(
        Endpoint::new(d.config.api_socket(instance)).with_timeout(Duration::from_secs(10)),
    );
    if vm.info().is_ok_and(|i| i.state == api::vm::VmState::Paused) {
        match vm.resume() {
            Ok(_) => tracing::info!(instance, "guest paused by a half-taken snapshot resumed"),
            Err(e) => tracing::warn!(instance, error = %e, "cannot resume the guest"),
        }
    }
}
