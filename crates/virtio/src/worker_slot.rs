//! A device's worker across the device's life: none before the driver activates the device,
//! running while it serves the queues, and stopped but kept (with the queues it served)
//! while the VM is paused for a snapshot. Every device model holds one, so activation,
//! driver reset, snapshot pause and resume behave alike on all of them.

use crate::device::{ActivateError, StateError};
use crate::worker::{DeviceLoop, LoopThread, Worker};

/// A running worker that can be stopped, handing back what it served.
pub trait Stoppable {
    /// What the worker served with (its queues), given back when it stops.
    type State;
    /// Stops and joins the thread; `None` if it panicked (its queues are lost).
    fn stop(self) -> Option<Self::State>;
}

impl<S: Send + 'static> Stoppable for Worker<S> {
    type State = S;
    fn stop(self) -> Option<S> {
        Worker::stop(self)
    }
}

impl<W: DeviceLoop> Stoppable for LoopThread<W> {
    type State = W;
    fn stop(self) -> Option<W> {
        LoopThread::stop(self)
    }
}

/// The worker of one device: running, paused for a snapshot, or neither.
pub struct WorkerSlot<R: Stoppable> {
    running: Option<R>,
    paused: Option<R::State>,
}

impl<R: Stoppable> Default for WorkerSlot<R> {
    fn default() -> Self {
        WorkerSlot {
            running: None,
            paused: None,
        }
    }
}

impl<R: Stoppable> WorkerSlot<R> {
    /// Activation: fails while a worker runs.
    pub fn check_idle(&self) -> Result<(), ActivateError> {
        match self.running {
            Some(_) => Err(ActivateError::AlreadyActive),
            None => Ok(()),
        }
    }

    /// Whether a worker serves the queues now.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The worker that now serves the queues.
    pub fn set_running(&mut self, worker: R) {
        self.running = Some(worker);
    }

    /// Driver reset: stops the worker and forgets a paused one with its queues.
    pub fn reset(&mut self) {
        if let Some(w) = self.running.take() {
            w.stop();
        }
        self.paused = None;
    }

    /// Snapshot pause: stops a running worker and keeps what it served. Returns that (also
    /// for a device paused before), or `None` for a device the driver never activated.
    pub fn pause(&mut self) -> Result<Option<&R::State>, StateError> {
        if let Some(w) = self.running.take() {
            self.paused = Some(w.stop().ok_or(StateError::WorkerLost)?);
        }
        Ok(self.paused.as_ref())
    }

    /// Snapshot resume: `start` serves what a paused worker left (no-op if none was paused).
    pub fn resume(
        &mut self,
        start: impl FnOnce(R::State) -> Result<R, ActivateError>,
    ) -> Result<(), StateError> {
        if let Some(state) = self.paused.take() {
            self.running = Some(start(state).map_err(StateError::Resume)?);
        }
        Ok(())
    }

    /// Stops a running worker and returns what it served; a paused worker stays paused.
    /// `Some(None)` if the thread panicked.
    pub fn stop_running(&mut self) -> Option<Option<R::State>> {
        self.running.take().map(Stoppable::stop)
    }

    /// What a worker paused for a snapshot holds.
    pub fn paused_mut(&mut self) -> Option<&mut R::State> {
        self.paused.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that stops with its state, or is lost.
    struct Fake(Option<u32>);
    impl Stoppable for Fake {
        type State = u32;
        fn stop(self) -> Option<u32> {
            self.0
        }
    }

    #[test]
    fn pause_keeps_the_state_and_resume_serves_it_again() {
        let mut slot = WorkerSlot::<Fake>::default();
        assert_eq!(slot.pause().unwrap(), None, "never activated");
        slot.set_running(Fake(Some(7)));
        assert!(matches!(
            slot.check_idle(),
            Err(ActivateError::AlreadyActive)
        ));
        assert_eq!(slot.pause().unwrap(), Some(&7));
        assert_eq!(slot.pause().unwrap(), Some(&7), "paused twice");
        slot.check_idle().unwrap();
        slot.resume(|n| Ok(Fake(Some(n + 1)))).unwrap();
        assert_eq!(slot.pause().unwrap(), Some(&8));
        slot.reset();
        assert_eq!(slot.pause().unwrap(), None);
        slot.resume(|_| unreachable!("nothing paused")).unwrap();
    }

    #[test]
    fn a_lost_worker_fails_the_pause() {
        let mut slot = WorkerSlot::<Fake>::default();
        slot.set_running(Fake(None));
        assert!(matches!(slot.pause(), Err(StateError::WorkerLost)));
        slot.check_idle().unwrap();
    }
}
