//! How jobs run their course: starts, stops (and the stop half of a reboot), short QMP jobs,
//! guest events, health, exits and their classification, cancellation.
//!
//! Invariant: pure, like the rest of the core.

use super::*;

impl Core {
    pub(super) fn on_set_spec(
        &mut self,
        spec: Option<Box<InstanceSpec>>,
        autostart: bool,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        self.spec = spec.map(|s| *s);
        fx.push(Effect::Publish);
        let start = autostart
            && self.recovered
            && self.job.is_none()
            && self.run.is_none()
            && self.state == VmState::Stopped
            && !self.dir_exists;
        if start {
            self.begin_start(None, false, now, fx);
        }
    }

    pub(super) fn on_guest_event(&mut self, event: GuestEvent, now: Now, fx: &mut Vec<Effect>) {
        match event {
            GuestEvent::Shutdown { guest, reason } => {
                fx.push(Effect::Event(EventKind::Qemu(QemuEvent::Shutdown {
                    guest,
                    reason: reason.clone(),
                })));
                let stop_requested = self.run.as_ref().is_some_and(|r| r.stop_requested);
                if !stop_requested && guest && reason == "guest-shutdown" && !self.starting() {
                    // Show the user shutdown at once; the exit follows within milliseconds.
                    let pid = self.run.as_ref().and_then(|r| r.pid).unwrap_or(0);
                    self.last_exit = Some(ExitRecord {
                        kind: ExitKind::UserDown,
                        reason: USER_DOWN_REASON.into(),
                        exit_code: None,
                        signal: None,
                        stderr_tail: Vec::new(),
                        pid,
                        at_ms: now.ms,
                    });
                    self.set_state(VmState::UserDown, fx);
                }
                if let Some(run) = self.run.as_mut() {
                    run.shutdown = Some(ShutdownEvent { guest, reason });
                }
            }
            GuestEvent::Stop => {
                if self.state == VmState::Running {
                    self.set_state(VmState::Paused, fx);
                }
                // A stop pressing the power button of a paused guest waits for nothing.
                if let Some(j) = self.job.as_ref() {
                    if self.state == VmState::Stopping && j.phase == StopPhase::Acpi.as_str() {
                        fx.push(Effect::Control(j.id, TaskControl::GuestPaused));
                    }
                }
            }
            GuestEvent::Resume => {
                if self.state == VmState::Paused {
                    self.set_state(VmState::Running, fx);
                }
            }
            GuestEvent::Reset { guest, reason } => {
                fx.push(Effect::Event(EventKind::Qemu(QemuEvent::Reset {
                    guest,
                    reason,
                })));
            }
            GuestEvent::Powerdown => fx.push(Effect::Event(EventKind::Qemu(QemuEvent::Powerdown))),
            GuestEvent::Panicked { action } => {
                fx.push(Effect::Event(EventKind::Qemu(QemuEvent::GuestPanicked {
                    action,
                })))
            }
            GuestEvent::DeviceDeleted { id } => {
                // A pending removal the guest finished late: remove its backend now (the
                // unplug job finds QEMU without the device and only does that).
                let pending = self
                    .run
                    .as_ref()
                    .and_then(|r| r.info.as_ref())
                    .and_then(|i| {
                        i.hotplugged
                            .iter()
                            .find(|r| r.id == id && r.pending_removal)
                    })
                    .cloned();
                if let (Some(record), None) = (pending, &self.job) {
                    let job = self.new_job(now, Operation::Hotplug, "unplugging");
                    let jid = job.id;
                    let gen = self.gen;
                    self.begin(job, None, fx);
                    fx.push(Effect::Spawn(Task::HotplugDel {
                        job: jid,
                        gen,
                        record,
                    }));
                }
            }
            GuestEvent::BlockIoError {
                device,
                operation,
                action,
                reason,
            } => fx.push(Effect::Event(EventKind::Qemu(QemuEvent::BlockIoError {
                device,
                operation,
                action,
                reason,
            }))),
        }
    }

    pub(super) fn on_health(&mut self, status: Result<RunState, Unanswered>, fx: &mut Vec<Effect>) {
        match status {
            Ok(s) => {
                if self.unresponsive {
                    fx.push(Effect::Event(EventKind::Qemu(QemuEvent::Responsive)));
                }
                self.set_unresponsive(false, fx);
                match (s, self.state) {
                    (RunState::Running, VmState::Paused) => self.set_state(VmState::Running, fx),
                    (RunState::Paused, VmState::Running) => self.set_state(VmState::Paused, fx),
                    // A source whose migration completed (seen after a restart without an
                    // answer, for one): the VM belongs to the target.
                    (RunState::Other(s), VmState::Running | VmState::Paused)
                        if s == "postmigrate" =>
                    {
                        self.set_state(VmState::Migrated, fx)
                    }
                    (RunState::Other(s), VmState::Running | VmState::Paused)
                        if s == "inmigrate" =>
                    {
                        self.incoming = true;
                        self.set_state(VmState::Incoming, fx)
                    }
                    _ => {}
                }
            }
            Err(Unanswered { command, .. }) => {
                if !self.unresponsive {
                    fx.push(Effect::Event(EventKind::Qemu(QemuEvent::Unresponsive {
                        command,
                    })));
                }
                self.set_unresponsive(true, fx);
            }
        }
    }

    pub(super) fn on_phase(
        &mut self,
        id: JobId,
        phase: String,
        deadline_ms: Option<u64>,
        progress: Option<Progress>,
        undo: Option<Vec<Undo>>,
        fx: &mut Vec<Effect>,
    ) {
        let Some(job) = self.job.as_mut().filter(|j| j.id == id) else {
            return;
        };
        job.phase = phase;
        job.phase_deadline_ms = deadline_ms;
        job.progress = progress;
        if let Some(u) = undo {
            job.undo = u;
        }
        let persist = job.kind.persisted().then(|| Self::persisted(job));
        let job = job.clone();
        let info = self.describe(&job, None, None);
        fx.extend(persist.map(Effect::PersistJob));
        fx.push(Effect::JobUpdated(info.clone()));
        fx.push(Effect::Event(EventKind::JobProgress(info)));
        fx.push(Effect::Publish);
    }

    /// Begin a start job (a fresh one, or the start half of a reboot when `job` is given).
    pub(super) fn begin_start(
        &mut self,
        ticket: Option<Ticket>,
        paused: bool,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        // A VM that came by migration and is not in this node's config reboots with the
        // definition it runs with.
        let Some(spec) = self.spec.clone().or_else(|| self.last_spec.clone()) else {
            return;
        };
        self.launch_start(ticket, spec, paused, None, now, fx);
    }

    /// Begin a start (or an accept, with `incoming`) of `spec`.
    pub(super) fn launch_start(
        &mut self,
        ticket: Option<Ticket>,
        spec: InstanceSpec,
        paused: bool,
        incoming: Option<IncomingPlan>,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        let before = Before {
            state: self.state,
            last_exit: self.last_exit.clone(),
            dir_exists: self.dir_exists,
        };
        let mut job = match self.job.take() {
            Some(mut j) if j.kind == Operation::Reboot => {
                j.restarting = true;
                j.phase = "starting".into();
                // The stop half's deadlines are over.
                j.deadline_ms = None;
                j.phase_deadline_ms = None;
                j
            }
            other => {
                self.job = other;
                let kind = if incoming.is_some() {
                    Operation::Accept
                } else {
                    Operation::Start
                };
                self.new_job(now, kind, "checking")
            }
        };
        job.paused = paused || incoming.is_some();
        job.before = Some(before);
        self.gen += 1;
        self.run = Some(Run {
            gen: self.gen,
            pid: None,
            link: Link::None,
            exited: None,
            info: None,
            shutdown: None,
            stop_requested: false,
            watched: true,
            balloon: None,
            guest_memory: None,
        });
        self.unresponsive = false;
        self.dir_exists = true;
        let task = Task::Start {
            job: job.id,
            gen: self.gen,
            spec: Box::new(spec),
            paused: job.paused,
            resume: false,
            undo: Vec::new(),
            incoming,
            memory: self.start_memory.take(),
        };
        if job.restarting {
            let persist = Self::persisted(&job);
            let info = self.describe(&job, None, None);
            self.job = Some(job);
            fx.push(Effect::PersistJob(persist));
            fx.push(Effect::JobUpdated(info.clone()));
            fx.push(Effect::Event(EventKind::JobProgress(info)));
        } else {
            self.begin(job, ticket, fx);
        }
        self.set_state(VmState::Starting, fx);
        fx.push(Effect::Spawn(task));
    }

    pub(super) fn on_start_done(
        &mut self,
        gen: u64,
        result: Result<RunInfo, ApiError>,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        if gen != self.gen {
            return;
        }
        match result {
            Ok(info) => {
                let paused = self.job.as_ref().is_some_and(|j| j.paused);
                let accept = self
                    .job
                    .as_ref()
                    .is_some_and(|j| j.kind == Operation::Accept);
                self.last_spec = Some(info.spec.clone());
                if let Some(run) = self.run.as_mut() {
                    run.balloon = info.startup_balloon();
                    run.info = Some(info);
                }
                self.start_cancelled_by_stop = false;
                self.incoming = accept;
                self.set_state(
                    if accept {
                        VmState::Incoming
                    } else if paused {
                        VmState::Paused
                    } else {
                        VmState::Running
                    },
                    fx,
                );
                self.end_job(JobOutcome::Done { stop: None }, now, fx);
                // QEMU may already be gone (the guest died right after `cont`).
                self.exit_when_ready(gen, now, fx);
            }
            Err(e) => {
                // The task undid everything (QEMU killed, hooks run, files removed).
                fx.push(Effect::ReleaseUid);
                self.run = None;
                let before = self.job.as_mut().and_then(|j| j.before.take());
                let before = before.unwrap_or(Before {
                    state: VmState::Stopped,
                    last_exit: None,
                    dir_exists: false,
                });
                self.last_exit = before.last_exit;
                self.dir_exists = before.dir_exists;
                self.set_state(before.state, fx);
                let outcome = match self.job.as_ref().and_then(|j| j.cancelled.clone()) {
                    Some(reason) => JobOutcome::Cancelled { reason },
                    None => JobOutcome::Failed(e),
                };
                self.end_job(outcome, now, fx);
            }
        }
    }

    pub(super) fn on_qmp_done(
        &mut self,
        gen: u64,
        result: Result<(), ApiError>,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        let kind = self.job.as_ref().map(|j| j.kind);
        if let (Ok(()), true) = (&result, gen == self.gen) {
            // QEMU answered in time: it is not wedged (any more).
            if self.unresponsive {
                fx.push(Effect::Event(EventKind::Qemu(QemuEvent::Responsive)));
                self.set_unresponsive(false, fx);
            }
            match kind {
                Some(Operation::Pause) if self.state == VmState::Running => {
                    self.set_state(VmState::Paused, fx)
                }
                Some(Operation::Resume) if self.state == VmState::Paused => {
                    self.set_state(VmState::Running, fx)
                }
                Some(Operation::FinalizeSrc) => {
                    self.moved_to = None;
                    self.migrated_out = false;
                    fx.push(Effect::MigratedMarker(None));
                    self.set_state(VmState::Running, fx)
                }
                Some(Operation::Pin) => {
                    if let (Some(mask), Some(info)) = (
                        self.pending_mask.take(),
                        self.run.as_mut().and_then(|r| r.info.as_mut()),
                    ) {
                        info.cpu_mask = mask.clone();
                        fx.push(Effect::RecordPin(mask));
                        fx.push(Effect::Publish);
                    }
                }
                Some(Operation::FinalizeDst) => {
                    self.incoming = false;
                    self.before_accept = None;
                    fx.push(Effect::IncomingDone);
                    self.set_state(VmState::Running, fx)
                }
                _ => {}
            }
        }
        let outcome = match result {
            Ok(()) => JobOutcome::Done { stop: None },
            Err(e) => JobOutcome::Failed(e),
        };
        self.end_job(outcome, now, fx);
    }

    /// Begin stopping the current QEMU within the running job (a stop, or a reboot's first
    /// half).
    pub(super) fn launch_stop(
        &mut self,
        now: Now,
        from: StopPhase,
        kill_at_ms: Option<u64>,
        fx: &mut Vec<Effect>,
    ) {
        let Some(run) = self.run.as_mut() else { return };
        run.stop_requested = true;
        let gen = run.gen;
        let acpi = run.info.as_ref().is_none_or(|i| i.acpi);
        let Some(job) = self.job.as_mut() else { return };
        // Only a running guest hears the button (not a paused one, nor one whose migration
        // holds it stopped).
        let acpi = acpi && self.state == VmState::Running && !job.force;
        let from = match from {
            _ if job.force => StopPhase::Sigkill,
            // A guest that cannot hear the button (paused, or no ACPI) gets SIGTERM at once.
            StopPhase::Acpi if !acpi => StopPhase::Sigterm,
            other => other,
        };
        if matches!(
            self.state,
            VmState::Running | VmState::Paused | VmState::Migrated | VmState::Incoming
        ) {
            job.before_stop = Some(self.state);
        }
        let deadline_ms = *job.deadline_ms.get_or_insert(now.ms + ms(job.timeout));
        job.phase = from.as_str().into();
        let task = Task::Stop {
            job: job.id,
            gen,
            acpi,
            from,
            deadline_ms,
            kill_at_ms,
        };
        self.set_state(VmState::Stopping, fx);
        fx.push(Effect::Spawn(task));
    }

    /// A stop is over when its task reported *and* the exit was classified (or the task
    /// failed and QEMU is still there).
    pub(super) fn stop_progress(&mut self, now: Now, fx: &mut Vec<Effect>) {
        let Some(job) = self.job.clone() else { return };
        let Some(end) = job.stop_end.clone() else {
            return;
        };
        match end {
            Ok(_) if self.has_qemu() => {} // the exit is on its way
            Ok(_) if job.kind == Operation::FinalizeDst => {
                if let Some(j) = self.job.as_mut() {
                    j.stop_end = None;
                    j.phase = "removing files".into();
                }
                self.drop_incoming(job.id, fx);
            }
            Ok(ended) => {
                let elapsed_ms = now.ms.saturating_sub(job.started_at_ms);
                if job.kind == Operation::Reboot {
                    if job.cancelled.is_some() {
                        let reason = job.cancelled.clone().unwrap_or_default();
                        self.end_job(JobOutcome::Cancelled { reason }, now, fx);
                    } else {
                        let paused = false;
                        self.begin_start(None, paused, now, fx);
                    }
                    return;
                }
                let stop = Some(StopResult { ended, elapsed_ms });
                self.end_job(JobOutcome::Done { stop }, now, fx);
            }
            Err(e) => {
                // The stop did not happen (cancelled, or QEMU would not die): QEMU is still
                // there and keeps running.
                if let Some(run) = self.run.as_mut() {
                    run.stop_requested = false;
                }
                if self.state == VmState::Stopping {
                    self.set_state(job.before_stop.unwrap_or(VmState::Running), fx);
                }
                let outcome = match job.cancelled.clone() {
                    Some(reason) => JobOutcome::Cancelled { reason },
                    None => JobOutcome::Failed(e),
                };
                self.end_job(outcome, now, fx);
            }
        }
    }

    /// Classify a recorded exit once nothing can change the verdict any more: the start is
    /// over, and QMP has delivered every event (a SHUTDOWN can arrive just after the pidfd
    /// fires). If QMP stays silent, classify after `exit_settle` anyway.
    pub(super) fn exit_when_ready(&mut self, gen: u64, now: Now, fx: &mut Vec<Effect>) {
        let Some(run) = self.run.as_ref().filter(|r| r.gen == gen) else {
            return;
        };
        let Some(status) = run.exited else { return };
        if self.starting() {
            return; // the start task decides
        }
        if matches!(run.link, Link::Up(_)) {
            fx.push(Effect::ArmExitSettle {
                gen,
                after: self.settings.exit_settle,
            });
        } else {
            self.on_exit(status, now, fx);
        }
    }

    pub(super) fn on_exit(&mut self, status: ExitStatus, now: Now, fx: &mut Vec<Effect>) {
        let Some(run) = self.run.take() else { return };
        fx.push(Effect::ReleaseUid);
        let reboot_exits = run.info.as_ref().is_some_and(|i| i.reboot_exits);
        let verdict = classify_exit(&ExitFacts {
            stop_requested: run.stop_requested,
            shutdown: run.shutdown.clone(),
            status,
            reboot_exits,
        });
        let migrated = self.exit_of_migration();
        self.migrated_out = false;
        let (kind, reason, restart) = match verdict {
            _ if migrated
                .as_ref()
                .is_some_and(|(k, _)| *k == ExitKind::Migrated) =>
            {
                let (kind, reason) = migrated.unwrap_or((ExitKind::Stopped, String::new()));
                (kind, reason, false)
            }
            ExitVerdict::Stopped if migrated.is_some() => {
                let (kind, reason) = migrated.unwrap_or((ExitKind::Stopped, String::new()));
                (kind, reason, false)
            }
            ExitVerdict::Stopped => (ExitKind::Stopped, "stopped by kvmd".to_string(), false),
            ExitVerdict::UserDown => (ExitKind::UserDown, USER_DOWN_REASON.to_string(), false),
            ExitVerdict::RestartForReboot => (
                ExitKind::Stopped,
                "the guest rebooted (reboot_behavior=exit); kvmd starts it again".to_string(),
                true,
            ),
            // A target's QEMU ends itself when the stream fails (QEMU drops a destination).
            ExitVerdict::Crashed(r) if self.incoming => (
                ExitKind::Crashed,
                format!("the incoming migration did not complete: {r}"),
                false,
            ),
            ExitVerdict::Crashed(r) => (ExitKind::Crashed, r, false),
        };
        let record = ExitRecord {
            kind,
            reason,
            exit_code: status.code,
            signal: status.signal,
            stderr_tail: Vec::new(),
            pid: run.pid.unwrap_or(0),
            at_ms: now.ms,
        };
        self.unresponsive = false;
        self.last_exit = Some(record.clone());
        fx.push(Effect::RecordExit {
            gen: run.gen,
            epoch: self.epoch,
            record: record.clone(),
            taps: run
                .info
                .as_ref()
                .map(|i| i.taps.clone())
                .unwrap_or_default(),
            spec: run.info.as_ref().map(|i| Box::new(i.spec.clone())),
        });
        fx.push(Effect::Event(EventKind::Exited(record)));
        self.set_state(VmState::after_exit(kind), fx);
        if self.job.as_ref().is_some_and(|j| j.stop_end.is_some()) {
            self.stop_progress(now, fx);
        } else if self.job.as_ref().is_some_and(|j| {
            matches!(j.kind, Operation::Stop | Operation::Reboot)
                || (matches!(j.kind, Operation::FinalizeSrc | Operation::FinalizeDst)
                    && run.stop_requested)
        }) {
            // The stop task will report in a moment; the job ends then.
        } else if let Some(job) = self.job.as_ref() {
            // QEMU went away under a short job (pause, resume, reset): it ends with its task.
            let _ = job;
        } else if restart {
            self.begin_start(None, false, now, fx);
        }
        if self.job.is_none() {
            self.run_deferred(now, fx);
        }
    }

    /// Cancel job `id`, if it is the running one and can be cancelled.
    pub(super) fn cancel(
        &mut self,
        id: JobId,
        reason: &str,
        fx: &mut Vec<Effect>,
    ) -> Result<Answer, ApiError> {
        let Some(job) = self.job.as_mut().filter(|j| j.id == id) else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("{} has no running job {id}", self.name),
            ));
        };
        match job.kind {
            Operation::Start => {}
            Operation::Migrate if job.phase == "postcopy-active" => {
                return Err(ApiError::new(
                    ErrorCode::NotCancellable,
                    format!(
                        "The migrate job {id} runs postcopy: the guest is on the target, so it cannot be taken back"
                    ),
                ))
            }
            Operation::Migrate => {}
            // A signal cannot be taken back: only the power-button phase of a stop (or of a
            // reboot's stop half) can be cancelled.
            Operation::Stop | Operation::Reboot
                if job.restarting || job.phase == StopPhase::Acpi.as_str() => {}
            Operation::Stop | Operation::Reboot => {
                return Err(ApiError::new(
                    ErrorCode::NotCancellable,
                    format!(
                    "The {} job {id} is past the power button ({} sent): it cannot be taken back",
                    job.kind,
                    job.phase.to_uppercase()
                ),
                ))
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::NotCancellable,
                    format!("A {other} job runs to its end and cannot be cancelled"),
                ))
            }
        }
        if job.cancelled.is_none() {
            job.cancelled = Some(reason.to_string());
            fx.push(Effect::Control(id, TaskControl::Cancel));
        }
        let job = job.clone();
        Ok(Answer::Cancelling(self.describe(&job, None, None)))
    }
}
