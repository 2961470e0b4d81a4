//! Operations as jobs: what kind of operation, and its id.
//!
//! Every operation on a VM (start, stop, reboot, pause, resume, cleanup, and the recovery a
//! restarted kvmd does) is a job with an id, so it can be watched (`kvmctl job`), waited for,
//! cancelled where that makes sense, and, for the long ones, finished by a restarted kvmd.
//!
//! Invariant: plain data; no actix, no I/O, no clock.

use std::fmt;

/// A job's id: a small number, unique on this host across kvmd restarts and growing with
/// creation (`vm::JobIds` hands them out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a job does. New operations (migration, hotplug, balloon) are new variants here, with
/// their rows in the VM core's admission table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    Start,
    Stop,
    /// Soft reboot: a stop, then a start with the current definition. Hard reboots are
    /// [`Operation::Reset`].
    Reboot,
    /// QMP `system_reset` (a hard reboot in place).
    Reset,
    Pause,
    Resume,
    Cleanup,
    /// A restarted kvmd looking at the run dir: adopting a running QEMU, or recording how it
    /// ended.
    Recovery,
    /// Source: copy the running VM to another node's waiting QEMU.
    Migrate,
    /// Target: start a QEMU that waits for the VM (`-incoming`), paused.
    Accept,
    /// Source, after a migration: end this QEMU (success) or resume the guest (failure).
    FinalizeSrc,
    /// Target, after a migration: run the guest (success) or drop the waiting QEMU (failure).
    FinalizeDst,
    /// Pin a running VM's threads to host CPUs (`cpu_mask` grammar), live.
    Pin,
    /// Resize the guest's memory with its balloon driver.
    Balloon,
    /// Plug a device into a running VM, or unplug one.
    Hotplug,
}

impl Operation {
    pub const ALL: [Operation; 15] = [
        Operation::Start,
        Operation::Stop,
        Operation::Reboot,
        Operation::Reset,
        Operation::Pause,
        Operation::Resume,
        Operation::Cleanup,
        Operation::Recovery,
        Operation::Migrate,
        Operation::Accept,
        Operation::FinalizeSrc,
        Operation::FinalizeDst,
        Operation::Pin,
        Operation::Balloon,
        Operation::Hotplug,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Reboot => "reboot",
            Operation::Reset => "reset",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Cleanup => "cleanup",
            Operation::Recovery => "recovery",
            Operation::Migrate => "migrate",
            Operation::Accept => "accept",
            Operation::FinalizeSrc => "finalize-src",
            Operation::FinalizeDst => "finalize-dst",
            Operation::Pin => "pin",
            Operation::Balloon => "balloon",
            Operation::Hotplug => "hotplug",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Long operations are persisted in the run dir, so a restarted kvmd finishes (or rolls
    /// back) them; short ones are not.
    pub fn persisted(self) -> bool {
        matches!(
            self,
            Operation::Start
                | Operation::Stop
                | Operation::Reboot
                | Operation::Migrate
                | Operation::Accept
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step that undoes part of an operation (a compensation), recorded as the operation goes
/// and run in reverse when it fails, is cancelled, or is found unfinished by a restarted kvmd.
/// Plain data, so it can be persisted with the job: start uses it now; hotplug and incoming
/// migration add their own steps (device_del, blockdev-del, quitting the incoming QEMU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    /// Remove the run's files from the instance directory (the exit history stays).
    DropRunFiles,
    /// Run the down side of NIC `index` (its hook with `ACTION=down`); the tap itself goes
    /// with the last fd.
    NicDown { index: usize, tap: String },
    /// Give the pool uid back (`security_model = pool`).
    ReleaseUid,
    /// Kill the QEMU this operation spawned (identified by pid and start time).
    KillQemu { pid: u32, start_ticks: u64 },
}

/// The undo steps of one operation, run last-in first-out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UndoStack(Vec<Undo>);

impl UndoStack {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn push(&mut self, step: Undo) {
        self.0.push(step);
    }

    /// The steps in the order they were recorded.
    pub fn steps(&self) -> &[Undo] {
        &self.0
    }

    /// The steps to run, last recorded first; the stack is left empty.
    pub fn take_reversed(&mut self) -> Vec<Undo> {
        let mut steps = std::mem::take(&mut self.0);
        steps.reverse();
        steps
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Undo>> for UndoStack {
    fn from(steps: Vec<Undo>) -> Self {
        Self(steps)
    }
}

/// Where a persisted job was when it was last written: enough for a restarted kvmd to finish
/// it (a stop keeps its deadline) or roll it back (a start runs its undo steps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedJob {
    pub id: JobId,
    pub kind: Operation,
    /// The phase name (as `JobInfo::phase` shows it).
    pub phase: String,
    pub started_at_ms: u64,
    /// The operation's own deadline (a stop's ACPI deadline), wall clock.
    pub deadline_ms: Option<u64>,
    /// The current phase's deadline (SIGTERM grace), wall clock.
    pub phase_deadline_ms: Option<u64>,
    /// Start: leave the guest paused.
    pub paused: bool,
    /// Stop: kill at once.
    pub force: bool,
    /// Stop or reboot: the stop timeout asked for, in milliseconds.
    pub timeout_ms: u64,
    /// Reboot: the stop half is done and the start half began.
    pub restarting: bool,
    /// What undoes the operation so far.
    pub undo: Vec<Undo>,
    /// Migrate: where the VM goes (as the operator named it).
    pub target: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_steps_run_last_recorded_first() {
        let mut u = UndoStack::new();
        u.push(Undo::DropRunFiles);
        u.push(Undo::NicDown {
            index: 0,
            tap: "tap0".into(),
        });
        u.push(Undo::KillQemu {
            pid: 7,
            start_ticks: 1,
        });
        let order: Vec<_> = u.take_reversed();
        assert!(matches!(order[0], Undo::KillQemu { .. }));
        assert_eq!(order[2], Undo::DropRunFiles);
        assert!(u.is_empty());
    }

    #[test]
    fn operations_round_trip_by_name() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
        assert_eq!(Operation::parse("snapshot"), None);
    }
}
