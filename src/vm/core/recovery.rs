//! What a restarted kvmd does with what it finds in the run dir: adopt a running QEMU (and
//! finish the stop or start that was in flight), or record how a QEMU that went away while
//! kvmd was down ended (and roll back a start that never finished).
//!
//! The recover task only gathers facts ([`RecoveryFacts`]); every decision is here.
//! Invariant: never record an exit without positive evidence that QEMU is gone — a QEMU that
//! is ours but cannot be watched is adopted (unresponsive) and watched again later.

use super::{Core, Effect, Job, Link, Now, Run, RunInfo, RunState, StopPhase, Task};
use crate::api::{ApiError, ErrorCode, EventKind, JobOutcome, StopResult};
use crate::model::exit::{ExitKind, ExitRecord};
use crate::model::job::{Operation, PersistedJob, Undo};
use crate::model::state::{StopEnd, VmState};

/// What the runtime file said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeState {
    Missing,
    /// Present but unreadable: the reason.
    Damaged(String),
    Present {
        pid: u32,
        info: Box<RunInfo>,
    },
}

/// What became of the QEMU the run dir names (by runtime file, else by pidfile).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FoundQemu {
    /// No pid to look at.
    None,
    /// The process is gone (or a zombie).
    Gone { pid: u32 },
    /// Another process holds the pid now.
    Other { pid: u32, why: String },
    /// Ours (start time and `-pidfile` argument match). `watched`: a pidfd watches its exit
    /// (opened before the identity check, so it is this very process). `conn`: the QMP
    /// connection if QEMU answered, and what it said.
    Adopted {
        pid: u32,
        conn: Option<u64>,
        status: Option<RunState>,
        watched: bool,
    },
}

/// Everything the recover task found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryFacts {
    /// The generation an adopted QEMU's watchers report with.
    pub gen: u64,
    pub dir_exists: bool,
    pub exit_record: Option<ExitRecord>,
    pub runtime: RuntimeState,
    /// The pid in QEMU's own pidfile.
    pub pidfile_pid: Option<u32>,
    /// A long job the previous kvmd did not finish.
    pub job: Option<PersistedJob>,
    /// The `stopping` marker of a kvmd before jobs were persisted.
    pub legacy_stopping: bool,
    /// The `incoming` marker: the VM came by a migration not finalized yet.
    pub incoming: bool,
    /// The `migrated` marker: this QEMU's migration to there completed.
    pub migrated: Option<String>,
    pub qemu: FoundQemu,
}

impl Core {
    fn resumed_job(&self, p: &PersistedJob) -> Job {
        let mut j = self.new_job(
            super::Now {
                ms: p.started_at_ms,
                id: p.id,
            },
            p.kind,
            &p.phase,
        );
        j.resumed = true;
        j.deadline_ms = p.deadline_ms;
        j.phase_deadline_ms = p.phase_deadline_ms;
        j.paused = p.paused;
        j.force = p.force;
        j.timeout = std::time::Duration::from_millis(p.timeout_ms);
        j.restarting = p.restarting;
        j.undo = p.undo.clone();
        j.target = p.target.clone();
        j
    }

    pub(super) fn on_recovered(&mut self, f: RecoveryFacts, now: Now, fx: &mut Vec<Effect>) {
        self.recovered = true;
        let recovery = self.job.take();
        self.dir_exists = f.dir_exists;
        self.last_exit = f.exit_record.clone();
        let (runtime_pid, info) = match &f.runtime {
            RuntimeState::Present { pid, info } => (Some(*pid), Some((**info).clone())),
            _ => (None, None),
        };
        self.last_spec = info.as_ref().map(|i| i.spec.clone());
        let job = f.job.clone().or_else(|| {
            // A kvmd from before persisted jobs left only its `stopping` marker.
            f.legacy_stopping.then(|| PersistedJob {
                id: now.id,
                kind: Operation::Stop,
                phase: StopPhase::Acpi.as_str().into(),
                started_at_ms: now.ms,
                deadline_ms: None,
                phase_deadline_ms: None,
                paused: false,
                force: false,
                timeout_ms: super::ms(self.settings.stop_timeout),
                restarting: false,
                undo: Vec::new(),
                target: None,
            })
        });
        match f.qemu.clone() {
            FoundQemu::Adopted {
                pid,
                conn,
                status,
                watched,
            } => self.adopt(&f, pid, conn, status, watched, info, job, now, fx),
            gone => self.record_gone(&f, gone, runtime_pid, info, job, now, fx),
        }
        if let Some(rec) = recovery {
            let info = self.describe(&rec, Some(JobOutcome::Done { stop: None }), Some(now.ms));
            fx.push(Effect::JobUpdated(info));
        }
        if self.job.is_none() && self.autostart_now() {
            self.begin_start(None, false, now, fx);
        }
        self.autostart = false;
        fx.push(Effect::Publish);
        if self.job.is_none() {
            self.run_deferred(now, fx);
        }
    }

    /// Autostart once per boot of the run dir: a configured `autostart` instance that has no
    /// QEMU and left nothing in the run dir since boot.
    fn autostart_now(&self) -> bool {
        self.autostart
            && !self.dir_exists
            && self.run.is_none()
            && self.spec.as_ref().is_some_and(|s| s.autostart)
    }

    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        f: &RecoveryFacts,
        pid: u32,
        conn: Option<u64>,
        status: Option<RunState>,
        watched: bool,
        info: Option<RunInfo>,
        job: Option<PersistedJob>,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        self.gen = f.gen;
        if let Some(uid) = info.as_ref().and_then(|i| i.pool_uid) {
            fx.push(Effect::HoldUid(uid));
        }
        let runtime_missing = matches!(f.runtime, RuntimeState::Missing);
        self.run = Some(Run {
            gen: f.gen,
            pid: Some(pid),
            link: conn.map_or(Link::None, Link::Up),
            exited: None,
            info: info.clone(),
            shutdown: None,
            stop_requested: false,
            watched,
            balloon: info.as_ref().and_then(RunInfo::startup_balloon),
            guest_memory: None,
        });
        self.dir_exists = true;
        self.unresponsive = conn.is_none() || !watched;
        self.incoming = f.incoming;
        if f.incoming && status == Some(RunState::Running) {
            // finalize-dst continued the guest; kvmd went down before removing the marker.
            self.incoming = false;
            fx.push(Effect::IncomingDone);
        }
        if f.migrated.is_some() && status != Some(RunState::Running) {
            self.migrated_out = true;
            self.moved_to = f.migrated.clone();
        } else if f.migrated.is_some() {
            // finalize-src --failure resumed it; kvmd went down before removing the marker.
            fx.push(Effect::MigratedMarker(None));
        }
        self.state = match &status {
            _ if self.migrated_out => VmState::Migrated,
            Some(RunState::Running) => VmState::Running,
            // A target whose migration is not finalized: it must not run yet.
            _ if self.incoming => VmState::Incoming,
            Some(RunState::Other(s)) if s == "inmigrate" => VmState::Incoming,
            // A source whose migration completed: the VM belongs to the target.
            Some(RunState::Other(s)) if s == "postmigrate" => VmState::Migrated,
            Some(RunState::Paused) | Some(RunState::Prelaunch) => VmState::Paused,
            Some(RunState::Other(s)) if s == "suspended" => VmState::Paused,
            _ => VmState::Running,
        };
        if self.state != VmState::Incoming {
            self.incoming = false;
        }
        if self.state == VmState::Incoming {
            self.incoming = true;
            // What the instance was before the accept is its exit history on disk: a dropped
            // incoming migration gives it back.
            self.before_accept = Some(super::Before {
                state: self.state_of_history(),
                last_exit: f.exit_record.clone(),
                dir_exists: true,
            });
        }
        if !watched {
            // Ours, but nothing can tell us when it exits: keep it (a start would run a
            // second QEMU), show it unresponsive, and look again later. An unfinished job
            // stays on disk until then.
            fx.push(Effect::Rewatch { gen: f.gen });
            return;
        }
        match job {
            Some(p)
                if p.kind == Operation::Stop || (p.kind == Operation::Reboot && !p.restarting) =>
            {
                let j = self.resumed_job(&p);
                let from = match p.phase.as_str() {
                    "sigterm" => StopPhase::Sigterm,
                    "sigkill" => StopPhase::Sigkill,
                    _ => StopPhase::Acpi,
                };
                let kill_at = p.phase_deadline_ms;
                self.begin(j, None, fx);
                self.launch_stop(now, from, kill_at, fx);
            }
            Some(p) if p.kind == Operation::Migrate => {
                // The migration may still run: settle it (cancel unless it completed or runs
                // postcopy), then resume the guest if it ran before.
                let j = self.resumed_job(&p);
                let id = j.id;
                let target = p.target.clone().unwrap_or_default();
                self.begin(j, None, fx);
                self.state = VmState::Migrating;
                fx.push(Effect::Spawn(Task::Migrate {
                    job: id,
                    gen: f.gen,
                    uri: target,
                    live: true,
                    resume_on_failure: !p.paused,
                    recover: true,
                }));
            }
            Some(p) if p.kind == Operation::Accept => {
                // A target kvmd died during its accept: drop the waiting QEMU (the source sees
                // the migration fail and keeps the VM).
                self.state = self.state_of_history();
                self.incoming = false;
                self.roll_back(
                    &p,
                    Some(pid),
                    "kvmd restarted during the accept; the waiting QEMU is dropped",
                    fx,
                );
            }
            Some(p) if runtime_missing || info.is_none() => {
                // A start (or a reboot's start half) that never wrote its runtime file: its
                // QEMU never ran the guest (it was started with -S). Undo it.
                self.state = self.state_of_history();
                self.roll_back(
                    &p,
                    Some(pid),
                    "kvmd restarted before the start was recorded",
                    fx,
                );
            }
            Some(p) if matches!(p.kind, Operation::Start | Operation::Reboot) => {
                // QEMU is up and recorded: finish the start (pin, passwords, resume).
                let mut j = self.resumed_job(&p);
                j.before = Some(super::Before {
                    state: VmState::Stopped,
                    last_exit: self.last_exit.clone(),
                    dir_exists: true,
                });
                let paused = j.paused;
                let id = j.id;
                self.begin(j, None, fx);
                self.state = VmState::Starting;
                fx.push(Effect::Spawn(Task::Start {
                    job: id,
                    gen: f.gen,
                    spec: Box::new(
                        info.map(|i| i.spec)
                            .or_else(|| self.spec.clone())
                            .unwrap_or_else(|| unreachable_spec(&self.name)),
                    ),
                    paused,
                    resume: true,
                    undo: p.undo.clone(),
                    incoming: None,
                    memory: None,
                }));
            }
            Some(_) => {}
            None if !runtime_missing && conn.is_some() => self.reconcile_hotplug(f.gen, now, fx),
            None if runtime_missing => {
                // A kvmd from before persisted jobs died during a start.
                let p = PersistedJob {
                    id: now.id,
                    kind: Operation::Start,
                    phase: "launching".into(),
                    started_at_ms: now.ms,
                    deadline_ms: None,
                    phase_deadline_ms: None,
                    paused: false,
                    force: false,
                    timeout_ms: 0,
                    restarting: false,
                    undo: vec![Undo::DropRunFiles],
                    target: None,
                };
                self.state = self.state_of_history();
                self.roll_back(
                    &p,
                    Some(pid),
                    "kvmd restarted before the start was recorded",
                    fx,
                );
            }
            None => {}
        }
    }

    /// A plug cut short, or a removal that may have finished while kvmd was away: a job makes
    /// the runtime file's devices agree with QEMU.
    fn reconcile_hotplug(&mut self, gen: u64, now: Now, fx: &mut Vec<Effect>) {
        let records = self
            .run
            .as_ref()
            .and_then(|r| r.info.as_ref())
            .map(|i| i.hotplugged.clone())
            .filter(|h| h.iter().any(|r| r.plugging || r.pending_removal));
        if let Some(records) = records {
            let job = self.new_job(now, Operation::Hotplug, "reconciling");
            let id = job.id;
            self.begin(job, None, fx);
            fx.push(Effect::Spawn(Task::HotplugReconcile {
                job: id,
                gen,
                records,
            }));
        }
    }

    /// The state the exit history alone gives (no QEMU).
    fn state_of_history(&self) -> VmState {
        self.last_exit
            .as_ref()
            .map_or(VmState::Stopped, |r| VmState::after_exit(r.kind))
    }

    /// Roll back an unfinished start found at recovery: its undo steps (QEMU killed first),
    /// then [`super::Input::UndoDone`] ends the job as failed.
    fn roll_back(&mut self, p: &PersistedJob, pid: Option<u32>, why: &str, fx: &mut Vec<Effect>) {
        let mut j = self.resumed_job(p);
        j.cancelled = Some(why.to_string());
        j.phase = "rolling back".into();
        let mut steps: Vec<Undo> = p.undo.clone();
        if !steps.contains(&Undo::DropRunFiles) {
            steps.insert(0, Undo::DropRunFiles);
        }
        // A persisted KillQemu is kept even when no QEMU was found: a QEMU killed with kvmd
        // moments after its spawn may not have written its pidfile yet. The step checks the
        // process's start time and `-pidfile` argument before it signals anything.
        if let Some(pid) = pid {
            if !steps.iter().any(|s| matches!(s, Undo::KillQemu { .. })) {
                steps.push(Undo::KillQemu {
                    pid,
                    start_ticks: 0,
                });
            }
        }
        steps.reverse();
        let id = j.id;
        let spec = self.last_spec.clone().or_else(|| self.spec.clone());
        j.before = Some(super::Before {
            state: self.state,
            last_exit: self.last_exit.clone(),
            dir_exists: self.dir_exists,
        });
        self.begin(j, None, fx);
        if self.run.is_some() {
            self.state = VmState::Starting;
        }
        fx.push(Effect::Undo {
            job: id,
            steps,
            spec: spec.map(Box::new),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn record_gone(
        &mut self,
        f: &RecoveryFacts,
        gone: FoundQemu,
        runtime_pid: Option<u32>,
        info: Option<RunInfo>,
        job: Option<PersistedJob>,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        self.state = self.state_of_history();
        // A start (or a reboot's start half) whose QEMU is gone: undo it; nothing ran.
        if let Some(p) = job.as_ref().filter(|p| {
            matches!(p.kind, Operation::Start | Operation::Accept)
                || (p.kind == Operation::Reboot && p.restarting)
        }) {
            let why = if matches!(f.runtime, RuntimeState::Missing) {
                "kvmd restarted before the start was recorded"
            } else {
                "kvmd restarted during the start and QEMU is gone"
            };
            // Kill steps stay unless that very process is known to be gone: finding no QEMU
            // (no pidfile yet) is not knowing it is gone.
            let mut p = p.clone();
            if let FoundQemu::Gone { pid: dead } = gone {
                p.undo
                    .retain(|u| !matches!(u, Undo::KillQemu { pid, .. } if *pid == dead));
            }
            self.roll_back(&p, None, why, fx);
            return;
        }
        let stopping = job
            .as_ref()
            .is_some_and(|p| matches!(p.kind, Operation::Stop | Operation::Reboot));
        let pid = runtime_pid.or(match (&f.runtime, &gone) {
            (RuntimeState::Damaged(_), FoundQemu::Gone { pid } | FoundQemu::Other { pid, .. }) => {
                Some(*pid)
            }
            _ => None,
        });
        let already = f.exit_record.as_ref().is_some_and(|r| Some(r.pid) == pid);
        if let (Some(pid), false) = (pid, already) {
            let (kind, reason) = match (&gone, stopping, &f.runtime) {
                // Its migration had completed: the VM lives on there, whatever ended this QEMU.
                _ if f.migrated.is_some() => (
                    ExitKind::Migrated,
                    format!("migrated to {}", f.migrated.clone().unwrap_or_default()),
                ),
                (_, true, _) => (
                    ExitKind::Stopped,
                    "kvmd was stopping it and it exited while kvmd was not running".to_string(),
                ),
                (FoundQemu::Other { why, .. }, _, _) => (
                    ExitKind::Crashed,
                    format!("QEMU exited while kvmd was not running; cause unknown ({why})"),
                ),
                (_, _, RuntimeState::Damaged(why)) => (
                    ExitKind::Crashed,
                    format!(
                        "QEMU exited while kvmd was not running; cause unknown (its runtime file was damaged: {why})"
                    ),
                ),
                _ => (
                    ExitKind::Crashed,
                    "QEMU exited while kvmd was not running; cause unknown".to_string(),
                ),
            };
            let record = ExitRecord {
                kind,
                reason,
                exit_code: None,
                signal: None,
                stderr_tail: Vec::new(),
                pid,
                at_ms: now.ms,
            };
            self.last_exit = Some(record.clone());
            self.dir_exists = true;
            self.state = VmState::after_exit(kind);
            fx.push(Effect::RecordExit {
                gen: self.gen,
                epoch: self.epoch,
                record: record.clone(),
                taps: info.as_ref().map(|i| i.taps.clone()).unwrap_or_default(),
                spec: info.as_ref().map(|i| Box::new(i.spec.clone())),
            });
            fx.push(Effect::Event(EventKind::Exited(record)));
        }
        if let Some(p) = job.as_ref().filter(|p| p.kind == Operation::Migrate) {
            // The source's QEMU died while kvmd was down: the migration ended with it.
            let j = self.resumed_job(p);
            self.begin(j, None, fx);
            let e = ApiError::new(
                ErrorCode::MigrationFailed,
                "the source's QEMU exited while kvmd was not running",
            );
            self.end_job(JobOutcome::Failed(e), now, fx);
            return;
        }
        if let Some(p) = job.filter(|_| stopping) {
            // The stop (or a reboot's stop half) is done: QEMU is gone.
            let mut j = self.resumed_job(&p);
            let reboot = p.kind == Operation::Reboot;
            j.stop_end = Some(Ok(StopEnd::Unobserved));
            self.begin(j, None, fx);
            if reboot {
                self.begin_start(None, false, now, fx);
            } else {
                let elapsed_ms = now.ms.saturating_sub(p.started_at_ms);
                let stop = Some(StopResult {
                    ended: StopEnd::Unobserved,
                    elapsed_ms,
                });
                self.end_job(JobOutcome::Done { stop }, now, fx);
            }
        }
    }
}

/// A resumed start always has a definition (from the runtime file or the config); this is
/// only reached if both are gone, and then the start fails on its own checks.
fn unreachable_spec(name: &crate::model::name::InstanceName) -> crate::model::spec::InstanceSpec {
    crate::model::spec::InstanceSpec {
        name: name.clone(),
        uuid: crate::model::spec::uuid_from_name(name.as_str()),
        memory: 0,
        min_memory: 0,
        vcpus: 0,
        network_port: None,
        disks: Vec::new(),
        nics: Vec::new(),
        hvparams: Default::default(),
        autostart: false,
    }
}
