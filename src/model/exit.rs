//! How a QEMU ended and what that means: the exit status, the record kept on disk, and the
//! classifier (user shutdown, admin stop, crash, restart for `reboot_behavior = exit`).
//!
//! Invariant: pure; no actix, no I/O, no clock. The VM core feeds [`classify_exit`] facts.

use serde::{Deserialize, Serialize};

/// How a QEMU process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(sig)) => write!(
                f,
                "killed by signal {sig} ({})",
                nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("?")
            ),
            (Some(code), None) => write!(f, "exit status {code}"),
            (None, None) => f.write_str("exit status unknown (not kvmd's child)"),
        }
    }
}

/// How the last QEMU of an instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitKind {
    /// Stopped by kvmd on request.
    Stopped,
    /// The guest powered itself off.
    UserDown,
    /// QEMU died without being asked to.
    Crashed,
    /// The VM moved to another node (`finalize-src --success` ended this QEMU).
    Migrated,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub kind: ExitKind,
    /// Human explanation, e.g. "guest powered off" or "killed by signal 9 (SIGKILL)".
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Last lines QEMU wrote to stderr.
    pub stderr_tail: Vec<String>,
    pub pid: u32,
    pub at_ms: u64,
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
