//! The virtio-blk device: features, configuration space and the worker's life cycle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arch::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::io::DiskFile;
use super::request::{MAX_DATA_DESCRIPTORS, MAX_SEGMENTS};
use super::worker::{QueueServer, RequestGate, Stats, Unlimited};
use super::{ID_BYTES, TYPE_BLOCK};
use crate::device::{
    ActivateError, DeviceState, Interrupt, QueueHandle, QueueProgress, StateError, VirtioDevice,
};
use crate::worker::{Worker, WorkerEvent};
use crate::worker_slot::WorkerSlot;

const QUEUE_SIZE: u16 = 256;
/// Most data segments the driver may put in one request (`seg_max`). With the header and
/// status descriptors a request must fit the ring (no indirect descriptors are offered, and
/// the spec forbids chains longer than the queue anyway): Linux needing more descriptors
/// than the ring holds gets `-ENOSPC` on an empty ring, stops its queue and waits for a
/// completion that never comes. With 1024 announced, a 1 MiB O_DIRECT write whose pages
/// were scattered (255-256 segments) hung the guest's disk for good, now and then.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
const _: () = assert!(SEG_MAX as usize <= MAX_DATA_DESCRIPTORS);
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// Length of `struct virtio_blk_config` up to `write_zeroes_may_unmap` and its padding.
const CONFIG_LEN: usize = 60;
/// Largest discard / write-zeroes range per segment (sectors).
const MAX_DISCARD_SECTORS: u32 = u32::MAX >> 9;

/// What the VMM asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Serial number for GET_ID (at most 20 bytes are used).
    pub serial: String,
    /// Image format; `None` means raw, refusing files that start with a qcow2 header (see
    /// [`disk::check_unstated_format`]).
    pub format: Option<disk::Format>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: disk::DiskError,
    },
    #[error("disk image {0} is smaller than one 512-byte sector")]
    Empty(PathBuf),
}

/// Why [`Block::replace_disk`] kept the current image.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error(
        "the new image has {new} sectors, the disk has {current}: the guest sized the disk \
         when it probed it"
    )]
    Size { current: u64, new: u64 },
    #[error("the new image is {new}, the disk is {current}")]
    Access {
        current: &'static str,
        new: &'static str,
    },
    #[error("cannot flush the current image")]
    Flush(#[source] std::io::Error),
    #[error(transparent)]
    Open(disk::DiskError),
    #[error("the disk's worker ended abnormally; its queue is lost")]
    WorkerLost,
    #[error("cannot restart the disk's worker")]
    Restart(#[source] ActivateError),
}

fn access(read_only: bool) -> &'static str {
    if read_only {
        "read-only"
    } else {
        "writable"
    }
}

pub struct Block {
    id: String,
    disk: Arc<DiskFile>,
    serial: [u8; ID_BYTES],
    config: [u8; CONFIG_LEN],
    features: u64,
    acked: u64,
    worker: WorkerSlot<Worker<Served>>,
    /// Where requests are admitted; a rate limiter replaces the default before activation.
    gate_factory: Box<dyn Fn() -> Box<dyn RequestGate> + Send>,
    stats: Arc<Mutex<Stats>>,
}

/// What the worker owns: the queue server, the interrupt it raises and the queue's kick
/// eventfd (the worker waits on a clone of it).
type Served = (QueueServer, Arc<dyn Interrupt>, EventFd);

fn serial_bytes(s: &str) -> [u8; ID_BYTES] {
    let mut b = [0u8; ID_BYTES];
    let n = s.len().min(ID_BYTES);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    b
}

fn build_config(sectors: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    put(20, &512u32.to_le_bytes()); // blk_size
    put(34, &1u16.to_le_bytes()); // num_queues
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_SEGMENTS.to_le_bytes());
    put(44, &1u32.to_le_bytes()); // discard_sector_alignment
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(52, &MAX_SEGMENTS.to_le_bytes());
    c[56] = 1; // write_zeroes_may_unmap
    c
}

impl Block {
    pub fn new(id: &str, cfg: &BlockConfig) -> Result<Self, BlockError> {
        let open = || {
            let format = match cfg.format {
                Some(f) => f,
                None => disk::check_unstated_format(&cfg.path)?,
            };
            disk::open(&cfg.path, format, cfg.read_only)
        };
        let image = open().map_err(|source| BlockError::Open {
            path: cfg.path.clone(),
            source,
        })?;
        Self::with_disk(id, DiskFile::from_image(image), &cfg.serial, &cfg.path)
    }

    fn with_disk(id: &str, disk: DiskFile, serial: &str, path: &Path) -> Result<Self, BlockError> {
        if disk.sectors() == 0 {
            return Err(BlockError::Empty(path.to_path_buf()));
        }
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        if disk.read_only() {
            features |= VIRTIO_BLK_F_RO;
        } else {
            features |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        Ok(Block {
            id: id.to_string(),
            config: build_config(disk.sectors()),
            disk: Arc::new(disk),
            serial: serial_bytes(serial),
            features,
            acked: 0,
            worker: WorkerSlot::default(),
            gate_factory: Box::new(|| Box::new(Unlimited)),
            stats: Arc::new(Mutex::new(Stats::default())),
        })
    }

    /// Installs the request admission policy (e.g. a rate limiter) used from the next
    /// activation on.
    pub fn set_gate(&mut self, factory: Box<dyn Fn() -> Box<dyn RequestGate> + Send>) {
        self.gate_factory = factory;
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// Continues on the image `open` returns instead of the current one: the worker (if the
    /// driver started the device) stops once the requests it holds are complete, the current
    /// image is flushed, and only then is the new one opened (a qcow2 overlay over the
    /// current image reads its metadata when it opens), checked and put in its place for the
    /// device and the worker, which starts again where it stopped; the old image is closed
    /// once nothing uses it. The new image must have the same capacity and writability (the
    /// driver sized the device when it probed it). On an error the current image stays in
    /// use.
    pub fn replace_disk(
        &mut self,
        open: impl FnOnce() -> Result<Box<dyn disk::DiskImage>, disk::DiskError>,
    ) -> Result<(), ReplaceError> {
        // A worker paused for a snapshot stays paused; a running one stops for the switch.
        let stopped = self
            .worker
            .stop_running()
            .map(|served| served.ok_or(ReplaceError::WorkerLost))
            .transpose()?;
        let result = self.swap_disk(open);
        let mut stopped = stopped;
        for served in stopped.iter_mut().chain(self.worker.paused_mut()) {
            served.0.disk = Arc::clone(&self.disk);
        }
        if let Some(served) = stopped {
            let worker = spawn(&self.id, &self.stats, served).map_err(ReplaceError::Restart)?;
            self.worker.set_running(worker);
        }
        result
    }

    /// [`Self::replace_disk`] while nothing serves the queue.
    fn swap_disk(
        &mut self,
        open: impl FnOnce() -> Result<Box<dyn disk::DiskImage>, disk::DiskError>,
    ) -> Result<(), ReplaceError> {
        self.disk.flush().map_err(ReplaceError::Flush)?;
        let new = DiskFile::from_image(open().map_err(ReplaceError::Open)?);
        if new.sectors() != self.disk.sectors() {
            return Err(ReplaceError::Size {
                current: self.disk.sectors(),
                new: new.sectors(),
            });
        }
        if new.read_only() != self.disk.read_only() {
            return Err(ReplaceError::Access {
                current: access(self.disk.read_only()),
                new: access(new.read_only()),
            });
        }
        self.disk = Arc::new(new);
        Ok(())
    }

    /// Request counters of the last activation.
    pub fn stats(&self) -> Stats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves the queue on a new worker thread that keeps `stats` up to date.
fn spawn(
    id: &str,
    stats: &Arc<Mutex<Stats>>,
    served: Served,
) -> Result<Worker<Served>, ActivateError> {
    let kick = served.2.try_clone().map_err(ActivateError::Worker)?;
    let extra: Vec<_> = served.0.gate.wake_fd().into_iter().collect();
    let stats = Arc::clone(stats);
    Worker::spawn_with(
        format!("{id}-blk"),
        vec![kick],
        extra,
        served,
        move |(server, interrupt, _), ev| {
            if let WorkerEvent::Fd(_) = ev {
                server.gate.on_wake();
            }
            server.serve(interrupt.as_ref());
            *stats.lock().unwrap_or_else(PoisonError::into_inner) = server.stats;
        },
    )
    .map_err(ActivateError::Worker)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` (offset 32) is writable in the spec, and only with
        // VIRTIO_BLK_F_CONFIG_WCE, which is not offered: every write is ignored.
        crate::warn_limited!(offset, len = data.len(), "virtio-blk: ignored config write");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<QueueHandle>,
    ) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        let mut queues = queues;
        crate::device::check_queue_count(1, &queues)?;
        let QueueHandle { index, queue, kick } = queues.remove(0);
        let server = QueueServer {
            mem,
            queue,
            index,
            disk: Arc::clone(&self.disk),
            serial: self.serial,
            gate: (self.gate_factory)(),
            stats: Stats::default(),
            broken: false,
        };
        let worker = spawn(&self.id, &self.stats, (server, interrupt, kick))?;
        self.worker.set_running(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker.reset();
        self.acked = 0;
        true
    }

    fn pause_and_save(&mut self) -> Result<DeviceState, StateError> {
        let paused = self.worker.pause()?;
        // Every completed write reaches the image file: a qcow2 image keeps metadata in this
        // process until a flush, and a VM restored from the snapshot reopens the file.
        self.disk.flush().map_err(StateError::Flush)?;
        let queues = paused
            .iter()
            .map(|(s, _, _)| QueueProgress::of(s.index, &s.queue))
            .collect();
        Ok(DeviceState {
            device_type: TYPE_BLOCK,
            acked_features: self.acked,
            config: self.config.to_vec(),
            queues,
        })
    }

    fn resume(&mut self) -> Result<(), StateError> {
        self.worker
            .resume(|served| spawn(&self.id, &self.stats, served))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        state.check(TYPE_BLOCK, self.features)?;
        // The guest sized its block device at probe time: a disk of another size (or one
        // that became read-only) would be a different device under the same driver.
        if state.config.get(..8) != Some(&self.config[..8]) {
            let saved = state
                .config
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            return Err(StateError::Mismatch(format!(
                "disk {}: the image has {} sectors, the snapshot's disk had {saved}",
                self.id,
                self.disk.sectors()
            )));
        }
        self.acked = state.acked_features;
        Ok(())
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_reads_are_bounded() {
        let path = std::env::temp_dir().join(format!("kapsel-blkdev-{}", std::process::id()));
        std::fs::write(&path, vec![0; 8192]).unwrap();
        let cfg = BlockConfig {
            path: path.clone(),
            read_only: true,
            serial: "x".repeat(40),
            format: None,
        };
        let mut b = Block::new("vda", &cfg).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
        assert_eq!(b.features() & VIRTIO_BLK_F_DISCARD, 0);
        let mut d = [0xffu8; 8];
        b.read_config(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 16);
        let mut d = [0xffu8; 8];
        b.read_config(56, &mut d);
        assert_eq!(d, [1, 0, 0, 0, 0, 0, 0, 0]);
        // seg_max: a request of that many segments plus header and status fits the ring
        let mut seg = [0u8; 4];
        b.read_config(12, &mut seg);
        let seg_max = u32::from_le_bytes(seg);
        assert_eq!(seg_max + 2, u32::from(b.queue_max_sizes()[0]));
        b.read_config(u64::MAX, &mut d);
        assert_eq!(d, [0; 8]);
        b.write_config(0, &[1, 2, 3]);
        b.read_config(0, &mut d[..1]);
        assert_eq!(d[0], 16);
        assert!(b.reset());
    }

    #[test]
    fn restore_takes_features_and_refuses_a_disk_of_another_size() {
        let dir = std::env::temp_dir();
        let small = dir.join(format!("kapsel-blkst-s-{}", std::process::id()));
        let big = dir.join(format!("kapsel-blkst-b-{}", std::process::id()));
        std::fs::write(&small, vec![0; 8192]).unwrap();
        std::fs::write(&big, vec![0; 16384]).unwrap();
        let open = |path: &std::path::Path, read_only| {
            Block::new(
                "vda",
                &BlockConfig {
                    path: path.to_path_buf(),
                    read_only,
                    serial: "vda".into(),
                    format: None,
                },
            )
            .unwrap()
        };
        let mut saved_from = open(&small, false);
        saved_from.ack_features(VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
        let st = saved_from.pause_and_save().unwrap();
        assert!(st.queues.is_empty(), "an inactive device saves no queues");
        saved_from.resume().unwrap();

        let mut same = open(&small, false);
        same.restore_state(&st).unwrap();
        assert_eq!(same.acked, VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
        let e = open(&big, false).restore_state(&st).unwrap_err();
        assert_eq!(
            e.to_string(),
            "disk vda: the image has 32 sectors, the snapshot's disk had 16"
        );
        let mut with_discard = st.clone();
        with_discard.acked_features |= VIRTIO_BLK_F_DISCARD;
        assert!(matches!(
            open(&small, true).restore_state(&with_discard),
            Err(StateError::Features { .. })
        ));
        let mut short = st;
        short.config.truncate(4);
        assert!(matches!(
            open(&small, false).restore_state(&short),
            Err(StateError::Mismatch(_))
        ));
        std::fs::remove_file(small).unwrap();
        std::fs::remove_file(big).unwrap();
    }

    #[test]
    fn missing_or_empty_images_are_errors() {
        let cfg = BlockConfig {
            path: "/nonexistent/disk.img".into(),
            read_only: false,
            serial: String::new(),
            format: Some(disk::Format::Raw),
        };
        assert!(matches!(
            Block::new("vda", &cfg),
            Err(BlockError::Open { .. })
        ));
        let path = std::env::temp_dir().join(format!("kapsel-blkempty-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let cfg = BlockConfig {
            path: path.clone(),
            ..cfg
        };
        assert!(matches!(Block::new("vda", &cfg), Err(BlockError::Empty(_))));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn pausing_for_a_snapshot_writes_qcow2_metadata_to_the_file() {
        use vm_memory::{Bytes, GuestAddress};
        let dir = std::env::temp_dir().join(format!("kapsel-blkq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.qcow2");
        disk::create(
            &path,
            &disk::CreateOptions {
                size: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        let cfg = BlockConfig {
            path: path.clone(),
            read_only: false,
            serial: "q".into(),
            format: Some(disk::Format::Qcow2),
        };
        let mut b = Block::new("vda", &cfg).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0x77; 512], GuestAddress(0x1000)).unwrap();
        b.disk
            .write(&mem, 8, &[(GuestAddress(0x1000), 512)])
            .unwrap();
        b.pause_and_save().unwrap();
        // Another process restoring the snapshot opens the file afresh.
        let other = disk::open(&path, disk::Format::Qcow2, true).unwrap();
        let mut got = [0u8; 512];
        other.read_at(&mut got, 8 * 512).unwrap();
        assert_eq!(got, [0x77; 512]);
        drop(b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
