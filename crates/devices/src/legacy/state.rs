//! Snapshot state of the stateful legacy devices.
//!
//! Each device has `state()` (save) and `from_state()` (restore, with the
//! host resources handed in again). The structs are plain serde data and
//! carry no host handles; restoring validates everything a tampered
//! snapshot could make inconsistent (buffer sizes, indices), so a snapshot
//! file is treated like guest input.
//!
//! Stateless devices (ACPI PM) and host-side ones (debug port timestamps)
//! have no state here.

use serde::{Deserialize, Serialize};

/// Saved 16550 UART registers and receive FIFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received but not read by the guest yet (at most the FIFO size).
    pub in_buffer: Vec<u8>,
}

/// Saved i8042 controller state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Configuration byte.
    pub ctr: u8,
    /// Output port.
    pub output_port: u8,
    /// Controller command waiting for its parameter byte.
    pub pending_cmd: Option<u8>,
    /// Whether the last write went to the command port.
    pub last_was_command: bool,
    /// Bytes queued for the guest (at most 16).
    pub output: Vec<u8>,
    /// Last byte the guest read from the data port.
    pub last_output: u8,
}

/// Saved CMOS RTC state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// Selected register (0..=127).
    pub index: u8,
    /// The 128 bytes of CMOS RAM (time registers are not stored here).
    pub ram: Vec<u8>,
    /// Guest clock minus host UTC clock, in seconds.
    pub offset_secs: i64,
    /// Frozen guest time (seconds since the epoch) while the guest holds
    /// status B's SET bit.
    pub latched_unix: Option<i64>,
}
