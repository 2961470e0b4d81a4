//! Our own QMP client: the only module that knows QMP's JSON.
//!
//! One long-lived connection per VM carries both commands and events.
//! - `client` — the connection: connecting ([`Qmp::connect_with`], or [`Qmp::from_stream`]
//!   for a socket kvmd connected itself), the greeting and capabilities under a start-up
//!   deadline, id-matched commands under a per-command deadline, fd passing with SCM_RIGHTS,
//!   and the read loop that turns QEMU's lines into replies and [`Notice`]s.
//! - `commands` — typed commands as methods on [`Qmp`] (`query_status`, `cont`, `getfd`, ...).
//! - `types` — their typed results ([`Status`], [`RunState`], [`CpuThread`], ...); pure.
//! - `events` — typed events ([`QmpEvent`]) and what the owner receives ([`Notice`]); pure.
//! - `wire` — the JSON: encoding commands, parsing the greeting, replies and events, decoding
//!   typed results. The only file where serde_json looks inside a QMP message.
//!
//! Invariant: no VM policy. A timeout or a dropped notice is reported, not acted upon: deciding
//! that a VM is unresponsive, or what an event means for it, is the VM actor's job.

mod client;
mod commands;
mod events;
mod types;
mod wire;

pub use client::{ConnectOptions, Qmp, NOTICE_CAPACITY};
pub use events::{Notice, QmpEvent};
pub use types::{
    BlockStats, CpuThread, Display, GuestStats, MachineInfo, MigrationInfo, MigrationParams,
    MigrationRam, MigrationStatus, PciDevice, QemuVersion, RunState, Status,
};

/// What QEMU says about itself in the greeting (the same shape as `query-version`).
pub type Greeting = QemuVersion;

/// Everything that can go wrong talking QMP.
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
    #[error("QMP command {command} returned an unexpected reply: {reason}")]
    Reply { command: String, reason: String },
    #[error("QMP I/O error: {0}")]
    Io(String),
}
