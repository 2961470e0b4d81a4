//! The core's rules as sentences: no QEMU, no actor, no clock, no sleeping.

mod hotplug;
mod migration;
mod recovery;

use std::time::Duration;

use super::*;
use crate::api::JobState;
use crate::model::hvparams::HvOverrides;
use crate::model::spec::InstanceSpec;

fn spec() -> InstanceSpec {
    InstanceSpec {
        name: InstanceName::parse("vm1").unwrap(),
        uuid: "6c3b2a9e-8f41-4d2c-9e7a-1b2c3d4e5f60".into(),
        memory: 128,
        min_memory: 128,
        vcpus: 1,
        network_port: None,
        disks: Vec::new(),
        nics: Vec::new(),
        hvparams: HvOverrides::new(),
        autostart: false,
    }
}

fn run_info(reboot_exits: bool) -> RunInfo {
    RunInfo {
        spec: spec(),
        started_at_ms: 1,
        qemu_version: "7.2".into(),
        acpi: true,
        reboot_exits,
        taps: Vec::new(),
        pool_uid: None,
        cpu_mask: "all".into(),
        hardware: Default::default(),
        hotplugged: Vec::new(),
        startup_memory_mib: None,
    }
}

/// A core and a clock: every call gets a later time and a fresh job id.
struct T {
    core: Core,
    ms: u64,
    ticket: Ticket,
}

impl T {
    fn now(&mut self) -> Now {
        self.ms += 10;
        Now {
            ms: self.ms,
            id: JobId(self.ms),
        }
    }

    fn new_core(autostart: bool, s: Option<InstanceSpec>) -> T {
        let mut t = T {
            core: Core::new(
                InstanceName::parse("vm1").unwrap(),
                s,
                Settings::new(Duration::from_secs(30)),
                autostart,
                Now {
                    ms: 0,
                    id: JobId(0),
                },
            ),
            ms: 1000,
            ticket: 0,
        };
        t.ms = 1000;
        t
    }

    /// A recovered instance with no QEMU.
    fn stopped() -> T {
        let mut t = T::new_core(false, Some(spec()));
        t.input(Input::Recovered(nothing()));
        t
    }

    fn req(&mut self, r: Request) -> (Ticket, Vec<Effect>) {
        self.ticket += 1;
        let now = self.now();
        (self.ticket, self.core.request(self.ticket, r, now))
    }

    fn input(&mut self, i: Input) -> Vec<Effect> {
        let now = self.now();
        self.core.input(i, now)
    }

    /// A running instance (generation 1, QMP connection 1).
    fn running(reboot_exits: bool) -> T {
        let mut t = T::stopped();
        let (_, fx) = t.req(start());
        let job = started_job(&fx);
        let gen = t.core.gen();
        t.input(Input::Spawned { gen, pid: 4242 });
        t.input(Input::QmpUp { gen, conn: 1 });
        t.input(Input::StartDone {
            job,
            gen,
            result: Ok(run_info(reboot_exits)),
        });
        assert_eq!(t.core.state(), VmState::Running);
        t
    }

    fn job(&self) -> JobId {
        self.core.job_id().expect("a job runs")
    }
}

fn nothing() -> RecoveryFacts {
    RecoveryFacts {
        gen: 1,
        dir_exists: false,
        exit_record: None,
        runtime: RuntimeState::Missing,
        pidfile_pid: None,
        job: None,
        legacy_stopping: false,
        incoming: false,
        migrated: None,
        qemu: FoundQemu::None,
    }
}

fn start() -> Request {
    Request::Start {
        paused: false,
        check: None,
        memory: None,
        spec: None,
    }
}

fn stop(force: bool) -> Request {
    Request::Stop {
        timeout: None,
        force,
    }
}

/// The guest powered itself off.
fn guest_off(gen: u64) -> Input {
    Input::Guest {
        gen,
        event: GuestEvent::Shutdown {
            guest: true,
            reason: "guest-shutdown".into(),
        },
    }
}

/// The guest rebooted itself (under `reboot_behavior=exit`, QEMU then exits).
fn guest_reboot(gen: u64) -> Input {
    Input::Guest {
        gen,
        event: GuestEvent::Shutdown {
            guest: true,
            reason: "guest-reset".into(),
        },
    }
}

/// QEMU exited with status 0.
fn exited_ok(gen: u64) -> Input {
    Input::Exited {
        gen,
        status: ExitStatus {
            code: Some(0),
            signal: None,
        },
    }
}

/// QEMU was killed with SIGKILL.
fn killed(gen: u64) -> Input {
    Input::Exited {
        gen,
        status: ExitStatus {
            code: None,
            signal: Some(9),
        },
    }
}

fn started_job(fx: &[Effect]) -> JobId {
    fx.iter()
        .find_map(|e| match e {
            Effect::Spawn(Task::Start { job, .. }) => Some(*job),
            _ => None,
        })
        .expect("a start task")
}

fn stop_task(fx: &[Effect]) -> Option<(JobId, bool, StopPhase, u64)> {
    fx.iter().find_map(|e| match e {
        Effect::Spawn(Task::Stop {
            job,
            acpi,
            from,
            deadline_ms,
            ..
        }) => Some((*job, *acpi, *from, *deadline_ms)),
        _ => None,
    })
}

fn answer(fx: &[Effect], ticket: Ticket) -> Option<Outcome> {
    fx.iter().find_map(|e| match e {
        Effect::Answer(t, o, _) if *t == ticket => Some(o.clone()),
        _ => None,
    })
}

fn refused(fx: &[Effect], ticket: Ticket) -> ErrorCode {
    match answer(fx, ticket) {
        Some(Outcome::Now(Err(e))) => e.code,
        other => panic!("not refused: {other:?}"),
    }
}

fn ended(fx: &[Effect], ticket: Ticket) -> JobInfo {
    match answer(fx, ticket) {
        Some(Outcome::Ended(j)) => j,
        other => panic!("not ended: {other:?}"),
    }
}

fn recorded(fx: &[Effect]) -> Option<ExitRecord> {
    fx.iter().find_map(|e| match e {
        Effect::RecordExit { record, .. } => Some(record.clone()),
        _ => None,
    })
}

// ---- the admission table ------------------------------------------------------------------

#[test]
fn the_admission_table() {
    use Ask::*;
    let vm = |has_qemu, exiting, state| Facts {
        has_qemu,
        exiting,
        state,
        watched: true,
        incoming: false,
    };
    let job = |kind, force| Some(Running { kind, force });
    let stopped = vm(false, false, VmState::Stopped);
    let running = vm(true, false, VmState::Running);
    let paused = vm(true, false, VmState::Paused);
    let exiting = vm(true, true, VmState::UserDown);
    let busy = Rule::Refuse(ErrorCode::Busy, "another job is in progress");
    #[rustfmt::skip]
    let table: Vec<(Ask, Option<Running>, Facts, Rule)> = vec![
        (Start,   None,                                 stopped, Rule::Begin),
        (Start,   None,                                 running, Rule::Refuse(ErrorCode::AlreadyRunning, "it is running")),
        (Start,   None,                                 exiting, Rule::Defer),
        (Start,   job(Operation::Stop, false),          running, busy.clone()),
        (Start,   job(Operation::Recovery, false),      stopped, Rule::Defer),
        (Stop,    None,                                 running, Rule::Begin),
        (Stop,    None,                                 stopped, Rule::AlreadyStopped),
        (Stop,    job(Operation::Stop, false),          running, Rule::Join),
        (Kill,    job(Operation::Stop, false),          running, Rule::Escalate),
        (Kill,    job(Operation::Stop, true),           running, Rule::Join),
        (Stop,    job(Operation::Start, false),         running, Rule::CancelThenDefer),
        (Kill,    job(Operation::Start, false),         running, Rule::CancelThenDefer),
        (Stop,    job(Operation::Pause, false),         running, Rule::Defer),
        (Stop,    job(Operation::Reboot, false),        running, Rule::Defer),
        (Kill,    job(Operation::Reboot, false),        running, Rule::CancelThenDefer),
        (Stop,    job(Operation::Recovery, false),      stopped, Rule::Defer),
        (Reboot,  None,                                 running, Rule::Begin),
        (Reboot,  None,                                 paused,  Rule::Begin),
        (Reboot,  None,                                 stopped, Rule::Refuse(ErrorCode::NotRunning, "a reboot needs it running or paused")),
        (Reboot,  job(Operation::Pause, false),         running, busy.clone()),
        (Reset,   None,                                 running, Rule::Begin),
        (Pause,   None,                                 running, Rule::Begin),
        (Pause,   None,                                 paused,  Rule::Refuse(ErrorCode::NotRunning, "pause needs it running")),
        (Resume,  None,                                 paused,  Rule::Begin),
        (Resume,  None,                                 running, Rule::Refuse(ErrorCode::NotRunning, "resume needs it paused")),
        (Pause,   job(Operation::Resume, false),        paused,  busy.clone()),
        (Cleanup, None,                                 stopped, Rule::Begin),
        (Cleanup, None,                                 running, Rule::Refuse(ErrorCode::AlreadyRunning, "cannot clean up: it is running")),
        (Cleanup, None,                                 exiting, Rule::Defer),
        (Cleanup, job(Operation::Stop, false),          running, Rule::Defer),
        (Cleanup, job(Operation::Start, false),         running, busy.clone()),
    ];
    for (ask, job, facts, want) in table {
        assert_eq!(
            rule(ask, job, facts),
            want,
            "{ask:?} during {job:?} when {facts:?}"
        );
    }
}

#[test]
fn a_stop_of_a_qemu_kvmd_cannot_watch_is_refused_not_attempted() {
    let facts = Facts {
        has_qemu: true,
        exiting: false,
        state: VmState::Running,
        watched: false,
        incoming: false,
    };
    assert!(matches!(
        rule(Ask::Stop, None, facts),
        Rule::Refuse(ErrorCode::Unresponsive, _)
    ));
}

#[test]
fn requests_during_recovery_wait_and_run_after_it() {
    let mut t = T::new_core(false, Some(spec()));
    let (ticket, fx) = t.req(start());
    assert!(answer(&fx, ticket).is_none(), "deferred, not refused");
    let fx = t.input(Input::Recovered(nothing()));
    assert!(matches!(answer(&fx, ticket), Some(Outcome::Accepted(_))));
    assert_eq!(t.core.state(), VmState::Starting);
}

#[test]
fn a_busy_refusal_names_the_running_job() {
    let mut t = T::running(false);
    let (_, _) = t.req(Request::Pause);
    let id = t.job();
    let (ticket, fx) = t.req(Request::Resume);
    match answer(&fx, ticket) {
        Some(Outcome::Now(Err(e))) => {
            assert_eq!(e.code, ErrorCode::Busy);
            assert!(
                e.message.contains(&format!("pause job {id}")),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
}

// ---- generations -----------------------------------------------------------------------------

#[test]
fn facts_about_an_older_qemu_change_nothing() {
    let mut t = T::running(false);
    let old = t.core.gen();
    let (_, fx) = t.req(stop(true));
    let (job, ..) = stop_task(&fx).unwrap();
    t.input(killed(old));
    t.input(Input::QmpClosed { gen: old, conn: 1 });
    t.input(Input::StopDone {
        job,
        gen: old,
        result: Ok(StopEnd::Sigkill),
    });
    let (_, fx) = t.req(start());
    let new_job = started_job(&fx);
    assert_eq!(t.core.gen(), old + 1);
    // Late news of the old QEMU: ignored.
    for late in [
        Input::Exited {
            gen: old,
            status: ExitStatus::default(),
        },
        Input::QmpClosed { gen: old, conn: 1 },
        guest_off(old),
        Input::Health {
            gen: old,
            status: Err(Unanswered {
                command: "query-status".into(),
                reason: "timed out".into(),
            }),
        },
    ] {
        assert!(t.input(late).is_empty());
    }
    assert_eq!(t.core.state(), VmState::Starting);
    assert_eq!(t.core.job_id(), Some(new_job));
}

// ---- exits -----------------------------------------------------------------------------------

#[test]
fn an_exit_is_classified_only_after_qmp_delivered_its_last_event() {
    let mut t = T::running(false);
    let gen = t.core.gen();
    let fx = t.input(exited_ok(gen));
    assert!(recorded(&fx).is_none(), "not before QMP closed");
    assert!(fx.iter().any(|e| matches!(e, Effect::ArmExitSettle { .. })));
    // The SHUTDOWN event that was still in the socket arrives after the pidfd fired.
    t.input(guest_off(gen));
    let fx = t.input(Input::QmpClosed { gen, conn: 1 });
    let rec = recorded(&fx).expect("classified at QMP close");
    assert_eq!(rec.kind, ExitKind::UserDown);
    assert_eq!(t.core.state(), VmState::UserDown);
}

#[test]
fn a_silent_qmp_does_not_hold_an_exit_forever() {
    let mut t = T::running(false);
    let gen = t.core.gen();
    t.input(killed(gen));
    let fx = t.input(Input::ExitSettled { gen });
    assert_eq!(recorded(&fx).unwrap().kind, ExitKind::Crashed);
    assert_eq!(t.core.state(), VmState::Crashed);
}

#[test]
fn the_end_of_an_old_qmp_connection_says_nothing_about_the_new_one() {
    let mut t = T::running(false);
    let gen = t.core.gen();
    // A health check reconnected after the first connection died.
    t.input(Input::QmpUp { gen, conn: 2 });
    t.input(Input::QmpClosed { gen, conn: 1 });
    let fx = t.input(exited_ok(gen));
    assert!(
        recorded(&fx).is_none(),
        "connection 2 still has events to deliver"
    );
    t.input(guest_off(gen));
    let fx = t.input(Input::QmpClosed { gen, conn: 2 });
    assert_eq!(recorded(&fx).unwrap().kind, ExitKind::UserDown);
}

#[test]
fn a_guest_reboot_under_reboot_behavior_exit_starts_it_again_at_once() {
    let mut t = T::running(true);
    let gen = t.core.gen();
    t.input(guest_reboot(gen));
    t.input(Input::Exited {
        gen,
        status: ExitStatus::default(),
    });
    let fx = t.input(Input::QmpClosed { gen, conn: 1 });
    assert!(recorded(&fx)
        .unwrap()
        .reason
        .contains("reboot_behavior=exit"));
    started_job(&fx);
    assert_eq!(t.core.state(), VmState::Starting);
}

#[test]
fn a_stop_in_the_window_after_a_reboot_exit_cancels_the_restart() {
    let mut t = T::running(true);
    let gen = t.core.gen();
    t.input(guest_reboot(gen));
    t.input(Input::Exited {
        gen,
        status: ExitStatus::default(),
    });
    t.input(Input::QmpClosed { gen, conn: 1 });
    // The restart is a start job: a stop now cancels it rather than answering
    // "already stopped" and letting the VM come back.
    let restart = t.job();
    let (ticket, fx) = t.req(stop(false));
    assert!(fx.contains(&Effect::Control(restart, TaskControl::Cancel)));
    let fx = t.input(Input::StartDone {
        job: restart,
        gen: gen + 1,
        result: Err(ApiError::new(ErrorCode::Cancelled, "cancelled")),
    });
    assert!(matches!(
        answer(&fx, ticket),
        Some(Outcome::Now(Ok(Answer::StartCancelled)))
    ));
    assert_eq!(t.core.state(), VmState::Stopped);
    assert!(!t.core.has_qemu());
}

// ---- stops -----------------------------------------------------------------------------------

fn stopped_by(t: &mut T, job: JobId, end: StopEnd) -> Vec<Effect> {
    let gen = t.core.gen();
    let mut fx = t.input(guest_off(gen));
    fx.extend(t.input(exited_ok(gen)));
    fx.extend(t.input(Input::QmpClosed { gen, conn: 1 }));
    fx.extend(t.input(Input::StopDone {
        job,
        gen,
        result: Ok(end),
    }));
    fx
}

#[test]
fn a_guest_power_off_during_our_stop_is_an_admin_stop() {
    let mut t = T::running(false);
    let (ticket, fx) = t.req(stop(false));
    let (job, acpi, from, deadline) = stop_task(&fx).unwrap();
    assert!(acpi && from == StopPhase::Acpi);
    assert_eq!(deadline, t.ms + 30_000);
    assert_eq!(t.core.state(), VmState::Stopping);
    let fx = stopped_by(&mut t, job, StopEnd::Acpi);
    assert_eq!(recorded(&fx).unwrap().kind, ExitKind::Stopped);
    let j = ended(&fx, ticket);
    assert_eq!(j.state, JobState::Succeeded);
    assert!(matches!(
        j.outcome,
        Some(JobOutcome::Done {
            stop: Some(StopResult {
                ended: StopEnd::Acpi,
                ..
            })
        })
    ));
    assert!(fx.contains(&Effect::ClearJob));
    assert_eq!(t.core.state(), VmState::Stopped);
}

#[test]
fn a_failed_stop_goes_back_to_running() {
    let mut t = T::running(false);
    let (ticket, fx) = t.req(stop(false));
    let (job, ..) = stop_task(&fx).unwrap();
    let fx = t.input(Input::StopDone {
        job,
        gen: t.core.gen(),
        result: Err(ApiError::new(
            ErrorCode::Internal,
            "QEMU did not exit after SIGKILL",
        )),
    });
    assert_eq!(ended(&fx, ticket).state, JobState::Failed);
    assert_eq!(t.core.state(), VmState::Running);
    // A later power-off is the guest's own again, not an admin stop.
    let gen = t.core.gen();
    t.input(guest_off(gen));
    assert_eq!(t.core.state(), VmState::UserDown);
}

#[test]
fn a_cancelled_stop_leaves_the_vm_running() {
    let mut t = T::running(false);
    let (ticket, fx) = t.req(stop(false));
    let (job, ..) = stop_task(&fx).unwrap();
    let (c, fx) = t.req(Request::Cancel { id: job });
    assert!(matches!(
        answer(&fx, c),
        Some(Outcome::Now(Ok(Answer::Cancelling(_))))
    ));
    assert!(fx.contains(&Effect::Control(job, TaskControl::Cancel)));
    let fx = t.input(Input::StopDone {
        job,
        gen: t.core.gen(),
        result: Err(ApiError::new(ErrorCode::Cancelled, "cancelled")),
    });
    assert_eq!(ended(&fx, ticket).state, JobState::Cancelled);
    assert_eq!(t.core.state(), VmState::Running);
}

#[test]
fn a_stop_past_the_power_button_cannot_be_cancelled() {
    let mut t = T::running(false);
    let (_, fx) = t.req(stop(false));
    let (job, ..) = stop_task(&fx).unwrap();
    t.input(Input::Phase {
        job,
        phase: "sigterm".into(),
        deadline_ms: Some(t.ms + 10_000),
        progress: None,
        undo: None,
    });
    let (c, fx) = t.req(Request::Cancel { id: job });
    assert_eq!(refused(&fx, c), ErrorCode::NotCancellable);
    assert!(!fx.contains(&Effect::Control(job, TaskControl::Cancel)));
}

#[test]
fn a_failed_stop_of_a_paused_guest_leaves_it_paused() {
    let mut t = T::running(false);
    t.input(Input::Guest {
        gen: t.core.gen(),
        event: GuestEvent::Stop,
    });
    let (_, fx) = t.req(stop(false));
    let (job, acpi, from, _) = stop_task(&fx).unwrap();
    assert!(
        !acpi && from == StopPhase::Sigterm,
        "no button for a paused guest"
    );
    assert_eq!(t.core.job_info().unwrap().phase, "sigterm");
    t.input(Input::StopDone {
        job,
        gen: t.core.gen(),
        result: Err(ApiError::new(
            ErrorCode::Internal,
            "QEMU did not exit after SIGKILL",
        )),
    });
    assert_eq!(t.core.state(), VmState::Paused);
}

#[test]
fn an_answer_shows_the_vm_as_the_job_left_it_not_as_the_next_job_found_it() {
    let mut t = T::running(false);
    let (pause, _) = t.req(Request::Pause);
    let job = t.job();
    t.req(stop(false));
    let fx = t.input(Input::QmpDone {
        job,
        gen: t.core.gen(),
        result: Ok(()),
    });
    let info = fx
        .iter()
        .find_map(|e| match e {
            Effect::Answer(tk, Outcome::Ended(_), info) if *tk == pause => Some(info.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!((info.state, info.job), (VmState::Paused, None));
    assert_eq!(
        t.core.state(),
        VmState::Stopping,
        "the deferred stop began after"
    );
}

#[test]
fn a_stop_sent_with_a_pause_waits_for_it_and_skips_the_power_button() {
    let mut t = T::running(false);
    let (_, fx) = t.req(Request::Pause);
    let pause = t.job();
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Spawn(Task::Qmp {
            action: QmpAction::Pause,
            ..
        })
    )));
    let (ticket, fx) = t.req(stop(false));
    assert!(
        answer(&fx, ticket).is_none() && stop_task(&fx).is_none(),
        "deferred"
    );
    let fx = t.input(Input::QmpDone {
        job: pause,
        gen: t.core.gen(),
        result: Ok(()),
    });
    let (_, acpi, ..) = stop_task(&fx).expect("the stop began after the pause");
    assert!(!acpi, "a paused guest does not see the power button");
}

#[test]
fn a_guest_that_pauses_during_the_power_button_phase_goes_straight_to_sigterm() {
    let mut t = T::running(false);
    let (_, fx) = t.req(stop(false));
    let (job, ..) = stop_task(&fx).unwrap();
    let fx = t.input(Input::Guest {
        gen: t.core.gen(),
        event: GuestEvent::Stop,
    });
    assert!(fx.contains(&Effect::Control(job, TaskControl::GuestPaused)));
}

#[test]
fn a_forced_stop_joining_a_soft_one_escalates_it() {
    let mut t = T::running(false);
    let (first, fx) = t.req(stop(false));
    let (job, ..) = stop_task(&fx).unwrap();
    let (second, fx) = t.req(stop(true));
    assert!(fx.contains(&Effect::Control(job, TaskControl::Escalate)));
    let fx = stopped_by(&mut t, job, StopEnd::Sigkill);
    assert_eq!(ended(&fx, first).id, job);
    assert_eq!(ended(&fx, second).id, job);
}

#[test]
fn a_stop_during_a_start_cancels_it_and_answers_start_cancelled() {
    let mut t = T::stopped();
    let (start_ticket, fx) = t.req(start());
    let job = started_job(&fx);
    let gen = t.core.gen();
    t.input(Input::Spawned { gen, pid: 7 });
    let (stop_ticket, fx) = t.req(stop(true));
    assert!(fx.contains(&Effect::Control(job, TaskControl::Cancel)));
    let fx = t.input(Input::StartDone {
        job,
        gen,
        result: Err(ApiError::new(ErrorCode::Cancelled, "cancelled")),
    });
    assert_eq!(ended(&fx, start_ticket).state, JobState::Cancelled);
    assert!(matches!(
        answer(&fx, stop_ticket),
        Some(Outcome::Now(Ok(Answer::StartCancelled)))
    ));
    assert!(!t.core.has_qemu());
}

// ---- starts ----------------------------------------------------------------------------------

#[test]
fn a_failed_start_restores_exactly_what_was_there() {
    let mut t = T::running(false);
    let gen = t.core.gen();
    t.input(killed(gen));
    t.input(Input::QmpClosed { gen, conn: 1 });
    let before = t.core.info();
    assert_eq!(before.state, VmState::Crashed);
    let (ticket, fx) = t.req(start());
    let job = started_job(&fx);
    let fx = t.input(Input::StartDone {
        job,
        gen: t.core.gen(),
        result: Err(ApiError::new(ErrorCode::StartFailed, "QEMU said no")),
    });
    assert_eq!(ended(&fx, ticket).state, JobState::Failed);
    let after = t.core.info();
    assert_eq!(
        (after.state, after.last_exit, after.pid),
        (before.state, before.last_exit, None)
    );
}

#[test]
fn a_syntax_problem_refuses_the_start_before_any_job() {
    let mut t = T::stopped();
    let (ticket, fx) = t.req(Request::Start {
        paused: false,
        check: Some(ApiError::new(ErrorCode::InvalidParameter, "bad cpu_mask")),
        memory: None,
        spec: None,
    });
    assert_eq!(refused(&fx, ticket), ErrorCode::InvalidParameter);
    assert!(t.core.job_id().is_none());
}

#[test]
fn an_instance_removed_from_the_config_cannot_be_started_or_rebooted() {
    let mut t = T::running(false);
    t.input(Input::SetSpec {
        spec: None,
        autostart: false,
    });
    let (ticket, fx) = t.req(Request::Reboot {
        timeout: None,
        check: None,
    });
    assert_eq!(refused(&fx, ticket), ErrorCode::NotFound);
    assert_eq!(t.core.state(), VmState::Running, "nothing was stopped");
    let info = t.core.info();
    assert!(!info.in_config && info.memory_mib == 128);
}

// ---- cleanup ---------------------------------------------------------------------------------

#[test]
fn a_cleanup_right_after_a_power_off_is_not_undone_by_the_late_exit_record() {
    let mut t = T::running(false);
    let gen = t.core.gen();
    t.input(guest_off(gen));
    // The guest shows user-down at once; the cleanup arrives while QEMU is still exiting.
    let (ticket, fx) = t.req(Request::Cleanup);
    assert!(answer(&fx, ticket).is_none(), "waits for the exit");
    t.input(exited_ok(gen));
    let fx = t.input(Input::QmpClosed { gen, conn: 1 });
    let epoch_of_record = fx
        .iter()
        .find_map(|e| match e {
            Effect::RecordExit { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .unwrap();
    let cleanup = t.job();
    let fx = t.input(Input::CleanupDone {
        job: cleanup,
        result: Ok(()),
    });
    assert_eq!(ended(&fx, ticket).state, JobState::Succeeded);
    // The record job finishes after the cleanup: it must not bring `last_exit` back.
    t.input(Input::ExitRecorded {
        gen,
        epoch: epoch_of_record,
        stderr_tail: vec!["late".into()],
    });
    assert_eq!(t.core.info().last_exit, None);
    t.input(Input::SetSpec {
        spec: None,
        autostart: false,
    });
    assert!(
        t.core.retirable(),
        "an instance removed from the config is forgotten"
    );
}

// ---- health ----------------------------------------------------------------------------------

#[test]
fn any_missed_deadline_marks_the_vm_unresponsive_at_once_and_an_answer_clears_it() {
    let mut t = T::running(false);
    let gen = t.core.gen();
    let fx = t.input(Input::QmpTimedOut {
        gen,
        command: "stop".into(),
    });
    assert_eq!(t.core.state(), VmState::Unresponsive);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Event(EventKind::Qemu(QemuEvent::Unresponsive { .. }))
    )));
    t.input(Input::Health {
        gen,
        status: Ok(RunState::Running),
    });
    assert_eq!(t.core.state(), VmState::Running);
}

#[test]
fn start_up_memory_outside_min_memory_to_memory_is_refused_naming_the_field() {
    let mut s = spec();
    s.memory = 256;
    s.min_memory = 128;
    let mut t = T::new_core(false, Some(s));
    t.input(Input::Recovered(nothing()));
    let (ticket, fx) = t.req(Request::Start {
        paused: false,
        check: None,
        memory: Some(64),
        spec: None,
    });
    assert_eq!(refused(&fx, ticket), ErrorCode::InvalidParameter);
    assert!(t.core.job_id().is_none());
    let (_, fx) = t.req(Request::Start {
        paused: false,
        check: None,
        memory: Some(160),
        spec: None,
    });
    let asked = fx.iter().find_map(|e| match e {
        Effect::Spawn(Task::Start { memory, .. }) => Some(*memory),
        _ => None,
    });
    assert_eq!(asked, Some(Some(160)), "the start task gets what was asked");
}
