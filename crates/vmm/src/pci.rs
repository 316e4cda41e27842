//! The VM's PCI side: bus 0 with its host bridge, reachable through ports 0xCF8/0xCFC and
//! ECAM; BARs placed in the 32-bit window; virtio devices on the virtio-pci transport with
//! MSI-X through KVM GSI routes + irqfds and queue notifications through ioeventfds.
//!
//! Adding a device is one call: [`PciDevices::add_virtio_pci`].

use std::sync::{Arc, Mutex};

use arch::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_SIZE, PCI_MMIO_START};
use arch::GuestMemoryMmap;
use devices::Bus;
use hv::{IoEventAddress, IrqRouter};
use pci::virtio::{VirtioPciState, BAR_SIZE};
use pci::{
    BarAllocator, HostBridge, KvmMsiSink, PciBus, PciConfigIo, PciConfigMmio, VirtioPciDevice,
    PCI_CONFIG_IO_LEN, PCI_CONFIG_IO_PORT,
};
use virtio::VirtioDevice;

use crate::VmmError;

fn err(e: impl std::fmt::Display) -> VmmError {
    VmmError::Device(e.to_string())
}

/// Bus 0 and what is needed to add devices to it.
pub struct PciDevices {
    bus: Arc<PciBus>,
    mmio_bus: Arc<Bus>,
    router: Arc<IrqRouter>,
    bars: BarAllocator,
    memory: GuestMemoryMmap,
    /// The virtio devices by id, in slot order.
    devices: Vec<(String, Arc<Mutex<VirtioPciDevice>>)>,
}

impl PciDevices {
    /// Creates bus 0 with its host bridge and puts the configuration mechanisms on the buses.
    pub fn new(
        vm: &hv::Vm,
        pio_bus: &Bus,
        mmio_bus: Arc<Bus>,
        memory: GuestMemoryMmap,
    ) -> Result<Self, VmmError> {
        let bus = PciBus::new();
        bus.add(Arc::new(Mutex::new(HostBridge::new())))
            .map_err(err)?;
        pio_bus
            .insert(
                Arc::new(Mutex::new(PciConfigIo::new(Arc::clone(&bus)))),
                PCI_CONFIG_IO_PORT,
                PCI_CONFIG_IO_LEN,
            )
            .map_err(err)?;
        mmio_bus
            .insert(
                Arc::new(Mutex::new(PciConfigMmio::new(Arc::clone(&bus)))),
                PCI_ECAM_START,
                PCI_ECAM_SIZE,
            )
            .map_err(err)?;
        Ok(PciDevices {
            bus,
            mmio_bus,
            router: vm.irq_router(),
            bars: BarAllocator::new(PCI_MMIO_START, PCI_MMIO_SIZE).map_err(err)?,
            memory,
            devices: Vec::new(),
        })
    }

    /// Plugs `device` into the next free slot behind a virtio-pci transport named `id`.
    pub fn add_virtio_pci(
        &mut self,
        device: Box<dyn VirtioDevice>,
        id: &str,
    ) -> Result<(), VmmError> {
        let bar = self.bars.allocate(BAR_SIZE).map_err(err)?;
        let vectors = VirtioPciDevice::msix_vectors(device.as_ref());
        let sink = KvmMsiSink::new(Arc::clone(&self.router), vectors)?;
        let transport = VirtioPciDevice::new(id, device, self.memory.clone(), bar, Box::new(sink))
            .map_err(err)?;
        for (addr, evt) in transport.notify_events() {
            self.router
                .register_ioevent(evt, IoEventAddress::Mmio(addr))?;
        }
        let dev = Arc::new(Mutex::new(transport));
        self.mmio_bus
            .insert(dev.clone(), bar, BAR_SIZE)
            .map_err(err)?;
        let slot = self.bus.add(dev.clone()).map_err(err)?;
        tracing::info!(
            id,
            slot,
            bar = format_args!("{bar:#x}"),
            vectors,
            "virtio-pci device added"
        );
        self.devices.push((id.to_string(), dev));
        Ok(())
    }

    /// Ids of the virtio devices, in slot order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|(id, _)| id.as_str())
    }

    /// Runs `f` on the device model `id` if it is a `T` (a disk's [`virtio::block::Block`],
    /// say); `None` when there is no such device.
    pub fn with_device<T: 'static, R>(&self, id: &str, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let (_, dev) = self.devices.iter().find(|(d, _)| d == id)?;
        let mut transport = lock(dev);
        let model = transport.device_mut().as_any_mut()?.downcast_mut::<T>()?;
        Some(f(model))
    }

    /// Snapshot, step 1: pauses every virtio device (their workers complete what they hold
    /// and stop, so guest memory stays still) and saves it with its transport. On an error
    /// the devices paused so far are resumed. Follow a success with [`Self::resume`].
    pub fn pause_and_save(&self) -> Result<Vec<VirtioSnapshot>, VmmError> {
        let mut saved = Vec::with_capacity(self.devices.len());
        for (id, dev) in &self.devices {
            match lock(dev).pause_and_save() {
                Ok(state) => saved.push(VirtioSnapshot {
                    id: id.clone(),
                    state,
                }),
                Err(e) => {
                    // this device may be paused too: resume them all
                    self.resume();
                    return Err(VmmError::DeviceState {
                        id: id.clone(),
                        source: e,
                    });
                }
            }
        }
        Ok(saved)
    }

    /// Snapshot, step 2: every device serves its queues again. A device that cannot is
    /// logged; its driver sees a stalled device.
    pub fn resume(&self) {
        for (id, dev) in &self.devices {
            if let Err(e) = lock(dev).resume() {
                tracing::error!(id, error = %e, "virtio device did not resume after the snapshot");
            }
        }
    }

    /// Restore: gives each device of this (freshly built) VM its saved state. The snapshot
    /// must hold the same devices, by id, in the same slots.
    pub fn restore_state(&self, saved: &[VirtioSnapshot]) -> Result<(), VmmError> {
        let ids: Vec<&str> = self.ids().collect();
        let saved_ids: Vec<&str> = saved.iter().map(|s| s.id.as_str()).collect();
        if ids != saved_ids {
            return Err(VmmError::Device(format!(
                "the snapshot's virtio devices [{}] differ from the configured ones [{}]",
                saved_ids.join(", "),
                ids.join(", ")
            )));
        }
        for ((id, dev), s) in self.devices.iter().zip(saved) {
            lock(dev)
                .restore_state(&s.state)
                .map_err(|source| VmmError::DeviceState {
                    id: id.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// One virtio device in a snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VirtioSnapshot {
    pub id: String,
    pub state: VirtioPciState,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds the devices the configuration asks for: disks (in order), then the entropy device,
/// the network cards and vsock. Returns the rate limiters of the disks and cards and the
/// images the disks opened.
pub fn add_configured_devices(
    pci: &mut PciDevices,
    config: &crate::VmConfig,
) -> Result<
    (
        crate::io_limits::IoLimits,
        crate::disk_backend::DiskBackends,
    ),
    VmmError,
> {
    let mut limits = crate::io_limits::IoLimits::default();
    let mut backends = crate::disk_backend::DiskBackends::default();
    let ids =
        crate::disk_config::disk_ids(&config.disks).map_err(|e| VmmError::Config(e.into()))?;
    for (disk, id) in config.disks.iter().zip(ids) {
        let mut block = virtio::block::Block::new(
            &id,
            &virtio::block::BlockConfig {
                path: disk.path.clone(),
                read_only: disk.read_only,
                serial: id.clone(),
                format: disk.format,
            },
        )
        .map_err(VmmError::Disk)?;
        limits.add_disk(
            &id,
            crate::net_devices::limit_disk(&mut block, &disk.limit)?,
        );
        backends.add(&id, &disk.path);
        pci.add_virtio_pci(Box::new(block), &id)?;
    }
    if config.rng {
        pci.add_virtio_pci(Box::new(virtio::rng::Rng::new("rng0")), "rng0")?;
    }
    crate::net_devices::add_net_devices(pci, config, &mut limits)?;
    Ok((limits, backends))
}
