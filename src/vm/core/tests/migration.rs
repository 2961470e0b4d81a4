//! The migration rules as sentences: exactly one running copy, whatever happens.

use super::*;

fn migrate(live: bool) -> Request {
    Request::Migrate {
        uri: "tcp:192.0.2.9:8102".into(),
        live,
    }
}

fn migrate_task(fx: &[Effect]) -> Option<(JobId, bool, bool)> {
    fx.iter().find_map(|e| match e {
        Effect::Spawn(Task::Migrate {
            job,
            resume_on_failure,
            recover,
            ..
        }) => Some((*job, *resume_on_failure, *recover)),
        _ => None,
    })
}

fn done(t: &mut T, outcome: MigrateOutcome, running: Option<bool>, postcopy: bool) -> Vec<Effect> {
    let job = t.job();
    let gen = t.core.gen();
    t.input(Input::MigrateDone {
        job,
        gen,
        end: MigrateEnd {
            outcome,
            running,
            postcopy,
        },
    })
}

/// A running source whose migration completed: `migrated`.
fn migrated() -> T {
    let mut t = T::running(false);
    t.req(migrate(true));
    done(&mut t, MigrateOutcome::Completed, Some(false), false);
    assert_eq!(t.core.state(), VmState::Migrated);
    t
}

#[test]
fn a_migration_runs_as_a_job_and_tells_the_task_whether_to_resume_on_failure() {
    let mut t = T::running(false);
    let (_, fx) = t.req(migrate(true));
    let (_, resume, recover) = migrate_task(&fx).expect("a migrate task");
    assert!(resume && !recover);
    assert_eq!(t.core.state(), VmState::Migrating);
    // A paused guest stays paused if the migration fails.
    let mut p = T::running(false);
    p.req(Request::Pause);
    let (job, gen) = (p.job(), p.core.gen());
    p.input(Input::QmpDone {
        job,
        gen,
        result: Ok(()),
    });
    assert_eq!(p.core.state(), VmState::Paused);
    let (_, fx) = p.req(migrate(false));
    assert!(!migrate_task(&fx).unwrap().1);
}

#[test]
fn a_completed_source_can_neither_resume_nor_start_nor_migrate_again() {
    let mut t = migrated();
    for r in [Request::Resume, start(), migrate(true), Request::Pause] {
        let (ticket, fx) = t.req(r.clone());
        let code = refused(&fx, ticket);
        assert!(
            matches!(code, ErrorCode::NotRunning | ErrorCode::AlreadyRunning),
            "{r:?}: {code:?}"
        );
    }
    assert_eq!(t.core.state(), VmState::Migrated);
}

#[test]
fn finalize_src_success_ends_qemu_with_a_record_naming_the_target() {
    let mut t = migrated();
    let (ticket, fx) = t.req(Request::FinalizeSrc { success: true });
    let (job, acpi, from, _) = stop_task(&fx).expect("a stop");
    assert!(!acpi);
    assert_eq!(from, StopPhase::Sigterm);
    let gen = t.core.gen();
    t.input(exited_ok(gen));
    let fx = t.input(Input::ExitSettled { gen });
    let rec = recorded(&fx).expect("an exit record");
    assert_eq!(rec.kind, ExitKind::Migrated);
    assert_eq!(rec.reason, "migrated to tcp:192.0.2.9:8102");
    let fx = t.input(Input::StopDone {
        job,
        gen,
        result: Ok(StopEnd::Sigterm),
    });
    assert_eq!(ended(&fx, ticket).state, JobState::Succeeded);
    assert_eq!(t.core.state(), VmState::Moved);
    // It never comes back here on its own, and a start is refused with the reason.
    t.input(Input::SetSpec {
        spec: Some(Box::new(spec())),
        autostart: true,
    });
    assert!(t.core.job_id().is_none());
    let (ticket, fx) = t.req(start());
    assert_eq!(refused(&fx, ticket), ErrorCode::AlreadyRunning);
    // A second finalize-src --success has nothing left to do.
    let (ticket, fx) = t.req(Request::FinalizeSrc { success: true });
    assert_eq!(
        answer(&fx, ticket),
        Some(Outcome::Now(Ok(Answer::Unchanged)))
    );
}

#[test]
fn a_failed_migration_leaves_the_guest_as_qemu_says_and_finalize_src_failure_is_a_no_op() {
    let mut t = T::running(false);
    let (ticket, _) = t.req(migrate(true));
    let fx = done(
        &mut t,
        MigrateOutcome::Failed("link down".into()),
        Some(true),
        false,
    );
    let j = ended(&fx, ticket);
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(t.core.state(), VmState::Running);
    let (ticket, fx) = t.req(Request::FinalizeSrc { success: false });
    assert_eq!(
        answer(&fx, ticket),
        Some(Outcome::Now(Ok(Answer::Unchanged)))
    );
    let (ticket, fx) = t.req(Request::FinalizeSrc { success: true });
    assert_eq!(refused(&fx, ticket), ErrorCode::NotRunning);
}

#[test]
fn after_postcopy_began_the_source_is_never_resumed() {
    let mut t = T::running(false);
    t.req(migrate(true));
    done(
        &mut t,
        MigrateOutcome::Failed("target died".into()),
        Some(false),
        true,
    );
    assert_eq!(t.core.state(), VmState::Migrated);
    let (ticket, fx) = t.req(Request::FinalizeSrc { success: false });
    assert_eq!(refused(&fx, ticket), ErrorCode::MigrationFailed);
    let (ticket, fx) = t.req(Request::Resume);
    assert_eq!(refused(&fx, ticket), ErrorCode::NotRunning);
}

#[test]
fn finalize_src_failure_after_completion_resumes_the_source() {
    // The target failed to take over after QEMU completed: the guest runs here again.
    let mut t = migrated();
    let (ticket, fx) = t.req(Request::FinalizeSrc { success: false });
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Spawn(Task::Qmp {
            action: QmpAction::Resume,
            ..
        })
    )));
    let (job, gen) = (t.job(), t.core.gen());
    let fx = t.input(Input::QmpDone {
        job,
        gen,
        result: Ok(()),
    });
    assert_eq!(ended(&fx, ticket).state, JobState::Succeeded);
    assert_eq!(t.core.state(), VmState::Running);
}

#[test]
fn a_migration_can_be_cancelled_until_postcopy_runs() {
    let mut t = T::running(false);
    t.req(migrate(true));
    let (ticket, fx) = t.req(Request::MigrateCancel);
    assert!(matches!(
        answer(&fx, ticket),
        Some(Outcome::Now(Ok(Answer::Cancelling(_))))
    ));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Control(_, TaskControl::Cancel))));
    let mut p = T::running(false);
    p.req(migrate(true));
    let job = p.job();
    p.input(Input::Phase {
        job,
        phase: "postcopy-active".into(),
        deadline_ms: None,
        progress: None,
        undo: None,
    });
    let (ticket, fx) = p.req(Request::MigrateCancel);
    assert_eq!(refused(&fx, ticket), ErrorCode::NotCancellable);
    // Nothing to cancel on an idle VM.
    let mut idle = T::running(false);
    let (ticket, fx) = idle.req(Request::MigrateCancel);
    assert_eq!(refused(&fx, ticket), ErrorCode::NotFound);
}

#[test]
fn a_stop_during_a_migration_waits_for_its_end() {
    let mut t = T::running(false);
    t.req(migrate(true));
    let (ticket, fx) = t.req(stop(false));
    assert!(answer(&fx, ticket).is_none(), "deferred");
    let fx = done(
        &mut t,
        MigrateOutcome::Cancelled("x".into()),
        Some(true),
        false,
    );
    assert!(
        stop_task(&fx).is_some(),
        "the stop runs after the migration"
    );
}

/// A target that accepted (its QEMU waits).
fn incoming() -> (T, Ticket) {
    let mut t = T::new_core(false, None);
    t.input(Input::Recovered(nothing()));
    let (ticket, fx) = t.req(Request::Accept {
        spec: Box::new(spec()),
        incoming: IncomingPlan {
            uri: "tcp:192.0.2.9:8102".into(),
            machine: "pc-q35-7.2".into(),
            capabilities: vec!["events".into()],
            hotplug_ports: 8,
        },
    });
    let job = fx
        .iter()
        .find_map(|e| match e {
            Effect::Spawn(Task::Start {
                job,
                paused: true,
                incoming: Some(_),
                ..
            }) => Some(*job),
            _ => None,
        })
        .expect("a paused incoming start");
    let gen = t.core.gen();
    t.input(Input::Spawned { gen, pid: 5151 });
    t.input(Input::QmpUp { gen, conn: 1 });
    let fx = t.input(Input::StartDone {
        job,
        gen,
        result: Ok(run_info(false)),
    });
    assert_eq!(ended(&fx, ticket).kind, Operation::Accept);
    assert_eq!(t.core.state(), VmState::Incoming);
    (t, ticket)
}

#[test]
fn an_incoming_vm_runs_only_at_finalize_dst_success() {
    let (mut t, _) = incoming();
    for r in [Request::Resume, start(), migrate(true)] {
        let (ticket, fx) = t.req(r.clone());
        assert!(
            matches!(answer(&fx, ticket), Some(Outcome::Now(Err(_)))),
            "{r:?}"
        );
    }
    let (ticket, fx) = t.req(Request::FinalizeDst { success: true });
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Spawn(Task::Qmp {
            action: QmpAction::RunIncoming,
            ..
        })
    )));
    let (job, gen) = (t.job(), t.core.gen());
    let fx = t.input(Input::QmpDone {
        job,
        gen,
        result: Ok(()),
    });
    assert_eq!(ended(&fx, ticket).state, JobState::Succeeded);
    assert!(fx.iter().any(|e| matches!(e, Effect::IncomingDone)));
    assert_eq!(t.core.state(), VmState::Running);
    // Now it is a normal instance: finalize-dst --failure would kill a running VM.
    let (ticket, fx) = t.req(Request::FinalizeDst { success: false });
    assert_eq!(refused(&fx, ticket), ErrorCode::AlreadyRunning);
}

#[test]
fn finalize_dst_failure_kills_the_waiting_qemu_and_removes_every_file() {
    let (mut t, _) = incoming();
    let (ticket, fx) = t.req(Request::FinalizeDst { success: false });
    let (job, _, from, _) = stop_task(&fx).expect("a kill");
    assert_eq!(from, StopPhase::Sigkill);
    let gen = t.core.gen();
    t.input(killed(gen));
    t.input(Input::ExitSettled { gen });
    let fx = t.input(Input::StopDone {
        job,
        gen,
        result: Ok(StopEnd::Sigkill),
    });
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Spawn(Task::DropIncoming { restore: None, .. }))));
    let fx = t.input(Input::CleanupDone {
        job,
        result: Ok(()),
    });
    assert_eq!(ended(&fx, ticket).state, JobState::Succeeded);
    assert_eq!(t.core.state(), VmState::Stopped);
    assert!(
        t.core.retirable(),
        "an instance that never lived here is forgotten"
    );
}

#[test]
fn a_dropped_incoming_migration_gives_back_the_history_it_found() {
    // web1 had moved away from here; a migration back fails: it is still `moved`.
    let mut t = migrated();
    t.req(Request::FinalizeSrc { success: true });
    let (job, gen) = (t.job(), t.core.gen());
    t.input(exited_ok(gen));
    t.input(Input::ExitSettled { gen });
    t.input(Input::StopDone {
        job,
        gen,
        result: Ok(StopEnd::Sigterm),
    });
    assert_eq!(t.core.state(), VmState::Moved);
    let (_, fx) = t.req(Request::Accept {
        spec: Box::new(spec()),
        incoming: IncomingPlan {
            uri: "tcp:192.0.2.1:8102".into(),
            machine: "pc-q35-7.2".into(),
            capabilities: Vec::new(),
            hotplug_ports: 0,
        },
    });
    let job = started_job(&fx);
    let gen = t.core.gen();
    t.input(Input::Spawned { gen, pid: 99 });
    t.input(Input::StartDone {
        job,
        gen,
        result: Ok(run_info(false)),
    });
    assert_eq!(t.core.state(), VmState::Incoming);
    let (_, fx) = t.req(Request::FinalizeDst { success: false });
    let (job, ..) = stop_task(&fx).expect("a kill");
    t.input(killed(gen));
    t.input(Input::ExitSettled { gen });
    let fx = t.input(Input::StopDone {
        job,
        gen,
        result: Ok(StopEnd::Sigkill),
    });
    let restore = fx.iter().find_map(|e| match e {
        Effect::Spawn(Task::DropIncoming { restore, .. }) => Some(restore.clone()),
        _ => None,
    });
    let rec = restore.flatten().expect("the old record is written back");
    assert_eq!(rec.kind, ExitKind::Migrated);
    t.input(Input::CleanupDone {
        job,
        result: Ok(()),
    });
    assert_eq!(t.core.state(), VmState::Moved);
    let (ticket, fx) = t.req(start());
    assert_eq!(refused(&fx, ticket), ErrorCode::AlreadyRunning);
}

#[test]
fn a_target_qemu_that_died_is_dropped_by_finalize_dst_failure() {
    let (mut t, _) = incoming();
    let gen = t.core.gen();
    t.input(Input::QmpClosed { gen, conn: 1 });
    t.input(Input::Exited {
        gen,
        status: ExitStatus {
            code: Some(1),
            signal: None,
        },
    });
    assert_eq!(t.core.state(), VmState::Crashed);
    let (ticket, fx) = t.req(Request::FinalizeDst { success: true });
    assert_eq!(refused(&fx, ticket), ErrorCode::NotRunning);
    let (_, fx) = t.req(Request::FinalizeDst { success: false });
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Spawn(Task::DropIncoming { .. }))));
}

#[test]
fn a_restarted_kvmd_settles_a_migration_and_drops_an_unfinished_accept() {
    let mut t = T::new_core(false, Some(spec()));
    let mut facts = nothing();
    facts.dir_exists = true;
    facts.runtime = RuntimeState::Present {
        pid: 4242,
        info: Box::new(run_info(false)),
    };
    let mut job = super::recovery::persisted(Operation::Migrate, "active");
    job.paused = false;
    job.target = Some("tcp:192.0.2.9:8102".into());
    facts.job = Some(job);
    facts.qemu = FoundQemu::Adopted {
        pid: 4242,
        conn: Some(1),
        status: Some(RunState::Paused),
        watched: true,
    };
    let fx = t.input(Input::Recovered(facts.clone()));
    let (_, resume, recover) = migrate_task(&fx).expect("settled");
    assert!(resume && recover);
    assert_eq!(t.core.state(), VmState::Migrating);
    // A source QEMU left in postmigrate (completed) is `migrated`, never `paused`.
    let mut t = T::new_core(false, Some(spec()));
    let mut f = facts.clone();
    f.job = None;
    f.qemu = FoundQemu::Adopted {
        pid: 4242,
        conn: Some(1),
        status: Some(RunState::Other("postmigrate".into())),
        watched: true,
    };
    t.input(Input::Recovered(f));
    assert_eq!(t.core.state(), VmState::Migrated);
    // A target with its marker waits for finalize-dst.
    let mut t = T::new_core(false, None);
    let mut f = facts.clone();
    f.job = None;
    f.incoming = true;
    t.input(Input::Recovered(f));
    assert_eq!(t.core.state(), VmState::Incoming);
    // An accept cut short: its QEMU is killed and its files removed.
    let mut t = T::new_core(false, None);
    let mut f = facts;
    f.job = Some(super::recovery::persisted(Operation::Accept, "listening"));
    let fx = t.input(Input::Recovered(f));
    assert!(fx.iter().any(|e| matches!(e, Effect::Undo { .. })));
}

#[test]
fn a_completed_source_stays_moved_however_its_qemu_ends() {
    // A plain stop (or a crash) of a `migrated` source still says where the VM went.
    let mut t = migrated();
    let (_, fx) = t.req(stop(false));
    let (job, acpi, ..) = stop_task(&fx).expect("a stop");
    assert!(!acpi, "no button for a guest that left");
    let gen = t.core.gen();
    t.input(killed(gen));
    let fx = t.input(Input::ExitSettled { gen });
    let rec = recorded(&fx).expect("an exit record");
    assert_eq!(rec.kind, ExitKind::Migrated);
    t.input(Input::StopDone {
        job,
        gen,
        result: Ok(StopEnd::Sigterm),
    });
    assert_eq!(t.core.state(), VmState::Moved);
    let (ticket, fx) = t.req(start());
    assert_eq!(refused(&fx, ticket), ErrorCode::AlreadyRunning);
    // A restarted kvmd that finds the marker and no QEMU records the move, not a crash.
    let mut t = T::new_core(false, Some(spec()));
    let mut f = nothing();
    f.dir_exists = true;
    f.runtime = RuntimeState::Present {
        pid: 4242,
        info: Box::new(run_info(false)),
    };
    f.qemu = FoundQemu::Gone { pid: 4242 };
    f.migrated = Some("tcp:192.0.2.9:8102".into());
    let fx = t.input(Input::Recovered(f));
    let rec = recorded(&fx).expect("an exit record");
    assert_eq!(
        (rec.kind, rec.reason.as_str()),
        (ExitKind::Migrated, "migrated to tcp:192.0.2.9:8102")
    );
    assert_eq!(t.core.state(), VmState::Moved);
}

#[test]
fn postcopy_only_requested_leaves_the_source_resumable() {
    let mut t = T::running(false);
    t.req(migrate(true));
    // QEMU never reported postcopy-active: the source runs and may be finalized as failed.
    done(
        &mut t,
        MigrateOutcome::Cancelled("x".into()),
        Some(true),
        false,
    );
    assert_eq!(t.core.state(), VmState::Running);
}

#[test]
fn a_restarted_target_still_gives_back_the_history_a_dropped_migration_found() {
    let mut t = T::new_core(false, Some(spec()));
    let mut f = nothing();
    f.dir_exists = true;
    f.incoming = true;
    f.exit_record = Some(ExitRecord {
        kind: ExitKind::Migrated,
        reason: "migrated to tcp:192.0.2.1:8102".into(),
        exit_code: Some(0),
        signal: None,
        stderr_tail: Vec::new(),
        pid: 7,
        at_ms: 1,
    });
    f.runtime = RuntimeState::Present {
        pid: 4242,
        info: Box::new(run_info(false)),
    };
    f.qemu = FoundQemu::Adopted {
        pid: 4242,
        conn: Some(1),
        status: Some(RunState::Other("inmigrate".into())),
        watched: true,
    };
    t.input(Input::Recovered(f));
    assert_eq!(t.core.state(), VmState::Incoming);
    let (_, fx) = t.req(Request::FinalizeDst { success: false });
    let (job, ..) = stop_task(&fx).expect("a kill");
    let gen = t.core.gen();
    t.input(Input::QmpClosed { gen, conn: 1 });
    t.input(killed(gen));
    let fx = t.input(Input::StopDone {
        job,
        gen,
        result: Ok(StopEnd::Sigkill),
    });
    let restore = fx.iter().find_map(|e| match e {
        Effect::Spawn(Task::DropIncoming { restore, .. }) => Some(restore.clone()),
        _ => None,
    });
    assert_eq!(restore.flatten().map(|r| r.kind), Some(ExitKind::Migrated));
    t.input(Input::CleanupDone {
        job,
        result: Ok(()),
    });
    assert_eq!(t.core.state(), VmState::Moved);
}
