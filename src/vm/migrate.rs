//! The VM actor's side of a migration, around the coordinator actor: the plan from the VM's
//! hvparams, the source guest after the coordinator ended (resumed after a failure, when the
//! core said so and postcopy never began), settling a migration a previous kvmd began, and
//! the target's two QMP steps (listen for the VM; run it once it arrived).
//!
//! Invariant: every QMP command under the client's deadline; polling loops are bounded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::migration::coordinator::{self, Outcome, Plan, Summary, CANCEL_GRACE};
use crate::migration::policy::{Path, PolicyConfig};
use crate::model::hvparams::{key, HvParams};
use crate::model::spec::NodeConfig;
use crate::qmp::{MigrationStatus, Notice, Qmp, QmpEvent, RunState};
use crate::vm::core::{IncomingPlan, MigrateEnd, MigrateOutcome};

use super::error::VmError;

/// Where the notices of a QMP connection are teed for the running migration or balloon job
/// (one job at a time).
pub(crate) type Tap = Arc<Mutex<Option<mpsc::Sender<Notice>>>>;

/// Hand `n` to the migration listening on `tap`, if it is one of its events.
pub(super) fn tee(tap: &Tap, n: &Notice) {
    let wanted = matches!(
        n,
        Notice::Event {
            event: QmpEvent::Migration { .. }
                | QmpEvent::MigrationPass { .. }
                | QmpEvent::Stop
                | QmpEvent::Resume
                | QmpEvent::BalloonChange { .. }
                | QmpEvent::DeviceDeleted { .. }
                | QmpEvent::DeviceUnplugGuestError { .. },
            ..
        }
    );
    if wanted {
        if let Some(tx) = tap.lock().expect("migration tap").as_ref() {
            if tx.try_send(n.clone()).is_err() {
                warn!("a migration event was dropped (the coordinator is behind)");
            }
        }
    }
}

/// The connection ended: the migration hears no more events.
pub(super) fn close(tap: &Tap) {
    tap.lock().expect("migration tap").take();
}

/// The migration capabilities the operator asked for (`migration_caps`, `:`-separated).
fn user_caps(hv: &HvParams) -> Vec<String> {
    hv.str(key::MIGRATION_CAPS)
        .split(':')
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

/// What the coordinator is to do for a VM with hvparams `hv` on `node`.
pub(super) fn plan(hv: &HvParams, node: &NodeConfig, uri: &str, live: bool) -> Plan {
    let caps = user_caps(hv);
    let downtime = u64::try_from(hv.int(key::MIGRATION_DOWNTIME)).unwrap_or(0);
    let mut policy = PolicyConfig::for_hvparams(downtime, &caps);
    policy.stall_after = node.migration_stall;
    policy.abort_after_stall = node.migration_abort_after_stall;
    Plan {
        uri: uri.to_string(),
        live: live && hv.str(key::MIGRATION_MODE) != "non-live",
        bandwidth_mib: u64::try_from(hv.int(key::MIGRATION_BANDWIDTH)).unwrap_or(0),
        capabilities: coordinator::capabilities(&caps, &policy),
        policy,
        sample_every: Duration::from_millis(500),
        cancel_grace: CANCEL_GRACE,
    }
}

/// QEMU's run state, `None` when it does not answer.
async fn run_state(qmp: &Qmp) -> Option<RunState> {
    qmp.query_status().await.ok().map(|s| s.run_state)
}

/// After the coordinator: resume the source if the migration did not complete, the core
/// said the guest ran before, and postcopy never began; then say how it ended.
pub(super) async fn finish(qmp: Option<Qmp>, s: &Summary, resume: bool) -> MigrateEnd {
    let postcopy = s.postcopy_started;
    let mut outcome = match &s.outcome {
        Outcome::Completed => MigrateOutcome::Completed,
        Outcome::Cancelled => MigrateOutcome::Cancelled("cancelled".into()),
        Outcome::Failed(why) => MigrateOutcome::Failed(why.clone()),
        Outcome::Unknown(why) => MigrateOutcome::Unknown(why.clone()),
    };
    let Some(qmp) = qmp.filter(|q| !q.is_closed()) else {
        return MigrateEnd {
            outcome,
            running: None,
            postcopy,
        };
    };
    let mut state = run_state(&qmp).await;
    if let (MigrateOutcome::Unknown(_), Some(RunState::Postmigrate)) = (&outcome, &state) {
        // QEMU did not say it, but the source only gets here after a completed migration.
        outcome = MigrateOutcome::Completed;
    }
    let failed = !matches!(outcome, MigrateOutcome::Completed);
    if failed && resume && !postcopy && state != Some(RunState::Running) {
        match qmp.cont().await {
            Ok(()) => {
                info!("the migration did not complete: the guest runs here again");
                state = run_state(&qmp).await;
            }
            Err(e) => warn!(error = %e, "cannot resume the guest after the failed migration"),
        }
    }
    MigrateEnd {
        outcome,
        running: state.map(|s| s == RunState::Running),
        postcopy,
    }
}

/// A migration a previous kvmd began and did not see end: cancel it unless it completed or
/// runs postcopy (then wait for its end, bounded); how it ended, for [`finish`].
pub(super) async fn settle(qmp: Option<Qmp>, resume: bool) -> Summary {
    let unknown = |why: &str| Summary {
        outcome: Outcome::Unknown(why.to_string()),
        total_time_ms: None,
        downtime_ms: None,
        transferred: 0,
        passes: 0,
        path: Path::Precopy,
        downtime_limit_ms: 0,
        stopped_at_us: None,
        completed_at_us: None,
        seen_after_us: None,
        was_running: resume,
        restored: false,
        own_figures: false,
        postcopy_started: false,
    };
    let Some(q) = qmp.as_ref().filter(|q| !q.is_closed()) else {
        return unknown("no QMP connection to the source's QEMU");
    };
    let mut postcopy = false;
    let mut cancelled = false;
    let mut last = None;
    // Bounded: ten minutes of postcopy, or CANCEL_GRACE after a cancel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut cancel_by = deadline;
    while tokio::time::Instant::now() < deadline.min(cancel_by) {
        let status = q.query_migrate().await.ok().and_then(|i| i.status);
        match &status {
            Some(st) if st.is_final() || *st == MigrationStatus::None => {
                last = status;
                break;
            }
            Some(MigrationStatus::PostcopyActive)
            | Some(MigrationStatus::PostcopyPaused)
            | Some(MigrationStatus::PostcopyRecover) => postcopy = true,
            // No answer: nothing known, nothing done; ask again.
            None => {}
            _ if !cancelled => {
                cancelled = true;
                cancel_by = tokio::time::Instant::now() + CANCEL_GRACE;
                if let Err(e) = q.migrate_cancel().await {
                    warn!(error = %e, "cannot cancel the migration found at recovery");
                }
            }
            _ => {}
        }
        last = status;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = q.query_migrate().await.ok();
    Summary {
        total_time_ms: info.as_ref().and_then(|i| i.total_time_ms),
        downtime_ms: info.as_ref().and_then(|i| i.downtime_ms),
        transferred: info
            .as_ref()
            .and_then(|i| i.ram.as_ref())
            .map_or(0, |r| r.transferred),
        path: if postcopy {
            Path::Postcopy
        } else {
            Path::Precopy
        },
        postcopy_started: postcopy,
        ..unknown("")
    }
    .with_outcome(match last {
        Some(MigrationStatus::Completed) => Outcome::Completed,
        Some(MigrationStatus::Cancelled) if cancelled => {
            Outcome::Failed("kvmd restarted during the migration; it was cancelled".into())
        }
        Some(MigrationStatus::Cancelled) => Outcome::Cancelled,
        Some(MigrationStatus::Failed) => Outcome::Failed("QEMU reports it failed".into()),
        Some(MigrationStatus::None) => {
            Outcome::Failed("kvmd restarted before the migration began".into())
        }
        other => Outcome::Unknown(format!(
            "QEMU did not say how the migration ended ({})",
            other.map_or("no answer".into(), |s| s.to_string())
        )),
    })
}

/// Target: turn on the source's capabilities and listen for the VM.
pub(super) async fn listen(qmp: &Qmp, plan: &IncomingPlan) -> Result<(), VmError> {
    let caps: Vec<(&str, bool)> = plan
        .capabilities
        .iter()
        .map(|c| (c.as_str(), true))
        .collect();
    qmp.migrate_set_capabilities(&caps)
        .await
        .map_err(VmError::Incoming)?;
    qmp.migrate_incoming(&plan.uri)
        .await
        .map_err(VmError::Incoming)
}

/// Target: run the guest, only if QEMU says the incoming migration completed.
pub(super) async fn run_incoming(qmp: &Qmp) -> Result<(), VmError> {
    let info = qmp.query_migrate().await.map_err(VmError::Qmp)?;
    match info.status {
        Some(MigrationStatus::Completed) => qmp.cont().await.map_err(VmError::Resume),
        other => Err(VmError::IncomingIncomplete(
            other.map_or("nothing".into(), |s| s.to_string()),
        )),
    }
}
