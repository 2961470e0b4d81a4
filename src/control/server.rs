//! The control socket server: accepts connections, decides at once whether to serve them
//! (peer credentials, connection caps), reads newline-delimited requests up to a size limit and
//! passes them to the supervisor; a `subscribe` request turns its connection into an event
//! stream fed from the event bus.
//!
//! Who is served: root, kvmd's own uid, and members of `socket_group` (primary gid from
//! SO_PEERCRED, supplementary groups from SO_PEERGROUPS, both recorded by the kernel at
//! connect). Anyone else gets one `permission_denied` line and is closed at once, without
//! kvmd reading from it. Served connections are capped globally (`max_connections`) and per
//! peer uid (`max_connections_per_peer`, root exempt); beyond the caps a connection gets one
//! `too_many_connections` line and is closed at once. Refused connections never hold an fd.
//!
//! On shutdown it stops accepting, lets in-flight requests finish (and answers new ones on
//! open connections with `shutting_down`), ends event streams with the events published up to
//! then and an `end` line, then stops the actor system.
//!
//! Invariant: no VM logic; it knows the wire format only through `protocol`; a slow or idle
//! client only ever delays itself.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::api::{ApiError, ApiReply, ApiRequest, ErrorCode, StreamItem};
use crate::control::protocol;
use crate::events::EventBus;
use crate::model::text::escape;
use crate::supervisor::SupervisorHandle;

/// Who may talk to kvmd and how much.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    /// Members of this group are allowed besides root and kvmd's own user.
    pub allowed_gid: Option<u32>,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one peer uid may hold at once (root is exempt).
    pub max_connections_per_peer: usize,
}

/// How long shutdown lets event streams write their last events.
const STREAM_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a refused peer is logged at warn level at most (the others at debug level).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Tasks shutdown waits for: a count and a wake-up when it reaches zero.
#[derive(Default)]
struct Tracker {
    count: AtomicUsize,
    idle: Notify,
}

struct Tracked(Arc<Tracker>);

impl Tracker {
    fn enter(self: &Arc<Self>) -> Tracked {
        self.count.fetch_add(1, Ordering::SeqCst);
        Tracked(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Connection slots: the global count and the count per peer uid.
struct Slots {
    max_total: usize,
    max_per_peer: usize,
    taken: Mutex<(usize, HashMap<u32, usize>)>,
}

/// A served connection's slot, given back when the connection ends.
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Slots {
    fn take(self: &Arc<Self>, uid: u32) -> Result<Slot, ApiError> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if taken.0 >= self.max_total {
            return Err(ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "Too many connections: kvmd serves at most {} at once (node.max_connections)",
                    self.max_total
                ),
            ));
        }
        let mine = taken.1.get(&uid).copied().unwrap_or(0);
        if uid != 0 && mine >= self.max_per_peer {
            return Err(ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "Too many connections from uid {uid}: at most {} at once (node.max_connections_per_peer)",
                    self.max_per_peer
                ),
            ));
        }
        taken.0 += 1;
        *taken.1.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken.0 -= 1;
        if let Some(n) = taken.1.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                taken.1.remove(&self.uid);
            }
        }
    }
}

/// Refusals are logged at warn level at most once per interval, with how many were not.
#[derive(Default)]
struct RefusalLog {
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn refused(&mut self, what: &str, uid: Option<u32>, pid: Option<i32>) {
        let now = Instant::now();
        if self
            .last_warn
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            self.suppressed += 1;
            debug!(?uid, ?pid, what, "refused control client");
            return;
        }
        warn!(
            ?uid,
            ?pid,
            what,
            also_refused_since_last_warning = self.suppressed,
            "refused control client"
        );
        self.last_warn = Some(now);
        self.suppressed = 0;
    }
}

/// Is this peer allowed? Root, our own uid, the allowed group as primary gid or as one of the
/// supplementary groups (`groups` is only asked when needed).
pub fn peer_allowed(
    uid: u32,
    gid: u32,
    allowed_gid: Option<u32>,
    groups: impl FnOnce() -> std::io::Result<Vec<u32>>,
) -> bool {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return true;
    }
    let Some(g) = allowed_gid else { return false };
    if gid == g {
        return true;
    }
    match groups() {
        Ok(list) => list.contains(&g),
        Err(e) => {
            warn!(uid, error = %e, "cannot read the peer's groups (SO_PEERGROUPS); refusing");
            false
        }
    }
}

/// Answer a connection kvmd will not serve with one error line (id null) and close it, without
/// reading from it or waiting for it: the socket is fresh, so the line fits its buffer.
fn refuse(stream: UnixStream, e: &ApiError) {
    let Ok(mut std_stream) = stream.into_std() else {
        return;
    };
    let _ = std_stream.write(&protocol::encode_reply(&Value::Null, &Err(e.clone())));
}

/// Serve until `shutdown` turns true, then drain and stop the actor system.
pub async fn serve(
    listener: UnixListener,
    sup: SupervisorHandle,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let requests = Arc::new(Tracker::default());
    let streams = Arc::new(Tracker::default());
    let consoles = super::console::Consoles::default();
    let (drained_tx, drained_rx) = watch::channel(false);
    let slots = Arc::new(Slots {
        max_total: limits.max_connections,
        max_per_peer: limits.max_connections_per_peer,
        taken: Mutex::new((0, HashMap::new())),
    });
    let mut refusals = RefusalLog::default();
    let denied = ApiError::new(
        ErrorCode::PermissionDenied,
        "Permission denied: only root, kvmd's user and the configured socket_group may use kvmd",
    );
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: the pending connection stays queued; try again soon.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let creds = getsockopt(&stream, PeerCredentials);
        let allowed = match &creds {
            Ok(c) => peer_allowed(c.uid(), c.gid(), limits.allowed_gid, || {
                crate::host::sys::peer_groups(stream.as_fd())
            }),
            Err(_) => false,
        };
        let (uid, pid) = match &creds {
            Ok(c) => (Some(c.uid()), Some(c.pid())),
            Err(_) => (None, None),
        };
        if !allowed {
            refusals.refused("permission_denied", uid, pid);
            refuse(stream, &denied);
            continue;
        }
        let slot = match slots.take(uid.unwrap_or(u32::MAX)) {
            Ok(slot) => slot,
            Err(e) => {
                refusals.refused("too_many_connections", uid, pid);
                refuse(stream, &e);
                continue;
            }
        };
        debug!(?uid, ?pid, "client connected");
        let conn = Connection {
            consoles: consoles.clone(),
            sup: sup.clone(),
            limits: limits.clone(),
            requests: requests.clone(),
            streams: streams.clone(),
            shutdown: shutdown.clone(),
            drained: drained_rx.clone(),
        };
        actix::spawn(async move {
            conn.run(stream).await;
            drop(slot);
        });
    }
    drop(listener);
    info!(
        in_flight = requests.count.load(Ordering::SeqCst),
        streams = streams.count.load(Ordering::SeqCst),
        "shutting down: no longer accepting requests"
    );
    if tokio::time::timeout(limits.drain_timeout, requests.wait_idle())
        .await
        .is_err()
    {
        warn!("in-flight requests did not finish in time; exiting anyway (VMs keep running)");
    }
    let _ = drained_tx.send(true);
    if tokio::time::timeout(STREAM_FLUSH_TIMEOUT, streams.wait_idle())
        .await
        .is_err()
    {
        warn!("event streams did not take their last events in time; closing them");
    }
    info!("kvmd exiting; VMs keep running");
    actix::System::current().stop();
}

/// One served connection.
struct Connection {
    sup: SupervisorHandle,
    consoles: super::console::Consoles,
    limits: Limits,
    requests: Arc<Tracker>,
    streams: Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
    /// Turns true once in-flight requests have finished at shutdown: event streams go on
    /// until then, so the events of those requests still reach their subscribers.
    drained: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let limit = self.limits.max_request_bytes as u64 + 1;
            let mut limited = (&mut reader).take(limit);
            let read = tokio::select! {
                r = limited.read_until(b'\n', &mut buf) => r,
                _ = self.shutdown.wait_for(|s| *s) => return,
            };
            match read {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "client read failed");
                    return;
                }
            }
            if buf.last() != Some(&b'\n') && buf.len() as u64 >= limit {
                let e = ApiError::new(
                    ErrorCode::RequestTooLarge,
                    format!(
                        "Request is larger than {} bytes",
                        self.limits.max_request_bytes
                    ),
                );
                let _ = write
                    .write_all(&protocol::encode_reply(&Value::Null, &Err(e)))
                    .await;
                return;
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                if buf.last() != Some(&b'\n') {
                    return; // EOF after whitespace
                }
                continue;
            }
            let (id, req) = protocol::parse_request(&buf);
            if *self.shutdown.borrow() {
                let e = ApiError::new(ErrorCode::ShuttingDown, "kvmd is shutting down");
                let _ = write.write_all(&protocol::encode_reply(&id, &Err(e))).await;
                return;
            }
            if let Ok(ApiRequest::Console { name, write: w }) = &req {
                let _tracked = self.streams.enter();
                self.console(reader, write, &id, name.clone(), *w).await;
                return;
            }
            if let Ok(ApiRequest::Subscribe { since, follow }) = req {
                let _tracked = self.streams.enter();
                self.stream(reader, write, &id, since, follow).await;
                return;
            }
            let tracked = self.requests.enter();
            let kind = req.as_ref().map_or("invalid", protocol::request_name);
            let result = match req {
                Ok(req) => {
                    debug!(?req, "request");
                    self.sup.call(req).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                info!(code = e.code.as_str(), error = %escape(&e.message), "request failed");
            }
            crate::metrics::stats().request(
                kind,
                result.as_ref().map_or_else(|e| e.code.as_str(), |_| "ok"),
            );
            let wrote = write.write_all(&protocol::encode_reply(&id, &result)).await;
            drop(tracked);
            if wrote.is_err() {
                return;
            }
        }
    }

    /// The connection as a console: the `console` reply, then the console's bytes both ways
    /// until the client leaves, QEMU goes, or kvmd shuts down.
    async fn console(
        &mut self,
        mut reader: BufReader<OwnedReadHalf>,
        mut write: OwnedWriteHalf,
        id: &Value,
        name: crate::model::name::InstanceName,
        writer: bool,
    ) {
        let checked = self
            .sup
            .call(ApiRequest::Console {
                name: name.clone(),
                write: writer,
            })
            .await;
        let path = crate::model::layout::RunPaths::new(self.sup.run_dir(), &name).serial();
        let session = match checked {
            Err(e) => Err(e),
            Ok(_) => self
                .consoles
                .attach(name.as_str(), &path, writer)
                .await
                .map_err(|e| match e {
                    super::console::AttachError::WriterTaken => {
                        ApiError::new(ErrorCode::Busy, format!("{name}: {e}"))
                    }
                    other => ApiError::new(ErrorCode::NotRunning, format!("{name}: {other}")),
                }),
        };
        let mut session = match session {
            Ok(s) => s,
            Err(e) => {
                let _ = write.write_all(&protocol::encode_reply(id, &Err(e))).await;
                return;
            }
        };
        let reply = Ok(ApiReply::Console {
            name: name.clone(),
            writer: session.is_writer(),
        });
        if write
            .write_all(&protocol::encode_reply(id, &reply))
            .await
            .is_err()
        {
            return;
        }
        debug!(%name, writer, "console attached");
        enum Step {
            Typed(usize),
            Shown(Vec<u8>),
            Missed,
            End,
        }
        let mut buf = vec![0u8; 1024];
        loop {
            let step = tokio::select! {
                n = reader.read(&mut buf) => match n {
                    Ok(0) | Err(_) => Step::End,
                    Ok(k) => Step::Typed(k),
                },
                out = session.output.recv() => match out {
                    Ok(bytes) => Step::Shown(bytes),
                    // A viewer that fell behind loses what it missed, and goes on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Step::Missed,
                    Err(_) => Step::End,
                },
                _ = session.gone.wait_for(|g| *g) => Step::End,
                _ = self.shutdown.wait_for(|s| *s) => Step::End,
            };
            match step {
                Step::Typed(k) => {
                    if !session.send(buf[..k].to_vec()) {
                        break;
                    }
                }
                Step::Shown(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Step::Missed => {}
                Step::End => break,
            }
        }
        debug!(%name, "console detached");
    }

    /// The connection as an event stream: the `subscribed` reply, the kept events after
    /// `since`, then (with `follow`) new ones until the client goes or kvmd shuts down.
    async fn stream(
        &mut self,
        mut reader: BufReader<OwnedReadHalf>,
        mut write: OwnedWriteHalf,
        id: &Value,
        since: Option<u64>,
        follow: bool,
    ) {
        let bus: &EventBus = self.sup.events();
        let mut sub = bus.subscribe(since);
        let last_seq = sub.subscribed_at();
        debug!(?since, follow, last_seq, "event stream");
        let reply = Ok(ApiReply::Subscribed { last_seq });
        if write
            .write_all(&protocol::encode_reply(id, &reply))
            .await
            .is_err()
        {
            return;
        }
        if !follow {
            // The replay ends at the newest event when the subscription was made.
            while let Some(item) = sub.try_next() {
                let item = match item {
                    StreamItem::Event(e) if e.seq > last_seq => break,
                    StreamItem::Gap { from, .. } if from > last_seq => break,
                    StreamItem::Gap { from, to } => StreamItem::Gap {
                        from,
                        to: to.min(last_seq),
                    },
                    item => item,
                };
                if write
                    .write_all(&protocol::encode_stream_item(&item))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let end = StreamItem::End { last_seq };
            let _ = write.write_all(&protocol::encode_stream_item(&end)).await;
            return;
        }
        let mut discard = [0u8; 512];
        loop {
            let item = tokio::select! {
                item = sub.next() => item,
                read = reader.read(&mut discard) => match read {
                    // The client has nothing to say on a stream; EOF or an error means it left.
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
                _ = self.drained.wait_for(|s| *s) => break,
            };
            if write
                .write_all(&protocol::encode_stream_item(&item))
                .await
                .is_err()
            {
                return;
            }
        }
        // Shutting down: what was published until now (kvmd's own `stopping` event among it),
        // then `end`; a client that does not read gets cut off by the timeout.
        let flush = async {
            let mut last = None;
            while let Some(item) = sub.try_next() {
                if let StreamItem::Event(e) = &item {
                    last = Some(e.seq);
                }
                write
                    .write_all(&protocol::encode_stream_item(&item))
                    .await?;
            }
            let last_seq = last.unwrap_or_else(|| bus.last_seq());
            let end = StreamItem::End { last_seq };
            write.write_all(&protocol::encode_stream_item(&end)).await
        };
        let _ = tokio::time::timeout(STREAM_FLUSH_TIMEOUT, flush).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(total: usize, per_peer: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_total: total,
            max_per_peer: per_peer,
            taken: Mutex::new((0, HashMap::new())),
        })
    }

    #[test]
    fn a_peer_gets_at_most_its_share_of_connections_and_root_only_the_global_cap() {
        let s = slots(5, 2);
        let user: Vec<_> = (0..2).map(|_| s.take(1000).unwrap()).collect();
        let third = s
            .take(1000)
            .err()
            .expect("a third connection of uid 1000 is refused");
        assert_eq!(third.code, ErrorCode::TooManyConnections);
        assert!(third.message.contains("uid 1000"), "{}", third.message);
        let root: Vec<_> = (0..3).map(|_| s.take(0).unwrap()).collect();
        let over = s.take(0).err().expect("root is held to the global cap");
        assert!(over.message.contains("at most 5"), "{}", over.message);
        drop(user);
        assert!(
            s.take(0).is_ok(),
            "closed connections give their slots back"
        );
        drop(root);
    }

    #[test]
    fn only_root_our_uid_and_the_socket_group_are_allowed() {
        let never = || -> std::io::Result<Vec<u32>> { panic!("groups not needed") };
        assert!(peer_allowed(0, 0, None, never));
        let me = nix::unistd::geteuid().as_raw();
        assert!(peer_allowed(me, 12345, None, never));
        let other = if me == 65534 { 65533 } else { 65534 };
        assert!(!peer_allowed(other, 65534, None, never));
        assert!(peer_allowed(other, 4000, Some(4000), never));
        assert!(peer_allowed(other, 65534, Some(4000), || Ok(vec![
            27, 4000
        ])));
        assert!(!peer_allowed(other, 65534, Some(4000), || Ok(vec![27])));
        assert!(!peer_allowed(other, 65534, Some(4000), || Err(
            std::io::Error::other("no creds")
        )));
    }
}
