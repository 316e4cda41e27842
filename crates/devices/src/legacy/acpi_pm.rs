//! Hardware-reduced ACPI power device: the sleep control/status and reset
//! registers the FADT points at. A guest `poweroff` writes S5 to the sleep
//! control register; `reboot` (with `reboot=acpi`) writes the reset value.
//!
//! Layout at [`ACPI_PM_PORT`], 4 bytes:
//! - offset 0, sleep control: a byte with SLP_EN (bit 5) set and SLP_TYP
//!   (bits 2..=4) = 5 signals the shutdown event;
//! - offset 1, sleep status: reads 0, writes ignored;
//! - offset 2, reset: writing 0x01 signals the reset event;
//! - offset 3: unused.
//!
//! All in-range reads return 0; only single-byte writes are decoded.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Base port of the device; the FADT's sleep and reset registers point here.
pub const ACPI_PM_PORT: u64 = 0x600;
/// Size of the device's port range.
pub const ACPI_PM_LEN: u64 = 4;
/// Offset of the sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register (FADT `SLEEP_STATUS_REG`).
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register (FADT `RESET_REG`).
pub const RESET_OFFSET: u64 = 2;
/// Value to put in the FADT `RESET_VALUE` field.
pub const RESET_VALUE: u8 = 0x01;
/// SLP_TYP the DSDT's `_S5` object must name for soft-off.
pub const SLP_TYP_S5: u8 = 5;

const SLP_EN: u8 = 0x20;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x07;

/// The ACPI power-management device.
pub struct AcpiPmDevice {
    shutdown_evt: EventFd,
    reset_evt: EventFd,
}

impl std::fmt::Debug for AcpiPmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPmDevice").finish_non_exhaustive()
    }
}

impl AcpiPmDevice {
    /// `shutdown_evt` is signalled on S5 (power off), `reset_evt` on reset.
    pub fn new(shutdown_evt: EventFd, reset_evt: EventFd) -> Self {
        Self {
            shutdown_evt,
            reset_evt,
        }
    }

    fn write_sleep_control(&self, value: u8) {
        let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if value & SLP_EN != 0 && slp_typ == SLP_TYP_S5 {
            tracing::info!("acpi: guest requested power off (S5)");
            signal(&self.shutdown_evt, "shutdown");
        } else {
            tracing::debug!(value, slp_typ, "acpi: ignored sleep control write");
        }
    }

    fn write_reset(&self, value: u8) {
        if value == RESET_VALUE {
            tracing::info!("acpi: guest requested reset");
            signal(&self.reset_evt, "reset");
        } else {
            tracing::debug!(value, "acpi: ignored reset register write");
        }
    }
}

fn signal(evt: &EventFd, what: &str) {
    if let Err(err) = evt.write(1) {
        tracing::error!(error = %err, "acpi: failed to signal {what} event");
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let in_range = offset
                .checked_add(i as u64)
                .is_some_and(|addr| addr < ACPI_PM_LEN);
            *byte = if in_range { 0 } else { 0xff };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            tracing::debug!(offset, len = data.len(), "acpi: ignored wide write");
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET => self.write_sleep_control(value),
            RESET_OFFSET => self.write_reset(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::hammer;

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
    }

    fn device() -> (AcpiPmDevice, EventFd, EventFd) {
        let shutdown = eventfd();
        let reset = eventfd();
        let dev = AcpiPmDevice::new(
            shutdown.try_clone().expect("clone"),
            reset.try_clone().expect("clone"),
        );
        (dev, shutdown, reset)
    }

    #[test]
    fn s5_with_slp_en_fires_shutdown() {
        let (mut dev, shutdown, reset) = device();
        dev.write(
            SLEEP_CONTROL_OFFSET,
            &[SLP_EN | (SLP_TYP_S5 << SLP_TYP_SHIFT)],
        );
        assert_eq!(shutdown.read().expect("shutdown fired"), 1);
        assert!(reset.read().is_err());
    }

    #[test]
    fn other_sleep_values_are_ignored() {
        let (mut dev, shutdown, _reset) = device();
        // S5 without SLP_EN, SLP_EN with S3, and wide writes.
        dev.write(SLEEP_CONTROL_OFFSET, &[SLP_TYP_S5 << SLP_TYP_SHIFT]);
        dev.write(SLEEP_CONTROL_OFFSET, &[SLP_EN | (3 << SLP_TYP_SHIFT)]);
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34, 0x00]);
        dev.write(SLEEP_STATUS_OFFSET, &[0x34]);
        assert!(shutdown.read().is_err());
    }

    #[test]
    fn reset_register_fires_reset() {
        let (mut dev, shutdown, reset) = device();
        dev.write(RESET_OFFSET, &[0x02]);
        assert!(reset.read().is_err());
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(reset.read().expect("reset fired"), 1);
        assert!(shutdown.read().is_err());
    }

    #[test]
    fn reads_are_zero_in_range_and_ff_beyond() {
        let (mut dev, _shutdown, _reset) = device();
        let mut status = [0xaau8];
        dev.read(SLEEP_STATUS_OFFSET, &mut status);
        assert_eq!(status, [0]);
        let mut wide = [0xaau8; 4];
        dev.read(2, &mut wide);
        assert_eq!(wide, [0, 0, 0xff, 0xff]);
    }

    #[test]
    fn survives_hostile_accesses() {
        let (mut dev, _shutdown, _reset) = device();
        hammer(&mut dev);
    }
}
