//! Typed QMP events, and the notices the client hands its owner.
//!
//! [`QmpEvent`] names the events kvmd cares about, with their fields typed; anything else is
//! kept as [`QmpEvent::Other`] with its raw data (and logged at debug level by the client), so
//! nothing QEMU says is dropped silently. `wire.rs` decodes events from JSON, including the
//! fallbacks for missing or mistyped fields (documented on each variant here).
//!
//! [`Notice`] is what travels on the client's bounded channel: an event with QEMU's
//! timestamp, or the news that a command missed its deadline.
//!
//! Invariant: pure data — no tokio, no I/O, no JSON parsing, no policy.

/// An event QEMU sent. String fields are QEMU's, unescaped: escape and bound them before
/// logging. A known event whose string or boolean field is missing or mistyped still arrives
/// as its variant, with the documented fallback (`""` for a string, `false` for a boolean,
/// `None` for an optional field); one whose numeric field is missing arrives as
/// [`QmpEvent::Other`] instead, rather than with an invented number.
#[derive(Clone, Debug, PartialEq)]
pub enum QmpEvent {
    /// `SHUTDOWN`: the guest or the host asked QEMU to shut down (QEMU exits next unless run
    /// with `-no-shutdown`). `reason` is e.g. `guest-shutdown`, `host-qmp-quit`,
    /// `guest-panic`, `host-signal`.
    Shutdown { guest: bool, reason: String },
    /// `RESET`: the machine was reset; `reason` e.g. `guest-reset`, `host-qmp-system-reset`.
    Reset { guest: bool, reason: String },
    /// `STOP`: the guest was paused.
    Stop,
    /// `RESUME`: the guest runs again.
    Resume,
    /// `POWERDOWN`: an ACPI power button press was sent to the guest.
    Powerdown,
    /// `GUEST_PANICKED`: the guest reported a panic; `action` is what QEMU does about it
    /// (`pause`, `poweroff`, `run`).
    GuestPanicked { action: String },
    /// `BLOCK_IO_ERROR`: a disk operation failed. `device` is the block backend name (may be
    /// empty), `operation` `read`/`write`, `action` `ignore`/`report`/`stop`; `nospace` is true
    /// when the host ran out of space.
    BlockIoError {
        device: String,
        node_name: Option<String>,
        operation: String,
        action: String,
        nospace: bool,
        reason: String,
    },
    /// `DEVICE_DELETED`: a device finished unplugging. `device` is its id (absent for a
    /// backend or a device without id), `path` its QOM path.
    DeviceDeleted {
        device: Option<String>,
        path: String,
    },
    /// `DEVICE_UNPLUG_GUEST_ERROR`: the guest refused to let a device go (the unplug request
    /// is over; the device stays).
    DeviceUnplugGuestError {
        device: Option<String>,
        path: String,
    },
    /// `BALLOON_CHANGE`: the guest's memory as the balloon sees it, in bytes.
    BalloonChange { actual: u64 },
    /// `MIGRATION`: the migration's new status (`setup`, `active`, `completed`, `failed`, ...).
    Migration { status: String },
    /// `MIGRATION_PASS`: a new dirty-memory pass started.
    MigrationPass { pass: u64 },
    /// Any other event (or a known one lacking a numeric field), with its raw `data`
    /// (`null` when QEMU sent none, or when the event's line was too long to keep).
    Other {
        name: String,
        data: serde_json::Value,
    },
}

impl QmpEvent {
    /// QEMU's name of the event (`SHUTDOWN`, `BLOCK_IO_ERROR`, ...).
    pub fn name(&self) -> &str {
        match self {
            QmpEvent::Shutdown { .. } => "SHUTDOWN",
            QmpEvent::Reset { .. } => "RESET",
            QmpEvent::Stop => "STOP",
            QmpEvent::Resume => "RESUME",
            QmpEvent::Powerdown => "POWERDOWN",
            QmpEvent::GuestPanicked { .. } => "GUEST_PANICKED",
            QmpEvent::BlockIoError { .. } => "BLOCK_IO_ERROR",
            QmpEvent::DeviceDeleted { .. } => "DEVICE_DELETED",
            QmpEvent::DeviceUnplugGuestError { .. } => "DEVICE_UNPLUG_GUEST_ERROR",
            QmpEvent::BalloonChange { .. } => "BALLOON_CHANGE",
            QmpEvent::Migration { .. } => "MIGRATION",
            QmpEvent::MigrationPass { .. } => "MIGRATION_PASS",
            QmpEvent::Other { name, .. } => name,
        }
    }

    /// Events that change whether the guest runs: the client never drops these, even when
    /// its owner falls behind.
    pub fn is_lifecycle(&self) -> bool {
        matches!(
            self,
            QmpEvent::Shutdown { .. }
                | QmpEvent::Reset { .. }
                | QmpEvent::Stop
                | QmpEvent::Resume
                | QmpEvent::Powerdown
                | QmpEvent::GuestPanicked { .. }
        )
    }
}

/// What the client delivers to its owner, in the order it happened. The channel closing means
/// the connection ended, after the last event QEMU sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// An event, with QEMU's timestamp in microseconds since the epoch (0 if absent).
    Event { event: QmpEvent, timestamp_us: u64 },
    /// A command missed its deadline: QEMU may be hung.
    TimedOut { command: String },
}

impl Notice {
    /// Whether the client must wait for room rather than drop this notice when the channel
    /// is full (lifecycle events only).
    pub fn must_deliver(&self) -> bool {
        matches!(self, Notice::Event { event, .. } if event.is_lifecycle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<QmpEvent> {
        vec![
            QmpEvent::Shutdown {
                guest: true,
                reason: "guest-shutdown".into(),
            },
            QmpEvent::Reset {
                guest: false,
                reason: "host-qmp-system-reset".into(),
            },
            QmpEvent::Stop,
            QmpEvent::Resume,
            QmpEvent::Powerdown,
            QmpEvent::GuestPanicked {
                action: "poweroff".into(),
            },
            QmpEvent::BlockIoError {
                device: "disk0".into(),
                node_name: None,
                operation: "write".into(),
                action: "stop".into(),
                nospace: true,
                reason: "No space left on device".into(),
            },
            QmpEvent::DeviceDeleted {
                device: Some("nic1".into()),
                path: "/machine/peripheral/nic1".into(),
            },
            QmpEvent::DeviceUnplugGuestError {
                device: Some("nic1".into()),
                path: "/machine/peripheral/nic1".into(),
            },
            QmpEvent::BalloonChange { actual: 1 << 27 },
            QmpEvent::Migration {
                status: "completed".into(),
            },
            QmpEvent::MigrationPass { pass: 2 },
            QmpEvent::Other {
                name: "RTC_CHANGE".into(),
                data: serde_json::Value::Null,
            },
        ]
    }

    #[test]
    fn every_event_is_named_as_qemu_names_it() {
        let events = every_variant();
        let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "SHUTDOWN",
                "RESET",
                "STOP",
                "RESUME",
                "POWERDOWN",
                "GUEST_PANICKED",
                "BLOCK_IO_ERROR",
                "DEVICE_DELETED",
                "DEVICE_UNPLUG_GUEST_ERROR",
                "BALLOON_CHANGE",
                "MIGRATION",
                "MIGRATION_PASS",
                "RTC_CHANGE"
            ]
        );
    }

    #[test]
    fn only_run_state_changes_are_lifecycle_events_and_only_they_must_be_delivered() {
        for event in every_variant() {
            let lifecycle = matches!(
                event.name(),
                "SHUTDOWN" | "RESET" | "STOP" | "RESUME" | "POWERDOWN" | "GUEST_PANICKED"
            );
            assert_eq!(event.is_lifecycle(), lifecycle, "{}", event.name());
            let notice = Notice::Event {
                event,
                timestamp_us: 0,
            };
            assert_eq!(notice.must_deliver(), lifecycle);
        }
        let timeout = Notice::TimedOut {
            command: "query-status".into(),
        };
        assert!(!timeout.must_deliver());
    }

    #[test]
    fn an_unknown_event_named_like_a_lifecycle_one_is_not_treated_as_lifecycle() {
        // Only the typed variants count: `Other` is whatever wire.rs could not type.
        let e = QmpEvent::Other {
            name: "SHUTDOWN_LATER".into(),
            data: serde_json::Value::Null,
        };
        assert!(!e.is_lifecycle());
    }
}
