//! The virtio-vsock device model.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use arch::GuestMemoryMmap;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::worker::{VsockCounters, Worker, EVT_INDEX, RX_INDEX, TX_INDEX};
use super::{VsockConfig, MIN_GUEST_CID, NUM_QUEUES, QUEUE_SIZE, VIRTIO_ID_VSOCK};
use crate::{ActivateError, Interrupt, QueueHandle, VirtioDevice};

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

struct Running {
    stop: EventFd,
    thread: JoinHandle<()>,
}

/// One virtio-vsock device with its host-side UNIX socket.
pub struct Vsock {
    cid: u64,
    path: PathBuf,
    listener: Arc<UnixListener>,
    acked_features: u64,
    counters: Arc<VsockCounters>,
    running: Option<Running>,
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
            running: None,
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn counters(&self) -> Arc<VsockCounters> {
        self.counters.clone()
    }

    fn stop_worker(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.write(1);
            if r.thread.join().is_err() {
                tracing::error!("vsock worker panicked");
            }
        }
    }
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
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
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
        let worker = Worker::new(mem, interrupt, [rx, tx, evt], mux, self.counters.clone());
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let stop_worker = stop.try_clone().map_err(ActivateError::Worker)?;
        let thread = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || {
                if let Err(e) = worker.run(&stop_worker) {
                    tracing::error!(error = %e, "vsock worker stopped");
                }
            })
            .map_err(ActivateError::Worker)?;
        self.running = Some(Running { stop, thread });
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // connections die with the worker's muxer; the listener stays
        self.stop_worker();
        self.acked_features = 0;
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
        let _ = std::fs::remove_file(&self.path);
    }
}
