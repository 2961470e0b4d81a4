//! Operations as jobs: what kind of operation, and its id.
//!
//! Every operation on a VM (start, stop, reboot, pause, resume, cleanup, and the recovery a
//! restarted kvmd does) is a job with an id, so it can be watched (`kvmctl job`), waited for,
//! cancelled where that makes sense, and, for the long ones, finished by a restarted kvmd.
//!
//! Invariant: plain data; no actix, no I/O, no clock.

use std::fmt;

/// A job's id: unique on this host across kvmd restarts (the creation time in milliseconds,
/// shifted, plus a counter), and sortable by creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl JobId {
    /// The id of the `n`-th job created in millisecond `now_ms` (n < 4096).
    pub fn new(now_ms: u64, n: u64) -> Self {
        JobId((now_ms << 12) | (n & 0xfff))
    }
}

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
}

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::Start,
        Operation::Stop,
        Operation::Reboot,
        Operation::Reset,
        Operation::Pause,
        Operation::Resume,
        Operation::Cleanup,
        Operation::Recovery,
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
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Long operations are persisted in the run dir, so a restarted kvmd finishes (or rolls
    /// back) them; short ones are not.
    pub fn persisted(self) -> bool {
        matches!(self, Operation::Start | Operation::Stop | Operation::Reboot)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_and_do_not_collide_within_a_millisecond() {
        let a = JobId::new(1_700_000_000_000, 1);
        let b = JobId::new(1_700_000_000_000, 2);
        let c = JobId::new(1_700_000_000_001, 0);
        assert!(a < b && b < c);
    }

    #[test]
    fn operations_round_trip_by_name() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
        assert_eq!(Operation::parse("migrate"), None);
    }
}
