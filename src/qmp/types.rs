//! The typed results of QMP commands (run states, vCPU threads, versions, machines, the state
//! of a migration) and the arguments that are more than a string (displays, migration
//! parameters).
//!
//! Invariant: plain data; no JSON (that is `wire.rs`), no I/O.

use std::fmt;

/// A VM run state as `query-status` reports it (QEMU's `RunState`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// QEMU is running on a debugger.
    Debug,
    /// Paused to finish a migration.
    FinishMigrate,
    /// Paused waiting for an incoming migration.
    Inmigrate,
    /// An internal error prevents further guest execution.
    InternalError,
    /// Paused after an I/O error (the disk's error policy is `stop`).
    IoError,
    /// Paused with `stop`.
    Paused,
    /// Paused after a successful outgoing migration.
    Postmigrate,
    /// Started with `-S` and not yet run.
    Prelaunch,
    /// Paused before machine creation (`--preconfig`).
    Preconfig,
    /// Paused to restore VM state.
    RestoreVm,
    /// The guest runs.
    Running,
    /// Paused to save VM state.
    SaveVm,
    /// Shut down, with `-no-shutdown`.
    Shutdown,
    /// Suspended (ACPI S3).
    Suspended,
    /// Paused by a watchdog.
    Watchdog,
    /// Paused after a guest panic.
    GuestPanicked,
    /// Paused for a COLO checkpoint.
    Colo,
    /// A state this version of kvmd does not know, as QEMU spelled it.
    Other(String),
}

const RUN_STATES: [(&str, RunState); 17] = [
    ("debug", RunState::Debug),
    ("finish-migrate", RunState::FinishMigrate),
    ("inmigrate", RunState::Inmigrate),
    ("internal-error", RunState::InternalError),
    ("io-error", RunState::IoError),
    ("paused", RunState::Paused),
    ("postmigrate", RunState::Postmigrate),
    ("prelaunch", RunState::Prelaunch),
    ("preconfig", RunState::Preconfig),
    ("restore-vm", RunState::RestoreVm),
    ("running", RunState::Running),
    ("save-vm", RunState::SaveVm),
    ("shutdown", RunState::Shutdown),
    ("suspended", RunState::Suspended),
    ("watchdog", RunState::Watchdog),
    ("guest-panicked", RunState::GuestPanicked),
    ("colo", RunState::Colo),
];

impl RunState {
    /// QEMU's spelling to a state; never fails (unknown spellings are `Other`).
    pub fn parse(s: &str) -> RunState {
        RUN_STATES
            .iter()
            .find(|(name, _)| *name == s)
            .map_or_else(|| RunState::Other(s.to_string()), |(_, st)| st.clone())
    }

    /// QEMU's spelling of the state.
    pub fn as_str(&self) -> &str {
        match self {
            RunState::Other(s) => s,
            known => RUN_STATES
                .iter()
                .find(|(_, st)| st == known)
                .map(|(name, _)| *name)
                .expect("every named state is in the table"),
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to `query-status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub run_state: RunState,
    /// Whether guest vCPUs run (true only in `Running`, and while debugging).
    pub running: bool,
}

/// One vCPU and its host thread, from `query-cpus-fast`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuThread {
    pub cpu_index: u32,
    pub thread_id: u32,
}

/// The guest's memory statistics from its balloon driver (`guest-stats`), bytes and counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    pub total: u64,
    /// Memory the guest does not use at all.
    pub free: u64,
    /// What the guest could use without swapping (its `MemAvailable`).
    pub available: u64,
    /// Its page cache.
    pub disk_caches: u64,
    pub major_faults: u64,
    pub minor_faults: u64,
    pub swap_in: u64,
    pub swap_out: u64,
    /// When the guest sent them (seconds since the epoch; 0: never).
    pub last_update: u64,
}

/// One block device's counters, from `query-blockstats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Its device id (`qdev`, the last part of its QOM path), else its node name.
    pub id: String,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
    pub flush_ops: u64,
    pub rd_time_ns: u64,
    pub wr_time_ns: u64,
}

/// One PCI device, from `query-pci`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// The id of the bridge (root port) it sits behind; empty on the root bus.
    pub bus: String,
    pub slot: u8,
    /// Its device id (`qdev_id`; empty for QEMU's own devices).
    pub id: String,
    /// A memory BAR is mapped: the guest has taken the device (enumerated and enabled it).
    pub mapped: bool,
}

/// QEMU's version, from the greeting or `query-version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    /// The distribution's package string, trimmed (may be empty).
    pub package: String,
}

/// One machine type, from `query-machines`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInfo {
    pub name: String,
    pub alias: Option<String>,
    pub is_default: bool,
}

/// The remote display a password is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    Vnc,
    Spice,
}

impl Display {
    pub fn as_str(self) -> &'static str {
        match self {
            Display::Vnc => "vnc",
            Display::Spice => "spice",
        }
    }
}

/// A migration's status as `query-migrate` and the `MIGRATION` event spell it (QEMU's
/// `MigrationStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MigrationStatus {
    /// No migration has run (`query-migrate` answers `{}` then).
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecover,
    Completed,
    Failed,
    Colo,
    PreSwitchover,
    Device,
    WaitUnplug,
    /// A status this version of kvmd does not know, as QEMU spelled it.
    Other(String),
}

const MIGRATION_STATUSES: [(&str, MigrationStatus); 14] = [
    ("none", MigrationStatus::None),
    ("setup", MigrationStatus::Setup),
    ("cancelling", MigrationStatus::Cancelling),
    ("cancelled", MigrationStatus::Cancelled),
    ("active", MigrationStatus::Active),
    ("postcopy-active", MigrationStatus::PostcopyActive),
    ("postcopy-paused", MigrationStatus::PostcopyPaused),
    ("postcopy-recover", MigrationStatus::PostcopyRecover),
    ("completed", MigrationStatus::Completed),
    ("failed", MigrationStatus::Failed),
    ("colo", MigrationStatus::Colo),
    ("pre-switchover", MigrationStatus::PreSwitchover),
    ("device", MigrationStatus::Device),
    ("wait-unplug", MigrationStatus::WaitUnplug),
];

impl MigrationStatus {
    /// QEMU's spelling to a status; never fails (unknown spellings are `Other`).
    pub fn parse(s: &str) -> MigrationStatus {
        MIGRATION_STATUSES
            .iter()
            .find(|(name, _)| *name == s)
            .map_or_else(
                || MigrationStatus::Other(s.to_string()),
                |(_, st)| st.clone(),
            )
    }

    /// QEMU's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            MigrationStatus::Other(s) => s,
            known => MIGRATION_STATUSES
                .iter()
                .find(|(_, st)| st == known)
                .map(|(name, _)| *name)
                .expect("every named status is in the table"),
        }
    }

    /// The migration is over, one way or the other.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RAM figures of a migration (`query-migrate`'s `ram`), in bytes unless named otherwise.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationRam {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    /// Pages dirtied per second.
    pub dirty_pages_rate: u64,
    /// The transfer rate, in megabits per second.
    pub mbps: f64,
    /// How many passes over dirty memory began (QEMU's `dirty-sync-count`).
    pub dirty_sync_count: u64,
    pub page_size: u64,
    pub postcopy_requests: u64,
}

/// The answer to `query-migrate`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationInfo {
    pub status: Option<MigrationStatus>,
    /// Milliseconds since the migration began (final once it ended).
    pub total_time_ms: Option<u64>,
    /// The guest's pause at switchover, in milliseconds (once completed).
    pub downtime_ms: Option<u64>,
    /// QEMU's estimate of the pause, in milliseconds (while active).
    pub expected_downtime_ms: Option<u64>,
    pub setup_time_ms: Option<u64>,
    pub ram: Option<MigrationRam>,
    /// The throttle auto-converge applies now, in percent (while active).
    pub cpu_throttle_percentage: Option<u64>,
    /// Why it failed, as QEMU says.
    pub error_desc: Option<String>,
}

/// Migration parameters to set (`migrate-set-parameters`); `None` leaves one as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationParams {
    /// Bytes per second.
    pub max_bandwidth: Option<u64>,
    /// Milliseconds.
    pub downtime_limit: Option<u64>,
    /// Bytes per second during postcopy (0: unlimited).
    pub max_postcopy_bandwidth: Option<u64>,
    /// Percent.
    pub cpu_throttle_initial: Option<u64>,
    pub cpu_throttle_increment: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_run_state_round_trips_through_its_spelling() {
        for (name, state) in RUN_STATES.iter() {
            assert_eq!(&RunState::parse(name), state);
            assert_eq!(state.as_str(), *name);
        }
    }

    #[test]
    fn an_unknown_run_state_is_kept_as_qemu_spelled_it() {
        let s = RunState::parse("hibernating");
        assert_eq!(s, RunState::Other("hibernating".into()));
        assert_eq!(s.to_string(), "hibernating");
        assert_eq!(
            RunState::parse("Running"),
            RunState::Other("Running".into())
        );
    }

    #[test]
    fn migration_statuses_round_trip_and_unknown_ones_are_kept() {
        for (name, st) in MIGRATION_STATUSES.iter() {
            assert_eq!(&MigrationStatus::parse(name), st);
            assert_eq!(st.as_str(), *name);
        }
        assert_eq!(
            MigrationStatus::parse("postcopy-warp"),
            MigrationStatus::Other("postcopy-warp".into())
        );
        assert!(MigrationStatus::Completed.is_final());
        assert!(!MigrationStatus::PostcopyActive.is_final());
    }

    #[test]
    fn displays_are_spelled_as_set_password_expects() {
        assert_eq!(Display::Vnc.as_str(), "vnc");
        assert_eq!(Display::Spice.as_str(), "spice");
    }
}
