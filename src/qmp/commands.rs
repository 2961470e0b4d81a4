//! Typed QMP commands: methods on [`Qmp`] that take and return Rust types, each under the
//! client's default command deadline (use [`Qmp::with_timeout`] for another one), and the types
//! they return.
//!
//! Invariant: no JSON here — `wire.rs` encodes the arguments and decodes the replies — and no
//! policy: a command's failure is returned to the caller, never acted upon.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::client::Qmp;
use super::{wire, QmpError};

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

fn reply<T>(command: &str, decoded: Result<T, String>) -> Result<T, QmpError> {
    decoded.map_err(|reason| QmpError::Reply {
        command: command.into(),
        reason,
    })
}

impl Qmp {
    /// `query-status`: the run state.
    pub async fn query_status(&self) -> Result<Status, QmpError> {
        let v = self.call("query-status", None, None).await?;
        reply("query-status", wire::decode_status(v))
    }

    /// `cont`: run the guest (leave `prelaunch` or `paused`).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.call("cont", None, None).await.map(drop)
    }

    /// `stop`: pause the guest.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.call("stop", None, None).await.map(drop)
    }

    /// `system_powerdown`: press the ACPI power button (the guest decides what to do).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.call("system_powerdown", None, None).await.map(drop)
    }

    /// `system_reset`: reset the machine.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.call("system_reset", None, None).await.map(drop)
    }

    /// `quit`: make QEMU exit. A connection that closes before the reply arrives counts as
    /// success (QEMU was on its way out); one already closed before sending does not.
    pub async fn quit(&self) -> Result<(), QmpError> {
        if self.is_closed() {
            return Err(QmpError::Closed);
        }
        match self.call("quit", None, None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `query-cpus-fast`: each vCPU's host thread. A reply lacking a thread id is an error
    /// rather than a shorter list.
    pub async fn query_cpus_fast(&self) -> Result<Vec<CpuThread>, QmpError> {
        let v = self.call("query-cpus-fast", None, None).await?;
        reply("query-cpus-fast", wire::decode_cpus(v))
    }

    /// `set_password`: set the VNC or SPICE password. The password is never logged.
    pub async fn set_password(&self, protocol: Display, password: &str) -> Result<(), QmpError> {
        let args = wire::args_set_password(protocol, password);
        self.call("set_password", args, None).await.map(drop)
    }

    /// `query-version`: QEMU's version (the same as the greeting's).
    pub async fn query_version(&self) -> Result<QemuVersion, QmpError> {
        let v = self.call("query-version", None, None).await?;
        reply("query-version", wire::decode_version(v))
    }

    /// `query-machines`: the machine types this binary offers.
    pub async fn query_machines(&self) -> Result<Vec<MachineInfo>, QmpError> {
        let v = self.call("query-machines", None, None).await?;
        reply("query-machines", wire::decode_machines(v))
    }

    /// `qom-list-types`: names of the types implementing `implements`; abstract ones too when
    /// `abstract_` is true.
    pub async fn qom_list_types(
        &self,
        implements: &str,
        abstract_: bool,
    ) -> Result<Vec<String>, QmpError> {
        let args = wire::args_qom_list_types(implements, abstract_);
        let v = self.call("qom-list-types", args, None).await?;
        reply("qom-list-types", wire::decode_type_names(v))
    }

    /// `getfd`: hand QEMU a file descriptor (SCM_RIGHTS, in the same `sendmsg` as the
    /// command) under `name`, for later use by name (`fd=name` in `netdev_add`, ...).
    pub async fn getfd(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        let args = wire::args_fdname(name);
        self.call("getfd", args, Some(fd.as_raw_fd()))
            .await
            .map(drop)
    }

    /// `closefd`: close a descriptor QEMU received with [`Qmp::getfd`].
    pub async fn closefd(&self, name: &str) -> Result<(), QmpError> {
        let args = wire::args_fdname(name);
        self.call("closefd", args, None).await.map(drop)
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
