//! Legacy, untyped entry points, kept while their callers are rewritten: [`Qmp::connect`]
//! (one timeout for start-up and commands, events as raw [`Event`]s on an unbounded channel),
//! [`Qmp::execute`] and [`Qmp::execute_with_fd`]. New code uses [`Qmp::connect_with`] or
//! [`Qmp::from_stream`], the typed commands, and [`Notice`]s.
//!
//! Invariant: thin wrappers over `client.rs` with no behaviour of their own beyond adapting
//! the notice channel to the old event stream; delete this file when nothing calls it.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use super::client::{ConnectOptions, Qmp};
use super::events::Notice;
use super::{wire, QmpError};

/// Legacy: an event as name and raw data. New code receives [`super::QmpEvent`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    /// The event's data as QEMU sends it (rebuilt from the typed event: fields kvmd does not
    /// type are kept only for events it does not know).
    pub data: Value,
    /// QEMU's timestamp, in microseconds since the epoch (0 if absent).
    pub timestamp_us: u64,
}

impl Event {
    pub fn bool(&self, key: &str) -> Option<bool> {
        wire::data_bool(&self.data, key)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        wire::data_str(&self.data, key)
    }
}

impl Qmp {
    /// Legacy: [`Qmp::connect_with`] with `timeout` as both the start-up and the command
    /// deadline, and events (not timeouts) forwarded to an unbounded channel that closes
    /// after the last one. Use `connect_with`: a large-memory QEMU needs a longer start-up.
    pub async fn connect(
        path: &Path,
        deadline: Instant,
        timeout: Duration,
        alive: impl FnMut() -> bool,
    ) -> Result<(Qmp, mpsc::UnboundedReceiver<Event>), QmpError> {
        let opts = ConnectOptions {
            connect_deadline: deadline,
            startup_timeout: timeout,
            command_timeout: timeout,
        };
        let (qmp, mut notices) = Qmp::connect_with(path, &opts, alive).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(notice) = notices.recv().await {
                if let Notice::Event {
                    event,
                    timestamp_us,
                } = notice
                {
                    let ev = Event {
                        name: event.name().to_string(),
                        data: wire::event_data(&event),
                        timestamp_us,
                    };
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
            }
        });
        Ok((qmp, rx))
    }

    /// Legacy: [`Qmp::execute_raw`] under another name.
    pub async fn execute(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_raw(command, args, timeout).await
    }

    /// Legacy: run any command with a file descriptor attached (SCM_RIGHTS). New code uses
    /// [`Qmp::getfd`].
    pub async fn execute_with_fd(
        &self,
        command: &str,
        args: Option<Value>,
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.run(command, args, Some(fd.as_raw_fd()), timeout).await
    }
}
