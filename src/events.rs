//! Placeholder with the agreed API; replaced by the real bus at merge.

use std::sync::{Arc, Mutex};

use crate::api::{Event, EventKind};
use crate::model::name::InstanceName;

#[derive(Clone, Default)]
pub struct EventBus {
    inner: Arc<Mutex<(u64, Vec<Event>)>>,
}

impl EventBus {
    pub fn new(_capacity: usize, first_seq: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new((first_seq.saturating_sub(1), Vec::new()))),
        }
    }

    pub fn publish(&self, instance: Option<InstanceName>, kind: EventKind) -> u64 {
        let mut g = self.inner.lock().expect("bus");
        g.0 += 1;
        let seq = g.0;
        g.1.push(Event {
            seq,
            at_ms: crate::host::clock::now_ms(),
            instance,
            kind,
        });
        seq
    }

    pub fn last_seq(&self) -> u64 {
        self.inner.lock().expect("bus").0
    }
}
