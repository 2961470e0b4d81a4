//! The admission table: which request is allowed in which state and during which job, and
//! what a refusal says. [`rule`] is the table, a pure function of the request, the running
//! job and a few facts about the VM; [`Core::admit`] carries the rule out.

use super::{
    Answer, Core, Deferred, Effect, Job, Now, Outcome, QmpAction, Request, StopPhase, Task,
    TaskControl, Ticket,
};
use crate::api::{ApiError, ErrorCode};
use crate::model::job::Operation;
use crate::model::state::VmState;

/// What the operator asked, as far as admission cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    Start,
    Stop,
    /// `stop --force`.
    Kill,
    Reboot,
    Reset,
    Pause,
    Resume,
    Cleanup,
    Migrate,
    Accept,
    FinalizeSrc {
        success: bool,
    },
    FinalizeDst {
        success: bool,
    },
    Pin,
    Balloon,
    Hotplug,
}

/// The running job, as far as admission cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    pub kind: Operation,
    /// A stop that kills at once.
    pub force: bool,
}

/// What admission looks at besides the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// A QEMU exists (maybe on its way out).
    pub has_qemu: bool,
    /// That QEMU exited and its exit is being classified.
    pub exiting: bool,
    pub state: VmState,
    /// A pidfd watches that QEMU (false: adopted, but kvmd cannot see it exit yet).
    pub watched: bool,
    /// This node took the VM by an incoming migration not finalized yet.
    pub incoming: bool,
}

/// What the table says to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Begin a job for it.
    Begin,
    /// Refuse, with this code and reason.
    Refuse(ErrorCode, &'static str),
    /// It asks for what the running job already does: answer when that job ends.
    Join,
    /// A forced stop joining a running stop: skip to SIGKILL, then join.
    Escalate,
    /// Cancel the running job (rolling it back), then take the request up.
    CancelThenDefer,
    /// Take it up when the running job has ended.
    Defer,
    /// A stop with nothing to stop.
    AlreadyStopped,
    /// A finalization with nothing left to do.
    Unchanged,
}

/// The admission table.
pub fn rule(ask: Ask, job: Option<Running>, vm: Facts) -> Rule {
    use Ask::*;
    use Operation as Op;
    let up = matches!(vm.state, VmState::Running | VmState::Paused);
    match (ask, job.map(|j| (j.kind, j.force))) {
        // Right after kvmd starts: wait until the instance knows whether its QEMU runs.
        (_, Some((Op::Recovery, _))) => Rule::Defer,

        (Start, Some(_)) => Rule::Refuse(ErrorCode::Busy, "another job is in progress"),
        // The VM lives on another node now: starting it here would run it twice.
        (Start, None) if vm.state == VmState::Moved => Rule::Refuse(
            ErrorCode::AlreadyRunning,
            "cannot start: it was migrated to another node (see its last exit); `cleanup` first to start it here",
        ),
        (Start, None) if vm.has_qemu && vm.exiting => Rule::Defer,
        (Start, None) if vm.has_qemu => Rule::Refuse(ErrorCode::AlreadyRunning, "it is running"),
        (Start, None) => Rule::Begin,

        // A stop during a start cancels the start (rolled back: no QEMU is left).
        (Stop | Kill, Some((Op::Start, _))) => Rule::CancelThenDefer,
        (Kill, Some((Op::Reboot, _))) => Rule::CancelThenDefer,
        (Stop, Some((Op::Stop, _))) => Rule::Join,
        (Kill, Some((Op::Stop, false))) => Rule::Escalate,
        (Kill, Some((Op::Stop, true))) => Rule::Join,
        // Behind a pause, resume, reset, cleanup or reboot: after it (a stop after a pause
        // sees a paused guest and does not press a button nobody hears).
        (Stop | Kill, Some(_)) => Rule::Defer,
        (Stop | Kill, None) if vm.has_qemu && !vm.watched => Rule::Refuse(
            ErrorCode::Unresponsive,
            "kvmd cannot watch its QEMU yet (no pidfd); it keeps trying",
        ),
        (Stop | Kill, None) if vm.has_qemu => Rule::Begin,
        (Stop | Kill, None) => Rule::AlreadyStopped,

        (Reboot | Reset | Pause | Resume, Some(_)) => {
            Rule::Refuse(ErrorCode::Busy, "another job is in progress")
        }
        (Reboot | Reset, None) if vm.has_qemu && up && !vm.exiting => Rule::Begin,
        (Reboot, None) => {
            Rule::Refuse(ErrorCode::NotRunning, "a reboot needs it running or paused")
        }
        (Reset, None) => Rule::Refuse(
            ErrorCode::NotRunning,
            "a hard reboot needs it running or paused",
        ),
        (Pause, None) if vm.has_qemu && vm.state == VmState::Running => Rule::Begin,
        (Pause, None) => Rule::Refuse(ErrorCode::NotRunning, "pause needs it running"),
        (Resume, None) if vm.has_qemu && vm.state == VmState::Paused => Rule::Begin,
        (Resume, None) => Rule::Refuse(ErrorCode::NotRunning, "resume needs it paused"),

        // `stop && cleanup`, or a cleanup sent right after a power-off: after the exit.
        (Cleanup, Some((Op::Stop, _))) => Rule::Defer,
        (Cleanup, Some(_)) => Rule::Refuse(ErrorCode::Busy, "another job is in progress"),
        (Cleanup, None) if vm.has_qemu && vm.exiting => Rule::Defer,
        (Cleanup, None) if vm.has_qemu => {
            Rule::Refuse(ErrorCode::AlreadyRunning, "cannot clean up: it is running")
        }
        (Cleanup, None) => Rule::Begin,

        (Pin | Balloon | Hotplug, Some(_)) => {
            Rule::Refuse(ErrorCode::Busy, "another job is in progress")
        }
        (Hotplug, None) if vm.has_qemu && up && !vm.exiting => Rule::Begin,
        (Hotplug, None) => Rule::Refuse(ErrorCode::NotRunning, "hot-plug needs it running or paused"),
        // A paused guest's driver cannot move the balloon.
        (Balloon, None) if vm.has_qemu && vm.state == VmState::Running && !vm.exiting => {
            Rule::Begin
        }
        (Balloon, None) => Rule::Refuse(
            ErrorCode::NotRunning,
            "the balloon needs it running (the guest's driver moves it)",
        ),
        (Pin, None) if vm.has_qemu && up && !vm.exiting => Rule::Begin,
        (Pin, None) => Rule::Refuse(ErrorCode::NotRunning, "pinning needs it running or paused"),

        (Migrate | Accept | FinalizeSrc { .. } | FinalizeDst { .. }, Some(_)) => {
            Rule::Refuse(ErrorCode::Busy, "another job is in progress")
        }
        (Migrate, None) if vm.has_qemu && vm.incoming => Rule::Refuse(
            ErrorCode::NotRunning,
            "its incoming migration is not finalized (finalize-dst first)",
        ),
        (Migrate, None) if vm.has_qemu && up && !vm.exiting && vm.watched => Rule::Begin,
        (Migrate, None) => {
            Rule::Refuse(ErrorCode::NotRunning, "a migration needs it running or paused")
        }
        (Accept, None) if vm.has_qemu => Rule::Refuse(
            ErrorCode::AlreadyRunning,
            "cannot accept it: it runs on this node already",
        ),
        (Accept, None) => Rule::Begin,
        (FinalizeSrc { .. }, None) if vm.state == VmState::Migrated && vm.has_qemu => Rule::Begin,
        // The migration failed and the guest was resumed (or stayed paused) already.
        (FinalizeSrc { success: false }, None) if up => Rule::Unchanged,
        (FinalizeSrc { success: true }, None) if vm.state == VmState::Moved => Rule::Unchanged,
        (FinalizeSrc { .. }, None) => Rule::Refuse(
            ErrorCode::NotRunning,
            "no completed migration to finalize",
        ),
        (FinalizeDst { success: true }, None) if vm.incoming && vm.has_qemu && !vm.exiting => {
            Rule::Begin
        }
        (FinalizeDst { success: true }, None) if !vm.incoming && up => Rule::Unchanged,
        (FinalizeDst { success: true }, None) => Rule::Refuse(
            ErrorCode::NotRunning,
            "no incoming migration whose QEMU is alive to run",
        ),
        (FinalizeDst { success: false }, None) if vm.incoming => Rule::Begin,
        (FinalizeDst { success: false }, None) if up => Rule::Refuse(
            ErrorCode::AlreadyRunning,
            "cannot drop it: the migration was finalized and the VM runs here",
        ),
        (FinalizeDst { success: false }, None) => Rule::Unchanged,
    }
}

fn ask_of(r: &Request) -> Option<Ask> {
    Some(match r {
        Request::Start { .. } => Ask::Start,
        Request::Stop { force: false, .. } => Ask::Stop,
        Request::Stop { force: true, .. } => Ask::Kill,
        Request::Reboot { .. } => Ask::Reboot,
        Request::Reset => Ask::Reset,
        Request::Pause => Ask::Pause,
        Request::Resume => Ask::Resume,
        Request::Cleanup => Ask::Cleanup,
        Request::Migrate { .. } => Ask::Migrate,
        Request::Accept { .. } => Ask::Accept,
        Request::FinalizeSrc { success } => Ask::FinalizeSrc { success: *success },
        Request::FinalizeDst { success } => Ask::FinalizeDst { success: *success },
        Request::Pin { .. } => Ask::Pin,
        Request::Balloon { .. } => Ask::Balloon,
        Request::HotplugAdd { .. } | Request::HotplugDel { .. } | Request::HotplugMod { .. } => {
            Ask::Hotplug
        }
        Request::Cancel { .. } | Request::MigrateCancel => return None,
    })
}

impl Core {
    fn facts(&self) -> Facts {
        Facts {
            has_qemu: self.has_qemu(),
            // Exited, or said it shuts down (QEMU exits after a SHUTDOWN event).
            exiting: self
                .run
                .as_ref()
                .is_some_and(|r| r.exited.is_some() || r.shutdown.is_some()),
            state: self.state,
            watched: self.run.as_ref().is_none_or(|r| r.watched),
            incoming: self.incoming,
        }
    }

    fn running(&self) -> Option<Running> {
        self.job.as_ref().map(|j| Running {
            kind: j.kind,
            force: j.force,
        })
    }

    fn refusal(&self, code: ErrorCode, why: &str) -> ApiError {
        let detail = match (code, &self.job) {
            (ErrorCode::Busy, Some(j)) => format!("{} job {} is in progress", j.kind, j.id),
            (ErrorCode::AlreadyRunning, _) => match self.run.as_ref().and_then(|r| r.pid) {
                Some(pid) => format!("{why} (pid {pid})"),
                None => why.to_string(),
            },
            _ => format!("{why}; it is {}", self.state().as_str()),
        };
        let verb = match code {
            ErrorCode::Busy => "is busy",
            ErrorCode::AlreadyRunning => "cannot start",
            _ => "cannot do that",
        };
        let message = match code {
            ErrorCode::NotRunning => format!("{} is not running: {detail}", self.name),
            ErrorCode::AlreadyRunning if why.starts_with("cannot") => {
                format!("{}: {detail}", self.name)
            }
            _ => format!("{} {verb}: {detail}", self.name),
        };
        ApiError::new(code, message)
    }

    pub(super) fn answer(&self, ticket: Ticket, r: Result<Answer, ApiError>, fx: &mut Vec<Effect>) {
        fx.push(Effect::Answer(
            ticket,
            Outcome::Now(r),
            Box::new(self.info()),
        ));
    }

    /// Decide on one request (a new one, or a deferred one whose turn came).
    pub(super) fn admit(
        &mut self,
        ticket: Ticket,
        request: Request,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        let Some(ask) = ask_of(&request) else { return };
        match rule(ask, self.running(), self.facts()) {
            Rule::Refuse(code, why) => self.answer(ticket, Err(self.refusal(code, why)), fx),
            Rule::AlreadyStopped if self.start_cancelled_by_stop => {
                self.answer(ticket, Ok(Answer::StartCancelled), fx)
            }
            Rule::AlreadyStopped => self.answer(ticket, Ok(Answer::AlreadyStopped), fx),
            Rule::Unchanged => self.answer(ticket, Ok(Answer::Unchanged), fx),
            Rule::Defer => self.defer(ticket, request, fx),
            Rule::CancelThenDefer => {
                if let Some(id) = self.job_id() {
                    let _ = self.cancel(id, "cancelled by a stop", fx);
                    if self
                        .job
                        .as_ref()
                        .is_some_and(|j| j.kind == Operation::Start)
                    {
                        self.start_cancelled_by_stop = true;
                    }
                }
                self.defer(ticket, request, fx);
            }
            Rule::Join | Rule::Escalate => {
                let escalate = matches!(rule(ask, self.running(), self.facts()), Rule::Escalate);
                if let Some(job) = self.job.as_mut() {
                    if escalate && !job.force {
                        job.force = true;
                        fx.push(Effect::Control(job.id, TaskControl::Escalate));
                    }
                    job.tickets.push(ticket);
                    let job = job.clone();
                    let info = self.describe(&job, None, None);
                    fx.push(Effect::Answer(
                        ticket,
                        Outcome::Accepted(info),
                        Box::new(self.info()),
                    ));
                }
            }
            Rule::Begin => self.begin_request(ticket, request, now, fx),
        }
    }

    fn defer(&mut self, ticket: Ticket, request: Request, fx: &mut Vec<Effect>) {
        if self.deferred.len() >= self.settings.max_deferred {
            let e = ApiError::new(
                ErrorCode::Busy,
                format!(
                    "{} is busy: {} requests already wait for the running job",
                    self.name,
                    self.deferred.len()
                ),
            );
            self.answer(ticket, Err(e), fx);
            return;
        }
        self.deferred.push_back(Deferred { ticket, request });
    }

    /// Why start-up memory `mib` cannot be had for the config's definition.
    fn bad_startup_memory(&self, mib: u64) -> Option<ApiError> {
        bad_startup_memory(self.spec.as_ref()?, mib)
    }

    fn begin_request(&mut self, ticket: Ticket, request: Request, now: Now, fx: &mut Vec<Effect>) {
        let gen = self.gen;
        match request {
            Request::Start {
                paused,
                check,
                memory,
                spec: Some(spec),
            } => {
                if let Some(e) = check.or_else(|| memory.and_then(|m| bad_startup_memory(&spec, m)))
                {
                    return self.answer(ticket, Err(e), fx);
                }
                self.start_memory = memory;
                self.launch_start(Some(ticket), *spec, paused, None, now, fx);
            }
            Request::Start {
                paused,
                check,
                memory,
                spec: None,
            } => {
                if let Some(e) = self.startable(check) {
                    return self.answer(ticket, Err(e), fx);
                }
                if let Some(e) = memory.and_then(|m| self.bad_startup_memory(m)) {
                    return self.answer(ticket, Err(e), fx);
                }
                self.start_memory = memory;
                self.begin_start(Some(ticket), paused, now, fx);
            }
            Request::Stop { timeout, force } => {
                let mut job = self.new_job(now, Operation::Stop, StopPhase::Acpi.as_str());
                job.force = force;
                job.timeout = timeout.unwrap_or(self.settings.stop_timeout);
                job.deadline_ms = Some(now.ms + super::ms(job.timeout));
                if force {
                    job.phase = StopPhase::Sigkill.as_str().into();
                }
                self.begin(job, Some(ticket), fx);
                self.launch_stop(now, StopPhase::Acpi, None, fx);
            }
            Request::Reboot { timeout, check } => {
                if let Some(e) = self.startable(check) {
                    return self.answer(ticket, Err(e), fx);
                }
                let mut job = self.new_job(now, Operation::Reboot, StopPhase::Acpi.as_str());
                job.timeout = timeout.unwrap_or(self.settings.stop_timeout);
                job.deadline_ms = Some(now.ms + super::ms(job.timeout));
                self.begin(job, Some(ticket), fx);
                self.launch_stop(now, StopPhase::Acpi, None, fx);
            }
            Request::Reset | Request::Pause | Request::Resume => {
                let (kind, action) = match request {
                    Request::Reset => (Operation::Reset, QmpAction::Reset),
                    Request::Pause => (Operation::Pause, QmpAction::Pause),
                    _ => (Operation::Resume, QmpAction::Resume),
                };
                let job: Job = self.new_job(now, kind, "qmp");
                let id = job.id;
                self.begin(job, Some(ticket), fx);
                fx.push(Effect::Spawn(Task::Qmp {
                    job: id,
                    gen,
                    action,
                }));
            }
            Request::Cleanup => {
                // From now on, a late exit record of the last QEMU cannot bring history back.
                self.epoch += 1;
                let job = self.new_job(now, Operation::Cleanup, "removing files");
                let id = job.id;
                self.begin(job, Some(ticket), fx);
                fx.push(Effect::Spawn(Task::Cleanup { job: id }));
            }
            Request::Migrate { uri, live } => self.begin_migrate(ticket, uri, live, now, fx),
            Request::Accept { spec, incoming } => {
                self.begin_accept(ticket, *spec, incoming, now, fx)
            }
            Request::FinalizeSrc { success } => self.begin_finalize_src(ticket, success, now, fx),
            Request::FinalizeDst { success } => self.begin_finalize_dst(ticket, success, now, fx),
            Request::Pin { mask } => {
                let job = self.new_job(now, Operation::Pin, "pinning");
                let id = job.id;
                self.pending_mask = Some(mask.clone());
                self.begin(job, Some(ticket), fx);
                fx.push(Effect::Spawn(Task::Pin { job: id, gen, mask }));
            }
            Request::HotplugAdd { device } => {
                let Some(info) = self.run.as_ref().and_then(|r| r.info.as_ref()) else {
                    return self.answer(
                        ticket,
                        Err(self.refusal(ErrorCode::NotRunning, "its QEMU is not recorded yet")),
                        fx,
                    );
                };
                let ports = info.hardware.hotplug_ports;
                let q35 = info.hardware.machine.starts_with("pc-q35");
                let port = crate::model::hotplug::free_port(ports, &info.hotplugged);
                if q35 && port.is_none() {
                    // Refused before QEMU is asked anything.
                    let e = if ports == 0 {
                        ApiError::new(
                            ErrorCode::BadRequest,
                            format!(
                                "{} has no spare pcie-root-port for hot-plug: it started with the node setting hotplug_ports = 0 (q35's pcie.0 takes no hot-plugged device); raise hotplug_ports and restart the VM",
                                self.name
                            ),
                        )
                    } else {
                        ApiError::new(
                            ErrorCode::Busy,
                            format!(
                                "all {ports} spare pcie-root-ports of {} are taken (node setting hotplug_ports = {ports} when it started); unplug a device first",
                                self.name
                            ),
                        )
                    };
                    return self.answer(ticket, Err(e), fx);
                }
                let others = info.hotplugged.clone();
                let intent = crate::model::hotplug::HotRecord {
                    id: crate::model::hotplug::next_id(device.kind(), &others),
                    slot: 0,
                    port: if q35 { port } else { None },
                    device,
                    plugging: true,
                    pending_removal: false,
                    tap: None,
                    link_up: true,
                };
                if let Some(i) = self.run.as_mut().and_then(|r| r.info.as_mut()) {
                    i.hotplugged.push(intent.clone());
                }
                let job = self.new_job(now, Operation::Hotplug, "plugging");
                let id = job.id;
                self.begin(job, Some(ticket), fx);
                fx.push(Effect::Spawn(Task::HotplugAdd {
                    job: id,
                    gen,
                    intent,
                    others,
                }));
            }
            Request::HotplugDel { id: dev } => {
                let record = self
                    .run
                    .as_ref()
                    .and_then(|r| r.info.as_ref())
                    .and_then(|i| i.hotplugged.iter().find(|r| r.id == dev).cloned());
                let Some(record) = record else {
                    let e = ApiError::new(
                        ErrorCode::NotFound,
                        format!(
                            "{} has no plugged device {}",
                            self.name,
                            crate::model::text::escape(&dev)
                        ),
                    );
                    return self.answer(ticket, Err(e), fx);
                };
                let job = self.new_job(now, Operation::Hotplug, "unplugging");
                let id = job.id;
                self.begin(job, Some(ticket), fx);
                fx.push(Effect::Spawn(Task::HotplugDel {
                    job: id,
                    gen,
                    record,
                }));
            }
            Request::HotplugMod { id: dev, link_up } => {
                let record = self
                    .run
                    .as_ref()
                    .and_then(|r| r.info.as_ref())
                    .and_then(|i| i.hotplugged.iter().find(|r| r.id == dev).cloned());
                let e = match &record {
                    None => Some(ApiError::new(
                        ErrorCode::NotFound,
                        format!("{} has no plugged device {}", self.name, crate::model::text::escape(&dev)),
                    )),
                    Some(r) if !matches!(r.device, crate::model::hotplug::HotDevice::Nic { .. }) => {
                        Some(ApiError::invalid(vec![crate::model::field_error::FieldError::new(
                            "device",
                            dev.clone(),
                            "only a NIC's link changes live; any other change to a disk needs a re-plug (hotplug del, then add)",
                        )]))
                    }
                    Some(_) => None,
                };
                if let Some(e) = e {
                    return self.answer(ticket, Err(e), fx);
                }
                let job = self.new_job(now, Operation::Hotplug, "setting the link");
                let id = job.id;
                self.begin(job, Some(ticket), fx);
                fx.push(Effect::Spawn(Task::HotplugMod {
                    job: id,
                    gen,
                    id: dev,
                    link_up,
                }));
            }
            Request::Balloon { mib } => {
                let (memory, min) = self
                    .running_spec()
                    .map_or((0, 0), |s| (s.memory, s.min_memory.min(s.memory)));
                if mib < min || mib > memory {
                    let e = ApiError::invalid(vec![crate::model::field_error::FieldError::new(
                        "mib",
                        mib.to_string(),
                        format!(
                            "must be between min_memory ({min}) and memory ({memory}) of {}",
                            self.name
                        ),
                    )]);
                    return self.answer(ticket, Err(e), fx);
                }
                let job = self.new_job(now, Operation::Balloon, "moving");
                let id = job.id;
                if let Some(run) = self.run.as_mut() {
                    let actual = run.balloon.as_ref().map_or(memory, |b| b.actual_mib);
                    run.balloon = Some(crate::api::BalloonInfo {
                        target_mib: mib,
                        actual_mib: actual,
                        state: "moving".into(),
                    });
                }
                self.begin(job, Some(ticket), fx);
                fx.push(Effect::Spawn(Task::Balloon { job: id, gen, mib }));
            }
            Request::Cancel { .. } | Request::MigrateCancel => {}
        }
    }

    /// Why a start (or a reboot's start half) cannot happen, if it cannot.
    fn startable(&self, check: Option<ApiError>) -> Option<ApiError> {
        if self.spec.is_none() {
            return Some(ApiError::new(
                ErrorCode::NotFound,
                format!("{} is not defined in the config any more", self.name),
            ));
        }
        check
    }
}

/// Why start-up memory `mib` cannot be had: it must lie in min_memory..=memory.
fn bad_startup_memory(spec: &crate::model::spec::InstanceSpec, mib: u64) -> Option<ApiError> {
    (mib < spec.min_memory || mib > spec.memory).then(|| {
        ApiError::invalid(vec![crate::model::field_error::FieldError::new(
            "memory",
            mib.to_string(),
            format!(
                "start-up memory must lie between the instance's min_memory ({}) and memory ({}) MiB",
                spec.min_memory, spec.memory
            ),
        )])
    })
}
