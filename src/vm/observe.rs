//! Observing a QEMU without telling anyone yet: its exit (a pidfd watch) and what its QMP
//! events and run states mean for the core.
//!
//! Invariant: no reporting here (that is `watch`); these only produce values.

use tokio::sync::watch;
use tracing::warn;

use crate::host::process::{self, QemuProcess};
use crate::model::exit::ExitStatus;
use crate::qmp::QmpEvent;
use crate::vm::core::{GuestEvent, RunState};

/// Watch a QEMU's pidfd; the status is published on the returned channel when it exits.
pub(super) fn exit_watch(
    process: &QemuProcess,
) -> std::io::Result<watch::Receiver<Option<ExitStatus>>> {
    let pidfd = process.try_clone_pidfd()?;
    let (pid, own) = (process.pid, process.own_child);
    let (tx, rx) = watch::channel(None);
    actix::spawn(async move {
        let status = match process::wait_exit(pidfd, pid, own).await {
            Ok(s) => s,
            Err(e) => {
                warn!(pid, error = %e, "waiting for QEMU exit failed");
                ExitStatus::default()
            }
        };
        let _ = tx.send(Some(status));
    });
    Ok(rx)
}

/// The core's view of a QMP event (`None`: nothing the core acts on).
pub(super) fn guest_event(e: QmpEvent) -> Option<GuestEvent> {
    Some(match e {
        QmpEvent::Shutdown { guest, reason } => GuestEvent::Shutdown { guest, reason },
        QmpEvent::Reset { guest, reason } => GuestEvent::Reset { guest, reason },
        QmpEvent::Stop => GuestEvent::Stop,
        QmpEvent::Resume => GuestEvent::Resume,
        QmpEvent::Powerdown => GuestEvent::Powerdown,
        QmpEvent::GuestPanicked { action } => GuestEvent::Panicked { action },
        QmpEvent::DeviceDeleted {
            device: Some(id), ..
        } => GuestEvent::DeviceDeleted { id },
        QmpEvent::BlockIoError {
            device,
            operation,
            action,
            reason,
            ..
        } => GuestEvent::BlockIoError {
            device,
            operation,
            action,
            reason,
        },
        _ => return None,
    })
}

/// The core's view of QEMU's run state.
pub(super) fn run_state(s: crate::qmp::RunState) -> RunState {
    use crate::qmp::RunState as Q;
    match s {
        Q::Running => RunState::Running,
        Q::Paused | Q::Suspended => RunState::Paused,
        Q::Prelaunch => RunState::Prelaunch,
        other => RunState::Other(other.as_str().to_string()),
    }
}
