//! The typed results of QMP commands (run states, vCPU threads, versions, machines) and the
//! displays a password can be set for.
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
    fn displays_are_spelled_as_set_password_expects() {
        assert_eq!(Display::Vnc.as_str(), "vnc");
        assert_eq!(Display::Spice.as_str(), "spice");
    }
}
