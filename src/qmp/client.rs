//! The QMP connection: connecting, the greeting and capabilities under a start-up deadline,
//! id-matched commands under a per-command deadline, fd passing, and the read loop.
//!
//! The read loop turns each line from QEMU into a reply (handed to the command waiting for that
//! id; replies nobody waits for are dropped) or a [`Notice`] on one bounded channel of
//! [`NOTICE_CAPACITY`]. When the channel is full, lifecycle events wait for room (so does the
//! read loop, and with it every reply: the owner must read notices while it runs commands);
//! other events, and the `TimedOut` notices commands send when they miss their deadline, are
//! dropped, counted ([`Qmp::dropped_notices`]) and reported in a rate-limited warning. When the
//! socket closes, every waiting command fails at once and the channel closes after the last
//! notice. A deadline that cuts a write short poisons the connection (half a command may be on
//! the socket); dropping the last [`Qmp`] handle, or [`Qmp::close`], hangs up our side so
//! QEMU's single-client monitor is free for the next connection.
//!
//! Invariant: no JSON (wire.rs) and no VM policy; lines from QEMU reach logs only as bounded,
//! escaped excerpts.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::events::{Notice, QmpEvent};
use super::wire::{self, Incoming};
use super::{Greeting, QmpError};

/// How many notices wait for the owner before non-lifecycle ones are dropped.
pub const NOTICE_CAPACITY: usize = 1024;
/// At most one warning about dropped notices per this period (per connection).
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Until when to retry `connect()` while the socket does not exist yet (QEMU creates it a
    /// few ms after exec). Unused by [`Qmp::from_stream`].
    pub connect_deadline: Instant,
    /// How long QEMU may take, once connected, to greet and answer `qmp_capabilities`: with
    /// `-mem-path` and preallocation it answers only after preallocating (17 s for 4 GiB).
    pub startup_timeout: Duration,
    /// The default deadline of every later command.
    pub command_timeout: Duration,
}

type Reply = Result<Value, QmpError>;

/// State shared by the handles and the read loop.
struct Shared {
    /// Commands waiting for their reply, by id. `closed` is set while holding this lock, so
    /// no command can start waiting after the waiters were failed.
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    closed: AtomicBool,
    next_id: AtomicU64,
    /// Weak, so that the channel closes when the read loop ends, not when the last handle goes.
    notices: mpsc::WeakSender<Notice>,
    drops: Mutex<Drops>,
}

/// What the handles own: the write half (dropping it hangs up our side).
struct Handle {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
}

/// A connected QMP client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Qmp {
    handle: Arc<Handle>,
    command_timeout: Duration,
    pub greeting: Greeting,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("greeting", &self.greeting)
            .field("command_timeout", &self.command_timeout)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Qmp {
    /// Connect to `path`, retrying until `opts.connect_deadline` while the socket does not
    /// exist yet (`alive` is asked between retries, so a QEMU that died during start is
    /// noticed at once), then greet and negotiate capabilities as [`Qmp::from_stream`] does.
    ///
    /// Read the returned receiver while running commands (from another task): when it is
    /// full, a lifecycle event holds up the read loop, and with it every reply.
    pub async fn connect_with(
        path: &Path,
        opts: &ConnectOptions,
        mut alive: impl FnMut() -> bool,
    ) -> Result<(Qmp, mpsc::Receiver<Notice>), QmpError> {
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) => {
                    if Instant::now() >= opts.connect_deadline || !alive() {
                        return Err(QmpError::Connect {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        Self::from_stream(stream, opts).await
    }

    /// Use a stream that is already connected (e.g. to a listening socket kvmd bound itself
    /// and passed to QEMU by fd, before QEMU even accepts): wait for the greeting and the
    /// answer to `qmp_capabilities`, together up to `opts.startup_timeout`.
    pub async fn from_stream(
        stream: UnixStream,
        opts: &ConnectOptions,
    ) -> Result<(Qmp, mpsc::Receiver<Notice>), QmpError> {
        let deadline = tokio::time::Instant::now() + opts.startup_timeout;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = tokio::time::timeout_at(deadline, read_greeting(&mut reader))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
                ms: opts.startup_timeout.as_millis(),
            })??;
        let (tx, rx) = mpsc::channel(NOTICE_CAPACITY);
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            notices: tx.downgrade(),
            drops: Mutex::default(),
        });
        let handle = Arc::new(Handle {
            writer: tokio::sync::Mutex::new(write),
            shared: shared.clone(),
        });
        let reading = tokio::spawn(read_loop(reader, shared, Arc::downgrade(&handle), tx));
        let qmp = Qmp {
            handle,
            command_timeout: opts.command_timeout,
            greeting,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(e) = qmp.run("qmp_capabilities", None, None, left).await {
            reading.abort();
            qmp.close().await;
            return Err(e);
        }
        Ok((qmp, rx))
    }

    /// A handle on the same connection whose typed commands use `timeout` as their deadline,
    /// e.g. `qmp.with_timeout(Duration::from_secs(30)).query_status()`.
    pub fn with_timeout(&self, timeout: Duration) -> Qmp {
        Qmp {
            command_timeout: timeout,
            ..self.clone()
        }
    }

    /// The deadline typed commands run under.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    pub fn is_closed(&self) -> bool {
        self.handle.shared.closed.load(Ordering::SeqCst)
    }

    /// How many notices were dropped because the channel was full (never lifecycle events).
    pub fn dropped_notices(&self) -> u64 {
        self.handle.shared.drops.lock().expect("drops lock").total
    }

    /// Hang up our side: commands fail with `Closed` from now on, waiting ones at once.
    /// Notices QEMU already sent are still delivered; the channel closes when QEMU hangs up.
    pub async fn close(&self) {
        self.handle.shared.mark_closed();
        let _ = self.handle.writer.lock().await.shutdown().await;
    }

    /// Run any command and return its raw `return` value. For tests and diagnostics; kvmd's
    /// own code uses typed commands.
    pub async fn execute_raw(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.run(command, args, None, timeout).await
    }

    /// Run a command under the default deadline (for typed commands).
    pub(super) async fn call(
        &self,
        command: &str,
        args: Option<Value>,
        fd: Option<RawFd>,
    ) -> Result<Value, QmpError> {
        self.run(command, args, fd, self.command_timeout).await
    }

    pub(super) async fn run(
        &self,
        command: &str,
        args: Option<Value>,
        fd: Option<RawFd>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let shared = &self.handle.shared;
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let line = wire::encode_command(command, args, id);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = shared.pending.lock().expect("pending lock");
            if shared.closed.load(Ordering::SeqCst) {
                return Err(QmpError::Closed);
            }
            pending.insert(id, tx);
        }
        let started = Instant::now();
        let mut written = false;
        let result = tokio::time::timeout(timeout, async {
            self.send(&line, fd).await?;
            written = true;
            rx.await.map_err(|_| QmpError::Closed)?
        })
        .await;
        if result.is_err() && !written {
            // The deadline cut a write short: half a line may be on the socket, and the next
            // command would be garbage to QEMU. Give the connection up; a new one is made.
            shared.mark_closed();
            if let Ok(mut w) = self.handle.writer.try_lock() {
                let _ = w.shutdown().await;
            }
        }
        shared.pending.lock().expect("pending lock").remove(&id);
        crate::metrics::stats().qmp_command(
            command,
            started.elapsed().as_secs_f64(),
            result.is_err(),
        );
        match result {
            Ok(r) => r.map_err(|e| match e {
                QmpError::Command { class, desc, .. } => QmpError::Command {
                    command: command.into(),
                    class,
                    desc,
                },
                other => other,
            }),
            Err(_) => {
                if let Some(notices) = shared.notices.upgrade() {
                    shared.offer(
                        &notices,
                        Notice::TimedOut {
                            command: command.into(),
                        },
                    );
                }
                Err(QmpError::Timeout {
                    command: command.into(),
                    ms: started.elapsed().as_millis(),
                })
            }
        }
    }

    async fn send(&self, line: &[u8], fd: Option<RawFd>) -> Result<(), QmpError> {
        let mut w = self.handle.writer.lock().await;
        let Some(fd) = fd else {
            return w
                .write_all(line)
                .await
                .map_err(|e| QmpError::Io(e.to_string()));
        };
        // The fd must travel with (part of) the command's bytes, in one sendmsg.
        let stream: &UnixStream = (*w).as_ref();
        let sent = loop {
            stream
                .writable()
                .await
                .map_err(|e| QmpError::Io(e.to_string()))?;
            let res = stream.try_io(tokio::io::Interest::WRITABLE, || {
                let fds = [fd];
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(line)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match res {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(QmpError::Io(e.to_string())),
            }
        };
        w.write_all(&line[sent..])
            .await
            .map_err(|e| QmpError::Io(e.to_string()))
    }
}

impl Shared {
    /// No command may wait from now on; those waiting fail at once.
    fn mark_closed(&self) {
        let mut pending = self.pending.lock().expect("pending lock");
        self.closed.store(true, Ordering::SeqCst);
        for (_, tx) in pending.drain() {
            let _ = tx.send(Err(QmpError::Closed));
        }
    }

    fn reply(&self, id: Option<u64>, reply: Reply) {
        let waiting = id.and_then(|id| self.pending.lock().expect("pending lock").remove(&id));
        match waiting {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!(?id, "QMP reply for no waiting command (timed out earlier?)"),
        }
    }

    /// Queue a notice that may be dropped when the owner is behind.
    fn offer(&self, tx: &mpsc::Sender<Notice>, notice: Notice) {
        match tx.try_send(notice) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => self.drops.lock().expect("drops lock").record(),
        }
    }
}

/// Counts dropped notices and warns about them at most every [`DROP_WARNING_EVERY`].
#[derive(Default)]
struct Drops {
    total: u64,
    unreported: u64,
    last_warning: Option<Instant>,
}

impl Drops {
    fn record(&mut self) {
        self.total += 1;
        self.unreported += 1;
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= DROP_WARNING_EVERY)
        {
            self.warn();
        }
    }

    fn warn(&mut self) {
        if self.unreported > 0 {
            tracing::warn!(
                dropped = self.unreported,
                total = self.total,
                "QMP notices dropped: the owner is not reading (lifecycle events are kept)"
            );
        }
        self.unreported = 0;
        self.last_warning = Some(Instant::now());
    }
}

async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> Result<bool, QmpError> {
    buf.clear();
    let n = (&mut *reader)
        .take(wire::MAX_LINE as u64)
        .read_until(b'\n', buf)
        .await
        .map_err(|e| QmpError::Io(e.to_string()))?;
    if n == 0 {
        return Ok(false);
    }
    if n >= wire::MAX_LINE && buf.last() != Some(&b'\n') {
        return Err(QmpError::Io(format!(
            "QMP line longer than {} bytes",
            wire::MAX_LINE
        )));
    }
    Ok(true)
}

async fn read_greeting(reader: &mut BufReader<OwnedReadHalf>) -> Result<Greeting, QmpError> {
    let mut buf = Vec::new();
    if !read_line(reader, &mut buf).await? {
        return Err(QmpError::Closed);
    }
    wire::parse_greeting(&buf)
}

async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    shared: Arc<Shared>,
    handle: Weak<Handle>,
    tx: mpsc::Sender<Notice>,
) {
    let mut buf = Vec::new();
    loop {
        match read_line(&mut reader, &mut buf).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(error = %e, "QMP read failed");
                break;
            }
        }
        match wire::parse_incoming(&buf) {
            Ok(Incoming::Return { id, value }) => shared.reply(id, Ok(value)),
            Ok(Incoming::Error { id, class, desc }) => shared.reply(
                id,
                Err(QmpError::Command {
                    command: String::new(),
                    class,
                    desc,
                }),
            ),
            Ok(Incoming::Event {
                event,
                timestamp_us,
            }) => {
                if let QmpEvent::Other { name, .. } = &event {
                    tracing::debug!(event = %wire::excerpt(name.as_bytes()), "untyped QMP event kept as Other");
                }
                let notice = Notice::Event {
                    event,
                    timestamp_us,
                };
                if notice.must_deliver() {
                    // Never dropped: wait for room (fails only if nobody listens any more).
                    let _ = tx.send(notice).await;
                } else {
                    shared.offer(&tx, notice);
                }
            }
            Ok(Incoming::Other) => tracing::debug!(
                line = %wire::excerpt(&buf),
                len = buf.len(),
                "ignoring an unknown QMP message"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                line = %wire::excerpt(&buf),
                len = buf.len(),
                "ignoring an unparsable QMP line"
            ),
        }
    }
    shared.mark_closed();
    // Close our side too, so QEMU's single-client monitor is free for the next connection.
    if let Some(handle) = handle.upgrade() {
        let _ = handle.writer.lock().await.shutdown().await;
    }
    shared.drops.lock().expect("drops lock").warn();
    // `tx` drops here: the owner sees the channel close after the last notice.
}
