//! The VM state machine's pure parts: the states operators see, which requests each state
//! allows, and how a QEMU exit is classified (user shutdown, admin stop, crash).
//!
//! Invariant: no actix, no I/O, no clock; the VM actor feeds it facts.

use serde::Serialize;

use crate::process::ExitStatus;
use crate::runtime::ExitKind;

/// What `info` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
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
}

impl VmState {
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
        }
    }

    /// A QEMU process exists (or is being started/stopped).
    pub fn has_process(self) -> bool {
        !matches!(
            self,
            VmState::Stopped | VmState::UserDown | VmState::Crashed
        )
    }

    /// The state after an exit of the given kind.
    pub fn after_exit(kind: ExitKind) -> Self {
        match kind {
            ExitKind::Stopped => VmState::Stopped,
            ExitKind::UserDown => VmState::UserDown,
            ExitKind::Crashed => VmState::Crashed,
        }
    }
}

/// A QMP `SHUTDOWN` event's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownEvent {
    pub guest: bool,
    pub reason: String,
}

/// Everything known when QEMU exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitFacts {
    /// kvmd was stopping the VM (ACPI request or signals of its own).
    pub stop_requested: bool,
    /// The last `SHUTDOWN` event seen, if any.
    pub shutdown: Option<ShutdownEvent>,
    pub status: ExitStatus,
    /// `reboot_behavior = exit`: a guest reboot makes QEMU exit and kvmd start it again.
    pub reboot_exits: bool,
}

/// What an exit means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitVerdict {
    Stopped,
    UserDown,
    /// The guest rebooted under `-no-reboot`: start QEMU again.
    RestartForReboot,
    Crashed(String),
}

/// Classify an exit. Ganeti's rule, made precise with the SHUTDOWN event's `guest` and
/// `reason` fields: a guest-initiated power-off that kvmd did not ask for is a user shutdown.
/// A SIGTERM from someone else is *not* (Ganeti's kvmd gets this wrong).
pub fn classify_exit(f: &ExitFacts) -> ExitVerdict {
    if f.stop_requested {
        return ExitVerdict::Stopped;
    }
    match &f.shutdown {
        Some(ShutdownEvent {
            guest: true,
            reason,
        }) if reason == "guest-shutdown" => ExitVerdict::UserDown,
        // Under -no-reboot, a guest reboot and a hard reset (QMP system_reset) both end QEMU.
        Some(ShutdownEvent { reason, .. })
            if f.reboot_exits && (reason == "guest-reset" || reason == "host-qmp-system-reset") =>
        {
            ExitVerdict::RestartForReboot
        }
        Some(ShutdownEvent { reason, .. }) if reason == "guest-panic" => {
            ExitVerdict::Crashed("guest panicked".into())
        }
        Some(ShutdownEvent {
            guest: false,
            reason,
        }) if reason == "host-signal" => ExitVerdict::Crashed(format!(
            "terminated by a signal from outside kvmd ({})",
            f.status
        )),
        Some(ShutdownEvent { guest, reason }) => ExitVerdict::Crashed(format!(
            "QEMU shut down unexpectedly (SHUTDOWN guest={guest} reason={reason}; {})",
            f.status
        )),
        None => ExitVerdict::Crashed(format!("QEMU died: {}", f.status)),
    }
}

/// How a stop ended, as reported to the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopEnd {
    /// The guest powered off after the ACPI power button.
    Acpi,
    /// QEMU exited on SIGTERM.
    Sigterm,
    /// QEMU had to be killed.
    Sigkill,
    /// Nothing was running.
    AlreadyStopped,
}

impl StopEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            StopEnd::Acpi => "acpi",
            StopEnd::Sigterm => "sigterm",
            StopEnd::Sigkill => "sigkill",
            StopEnd::AlreadyStopped => "already-stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        stop: bool,
        ev: Option<(bool, &str)>,
        code: Option<i32>,
        sig: Option<i32>,
    ) -> ExitFacts {
        ExitFacts {
            stop_requested: stop,
            shutdown: ev.map(|(guest, r)| ShutdownEvent {
                guest,
                reason: r.into(),
            }),
            status: ExitStatus { code, signal: sig },
            reboot_exits: false,
        }
    }

    #[test]
    fn guest_poweroff_without_our_request_is_a_user_shutdown() {
        assert_eq!(
            classify_exit(&facts(false, Some((true, "guest-shutdown")), Some(0), None)),
            ExitVerdict::UserDown
        );
    }

    #[test]
    fn guest_poweroff_after_our_acpi_request_is_an_admin_stop() {
        assert_eq!(
            classify_exit(&facts(true, Some((true, "guest-shutdown")), Some(0), None)),
            ExitVerdict::Stopped
        );
    }

    #[test]
    fn a_foreign_sigterm_is_not_a_user_shutdown() {
        let v = classify_exit(&facts(false, Some((false, "host-signal")), Some(0), None));
        assert!(
            matches!(v, ExitVerdict::Crashed(ref r) if r.contains("outside kvmd")),
            "{v:?}"
        );
    }

    #[test]
    fn death_without_shutdown_event_is_a_crash_with_the_signal() {
        let v = classify_exit(&facts(false, None, None, Some(9)));
        assert_eq!(
            v,
            ExitVerdict::Crashed("QEMU died: killed by signal 9 (SIGKILL)".into())
        );
    }

    #[test]
    fn guest_reboot_under_no_reboot_restarts_only_when_asked() {
        let mut f = facts(false, Some((true, "guest-reset")), Some(0), None);
        assert!(matches!(classify_exit(&f), ExitVerdict::Crashed(_)));
        f.reboot_exits = true;
        assert_eq!(classify_exit(&f), ExitVerdict::RestartForReboot);
    }

    #[test]
    fn a_hard_reset_under_no_reboot_restarts() {
        let mut f = facts(false, Some((false, "host-qmp-system-reset")), Some(0), None);
        f.reboot_exits = true;
        assert_eq!(classify_exit(&f), ExitVerdict::RestartForReboot);
    }

    #[test]
    fn guest_panic_is_a_crash() {
        assert_eq!(
            classify_exit(&facts(false, Some((true, "guest-panic")), Some(0), None)),
            ExitVerdict::Crashed("guest panicked".into())
        );
    }
}
