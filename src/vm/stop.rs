//! The stop task: the ACPI power button (pressed again every `acpi_resend_interval`) until
//! the stop's deadline, then SIGTERM, then SIGKILL — each phase reported (and persisted by
//! the core) with its deadline, so a restarted kvmd picks the stop up where it was. It waits
//! for QEMU's exit itself (the pidfd), never for the exit record.
//!
//! A paused guest cannot hear the button (the core says so at the start, or sends
//! [`TaskControl::GuestPaused`] when the guest pauses meanwhile): then SIGTERM at once.
//! [`TaskControl::Escalate`] (a forced stop joined) goes to SIGKILL; [`TaskControl::Cancel`]
//! ends the ACPI phase without a stop.
//!
//! Invariant: reports through the [`Reporter`] only.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::host::clock::now_ms;
use crate::host::process::QemuProcess;
use crate::model::exit::ExitStatus;
use crate::model::job::JobId;
use crate::model::state::StopEnd;
use crate::qmp::Qmp;
use crate::vm::core::{Input, StopPhase, TaskControl};

use super::error::VmError;
use super::report::Reporter;

pub(super) struct StopCtx {
    pub job: JobId,
    pub gen: u64,
    pub acpi: bool,
    pub from: StopPhase,
    /// End of the ACPI phase, wall clock.
    pub deadline_ms: u64,
    /// End of the SIGTERM grace when resuming in that phase, wall clock.
    pub kill_at_ms: Option<u64>,
    pub resend: Duration,
    pub sigterm_grace: Duration,
    pub sigkill_wait: Duration,
    pub process: Arc<QemuProcess>,
    pub exit: watch::Receiver<Option<ExitStatus>>,
    pub qmp: Option<Qmp>,
    pub control: mpsc::UnboundedReceiver<TaskControl>,
    pub report: Reporter,
}

/// How a wait ended.
enum Woke {
    Exited,
    Timeout,
    Control(TaskControl),
}

fn until(ms: u64) -> Duration {
    Duration::from_millis(ms.saturating_sub(now_ms()))
}

async fn wait(s: &mut StopCtx, limit: Duration) -> Woke {
    let mut exit = s.exit.clone();
    tokio::select! {
        r = exit.wait_for(|e| e.is_some()) => {
            // A closed watch means the watcher is gone: treat as exited (it only ends so).
            let _ = r;
            Woke::Exited
        }
        _ = tokio::time::sleep(limit) => Woke::Timeout,
        c = s.control.recv() => match c {
            Some(c) => Woke::Control(c),
            None => { tokio::time::sleep(limit).await; Woke::Timeout }
        },
    }
}

fn phase(s: &StopCtx, phase: StopPhase, deadline_ms: Option<u64>) {
    s.report.input(Input::Phase {
        job: s.job,
        phase: phase.as_str().into(),
        deadline_ms,
        progress: None,
        undo: None,
    });
}

pub(super) async fn run(mut s: StopCtx) {
    let result = stop(&mut s).await.map_err(|e| e.to_api());
    let (job, gen) = (s.job, s.gen);
    s.report.input(Input::StopDone { job, gen, result });
}

async fn stop(s: &mut StopCtx) -> Result<StopEnd, VmError> {
    let started = now_ms();
    let mut from = s.from;
    if from == StopPhase::Acpi && !(s.acpi && s.qmp.is_some()) {
        from = StopPhase::Sigterm;
    }
    if from == StopPhase::Acpi {
        match acpi(s).await? {
            Some(end) => return Ok(end),
            None => from = StopPhase::Sigterm,
        }
    }
    if from == StopPhase::Sigterm {
        let kill_at = match s.kill_at_ms {
            // Resumed in this phase: SIGTERM was sent already; keep its deadline.
            Some(at) if s.from == StopPhase::Sigterm => at,
            _ => {
                warn!("sending SIGTERM");
                s.process.signal(Signal::SIGTERM).map_err(VmError::Signal)?;
                now_ms() + ms(s.sigterm_grace)
            }
        };
        phase(s, StopPhase::Sigterm, Some(kill_at));
        loop {
            match wait(s, until(kill_at)).await {
                Woke::Exited => return Ok(StopEnd::Sigterm),
                Woke::Timeout | Woke::Control(TaskControl::Escalate) => break,
                // Too late to take SIGTERM back; the stop goes on.
                Woke::Control(_) => continue,
            }
        }
    }
    warn!("QEMU is still there; sending SIGKILL");
    let killed_at = now_ms() + ms(s.sigkill_wait);
    phase(s, StopPhase::Sigkill, Some(killed_at));
    s.process.signal(Signal::SIGKILL).map_err(VmError::Signal)?;
    loop {
        match wait(s, until(killed_at)).await {
            Woke::Exited => {
                info!(ms = now_ms().saturating_sub(started), "stopped");
                return Ok(StopEnd::Sigkill);
            }
            Woke::Timeout => return Err(VmError::WouldNotDie),
            Woke::Control(_) => continue,
        }
    }
}

/// The power-button phase: `Some(end)` if the stop ended in it, `None` to go on to SIGTERM.
async fn acpi(s: &mut StopCtx) -> Result<Option<StopEnd>, VmError> {
    let qmp = s.qmp.clone().ok_or(VmError::NoProcess)?;
    loop {
        if let Err(e) = qmp.system_powerdown().await {
            warn!(error = %e, "system_powerdown failed");
        }
        let left = until(s.deadline_ms);
        if left.is_zero() {
            return Ok(None);
        }
        match wait(s, s.resend.min(left)).await {
            Woke::Exited => return Ok(Some(StopEnd::Acpi)),
            Woke::Timeout if until(s.deadline_ms).is_zero() => return Ok(None),
            Woke::Timeout => info!("guest still running; pressing the power button again"),
            Woke::Control(TaskControl::Cancel) => {
                return Err(VmError::Cancelled("The stop was cancelled".into()))
            }
            Woke::Control(TaskControl::GuestPaused) => {
                info!("the guest is paused and cannot hear the power button");
                return Ok(None);
            }
            Woke::Control(TaskControl::Escalate) => {
                s.from = StopPhase::Sigkill;
                s.kill_at_ms = Some(0);
                return escalate(s).await.map(Some);
            }
        }
    }
}

/// A forced stop joined: kill now.
async fn escalate(s: &mut StopCtx) -> Result<StopEnd, VmError> {
    let killed_at = now_ms() + ms(s.sigkill_wait);
    phase(s, StopPhase::Sigkill, Some(killed_at));
    s.process.signal(Signal::SIGKILL).map_err(VmError::Signal)?;
    match wait(s, until(killed_at)).await {
        Woke::Exited => Ok(StopEnd::Sigkill),
        _ => Err(VmError::WouldNotDie),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
