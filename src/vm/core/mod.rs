//! The VM state machine, pure: one instance's states, its current job, and every rule the VM
//! actor follows — which request is allowed in which state and during which job (and what a
//! refusal says), what happens when QEMU reports an event or exits, how a job ends, and how a
//! restarted kvmd finishes or rolls back what was in flight.
//!
//! The actor feeds it requests ([`Core::request`]) and facts ([`Core::input`]); it answers with
//! [`Effect`]s that the actor carries out (spawn a task, persist the job, publish the state,
//! answer a waiting client). Facts from an older QEMU (an older *generation*) are ignored, so a
//! late message can never change the state of a newer one.
//!
//! Invariant: no actix, no tokio, no file system, no processes, no clock — the time comes in
//! with every call ([`Now`]). Every rule is a unit test that runs without QEMU.

mod admission;
mod lifecycle;
mod migration;
mod recovery;
#[cfg(test)]
mod tests;
mod types;

use std::collections::VecDeque;
use std::time::Duration;

use crate::api::{
    ApiError, ErrorCode, EventKind, JobInfo, JobOutcome, JobState, JobSummary, Progress, QemuEvent,
    StopResult, VmInfo,
};
use crate::model::exit::{
    classify_exit, ExitFacts, ExitKind, ExitRecord, ExitStatus, ExitVerdict, ShutdownEvent,
};
use crate::model::job::{JobId, Operation, PersistedJob, Undo};
use crate::model::name::InstanceName;
use crate::model::spec::InstanceSpec;
use crate::model::state::{StopEnd, VmState};

pub use admission::Rule;
pub use admission::{rule, Ask, Facts, Running};
pub use recovery::{FoundQemu, RecoveryFacts, RuntimeState};
pub use types::*;

/// Whether the core has a QMP connection to the current QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    None,
    Up(u64),
    Closed,
}

/// The QEMU of the current generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Run {
    gen: u64,
    pid: Option<u32>,
    link: Link,
    /// QEMU exited; classified once the start is over and QMP delivered its last events.
    exited: Option<ExitStatus>,
    info: Option<RunInfo>,
    /// The last SHUTDOWN event of this QEMU.
    shutdown: Option<ShutdownEvent>,
    /// kvmd is stopping it: its exit is an admin stop.
    stop_requested: bool,
    /// A pidfd watches its exit (false: adopted without one; retried).
    watched: bool,
    /// The last balloon request and where the guest got to (`None`: none since this QEMU).
    balloon: Option<crate::api::BalloonInfo>,
    /// The guest's last memory statistics.
    guest_memory: Option<crate::api::GuestMemory>,
}

/// The running job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Job {
    id: JobId,
    kind: Operation,
    phase: String,
    progress: Option<Progress>,
    started_at_ms: u64,
    deadline_ms: Option<u64>,
    phase_deadline_ms: Option<u64>,
    resumed: bool,
    tickets: Vec<Ticket>,
    /// Why it is being cancelled, if it is.
    cancelled: Option<String>,
    paused: bool,
    force: bool,
    timeout: Duration,
    /// Reboot: in its start half.
    restarting: bool,
    undo: Vec<Undo>,
    /// The stop task reported how QEMU went (the exit may not be classified yet).
    stop_end: Option<Result<StopEnd, ApiError>>,
    /// What a failed start goes back to.
    before: Option<Before>,
    /// What a stop that does not happen goes back to (running or paused).
    before_stop: Option<VmState>,
    /// Migrate: where to (as the operator named it).
    target: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Before {
    state: VmState,
    last_exit: Option<ExitRecord>,
    dir_exists: bool,
}

/// A request waiting for the running job to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Deferred {
    ticket: Ticket,
    request: Request,
}

/// The state machine of one instance.
#[derive(Clone, Debug)]
pub struct Core {
    name: InstanceName,
    settings: Settings,
    /// The definition in the config; `None` for an instance found only in the run dir.
    spec: Option<InstanceSpec>,
    /// The definition the last QEMU ran with (shown once the instance left the config).
    last_spec: Option<InstanceSpec>,
    /// Start at recovery if the config says so and nothing ran since boot.
    autostart: bool,
    state: VmState,
    unresponsive: bool,
    gen: u64,
    run: Option<Run>,
    job: Option<Job>,
    deferred: VecDeque<Deferred>,
    last_exit: Option<ExitRecord>,
    /// Bumped by every cleanup, so an exit record written before it cannot come back.
    epoch: u64,
    /// The run dir has state for this instance (started since boot, not cleaned up).
    dir_exists: bool,
    recovered: bool,
    /// A start cancelled by a stop: that stop answers `start-cancelled`.
    start_cancelled_by_stop: bool,
    /// This node took the VM by an incoming migration that is not finalized yet.
    incoming: bool,
    /// Where the last outgoing migration went (named in the exit record of `finalize-src`).
    moved_to: Option<String>,
    /// The last outgoing migration began postcopy: the guest must not run here again.
    postcopy: bool,
    /// What the instance was before an accept (a dropped incoming migration goes back to it).
    before_accept: Option<Before>,
    /// The mask of the running pin job.
    pending_mask: Option<String>,
    /// The start-up memory a start request asked for, until its task takes it.
    start_memory: Option<u64>,
    /// This QEMU is a source whose migration completed (or began postcopy): any exit of it is
    /// recorded as `migrated`, and it never runs here again.
    migrated_out: bool,
}

const USER_DOWN_REASON: &str = "the guest powered itself off";

impl Core {
    /// A new instance, recovering: requests wait until [`Input::Recovered`].
    pub fn new(
        name: InstanceName,
        spec: Option<InstanceSpec>,
        settings: Settings,
        autostart: bool,
        now: Now,
    ) -> Self {
        let mut core = Self {
            name,
            settings,
            spec,
            last_spec: None,
            autostart,
            state: VmState::Stopped,
            unresponsive: false,
            gen: 0,
            run: None,
            job: None,
            deferred: VecDeque::new(),
            last_exit: None,
            epoch: 0,
            dir_exists: false,
            recovered: false,
            start_cancelled_by_stop: false,
            incoming: false,
            moved_to: None,
            postcopy: false,
            before_accept: None,
            pending_mask: None,
            start_memory: None,
            migrated_out: false,
        };
        core.job = Some(core.new_job(now, Operation::Recovery, "reading the run dir"));
        core
    }

    pub fn name(&self) -> &InstanceName {
        &self.name
    }

    /// The current generation (the QEMU that facts must be about).
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// The state operators see.
    pub fn state(&self) -> VmState {
        if self.unresponsive && self.state.has_process() && self.state != VmState::Stopping {
            VmState::Unresponsive
        } else {
            self.state
        }
    }

    /// A QEMU of the current generation exists (maybe exiting).
    pub fn has_qemu(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.pid.is_some())
    }

    pub fn job_id(&self) -> Option<JobId> {
        self.job.as_ref().map(|j| j.id)
    }

    /// The definition the current QEMU runs with.
    pub fn running_spec(&self) -> Option<&InstanceSpec> {
        self.run
            .as_ref()
            .and_then(|r| r.info.as_ref())
            .map(|i| &i.spec)
    }

    /// The definition a start would use now.
    pub fn spec(&self) -> Option<&InstanceSpec> {
        self.spec.as_ref()
    }

    /// `info`, without the live numbers (CPU time, uptime) the supervisor adds.
    pub fn info(&self) -> VmInfo {
        let run_info = self.run.as_ref().and_then(|r| r.info.as_ref());
        let shown = run_info
            .map(|r| &r.spec)
            .or(self.spec.as_ref())
            .or(self.last_spec.as_ref());
        let (memory, vcpus) = shown.map_or((0, 0), |s| (s.memory, s.vcpus));
        VmInfo {
            name: self.name.clone(),
            state: self.state(),
            pid: self.run.as_ref().and_then(|r| r.pid),
            memory_mib: memory,
            vcpus,
            cpu_time_ms: None,
            uptime_s: None,
            started_at_ms: run_info.map(|r| r.started_at_ms),
            qemu_version: run_info.map(|r| r.qemu_version.clone()),
            autostart: self.spec.as_ref().is_some_and(|s| s.autostart),
            in_config: self.spec.is_some(),
            pending_changes: match (run_info, &self.spec) {
                (Some(r), Some(s)) => r.spec != *s,
                _ => false,
            },
            job: self.job.as_ref().map(|j| JobSummary {
                id: j.id,
                kind: j.kind,
                phase: j.phase.clone(),
            }),
            last_exit: self.last_exit.clone(),
            cpu_mask: run_info.map(|r| r.cpu_mask.clone()),
            balloon: self.run.as_ref().and_then(|r| r.balloon.clone()),
            hardware: run_info.map(|r| Box::new(with_hotplugged(&r.hardware, &r.hotplugged))),
            guest_memory: self.run.as_ref().and_then(|r| r.guest_memory.clone()),
            // The supervisor knows (the run dir's `managed-by`).
            managed_by: None,
        }
    }

    /// The running job as a [`JobInfo`].
    pub fn job_info(&self) -> Option<JobInfo> {
        self.job.as_ref().map(|j| self.describe(j, None, None))
    }

    /// The instance may be forgotten: it left the config, has no QEMU, no job, no files.
    pub fn retirable(&self) -> bool {
        self.spec.is_none()
            && self.recovered
            && self.run.is_none()
            && self.job.is_none()
            && self.last_exit.is_none()
            && !self.dir_exists
    }

    pub(super) fn describe(
        &self,
        j: &Job,
        outcome: Option<JobOutcome>,
        ended_at_ms: Option<u64>,
    ) -> JobInfo {
        let state = match &outcome {
            None => JobState::Running,
            Some(JobOutcome::Done { .. }) => JobState::Succeeded,
            Some(JobOutcome::Failed(_)) => JobState::Failed,
            Some(JobOutcome::Cancelled { .. }) => JobState::Cancelled,
        };
        JobInfo {
            id: j.id,
            instance: self.name.clone(),
            kind: j.kind,
            state,
            phase: j.phase.clone(),
            progress: j.progress.clone(),
            started_at_ms: j.started_at_ms,
            deadline_ms: j.phase_deadline_ms.or(j.deadline_ms),
            ended_at_ms,
            resumed: j.resumed,
            outcome,
        }
    }

    pub(super) fn new_job(&self, now: Now, kind: Operation, phase: &str) -> Job {
        Job {
            id: now.id,
            kind,
            phase: phase.into(),
            progress: None,
            started_at_ms: now.ms,
            deadline_ms: None,
            phase_deadline_ms: None,
            resumed: false,
            tickets: Vec::new(),
            cancelled: None,
            paused: false,
            force: false,
            timeout: self.settings.stop_timeout,
            restarting: false,
            undo: Vec::new(),
            stop_end: None,
            before: None,
            before_stop: None,
            target: None,
        }
    }

    pub(super) fn persisted(j: &Job) -> PersistedJob {
        PersistedJob {
            id: j.id,
            kind: j.kind,
            phase: j.phase.clone(),
            started_at_ms: j.started_at_ms,
            deadline_ms: j.deadline_ms,
            phase_deadline_ms: j.phase_deadline_ms,
            paused: j.paused,
            force: j.force,
            timeout_ms: u64::try_from(j.timeout.as_millis()).unwrap_or(u64::MAX),
            restarting: j.restarting,
            undo: j.undo.clone(),
            target: j.target.clone(),
        }
    }

    /// Begin `job`: it becomes the running job; tell whoever waits and listens.
    pub(super) fn begin(&mut self, job: Job, ticket: Option<Ticket>, fx: &mut Vec<Effect>) {
        let mut job = job;
        job.tickets.extend(ticket);
        let info = self.describe(&job, None, None);
        if job.kind.persisted() {
            fx.push(Effect::PersistJob(Self::persisted(&job)));
        }
        for t in &job.tickets {
            fx.push(Effect::Answer(
                *t,
                Outcome::Accepted(info.clone()),
                Box::new(self.info()),
            ));
        }
        fx.push(Effect::JobUpdated(info.clone()));
        fx.push(Effect::Event(EventKind::JobStarted(info)));
        self.job = Some(job);
        fx.push(Effect::Publish);
    }

    /// End the running job with `outcome`; answer its waiters; then run what was deferred.
    pub(super) fn end_job(&mut self, outcome: JobOutcome, now: Now, fx: &mut Vec<Effect>) {
        let Some(job) = self.job.take() else { return };
        let info = self.describe(&job, Some(outcome), Some(now.ms));
        if job.kind.persisted() {
            fx.push(Effect::ClearJob);
        }
        let vm = Box::new(self.info());
        for t in &job.tickets {
            fx.push(Effect::Answer(*t, Outcome::Ended(info.clone()), vm.clone()));
        }
        fx.push(Effect::JobUpdated(info.clone()));
        fx.push(Effect::Event(EventKind::JobEnded(info)));
        fx.push(Effect::Publish);
        self.run_deferred(now, fx);
    }

    /// Re-admit deferred requests now that no job runs (until one begins a job).
    pub(super) fn run_deferred(&mut self, now: Now, fx: &mut Vec<Effect>) {
        while self.job.is_none() {
            let Some(d) = self.deferred.pop_front() else {
                break;
            };
            self.admit(d.ticket, d.request, now, fx);
        }
        if self.job.is_none() {
            self.start_cancelled_by_stop = false;
        }
    }

    /// Change the displayed state (and say so).
    pub(super) fn set_state(&mut self, state: VmState, fx: &mut Vec<Effect>) {
        let previous = self.state();
        self.state = state;
        self.announce(previous, fx);
    }

    pub(super) fn set_unresponsive(&mut self, unresponsive: bool, fx: &mut Vec<Effect>) {
        let previous = self.state();
        self.unresponsive = unresponsive;
        self.announce(previous, fx);
    }

    pub(super) fn announce(&self, previous: VmState, fx: &mut Vec<Effect>) {
        let state = self.state();
        if state != previous {
            fx.push(Effect::Event(EventKind::State { state, previous }));
        }
        fx.push(Effect::Publish);
    }

    pub(super) fn current(&self, gen: u64) -> bool {
        self.run.as_ref().is_some_and(|r| r.gen == gen)
    }

    pub(super) fn job_is(&self, id: JobId) -> bool {
        self.job.as_ref().is_some_and(|j| j.id == id)
    }

    /// A request from an operator. Its answer comes back as [`Effect::Answer`] with `ticket`,
    /// now or when the job serving it ends.
    pub fn request(&mut self, ticket: Ticket, request: Request, now: Now) -> Vec<Effect> {
        let mut fx = Vec::new();
        let cancel = match request {
            Request::Cancel { id } => Some(Ok(id)),
            Request::MigrateCancel => Some(self.migration_job()),
            _ => None,
        };
        if let Some(id) = cancel {
            let answer = id.and_then(|id| self.cancel(id, "cancelled by the operator", &mut fx));
            fx.push(Effect::Answer(
                ticket,
                Outcome::Now(answer),
                Box::new(self.info()),
            ));
            return fx;
        }
        self.admit(ticket, request, now, &mut fx);
        fx
    }

    /// A fact about the world. Facts about an older generation are ignored.
    pub fn input(&mut self, input: Input, now: Now) -> Vec<Effect> {
        let mut fx = Vec::new();
        match input {
            Input::Recovered(facts) => self.on_recovered(facts, now, &mut fx),
            Input::SetSpec { spec, autostart } => self.on_set_spec(spec, autostart, now, &mut fx),
            Input::Spawned { gen, pid } => {
                if let Some(run) = self.run.as_mut().filter(|r| r.gen == gen) {
                    run.pid = Some(pid);
                    fx.push(Effect::Publish);
                }
            }
            Input::QmpUp { gen, conn } => {
                if let Some(run) = self.run.as_mut().filter(|r| r.gen == gen) {
                    run.link = Link::Up(conn);
                }
            }
            Input::QmpClosed { gen, conn } => {
                let closed = match self.run.as_mut().filter(|r| r.gen == gen) {
                    // Only the current connection's end counts: an old one closing after a
                    // reconnect says nothing about the new one.
                    Some(run) if run.link == Link::Up(conn) => {
                        run.link = Link::Closed;
                        true
                    }
                    _ => false,
                };
                if closed {
                    self.exit_when_ready(gen, now, &mut fx);
                }
            }
            Input::Guest { gen, event } if self.current(gen) => {
                self.on_guest_event(event, now, &mut fx)
            }
            Input::QmpTimedOut { gen, command } if self.current(gen) => {
                if !self.unresponsive {
                    fx.push(Effect::Event(EventKind::Qemu(QemuEvent::Unresponsive {
                        command,
                    })));
                }
                self.set_unresponsive(true, &mut fx);
            }
            Input::Health { gen, status } if self.current(gen) => self.on_health(status, &mut fx),
            Input::Exited { gen, status } if self.current(gen) => {
                if let Some(run) = self.run.as_mut() {
                    run.exited = Some(status);
                }
                self.exit_when_ready(gen, now, &mut fx);
            }
            Input::ExitSettled { gen } if self.current(gen) && !self.starting() => {
                if let Some(status) = self.run.as_ref().and_then(|r| r.exited) {
                    self.on_exit(status, now, &mut fx);
                }
            }
            // Fill in QEMU's last words, unless the record is gone (cleaned up) or newer.
            Input::ExitRecorded {
                gen,
                epoch,
                stderr_tail,
            } if epoch == self.epoch && gen == self.gen && self.run.is_none() => {
                if let Some(rec) = self.last_exit.as_mut() {
                    if rec.stderr_tail.is_empty() && !stderr_tail.is_empty() {
                        rec.stderr_tail = stderr_tail;
                        fx.push(Effect::Publish);
                    }
                }
            }
            Input::Phase {
                job,
                phase,
                deadline_ms,
                progress,
                undo,
            } => self.on_phase(job, phase, deadline_ms, progress, undo, &mut fx),
            Input::StartDone { job, gen, result } if self.job_is(job) => {
                self.on_start_done(gen, result, now, &mut fx)
            }
            Input::StopDone { job, gen, result } if self.job_is(job) && gen == self.gen => {
                if let Some(j) = self.job.as_mut() {
                    j.stop_end = Some(result);
                }
                self.stop_progress(now, &mut fx);
            }
            Input::QmpDone { job, gen, result } if self.job_is(job) => {
                self.on_qmp_done(gen, result, now, &mut fx)
            }
            Input::CleanupDone { job, result } if self.job_is(job) => {
                let restore = self
                    .job
                    .as_ref()
                    .filter(|j| j.kind == Operation::FinalizeDst)
                    .and(self.before_accept.take())
                    .filter(|b| b.last_exit.is_some());
                let outcome = match result {
                    Ok(()) if restore.is_some() => {
                        // A dropped incoming migration: the instance is what it was before.
                        let b = restore.unwrap_or(Before {
                            state: VmState::Stopped,
                            last_exit: None,
                            dir_exists: false,
                        });
                        self.incoming = false;
                        self.last_exit = b.last_exit;
                        self.dir_exists = true;
                        self.set_state(b.state, &mut fx);
                        JobOutcome::Done { stop: None }
                    }
                    Ok(()) => {
                        self.last_exit = None;
                        self.dir_exists = false;
                        self.incoming = false;
                        self.set_state(VmState::Stopped, &mut fx);
                        JobOutcome::Done { stop: None }
                    }
                    Err(e) => JobOutcome::Failed(e),
                };
                self.end_job(outcome, now, &mut fx);
            }
            Input::MigrateDone { job, gen, end } if self.job_is(job) => {
                self.on_migrate_done(gen, end, now, &mut fx)
            }
            Input::HotplugDone { job, gen, result } if self.job_is(job) => {
                let plug = self.job.as_ref().is_some_and(|j| j.phase == "plugging");
                let info = self
                    .run
                    .as_mut()
                    .filter(|r| r.gen == gen)
                    .and_then(|r| r.info.as_mut());
                // A plug that ended either way is no longer under way.
                if let Some(info) = info.filter(|i| plug && i.hotplugged.iter().any(|r| r.plugging))
                {
                    info.hotplugged.retain(|r| !r.plugging);
                    if result.is_err() {
                        fx.push(Effect::RecordHotplug(info.hotplugged.clone()));
                    }
                }
                let outcome = match result {
                    Ok(change) => {
                        if let Some(info) = self
                            .run
                            .as_mut()
                            .filter(|r| r.gen == gen)
                            .and_then(|r| r.info.as_mut())
                        {
                            match change {
                                HotChange::Added(rec) => info.hotplugged.push(rec),
                                HotChange::Reconciled(list) => info.hotplugged = list,
                                HotChange::Removed(id) => info.hotplugged.retain(|r| r.id != id),
                                HotChange::Link(id, up) => {
                                    for r in info.hotplugged.iter_mut().filter(|r| r.id == id) {
                                        r.link_up = up;
                                    }
                                }
                                HotChange::Pending(id) => {
                                    for r in info.hotplugged.iter_mut().filter(|r| r.id == id) {
                                        r.pending_removal = true;
                                    }
                                    fx.push(Effect::Event(EventKind::Qemu(
                                        QemuEvent::PendingRemoval { device: id },
                                    )));
                                }
                            }
                            fx.push(Effect::RecordHotplug(info.hotplugged.clone()));
                        }
                        JobOutcome::Done { stop: None }
                    }
                    Err(e) => JobOutcome::Failed(e),
                };
                fx.push(Effect::Publish);
                self.end_job(outcome, now, &mut fx);
            }
            Input::GuestMemory {
                gen,
                memory,
                balloon_mib,
            } => {
                if let Some(run) = self.run.as_mut().filter(|r| r.gen == gen) {
                    if run.guest_memory.as_ref() != Some(&memory) {
                        run.guest_memory = Some(memory);
                        fx.push(Effect::Publish);
                    }
                    // Start-up ballooning has no job: the tick follows the guest there.
                    if let (Some(b), Some(actual)) = (
                        run.balloon.as_mut().filter(|b| b.state == "startup"),
                        balloon_mib,
                    ) {
                        b.actual_mib = actual;
                        if actual.abs_diff(b.target_mib) * 100 <= b.target_mib {
                            b.state = "reached".into();
                        }
                        fx.push(Effect::Publish);
                    }
                }
            }
            Input::BalloonDone { job, gen, result } if self.job_is(job) => {
                let outcome = match result {
                    Ok((end, actual_mib)) => {
                        if let Some(b) = self
                            .run
                            .as_mut()
                            .filter(|r| r.gen == gen)
                            .and_then(|r| r.balloon.as_mut())
                        {
                            b.actual_mib = actual_mib;
                            b.state = end.as_str().into();
                        }
                        if let Some(j) = self.job.as_mut() {
                            j.phase = end.as_str().into();
                        }
                        JobOutcome::Done { stop: None }
                    }
                    Err(e) => JobOutcome::Failed(e),
                };
                self.end_job(outcome, now, &mut fx);
            }
            Input::UndoDone { job } if self.job_is(job) => {
                // An unfinished start found at recovery was undone: no QEMU, no run files.
                self.run = None;
                fx.push(Effect::ReleaseUid);
                let before = self.job.as_mut().and_then(|j| j.before.take());
                if let Some(b) = before {
                    self.last_exit = b.last_exit;
                    self.set_state(b.state, &mut fx);
                }
                self.dir_exists = self.last_exit.is_some();
                let reason = self
                    .job
                    .as_ref()
                    .and_then(|j| j.cancelled.clone())
                    .unwrap_or_else(|| "rolled back".into());
                self.end_job(
                    JobOutcome::Failed(ApiError::new(ErrorCode::StartFailed, reason)),
                    now,
                    &mut fx,
                );
            }
            // From an older generation or an older job.
            _ => {}
        }
        fx
    }

    /// The health tick: what should be checked now.
    pub fn health_due(&self) -> Option<u64> {
        let run = self.run.as_ref()?;
        if !run.watched {
            return None;
        }
        matches!(self.state, VmState::Running | VmState::Paused).then_some(run.gen)
    }

    /// A start task is in charge of the current QEMU (it reports failures itself).
    pub(super) fn starting(&self) -> bool {
        self.state == VmState::Starting
    }
}

/// The hardware with the plugged devices after the ones QEMU started with.
fn with_hotplugged(
    hw: &crate::api::Hardware,
    hot: &[crate::model::hotplug::HotRecord],
) -> crate::api::Hardware {
    use crate::model::hotplug::HotDevice;
    let mut hw = hw.clone();
    let behind_ports = hot.iter().filter(|r| r.port.is_some()).count();
    hw.hotplug_ports_free = hw
        .hotplug_ports
        .saturating_sub(u8::try_from(behind_ports).unwrap_or(u8::MAX));
    // A plug still under way is not shown (its port is counted taken).
    for r in hot.iter().filter(|r| !r.plugging) {
        let address = match r.port {
            Some(p) => crate::model::hotplug::hotplug_port_id(p),
            None => format!("pci.0 0x{:02x}", r.slot),
        };
        match &r.device {
            HotDevice::Disk {
                path,
                format,
                readonly,
            } => hw.disks.push(crate::api::DiskInfo {
                path: path.clone(),
                format: format.clone(),
                readonly: *readonly,
                bus: "paravirtual".into(),
                address,
                hotplugged: true,
                id: Some(r.id.clone()),
                pending_removal: r.pending_removal,
            }),
            HotDevice::Nic { mac, mode, link } => hw.nics.push(crate::api::NicInfo {
                mode: format!("{mode:?}").to_lowercase(),
                link: link.clone(),
                mac: mac.clone(),
                tap: r.tap.clone(),
                model: "paravirtual".into(),
                address,
                hotplugged: true,
                id: Some(r.id.clone()),
                pending_removal: r.pending_removal,
                link_up: r.link_up,
            }),
        }
    }
    hw
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
