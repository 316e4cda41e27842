//! Rate limiting for logs a guest can trigger: a guest hammering a bad request must not flood
//! the host's log. A [`LogLimiter`] (usable as a `static`) lets the 1st, 2nd, 4th, 8th, …
//! event through.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct LogLimiter {
    count: AtomicU64,
}

impl LogLimiter {
    pub const fn new() -> Self {
        LogLimiter {
            count: AtomicU64::new(0),
        }
    }

    /// Counts one event; true when this one should be logged.
    pub fn should_log(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        n.is_power_of_two()
    }

    /// Events counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Logs a warning through a per-call-site [`LogLimiter`].
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)*) => {{
        static LIMITER: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new();
        if LIMITER.should_log() {
            tracing::warn!(occurrences = LIMITER.count(), $($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_powers_of_two_only() {
        let l = LogLimiter::new();
        let logged: Vec<u64> = (1..=20).filter(|_| l.should_log()).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
        assert_eq!(l.count(), 20);
    }
}
