//! Recovery: what a restarted kvmd does with what it finds.

use super::*;

// ---- recovery --------------------------------------------------------------------------------

pub(super) fn adopted(status: RunState) -> RecoveryFacts {
    RecoveryFacts {
        gen: 5,
        dir_exists: true,
        exit_record: None,
        runtime: RuntimeState::Present {
            pid: 4242,
            info: Box::new(run_info(false)),
        },
        pidfile_pid: Some(4242),
        job: None,
        legacy_stopping: false,
        incoming: false,
        migrated: None,
        qemu: FoundQemu::Adopted {
            pid: 4242,
            conn: Some(1),
            status: Some(status),
            watched: true,
        },
    }
}

pub(super) fn persisted(kind: Operation, phase: &str) -> PersistedJob {
    PersistedJob {
        id: JobId(77),
        kind,
        phase: phase.into(),
        started_at_ms: 500,
        deadline_ms: Some(500 + 20_000),
        phase_deadline_ms: None,
        paused: false,
        force: false,
        timeout_ms: 20_000,
        restarting: false,
        undo: vec![Undo::DropRunFiles],
        target: None,
    }
}

#[test]
fn an_adopted_qemu_keeps_running_and_its_state_comes_from_qmp() {
    let mut t = T::new_core(false, Some(spec()));
    t.input(Input::Recovered(adopted(RunState::Paused)));
    assert_eq!(t.core.state(), VmState::Paused);
    assert_eq!(t.core.info().pid, Some(4242));
    let (ticket, fx) = t.req(start());
    assert_eq!(refused(&fx, ticket), ErrorCode::AlreadyRunning);
}

#[test]
fn a_stop_interrupted_by_a_kvmd_restart_keeps_its_original_deadline() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Running);
    f.job = Some(persisted(Operation::Stop, "acpi"));
    let fx = t.input(Input::Recovered(f));
    let (job, acpi, from, deadline) = stop_task(&fx).expect("the stop goes on");
    assert_eq!(job, JobId(77), "the same job");
    assert!(acpi && from == StopPhase::Acpi);
    assert_eq!(deadline, 500 + 20_000, "not a fresh timeout");
    assert!(t.core.job_info().unwrap().resumed);
}

#[test]
fn a_stop_interrupted_in_its_sigterm_phase_resumes_there() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Running);
    let mut p = persisted(Operation::Stop, "sigterm");
    p.phase_deadline_ms = Some(9_999);
    f.job = Some(p);
    let fx = t.input(Input::Recovered(f));
    let kill_at = fx.iter().find_map(|e| match e {
        Effect::Spawn(Task::Stop {
            from, kill_at_ms, ..
        }) => Some((*from, *kill_at_ms)),
        _ => None,
    });
    assert_eq!(kill_at, Some((StopPhase::Sigterm, Some(9_999))));
}

#[test]
fn a_start_interrupted_after_launch_is_finished_not_left_in_prelaunch() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Prelaunch);
    f.job = Some(persisted(Operation::Start, "connecting"));
    let fx = t.input(Input::Recovered(f));
    let resumed = fx.iter().any(|e| {
        matches!(
            e,
            Effect::Spawn(Task::Start {
                resume: true,
                paused: false,
                ..
            })
        )
    });
    assert!(resumed, "{fx:?}");
    assert_eq!(t.core.state(), VmState::Starting);
}

#[test]
fn a_start_interrupted_before_its_runtime_file_is_rolled_back_with_its_qemu() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Prelaunch);
    f.runtime = RuntimeState::Missing;
    f.job = Some(persisted(Operation::Start, "launching"));
    let fx = t.input(Input::Recovered(f));
    let steps = fx
        .iter()
        .find_map(|e| match e {
            Effect::Undo { steps, .. } => Some(steps.clone()),
            _ => None,
        })
        .expect("rolled back");
    assert!(
        matches!(steps[0], Undo::KillQemu { pid: 4242, .. }),
        "{steps:?}"
    );
    assert_eq!(*steps.last().unwrap(), Undo::DropRunFiles);
    let fx = t.input(Input::UndoDone { job: JobId(77) });
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::JobUpdated(JobInfo {
            state: JobState::Failed,
            ..
        })
    )));
    assert!(!t.core.has_qemu());
    assert_eq!(t.core.state(), VmState::Stopped);
}

#[test]
fn a_start_whose_qemu_died_while_kvmd_was_down_is_rolled_back_without_a_crash_record() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Running);
    f.qemu = FoundQemu::Gone { pid: 4242 };
    let mut p = persisted(Operation::Start, "connecting");
    p.undo = vec![
        Undo::DropRunFiles,
        Undo::NicDown {
            index: 0,
            tap: "tap9".into(),
        },
        Undo::KillQemu {
            pid: 4242,
            start_ticks: 9,
        },
    ];
    f.job = Some(p);
    let fx = t.input(Input::Recovered(f));
    assert!(recorded(&fx).is_none());
    let steps = fx
        .iter()
        .find_map(|e| match e {
            Effect::Undo { steps, .. } => Some(steps.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        steps,
        vec![
            Undo::NicDown {
                index: 0,
                tap: "tap9".into()
            },
            Undo::DropRunFiles
        ],
        "the NIC's down hook runs; no QEMU to kill"
    );
}

#[test]
fn a_start_cut_before_its_qemu_wrote_a_pidfile_still_kills_that_qemu() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Running);
    f.runtime = RuntimeState::Missing;
    f.pidfile_pid = None;
    f.qemu = FoundQemu::None;
    let mut p = persisted(Operation::Start, "connecting");
    p.undo = vec![
        Undo::DropRunFiles,
        Undo::KillQemu {
            pid: 4242,
            start_ticks: 9,
        },
    ];
    f.job = Some(p);
    let fx = t.input(Input::Recovered(f));
    let steps = fx
        .iter()
        .find_map(|e| match e {
            Effect::Undo { steps, .. } => Some(steps.clone()),
            _ => None,
        })
        .expect("rolled back");
    assert_eq!(
        steps,
        vec![
            Undo::KillQemu {
                pid: 4242,
                start_ticks: 9
            },
            Undo::DropRunFiles
        ],
        "the QEMU is killed (after its identity is checked) before its files go"
    );
    let fx = t.input(Input::UndoDone { job: JobId(77) });
    let ended = fx
        .iter()
        .find_map(|e| match e {
            Effect::JobUpdated(j) if j.outcome.is_some() => Some(j.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        matches!(&ended.outcome, Some(JobOutcome::Failed(e)) if e.message.contains("before the start was recorded")),
        "{ended:?}"
    );
}

#[test]
fn a_qemu_that_cannot_be_watched_is_kept_not_recorded_as_exited() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Running);
    f.qemu = FoundQemu::Adopted {
        pid: 4242,
        conn: Some(1),
        status: Some(RunState::Running),
        watched: false,
    };
    let fx = t.input(Input::Recovered(f));
    assert!(recorded(&fx).is_none());
    assert!(fx.contains(&Effect::Rewatch { gen: 5 }));
    assert_eq!(t.core.state(), VmState::Unresponsive);
    let (ticket, fx) = t.req(start());
    assert_eq!(
        refused(&fx, ticket),
        ErrorCode::AlreadyRunning,
        "no second QEMU"
    );
}

#[test]
fn a_qemu_that_died_while_kvmd_was_down_is_recorded_as_crashed() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Running);
    f.qemu = FoundQemu::Gone { pid: 4242 };
    let fx = t.input(Input::Recovered(f));
    let rec = recorded(&fx).unwrap();
    assert_eq!(rec.kind, ExitKind::Crashed);
    assert!(rec.reason.contains("while kvmd was not running"));
    assert_eq!(t.core.state(), VmState::Crashed);
}

#[test]
fn a_damaged_runtime_file_over_a_dead_qemu_still_says_it_died() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Running);
    f.runtime = RuntimeState::Damaged("expected value at line 1".into());
    f.qemu = FoundQemu::Gone { pid: 4242 };
    let fx = t.input(Input::Recovered(f));
    let rec = recorded(&fx).expect("recorded, not silently stopped");
    assert_eq!((rec.kind, rec.pid), (ExitKind::Crashed, 4242));
    assert!(rec.reason.contains("damaged"), "{}", rec.reason);
    assert_eq!(t.core.state(), VmState::Crashed);
}

#[test]
fn a_stop_whose_qemu_went_away_while_kvmd_was_down_ends_as_an_admin_stop() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = adopted(RunState::Running);
    f.qemu = FoundQemu::Gone { pid: 4242 };
    f.job = Some(persisted(Operation::Stop, "sigterm"));
    let fx = t.input(Input::Recovered(f));
    assert_eq!(recorded(&fx).unwrap().kind, ExitKind::Stopped);
    let ended = fx
        .iter()
        .find_map(|e| match e {
            Effect::JobUpdated(j) if j.id == JobId(77) && j.state != JobState::Running => {
                Some(j.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(ended.state, JobState::Succeeded);
    assert!(matches!(
        ended.outcome,
        Some(JobOutcome::Done {
            stop: Some(StopResult {
                ended: StopEnd::Unobserved,
                ..
            })
        })
    ));
}

#[test]
fn autostart_happens_once_per_boot_of_the_run_dir() {
    let mut auto = spec();
    auto.autostart = true;
    let mut t = T::new_core(true, Some(auto.clone()));
    let fx = t.input(Input::Recovered(nothing()));
    started_job(&fx);
    let mut t = T::new_core(true, Some(auto));
    let mut f = nothing();
    f.dir_exists = true; // it ran since boot and was stopped
    let fx = t.input(Input::Recovered(f));
    assert!(!fx
        .iter()
        .any(|e| matches!(e, Effect::Spawn(Task::Start { .. }))));
}
