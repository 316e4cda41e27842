//! Transport tests with a fake device: the Linux driver's happy path, and hostile register
//! traffic.

use std::sync::{Arc, Mutex};

use arch::GuestMemoryMmap;
use devices::BusDevice;
use virtio::{
    ActivateError, DeviceState, Interrupt, QueueHandle, QueueProgress, StateError, VirtioDevice,
};
use vm_memory::GuestAddress;

use super::*;
use crate::msix::tests::Recorder;

#[derive(Default)]
struct Seen {
    acked: u64,
    activated: Vec<u16>,
    /// Ring positions of the queues handed over at the last activation.
    progress: Vec<QueueProgress>,
    paused: bool,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    /// The interrupt of the last activation, as a device worker would hold it.
    interrupt: Option<Arc<dyn Interrupt>>,
}

struct FakeDevice {
    seen: Arc<Mutex<Seen>>,
    sizes: Vec<u16>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        common_config::VIRTIO_F_VERSION_1 | 1
    }
    fn ack_features(&mut self, features: u64) {
        self.seen.lock().unwrap().acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<QueueHandle>,
    ) -> Result<(), ActivateError> {
        let mut s = self.seen.lock().unwrap();
        if !s.activated.is_empty() {
            return Err(ActivateError::AlreadyActive);
        }
        s.interrupt = Some(interrupt);
        s.activated = queues.iter().map(|q| q.index).collect();
        s.progress = queues
            .iter()
            .map(|q| QueueProgress::of(q.index, &q.queue))
            .collect();
        Ok(())
    }
    fn pause_and_save(&mut self) -> Result<DeviceState, StateError> {
        let mut s = self.seen.lock().unwrap();
        s.paused = true;
        // The fake's "worker" consumed three requests on each queue.
        let queues = s
            .progress
            .iter()
            .map(|p| QueueProgress {
                next_avail: p.next_avail + 3,
                next_used: p.next_used + 3,
                ..*p
            })
            .collect();
        Ok(DeviceState {
            device_type: 4,
            acked_features: s.acked,
            config: vec![7; 4],
            queues,
        })
    }
    fn resume(&mut self) -> Result<(), StateError> {
        self.seen.lock().unwrap().paused = false;
        Ok(())
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        state.check(4, self.features())?;
        self.seen.lock().unwrap().acked = state.acked_features;
        Ok(())
    }
    fn reset(&mut self) -> bool {
        let mut s = self.seen.lock().unwrap();
        s.resets += 1;
        s.activated.clear();
        s.interrupt = None;
        true
    }
}

const BAR: u64 = 0xc000_0000;

fn setup() -> (VirtioPciDevice, Arc<Mutex<Seen>>, Recorder) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rec = Recorder::default();
    let dev = FakeDevice {
        seen: seen.clone(),
        sizes: vec![16, 16],
    };
    let pci = VirtioPciDevice::new("rng0", Box::new(dev), mem, BAR, Box::new(rec.clone())).unwrap();
    (pci, seen, rec)
}

fn w32(d: &mut VirtioPciDevice, off: u64, v: u32) {
    BusDevice::write(d, off, &v.to_le_bytes());
}
fn w16(d: &mut VirtioPciDevice, off: u64, v: u16) {
    BusDevice::write(d, off, &v.to_le_bytes());
}
fn r32(d: &mut VirtioPciDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    BusDevice::read(d, off, &mut b);
    u32::from_le_bytes(b)
}
fn r16(d: &mut VirtioPciDevice, off: u64) -> u16 {
    let mut b = [0u8; 2];
    BusDevice::read(d, off, &mut b);
    u16::from_le_bytes(b)
}
fn status(d: &mut VirtioPciDevice) -> u8 {
    let mut b = [0u8; 1];
    BusDevice::read(d, 0x14, &mut b);
    b[0]
}
fn set_status(d: &mut VirtioPciDevice, s: u8) {
    BusDevice::write(d, 0x14, &[s]);
}

/// What Linux's virtio_pci_modern does, for queue `q` at guest address `base`.
fn setup_queue(d: &mut VirtioPciDevice, q: u16, base: u64) {
    w16(d, 0x16, q);
    assert_eq!(r16(d, 0x18), 16);
    w16(d, 0x18, 8);
    w16(d, 0x1a, q + 1);
    assert_eq!(r16(d, 0x1a), q + 1);
    w32(d, 0x20, base as u32);
    w32(d, 0x24, 0);
    w32(d, 0x28, (base + 0x1000) as u32);
    w32(d, 0x2c, 0);
    w32(d, 0x30, (base + 0x2000) as u32);
    w32(d, 0x34, 0);
    w16(d, 0x1c, 1);
}

fn negotiate(d: &mut VirtioPciDevice) {
    set_status(d, 1);
    set_status(d, 3);
    w32(d, 0x00, 1);
    assert_eq!(r32(d, 0x04), 1);
    w32(d, 0x08, 0);
    w32(d, 0x0c, 1);
    w32(d, 0x08, 1);
    w32(d, 0x0c, 1);
    set_status(d, 0xb);
    assert_eq!(status(d), 0xb);
}

#[test]
fn config_space_announces_a_modern_device_with_msix() {
    let (mut d, _, _) = setup();
    assert_eq!(d.config_read(0), 0x1044_1af4);
    assert_eq!(d.config_read(4), BAR as u32);
    // Walk the capability list: MSI-X first, then four virtio capabilities.
    let mut at = (d.config_read(0x34 / 4) & 0xff) as usize;
    let mut kinds = Vec::new();
    while at != 0 {
        let dword = d.config_read(at / 4);
        let id = dword & 0xff;
        kinds.push(if id == 0x09 {
            (dword >> 24) as u8
        } else {
            id as u8
        });
        at = ((dword >> 8) & 0xff) as usize;
    }
    assert_eq!(kinds, [0x11, 1, 2, 3, 4]);
    assert_eq!(
        VirtioPciDevice::msix_vectors(&FakeDevice {
            seen: Default::default(),
            sizes: vec![1; 2]
        }),
        3
    );
}

#[test]
fn driver_ok_activates_ready_queues_and_reset_stops_them() {
    let (mut d, seen, _) = setup();
    negotiate(&mut d);
    setup_queue(&mut d, 1, 0x10000);
    set_status(&mut d, 0xf);
    assert_eq!(status(&mut d), 0xf);
    assert_eq!(seen.lock().unwrap().activated, [1]);
    assert_eq!(
        seen.lock().unwrap().acked,
        common_config::VIRTIO_F_VERSION_1 | 1
    );
    // Queue registers are frozen after DRIVER_OK.
    w16(&mut d, 0x16, 1);
    w16(&mut d, 0x18, 2);
    assert_eq!(r16(&mut d, 0x18), 8);
    set_status(&mut d, 0);
    assert_eq!(status(&mut d), 0);
    assert_eq!(seen.lock().unwrap().resets, 1);
    assert_eq!(r16(&mut d, 0x18), 16);
}

#[test]
fn features_not_offered_or_without_version_1_fail_features_ok() {
    let (mut d, _, _) = setup();
    set_status(&mut d, 3);
    w32(&mut d, 0x08, 0);
    w32(&mut d, 0x0c, 1 << 7);
    w32(&mut d, 0x08, 1);
    w32(&mut d, 0x0c, 1);
    set_status(&mut d, 0xb);
    assert_eq!(status(&mut d), 3);
    set_status(&mut d, 0);
    set_status(&mut d, 3);
    set_status(&mut d, 0xb);
    assert_eq!(status(&mut d), 3, "VERSION_1 is required");
    // DRIVER_OK without FEATURES_OK activates nothing.
    set_status(&mut d, 0x7);
    assert_eq!(status(&mut d) & 4, 0);
}

#[test]
fn queue_outside_guest_memory_sets_needs_reset_and_signals_config() {
    let (mut d, seen, rec) = setup();
    d.config_write(d.msix_cap_reg, 2, &0x8000u16.to_le_bytes());
    // Unmask vector 0 (config) with a message.
    for (off, v) in [(0x4000, 0xfee0_0000u32), (0x4008, 0x30), (0x400c, 0)] {
        w32(&mut d, off, v);
    }
    w16(&mut d, 0x10, 0);
    negotiate(&mut d);
    setup_queue(&mut d, 0, 0x4000_0000);
    set_status(&mut d, 0xf);
    assert_ne!(status(&mut d) & STATUS_NEEDS_RESET, 0);
    assert!(seen.lock().unwrap().activated.is_empty());
    assert_eq!(rec.take(), ["route 0 0x30", "fire 0"]);
    let mut isr = [0u8; 1];
    BusDevice::read(&mut d, 0x1000, &mut isr);
    assert_eq!(isr[0], 2);
    BusDevice::read(&mut d, 0x1000, &mut isr);
    assert_eq!(isr[0], 0, "ISR clears on read");
}

#[test]
fn vectors_beyond_the_table_read_back_as_no_vector() {
    let (mut d, _, _) = setup();
    w16(&mut d, 0x10, 3);
    assert_eq!(r16(&mut d, 0x10), NO_VECTOR);
    w16(&mut d, 0x16, 7);
    w16(&mut d, 0x1a, 1);
    assert_eq!(r16(&mut d, 0x1a), NO_VECTOR);
    assert_eq!(r16(&mut d, 0x18), 0);
}

#[test]
fn notify_fallback_kicks_only_existing_queues() {
    let (mut d, _, _) = setup();
    w16(&mut d, 0x3004, 1);
    w16(&mut d, 0x3ffc, 1);
    let events: Vec<(u64, u64)> = d
        .notify_events()
        .map(|(addr, e)| (addr, e.read().unwrap_or(0)))
        .collect();
    assert_eq!(events, [(BAR + 0x3000, 0), (BAR + 0x3004, 1)]);
}

#[test]
fn hostile_register_traffic_never_panics() {
    let (mut d, _, _) = setup();
    // A cheap deterministic generator: every offset class, size and value pattern.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = [0usize, 1, 2, 3, 4, 5, 8, 16][(x & 7) as usize];
        let offset = match (x >> 3) & 3 {
            0 => (x >> 8) % 0x40,
            1 => (x >> 8) % BAR_SIZE,
            2 => (x >> 8) % (BAR_SIZE * 2),
            _ => x >> 8,
        };
        let data: Vec<u8> = (0..len).map(|i| (x >> (i % 8)) as u8).collect();
        let mut buf = vec![0u8; len];
        match (x >> 5) & 3 {
            0 => BusDevice::write(&mut d, offset, &data),
            1 => BusDevice::read(&mut d, offset, &mut buf),
            2 => d.config_write((offset % 80) as usize, offset % 5, &data),
            _ => {
                d.config_read((offset % 80) as usize);
            }
        }
    }
}

/// Routes and unmasks MSI-X vector 0 and makes it the configuration-change vector.
fn config_vector_0(d: &mut VirtioPciDevice) {
    d.config_write(d.msix_cap_reg, 2, &0x8000u16.to_le_bytes());
    for (off, v) in [(0x4000, 0xfee0_0000u32), (0x4008, 0x30), (0x400c, 0)] {
        w32(d, off, v);
    }
    w16(d, 0x10, 0);
}

#[test]
fn device_needs_reset_shows_in_status_with_one_config_interrupt_until_reset() {
    let (mut d, seen, rec) = setup();
    config_vector_0(&mut d);
    negotiate(&mut d);
    setup_queue(&mut d, 0, 0x10000);
    set_status(&mut d, 0xf);
    assert_eq!(status(&mut d), 0xf);
    rec.take();
    let interrupt = seen.lock().unwrap().interrupt.clone().unwrap();

    // the worker found the ring corrupt
    interrupt.set_needs_reset();
    assert_eq!(status(&mut d), 0xf | STATUS_NEEDS_RESET);
    assert_eq!(d.device_status(), 0xf | STATUS_NEEDS_RESET);
    assert_eq!(rec.take(), ["fire 0"], "one configuration-change interrupt");
    let mut isr = [0u8; 1];
    BusDevice::read(&mut d, 0x1000, &mut isr);
    assert_eq!(isr[0], 2, "ISR says: configuration changed");
    interrupt.set_needs_reset();
    assert!(rec.take().is_empty(), "raised once until the reset");

    // the driver cannot clear it by writing the status, only by resetting
    set_status(&mut d, 0xf);
    assert_eq!(status(&mut d), 0xf | STATUS_NEEDS_RESET);
    set_status(&mut d, 0);
    assert_eq!(status(&mut d), 0);
    negotiate(&mut d);
    setup_queue(&mut d, 0, 0x10000);
    set_status(&mut d, 0xf);
    assert_eq!(status(&mut d), 0xf, "a reset device starts clean");
}

#[test]
fn driver_cannot_set_needs_reset_itself() {
    let (mut d, _, _) = setup();
    set_status(&mut d, 1 | STATUS_NEEDS_RESET);
    assert_eq!(status(&mut d), 1);
}

/// The real entropy device behind the transport: a driver whose avail index jumps past the
/// queue size gets NEEDS_RESET from the device's worker thread, and a reset brings the
/// device back.
#[test]
fn rng_with_a_corrupt_avail_index_needs_reset() {
    use vm_memory::Bytes;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let rec = Recorder::default();
    let rng = virtio::rng::Rng::new("rng0");
    let mut d = VirtioPciDevice::new(
        "rng0",
        Box::new(rng),
        mem.clone(),
        BAR,
        Box::new(rec.clone()),
    )
    .unwrap();
    config_vector_0(&mut d);
    set_status(&mut d, 3);
    w32(&mut d, 0x08, 1);
    w32(&mut d, 0x0c, 1);
    set_status(&mut d, 0xb);
    w16(&mut d, 0x16, 0);
    w16(&mut d, 0x18, 8);
    for (off, v) in [(0x20, 0x10000u32), (0x28, 0x11000), (0x30, 0x12000)] {
        w32(&mut d, off, v);
    }
    w16(&mut d, 0x1c, 1);
    set_status(&mut d, 0xf);
    assert_eq!(status(&mut d), 0xf);

    // avail.idx = 100 on a queue of 8, then a kick (the notify fallback path)
    mem.write_obj(100u16, GuestAddress(0x11002)).unwrap();
    w16(&mut d, 0x3000, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(&mut d) & STATUS_NEEDS_RESET == 0 {
        assert!(std::time::Instant::now() < deadline, "no NEEDS_RESET");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(status(&mut d), 0xf | STATUS_NEEDS_RESET);
    let used_idx: u16 = mem.read_obj(GuestAddress(0x12002)).unwrap();
    assert_eq!(used_idx, 0, "nothing of the corrupt ring was used");
    set_status(&mut d, 0);
    assert_eq!(status(&mut d), 0);
}

/// A device the Linux driver set up, with MSI-X enabled and the config vector unmasked.
fn running_device() -> (VirtioPciDevice, Arc<Mutex<Seen>>, Recorder) {
    let (mut d, seen, rec) = setup();
    config_vector_0(&mut d);
    d.config_write(1, 0, &0x0006u16.to_le_bytes());
    negotiate(&mut d);
    setup_queue(&mut d, 1, 0x10000);
    set_status(&mut d, 0xf);
    rec.take();
    (d, seen, rec)
}

#[test]
fn snapshot_restores_registers_msix_routes_and_queue_positions() {
    let (mut d, seen, _) = running_device();
    let st = d.pause_and_save().unwrap();
    assert!(seen.lock().unwrap().paused);
    d.resume().unwrap();
    assert!(!seen.lock().unwrap().paused);
    assert!(st.common.active);
    assert_eq!(st.common.queues[1].size, 8);
    assert_eq!(st.common.queues[1].msix_vector, 2);

    // A fresh transport (a new VMM process) takes the state.
    let (mut fresh, fresh_seen, fresh_rec) = setup();
    fresh.restore_state(&st).unwrap();
    assert_eq!(
        fresh_rec.take(),
        ["route 0 0x30"],
        "GSI route rebuilt from the table"
    );
    assert_eq!(status(&mut fresh), 0xf);
    assert_eq!(fresh.config_read(1) & 0xffff, 0x0006);
    assert_eq!(fresh.config_read(d.msix_cap_reg) >> 16 & 0x8000, 0x8000);
    w16(&mut fresh, 0x16, 1);
    assert_eq!(r16(&mut fresh, 0x18), 8);
    assert_eq!(r16(&mut fresh, 0x1a), 2);
    assert_eq!(r32(&mut fresh, 0x20), 0x10000);
    let fs = fresh_seen.lock().unwrap();
    assert_eq!(fs.activated, [1]);
    assert_eq!(fs.acked, common_config::VIRTIO_F_VERSION_1 | 1);
    assert_eq!(
        fs.progress,
        [QueueProgress {
            index: 1,
            next_avail: 3,
            next_used: 3
        }],
        "queues handed over where the worker left them"
    );
    drop(fs);
    // The restored state saves back to itself.
    let again = fresh.pause_and_save().unwrap();
    assert_eq!(again.common.queues, st.common.queues);
    assert_eq!(again.msix, st.msix);
    assert_eq!(again.config, st.config);
}

#[test]
fn corrupt_or_foreign_state_is_an_error_not_a_panic() {
    let (mut d, _, _) = running_device();
    let st = d.pause_and_save().unwrap();
    let restore = |st: &VirtioPciState| {
        let (mut fresh, _, _) = setup();
        fresh.restore_state(st).map_err(|e| {
            // the error line as the CLI prints it: the error and its sources
            let mut line = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                line = format!("{line}: {s}");
                src = s.source();
            }
            line
        })
    };
    let mut bad = st.clone();
    bad.common.device.device_type = 1;
    assert_eq!(
        restore(&bad).unwrap_err(),
        "saved state is of virtio device type 1, the device here is type 4"
    );
    let mut bad = st.clone();
    bad.common.queues.pop();
    assert!(restore(&bad).unwrap_err().contains("1 queues saved"));
    let mut bad = st.clone();
    bad.common.queues[1].size = 7;
    assert!(restore(&bad).unwrap_err().contains("invalid size 7"));
    let mut bad = st.clone();
    bad.common.queues[1].desc_table = 0x4000_0000;
    assert!(restore(&bad)
        .unwrap_err()
        .contains("did not take its restored queues"));
    let mut bad = st.clone();
    bad.common.device.queues[0].index = 9;
    assert!(restore(&bad).unwrap_err().contains("queue 9"));
    let mut bad = st.clone();
    bad.msix.entries.pop();
    assert!(restore(&bad).unwrap_err().contains("table entries"));
    let mut bad = st.clone();
    bad.config[0] = 0x1041_1af4;
    assert!(restore(&bad).unwrap_err().contains("configuration space"));
    let mut bad = st.clone();
    bad.config.truncate(3);
    assert!(restore(&bad).is_err());
    let mut bad = st;
    bad.common.driver_features = 1 << 40;
    assert!(restore(&bad).unwrap_err().contains("not all offered"));
}
