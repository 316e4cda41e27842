//! Rate limiting for logs a guest can trigger.
//!
//! A guest that hammers a register must not flood the host's log. Each log
//! site owns a [`LogLimiter`]; it lets the 1st, 2nd, 4th, 8th, ... event
//! through, so the log shows that something repeats and how often, at a cost
//! that grows only logarithmically with the guest's effort.

/// Counts events at one log site and says which ones to log.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LogLimiter {
    count: u64,
}

impl LogLimiter {
    /// Counts one event; returns true when this one should be logged.
    pub(crate) fn should_log(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count.is_power_of_two()
    }

    /// How many events were counted so far (logged or not).
    pub(crate) fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_powers_of_two_only() {
        let mut limiter = LogLimiter::default();
        let logged: Vec<u64> = (1..=20).filter(|_| limiter.should_log()).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
        assert_eq!(limiter.count(), 20);
    }
}
