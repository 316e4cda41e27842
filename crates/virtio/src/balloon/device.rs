//! The balloon device: configuration space, feature negotiation and activation. The queues
//! are served by [`super::queues`] on one worker thread.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use arch::GuestMemoryMmap;
use vmm_sys_util::timerfd::TimerFd;

use crate::device::{ActivateError, Interrupt, QueueHandle, VirtioDevice};
use crate::worker::{Worker, WorkerEvent};

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
    worker: Option<Worker>,
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
            worker: None,
        }
    }

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
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
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
        for needed in [QueueRole::Inflate, QueueRole::Deflate] {
            if !served.iter().any(|(r, _, _)| *r == needed) {
                return Err(ActivateError::Backend(format!(
                    "the driver did not enable the {needed:?} queue"
                )));
            }
        }
        let period = self
            .config
            .stats_period
            .filter(|_| served.iter().any(|(r, _, _)| *r == QueueRole::Stats));
        let mut timer = None;
        let mut extra = Vec::new();
        if let Some(p) = period {
            let mut t = TimerFd::new().map_err(|e| ActivateError::Worker(e.into()))?;
            t.reset(p, Some(p))
                .map_err(|e| ActivateError::Worker(e.into()))?;
            extra.push(t.as_raw_fd());
            timer = Some(t);
        }
        let mut state = Queues::new(mem, Arc::clone(&interrupt), served, self.control.clone());
        let worker = Worker::spawn(
            format!("{}-balloon", self.id),
            kicks,
            extra,
            move |ev| match ev {
                WorkerEvent::Kick(i) => state.kick(i),
                WorkerEvent::Fd(_) => {
                    if let Some(t) = timer.as_mut() {
                        let _ = t.wait();
                    }
                    state.request_stats();
                }
            },
        )
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        self.control.set_interrupt(Some(interrupt));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        self.control.set_interrupt(None);
        self.control.set_actual(0);
        self.acked = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
