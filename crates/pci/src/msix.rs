//! MSI-X: the capability, the vector table and the pending-bit array (PBA), and delivery of
//! vectors through an [`MsiSink`].
//!
//! A masked vector (per entry or the whole function) records its interrupt in the PBA; the
//! interrupt is delivered when the vector is unmasked. With MSI-X disabled nothing is
//! delivered (this platform has no INTx for PCI devices).

use std::sync::{Mutex, MutexGuard, PoisonError};

use hv::{IrqRouter, MsiMessage};
use std::sync::Arc;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;
/// Table size limit of the capability (11 bits).
pub const MAX_VECTORS: u16 = 2048;

/// One saved MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixEntryState {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub data: u32,
    pub ctrl: u32,
}

/// The saved MSI-X state of one function: the table, the pending bits, and the enable and
/// function-mask bits of the message control register.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixState {
    pub entries: Vec<MsixEntryState>,
    pub pending: Vec<bool>,
    pub enabled: bool,
    pub function_masked: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixStateError {
    #[error("saved MSI-X state has {entries} table entries and {pending} pending bits, this function has {vectors} vectors")]
    Size {
        entries: usize,
        pending: usize,
        vectors: usize,
    },
}

/// Where vectors go: GSI routes plus irqfds in production, a recorder in tests.
pub trait MsiSink: Send + Sync {
    /// Points `vector` at `msg`.
    fn route(&self, vector: u16, msg: MsiMessage);
    /// Raises `vector` now.
    fn fire(&self, vector: u16);
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    msg: MsiMessage,
    ctrl: u32,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            msg: MsiMessage::default(),
            ctrl: ENTRY_MASKED,
        }
    }
}

#[derive(Debug)]
struct State {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    routed: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
}

impl State {
    fn deliverable(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && self.entries[v].ctrl & ENTRY_MASKED == 0
    }
}

/// MSI-X state of one function, shared by its transport (register accesses from vCPUs) and
/// its device workers (interrupts).
pub struct Msix {
    state: Mutex<State>,
    sink: Box<dyn MsiSink>,
}

impl Msix {
    /// `vectors` must be 1..=2048 (clamped).
    pub fn new(vectors: u16, sink: Box<dyn MsiSink>) -> Self {
        let n = usize::from(vectors.clamp(1, MAX_VECTORS));
        Msix {
            state: Mutex::new(State {
                entries: vec![Entry::default(); n],
                pending: vec![false; n],
                routed: vec![None; n],
                enabled: false,
                function_masked: false,
            }),
            sink,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn vectors(&self) -> u16 {
        self.lock().entries.len() as u16
    }

    /// The capability body (12 bytes) for a table at `table_offset` and a PBA at `pba_offset`
    /// of BAR `bir`, and its writable-bit mask (enable and function-mask only).
    pub fn capability(&self, bir: u8, table_offset: u32, pba_offset: u32) -> ([u8; 12], [u8; 12]) {
        let size = self.vectors() - 1;
        let mut body = [0u8; 12];
        body[0] = MSIX_CAP_ID;
        body[2..4].copy_from_slice(&size.to_le_bytes());
        body[4..8].copy_from_slice(&(table_offset | u32::from(bir & 7)).to_le_bytes());
        body[8..12].copy_from_slice(&(pba_offset | u32::from(bir & 7)).to_le_bytes());
        let mut writable = [0u8; 12];
        writable[3] = 0xc0;
        (body, writable)
    }

    /// Applies the message-control register the guest wrote.
    pub fn set_control(&self, ctrl: u16) {
        let mut s = self.lock();
        s.enabled = ctrl & CTRL_ENABLE != 0;
        s.function_masked = ctrl & CTRL_FUNCTION_MASK != 0;
        for v in 0..s.entries.len() {
            self.update(&mut s, v);
        }
    }

    /// Routes vector `v` if it is live and its message changed, and delivers what it has
    /// pending once it is unmasked.
    fn update(&self, s: &mut State, v: usize) {
        if !s.deliverable(v) {
            return;
        }
        let msg = s.entries[v].msg;
        if s.routed[v] != Some(msg) {
            self.sink.route(v as u16, msg);
            s.routed[v] = Some(msg);
        }
        if s.pending[v] {
            s.pending[v] = false;
            self.sink.fire(v as u16);
        }
    }

    /// Raises `vector` (or records it as pending while masked). Unknown vectors are ignored.
    pub fn trigger(&self, vector: u16) {
        let mut s = self.lock();
        let v = usize::from(vector);
        if v >= s.entries.len() || !s.enabled {
            return;
        }
        if s.deliverable(v) {
            if s.routed[v] != Some(s.entries[v].msg) {
                self.update(&mut s, v);
            }
            self.sink.fire(vector);
        } else {
            s.pending[v] = true;
        }
    }

    /// The table, pending bits and control bits, for a snapshot.
    pub fn save_state(&self) -> MsixState {
        let s = self.lock();
        MsixState {
            entries: s
                .entries
                .iter()
                .map(|e| MsixEntryState {
                    addr_lo: e.msg.addr_lo,
                    addr_hi: e.msg.addr_hi,
                    data: e.msg.data,
                    ctrl: e.ctrl,
                })
                .collect(),
            pending: s.pending.clone(),
            enabled: s.enabled,
            function_masked: s.function_masked,
        }
    }

    /// Takes saved state and routes every vector that can be delivered (the GSI routes of a
    /// new VM are rebuilt from the table here); pending vectors stay pending until unmasked.
    pub fn restore_state(&self, st: &MsixState) -> Result<(), MsixStateError> {
        let mut s = self.lock();
        let vectors = s.entries.len();
        if st.entries.len() != vectors || st.pending.len() != vectors {
            return Err(MsixStateError::Size {
                entries: st.entries.len(),
                pending: st.pending.len(),
                vectors,
            });
        }
        for (e, saved) in s.entries.iter_mut().zip(&st.entries) {
            e.msg = MsiMessage {
                addr_lo: saved.addr_lo,
                addr_hi: saved.addr_hi,
                data: saved.data,
            };
            e.ctrl = saved.ctrl & ENTRY_MASKED;
        }
        s.pending.clone_from(&st.pending);
        s.routed.iter_mut().for_each(|r| *r = None);
        s.enabled = st.enabled;
        s.function_masked = st.function_masked;
        for v in 0..vectors {
            self.update(&mut s, v);
        }
        Ok(())
    }

    /// Reads the vector table (4 or 8-byte accesses; others read as zero).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let s = self.lock();
        let dword = |off: u64| -> u32 {
            let v = (off / MSIX_ENTRY_SIZE) as usize;
            let Some(e) = s.entries.get(v) else { return 0 };
            match (off % MSIX_ENTRY_SIZE) / 4 {
                0 => e.msg.addr_lo,
                1 => e.msg.addr_hi,
                2 => e.msg.data,
                _ => e.ctrl,
            }
        };
        match data.len() {
            4 if offset.is_multiple_of(4) => data.copy_from_slice(&dword(offset).to_le_bytes()),
            8 if offset.is_multiple_of(8) => {
                data[..4].copy_from_slice(&dword(offset).to_le_bytes());
                data[4..].copy_from_slice(&dword(offset + 4).to_le_bytes());
            }
            _ => data.fill(0),
        }
    }

    /// Writes the vector table (4 or 8-byte aligned accesses; others are ignored).
    pub fn write_table(&self, offset: u64, data: &[u8]) {
        let mut dwords = [(0u64, 0u32); 2];
        let n = match data.len() {
            4 if offset.is_multiple_of(4) => {
                dwords[0] = (offset, le32(&data[..4]));
                1
            }
            8 if offset.is_multiple_of(8) => {
                dwords[0] = (offset, le32(&data[..4]));
                dwords[1] = (offset + 4, le32(&data[4..]));
                2
            }
            _ => return,
        };
        let mut s = self.lock();
        for &(off, value) in &dwords[..n] {
            let v = (off / MSIX_ENTRY_SIZE) as usize;
            let Some(e) = s.entries.get_mut(v) else {
                continue;
            };
            match (off % MSIX_ENTRY_SIZE) / 4 {
                0 => e.msg.addr_lo = value,
                1 => e.msg.addr_hi = value,
                2 => e.msg.data = value,
                _ => e.ctrl = value & ENTRY_MASKED,
            }
            self.update(&mut s, v);
        }
    }

    /// Reads the pending-bit array (any size; bytes past the array read as zero).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let s = self.lock();
        for (i, b) in data.iter_mut().enumerate() {
            let first = offset.saturating_add(i as u64).saturating_mul(8);
            *b = (0..8u64).fold(0u8, |acc, bit| {
                let v = first.saturating_add(bit) as usize;
                acc | (u8::from(s.pending.get(v).copied().unwrap_or(false)) << bit)
            });
        }
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Delivers vectors through KVM: one GSI and one irqfd per vector.
pub struct KvmMsiSink {
    router: Arc<IrqRouter>,
    vectors: Vec<(u32, EventFd)>,
}

impl KvmMsiSink {
    pub fn new(router: Arc<IrqRouter>, vectors: u16) -> Result<Self, hv::HvError> {
        let mut v = Vec::with_capacity(usize::from(vectors));
        for _ in 0..vectors {
            let gsi = router.allocate_gsi()?;
            let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| hv::HvError::Ioctl {
                op: "eventfd",
                source: e,
            })?;
            router.register_irqfd(&evt, gsi)?;
            v.push((gsi, evt));
        }
        Ok(KvmMsiSink { router, vectors: v })
    }
}

impl MsiSink for KvmMsiSink {
    fn route(&self, vector: u16, msg: MsiMessage) {
        if let Some((gsi, _)) = self.vectors.get(usize::from(vector)) {
            if let Err(e) = self.router.set_msi_route(*gsi, msg) {
                virtio::warn_limited!(vector, error = %e, "cannot route MSI-X vector");
            }
        }
    }

    fn fire(&self, vector: u16) {
        if let Some((_, evt)) = self.vectors.get(usize::from(vector)) {
            if let Err(e) = evt.write(1) {
                virtio::warn_limited!(vector, error = %e, "cannot signal MSI-X irqfd");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records what the MSI-X logic asks of the interrupt controller.
    #[derive(Default, Clone)]
    pub(crate) struct Recorder {
        pub log: Arc<Mutex<Vec<String>>>,
    }

    impl Recorder {
        pub(crate) fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    impl MsiSink for Recorder {
        fn route(&self, vector: u16, msg: MsiMessage) {
            self.log
                .lock()
                .unwrap()
                .push(format!("route {vector} {:#x}", msg.data));
        }
        fn fire(&self, vector: u16) {
            self.log.lock().unwrap().push(format!("fire {vector}"));
        }
    }

    fn program(m: &Msix, v: u64, data: u32) {
        m.write_table(v * 16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(v * 16 + 4, &0u32.to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
        m.write_table(v * 16 + 12, &0u32.to_le_bytes());
    }

    #[test]
    fn masked_vectors_become_pending_and_fire_on_unmask() {
        let rec = Recorder::default();
        let m = Msix::new(2, Box::new(rec.clone()));
        m.trigger(0);
        assert!(rec.take().is_empty(), "disabled MSI-X delivers nothing");
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        program(&m, 0, 0x41);
        m.trigger(0);
        let mut pba = [0u8; 1];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        assert!(rec.take().is_empty());
        m.set_control(CTRL_ENABLE);
        assert_eq!(rec.take(), ["route 0 0x41", "fire 0"]);
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        m.trigger(0);
        m.trigger(1); // still masked by its entry
        assert_eq!(rec.take(), ["fire 0"]);
        program(&m, 1, 0x42);
        assert_eq!(rec.take(), ["route 1 0x42", "fire 1"]);
    }

    #[test]
    fn state_round_trip_reroutes_live_vectors() {
        let rec = Recorder::default();
        let m = Msix::new(3, Box::new(rec.clone()));
        m.set_control(CTRL_ENABLE);
        program(&m, 0, 0x41);
        program(&m, 2, 0x43);
        m.write_table(2 * 16 + 12, &1u32.to_le_bytes()); // mask vector 2
        m.trigger(2);
        let saved = m.save_state();
        assert_eq!(saved.pending, [false, false, true]);

        let rec2 = Recorder::default();
        let fresh = Msix::new(3, Box::new(rec2.clone()));
        fresh.restore_state(&saved).unwrap();
        assert_eq!(
            rec2.take(),
            ["route 0 0x41"],
            "only deliverable vectors are routed"
        );
        assert_eq!(fresh.save_state(), saved);
        fresh.write_table(2 * 16 + 12, &0u32.to_le_bytes());
        assert_eq!(rec2.take(), ["route 2 0x43", "fire 2"]);

        let other = Msix::new(2, Box::new(Recorder::default()));
        assert!(matches!(
            other.restore_state(&saved),
            Err(MsixStateError::Size { vectors: 2, .. })
        ));
    }

    #[test]
    fn hostile_table_accesses_are_harmless() {
        let rec = Recorder::default();
        let m = Msix::new(1, Box::new(rec.clone()));
        m.set_control(CTRL_ENABLE);
        for off in [3u64, 16, 17, 4096, u64::MAX - 3, u64::MAX] {
            m.write_table(off, &[0xff; 4]);
            m.write_table(off, &[0xff; 8]);
            m.write_table(off, &[0xff; 3]);
            let mut d = [0u8; 8];
            m.read_table(off, &mut d);
            m.read_pba(off, &mut d);
        }
        m.trigger(5);
        m.trigger(u16::MAX);
        assert!(rec.take().is_empty());
        let mut d = [0u8; 8];
        m.read_table(8, &mut d);
        assert_eq!(d, [0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn capability_describes_the_table() {
        let m = Msix::new(3, Box::new(Recorder::default()));
        let (body, writable) = m.capability(0, 0x4000, 0x6000);
        assert_eq!(body[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([body[2], body[3]]), 2);
        assert_eq!(
            u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
            0x4000
        );
        assert_eq!(writable[3], 0xc0);
    }
}
