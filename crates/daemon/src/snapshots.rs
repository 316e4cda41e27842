//! Instance snapshots through the VMM's control API: the VM is paused for the snapshot
//! (the VMM requires it) and resumed after if it was running. Snapshots live in the
//! instance's directory and are listed from the database. Restoring replaces the VMM with
//! one started from the snapshot (`kapsel restore`).

use std::time::Duration;

use api::daemon::{Instance, InstanceStatus, Snapshot};
use client::vm::VmClient;
use client::{ClientError, Endpoint};

use crate::db::now;
use crate::error::{DaemonError, Result};
use crate::lifecycle::{self, StartReason};
use crate::names::{check_name, MAX_NAME};
use crate::state::Daemon;

fn snapshot(d: &Daemon, instance: &str, name: &str, created_at: i64) -> Snapshot {
    Snapshot {
        instance: instance.to_string(),
        name: name.to_string(),
        created_at,
        path: d.config.snapshot_dir(instance, name).display().to_string(),
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
        .into_iter()
        .map(|(n, t)| snapshot(d, instance, &n, t))
        .collect())
}

/// Snapshots a running or paused instance.
pub fn create(d: &Daemon, instance: &str, name: &str) -> Result<Snapshot> {
    check_name("snapshot", name, MAX_NAME)?;
    let _guard = d.claim(instance, "snapshot")?;
    let (inst, _) = d.db().instance(instance)?;
    let running = inst.status == InstanceStatus::Running;
    if !d.procs().contains_key(instance) || !(running || inst.status == InstanceStatus::Paused) {
        return Err(DaemonError::Conflict(format!(
            "instance '{instance}' is {}: only a running or paused guest can be snapshotted",
            inst.status.as_str()
        )));
    }
    let created_at = now();
    d.db().insert_snapshot(instance, name, created_at)?;
    let dir = d.config.snapshot_dir(instance, name);
    let vm = VmClient::new(
        Endpoint::new(d.config.api_socket(instance)).with_timeout(Duration::from_secs(120)),
    );
    let result = (|| -> Result<()> {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DaemonError::io("create", parent, e))?;
        }
        if running {
            vm.pause().map_err(|e| vmm_error("pause", e))?;
        }
        let taken = vm
            .snapshot(&dir.display().to_string())
            .map_err(|e| vmm_error("snapshot", e));
        if running {
            vm.resume().map_err(|e| vmm_error("resume", e))?;
        }
        taken.map(|_| ())
    })();
    if let Err(e) = result {
        let _ = d.db().delete_snapshot(instance, name);
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    d.event("snapshot-created", Some(instance), name);
    Ok(snapshot(d, instance, name, created_at))
}

/// Brings a VM back to a snapshot: its VMM (if any) is killed, its state is gone anyway,
/// and a new one resumes the snapshot (`kapsel restore`) with the instance's console and API
/// sockets, in its cgroup, supervised as before.
pub fn restore(d: &Daemon, instance: &str, name: &str) -> Result<Instance> {
    let _guard = d.claim(instance, "snapshot restore")?;
    d.db().instance(instance)?;
    if !d.db().snapshots(instance)?.iter().any(|(n, _)| n == name) {
        return Err(DaemonError::not_found("snapshot", name));
    }
    let dir = d.config.snapshot_dir(instance, name);
    if !dir.join("state").is_file() {
        return Err(DaemonError::Conflict(format!(
            "snapshot '{name}' of '{instance}' has no state file in {}",
            dir.display()
        )));
    }
    if d.procs().contains_key(instance) {
        lifecycle::stop(d, instance, true)?;
    }
    let inst = lifecycle::start_from(d, instance, StartReason::User, Some(&dir))?;
    d.event("snapshot-restored", Some(instance), name);
    Ok(inst)
}

pub fn delete(d: &Daemon, instance: &str, name: &str) -> Result<()> {
    let _guard = d.claim(instance, "snapshot delete")?;
    d.db().instance(instance)?;
    d.db().delete_snapshot(instance, name)?;
    let dir = d.config.snapshot_dir(instance, name);
    if dir.starts_with(d.config.instance_dir(instance)) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    d.event("snapshot-deleted", Some(instance), name);
    Ok(())
}
