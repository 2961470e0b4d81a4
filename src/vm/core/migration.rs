//! Migration jobs: the source's `migrate` and `finalize-src`, the target's `accept` and
//! `finalize-dst`, and the rules that keep exactly one running copy of a VM:
//! - a target's QEMU waits paused (`incoming`) and runs only at `finalize-dst --success`,
//!   after QEMU says the incoming migration completed;
//! - a source resumes only when the migration failed, only if the guest ran before it, and
//!   never once postcopy began (the migrate task does it when told `resume_on_failure`);
//! - a completed source is `migrated`: it can neither be resumed nor started again, and
//!   `finalize-src --success` ends its QEMU with an exit record naming the target (`moved`).
//!
//! Invariant: pure, like the rest of the core.

use super::*;

impl Core {
    /// The running migration's job id.
    pub(super) fn migration_job(&self) -> Result<JobId, ApiError> {
        match &self.job {
            Some(j) if j.kind == Operation::Migrate => Ok(j.id),
            _ => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("{} has no migration in progress", self.name),
            )),
        }
    }

    pub(super) fn begin_migrate(
        &mut self,
        ticket: Ticket,
        uri: String,
        live: bool,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        let hot = self
            .run
            .as_ref()
            .and_then(|r| r.info.as_ref())
            .map_or(0, |i| i.hotplugged.len());
        if hot > 0 {
            let e = ApiError::new(
                ErrorCode::Busy,
                format!(
                    "{}: {hot} hot-plugged device(s): a migration does not carry them yet; unplug them first",
                    self.name
                ),
            );
            return self.answer(ticket, Err(e), fx);
        }
        let was_running = self.state == VmState::Running;
        let mut job = self.new_job(now, Operation::Migrate, "setup");
        job.paused = !was_running;
        job.target = Some(uri.clone());
        job.before_stop = Some(self.state);
        let id = job.id;
        self.postcopy = false;
        self.begin(job, Some(ticket), fx);
        self.set_state(VmState::Migrating, fx);
        fx.push(Effect::Spawn(Task::Migrate {
            job: id,
            gen: self.gen,
            uri,
            live,
            resume_on_failure: was_running,
            recover: false,
        }));
    }

    pub(super) fn on_migrate_done(
        &mut self,
        gen: u64,
        end: MigrateEnd,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        let Some(job) = self.job.clone() else { return };
        self.postcopy |= end.postcopy;
        let alive = self.current(gen) && self.run.as_ref().is_some_and(|r| r.exited.is_none());
        if alive {
            let state = match (&end.outcome, end.running) {
                (MigrateOutcome::Completed, _) => VmState::Migrated,
                // Postcopy began: the guest's memory is split between the nodes; it must not
                // run here again.
                _ if end.postcopy => VmState::Migrated,
                (_, Some(true)) => VmState::Running,
                _ => VmState::Paused,
            };
            if state == VmState::Migrated {
                self.moved_to = job.target.clone();
                self.migrated_out = true;
                fx.push(Effect::MigratedMarker(job.target.clone()));
            }
            self.set_state(state, fx);
        }
        let outcome = match end.outcome {
            MigrateOutcome::Completed => JobOutcome::Done { stop: None },
            MigrateOutcome::Cancelled(reason) => JobOutcome::Cancelled {
                reason: job.cancelled.clone().unwrap_or(reason),
            },
            MigrateOutcome::Failed(why) | MigrateOutcome::Unknown(why) => {
                JobOutcome::Failed(ApiError::new(ErrorCode::MigrationFailed, why))
            }
        };
        self.end_job(outcome, now, fx);
    }

    pub(super) fn begin_accept(
        &mut self,
        ticket: Ticket,
        spec: InstanceSpec,
        incoming: IncomingPlan,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        // An accept after a failed one (not dropped yet) keeps what was there first.
        if self.before_accept.is_none() {
            self.before_accept = Some(Before {
                state: self.state,
                last_exit: self.last_exit.clone(),
                dir_exists: self.dir_exists,
            });
        }
        self.launch_start(Some(ticket), spec, true, Some(incoming), now, fx);
    }

    pub(super) fn begin_finalize_src(
        &mut self,
        ticket: Ticket,
        success: bool,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        if !success && self.postcopy {
            let e = ApiError::new(
                ErrorCode::MigrationFailed,
                format!(
                    "{} cannot be resumed here: postcopy began, so its memory is on the target",
                    self.name
                ),
            );
            return self.answer(ticket, Err(e), fx);
        }
        let mut job = self.new_job(now, Operation::FinalizeSrc, StopPhase::Sigterm.as_str());
        job.target = self.moved_to.clone();
        if success {
            self.begin(job, Some(ticket), fx);
            self.launch_stop(now, StopPhase::Sigterm, None, fx);
        } else {
            // The target does not have it: the guest runs here again.
            job.phase = "qmp".into();
            let id = job.id;
            self.begin(job, Some(ticket), fx);
            fx.push(Effect::Spawn(Task::Qmp {
                job: id,
                gen: self.gen,
                action: QmpAction::Resume,
            }));
        }
    }

    pub(super) fn begin_finalize_dst(
        &mut self,
        ticket: Ticket,
        success: bool,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        let mut job = self.new_job(now, Operation::FinalizeDst, "qmp");
        let id = job.id;
        if success {
            self.begin(job, Some(ticket), fx);
            fx.push(Effect::Spawn(Task::Qmp {
                job: id,
                gen: self.gen,
                action: QmpAction::RunIncoming,
            }));
        } else if self.has_qemu() {
            job.force = true;
            job.phase = StopPhase::Sigkill.as_str().into();
            self.begin(job, Some(ticket), fx);
            self.launch_stop(now, StopPhase::Sigkill, None, fx);
        } else {
            job.phase = "removing files".into();
            self.begin(job, Some(ticket), fx);
            self.drop_incoming(id, fx);
        }
    }

    /// The target's QEMU is gone after `finalize-dst --failure`: remove every file (the VM
    /// never lived here), except the instance's own history from before the accept (a VM that
    /// had moved away keeps saying so).
    pub(super) fn drop_incoming(&mut self, job: JobId, fx: &mut Vec<Effect>) {
        self.epoch += 1;
        let restore = self
            .before_accept
            .as_ref()
            .and_then(|b| b.last_exit.clone());
        fx.push(Effect::Spawn(Task::DropIncoming { job, restore }));
    }

    /// What an exit means for a migration: the VM moved (a source whose migration completed,
    /// however its QEMU ended), or the incoming migration was dropped (target).
    pub(super) fn exit_of_migration(&self) -> Option<(ExitKind, String)> {
        if self.migrated_out {
            let to = self
                .moved_to
                .clone()
                .unwrap_or_else(|| "another node".into());
            return Some((ExitKind::Migrated, format!("migrated to {to}")));
        }
        let job = self.job.as_ref()?;
        match job.kind {
            Operation::FinalizeSrc => {
                let to = job
                    .target
                    .clone()
                    .or_else(|| self.moved_to.clone())
                    .map_or("another node".to_string(), |t| t);
                Some((ExitKind::Migrated, format!("migrated to {to}")))
            }
            Operation::FinalizeDst => Some((
                ExitKind::Stopped,
                "the incoming migration did not complete: dropped by finalize-dst --failure"
                    .to_string(),
            )),
            _ => None,
        }
    }
}
