//! The host's side of the balloon, shared between the device (its worker thread) and the
//! VMM's control loop: the target size the host asks for, what the guest says it gave, its
//! latest statistics and the counters of discarded memory.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::device::{Interrupt, InterruptKind};

use super::pages::PAGE_SIZE;
use super::stats::GuestStats;

/// A snapshot of the balloon's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonStatus {
    /// Pages the host asks the guest to give (config `num_pages`).
    pub target_pages: u32,
    /// Pages the guest says it gave (config `actual`).
    pub actual_pages: u32,
    /// Whether the driver has started the device.
    pub active: bool,
    /// Bytes given through the inflate queue and freed on the host, since start.
    pub inflated_bytes: u64,
    /// Bytes taken back through the deflate queue, since start.
    pub deflated_bytes: u64,
    /// Bytes of free memory the guest reported and the host freed, since start.
    pub reported_bytes: u64,
    /// Guest pages given that lay outside guest memory or could not be freed.
    pub bad_pages: u64,
    /// The guest's latest statistics and their age in milliseconds.
    pub stats: Option<(GuestStats, u64)>,
}

#[derive(Default)]
struct Shared {
    target_pages: u32,
    actual_pages: u32,
    inflated_bytes: u64,
    deflated_bytes: u64,
    reported_bytes: u64,
    bad_pages: u64,
    stats: Option<(GuestStats, Instant)>,
    interrupt: Option<Arc<dyn Interrupt>>,
}

/// A cheap handle; clones share one state.
#[derive(Clone, Default)]
pub struct BalloonControl {
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for BalloonControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonControl")
            .field("status", &self.status())
            .finish()
    }
}

impl BalloonControl {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // a worker that panicked while holding the lock leaves plain numbers behind
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the guest to hold `pages` 4 KiB pages in its balloon; the driver is told through
    /// a configuration-change interrupt (once it has started the device; it reads the target
    /// when it starts).
    pub fn set_target(&self, pages: u32) {
        let interrupt = {
            let mut s = self.lock();
            s.target_pages = pages;
            s.interrupt.clone()
        };
        if let Some(i) = interrupt {
            if let Err(e) = i.trigger(InterruptKind::Config) {
                tracing::warn!(error = %e, "cannot signal the balloon's new target");
            }
        }
    }

    pub fn status(&self) -> BalloonStatus {
        let s = self.lock();
        BalloonStatus {
            target_pages: s.target_pages,
            actual_pages: s.actual_pages,
            active: s.interrupt.is_some(),
            inflated_bytes: s.inflated_bytes,
            deflated_bytes: s.deflated_bytes,
            reported_bytes: s.reported_bytes,
            bad_pages: s.bad_pages,
            stats: s
                .stats
                .map(|(st, at)| (st, at.elapsed().as_millis() as u64)),
        }
    }

    pub(super) fn target_pages(&self) -> u32 {
        self.lock().target_pages
    }

    pub(super) fn actual_pages(&self) -> u32 {
        self.lock().actual_pages
    }

    pub(super) fn set_actual(&self, pages: u32) {
        self.lock().actual_pages = pages;
    }

    /// Target and actual size from a snapshot (the restored driver already knows them).
    pub(super) fn restore(&self, target_pages: u32, actual_pages: u32) {
        let mut s = self.lock();
        s.target_pages = target_pages;
        s.actual_pages = actual_pages;
    }

    pub(super) fn set_interrupt(&self, interrupt: Option<Arc<dyn Interrupt>>) {
        self.lock().interrupt = interrupt;
    }

    pub(super) fn add_inflated(&self, pages: u64, bad: u64) {
        let mut s = self.lock();
        s.inflated_bytes = s.inflated_bytes.saturating_add(pages * PAGE_SIZE);
        s.bad_pages = s.bad_pages.saturating_add(bad);
    }

    pub(super) fn add_deflated(&self, pages: u64, bad: u64) {
        let mut s = self.lock();
        s.deflated_bytes = s.deflated_bytes.saturating_add(pages * PAGE_SIZE);
        s.bad_pages = s.bad_pages.saturating_add(bad);
    }

    pub(super) fn add_reported(&self, bytes: u64, bad_bytes: u64) {
        let mut s = self.lock();
        s.reported_bytes = s.reported_bytes.saturating_add(bytes);
        s.bad_pages = s.bad_pages.saturating_add(bad_bytes / PAGE_SIZE);
    }

    pub(super) fn set_stats(&self, stats: GuestStats) {
        self.lock().stats = Some((stats, Instant::now()));
    }
}
