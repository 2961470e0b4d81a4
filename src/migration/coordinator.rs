//! The migration coordinator on the source: an actor around one outgoing migration.
//!
//! It sets `migration_bandwidth`, `migration_downtime` and the capabilities (always `events`
//! and `return-path`: without it a failed destination looks like a completed migration),
//! remembering what was there before; pauses the guest first for a non-live migration;
//! issues `migrate`; follows the migration from `MIGRATION` and `MIGRATION_PASS` events, so
//! completion is seen when QEMU announces it, and samples `query-migrate` for the progress
//! figures and as a safety net (a failed or unrecognised answer is retried under the
//! policy's bound); carries out the policy's decisions (downtime, postcopy, stall, abort);
//! and at the end puts capabilities and parameters back and reports a [`Summary`].
//!
//! What happens to the guests afterwards (resume the source, continue the target, kill the
//! source) is the finalization steps' business, not the coordinator's.
//!
//! Invariant: every QMP command runs under the client's deadline; the coordinator never
//! waits for QEMU without one. It owns no process and no file.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot, watch};

use super::policy::{Decision, Observation, Path, Policy, PolicyConfig};
use crate::host::clock::now_us;
use crate::qmp::{MigrationInfo, MigrationParams, MigrationStatus, Notice, Qmp, QmpEvent};

/// What one migration is to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where to (`tcp:HOST:PORT`, `unix:PATH`).
    pub uri: String,
    /// Live (the guest runs during the copy) or not (paused first, as Ganeti does).
    pub live: bool,
    /// `migration_bandwidth`, MiB/s.
    pub bandwidth_mib: u64,
    pub policy: PolicyConfig,
    /// Every capability to turn on ([`capabilities`]).
    pub capabilities: Vec<String>,
    /// How often `query-migrate` is sampled for the progress figures (and as a safety net).
    pub sample_every: Duration,
    /// After a cancel, how long QEMU has to announce the end before it counts as unknown.
    pub cancel_grace: Duration,
}

/// The capabilities a migration turns on: `events` and `return-path` always, the operator's
/// `migration_caps`, and `auto-converge` when the policy uses it. The target needs the same.
pub fn capabilities(migration_caps: &[String], policy: &PolicyConfig) -> Vec<String> {
    let mut caps: Vec<String> = ["events", "return-path"].map(String::from).to_vec();
    let extra = policy.auto_converge.then(|| "auto-converge".to_string());
    for c in migration_caps.iter().cloned().chain(extra) {
        if !c.is_empty() && !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps
}

/// The figures of a running migration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub status: Option<MigrationStatus>,
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    /// Megabits per second, as QEMU measures it.
    pub mbps: f64,
    pub dirty_pages_rate: u64,
    /// Passes over dirty memory so far.
    pub pass: u64,
    /// The downtime limit in force (ms).
    pub downtime_limit_ms: u64,
    /// No progress for this long (the policy's stall report).
    pub stalled_for: Option<Duration>,
    /// Milliseconds since `migrate` was issued.
    pub elapsed_ms: u64,
}

/// How it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Cancelled on request.
    Cancelled,
    /// Failed or given up, and why.
    Failed(String),
    /// QEMU did not say how it ended (its QMP went away, or a cancel was not confirmed in
    /// time): the settings were left alone, and nothing about the guests may be assumed.
    Unknown(String),
}

/// The account of one migration.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub outcome: Outcome,
    /// QEMU's figures (when it gave them).
    pub total_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub transferred: u64,
    pub passes: u64,
    pub path: Path,
    /// The downtime limit at the end (ms).
    pub downtime_limit_ms: u64,
    /// QEMU's timestamp (µs since the epoch) of the source's STOP: the guest's pause began.
    pub stopped_at_us: Option<u64>,
    /// QEMU's timestamp of the `MIGRATION completed` event, and when kvmd saw it, µs later.
    pub completed_at_us: Option<u64>,
    pub seen_after_us: Option<u64>,
    /// The guest ran on the source when the migration began.
    pub was_running: bool,
    /// Capabilities and parameters were put back as they were.
    pub restored: bool,
    /// `total_time_ms` and `downtime_ms` are kvmd's measure, QEMU's being unusable.
    pub own_figures: bool,
    /// QEMU reported `postcopy-active`: the guest's memory is split between the nodes (a
    /// switch only requested does not count).
    pub postcopy_started: bool,
}

impl Summary {
    /// The same account with another outcome.
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }
}

/// How long QEMU has to announce the end of a cancelled migration, by default.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Drive one migration to its end. `events` are the source QEMU's notices; `cancel` asks for
/// a cancel; `progress` receives the figures as they change.
pub async fn run(
    qmp: Qmp,
    mut events: mpsc::Receiver<Notice>,
    plan: Plan,
    mut cancel: oneshot::Receiver<()>,
    progress: watch::Sender<Progress>,
) -> Summary {
    let mut policy = Policy::new(plan.policy.clone());
    let mut s = Summary {
        outcome: Outcome::Failed("not started".into()),
        total_time_ms: None,
        downtime_ms: None,
        transferred: 0,
        passes: 0,
        path: Path::Precopy,
        downtime_limit_ms: plan.policy.downtime_ms,
        stopped_at_us: None,
        completed_at_us: None,
        seen_after_us: None,
        was_running: false,
        restored: false,
        own_figures: false,
        postcopy_started: false,
    };
    // What is there now, to put it back afterwards.
    let before_caps = match qmp.query_migrate_capabilities().await {
        Ok(c) => c,
        Err(e) => {
            s.outcome = Outcome::Failed(format!("cannot read the migration capabilities: {e}"));
            return s;
        }
    };
    let before_params = qmp.query_migrate_parameters().await.ok();
    s.was_running = match qmp.query_status().await {
        Ok(st) => st.running,
        Err(e) => {
            s.outcome = Outcome::Failed(format!("cannot read the guest's run state: {e}"));
            return s;
        }
    };
    let set: Vec<(&str, bool)> = plan
        .capabilities
        .iter()
        .map(|c| (c.as_str(), true))
        .collect();
    let params = MigrationParams {
        max_bandwidth: Some(plan.bandwidth_mib.saturating_mul(1 << 20)),
        downtime_limit: Some(plan.policy.downtime_ms),
        max_postcopy_bandwidth: Some(plan.bandwidth_mib.saturating_mul(1 << 20)),
        ..MigrationParams::default()
    };
    let mut paused_here = false;
    let started = async {
        qmp.migrate_set_parameters(&params).await?;
        qmp.migrate_set_capabilities(&set).await?;
        if !plan.live && s.was_running {
            qmp.stop().await?;
            paused_here = true;
        }
        qmp.migrate(&plan.uri).await
    }
    .await;
    if let Err(e) = started {
        // A `migrate` that missed its deadline may have started all the same.
        if let Ok(info) = qmp.query_migrate().await {
            if info
                .status
                .is_some_and(|st| st != MigrationStatus::None && !st.is_final())
            {
                let _ = qmp.migrate_cancel().await;
            }
        }
        if paused_here {
            let _ = qmp.cont().await;
        }
        s.outcome = Outcome::Failed(format!("the migration could not start: {e}"));
        s.restored = restore(&qmp, &before_caps, before_params.as_ref()).await;
        return s;
    }
    let t0 = Instant::now();
    let ms = |t0: Instant| u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut fig = Progress {
        downtime_limit_ms: plan.policy.downtime_ms,
        ..Progress::default()
    };
    let mut next_sample = tokio::time::Instant::now();
    let mut cancelling: Option<Outcome> = None;
    // After a cancel, how long QEMU has to announce the end.
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let mut end_by = far;
    let final_status = loop {
        let decisions = tokio::select! {
            n = events.recv() => match n {
                Some(Notice::Event { event, timestamp_us }) => match event {
                    QmpEvent::Migration { status } => {
                        let st = MigrationStatus::parse(&status);
                        if st == MigrationStatus::Completed && timestamp_us > 0 {
                            s.completed_at_us = Some(timestamp_us);
                            s.seen_after_us = Some(now_us().saturating_sub(timestamp_us));
                        }
                        fig.status = Some(st.clone());
                        policy.observe(Observation::Status(st), ms(t0))
                    }
                    QmpEvent::MigrationPass { pass } => {
                        s.passes = s.passes.max(pass);
                        fig.pass = s.passes;
                        policy.observe(Observation::Pass(pass), ms(t0))
                    }
                    QmpEvent::Stop => {
                        s.stopped_at_us.get_or_insert(timestamp_us);
                        Vec::new()
                    }
                    _ => Vec::new(),
                },
                Some(Notice::TimedOut { .. }) => Vec::new(),
                None => break None,
            },
            _ = tokio::time::sleep_until(next_sample) => {
                next_sample = tokio::time::Instant::now() + plan.sample_every;
                match qmp.query_migrate().await {
                    Ok(info) => {
                        take_figures(&info, &mut fig, &mut s);
                        policy.observe(Observation::Sample(info), ms(t0))
                    }
                    Err(e) => policy.observe(Observation::BadAnswer(e.to_string()), ms(t0)),
                }
            }
            // Never once postcopy runs: the guest is on the target by then.
            _ = &mut cancel, if cancelling.is_none() && !policy.postcopy_started() => {
                cancelling = Some(Outcome::Cancelled);
                end_by = tokio::time::Instant::now() + plan.cancel_grace;
                if let Err(e) = qmp.migrate_cancel().await {
                    tracing::warn!(error = %e, "migrate_cancel failed");
                }
                Vec::new()
            }
            _ = tokio::time::sleep_until(end_by) => break None,
        };
        fig.elapsed_ms = ms(t0);
        let mut done = None;
        for d in decisions {
            match d {
                Decision::SetDowntime(limit) => {
                    let p = MigrationParams {
                        downtime_limit: Some(limit),
                        ..MigrationParams::default()
                    };
                    match qmp.migrate_set_parameters(&p).await {
                        Ok(()) => fig.downtime_limit_ms = limit,
                        Err(e) => {
                            tracing::warn!(limit, error = %e, "cannot raise the downtime limit")
                        }
                    }
                }
                Decision::StartPostcopy => {
                    if let Err(e) = qmp.migrate_start_postcopy().await {
                        tracing::warn!(error = %e, "migrate-start-postcopy failed");
                    }
                }
                Decision::RetryIn(after) => {
                    next_sample = tokio::time::Instant::now() + after;
                }
                Decision::Stalled(idle) => fig.stalled_for = Some(idle),
                Decision::Abort(why) | Decision::Failed(why) => {
                    if cancelling.is_none() {
                        cancelling = Some(Outcome::Failed(why));
                        end_by = tokio::time::Instant::now() + plan.cancel_grace;
                        let _ = qmp.migrate_cancel().await;
                    }
                }
                Decision::Finished(st) => done = Some(st),
            }
        }
        s.path = policy.path();
        s.postcopy_started = policy.postcopy_started();
        s.downtime_limit_ms = policy.downtime_ms();
        let _ = progress.send(fig.clone());
        if let Some(st) = done {
            break Some(st);
        }
    };
    // QEMU's final figures, and its word on how it ended when the loop did not hear it.
    let last = qmp.query_migrate().await.ok();
    if let Some(info) = &last {
        take_figures(info, &mut fig, &mut s);
        s.total_time_ms = info.total_time_ms;
        s.downtime_ms = info.downtime_ms;
    }
    // QEMU 7.2 reports 0 ms for both once this QEMU itself arrived by a migration (measured:
    // a VM moved A→B→A; B's outgoing figures were 0). Then kvmd's own measure stands in:
    // from `migrate` to the completed event, and from the STOP to it (QEMU's timestamps).
    if s.completed_at_us.is_some() && s.total_time_ms == Some(0) {
        s.total_time_ms = Some(ms(t0));
        s.downtime_ms = match (s.stopped_at_us, s.completed_at_us) {
            (Some(stop), Some(done)) if done >= stop => Some((done - stop) / 1000),
            _ => None,
        };
        s.own_figures = true;
    }
    let _ = progress.send(fig);
    let status = final_status.or_else(|| {
        last.as_ref()
            .and_then(|i| i.status.clone())
            .filter(MigrationStatus::is_final)
    });
    let Some(status) = status else {
        let seen = last
            .and_then(|i| i.status)
            .map_or("no answer".to_string(), |st| format!("status {st}"));
        s.outcome = Outcome::Unknown(format!(
            "QEMU did not say how the migration ended ({seen}); settings left as they are"
        ));
        return s;
    };
    if let (MigrationStatus::Failed, Some(why)) = (&status, last.and_then(|i| i.error_desc)) {
        cancelling.get_or_insert(Outcome::Failed(why));
    }
    s.outcome = match (status, cancelling) {
        (MigrationStatus::Completed, _) => Outcome::Completed,
        (_, Some(o)) => o,
        (MigrationStatus::Cancelled, None) => Outcome::Cancelled,
        (st, None) => Outcome::Failed(format!("QEMU reports the migration {st}")),
    };
    s.restored = restore(&qmp, &before_caps, before_params.as_ref()).await;
    s
}

fn take_figures(info: &MigrationInfo, fig: &mut Progress, s: &mut Summary) {
    if let Some(st) = &info.status {
        fig.status = Some(st.clone());
    }
    if let Some(ram) = &info.ram {
        if ram.transferred > fig.transferred {
            fig.stalled_for = None;
        }
        fig.transferred = ram.transferred;
        fig.remaining = ram.remaining;
        fig.total = ram.total;
        fig.mbps = ram.mbps;
        fig.dirty_pages_rate = ram.dirty_pages_rate;
        fig.pass = fig.pass.max(ram.dirty_sync_count);
        s.transferred = ram.transferred;
        s.passes = s.passes.max(ram.dirty_sync_count);
    }
}

/// Put the capabilities and parameters back as they were; true when QEMU took them.
async fn restore(qmp: &Qmp, caps: &[(String, bool)], params: Option<&MigrationParams>) -> bool {
    let list: Vec<(&str, bool)> = caps.iter().map(|(c, on)| (c.as_str(), *on)).collect();
    let caps_ok = qmp.migrate_set_capabilities(&list).await.is_ok();
    let params_ok = match params {
        Some(p) => qmp.migrate_set_parameters(p).await.is_ok(),
        None => true,
    };
    caps_ok && params_ok
}

/// Told when the migration ended.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Ended(pub Summary);

/// Cancel the migration (answered at once; the end comes as [`Ended`]).
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct Cancel;

/// The figures now.
#[derive(Message, Debug)]
#[rtype(result = "Progress")]
pub struct GetProgress;

/// The coordinator actor: owns one migration's driver, answers progress and cancel.
#[allow(missing_debug_implementations)] // holds channels and a recipient
pub struct Coordinator {
    start: Option<(Qmp, mpsc::Receiver<Notice>, Plan)>,
    cancel: Option<oneshot::Sender<()>>,
    progress: watch::Receiver<Progress>,
    progress_tx: Option<watch::Sender<Progress>>,
    ended: Recipient<Ended>,
}

impl Coordinator {
    /// A coordinator for `plan` over the source's QMP connection and its notices; `ended`
    /// is told the summary.
    pub fn new(
        qmp: Qmp,
        events: mpsc::Receiver<Notice>,
        plan: Plan,
        ended: Recipient<Ended>,
    ) -> Coordinator {
        let (tx, rx) = watch::channel(Progress::default());
        Coordinator {
            start: Some((qmp, events, plan)),
            cancel: None,
            progress: rx,
            progress_tx: Some(tx),
            ended,
        }
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (Some((qmp, events, plan)), Some(tx)) = (self.start.take(), self.progress_tx.take())
        else {
            return;
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.cancel = Some(cancel_tx);
        ctx.spawn(run(qmp, events, plan, cancel_rx, tx).into_actor(self).map(
            |summary, act, ctx| {
                act.ended.do_send(Ended(summary));
                ctx.stop();
            },
        ));
    }
}

impl Handler<Cancel> for Coordinator {
    type Result = bool;

    /// False once postcopy runs (the guest is on the target: a cancel would lose it), or
    /// when the migration has already been cancelled or has ended.
    fn handle(&mut self, _: Cancel, _: &mut Self::Context) -> bool {
        if self.progress.borrow().status == Some(MigrationStatus::PostcopyActive) {
            return false;
        }
        self.cancel.take().is_some_and(|c| c.send(()).is_ok())
    }
}

impl Handler<GetProgress> for Coordinator {
    type Result = MessageResult<GetProgress>;

    fn handle(&mut self, _: GetProgress, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.progress.borrow().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_always_include_events_and_return_path_once() {
        let p = PolicyConfig::for_hvparams(30, &[]);
        assert_eq!(
            capabilities(&["xbzrle".into(), "events".into(), String::new()], &p),
            ["events", "return-path", "xbzrle", "auto-converge"]
        );
        let p = PolicyConfig::for_hvparams(30, &["postcopy-ram".into()]);
        assert_eq!(
            capabilities(&["postcopy-ram".into()], &p),
            ["events", "return-path", "postcopy-ram"]
        );
    }
}
