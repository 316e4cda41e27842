//! The balloon device: configuration space, feature negotiation and activation. The queues
//! are served by [`super::queues`] on one worker thread.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use arch::GuestMemoryMmap;
use vmm_sys_util::timerfd::TimerFd;

use vmm_sys_util::eventfd::EventFd;

use crate::device::{ActivateError, DeviceState, Interrupt, QueueHandle, StateError, VirtioDevice};
use crate::worker::{Worker, WorkerEvent};
use crate::worker_slot::WorkerSlot;

use super::control::BalloonControl;
use super::queues::{QueueRole, Queues};

pub const TYPE_BALLOON: u32 = 5;
const QUEUE_SIZE: u16 = 256;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const F_PAGE_REPORTING: u64 = 1 << 5;
/// `num_pages`, `actual`, `free_page_hint_cmd_id`, `poison_val` (the last two unused).
const CONFIG_SIZE: usize = 16;
const ACTUAL_OFFSET: usize = 4;

/// What the balloon offers the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Let the guest take pages back from the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Ask the guest for memory statistics this often (`None`: no statistics queue).
    pub stats_period: Option<Duration>,
    /// Let the guest report free pages, which the host then frees.
    pub free_page_reporting: bool,
}

pub struct Balloon {
    id: String,
    config: BalloonConfig,
    queue_sizes: Vec<u16>,
    acked: u64,
    control: BalloonControl,
    worker: WorkerSlot<Worker<Running>>,
    /// The statistics buffer a restored device holds (from the snapshot).
    restored_stats_head: Option<u16>,
}

/// What the worker owns.
struct Running {
    queues: Queues,
    kicks: Vec<EventFd>,
    timer: Option<TimerFd>,
}

impl Balloon {
    /// A balloon named `id`; `control` is the host's handle on it.
    pub fn new(id: &str, config: BalloonConfig, control: BalloonControl) -> Self {
        let queues = 2
            + usize::from(config.stats_period.is_some())
            + usize::from(config.free_page_reporting);
        Balloon {
            id: id.to_string(),
            config,
            queue_sizes: vec![QUEUE_SIZE; queues],
            acked: 0,
            control,
            worker: WorkerSlot::default(),
            restored_stats_head: None,
        }
    }
}

/// Serves the queues of `r` on a new worker thread.
fn spawn(id: &str, r: Running) -> Result<Worker<Running>, ActivateError> {
    let kicks = r
        .kicks
        .iter()
        .map(EventFd::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ActivateError::Worker)?;
    let extra = r.timer.iter().map(AsRawFd::as_raw_fd).collect();
    Worker::spawn_with(format!("{id}-balloon"), kicks, extra, r, |r, ev| match ev {
        WorkerEvent::Kick(i) => r.queues.kick(i),
        WorkerEvent::Fd(_) => {
            if let Some(t) = r.timer.as_mut() {
                let _ = t.wait();
            }
            r.queues.request_stats();
        }
    })
    .map_err(ActivateError::Worker)
}

impl Balloon {
    /// The role of each queue index under the negotiated features: queues exist only for
    /// negotiated features and are numbered without gaps (inflate, deflate, stats,
    /// reporting).
    fn roles(&self) -> Vec<QueueRole> {
        let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
        if self.acked & F_STATS_VQ != 0 {
            roles.push(QueueRole::Stats);
        }
        if self.acked & F_PAGE_REPORTING != 0 {
            roles.push(QueueRole::Reporting);
        }
        roles
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[..4].copy_from_slice(&self.control.target_pages().to_le_bytes());
        c[4..8].copy_from_slice(&self.control.actual_pages().to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1;
        if self.config.stats_period.is_some() {
            f |= F_STATS_VQ;
        }
        if self.config.deflate_on_oom {
            f |= F_DEFLATE_ON_OOM;
        }
        if self.config.free_page_reporting {
            f |= F_PAGE_REPORTING;
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// Only `actual` (bytes 4..8) is writable; a partial write changes the bytes it covers.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut c = self.config_bytes();
        let mut touched = false;
        for (i, b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                break;
            };
            if (ACTUAL_OFFSET as u64..ACTUAL_OFFSET as u64 + 4).contains(&at) {
                c[at as usize] = *b;
                touched = true;
            }
        }
        if touched {
            let actual = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            self.control.set_actual(actual);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<QueueHandle>,
    ) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        let roles = self.roles();
        let mut kicks = Vec::with_capacity(queues.len());
        let mut served = Vec::with_capacity(queues.len());
        for q in queues {
            let Some(role) = roles.get(usize::from(q.index)) else {
                return Err(ActivateError::QueueCount {
                    expected: roles.len(),
                    got: usize::from(q.index) + 1,
                });
            };
            kicks.push(q.kick);
            served.push((*role, q.index, q.queue));
        }
        // every queue of the negotiated features must be there (indices are unique)
        if served.len() != roles.len() {
            return Err(ActivateError::QueueCount {
                expected: roles.len(),
                got: served.len(),
            });
        }
        let period = self
            .config
            .stats_period
            .filter(|_| served.iter().any(|(r, _, _)| *r == QueueRole::Stats));
        let timer = match period {
            Some(p) => {
                let mut t = TimerFd::new().map_err(|e| ActivateError::Worker(e.into()))?;
                t.reset(p, Some(p))
                    .map_err(|e| ActivateError::Worker(e.into()))?;
                Some(t)
            }
            None => None,
        };
        let mut queues = Queues::new(mem, Arc::clone(&interrupt), served, self.control.clone());
        queues.hold_stats_head(self.restored_stats_head.take());
        let worker = spawn(
            &self.id,
            Running {
                queues,
                kicks,
                timer,
            },
        )?;
        self.worker.set_running(worker);
        self.control.set_interrupt(Some(interrupt));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker.reset();
        self.restored_stats_head = None;
        self.control.set_interrupt(None);
        self.control.set_actual(0);
        self.acked = 0;
        true
    }

    /// Saves the negotiated features, the configuration space (target and actual) and,
    /// after it, the statistics buffer the device holds (2 bytes, if any): the driver does not
    /// send that buffer again.
    fn pause_and_save(&mut self) -> Result<DeviceState, StateError> {
        let mut config = self.config_bytes().to_vec();
        let mut queues = Vec::new();
        if let Some(r) = self.worker.pause()? {
            queues = r.queues.progress();
            if let Some(head) = r.queues.stats_head() {
                config.extend_from_slice(&head.to_le_bytes());
            }
        }
        Ok(DeviceState {
            device_type: TYPE_BALLOON,
            acked_features: self.acked,
            config,
            queues,
        })
    }

    fn resume(&mut self) -> Result<(), StateError> {
        self.worker.resume(|r| spawn(&self.id, r))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        state.check(TYPE_BALLOON, self.features())?;
        let c = &state.config;
        let held = match c.len() {
            CONFIG_SIZE => None,
            n if n == CONFIG_SIZE + 2 => {
                Some(u16::from_le_bytes([c[CONFIG_SIZE], c[CONFIG_SIZE + 1]]))
            }
            n => {
                return Err(StateError::Mismatch(format!(
                    "balloon state holds {n} configuration bytes, expected {CONFIG_SIZE} or {}",
                    CONFIG_SIZE + 2
                )))
            }
        };
        self.acked = state.acked_features;
        self.control.restore(
            u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        );
        self.restored_stats_head = held;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Recorder;

    fn balloon(config: BalloonConfig) -> (Balloon, BalloonControl) {
        let control = BalloonControl::default();
        (Balloon::new("b", config, control.clone()), control)
    }

    #[test]
    fn features_and_queues_follow_the_options() {
        let (b, _) = balloon(BalloonConfig::default());
        assert_eq!(b.features(), VIRTIO_F_VERSION_1);
        assert_eq!(b.queue_max_sizes().len(), 2);
        let (mut b, _) = balloon(BalloonConfig {
            deflate_on_oom: true,
            stats_period: Some(Duration::from_secs(1)),
            free_page_reporting: true,
        });
        assert_eq!(b.queue_max_sizes().len(), 4);
        // reporting without stats: the reporting queue is number 2
        b.ack_features(VIRTIO_F_VERSION_1 | F_PAGE_REPORTING | 1 << 40);
        assert_eq!(
            b.roles(),
            [QueueRole::Inflate, QueueRole::Deflate, QueueRole::Reporting]
        );
    }

    #[test]
    fn config_shows_the_target_and_takes_only_actual() {
        let (mut b, control) = balloon(BalloonConfig::default());
        control.set_target(0x1234);
        let mut d = [0u8; 8];
        b.read_config(0, &mut d);
        assert_eq!(d, [0x34, 0x12, 0, 0, 0, 0, 0, 0]);
        b.write_config(0, &[9, 9, 9, 9, 0x10, 0, 0, 0]);
        assert_eq!(control.status().target_pages, 0x1234);
        assert_eq!(control.status().actual_pages, 0x10);
        // a byte-wide write to the top byte of actual, and writes a guest made huge
        b.write_config(7, &[1]);
        assert_eq!(control.status().actual_pages, 0x0100_0010);
        b.write_config(u64::MAX, &[1, 2, 3]);
        b.write_config(16, &[1; 64]);
        let mut big = [7u8; 64];
        b.read_config(u64::MAX - 2, &mut big);
        assert_eq!(big, [0u8; 64]);
        assert_eq!(control.status().actual_pages, 0x0100_0010);
    }

    #[test]
    fn a_snapshot_keeps_the_sizes_and_the_held_stats_buffer() {
        use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{Bytes, GuestAddress};
        use vmm_sys_util::eventfd::EFD_NONBLOCK;

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vqs: Vec<MockSplitQueue<GuestMemoryMmap>> = (0..3)
            .map(|i| MockSplitQueue::create(&mem, GuestAddress(i * 0x4000), 16))
            .collect();
        // the driver's first statistics buffer: total memory
        let mut entry = 5u16.to_le_bytes().to_vec();
        entry.extend((64u64 << 20).to_le_bytes());
        mem.write_slice(&entry, GuestAddress(0x20000)).unwrap();
        let desc = RawDescriptor::from(SplitDescriptor::new(0x20000, 10, 0, 0));
        vqs[2].add_desc_chains(&[desc], 0).unwrap();
        let (mut b, control) = balloon(BalloonConfig {
            stats_period: Some(Duration::from_secs(3600)),
            ..BalloonConfig::default()
        });
        b.ack_features(VIRTIO_F_VERSION_1 | F_STATS_VQ);
        let handles = vqs
            .iter()
            .enumerate()
            .map(|(i, vq)| QueueHandle {
                index: i as u16,
                queue: vq.create_queue().unwrap(),
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            })
            .collect();
        b.activate(mem.clone(), Arc::new(Recorder::default()), handles)
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while control.status().stats.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        control.set_target(100);
        b.write_config(4, &60u32.to_le_bytes());
        let st = b.pause_and_save().unwrap();
        assert_eq!(st.config.len(), CONFIG_SIZE + 2, "held stats buffer saved");
        assert_eq!(st.queues.len(), 3);
        assert_eq!((st.queues[2].next_avail, st.queues[2].next_used), (1, 0));
        b.resume().unwrap();

        let (mut fresh, fresh_control) = balloon(BalloonConfig {
            stats_period: Some(Duration::from_secs(3600)),
            ..BalloonConfig::default()
        });
        fresh.restore_state(&st).unwrap();
        let s = fresh_control.status();
        assert_eq!((s.target_pages, s.actual_pages), (100, 60));
        assert_eq!(fresh.restored_stats_head, Some(0));
        // a state with a foreign feature or a cut configuration is refused
        let (mut plain, _) = balloon(BalloonConfig::default());
        assert!(plain.restore_state(&st).is_err());
        let mut cut = st;
        cut.config.truncate(3);
        assert!(fresh.restore_state(&cut).is_err());
        assert!(b.reset());
    }
}
