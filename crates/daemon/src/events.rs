//! Lifecycle events: stored in SQLite and fanned out to `GET /v1/events?follow=true` streams.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use api::daemon::Event;

/// Live subscribers; a subscriber whose receiver is gone is dropped on the next publish.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Sender<Event>>>,
}

impl EventBus {
    /// A receiver for every event published from now on.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = channel();
        self.lock().push(tx);
        rx
    }

    /// Sends `event` to every live subscriber.
    pub fn publish(&self, event: &Event) {
        self.lock().retain(|tx| tx.send(event.clone()).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sender<Event>>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64) -> Event {
        Event {
            id,
            time_ms: 0,
            kind: "k".into(),
            instance: None,
            detail: String::new(),
        }
    }

    #[test]
    fn subscribers_get_events_and_dead_ones_are_dropped() {
        let bus = EventBus::default();
        let a = bus.subscribe();
        let b = bus.subscribe();
        drop(b);
        bus.publish(&event(1));
        assert_eq!(a.recv().unwrap().id, 1);
        assert_eq!(bus.lock().len(), 1);
    }
}
