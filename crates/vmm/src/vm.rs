//! A running VM and the operations the control API offers on it: info, pause, resume,
//! graceful shutdown, snapshot, run-time device changes (limits, balloon, disk images). Every operation checks the lifecycle state machine first; a
//! call in the wrong state is a [`VmActionError::State`] the API answers with 409.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::vm::{
    DiskBackend, DiskBackendRequest, IoLimit, NetLimits, SnapshotInfo, VmConfigInfo, VmCounters,
    VmInfo,
};
use arch::GuestMemoryMmap;

use crate::balloon::BalloonError;
use crate::builder::BuiltVm;
use crate::devices::DeviceManager;
use crate::disk_backend::DiskBackendError;
use crate::io_limits::IoLimitError;
use crate::snapshot::{write_snapshot, SnapshotError, SnapshotState};
use crate::state::{transition, StateError, VmState};
use crate::vcpu::{
    spawn_vcpu, stop_vcpus, ExitSignal, VcpuCommand, VcpuContext, VcpuError, VcpuHandle,
    VcpuResponse,
};
use crate::{VmConfig, VmmError};

#[derive(Debug, thiserror::Error)]
pub enum VmActionError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("snapshots need a paused VM; the VM is {0} (pause it first)")]
    NotPaused(VmState),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("vCPU {id}: {message}")]
    VcpuFailed { id: u8, message: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    DeviceState(VmmError),
}

impl VmActionError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            VmActionError::State(_) | VmActionError::NotPaused(_) => 409,
            VmActionError::DeviceState(VmmError::DeviceState {
                source: pci::VirtioPciError::State(virtio::StateError::Unsupported(_)),
                ..
            }) => 409,
            VmActionError::Snapshot(SnapshotError::Exists(_)) => 409,
            VmActionError::Snapshot(SnapshotError::Write { .. }) => 400,
            _ => 500,
        }
    }
}

/// A VM whose vCPU threads exist.
pub struct Vmm {
    config: VmConfig,
    state: VmState,
    vm: hv::Vm,
    memory: GuestMemoryMmap,
    devices: DeviceManager,
    pci: crate::pci::PciDevices,
    vcpus: Vec<VcpuHandle>,
    stop: Arc<AtomicBool>,
    exit: Arc<ExitSignal>,
    io_exits: Arc<AtomicU64>,
    start: Instant,
    paused_since: Option<Instant>,
    paused_total: Duration,
    restored_from: Option<PathBuf>,
    msr_list: Arc<Vec<u32>>,
    shutdown_deadline: Option<Instant>,
    io_limits: crate::io_limits::IoLimits,
    disk_backends: crate::disk_backend::DiskBackends,
    balloon: Option<crate::balloon::VmBalloon>,
}

impl Vmm {
    /// Starts the vCPU threads of `built`, running or paused.
    pub fn start(
        config: VmConfig,
        built: BuiltVm,
        start: Instant,
        paused: bool,
        restored_from: Option<PathBuf>,
    ) -> Result<Self, VmmError> {
        let exit = Arc::new(ExitSignal::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let io_exits = Arc::new(AtomicU64::new(0));
        let ctx = VcpuContext {
            pio_bus: built.devices.pio_bus.clone(),
            mmio_bus: built.devices.mmio_bus.clone(),
            stop: stop.clone(),
            exit: exit.clone(),
            io_exits: io_exits.clone(),
        };
        let mut vcpus = Vec::with_capacity(built.vcpus.len());
        for vcpu in built.vcpus {
            vcpus.push(spawn_vcpu(vcpu, ctx.clone(), paused)?);
        }
        let mut state = VmState::Created;
        let target = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        transition(&mut state, target).map_err(|e| VmmError::Device(e.to_string()))?;
        Ok(Vmm {
            config,
            state,
            vm: built.vm,
            memory: built.memory,
            devices: built.devices,
            pci: built.pci,
            vcpus,
            stop,
            exit,
            io_exits,
            start,
            paused_since: paused.then(Instant::now),
            paused_total: Duration::ZERO,
            restored_from,
            msr_list: Arc::new(built.msr_list),
            shutdown_deadline: None,
            io_limits: built.io_limits,
            disk_backends: built.disk_backends,
            balloon: built.balloon,
        })
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    pub fn exit_signal(&self) -> &Arc<ExitSignal> {
        &self.exit
    }

    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The limits of disk `id` in effect.
    pub fn disk_limits(&self, id: &str) -> Result<IoLimit, IoLimitError> {
        self.io_limits.disk_limits(id)
    }

    /// Replaces the limits of disk `id` (and its configuration, which snapshots save).
    pub fn set_disk_limits(&mut self, id: &str, limit: &IoLimit) -> Result<IoLimit, IoLimitError> {
        let index = self.io_limits.set_disk_limits(id, limit)?;
        if let Some(disk) = self.config.disks.get_mut(index) {
            disk.limit = crate::io_limits::to_spec(limit);
        }
        self.io_limits.disk_limits(id)
    }

    /// The image disk `id` serves.
    pub fn disk_backend(&self, id: &str) -> Result<DiskBackend, DiskBackendError> {
        self.disk_backends.get(id, &self.config.disks, &self.pci)
    }

    /// Makes disk `id` of the paused VM continue on another image (see `disk_backend.rs`);
    /// the configuration, which snapshots save, names the new image from now on.
    pub fn set_disk_backend(
        &mut self,
        id: &str,
        req: &DiskBackendRequest,
    ) -> Result<DiskBackend, DiskBackendError> {
        self.disk_backends
            .set(id, req, self.state, &mut self.config.disks, &self.pci)
    }

    /// The balloon's target, size and the guest's latest statistics.
    pub fn balloon(&self) -> Result<api::vm::BalloonInfo, BalloonError> {
        Ok(self.balloon.as_ref().ok_or(BalloonError::NoBalloon)?.info())
    }

    /// Asks the guest to hand `target_mib` MiB to the balloon (0: take everything back).
    pub fn set_balloon(&self, target_mib: u64) -> Result<api::vm::BalloonInfo, BalloonError> {
        self.balloon
            .as_ref()
            .ok_or(BalloonError::NoBalloon)?
            .set_target(target_mib, self.config.memory)
    }

    /// The limits of network card `id` in effect.
    pub fn net_limits(&self, id: &str) -> Result<NetLimits, IoLimitError> {
        self.io_limits.net_limits(id)
    }

    /// Replaces the limits of network card `id` (and its configuration).
    pub fn set_net_limits(
        &mut self,
        id: &str,
        limits: &NetLimits,
    ) -> Result<NetLimits, IoLimitError> {
        let index = self.io_limits.set_net_limits(id, limits)?;
        if let Some(net) = self.config.nets.get_mut(index) {
            net.rx = crate::io_limits::to_spec(&limits.rx);
            net.tx = crate::io_limits::to_spec(&limits.tx);
        }
        self.io_limits.net_limits(id)
    }

    /// When a graceful shutdown must be forced, if one is under way.
    pub fn shutdown_deadline(&self) -> Option<Instant> {
        self.shutdown_deadline
    }

    pub fn info(&self) -> VmInfo {
        let paused_now = self.paused_since.map_or(Duration::ZERO, |t| t.elapsed());
        VmInfo {
            state: self.state,
            config: VmConfigInfo {
                cpus: self.config.cpus,
                memory_mib: self.config.memory >> 20,
                kernel: self.config.kernel.display().to_string(),
                initrd: self.config.initrd.as_ref().map(|p| p.display().to_string()),
                cmdline: self.config.cmdline.clone(),
            },
            counters: VmCounters {
                uptime_ms: self.start.elapsed().as_millis() as u64,
                io_exits: self.io_exits.load(Ordering::Relaxed),
                paused_ms: (self.paused_total + paused_now).as_millis() as u64,
            },
            restored_from: self.restored_from.as_ref().map(|p| p.display().to_string()),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Prometheus text exposition of the VM's counters.
    pub fn metrics(&self) -> String {
        let info = self.info();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "kapsel_vm_uptime_seconds",
            "gauge",
            "Seconds since the VMM started.",
            format!("{:.3}", info.counters.uptime_ms as f64 / 1000.0),
        );
        metric(
            "kapsel_vm_io_exits_total",
            "counter",
            "vCPU exits handled in userspace.",
            info.counters.io_exits.to_string(),
        );
        metric(
            "kapsel_vm_paused_seconds_total",
            "counter",
            "Seconds spent paused.",
            format!("{:.3}", info.counters.paused_ms as f64 / 1000.0),
        );
        metric(
            "kapsel_vm_vcpus",
            "gauge",
            "Number of vCPUs.",
            self.config.cpus.to_string(),
        );
        metric(
            "kapsel_vm_memory_bytes",
            "gauge",
            "Guest memory size.",
            self.config.memory.to_string(),
        );
        out.push_str(
            "# HELP kapsel_vm_state The VM's lifecycle state.\n# TYPE kapsel_vm_state gauge\n",
        );
        for s in VmState::ALL {
            out.push_str(&format!(
                "kapsel_vm_state{{state=\"{s}\"}} {}\n",
                u8::from(s == self.state)
            ));
        }
        if let Some(b) = &self.balloon {
            b.metrics(&mut out);
        }
        out
    }

    fn broadcast(
        &self,
        make: impl Fn() -> VcpuCommand,
    ) -> Result<Vec<VcpuResponse>, VmActionError> {
        let mut out = Vec::with_capacity(self.vcpus.len());
        for v in &self.vcpus {
            let r = v.request(make())?;
            if let VcpuResponse::Error(message) = r {
                return Err(VmActionError::VcpuFailed {
                    id: v.id(),
                    message,
                });
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Stops every vCPU at an instruction boundary.
    pub fn pause(&mut self) -> Result<(), VmActionError> {
        let mut next = self.state;
        transition(&mut next, VmState::Paused)?;
        self.broadcast(|| VcpuCommand::Pause)?;
        self.state = next;
        self.paused_since = Some(Instant::now());
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&mut self) -> Result<(), VmActionError> {
        let mut next = self.state;
        transition(&mut next, VmState::Running)?;
        self.broadcast(|| VcpuCommand::Resume)?;
        self.state = next;
        if let Some(t) = self.paused_since.take() {
            self.paused_total += t.elapsed();
        }
        Ok(())
    }

    /// Asks the guest to shut down (Ctrl-Alt-Del); the control loop forces the stop at the
    /// deadline. A zero timeout stops at once (returns true: end the VM now).
    pub fn shutdown(&mut self, timeout: Duration) -> Result<bool, VmActionError> {
        if timeout.is_zero() {
            transition(&mut self.state, VmState::Shutdown)?;
            return Ok(true);
        }
        let mut next = self.state;
        transition(&mut next, VmState::ShuttingDown)?;
        if self.state == VmState::Paused {
            self.resume()?;
        }
        self.devices
            .ctrl_alt_del()
            .map_err(|e| VmActionError::Device(e.to_string()))?;
        self.state = next;
        self.shutdown_deadline = Some(Instant::now() + timeout);
        Ok(false)
    }

    /// Asks the guest to reboot (Ctrl-Alt-Del). kapsel ends when the guest resets.
    pub fn reboot(&mut self) -> Result<(), VmActionError> {
        if self.state != VmState::Running {
            return Err(VmActionError::State(StateError {
                from: self.state,
                to: VmState::Running,
            }));
        }
        self.devices
            .ctrl_alt_del()
            .map_err(|e| VmActionError::Device(e.to_string()))
    }

    /// Writes a snapshot of the paused VM into `dir`. The virtio devices pause for it: their
    /// workers complete the requests they hold and stop, so the snapshot has no I/O in
    /// flight and guest memory stays still while it is written; they resume afterwards.
    pub fn snapshot(&mut self, dir: &Path) -> Result<SnapshotInfo, VmActionError> {
        if self.state != VmState::Paused {
            return Err(VmActionError::NotPaused(self.state));
        }
        let t0 = Instant::now();
        let virtio = self
            .pci
            .pause_and_save()
            .map_err(VmActionError::DeviceState)?;
        let result = self.write_snapshot(dir, virtio);
        self.pci.resume();
        let written = result?;
        Ok(SnapshotInfo {
            path: dir.display().to_string(),
            state_bytes: written.state_bytes,
            memory_bytes: written.memory_bytes,
            duration_ms: t0.elapsed().as_millis() as u64,
        })
    }

    fn write_snapshot(
        &self,
        dir: &Path,
        virtio: Vec<crate::pci::VirtioSnapshot>,
    ) -> Result<crate::snapshot::WrittenSnapshot, VmActionError> {
        let list = self.msr_list.clone();
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for r in self.broadcast(|| VcpuCommand::SaveState(list.clone()))? {
            if let VcpuResponse::State(s) = r {
                vcpus.push(*s);
            }
        }
        let state = SnapshotState {
            config: self.config.clone(),
            vm: self.vm.save_state().map_err(SnapshotError::Hv)?,
            vcpus,
            devices: self.devices.save_state(),
            virtio,
            memory: Default::default(),
        };
        Ok(write_snapshot(dir, state, &self.memory)?)
    }

    /// Stops the vCPU threads; the VM is over.
    pub fn stop(mut self) {
        self.state = VmState::Shutdown;
        stop_vcpus(&self.stop, std::mem::take(&mut self.vcpus));
    }
}
