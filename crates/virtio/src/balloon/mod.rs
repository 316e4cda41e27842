//! virtio-balloon (memory balloon, type 5): the host asks the guest to give back memory by
//! setting a target size; the guest hands pages over on the inflate queue (the host frees
//! them) and takes them back on the deflate queue. Options: periodic memory statistics
//! (`VIRTIO_BALLOON_F_STATS_VQ`), deflate on guest OOM (`VIRTIO_BALLOON_F_DEFLATE_ON_OOM`) and
//! free page reporting (`VIRTIO_BALLOON_F_PAGE_REPORTING`: the guest reports free ranges,
//! the host frees them).
//!
//! [`BalloonControl`] is the host's handle: set the target, read the guest's statistics and
//! the counters.

mod control;
mod device;
pub mod pages;
pub mod queues;
pub mod stats;

pub use control::{BalloonControl, BalloonStatus};
pub use device::{Balloon, BalloonConfig, TYPE_BALLOON};
pub use queues::{QueueRole, Queues};
pub use stats::GuestStats;
