//! The event bus: a bounded ring of [`Event`]s with sequence numbers that keep growing across
//! kvmd restarts, and subscriptions that read it at their own pace.
//!
//! Publishing is O(1): the event goes into the ring (dropping the oldest when full) and
//! subscribers are woken; nobody waits for a subscriber. A subscriber that asks for history
//! older than the ring keeps, or falls behind while slow, gets a [`StreamItem::Gap`] naming
//! the sequence numbers it lost, never a silent hole.
//!
//! Sequence numbers survive restarts through a small file in the run dir holding a reserved
//! upper bound: before the bus hands out a number above the bound it writes a new bound
//! ([`RESERVE_BLOCK`] further), so the file is written at most once per block of events; a
//! clean shutdown writes the exact last number ([`EventBus::checkpoint`]). A restarted kvmd
//! starts above whatever the file says ([`first_seq_from`]).
//!
//! Invariant: publishing never blocks on subscribers and never loses an event silently; a
//! sequence number is never handed out twice, even across restarts (unless the run dir is
//! wiped, in which case numbering restarts at 1). No JSON here.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tracing::warn;

use crate::api::{Event, EventKind, StreamItem};
use crate::host::clock::now_ms;
use crate::model::name::InstanceName;

/// How many sequence numbers one write of the seq file reserves.
pub const RESERVE_BLOCK: u64 = 10_000;

/// Errors of the event bus (only its seq file can fail).
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("Cannot write the event sequence file {path}")]
    SeqFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The events kvmd publishes; cheap to clone (all clones share one ring).
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<Ring>,
    /// The last published sequence number; receivers wake when it changes.
    published: watch::Sender<u64>,
}

struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    /// The sequence number the next event gets.
    next_seq: u64,
    /// Numbers up to this one may be handed out without writing the seq file.
    reserved: u64,
    seq_file: Option<PathBuf>,
}

/// The last published sequence number; never the events themselves (there may be a million).
impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("published", &*self.inner.published.borrow())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// The oldest sequence number still kept (`next_seq` when the ring is empty).
    fn oldest(&self) -> u64 {
        self.events.front().map_or(self.next_seq, |e| e.seq)
    }
}

/// The first sequence number a kvmd should use, given the seq file left by earlier ones
/// (see [`crate::store::seq_file::first_after`]).
pub fn first_seq_from(path: &Path) -> u64 {
    crate::store::seq_file::first_after(path)
}

fn write_seq_file(path: &Path, value: u64) -> std::io::Result<()> {
    crate::store::seq_file::write(path, value)
}

impl EventBus {
    /// A bus keeping the last `capacity` events (at least 1), numbering from `first_seq`
    /// (at least 1). Without [`EventBus::with_seq_file`] numbers are not persisted.
    pub fn new(capacity: usize, first_seq: u64) -> Self {
        let capacity = capacity.max(1);
        let first_seq = first_seq.max(1);
        Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring {
                    events: VecDeque::with_capacity(capacity),
                    capacity,
                    next_seq: first_seq,
                    reserved: u64::MAX,
                    seq_file: None,
                }),
                published: watch::Sender::new(first_seq - 1),
            }),
        }
    }

    /// Persist reservations to `path` (usually the one [`first_seq_from`] read). The first
    /// block is reserved now, so a kvmd that cannot write the file refuses to start rather
    /// than reuse numbers later.
    pub fn with_seq_file(self, path: &Path) -> Result<Self, EventsError> {
        {
            let mut ring = self.lock();
            let reserved = ring.next_seq.saturating_add(RESERVE_BLOCK - 1);
            write_seq_file(path, reserved).map_err(|source| EventsError::SeqFile {
                path: path.into(),
                source,
            })?;
            ring.reserved = reserved;
            ring.seq_file = Some(path.into());
        }
        Ok(self)
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves the ring consistent (every mutation is a
        // single push/pop), so a poisoned lock is still usable.
        self.inner.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish one event; returns its sequence number. Never waits for subscribers.
    pub fn publish(&self, instance: Option<InstanceName>, kind: EventKind) -> u64 {
        crate::metrics::stats().event_published();
        let seq = {
            let mut ring = self.lock();
            let seq = ring.next_seq;
            ring.next_seq += 1;
            if seq > ring.reserved {
                let reserved = seq.saturating_add(RESERVE_BLOCK - 1);
                if let Some(path) = &ring.seq_file {
                    if let Err(e) = write_seq_file(path, reserved) {
                        warn!(path = %path.display(), error = %e, "cannot reserve event sequence numbers; a restarted kvmd may reuse some");
                    }
                }
                ring.reserved = reserved;
            }
            if ring.events.len() == ring.capacity {
                ring.events.pop_front();
            }
            ring.events.push_back(Event {
                seq,
                at_ms: now_ms(),
                instance,
                kind,
            });
            seq
        };
        self.inner.published.send_replace(seq);
        seq
    }

    /// The newest sequence number handed out (one below the first when none was).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Write the exact last sequence number to the seq file, so the next kvmd continues right
    /// after it (no numbers skipped). Called at a clean shutdown; publishing afterwards is
    /// still safe (it reserves again).
    pub fn checkpoint(&self) -> Result<(), EventsError> {
        let mut ring = self.lock();
        let Some(path) = ring.seq_file.clone() else {
            return Ok(());
        };
        let last = ring.next_seq - 1;
        write_seq_file(&path, last).map_err(|source| EventsError::SeqFile { path, source })?;
        ring.reserved = last;
        Ok(())
    }

    /// Read events: `since = None` only those published from now on; `Some(n)` those after
    /// `n` that are still kept (a gap for the rest), then new ones. A `since` above the last
    /// sequence number counts as "from now on".
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let ring = self.lock();
        let last = ring.next_seq - 1;
        let next = match since {
            Some(n) if n < last => n + 1,
            _ => ring.next_seq,
        };
        let mut published = self.inner.published.subscribe();
        published.borrow_and_update();
        drop(ring);
        Subscription {
            bus: self.clone(),
            next,
            subscribed_at: last,
            published,
        }
    }
}

/// One reader of the bus. It holds no events itself: it remembers the next sequence number it
/// wants and copies events out of the ring.
#[derive(Debug)]
pub struct Subscription {
    bus: EventBus,
    next: u64,
    subscribed_at: u64,
    published: watch::Receiver<u64>,
}

impl Subscription {
    /// The newest sequence number when the subscription was made (where a replay ends).
    pub fn subscribed_at(&self) -> u64 {
        self.subscribed_at
    }

    /// The next item, if one is ready: an event, or a gap for events no longer kept.
    pub fn try_next(&mut self) -> Option<StreamItem> {
        let ring = self.bus.lock();
        let oldest = ring.oldest();
        if self.next < oldest {
            let gap = StreamItem::Gap {
                from: self.next,
                to: oldest - 1,
            };
            crate::metrics::stats().events_dropped(oldest - self.next);
            self.next = oldest;
            return Some(gap);
        }
        let index = usize::try_from(self.next - oldest).ok()?;
        let event = ring.events.get(index)?.clone();
        drop(ring);
        self.next = event.seq + 1;
        Some(StreamItem::Event(event))
    }

    /// The next item, waiting for a publish if none is ready.
    pub async fn next(&mut self) -> StreamItem {
        loop {
            // Mark the current publish as seen before looking, so a publish between the look
            // and the wait still wakes us.
            self.published.borrow_and_update();
            if let Some(item) = self.try_next() {
                return item;
            }
            if self.published.changed().await.is_err() {
                // The sender lives in the bus, which this subscription keeps alive.
                unreachable!("the event bus outlives its subscriptions");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DaemonEvent;
    use std::time::Duration;

    fn stopping() -> EventKind {
        EventKind::Daemon(DaemonEvent::Stopping)
    }

    fn seqs(sub: &mut Subscription) -> Vec<String> {
        std::iter::from_fn(|| sub.try_next())
            .map(|item| match item {
                StreamItem::Event(e) => e.seq.to_string(),
                StreamItem::Gap { from, to } => format!("gap {from}-{to}"),
                StreamItem::End { last_seq } => format!("end {last_seq}"),
            })
            .collect()
    }

    #[test]
    fn the_bus_and_its_subscriptions_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<EventBus>();
        send::<Subscription>();
    }

    #[test]
    fn events_come_in_publish_order_with_growing_sequence_numbers() {
        let bus = EventBus::new(8, 1);
        let mut sub = bus.subscribe(None);
        let name = InstanceName::parse("web1").unwrap();
        assert_eq!(bus.publish(Some(name.clone()), stopping()), 1);
        assert_eq!(bus.publish(None, stopping()), 2);
        assert_eq!(bus.last_seq(), 2);
        match sub.try_next() {
            Some(StreamItem::Event(e)) => {
                assert_eq!((e.seq, e.instance), (1, Some(name)));
                assert!(e.at_ms > 0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seqs(&mut sub), ["2"]);
        assert_eq!(sub.try_next(), None, "nothing more until the next publish");
    }

    #[test]
    fn a_subscriber_from_now_on_sees_no_history() {
        let bus = EventBus::new(8, 1);
        bus.publish(None, stopping());
        let mut sub = bus.subscribe(None);
        assert_eq!(sub.subscribed_at(), 1);
        assert_eq!(sub.try_next(), None);
        bus.publish(None, stopping());
        assert_eq!(seqs(&mut sub), ["2"]);
    }

    #[test]
    fn since_replays_the_kept_events_after_it() {
        let bus = EventBus::new(8, 1);
        for _ in 0..5 {
            bus.publish(None, stopping());
        }
        assert_eq!(seqs(&mut bus.subscribe(Some(3))), ["4", "5"]);
        assert_eq!(seqs(&mut bus.subscribe(Some(0))), ["1", "2", "3", "4", "5"]);
        assert!(seqs(&mut bus.subscribe(Some(5))).is_empty());
        let mut future = bus.subscribe(Some(99));
        assert!(
            seqs(&mut future).is_empty(),
            "a future since means from now on"
        );
        bus.publish(None, stopping());
        assert_eq!(seqs(&mut future), ["6"]);
    }

    #[test]
    fn since_older_than_the_ring_gets_a_gap_then_the_kept_events() {
        let bus = EventBus::new(3, 1);
        for _ in 0..7 {
            bus.publish(None, stopping());
        }
        assert_eq!(
            seqs(&mut bus.subscribe(Some(1))),
            ["gap 2-4", "5", "6", "7"]
        );
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_told_what_it_missed() {
        let bus = EventBus::new(4, 1);
        let mut slow = bus.subscribe(None);
        bus.publish(None, stopping());
        assert_eq!(seqs(&mut slow), ["1"]);
        for _ in 0..10 {
            bus.publish(None, stopping());
        }
        assert_eq!(
            bus.last_seq(),
            11,
            "publishing did not wait for the slow subscriber"
        );
        assert_eq!(seqs(&mut slow), ["gap 2-7", "8", "9", "10", "11"]);
    }

    #[test]
    fn a_restarted_bus_after_a_first_run_starts_after_the_old_history_with_a_gap() {
        let bus = EventBus::new(4, 101);
        bus.publish(None, stopping());
        assert_eq!(seqs(&mut bus.subscribe(Some(0))), ["gap 1-100", "101"]);
    }

    #[tokio::test]
    async fn next_wakes_up_when_an_event_is_published() {
        let bus = EventBus::new(4, 1);
        let mut sub = bus.subscribe(None);
        let waiter = tokio::spawn(async move { sub.next().await });
        tokio::task::yield_now().await;
        bus.publish(None, stopping());
        let item = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken within 5 s")
            .unwrap();
        assert!(
            matches!(item, StreamItem::Event(Event { seq: 1, .. })),
            "{item:?}"
        );
    }

    #[test]
    fn sequence_numbers_keep_growing_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.seq");
        assert_eq!(first_seq_from(&path), 1, "no file: a fresh start");

        // A kvmd killed without a clean shutdown: the next one starts above the reservation.
        let first = EventBus::new(4, first_seq_from(&path))
            .with_seq_file(&path)
            .unwrap();
        let mut last = 0;
        for _ in 0..3 {
            last = first.publish(None, stopping());
        }
        drop(first);
        let after_crash = first_seq_from(&path);
        assert!(after_crash > last, "{after_crash} > {last}");
        assert_eq!(after_crash, RESERVE_BLOCK + 1);

        // A run longer than one block writes a new reservation before using it.
        let second = EventBus::new(4, after_crash).with_seq_file(&path).unwrap();
        let mut last = 0;
        for _ in 0..RESERVE_BLOCK + 5 {
            last = second.publish(None, stopping());
        }
        assert!(first_seq_from(&path) > last);

        // A clean shutdown records the exact last number: no numbers are skipped.
        second.checkpoint().unwrap();
        assert_eq!(first_seq_from(&path), last + 1);
        let after = second.publish(None, stopping());
        assert!(
            first_seq_from(&path) > after,
            "publishing after a checkpoint reserves again"
        );
    }

    #[test]
    fn a_damaged_seq_file_still_gives_numbers_above_any_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.seq");
        std::fs::write(&path, "garbage").unwrap();
        assert!(first_seq_from(&path) > 1_600_000_000_000);
    }
}
