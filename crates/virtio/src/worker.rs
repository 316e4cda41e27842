//! The thread a device serves its queues on: it waits (epoll) for queue kicks and for any
//! extra file descriptors the device watches (timers, sockets), and calls the device's
//! handler for each, until it is stopped.
//!
//! A worker may own state (its queues, say): [`Worker::spawn_with`] hands it to the handler
//! on every event and gives it back from [`Worker::stop`], which is how a device pauses for a
//! snapshot. The handler returns before the worker looks for the next event, so once the
//! thread has stopped, nothing it started is still in flight.
//!
//! A device whose worker waits on its own epoll set (sockets that come and go, edge-triggered
//! descriptors) runs its own loop on a [`LoopThread`] instead, which stops and hands it back
//! the same way.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What woke the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEvent {
    /// Kick eventfd `i` (already drained by the worker).
    Kick(usize),
    /// Extra fd `i` is readable; the handler must consume what made it so.
    Fd(usize),
}

/// A running worker thread owning a state `S`; dropping it (or [`Worker::stop`]) stops and
/// joins it.
#[derive(Debug)]
pub struct Worker<S = ()> {
    stop: EventFd,
    handle: Option<JoinHandle<S>>,
}

const STOP_TOKEN: u64 = u64::MAX;
const FD_TOKEN_BASE: u64 = 1 << 32;

impl Worker<()> {
    /// Spawns thread `name` watching `kicks` and `extra`, calling `handler` for each event.
    /// The handler runs once with `Kick(i)` for every kick at start, so buffers the driver
    /// queued before activation are served.
    pub fn spawn<F>(
        name: String,
        kicks: Vec<EventFd>,
        extra: Vec<RawFd>,
        mut handler: F,
    ) -> std::io::Result<Self>
    where
        F: FnMut(WorkerEvent) + Send + 'static,
    {
        Self::spawn_with(name, kicks, extra, (), move |_, ev| handler(ev))
    }
}

impl<S: Send + 'static> Worker<S> {
    /// Like [`Worker::spawn`], with `state` handed to every call of `handler` and returned by
    /// [`Worker::stop`].
    pub fn spawn_with<F>(
        name: String,
        kicks: Vec<EventFd>,
        extra: Vec<RawFd>,
        state: S,
        mut handler: F,
    ) -> std::io::Result<Self>
    where
        F: FnMut(&mut S, WorkerEvent) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        for (i, k) in kicks.iter().enumerate() {
            add(k.as_raw_fd(), i as u64)?;
        }
        for (i, fd) in extra.iter().enumerate() {
            add(*fd, FD_TOKEN_BASE + i as u64)?;
        }
        let stop_clone = stop.try_clone()?;
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let _stop = stop_clone;
            let mut state = state;
            for i in 0..kicks.len() {
                handler(&mut state, WorkerEvent::Kick(i));
            }
            let mut events = vec![EpollEvent::default(); kicks.len() + extra.len() + 1];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "device worker epoll failed");
                        return state;
                    }
                };
                for ev in &events[..n] {
                    match ev.data() {
                        STOP_TOKEN => return state,
                        t if t >= FD_TOKEN_BASE => {
                            handler(&mut state, WorkerEvent::Fd((t - FD_TOKEN_BASE) as usize))
                        }
                        t => {
                            if let Some(k) = kicks.get(t as usize) {
                                let _ = k.read();
                            }
                            handler(&mut state, WorkerEvent::Kick(t as usize));
                        }
                    }
                }
            }
        })?;
        Ok(Worker {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread, waits for it and returns its state (`None` if the thread panicked).
    pub fn stop(mut self) -> Option<S> {
        self.shutdown()
    }
}

impl<S> Worker<S> {
    fn shutdown(&mut self) -> Option<S> {
        let _ = self.stop.write(1);
        self.handle.take().and_then(|h| h.join().ok())
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A worker that serves its device in a loop of its own until `stop` is readable, and can run
/// again afterwards.
pub trait DeviceLoop: Send + 'static {
    fn run(&mut self, stop: &EventFd) -> std::io::Result<()>;
}

/// A thread running a [`DeviceLoop`]; dropping it (or [`LoopThread::stop`]) stops and joins
/// it.
pub struct LoopThread<W> {
    name: String,
    stop: EventFd,
    handle: Option<JoinHandle<W>>,
}

impl<W: DeviceLoop> LoopThread<W> {
    /// Spawns thread `name` running `worker`; a loop that fails is logged and ends the thread
    /// (the worker is still handed back by [`LoopThread::stop`]).
    pub fn spawn(name: String, mut worker: W) -> std::io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_clone = stop.try_clone()?;
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Err(e) = worker.run(&stop_clone) {
                    tracing::error!(worker = %thread_name, error = %e, "device worker stopped");
                }
                worker
            })?;
        Ok(LoopThread {
            name,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread, waits for it and returns its worker (`None` if the thread panicked).
    pub fn stop(mut self) -> Option<W> {
        self.shutdown()
    }
}

impl<W> LoopThread<W> {
    fn shutdown(&mut self) -> Option<W> {
        let handle = self.handle.take()?;
        let _ = self.stop.write(1);
        match handle.join() {
            Ok(worker) => Some(worker),
            Err(_) => {
                tracing::error!(worker = %self.name, "device worker panicked");
                None
            }
        }
    }
}

impl<W> Drop for LoopThread<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn kicks_reach_the_handler_and_stop_joins() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        let w = Worker::spawn(
            "t".into(),
            vec![kick.try_clone().unwrap()],
            vec![],
            move |e| {
                let _ = tx.send(e);
            },
        )
        .unwrap();
        let t = std::time::Duration::from_secs(5);
        assert_eq!(rx.recv_timeout(t), Ok(WorkerEvent::Kick(0)));
        kick.write(1).unwrap();
        assert_eq!(rx.recv_timeout(t), Ok(WorkerEvent::Kick(0)));
        w.stop();
    }

    #[test]
    fn stop_returns_the_state_the_handler_left() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        let w = Worker::spawn_with(
            "t".into(),
            vec![kick.try_clone().unwrap()],
            vec![],
            0u32,
            move |n, _| {
                *n += 1;
                let _ = tx.send(*n);
            },
        )
        .unwrap();
        let t = std::time::Duration::from_secs(5);
        assert_eq!(rx.recv_timeout(t), Ok(1));
        kick.write(1).unwrap();
        assert_eq!(rx.recv_timeout(t), Ok(2));
        assert_eq!(w.stop(), Some(2));
    }

    struct Counting(u32);
    impl DeviceLoop for Counting {
        fn run(&mut self, stop: &EventFd) -> std::io::Result<()> {
            self.0 += 1;
            let epoll = Epoll::new()?;
            epoll.ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )?;
            let mut events = [EpollEvent::default()];
            while epoll.wait(-1, &mut events)? == 0 {}
            Ok(())
        }
    }

    #[test]
    fn a_loop_thread_hands_its_worker_back_and_runs_it_again() {
        let t = LoopThread::spawn("t".into(), Counting(0)).unwrap();
        let w = t.stop().unwrap();
        assert_eq!(w.0, 1);
        let t = LoopThread::spawn("t".into(), w).unwrap();
        assert_eq!(t.stop().unwrap().0, 2);
    }
}
