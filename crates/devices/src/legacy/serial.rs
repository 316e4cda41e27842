//! 16550A UART on top of `vm_superio::Serial`, with its interrupt raised
//! through an eventfd (registered by the VMM as an irqfd).
//!
//! `vm_superio` does the register model, including what the Linux 8250
//! driver probes (scratch register, LSR/MSR, loopback). This wrapper adds
//! the bus glue: only single-byte accesses at offsets 0..8 reach the UART;
//! anything else reads `0xff` and writes are dropped.

use std::io::{self, Write};

use vm_superio::serial::{Error as UartError, NoEvents};
use vm_superio::{Serial, SerialState, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::state::SerialDeviceState;
use crate::bus::BusDevice;
use crate::log_limit::LogLimiter;

/// Number of registers of a 16550 UART.
pub const SERIAL_REGISTERS: u64 = 8;
/// Receive FIFO size of `vm_superio::Serial` (a 16550A has 16; the crate
/// keeps 64). Checked by a unit test against the crate.
pub const FIFO_SIZE: usize = 64;

/// Errors of the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Signalling the interrupt eventfd failed.
    #[error("failed to raise the serial interrupt")]
    Trigger(#[source] io::Error),
    /// Writing guest output to the host side failed.
    #[error("failed to write serial output")]
    Output(#[source] io::Error),
    /// A saved state holds more input than the FIFO can.
    #[error("saved serial state has {len} queued bytes, the FIFO holds {max}")]
    StateFifoTooLong {
        /// Bytes in the saved state.
        len: usize,
        /// FIFO size.
        max: usize,
    },
}

impl From<UartError<io::Error>> for SerialError {
    fn from(err: UartError<io::Error>) -> Self {
        match err {
            UartError::Trigger(e) => SerialError::Trigger(e),
            UartError::IOError(e) => SerialError::Output(e),
            // Only `enqueue_raw_bytes` reports a full FIFO and we check the
            // capacity before calling it; map it anyway rather than panic.
            UartError::FullFifo => SerialError::Output(io::Error::new(
                io::ErrorKind::WouldBlock,
                "serial receive FIFO is full",
            )),
        }
    }
}

/// An eventfd used as a `vm_superio` interrupt line: triggering writes 1.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// Duplicates the underlying eventfd (both signal the same counter).
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }

    /// The wrapped eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type Uart = Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// A 16550A UART on the I/O bus (COM1 at 0x3f8, IRQ 4 by convention).
pub struct SerialDevice {
    uart: Uart,
    /// Rate limits the warnings a guest can provoke (output errors).
    errors: LogLimiter,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("fifo_capacity", &self.uart.fifo_capacity())
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// Creates a UART that raises its interrupt on `irq` and writes what
    /// the guest transmits to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger::new(irq), out),
            errors: LogLimiter::default(),
        }
    }

    /// Restores a UART saved with [`SerialDevice::state`]. Raises the
    /// interrupt if one was pending and enabled.
    pub fn from_state(
        state: &SerialDeviceState,
        irq: EventFd,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, SerialError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(SerialError::StateFifoTooLong {
                len: state.in_buffer.len(),
                max: FIFO_SIZE,
            });
        }
        let uart_state = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Serial::from_state(&uart_state, EventFdTrigger::new(irq), NoEvents, out)?;
        Ok(Self {
            uart,
            errors: LogLimiter::default(),
        })
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn state(&self) -> SerialDeviceState {
        let s = self.uart.state();
        SerialDeviceState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Queues bytes from the host side (stdin) into the receive FIFO and
    /// raises the interrupt. Returns how many bytes were accepted: fewer
    /// than `bytes.len()` (possibly 0) when the FIFO is full; the caller
    /// retries the rest later (see [`SerialDevice::fifo_capacity`]).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return Ok(0);
        }
        Ok(self.uart.enqueue_raw_bytes(bytes)?)
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The interrupt line, e.g. to register it as an irqfd.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.uart.interrupt_evt().eventfd()
    }

    /// Register index for a single-byte access at `offset`, or `None` for
    /// accesses the UART does not decode.
    fn register(offset: u64, len: usize) -> Option<u8> {
        if len != 1 || offset >= SERIAL_REGISTERS {
            return None;
        }
        u8::try_from(offset).ok()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (Self::register(offset, data.len()), data.first_mut()) {
            (Some(reg), Some(byte)) => *byte = self.uart.read(reg),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(reg), Some(&value)) = (Self::register(offset, data.len()), data.first()) else {
            return;
        };
        if let Err(err) = self.uart.write(reg, value) {
            if self.errors.should_log() {
                let err = SerialError::from(err);
                tracing::warn!(
                    error = %err,
                    source = ?std::error::Error::source(&err),
                    count = self.errors.count(),
                    "serial write failed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{hammer, SharedBuf};

    const RBR_THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
    }

    fn device() -> (SerialDevice, EventFd, SharedBuf) {
        let irq = eventfd();
        let out = SharedBuf::default();
        let dev = SerialDevice::new(irq.try_clone().expect("clone"), Box::new(out.clone()));
        (dev, irq, out)
    }

    #[test]
    fn thr_write_reaches_output() {
        let (mut dev, _irq, out) = device();
        for b in b"hi\n" {
            dev.write(RBR_THR, &[*b]);
        }
        assert_eq!(out.contents().as_slice(), b"hi\n");
    }

    #[test]
    fn enqueued_input_is_read_from_rbr_and_raises_irq() {
        let (mut dev, irq, _out) = device();
        // Enable the received-data interrupt as the 8250 driver does.
        dev.write(IER, &[0x01]);
        let _ = irq.read(); // drop any THR-empty interrupt from the IER write
        assert_eq!(dev.enqueue_input(b"x").expect("enqueue"), 1);
        assert_eq!(irq.read().expect("irq fired"), 1);

        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x01, 0x01, "data ready");
        let mut rbr = [0u8];
        dev.read(RBR_THR, &mut rbr);
        assert_eq!(rbr, [b'x']);
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x01, 0, "fifo drained");
    }

    #[test]
    fn enqueue_stops_at_fifo_capacity() {
        let (mut dev, _irq, _out) = device();
        let cap = dev.fifo_capacity();
        assert_eq!(cap, FIFO_SIZE);
        let input = vec![b'a'; cap + 10];
        assert_eq!(dev.enqueue_input(&input).expect("enqueue"), cap);
        assert_eq!(dev.fifo_capacity(), 0);
        assert_eq!(dev.enqueue_input(b"more").expect("full is not an error"), 0);
        assert_eq!(dev.enqueue_input(b"").expect("empty"), 0);
    }

    #[test]
    fn scratch_register_round_trips() {
        let (mut dev, _irq, _out) = device();
        dev.write(SCR, &[0x5a]);
        let mut data = [0u8];
        dev.read(SCR, &mut data);
        assert_eq!(data, [0x5a]);
    }

    #[test]
    fn undecoded_accesses_read_ff_and_drop_writes() {
        let (mut dev, _irq, out) = device();
        let mut wide = [0u8; 2];
        dev.read(SCR, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        let mut past = [0u8];
        dev.read(8, &mut past);
        assert_eq!(past, [0xff]);
        dev.write(RBR_THR, b"ab");
        dev.write(8, b"c");
        assert!(out.contents().is_empty());
    }

    #[test]
    fn output_errors_do_not_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("broken pipe"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut dev = SerialDevice::new(eventfd(), Box::new(Broken));
        for _ in 0..100 {
            dev.write(RBR_THR, b"x");
        }
        assert_eq!(dev.errors.count(), 100);
    }

    #[test]
    fn state_round_trips_through_json() {
        let (mut dev, _irq, _out) = device();
        dev.write(SCR, &[0x42]);
        dev.write(IER, &[0x01]);
        dev.enqueue_input(b"abc").expect("enqueue");
        let saved = dev.state();
        let json = serde_json::to_string(&saved).expect("serialize");
        let loaded: SerialDeviceState = serde_json::from_str(&json).expect("deserialize");

        let irq = eventfd();
        let mut restored = SerialDevice::from_state(
            &loaded,
            irq.try_clone().expect("clone"),
            Box::new(io::sink()),
        )
        .expect("restore");
        assert_eq!(restored.state(), saved);
        assert_eq!(irq.read().expect("pending rx interrupt re-raised"), 1);
        let mut data = [0u8];
        restored.read(RBR_THR, &mut data);
        assert_eq!(data, [b'a']);
    }

    #[test]
    fn restore_rejects_oversized_fifo() {
        let (dev, _irq, _out) = device();
        let mut state = dev.state();
        state.in_buffer = vec![0; 10_000];
        assert!(matches!(
            SerialDevice::from_state(&state, eventfd(), Box::new(io::sink())),
            Err(SerialError::StateFifoTooLong { len: 10_000, .. })
        ));
    }

    #[test]
    fn survives_hostile_accesses() {
        let (mut dev, _irq, _out) = device();
        hammer(&mut dev);
    }

    #[test]
    fn trigger_clone_signals_same_counter() {
        let trigger = EventFdTrigger::new(eventfd());
        let clone = trigger.try_clone().expect("clone");
        clone.trigger().expect("trigger");
        assert_eq!(trigger.eventfd().read().expect("read"), 1);
    }
}
