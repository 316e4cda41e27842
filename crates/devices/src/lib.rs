//! Device models of the kapsel VMM and the bus that routes guest port I/O
//! and MMIO accesses to them.
//!
//! - [`bus`]: address ranges to devices ([`Bus`], [`BusDevice`]).
//! - [`legacy`]: the PC devices guests expect: 16550 UART, i8042, CMOS RTC,
//!   the 0x80 boot-timing port and the ACPI power-management registers.
//!
//! Every device treats what the guest writes as hostile: accesses of any
//! size at any offset are bounds-checked, and logs a guest can trigger are
//! rate limited.

pub mod bus;
pub mod legacy;
mod log_limit;
#[cfg(test)]
mod test_util;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
pub use legacy::{
    AcpiPmDevice, Cmos, CmosError, CmosState, DebugPort, EventFdTrigger, I8042Error, I8042State,
    SerialDevice, SerialDeviceState, SerialError, I8042,
};
