//! Our own QMP client: the only module that knows QMP's JSON.
//!
//! One long-lived connection per VM carries both commands and events. [`Qmp::connect`] reads
//! the greeting and negotiates capabilities; [`Qmp::execute`] sends an id-tagged command and
//! waits for the reply with that id, up to a deadline; events go to a channel the VM actor
//! reads. Unknown events and fields are ignored, replies for ids nobody waits for (a command
//! that already timed out) are dropped, and a closed socket fails every waiting command.
//! [`Qmp::execute_with_fd`] passes a file descriptor with SCM_RIGHTS in the same `sendmsg` as
//! the command, for `getfd`/`add-fd`.
//!
//! Invariant: no VM policy. A timeout is reported, not acted upon: deciding that a VM is
//! unresponsive is the VM actor's job.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Longest line accepted from QEMU (query-qmp-schema is ~200 KiB; leave room).
const MAX_LINE: usize = 8 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    #[error("Cannot connect to QMP socket {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("QMP greeting is malformed: {0}")]
    Greeting(String),
    #[error("QMP command {command} timed out after {ms} ms")]
    Timeout { command: String, ms: u128 },
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP I/O error: {0}")]
    Io(String),
}

/// What QEMU said about itself in the greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    pub package: String,
}

/// An asynchronous QMP event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
    /// QEMU's timestamp, in microseconds since the epoch (0 if absent).
    pub timestamp_us: u64,
}

impl Event {
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.data.get(key).and_then(Value::as_bool)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

/// A connected QMP client. Cheap to clone.
#[derive(Clone)]
pub struct Qmp {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    pub greeting: Greeting,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("greeting", &self.greeting)
            .finish()
    }
}

impl Qmp {
    /// Connect, read the greeting, negotiate capabilities. Retries connecting until `deadline`
    /// (QEMU creates the socket a few ms after exec). `alive` is asked between retries so a
    /// QEMU that died during start is noticed at once.
    pub async fn connect(
        path: &Path,
        deadline: Instant,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<(Qmp, mpsc::UnboundedReceiver<Event>), QmpError> {
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) => {
                    if Instant::now() >= deadline || !alive() {
                        return Err(QmpError::Connect {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = tokio::time::timeout(timeout, read_greeting(&mut reader))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
                ms: timeout.as_millis(),
            })??;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let qmp = Qmp {
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            pending: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            closed: Arc::new(AtomicBool::new(false)),
            greeting,
        };
        tokio::spawn(read_loop(
            reader,
            qmp.pending.clone(),
            qmp.closed.clone(),
            events_tx,
            qmp.writer.clone(),
        ));
        qmp.execute("qmp_capabilities", None, timeout).await?;
        Ok((qmp, events_rx))
    }

    /// Run a command and return its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.run(command, args, None, timeout).await
    }

    /// Run a command with a file descriptor attached (SCM_RIGHTS), e.g. `getfd` or `add-fd`.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        args: Option<Value>,
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.run(command, args, Some(fd.as_raw_fd()), timeout).await
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    async fn run(
        &self,
        command: &str,
        args: Option<Value>,
        fd: Option<RawFd>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        if self.is_closed() {
            return Err(QmpError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut msg = Map::new();
        msg.insert("execute".into(), json!(command));
        if let Some(a) = args {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), json!(id));
        let mut line = serde_json::to_vec(&Value::Object(msg)).expect("JSON value serializes");
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
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
            self.closed.store(true, Ordering::SeqCst);
            if let Ok(mut w) = self.writer.try_lock() {
                let _ = w.shutdown().await;
            }
        }
        self.pending.lock().expect("pending lock").remove(&id);
        match result {
            Ok(r) => r.map_err(|e| match e {
                QmpError::Command { class, desc, .. } => QmpError::Command {
                    command: command.into(),
                    class,
                    desc,
                },
                other => other,
            }),
            Err(_) => Err(QmpError::Timeout {
                command: command.into(),
                ms: started.elapsed().as_millis(),
            }),
        }
    }

    async fn send(&self, line: &[u8], fd: Option<RawFd>) -> Result<(), QmpError> {
        let mut w = self.writer.lock().await;
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

async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> Result<bool, QmpError> {
    buf.clear();
    let n = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', buf)
        .await
        .map_err(|e| QmpError::Io(e.to_string()))?;
    if n == 0 {
        return Ok(false);
    }
    if n >= MAX_LINE && buf.last() != Some(&b'\n') {
        return Err(QmpError::Io(format!(
            "QMP line longer than {MAX_LINE} bytes"
        )));
    }
    Ok(true)
}

use tokio::io::AsyncReadExt;

async fn read_greeting(reader: &mut BufReader<OwnedReadHalf>) -> Result<Greeting, QmpError> {
    let mut buf = Vec::new();
    if !read_line(reader, &mut buf).await? {
        return Err(QmpError::Closed);
    }
    parse_greeting(&buf)
}

/// Parse `{"QMP": {"version": {"qemu": {...}, "package": ...}, "capabilities": [...]}}`.
pub fn parse_greeting(line: &[u8]) -> Result<Greeting, QmpError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| QmpError::Greeting(e.to_string()))?;
    let version = v.get("QMP").and_then(|q| q.get("version")).ok_or_else(|| {
        QmpError::Greeting(format!(
            "no QMP.version in {}",
            String::from_utf8_lossy(line).trim()
        ))
    })?;
    let num = |k: &str| {
        version
            .get("qemu")
            .and_then(|q| q.get(k))
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .ok_or_else(|| QmpError::Greeting(format!("no QMP.version.qemu.{k}")))
    };
    Ok(Greeting {
        major: num("major")?,
        minor: num("minor")?,
        micro: num("micro")?,
        package: version
            .get("package")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string(),
    })
}

/// One message from QEMU, classified.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Return {
        id: Option<u64>,
        value: Value,
    },
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
    Event(Event),
    /// Valid JSON we do not understand (ignored).
    Other,
}

/// Classify one line. Unparsable lines are an error; unknown shapes are `Other`.
pub fn parse_incoming(line: &[u8]) -> Result<Incoming, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let id = v.get("id").and_then(Value::as_u64);
    if let Some(r) = v.get("return") {
        return Ok(Incoming::Return {
            id,
            value: r.clone(),
        });
    }
    if let Some(e) = v.get("error") {
        return Ok(Incoming::Error {
            id,
            class: e
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("GenericError")
                .to_string(),
            desc: e
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    if let Some(name) = v.get("event").and_then(Value::as_str) {
        let ts = v.get("timestamp");
        let secs = ts
            .and_then(|t| t.get("seconds"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let us = ts
            .and_then(|t| t.get("microseconds"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        return Ok(Incoming::Event(Event {
            name: name.to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp_us: secs * 1_000_000 + us,
        }));
    }
    Ok(Incoming::Other)
}

async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<Event>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
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
        let reply = |id: Option<u64>, r: Result<Value, QmpError>| match id
            .and_then(|id| pending.lock().expect("pending lock").remove(&id))
        {
            Some(tx) => {
                let _ = tx.send(r);
            }
            None => tracing::debug!(?id, "QMP reply for no waiting command (timed out earlier?)"),
        };
        match parse_incoming(&buf) {
            Ok(Incoming::Return { id, value }) => reply(id, Ok(value)),
            Ok(Incoming::Error { id, class, desc }) => reply(
                id,
                Err(QmpError::Command {
                    command: String::new(),
                    class,
                    desc,
                }),
            ),
            Ok(Incoming::Event(ev)) => {
                let _ = events.send(ev);
            }
            Ok(Incoming::Other) => {
                tracing::debug!(line = %String::from_utf8_lossy(&buf).trim(), "ignoring unknown QMP message")
            }
            Err(e) => {
                tracing::warn!(error = %e, line = %String::from_utf8_lossy(&buf).trim(), "ignoring unparsable QMP line")
            }
        }
    }
    closed.store(true, Ordering::SeqCst);
    for (_, tx) in pending.lock().expect("pending lock").drain() {
        let _ = tx.send(Err(QmpError::Closed));
    }
    // Close our side too, so QEMU's single-client monitor is free for the next connection.
    let _ = writer.lock().await.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_of_qemu_7_2() {
        let g = parse_greeting(br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#).unwrap();
        assert_eq!((g.major, g.minor, g.micro), (7, 2, 22));
        assert_eq!(g.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
        assert!(parse_greeting(b"{\"hello\": 1}").is_err());
    }

    #[test]
    fn incoming_messages_are_classified_and_unknown_fields_ignored() {
        assert_eq!(
            parse_incoming(br#"{"return": {"status": "running"}, "id": 7, "extra": 1}"#).unwrap(),
            Incoming::Return {
                id: Some(7),
                value: json!({"status": "running"})
            }
        );
        assert!(matches!(
            parse_incoming(br#"{"error": {"class": "CommandNotFound", "desc": "nope"}, "id": 3}"#)
                .unwrap(),
            Incoming::Error { id: Some(3), .. }
        ));
        match parse_incoming(br#"{"timestamp": {"seconds": 2, "microseconds": 5}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#).unwrap() {
            Incoming::Event(e) => {
                assert_eq!(e.name, "SHUTDOWN");
                assert_eq!(e.bool("guest"), Some(true));
                assert_eq!(e.timestamp_us, 2_000_005);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_incoming(br#"{"something": "new"}"#).unwrap(),
            Incoming::Other
        );
        assert!(parse_incoming(b"garbage").is_err());
    }
}
