//! i8042 PS/2 controller: enough for a guest to reset the machine and to
//! receive Ctrl+Alt+Del from the host.
//!
//! The CPU reset (command `0xfe` on the command port) is handled by
//! `vm_superio::I8042Device`. Around it this module answers the controller
//! commands the Linux `i8042`/`atkbd` drivers send while probing (read and
//! write the configuration byte, self tests, enable/disable ports), so the
//! probe finishes quickly instead of waiting for timeouts, and it keeps a
//! small output buffer for keyboard bytes, announced on IRQ 1 through an
//! eventfd. There is no AUX (mouse) port.

use std::collections::VecDeque;
use std::io;

use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use super::serial::EventFdTrigger;
use super::state::I8042State;
use crate::bus::BusDevice;
use crate::log_limit::LogLimiter;

/// Offset of the data port (0x60) from the device base.
const DATA_OFFSET: u64 = 0;
/// Offset of the command (write) / status (read) port (0x64).
const COMMAND_OFFSET: u64 = 4;
/// The command port offset as `vm_superio` numbers it.
const SUPERIO_COMMAND_OFFSET: u8 = 4;

// Status register bits.
const SR_OUTPUT_FULL: u8 = 0x01;
const SR_SYSTEM: u8 = 0x04;
const SR_LAST_WAS_COMMAND: u8 = 0x08;
const SR_UNLOCKED: u8 = 0x10;

// Configuration ("command") byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// Power-on configuration: keyboard interrupt on, POST passed, AUX off,
/// scancode translation to set 1 on (what a PC BIOS leaves behind).
const CTR_DEFAULT: u8 = CTR_KBD_INT | CTR_SYSTEM | CTR_AUX_DISABLE | CTR_TRANSLATE;

// Controller commands (written to 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

// Controller replies.
const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// AUX interface test result "clock line stuck low": tells Linux there is
/// no usable AUX port, so it does not probe for a mouse.
const AUX_TEST_ABSENT: u8 = 0x01;
/// Output port: system reset line inactive (high), A20 enabled.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;

// Keyboard commands (written to 0x60) and replies.
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Size of the output buffer; a real controller holds one byte, we keep a
/// few so multi-byte replies and key sequences are not lost.
const OUTPUT_BUFFER_SIZE: usize = 16;

/// Ctrl+Alt+Del make and break codes in scancode set 1 (translated).
const CAD_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
/// Ctrl+Alt+Del make and break codes in scancode set 2 (untranslated).
const CAD_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// Errors of the i8042 device.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    /// The output buffer has no room for the key sequence.
    #[error("i8042 output buffer is full ({pending} bytes pending)")]
    BufferFull {
        /// Bytes the guest has not read yet.
        pending: usize,
    },
    /// Signalling the keyboard interrupt failed.
    #[error("failed to raise the keyboard interrupt")]
    Interrupt(#[source] io::Error),
    /// A saved state holds more output than the controller buffers.
    #[error("saved i8042 state has {len} pending bytes, at most {OUTPUT_BUFFER_SIZE} fit")]
    StateOutputTooLong {
        /// Bytes in the saved state.
        len: usize,
    },
    /// A saved state names a pending command that takes no parameter.
    #[error("saved i8042 state has invalid pending command {0:#04x}")]
    StatePendingCommand(u8),
}

/// The i8042 controller on ports 0x60 (data) and 0x64 (command/status).
pub struct I8042 {
    reset: I8042Device<EventFdTrigger>,
    kbd_irq: EventFd,
    /// Configuration byte (read with 0x20, written with 0x60).
    ctr: u8,
    output_port: u8,
    /// Command waiting for its parameter byte on the data port.
    pending_cmd: Option<u8>,
    /// Whether the last write went to the command port (status bit 3).
    last_was_command: bool,
    output: VecDeque<u8>,
    /// Last byte read from the data port; re-read when the buffer is empty.
    last_output: u8,
    dropped: LogLimiter,
    irq_errors: LogLimiter,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("ctr", &self.ctr)
            .field("pending_cmd", &self.pending_cmd)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl I8042 {
    /// Creates the controller; `reset_evt` is signalled when the guest asks
    /// for a CPU reset, `kbd_irq` raises IRQ 1.
    pub fn new(reset_evt: EventFd, kbd_irq: EventFd) -> Self {
        Self {
            reset: I8042Device::new(EventFdTrigger::new(reset_evt)),
            kbd_irq,
            ctr: CTR_DEFAULT,
            output_port: OUTPUT_PORT_DEFAULT,
            pending_cmd: None,
            last_was_command: false,
            output: VecDeque::with_capacity(OUTPUT_BUFFER_SIZE),
            last_output: 0,
            dropped: LogLimiter::default(),
            irq_errors: LogLimiter::default(),
        }
    }

    /// Restores a controller saved with [`I8042::state`]; raises the
    /// keyboard interrupt if bytes are waiting.
    pub fn from_state(
        state: &I8042State,
        reset_evt: EventFd,
        kbd_irq: EventFd,
    ) -> Result<Self, I8042Error> {
        if state.output.len() > OUTPUT_BUFFER_SIZE {
            return Err(I8042Error::StateOutputTooLong {
                len: state.output.len(),
            });
        }
        if let Some(cmd) = state.pending_cmd {
            if !takes_parameter(cmd) {
                return Err(I8042Error::StatePendingCommand(cmd));
            }
        }
        let mut dev = Self::new(reset_evt, kbd_irq);
        dev.ctr = state.ctr;
        dev.output_port = state.output_port;
        dev.pending_cmd = state.pending_cmd;
        dev.last_was_command = state.last_was_command;
        dev.output.extend(&state.output);
        dev.last_output = state.last_output;
        dev.raise_kbd_irq().map_err(I8042Error::Interrupt)?;
        Ok(dev)
    }

    /// The controller's state, for a snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            output_port: self.output_port,
            pending_cmd: self.pending_cmd,
            last_was_command: self.last_was_command,
            output: self.output.iter().copied().collect(),
            last_output: self.last_output,
        }
    }

    /// Sends the key sequence Ctrl+Alt+Del (press and release) to the guest,
    /// which Linux turns into a reboot (or whatever `ctrl-alt-del` is bound
    /// to in the guest).
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        let codes: &[u8] = if self.ctr & CTR_TRANSLATE != 0 {
            &CAD_SET1
        } else {
            &CAD_SET2
        };
        if OUTPUT_BUFFER_SIZE - self.output.len() < codes.len() {
            return Err(I8042Error::BufferFull {
                pending: self.output.len(),
            });
        }
        self.output.extend(codes);
        self.raise_kbd_irq().map_err(I8042Error::Interrupt)
    }

    /// The keyboard interrupt line, e.g. to register it as an irqfd.
    pub fn kbd_irq_evt(&self) -> &EventFd {
        &self.kbd_irq
    }

    fn raise_kbd_irq(&self) -> io::Result<()> {
        if self.ctr & CTR_KBD_INT != 0 && !self.output.is_empty() {
            self.kbd_irq.write(1)?;
        }
        Ok(())
    }

    /// Raises the interrupt from a guest-driven path: failures are logged
    /// (rate limited), not returned, because the guest cannot handle them.
    fn raise_kbd_irq_logged(&mut self) {
        if let Err(err) = self.raise_kbd_irq() {
            if self.irq_errors.should_log() {
                tracing::warn!(error = %err, count = self.irq_errors.count(), "i8042: keyboard irq failed");
            }
        }
    }

    /// Queues controller/keyboard replies for the guest to read.
    fn push_output(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.output.len() >= OUTPUT_BUFFER_SIZE {
                if self.dropped.should_log() {
                    tracing::debug!(
                        count = self.dropped.count(),
                        "i8042: output buffer full, byte dropped"
                    );
                }
                continue;
            }
            self.output.push_back(b);
        }
        self.raise_kbd_irq_logged();
    }

    fn status(&self) -> u8 {
        let mut status = SR_SYSTEM | SR_UNLOCKED;
        if !self.output.is_empty() {
            status |= SR_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= SR_LAST_WAS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        if let Some(b) = self.output.pop_front() {
            self.last_output = b;
            // The line is edge triggered: announce the next byte, if any.
            self.raise_kbd_irq_logged();
        }
        self.last_output
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending_cmd = None;
        match cmd {
            CMD_READ_CTR => self.push_output(&[self.ctr]),
            _ if takes_parameter(cmd) => self.pending_cmd = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLE,
            CMD_AUX_TEST => self.push_output(&[AUX_TEST_ABSENT]),
            CMD_SELF_TEST => self.push_output(&[SELF_TEST_OK]),
            CMD_KBD_TEST => self.push_output(&[PORT_TEST_OK]),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLE,
            CMD_READ_INPUT_PORT => self.push_output(&[0x00]),
            CMD_READ_OUTPUT_PORT => self.push_output(&[self.output_port]),
            CMD_RESET_CPU => self.reset_cpu(),
            other => tracing::debug!(cmd = other, "i8042: ignored controller command"),
        }
    }

    fn reset_cpu(&mut self) {
        tracing::info!("i8042: guest requested CPU reset");
        if let Err(err) = self.reset.write(SUPERIO_COMMAND_OFFSET, CMD_RESET_CPU) {
            tracing::error!(error = %err, "i8042: failed to signal reset");
        }
    }

    fn write_data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending_cmd.take() {
            // The guest may turn the interrupt or translation off; honoured.
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPUT_PORT) => self.output_port = value,
            // Without AUX the loopback answers as keyboard data, which the
            // Linux driver takes as "no AUX port" without waiting.
            Some(CMD_WRITE_KBD_BUFFER | CMD_WRITE_AUX_BUFFER) => self.push_output(&[value]),
            // No AUX device: bytes sent to it are lost.
            Some(_) => {}
            None => self.keyboard_command(value),
        }
    }

    /// A byte on the data port without a pending controller command goes to
    /// the keyboard, which acknowledges everything.
    fn keyboard_command(&mut self, value: u8) {
        match value {
            KBD_CMD_RESET => self.push_output(&[KBD_ACK, KBD_SELF_TEST_OK]),
            KBD_CMD_GET_ID => self.push_output(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_CMD_ECHO => self.push_output(&[KBD_CMD_ECHO]),
            _ => self.push_output(&[KBD_ACK]),
        }
    }
}

/// Whether a controller command waits for a parameter on the data port.
fn takes_parameter(cmd: u8) -> bool {
    matches!(
        cmd,
        CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX
    )
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA_OFFSET, 1) => self.read_data(),
            (COMMAND_OFFSET, 1) => self.status(),
            _ => 0xff,
        };
        crate::bus::byte_register_read(data, value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            return;
        };
        match offset {
            DATA_OFFSET => self.write_data(value),
            COMMAND_OFFSET => self.write_command(value),
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

    fn device() -> (I8042, EventFd, EventFd) {
        let reset = eventfd();
        let irq = eventfd();
        let dev = I8042::new(
            reset.try_clone().expect("clone"),
            irq.try_clone().expect("clone"),
        );
        (dev, reset, irq)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut data = [0u8];
        dev.read(offset, &mut data);
        data[0]
    }

    #[test]
    fn reset_command_fires_reset_evt() {
        let (mut dev, reset, _irq) = device();
        assert!(reset.read().is_err(), "no reset yet");
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(reset.read().expect("reset fired"), 1);
    }

    #[test]
    fn reset_value_on_data_port_does_not_reset() {
        let (mut dev, reset, _irq) = device();
        dev.write(DATA_OFFSET, &[0xfe]);
        assert!(reset.read().is_err());
    }

    #[test]
    fn self_test_answers_and_sets_output_full() {
        let (mut dev, _reset, irq) = device();
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SR_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & SR_OUTPUT_FULL, 0);
        assert_eq!(irq.read().expect("irq"), 1);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_OK);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SR_OUTPUT_FULL, 0);
    }

    #[test]
    fn configuration_byte_round_trips() {
        let (mut dev, _reset, _irq) = device();
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), CTR_DEFAULT);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x45]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x45);
    }

    #[test]
    fn keyboard_commands_are_acknowledged() {
        let (mut dev, _reset, _irq) = device();
        dev.write(DATA_OFFSET, &[KBD_CMD_GET_ID]);
        let reply: Vec<u8> = (0..3).map(|_| read(&mut dev, DATA_OFFSET)).collect();
        assert_eq!(reply, [KBD_ACK, 0xab, 0x83]);
        dev.write(DATA_OFFSET, &[0xed]); // set LEDs
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_ACK);
    }

    #[test]
    fn ctrl_alt_del_queues_set1_codes_and_raises_irq() {
        let (mut dev, _reset, irq) = device();
        dev.trigger_ctrl_alt_del().expect("queued");
        assert_eq!(irq.read().expect("irq"), 1);
        let codes: Vec<u8> = (0..CAD_SET1.len())
            .map(|_| read(&mut dev, DATA_OFFSET))
            .collect();
        assert_eq!(codes, CAD_SET1);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SR_OUTPUT_FULL, 0);
    }

    #[test]
    fn ctrl_alt_del_uses_set2_without_translation() {
        let (mut dev, _reset, _irq) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_KBD_INT]);
        dev.trigger_ctrl_alt_del().expect("queued");
        assert_eq!(read(&mut dev, DATA_OFFSET), CAD_SET2[0]);
    }

    #[test]
    fn ctrl_alt_del_reports_full_buffer() {
        let (mut dev, _reset, _irq) = device();
        // Two set 1 sequences (8 bytes each) fill the 16-byte buffer.
        dev.trigger_ctrl_alt_del().expect("first fits");
        dev.trigger_ctrl_alt_del().expect("second fits");
        assert!(matches!(
            dev.trigger_ctrl_alt_del(),
            Err(I8042Error::BufferFull { .. })
        ));
    }

    #[test]
    fn output_buffer_is_bounded() {
        let (mut dev, _reset, _irq) = device();
        for _ in 0..100 {
            dev.write(DATA_OFFSET, &[KBD_CMD_GET_ID]);
        }
        assert_eq!(dev.output.len(), OUTPUT_BUFFER_SIZE);
    }

    #[test]
    fn unused_ports_read_ff() {
        let (mut dev, _reset, _irq) = device();
        for offset in 1..=3 {
            assert_eq!(read(&mut dev, offset), 0xff);
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let (mut dev, _reset, _irq) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x45]);
        dev.write(DATA_OFFSET, &[KBD_CMD_GET_ID]);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        let saved = dev.state();
        let json = serde_json::to_string(&saved).expect("serialize");
        let loaded: I8042State = serde_json::from_str(&json).expect("deserialize");

        let irq = eventfd();
        let mut restored = I8042::from_state(&loaded, eventfd(), irq.try_clone().expect("clone"))
            .expect("restore");
        assert_eq!(restored.state(), saved);
        assert_eq!(irq.read().expect("pending output re-announced"), 1);
        assert_eq!(read(&mut restored, DATA_OFFSET), KBD_ACK);
    }

    #[test]
    fn restore_rejects_bad_state() {
        let (dev, _reset, _irq) = device();
        let mut state = dev.state();
        state.output = vec![0; 17];
        assert!(matches!(
            I8042::from_state(&state, eventfd(), eventfd()),
            Err(I8042Error::StateOutputTooLong { len: 17 })
        ));
        let mut state = dev.state();
        state.pending_cmd = Some(CMD_SELF_TEST);
        assert!(matches!(
            I8042::from_state(&state, eventfd(), eventfd()),
            Err(I8042Error::StatePendingCommand(CMD_SELF_TEST))
        ));
    }

    #[test]
    fn survives_hostile_accesses() {
        let (mut dev, _reset, _irq) = device();
        hammer(&mut dev);
    }
}
