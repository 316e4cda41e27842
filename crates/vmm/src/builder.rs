//! Builds a ready-to-run VM from a validated [`VmConfig`]: memory, in-kernel interrupt
//! controllers, kernel and initrd, boot structures and firmware tables, devices, vCPUs.

use std::fs::File;
use std::time::Instant;

use arch::layout::CMDLINE_START;
use arch::loader::LoadedKernel;
use arch::regs::BootEntry;
use arch::GuestMemoryMmap;
use hv::{Hypervisor, Vcpu};
use vm_memory::{Bytes, GuestAddress};

use crate::config::{host_memory, VmConfig};
use crate::devices::DeviceManager;
use crate::memory::{create_guest_memory, register_guest_memory};
use crate::VmmError;

/// A VM with everything in place, before its vCPUs run.
pub struct BuiltVm {
    /// Kept alive for as long as the VM runs: KVM holds references to both.
    pub vm: hv::Vm,
    pub memory: GuestMemoryMmap,
    pub devices: DeviceManager,
    /// PCI bus 0 and the virtio devices on it.
    pub pci: crate::pci::PciDevices,
    pub vcpus: Vec<Vcpu>,
    /// The MSRs a snapshot saves for each vCPU.
    pub msr_list: Vec<u32>,
    /// The disks' and network cards' rate limiters (for run-time changes).
    pub io_limits: crate::io_limits::IoLimits,
    /// The image each disk has open (for run-time backend switches).
    pub disk_backends: crate::disk_backend::DiskBackends,
    /// The memory balloon, if configured.
    pub balloon: Option<crate::balloon::VmBalloon>,
}

fn open(what: &'static str, path: &std::path::Path) -> Result<File, VmmError> {
    File::open(path).map_err(|source| VmmError::OpenFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Checks the command line against the kernel's limit and writes it (NUL-terminated).
fn write_cmdline(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
) -> Result<usize, VmmError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(VmmError::CmdlineNul);
    }
    let max = kernel.cmdline_max();
    if cmdline.len() > max {
        return Err(VmmError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(VmmError::CmdlineWrite)?;
    Ok(cmdline.len())
}

/// Writes the kernel, command line, initrd, firmware tables and boot structures into guest
/// memory; returns the loaded kernel (its entry point).
fn load_guest(
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    kernel_file: &mut File,
    initrd_file: Option<&mut File>,
) -> Result<LoadedKernel, VmmError> {
    let kernel =
        arch::loader::load_kernel(memory, kernel_file).map_err(|source| VmmError::Kernel {
            path: config.kernel.clone(),
            source,
        })?;
    let cmdline_len = write_cmdline(memory, &kernel, &config.cmdline)?;
    let initrd = match (initrd_file, &config.initrd) {
        (Some(f), Some(path)) => Some(
            arch::loader::load_initrd(memory, config.memory, &kernel, f).map_err(|source| {
                VmmError::Initrd {
                    path: path.clone(),
                    source,
                }
            })?,
        ),
        _ => None,
    };

    let cpus = config.cpus as u8;
    arch::mptable::setup_mptable(memory, cpus)?;
    let rsdp_addr = arch::acpi::setup_acpi(memory, cpus)?;
    let memory_map = arch::memory::memory_map(config.memory);
    let info = arch::boot::BootInfo {
        cmdline_addr: CMDLINE_START,
        cmdline_len,
        initrd,
        memory_map: &memory_map,
        rsdp_addr,
    };
    match kernel.entry {
        BootEntry::Linux64 { .. } => {
            arch::boot::write_boot_params(memory, kernel.setup_header, &info)?
        }
        BootEntry::Pvh { .. } => arch::boot::write_pvh_start_info(memory, &info)?,
    }

    Ok(kernel)
}

/// Opens KVM and builds the VM described by `config`.
pub fn build_vm(config: &VmConfig, start: Instant) -> Result<BuiltVm, VmmError> {
    let hv = Hypervisor::new().map_err(VmmError::Kvm)?;
    config.validate(host_memory(), hv.max_vcpus())?;
    let mut kernel_file = open("kernel", &config.kernel)?;
    let mut initrd_file = config
        .initrd
        .as_deref()
        .map(|p| open("initrd", p))
        .transpose()?;

    let vm = hv.create_vm().map_err(VmmError::Kvm)?;
    vm.set_tss_and_identity_map()?;
    vm.create_irqchip_and_pit()?;

    let memory = create_guest_memory(config.memory, config.memory_backing)?;
    // KVM takes milliseconds to register a memory slot on some hosts; do it while the
    // kernel and the firmware tables are written into the same (already mapped) memory.
    let kernel = std::thread::scope(|scope| {
        let registering = std::thread::Builder::new()
            .name("mem-register".into())
            .spawn_scoped(scope, || register_guest_memory(&vm, &memory))
            .map_err(|source| VmmError::Thread {
                name: "mem-register".into(),
                source,
            })?;
        let loaded = load_guest(config, &memory, &mut kernel_file, initrd_file.as_mut());
        registering
            .join()
            .unwrap_or_else(|_| Err(VmmError::Device("memory registration failed".into())))?;
        loaded
    })?;

    let devices = DeviceManager::new(&vm, config.memory, start, config.boot_timer)?;
    let pci = PciSet::add(&vm, &devices, &memory, config)?;

    let cpus = config.cpus as u8;
    let supported = hv.supported_cpuid()?;
    let tsc_deadline = hv.has_tsc_deadline_timer();
    let mut vcpus = Vec::with_capacity(usize::from(cpus));
    for id in 0..cpus {
        let vcpu = vm.create_vcpu(id)?;
        let mut cpuid = supported.clone();
        arch::cpuid::filter_cpuid(&mut cpuid, id, cpus, tsc_deadline);
        vcpu.set_cpuid(&cpuid)?;
        arch::regs::setup_msrs(&vcpu)?;
        arch::regs::setup_fpu(&vcpu)?;
        arch::regs::setup_lint(&vcpu)?;
        if id == 0 {
            arch::regs::setup_boot_vcpu(&vcpu, &memory, kernel.entry)?;
        }
        vcpus.push(vcpu);
    }
    tracing::info!(
        cpus,
        memory_mib = config.memory >> 20,
        entry = ?kernel.entry,
        "VM built"
    );
    BuiltVm::assemble(&hv, vm, memory, devices, pci, vcpus)
}

/// Rebuilds a VM from a snapshot directory: memory mapped copy-on-write from its memory file,
/// devices, vCPUs and in-kernel state as saved, with `overrides` applied to the saved
/// configuration (a clone's own TAP, vsock socket, disk). Returns the VM and the
/// configuration it runs with.
pub fn restore_vm(
    dir: &std::path::Path,
    start: Instant,
    overrides: &crate::restore_overrides::RestoreOverrides,
) -> Result<(BuiltVm, VmConfig), VmmError> {
    let hv = Hypervisor::new().map_err(VmmError::Kvm)?;
    let (state, mem_file) = crate::snapshot::read_snapshot(dir)?;
    let mut config = state.config;
    overrides.apply(&mut config)?;
    config.validate(host_memory(), hv.max_vcpus())?;
    if state.vcpus.len() != usize::from(config.cpus) {
        return Err(VmmError::Restore(crate::snapshot::SnapshotError::Vcpu(
            format!(
                "state holds {} vCPUs, configuration says {}",
                state.vcpus.len(),
                config.cpus
            ),
        )));
    }
    let vm = hv.create_vm().map_err(VmmError::Kvm)?;
    vm.set_tss_and_identity_map()?;
    vm.create_irqchip_and_pit()?;
    let memory = crate::snapshot::map_memory(&mem_file, &state.memory)?;
    register_guest_memory(&vm, &memory)?;
    let devices =
        DeviceManager::restore(&vm, config.memory, start, config.boot_timer, &state.devices)?;
    // The same configuration adds the same devices in the same slots, BARs and GSIs.
    let pci = PciSet::add(&vm, &devices, &memory, &config)?;
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for (id, saved) in state.vcpus.iter().enumerate() {
        let vcpu = vm.create_vcpu(id as u8)?;
        vcpu.restore_state(saved)?;
        vcpus.push(vcpu);
    }
    vm.restore_state(&state.vm)?;
    // Last: re-activated devices may interrupt at once, which must reach restored LAPICs.
    pci.pci.restore_state(&state.virtio)?;
    tracing::info!(dir = %dir.display(), cpus = config.cpus, "VM restored");
    let built = BuiltVm::assemble(&hv, vm, memory, devices, pci, vcpus)?;
    Ok((built, config))
}

/// PCI bus 0 with every virtio device `config` names, in the order (and so the slots, BARs
/// and GSIs) a restore of the same configuration reproduces.
struct PciSet {
    pci: crate::pci::PciDevices,
    io_limits: crate::io_limits::IoLimits,
    disk_backends: crate::disk_backend::DiskBackends,
    balloon: Option<crate::balloon::VmBalloon>,
}

impl PciSet {
    fn add(
        vm: &hv::Vm,
        devices: &DeviceManager,
        memory: &GuestMemoryMmap,
        config: &VmConfig,
    ) -> Result<Self, VmmError> {
        let mut pci = crate::pci::PciDevices::new(
            vm,
            &devices.pio_bus,
            devices.mmio_bus.clone(),
            memory.clone(),
        )?;
        let (io_limits, disk_backends) = crate::pci::add_configured_devices(&mut pci, config)?;
        let balloon = crate::balloon::add_balloon(&mut pci, config)?;
        Ok(PciSet {
            pci,
            io_limits,
            disk_backends,
            balloon,
        })
    }
}

impl BuiltVm {
    fn assemble(
        hv: &Hypervisor,
        vm: hv::Vm,
        memory: GuestMemoryMmap,
        devices: DeviceManager,
        pci: PciSet,
        vcpus: Vec<Vcpu>,
    ) -> Result<Self, VmmError> {
        Ok(BuiltVm {
            vm,
            memory,
            devices,
            pci: pci.pci,
            vcpus,
            msr_list: hv.msr_index_list()?,
            io_limits: pci.io_limits,
            disk_backends: pci.disk_backends,
            balloon: pci.balloon,
        })
    }
}
