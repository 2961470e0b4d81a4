//! A blocking control-socket client, for `kvmctl`, tests and benchmarks.
//!
//! Invariant: speaks the wire format only through `protocol`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::api::{ApiError, ApiReply, ApiRequest};
use crate::control::protocol;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Cannot connect to kvmd at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Lost the connection to kvmd")]
    Io(#[source] std::io::Error),
    #[error("kvmd closed the connection without answering")]
    Closed,
    #[error("Cannot understand kvmd's reply: {0}")]
    Protocol(String),
}

pub struct Client {
    reader: BufReader<UnixStream>,
    next_id: u64,
}

/// One answered request: the decoded result and the raw reply line (for `--json`).
pub struct Answer {
    pub result: Result<ApiReply, ApiError>,
    pub raw: String,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            reader: BufReader::new(stream),
            next_id: 1,
        })
    }

    pub fn set_timeout(&self, t: Option<Duration>) {
        let _ = self.reader.get_ref().set_read_timeout(t);
    }

    /// Send raw bytes and read one reply line (for tests of malformed input).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<String, ClientError> {
        // A refused peer may get its answer (and a closed socket) before its request is
        // fully written: read the answer even when the write fails.
        let wrote = self.reader.get_mut().write_all(bytes);
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Ok(line),
            Ok(_) => Err(wrote.err().map_or(ClientError::Closed, ClientError::Io)),
            Err(e) => Err(ClientError::Io(wrote.err().unwrap_or(e))),
        }
    }

    pub fn call(&mut self, req: &ApiRequest) -> Result<Answer, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let raw = self.raw(&protocol::encode_request(id, req))?;
        let decoded = protocol::decode_reply(raw.as_bytes(), req).map_err(ClientError::Protocol)?;
        Ok(Answer {
            result: decoded.result,
            raw,
        })
    }
}
