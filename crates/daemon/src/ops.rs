//! The instance operations behind the API: each validates, claims the instance (so a
//! concurrent conflicting call gets a 409), changes state in one place and emits an event.

use api::daemon::{
    CreateInstance, Instance, InstanceConfig, InstanceKind, InstanceStatus, InstanceUpdate,
};

use crate::db::now;
use crate::error::{DaemonError, Result};
use crate::images::sparse_copy;
use crate::lifecycle::{self, StartReason};
use crate::names::{check_config, check_name, MAX_NAME};
use crate::state::Daemon;
use std::path::Path;

/// The instance as the API shows it: stored state plus the console of a live VMM.
pub fn view(d: &Daemon, mut inst: Instance) -> Instance {
    if d.procs().contains_key(&inst.name) {
        inst.console = Some(d.config.console_socket(&inst.name).display().to_string());
    }
    inst
}

pub fn get(d: &Daemon, name: &str) -> Result<Instance> {
    let (inst, _) = d.db().instance(name)?;
    Ok(view(d, inst))
}

pub fn list(d: &Daemon) -> Result<Vec<Instance>> {
    let all = d.db().instances()?;
    Ok(all.into_iter().map(|(i, _)| view(d, i)).collect())
}

/// Creates an instance (and starts it when `req.start`).
pub fn create(d: &Daemon, req: &CreateInstance) -> Result<Instance> {
    check_name("instance", &req.name, MAX_NAME)?;
    let config = req.config();
    check_config(&config, d.host_cpus, d.host_memory_mib)?;
    let _guard = d.claim(&req.name, "create")?;
    let image = d.db().image(&req.image).map_err(|e| match e {
        DaemonError::NotFound { .. } => {
            DaemonError::BadRequest(format!("image '{}' does not exist", req.image))
        }
        e => e,
    })?;
    check_networks(d, &config.networks)?;
    if let Some(want) = req.kind {
        if want != image.kind {
            return Err(DaemonError::BadRequest(format!(
                "image '{}' is a {} image, not a {} image",
                req.image,
                image.kind.as_str(),
                want.as_str()
            )));
        }
    }
    let container = image.kind == InstanceKind::Container;
    if container {
        crate::container::ops::check_config(&config)?;
    } else if !config.command.is_empty() || config.pids_limit.is_some() {
        return Err(DaemonError::BadRequest(
            "command and pids_limit apply to containers only".into(),
        ));
    }
    let address = match config.networks.first() {
        Some(n) if container => Some(crate::container::net::allocate(d, n)?),
        _ => None,
    };
    let disk = image.disk.as_ref().map(|_| {
        d.config
            .instance_dir(&req.name)
            .join(crate::disks::ROOT_DISK)
    });
    let mut inst = Instance {
        name: req.name.clone(),
        image: req.image.clone(),
        kind: image.kind,
        status: InstanceStatus::Stopped,
        config,
        pid: None,
        restarts: 0,
        created_at: now(),
        last_exit: None,
        console: None,
        disk: disk.as_ref().map(|p| p.display().to_string()),
        address,
    };
    if let Some(settings) = &req.settings {
        // `launch -c key=value`: what `config set` takes, in force from the first start
        inst.config = merged_config(d, &inst, settings)?;
    }
    d.db().insert_instance(&inst)?;
    let prepared = (|| -> Result<()> {
        let dir = d.config.instance_dir(&req.name);
        std::fs::create_dir_all(&dir).map_err(|e| DaemonError::io("create", &dir, e))?;
        if let (Some(src), Some(dst)) = (&image.disk, &disk) {
            // A copy-on-write overlay over the pool's image: nothing is copied.
            crate::disks::create_overlay(std::path::Path::new(src), disk::Format::Raw, dst)?;
        }
        Ok(())
    })();
    if let Err(e) = prepared {
        let _ = d.db().delete_instance(&req.name);
        let _ = std::fs::remove_dir_all(d.config.instance_dir(&req.name));
        return Err(e);
    }
    d.event("instance-created", Some(&req.name), &req.image);
    if req.start {
        return lifecycle::start(d, &req.name, StartReason::User).map(|i| view(d, i));
    }
    get(d, &req.name)
}

fn check_networks(d: &Daemon, nets: &[String]) -> Result<()> {
    if nets.is_empty() {
        return Ok(());
    }
    let known = d.db().networks()?;
    for n in nets {
        if !known.iter().any(|k| &k.name == n) {
            return Err(DaemonError::BadRequest(format!(
                "network '{n}' does not exist"
            )));
        }
    }
    Ok(())
}

pub fn start(d: &Daemon, name: &str) -> Result<Instance> {
    let _guard = d.claim(name, "start")?;
    d.db().instance(name)?;
    // A pending supervised restart is superseded by this explicit start.
    lifecycle::start(d, name, StartReason::User).map(|i| view(d, i))
}

pub fn stop(d: &Daemon, name: &str, force: bool) -> Result<Instance> {
    let _guard = d.claim(name, "stop")?;
    let (inst, _) = d.db().instance(name)?;
    if !d.procs().contains_key(name) {
        if inst.status == InstanceStatus::Starting {
            // A restart was pending: cancel it.
            d.db().set_stopped(name, InstanceStatus::Stopped, None)?;
            return get(d, name);
        }
        return Err(DaemonError::Conflict(format!(
            "instance '{name}' is not running"
        )));
    }
    if inst.kind == InstanceKind::Container && inst.status == InstanceStatus::Paused {
        // Frozen processes cannot act on the stop signals.
        crate::container::ops::pause(d, name, false)?;
    }
    lifecycle::stop(d, name, force)?;
    // The disk is no VMM's now: layers only it used fold into it.
    crate::disks::compact_or_warn(d, Some(name));
    get(d, name)
}

/// Pauses (`true`) or resumes the guest's vCPUs through its VMM's control API.
pub fn pause(d: &Daemon, name: &str, pause: bool) -> Result<Instance> {
    let what = if pause { "pause" } else { "resume" };
    let _guard = d.claim(name, what)?;
    let (inst, _) = d.db().instance(name)?;
    let want_from = if pause {
        InstanceStatus::Running
    } else {
        InstanceStatus::Paused
    };
    if !d.procs().contains_key(name) || inst.status != want_from {
        return Err(DaemonError::Conflict(format!(
            "cannot {what} instance '{name}': it is {}",
            inst.status.as_str()
        )));
    }
    if inst.kind == InstanceKind::Container {
        crate::container::ops::pause(d, name, pause)?;
    } else {
        pause_vm(d, name, pause)?;
    }
    let next = if pause {
        InstanceStatus::Paused
    } else {
        InstanceStatus::Running
    };
    d.db().set_status(name, next)?;
    d.event(
        if pause {
            "instance-paused"
        } else {
            "instance-resumed"
        },
        Some(name),
        "",
    );
    get(d, name)
}

/// Pauses or resumes a VM's vCPUs through its VMM's control API.
fn pause_vm(d: &Daemon, name: &str, pause: bool) -> Result<()> {
    let what = if pause { "pause" } else { "resume" };
    let vm = client::vm::VmClient::new(
        client::Endpoint::new(d.config.api_socket(name))
            .with_timeout(std::time::Duration::from_secs(10)),
    );
    let mut attempt = 0;
    loop {
        let r = if pause { vm.pause() } else { vm.resume() };
        match r {
            Ok(_) => break,
            // The API socket appears shortly after the console one: retry briefly.
            Err(client::ClientError::Connect { .. }) if attempt < 40 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(client::ClientError::Status { status, message }) if status < 500 => {
                return Err(DaemonError::Conflict(format!(
                    "VMM refused {what}: {message}"
                )))
            }
            Err(e) => {
                return Err(DaemonError::Vmm(format!(
                    "{what} through the VMM API failed: {e}"
                )))
            }
        }
    }
    Ok(())
}

pub fn restart(d: &Daemon, name: &str) -> Result<Instance> {
    let _guard = d.claim(name, "restart")?;
    d.db().instance(name)?;
    if d.procs().contains_key(name) {
        let (inst, _) = d.db().instance(name)?;
        if inst.kind == InstanceKind::Container && inst.status == InstanceStatus::Paused {
            crate::container::ops::pause(d, name, false)?;
        }
        lifecycle::stop(d, name, false)?;
    }
    lifecycle::start(d, name, StartReason::User).map(|i| view(d, i))
}

pub fn delete(d: &Daemon, name: &str, force: bool) -> Result<()> {
    let _guard = d.claim(name, "delete")?;
    d.db().instance(name)?;
    if d.procs().contains_key(name) {
        if !force {
            return Err(DaemonError::Conflict(format!(
                "instance '{name}' is running; stop it first or delete with force"
            )));
        }
        lifecycle::stop(d, name, true)?;
    }
    let (inst, _) = d.db().instance(name)?;
    d.db().delete_instance(name)?;
    if inst.kind == InstanceKind::Container {
        crate::container::ops::clean_up(d, name);
    }
    d.cgroups.remove(name);
    for (i, net) in inst.config.networks.iter().enumerate() {
        crate::netsetup::remove_tap(&crate::netsetup::tap_name(name, i));
        crate::netsetup::unregister_host(&d.config.state_dir, net, name);
    }
    let _ = std::fs::remove_dir_all(d.config.instance_dir(name));
    let _ = std::fs::remove_dir_all(d.config.instance_run_dir(name));
    if let Err(e) = crate::disks::collect_garbage(d) {
        tracing::warn!("disk layers kept after deleting '{name}': {}", e.line());
    }
    crate::disks::compact_or_warn(d, None);
    d.event("instance-deleted", Some(name), "");
    Ok(())
}

/// Applies a partial configuration change; limits apply live to a running guest.
/// The instance's configuration with `upd` applied, checked as a whole (nothing applied).
fn merged_config(d: &Daemon, inst: &Instance, upd: &InstanceUpdate) -> Result<InstanceConfig> {
    let mut c = inst.config.clone();
    if let Some(v) = upd.cpus {
        c.cpus = v;
    }
    if let Some(v) = upd.memory_mib {
        c.memory_mib = v;
    }
    if let Some(v) = &upd.cmdline {
        c.cmdline = v.clone();
    }
    if let Some(v) = upd.restart {
        c.restart = v;
    }
    if let Some(v) = upd.autostart {
        c.autostart = v;
    }
    if let Some(v) = upd.cpu_weight {
        c.cpu_weight = (v != 0).then_some(v);
    }
    if let Some(v) = upd.cpu_cap_percent {
        c.cpu_cap_percent = (v != 0).then_some(v);
    }
    if let Some(v) = &upd.cpuset {
        c.cpuset = (!v.is_empty()).then(|| v.clone());
    }
    if let Some(v) = upd.memory_limit_mib {
        c.memory_limit_mib = (v != 0).then_some(v);
    }
    let container = inst.kind == InstanceKind::Container;
    if let Some(v) = &upd.memory_backing {
        if container && !v.is_empty() {
            return Err(DaemonError::BadRequest(
                "memory_backing applies to VMs only".into(),
            ));
        }
        c.memory_backing = v.clone();
    }
    if let Some(v) = upd.balloon_mib {
        if container {
            return Err(DaemonError::BadRequest(
                "balloon_mib applies to VMs only".into(),
            ));
        }
        c.balloon_mib = Some(v);
    }
    if let Some(v) = upd.disk_limits {
        c.disk_limits = Some(v);
    }
    if let Some(v) = upd.net_limits {
        c.net_limits = Some(v);
    }
    if container && (c.disk_limits.is_some() || c.net_limits.is_some()) {
        return Err(DaemonError::BadRequest(
            "disk_limits and net_limits apply to VMs only".into(),
        ));
    }
    crate::iolimits::check(inst, &c)?;
    crate::iolimits::normalize(&mut c);
    if let Some(v) = upd.pids_limit {
        if !container {
            return Err(DaemonError::BadRequest(
                "pids_limit applies to containers only".into(),
            ));
        }
        c.pids_limit = (v != 0).then_some(v);
    }
    check_config(&c, d.host_cpus, d.host_memory_mib)?;
    if container {
        crate::container::ops::check_config(&c)?;
    }
    Ok(c)
}

pub fn update(d: &Daemon, name: &str, upd: &InstanceUpdate) -> Result<Instance> {
    let _guard = d.claim(name, "config set")?;
    let (inst, _) = d.db().instance(name)?;
    let c = merged_config(d, &inst, upd)?;
    let container = inst.kind == InstanceKind::Container;
    if d.procs().contains_key(name) {
        if container {
            let res = crate::cgroups::container_resources(&c, d.host_cpus);
            d.cgroups.apply(name, &res)?;
        } else {
            d.cgroups.update(name, &c)?;
            if upd.disk_limits.is_some() || upd.net_limits.is_some() {
                crate::iolimits::apply(d, &inst, &c)?;
            }
            if let Some(target) = upd.balloon_mib {
                let live = crate::balloon::set_target(d, name, target, std::time::Duration::ZERO)?;
                if !live {
                    tracing::info!(
                        instance = name,
                        "no balloon in the running VMM: target applies from the next start"
                    );
                }
            }
        }
    }
    d.db().set_config(name, &c)?;
    let detail = serde_json::to_string(upd).unwrap_or_default();
    d.event("instance-updated", Some(name), &detail);
    get(d, name)
}

/// The clone's disk: a linked clone (overlay over the source's frozen layer) for qcow2
/// disks; a sparse copy for raw disks of instances made before overlays. A live source
/// (`live` = whether it runs, as opposed to paused) is frozen as a snapshot freezes it:
/// paused, its VMM switched onto a fresh overlay over the layer, resumed.
fn copy_disk(d: &Daemon, name: &str, from: &Path, to: &Path, live: Option<bool>) -> Result<()> {
    if crate::disks::format_of(from) != disk::Format::Qcow2 {
        if live.is_some() {
            return Err(DaemonError::Conflict(format!(
                "instance '{name}' is running on a raw disk (made before overlays); stop it \
                 before copying"
            )));
        }
        return sparse_copy(from, to);
    }
    let _held = crate::disks::layers_lock();
    let layer = match live {
        Some(running) => {
            let layer = crate::disks::new_layer(d, name)?;
            crate::snapshots::freeze_running(d, name, running, from, &layer)?;
            layer
        }
        None => crate::disks::freeze(d, from, name)?,
    };
    let _ = std::fs::remove_file(to);
    crate::disks::create_overlay(&layer, disk::Format::Qcow2, to)
}

/// Copies an instance's configuration and disk to a new instance (not started). A running
/// or paused VM is copied live: its disk freezes into a layer while it is paused for a
/// moment, and the copy gets its own overlay over that layer.
pub fn copy(d: &Daemon, name: &str, new_name: &str) -> Result<Instance> {
    check_name("instance", new_name, MAX_NAME)?;
    let _guard = d.claim(name, "copy")?;
    let (src, _) = d.db().instance(name)?;
    let live = match (d.procs().contains_key(name), &src.disk) {
        (true, Some(_)) => match src.status {
            InstanceStatus::Running => Some(true),
            InstanceStatus::Paused => Some(false),
            other => {
                return Err(DaemonError::Conflict(format!(
                    "instance '{name}' is {}: a VM is copied running, paused or stopped",
                    other.as_str()
                )))
            }
        },
        _ => None,
    };
    let req = CreateInstance {
        name: new_name.to_string(),
        image: src.image.clone(),
        kind: Some(src.kind),
        cpus: src.config.cpus,
        memory_mib: src.config.memory_mib,
        cmdline: src.config.cmdline.clone(),
        restart: src.config.restart,
        autostart: src.config.autostart,
        cpu_weight: src.config.cpu_weight,
        cpu_cap_percent: src.config.cpu_cap_percent,
        cpuset: src.config.cpuset.clone(),
        memory_limit_mib: src.config.memory_limit_mib,
        networks: src.config.networks.clone(),
        command: src.config.command.clone(),
        pids_limit: src.config.pids_limit,
        start: false,
        // what only `config set` reaches comes along too
        settings: Some(InstanceUpdate {
            memory_backing: (!src.config.memory_backing.is_empty())
                .then(|| src.config.memory_backing.clone()),
            disk_limits: src.config.disk_limits,
            net_limits: src.config.net_limits,
            balloon_mib: src.config.balloon_mib,
            ..Default::default()
        }),
    };
    let created = create(d, &req)?;
    if src.kind == InstanceKind::Container {
        if let Err(e) = crate::container::ops::copy_layer(d, name, new_name) {
            let _ = d.db().delete_instance(new_name);
            let _ = std::fs::remove_dir_all(d.config.instance_dir(new_name));
            return Err(e);
        }
    }
    if let (Some(from), Some(to)) = (&src.disk, &created.disk) {
        if let Err(e) = copy_disk(d, name, Path::new(from), Path::new(to), live) {
            let _ = d.db().delete_instance(new_name);
            let _ = std::fs::remove_dir_all(d.config.instance_dir(new_name));
            return Err(e);
        }
    }
    d.event("instance-copied", Some(new_name), name);
    Ok(created)
}
