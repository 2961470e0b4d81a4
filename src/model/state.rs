//! The states operators see (`info`), and how a stop ended.
//!
//! Invariant: plain data; no actix, no I/O, no clock.

use crate::model::exit::ExitKind;

/// What `info` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Defined, no QEMU (never started, or stopped by an operator).
    Stopped,
    Starting,
    Running,
    Paused,
    Stopping,
    /// The guest powered itself off.
    UserDown,
    /// QEMU died unexpectedly.
    Crashed,
    /// QEMU is alive but missed a QMP deadline.
    Unresponsive,
    /// Source: a migration job is copying the VM to another node.
    Migrating,
    /// Source: the migration completed; QEMU is paused for good and waits for
    /// `finalize-src` (the VM belongs to the target now, so it can never be resumed here).
    Migrated,
    /// Target: QEMU waits for (or received) the VM, paused, until `finalize-dst`.
    Incoming,
    /// The VM was migrated to another node and its QEMU here is gone.
    Moved,
}

impl VmState {
    pub const ALL: [VmState; 12] = [
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::UserDown,
        VmState::Crashed,
        VmState::Unresponsive,
        VmState::Migrating,
        VmState::Migrated,
        VmState::Incoming,
        VmState::Moved,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::UserDown => "user-down",
            VmState::Crashed => "crashed",
            VmState::Unresponsive => "unresponsive",
            VmState::Migrating => "migrating",
            VmState::Migrated => "migrated",
            VmState::Incoming => "incoming",
            VmState::Moved => "moved",
        }
    }

    /// A QEMU process exists (or is being started/stopped).
    pub fn has_process(self) -> bool {
        !matches!(
            self,
            VmState::Stopped | VmState::UserDown | VmState::Crashed | VmState::Moved
        )
    }

    /// The state after an exit of the given kind.
    pub fn after_exit(kind: ExitKind) -> Self {
        match kind {
            ExitKind::Stopped => VmState::Stopped,
            ExitKind::UserDown => VmState::UserDown,
            ExitKind::Crashed => VmState::Crashed,
            ExitKind::Migrated => VmState::Moved,
        }
    }
}

/// How a stop ended, as reported to the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopEnd {
    /// The guest powered off after the ACPI power button.
    Acpi,
    /// QEMU exited on SIGTERM.
    Sigterm,
    /// QEMU had to be killed.
    Sigkill,
    /// Nothing was running.
    AlreadyStopped,
    /// A start was under way: it was cancelled and rolled back.
    StartCancelled,
    /// QEMU went away while kvmd was not running (a stop interrupted by a kvmd restart).
    Unobserved,
}

impl StopEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            StopEnd::Acpi => "acpi",
            StopEnd::Sigterm => "sigterm",
            StopEnd::Sigkill => "sigkill",
            StopEnd::AlreadyStopped => "already-stopped",
            StopEnd::StartCancelled => "start-cancelled",
            StopEnd::Unobserved => "unobserved",
        }
    }

    pub const ALL: [StopEnd; 6] = [
        StopEnd::Acpi,
        StopEnd::Sigterm,
        StopEnd::Sigkill,
        StopEnd::AlreadyStopped,
        StopEnd::StartCancelled,
        StopEnd::Unobserved,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}
