//! A blocking control-socket client, for `kvmctl`, tests and benchmarks: requests with their
//! decoded replies, and event streams.
//!
//! Connect errors say what went wrong: no kvmd listening (the socket is missing or refuses
//! connections) is not the same as a socket whose permissions refuse this user, and the
//! latter names the socket's mode and owner.
//!
//! Invariant: speaks the wire format only through `protocol`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::{ApiError, ApiReply, ApiRequest, StreamItem};
use crate::control::protocol::{self, ProtocolError};
use crate::model::text::escape;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Cannot connect to kvmd at {}: is kvmd running?", escape(&.path.display().to_string()))]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Permission denied on {} ({access}): run as root or as a member of the socket group", escape(&.path.display().to_string()))]
    PermissionDenied {
        path: PathBuf,
        /// The socket's mode and owner (`mode 0660, owner root:kvm`), or why they are unknown.
        access: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot connect to kvmd at {}", escape(&.path.display().to_string()))]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Lost the connection to kvmd")]
    Io(#[source] std::io::Error),
    #[error("The connection to kvmd closed without an answer")]
    Closed,
    #[error("Cannot understand kvmd's reply")]
    Protocol(#[from] ProtocolError),
    /// kvmd refused a request that opens something (a subscription).
    #[error("{}", escape(&.0.to_string()))]
    Refused(ApiError),
    #[error("Expected a subscribed reply to subscribe, got {0}")]
    NotSubscribed(&'static str),
}

impl ClientError {
    /// A stable code for `--json` output: kvmd's own code for a refusal, a client-side code
    /// (`connection_failed`, `permission_denied`, `connection_lost`, `protocol_error`)
    /// otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::NotRunning { .. } | ClientError::Connect { .. } => "connection_failed",
            ClientError::PermissionDenied { .. } => "permission_denied",
            ClientError::Io(_) | ClientError::Closed => "connection_lost",
            ClientError::Protocol(_) | ClientError::NotSubscribed(_) => "protocol_error",
            ClientError::Refused(e) => e.code.as_str(),
        }
    }

    /// Timed out waiting for kvmd (a read timeout set with `set_timeout`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Io(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
    }
}

/// The socket's mode and owner, for a permission error.
fn describe_access(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => {
            let user = nix::unistd::User::from_uid(m.uid().into())
                .ok()
                .flatten()
                .map_or_else(|| m.uid().to_string(), |u| u.name);
            let group = nix::unistd::Group::from_gid(m.gid().into())
                .ok()
                .flatten()
                .map_or_else(|| m.gid().to_string(), |g| g.name);
            format!(
                "mode {:04o}, owner {}:{}",
                m.permissions().mode() & 0o7777,
                escape(&user),
                escape(&group)
            )
        }
        Err(e) => format!("its mode and owner cannot be read: {e}"),
    }
}

fn connect_error(path: &Path, source: std::io::Error) -> ClientError {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => ClientError::NotRunning { path, source },
        Some(libc::EACCES) | Some(libc::EPERM) => ClientError::PermissionDenied {
            access: describe_access(&path),
            path,
            source,
        },
        _ => ClientError::Connect { path, source },
    }
}

/// One connection to kvmd.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    /// A line being read (kept across a read timeout, so no bytes are lost).
    pending: String,
    next_id: u64,
}

/// One answered request: the decoded result and the raw reply line (for `--json`).
#[derive(Debug)]
pub struct Answer {
    pub result: Result<ApiReply, ApiError>,
    pub raw: String,
}

/// A plain connection to kvmd's socket, with [`Client::connect`]'s errors (for a console,
/// whose bytes are not lines).
pub fn connect_raw(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path).map_err(|e| connect_error(path, e))
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| connect_error(path, e))?;
        Ok(Self {
            reader: BufReader::new(stream),
            pending: String::new(),
            next_id: 1,
        })
    }

    /// How long a read may wait for kvmd (`None`: forever).
    pub fn set_timeout(&self, t: Option<Duration>) {
        let _ = self.reader.get_ref().set_read_timeout(t);
    }

    /// Read one line; EOF is [`ClientError::Closed`]. After a timeout the part already read
    /// is kept for the next call.
    fn read_line(&mut self) -> Result<String, ClientError> {
        match self.reader.read_line(&mut self.pending) {
            Ok(0) if self.pending.is_empty() => Err(ClientError::Closed),
            Ok(_) => Ok(std::mem::take(&mut self.pending)),
            Err(e) => Err(ClientError::Io(e)),
        }
    }

    /// Send raw bytes and read one reply line (for tests of malformed input).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<String, ClientError> {
        // A refused peer gets its answer (and a closed socket) without kvmd reading: the
        // write may fail, and the answer is still there to read.
        let wrote = self.reader.get_mut().write_all(bytes);
        match self.read_line() {
            Ok(line) => Ok(line),
            Err(ClientError::Closed) => {
                Err(wrote.err().map_or(ClientError::Closed, ClientError::Io))
            }
            Err(e) => Err(e),
        }
    }

    /// Send one request and decode its reply, whatever its kind.
    pub fn call(&mut self, req: &ApiRequest) -> Result<Answer, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let raw = self.raw(&protocol::encode_request(id, req))?;
        let decoded = protocol::decode_reply(raw.as_bytes())?;
        Ok(Answer {
            result: decoded.result,
            raw,
        })
    }

    /// Turn this connection into an event stream: kept events after `since` (`None`: none),
    /// then with `follow` new ones as they happen.
    pub fn subscribe(
        mut self,
        since: Option<u64>,
        follow: bool,
    ) -> Result<EventStream, ClientError> {
        let answer = self.call(&ApiRequest::Subscribe { since, follow })?;
        match answer.result {
            Ok(ApiReply::Subscribed { last_seq }) => Ok(EventStream {
                client: self,
                last_seq,
                done: false,
            }),
            Ok(other) => Err(ClientError::NotSubscribed(protocol::reply_kind(&other))),
            Err(e) => Err(ClientError::Refused(e)),
        }
    }
}

/// The items of a subscribed connection, in order. Ends after `end`; a connection lost
/// before `end` yields one [`ClientError::Closed`] (or `Io`) first.
#[derive(Debug)]
pub struct EventStream {
    client: Client,
    last_seq: u64,
    done: bool,
}

impl EventStream {
    /// The newest sequence number kvmd had when the subscription was made.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How long `next` may wait for an item (`None`: forever). A timeout yields an error for
    /// which [`ClientError::is_timeout`] is true, and the stream goes on.
    pub fn set_timeout(&self, t: Option<Duration>) {
        self.client.set_timeout(t);
    }

    /// The next item and the line it came in (for `--json`).
    pub fn next_raw(&mut self) -> Option<Result<(StreamItem, String), ClientError>> {
        if self.done {
            return None;
        }
        let line = match self.client.read_line() {
            Ok(line) => line,
            Err(e) => {
                if !e.is_timeout() {
                    self.done = true;
                }
                return Some(Err(e));
            }
        };
        match protocol::decode_stream_item(line.as_bytes()) {
            Ok(item) => {
                if matches!(item, StreamItem::End { .. }) {
                    self.done = true;
                }
                Some(Ok((item, line)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e.into()))
            }
        }
    }
}

impl Iterator for EventStream {
    type Item = Result<StreamItem, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_raw().map(|r| r.map(|(item, _)| item))
    }
}
