//! The virtio-net device model: features, configuration space, activation and reset.

use std::sync::Arc;

use arch::GuestMemoryMmap;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;

use super::features::*;
use super::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
use super::worker::{FrameIo, NetCounters, Worker, WorkerParts, RX_INDEX, TX_INDEX};
use super::{
    format_mac, random_mac, NetConfig, TapSpec, NUM_QUEUES, QUEUE_SIZE, VIRTIO_ID_NET, VNET_HDR_LEN,
};
use crate::rate_limiter::{RateLimit, RateLimiter, RateLimiterError};
use crate::worker::LoopThread;
use crate::worker_slot::WorkerSlot;
use crate::{ActivateError, DeviceState, Interrupt, QueueHandle, StateError, VirtioDevice};

/// `VIRTIO_NET_S_LINK_UP` in the config space's `status`.
const LINK_UP: u16 = 1;
/// `mac[6]` then `status: u16`.
const CONFIG_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create the rate limiter")]
    RateLimiter(#[from] RateLimiterError),
}

/// One virtio-net card on a TAP.
pub struct Net {
    io: Arc<dyn FrameIo>,
    tap: Option<Arc<Tap>>,
    name: String,
    config_space: [u8; CONFIG_LEN],
    avail_features: u64,
    acked_features: u64,
    rx_limiter: Arc<RateLimiter>,
    tx_limiter: Arc<RateLimiter>,
    counters: Arc<NetCounters>,
    worker: WorkerSlot<LoopThread<Worker>>,
    /// The MAC came from the configuration (kept on restore) rather than chosen at random
    /// (the saved one is taken then, so the guest keeps its address).
    mac_given: bool,
}

fn bit(b: u32) -> u64 {
    1u64 << b
}

/// What the device offers: offloads both ways (the TAP takes and gives the virtio-net
/// header), MAC, link status, and the ring features.
fn offered_features() -> u64 {
    [
        CSUM,
        GUEST_CSUM,
        MAC,
        GUEST_TSO4,
        GUEST_TSO6,
        GUEST_ECN,
        HOST_TSO4,
        HOST_TSO6,
        HOST_ECN,
        STATUS,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_VERSION_1,
    ]
    .into_iter()
    .fold(0, |acc, b| acc | bit(b))
}

/// The TAP offloads matching what the guest driver accepts to receive.
pub fn tap_offloads(acked: u64) -> u32 {
    let mut flags = 0;
    if acked & bit(GUEST_CSUM) != 0 {
        flags |= TUN_F_CSUM;
        if acked & bit(GUEST_TSO4) != 0 {
            flags |= TUN_F_TSO4;
        }
        if acked & bit(GUEST_TSO6) != 0 {
            flags |= TUN_F_TSO6;
        }
        if flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 && acked & bit(GUEST_ECN) != 0 {
            flags |= TUN_F_TSO_ECN;
        }
    }
    flags
}

impl Net {
    /// Opens the TAP of `config` (configuring it when kapsel creates it) and builds the card.
    pub fn new(config: &NetConfig) -> Result<Net, NetError> {
        let name = match &config.tap {
            TapSpec::Auto => None,
            TapSpec::Named(n) => Some(n.as_str()),
        };
        let tap = Tap::open(name, VNET_HDR_LEN)?;
        // until the driver negotiates, the TAP hands us only finished frames
        tap.set_offload(0)?;
        if tap.created() || config.host_ip.is_some() {
            tap.configure_host(config.host_ip)?;
        }
        let tap = Arc::new(tap);
        let mut net = Self::with_io(tap.clone(), tap.name(), config)?;
        net.tap = Some(tap);
        Ok(net)
    }

    /// A card on any frame backend (tests use a fake).
    pub fn with_io(io: Arc<dyn FrameIo>, name: &str, config: &NetConfig) -> Result<Net, NetError> {
        let mac = config.mac.unwrap_or_else(random_mac);
        let mut config_space = [0u8; CONFIG_LEN];
        config_space[..6].copy_from_slice(&mac);
        config_space[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        tracing::info!(tap = name, mac = %format_mac(&mac), "virtio-net card");
        Ok(Net {
            io,
            tap: None,
            name: name.to_string(),
            config_space,
            avail_features: offered_features(),
            acked_features: 0,
            rx_limiter: Arc::new(RateLimiter::new(config.rx_limit)?),
            tx_limiter: Arc::new(RateLimiter::new(config.tx_limit)?),
            counters: Arc::new(NetCounters::default()),
            worker: WorkerSlot::default(),
            mac_given: config.mac.is_some(),
        })
    }

    /// The host interface name.
    pub fn tap_name(&self) -> &str {
        &self.name
    }

    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// The limiters of guest receive and guest transmit, for changes at run time.
    pub fn rate_limiters(&self) -> (Arc<RateLimiter>, Arc<RateLimiter>) {
        (self.rx_limiter.clone(), self.tx_limiter.clone())
    }

    /// Changes the limits at run time (guest receive, guest transmit).
    pub fn set_rate_limits(&self, rx: RateLimit, tx: RateLimit) -> Result<(), RateLimiterError> {
        self.rx_limiter.update(rx)?;
        self.tx_limiter.update(tx)
    }
}

/// Serves the card's queues on a new thread named after its TAP.
fn spawn(name: &str, worker: Worker) -> Result<LoopThread<Worker>, ActivateError> {
    LoopThread::spawn(format!("net-{name}"), worker).map_err(ActivateError::Worker)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // the MAC is read-only once VERSION_1 is negotiated; nothing here is writable
        tracing::debug!(offset, len = data.len(), "virtio-net config write ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<QueueHandle>,
    ) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        crate::device::check_queue_count(NUM_QUEUES, &queues)?;
        if let Some(tap) = &self.tap {
            tap.set_offload(tap_offloads(self.acked_features))
                .map_err(|e| ActivateError::Backend(e.to_string()))?;
        }
        let event_idx = self.acked_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut rx = None;
        let mut tx = None;
        for mut q in queues {
            q.queue.set_event_idx(event_idx);
            match q.index {
                RX_INDEX => rx = Some(q),
                TX_INDEX => tx = Some(q),
                _ => {}
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::Backend(
                "virtio-net needs queues 0 (rx) and 1 (tx)".into(),
            ));
        };
        let parts = WorkerParts {
            mem,
            interrupt,
            io: self.io.clone(),
            rx_limiter: self.rx_limiter.clone(),
            tx_limiter: self.tx_limiter.clone(),
            counters: self.counters.clone(),
        };
        let worker = spawn(&self.name, Worker::new(parts, rx, tx))?;
        self.worker.set_running(worker);
        tracing::debug!(tap = %self.name, features = self.acked_features, "virtio-net activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker.reset();
        self.acked_features = 0;
        if let Some(tap) = &self.tap {
            let _ = tap.set_offload(0);
        }
        true
    }

    fn pause_and_save(&mut self) -> Result<DeviceState, StateError> {
        let queues = self
            .worker
            .pause()?
            .map(Worker::progress)
            .unwrap_or_default();
        Ok(DeviceState {
            device_type: VIRTIO_ID_NET,
            acked_features: self.acked_features,
            config: self.config_space.to_vec(),
            queues,
        })
    }

    fn resume(&mut self) -> Result<(), StateError> {
        self.worker.resume(|w| spawn(&self.name, w))
    }

    /// The TAP was opened anew (by the saved name or an override). A card whose MAC was
    /// chosen at random keeps the saved MAC; a configured MAC (saved or overridden) stays.
    /// The driver read the MAC at probe time and keeps using it: a new MAC only shows in
    /// the configuration space until the guest re-probes the card (e.g. reboots).
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        state.check(VIRTIO_ID_NET, self.avail_features)?;
        if state.config.len() != CONFIG_LEN {
            return Err(StateError::Mismatch(format!(
                "virtio-net {}: saved configuration space is {} bytes, expected {CONFIG_LEN}",
                self.name,
                state.config.len()
            )));
        }
        if !self.mac_given {
            self.config_space[..6].copy_from_slice(&state.config[..6]);
        }
        self.acked_features = state.acked_features;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::os::fd::RawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct NullIo;
    impl FrameIo for NullIo {
        fn read_frame(&self, _buf: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn fd(&self) -> Option<RawFd> {
            None
        }
    }

    struct NoIrq;
    impl Interrupt for NoIrq {
        fn trigger(&self, _kind: crate::InterruptKind) -> io::Result<()> {
            Ok(())
        }
    }

    fn config() -> NetConfig {
        NetConfig {
            tap: TapSpec::Auto,
            mac: Some([0x52, 0x54, 0, 1, 2, 3]),
            host_ip: None,
            rx_limit: RateLimit::default(),
            tx_limit: RateLimit::default(),
        }
    }

    fn net() -> Net {
        Net::with_io(Arc::new(NullIo), "fake0", &config()).expect("net")
    }

    #[test]
    fn config_space_holds_mac_and_link_status() {
        let n = net();
        let mut mac = [0u8; 6];
        n.read_config(0, &mut mac);
        assert_eq!(mac, [0x52, 0x54, 0, 1, 2, 3]);
        let mut status = [0u8; 2];
        n.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), LINK_UP);
    }

    #[test]
    fn config_access_at_any_offset_and_size_is_safe() {
        let mut n = net();
        for offset in [0u64, 5, 7, 8, 100, u64::MAX - 1, u64::MAX] {
            for len in [0usize, 1, 2, 4, 8, 64] {
                let mut buf = vec![0xaa; len];
                n.read_config(offset, &mut buf);
                n.write_config(offset, &buf);
            }
        }
        let mut tail = [0xaau8; 4];
        n.read_config(6, &mut tail);
        assert_eq!(tail, [1, 0, 0, 0], "bytes past the end read as zero");
        let mut mac = [0u8; 6];
        n.read_config(0, &mut mac);
        assert_eq!(mac, [0x52, 0x54, 0, 1, 2, 3], "writes ignored");
    }

    #[test]
    fn features_are_masked_to_the_offer() {
        let mut n = net();
        assert_ne!(n.features() & bit(VIRTIO_F_VERSION_1), 0);
        n.ack_features(u64::MAX);
        assert_eq!(n.acked_features, n.features());
    }

    #[test]
    fn offloads_follow_guest_features() {
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(
            tap_offloads(bit(GUEST_TSO4)),
            0,
            "TSO needs checksum offload"
        );
        assert_eq!(
            tap_offloads(bit(GUEST_CSUM) | bit(GUEST_TSO4) | bit(GUEST_TSO6) | bit(GUEST_ECN)),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
    }

    fn handles(n: usize) -> Vec<QueueHandle> {
        (0..n)
            .map(|i| QueueHandle {
                index: i as u16,
                queue: virtio_queue::Queue::new(QUEUE_SIZE).expect("queue"),
                kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            })
            .collect()
    }

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10_0000)]).expect("mem")
    }

    #[test]
    fn activate_checks_queues_and_reset_allows_again() {
        let mut n = net();
        assert!(matches!(
            n.activate(guest_mem(), Arc::new(NoIrq), handles(1)),
            Err(ActivateError::QueueCount { .. })
        ));
        n.activate(guest_mem(), Arc::new(NoIrq), handles(2))
            .expect("activate");
        assert!(matches!(
            n.activate(guest_mem(), Arc::new(NoIrq), handles(2)),
            Err(ActivateError::AlreadyActive)
        ));
        assert!(n.reset());
        n.activate(guest_mem(), Arc::new(NoIrq), handles(2))
            .expect("activate after reset");
    }

    #[test]
    fn pause_save_resume_and_restore_round_trip() {
        let mut n = net();
        n.ack_features(bit(VIRTIO_F_VERSION_1) | bit(MAC));
        n.activate(guest_mem(), Arc::new(NoIrq), handles(2))
            .expect("activate");
        let st = n.pause_and_save().expect("pause");
        assert_eq!(st.queues.len(), 2);
        assert_eq!(st.config[..6], [0x52, 0x54, 0, 1, 2, 3]);
        n.resume().expect("resume");
        assert!(n.worker.is_running());

        // A card with a random MAC takes the saved one; a configured MAC stays.
        let mut random = Net::with_io(
            Arc::new(NullIo),
            "fake1",
            &NetConfig {
                mac: None,
                ..config()
            },
        )
        .expect("net");
        random.restore_state(&st).expect("restore");
        let mut mac = [0u8; 6];
        random.read_config(0, &mut mac);
        assert_eq!(mac, [0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(random.acked_features, st.acked_features);
        let mut given = Net::with_io(
            Arc::new(NullIo),
            "fake2",
            &NetConfig {
                mac: Some([0x52, 0x54, 0, 9, 9, 9]),
                ..config()
            },
        )
        .expect("net");
        given.restore_state(&st).expect("restore");
        given.read_config(0, &mut mac);
        assert_eq!(mac, [0x52, 0x54, 0, 9, 9, 9]);

        // Corrupt or foreign state is an error, not a panic.
        let mut bad = st.clone();
        bad.config.truncate(3);
        assert!(matches!(
            given.restore_state(&bad),
            Err(StateError::Mismatch(_))
        ));
        let mut bad = st.clone();
        bad.device_type = 2;
        assert!(matches!(
            given.restore_state(&bad),
            Err(StateError::WrongType { .. })
        ));
        let mut bad = st;
        bad.acked_features = u64::MAX;
        assert!(matches!(
            given.restore_state(&bad),
            Err(StateError::Features { .. })
        ));
    }
}
