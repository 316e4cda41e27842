//! Emulated legacy PC devices, each answering a few I/O ports.

pub mod acpi_pm;
pub mod cmos;
pub mod debug_port;
pub mod i8042;
mod rtc_time;
pub mod serial;
pub mod state;

pub use acpi_pm::{AcpiPmDevice, ACPI_PM_LEN, ACPI_PM_PORT};
pub use cmos::{Cmos, CmosError};
pub use debug_port::DebugPort;
pub use i8042::{I8042Error, I8042};
pub use serial::{EventFdTrigger, SerialDevice, SerialError};
pub use state::{CmosState, I8042State, SerialDeviceState};

/// First 16550 UART (ttyS0): 8 ports.
pub const COM1_PORT: u64 = 0x3f8;
/// Length of a UART's port range.
pub const COM_LEN: u64 = serial::SERIAL_REGISTERS;
/// COM1's legacy interrupt line.
pub const COM1_IRQ: u32 = 4;
/// i8042 range: 0x60 is the data port, 0x64 the command/status port.
pub const I8042_PORT: u64 = 0x60;
/// Length of the i8042 range (0x60..=0x64).
pub const I8042_LEN: u64 = 5;
/// Keyboard interrupt line.
pub const I8042_KBD_IRQ: u32 = 1;
/// CMOS index (0x70) and data (0x71) ports.
pub const CMOS_PORT: u64 = 0x70;
/// Length of the CMOS range.
pub const CMOS_LEN: u64 = 2;
/// POST/debug port used for boot timing.
pub const DEBUG_PORT: u64 = 0x80;
/// Length of the debug port range.
pub const DEBUG_PORT_LEN: u64 = 1;
