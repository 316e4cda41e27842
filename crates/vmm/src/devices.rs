//! The VM's device set: the legacy PC devices on the port-I/O bus, their interrupts wired to
//! KVM through irqfds, and the events by which they end the VM.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::legacy::{
    ACPI_PM_LEN, CMOS_LEN, CMOS_PORT, COM1_IRQ, COM1_PORT, COM_LEN, DEBUG_PORT, DEBUG_PORT_LEN,
    I8042_KBD_IRQ, I8042_LEN, I8042_PORT,
};
use devices::{
    AcpiPmDevice, Bus, Cmos, CmosState, DebugPort, I8042State, SerialDevice, SerialDeviceState,
    SharedDevice, I8042,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::console::RawStdout;
use crate::VmmError;

/// The saved state of the legacy devices, for snapshots.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LegacyDevicesState {
    pub serial: SerialDeviceState,
    pub i8042: I8042State,
    pub cmos: CmosState,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Devices and buses of one VM.
pub struct DeviceManager {
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub cmos: Arc<Mutex<Cmos>>,
    /// Written when the guest resets the machine.
    pub reset_evt: EventFd,
    /// Written when the guest powers off.
    pub shutdown_evt: EventFd,
}

fn eventfd() -> Result<EventFd, VmmError> {
    EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)
}

fn clone_evt(evt: &EventFd) -> Result<EventFd, VmmError> {
    evt.try_clone().map_err(VmmError::EventFd)
}

impl DeviceManager {
    /// Creates the legacy devices for a guest with `mem_size` bytes of RAM and connects their
    /// interrupts to `vm`.
    pub fn new(
        vm: &hv::Vm,
        mem_size: u64,
        start: Instant,
        boot_timer: bool,
    ) -> Result<Self, VmmError> {
        Self::build(vm, mem_size, start, boot_timer, None)
    }

    /// Like [`DeviceManager::new`], with device state restored from a snapshot.
    pub fn restore(
        vm: &hv::Vm,
        mem_size: u64,
        start: Instant,
        boot_timer: bool,
        state: &LegacyDevicesState,
    ) -> Result<Self, VmmError> {
        Self::build(vm, mem_size, start, boot_timer, Some(state))
    }

    /// Reads the legacy devices' state.
    pub fn save_state(&self) -> LegacyDevicesState {
        LegacyDevicesState {
            serial: lock(&self.serial).state(),
            i8042: lock(&self.i8042).state(),
            cmos: lock(&self.cmos).state(),
        }
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn ctrl_alt_del(&self) -> Result<(), VmmError> {
        lock(&self.i8042)
            .trigger_ctrl_alt_del()
            .map_err(|e| VmmError::Device(e.to_string()))
    }

    fn build(
        vm: &hv::Vm,
        mem_size: u64,
        start: Instant,
        boot_timer: bool,
        state: Option<&LegacyDevicesState>,
    ) -> Result<Self, VmmError> {
        let device_err = |e: &dyn std::fmt::Display| VmmError::Device(e.to_string());
        let pio_bus = Arc::new(Bus::new());
        let mmio_bus = Arc::new(Bus::new());
        let reset_evt = eventfd()?;
        let shutdown_evt = eventfd()?;

        let serial_irq = eventfd()?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        let serial = match state {
            Some(st) => SerialDevice::from_state(&st.serial, serial_irq, Box::new(RawStdout))
                .map_err(|e| device_err(&e))?,
            None => SerialDevice::new(serial_irq, Box::new(RawStdout)),
        };
        let serial = Arc::new(Mutex::new(serial));

        let kbd_irq = eventfd()?;
        vm.register_irqfd(&kbd_irq, I8042_KBD_IRQ)?;
        let i8042 = match state {
            Some(st) => I8042::from_state(&st.i8042, clone_evt(&reset_evt)?, kbd_irq)
                .map_err(|e| device_err(&e))?,
            None => I8042::new(clone_evt(&reset_evt)?, kbd_irq),
        };
        let i8042 = Arc::new(Mutex::new(i8042));

        let below_4g = arch::memory::low_ram_end(mem_size);
        let cmos = match state {
            Some(st) => Cmos::from_state(&st.cmos).map_err(|e| device_err(&e))?,
            None => Cmos::new(below_4g, mem_size - below_4g),
        };
        let cmos = Arc::new(Mutex::new(cmos));
        let timer_out: Option<Box<dyn std::io::Write + Send>> = if boot_timer {
            Some(Box::new(std::io::stderr()))
        } else {
            None
        };
        let debug_port = DebugPort::new(start, timer_out);
        let acpi_pm = AcpiPmDevice::new(clone_evt(&shutdown_evt)?, clone_evt(&reset_evt)?);

        let pio: [(SharedDevice, u64, u64); 5] = [
            (serial.clone(), COM1_PORT, COM_LEN),
            (i8042.clone(), I8042_PORT, I8042_LEN),
            (cmos.clone(), CMOS_PORT, CMOS_LEN),
            (Arc::new(Mutex::new(debug_port)), DEBUG_PORT, DEBUG_PORT_LEN),
            (
                Arc::new(Mutex::new(acpi_pm)),
                u64::from(arch::layout::ACPI_PM_PORT),
                ACPI_PM_LEN,
            ),
        ];
        for (dev, base, len) in pio {
            pio_bus
                .insert(dev, base, len)
                .map_err(|e| VmmError::Device(e.to_string()))?;
        }
        Ok(DeviceManager {
            pio_bus,
            mmio_bus,
            serial,
            i8042,
            cmos,
            reset_evt,
            shutdown_evt,
        })
    }
}
