//! The virtio-vsock device model.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use arch::GuestMemoryMmap;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

use super::muxer::Muxer;
use super::worker::{VsockCounters, Worker, EVT_INDEX, RX_INDEX, TX_INDEX};
use super::{VsockConfig, MIN_GUEST_CID, NUM_QUEUES, QUEUE_SIZE, VIRTIO_ID_VSOCK};
use crate::worker::LoopThread;
use crate::worker_slot::WorkerSlot;
use crate::{ActivateError, DeviceState, Interrupt, QueueHandle, StateError, VirtioDevice};

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock CID {0} is reserved or too large: use 3 to 4294967294")]
    BadCid(u64),
    #[error("vsock socket {0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot listen on vsock socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One virtio-vsock device with its host-side UNIX socket.
pub struct Vsock {
    cid: u64,
    path: PathBuf,
    listener: Arc<UnixListener>,
    acked_features: u64,
    counters: Arc<VsockCounters>,
    /// The worker (with its connections) while the device is active.
    worker: WorkerSlot<LoopThread<Worker>>,
    /// Restored from a snapshot: the next activation tells the driver its connections are
    /// gone (transport reset).
    reset_on_activate: bool,
}

fn offered_features() -> u64 {
    (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
}

impl Vsock {
    /// Validates the CID and listens on the socket (a stale socket file is replaced).
    pub fn new(config: &VsockConfig) -> Result<Vsock, VsockError> {
        if config.cid < MIN_GUEST_CID || config.cid >= u64::from(u32::MAX) {
            return Err(VsockError::BadCid(config.cid));
        }
        let path = config.socket.clone();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::NotASocket(path));
            }
            let _ = std::fs::remove_file(&path);
        }
        let bind_err = |source| VsockError::Bind {
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        tracing::info!(cid = config.cid, socket = %path.display(), "virtio-vsock device");
        Ok(Vsock {
            cid: config.cid,
            path,
            listener: Arc::new(listener),
            acked_features: 0,
            counters: Arc::new(VsockCounters::default()),
            worker: WorkerSlot::default(),
            reset_on_activate: false,
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn counters(&self) -> Arc<VsockCounters> {
        self.counters.clone()
    }
}

/// Serves the queues and host connections on a new thread.
fn spawn(worker: Worker) -> Result<LoopThread<Worker>, ActivateError> {
    LoopThread::spawn("vsock".into(), worker).map_err(ActivateError::Worker)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & offered_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        crate::device::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, len = data.len(), "vsock config write ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<QueueHandle>,
    ) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        crate::device::check_queue_count(NUM_QUEUES, &queues)?;
        let (mut rx, mut tx, mut evt) = (None, None, None);
        for q in queues {
            match q.index {
                RX_INDEX => rx = Some(q),
                TX_INDEX => tx = Some(q),
                EVT_INDEX => evt = Some(q),
                _ => {}
            }
        }
        let (Some(rx), Some(tx), Some(evt)) = (rx, tx, evt) else {
            return Err(ActivateError::Backend(
                "vsock needs queues 0 (rx), 1 (tx) and 2 (event)".into(),
            ));
        };
        let mux = Muxer::new(self.cid, self.path.clone(), self.listener.clone())
            .map_err(ActivateError::Worker)?;
        let mut worker = Worker::new(mem, interrupt, [rx, tx, evt], mux, self.counters.clone());
        if std::mem::take(&mut self.reset_on_activate) && !worker.send_transport_reset() {
            tracing::warn!("restored vsock: the driver left no event buffer for the reset");
        }
        self.worker.set_running(spawn(worker)?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // connections die with the worker's muxer; the listener stays
        self.worker.reset();
        self.acked_features = 0;
        true
    }

    fn pause_and_save(&mut self) -> Result<DeviceState, StateError> {
        let queues = self
            .worker
            .pause()?
            .map(Worker::progress)
            .unwrap_or_default();
        Ok(DeviceState {
            device_type: VIRTIO_ID_VSOCK,
            acked_features: self.acked_features,
            config: self.cid.to_le_bytes().to_vec(),
            queues,
        })
    }

    fn resume(&mut self) -> Result<(), StateError> {
        self.worker.resume(spawn)
    }

    /// Host connections do not survive a restore: the device starts without any and, once
    /// active, sends the driver a transport reset, so the guest drops its side of them and
    /// re-reads its CID (an overridden CID takes effect there; guest sockets bound to the
    /// old CID are reset with the rest).
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        state.check(VIRTIO_ID_VSOCK, offered_features())?;
        if state.config.len() != 8 {
            return Err(StateError::Mismatch(format!(
                "vsock: saved configuration space is {} bytes, expected 8",
                state.config.len()
            )));
        }
        self.acked_features = state.acked_features;
        self.reset_on_activate = true;
        Ok(())
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.worker.reset();
        let _ = std::fs::remove_file(&self.path);
    }
}
