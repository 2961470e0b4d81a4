//! Operations as jobs, on real QEMU through the real daemon: a stop interrupted by `kill -9`
//! keeps its deadline, a start interrupted by SIGTERM is finished, a QEMU that cannot be
//! watched is kept (never taken for dead), a damaged or incomplete runtime file does not break
//! stops or hide a death, a cleanup is not undone by a late exit record, a stop cancels a
//! start that hangs, and the event stream shows it all as it happens.

mod support;

use std::time::{Duration, Instant};

use kvmd::api::{
    ApiReply, ApiRequest, ErrorCode, EventKind, JobInfo, JobOutcome, JobState, StopResult,
    StreamItem,
};
use kvmd::model::exit::ExitKind;
use kvmd::model::job::Operation;
use kvmd::model::state::{StopEnd, VmState};
use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

fn accepted(d: &Daemon, req: ApiRequest) -> JobInfo {
    match d.call(req) {
        Ok(ApiReply::Accepted(job)) => job,
        other => panic!("not accepted: {other:?}"),
    }
}

fn jobs(d: &Daemon) -> Vec<JobInfo> {
    match d.call(ApiRequest::Jobs { name: None }) {
        Ok(ApiReply::Jobs(j)) => j,
        other => panic!("{other:?}"),
    }
}

fn kill(pid: u32) {
    nix::sys::signal::kill(nix_pid(pid), Signal::SIGKILL).unwrap();
}

/// Must show: `kill -9` of kvmd during a stop with a 20 s grace on a guest that ignores ACPI;
/// after the restart the stop ends by its original deadline (±2 s) and `kvmctl jobs` shows
/// how it ended.
#[test]
fn a_stop_interrupted_by_kill9_ends_by_its_original_deadline_and_says_how() {
    let mut d = Daemon::start(&instance_toml("s20", ""));
    let pid = d.start_vm("s20").pid.unwrap();
    d.wait_ready("s20", 1);
    d.guest_run("s20", "killall acpid; echo deaf");
    let job = accepted(
        &d,
        ApiRequest::Stop {
            name: name("s20"),
            timeout_s: Some(20),
            force: false,
            wait: false,
        },
    );
    let deadline = job.deadline_ms.expect("a stop has a deadline");
    assert_eq!(deadline, job.started_at_ms + 20_000);
    std::thread::sleep(Duration::from_secs(3));
    d.kill9();
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(pid), "the guest is still there while kvmd is down");
    d.spawn();
    let info = d.wait_state("s20", "stopped", Duration::from_secs(40));
    let exit = info.last_exit.unwrap();
    assert_eq!(exit.kind, ExitKind::Stopped);
    let off_by = i64::try_from(exit.at_ms).unwrap() - i64::try_from(deadline).unwrap();
    eprintln!("the interrupted stop ended {off_by} ms from its original deadline");
    assert!(
        (-2000..=2000).contains(&off_by),
        "ended {off_by} ms from its original deadline"
    );
    // `kvmctl jobs` (its JSON) shows the same job, taken over and finished.
    let out = d.kvmctl(&["--json", "jobs"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = v["result"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job.id.0)
        .unwrap_or_else(|| panic!("job {} not listed: {v}", job.id))
        .clone();
    assert_eq!(listed["state"], "succeeded");
    assert_eq!(listed["resumed"], true);
    assert_eq!(listed["outcome"]["stop"]["ended"], "sigterm");
    let human = String::from_utf8_lossy(&d.kvmctl(&["jobs"]).stdout).into_owned();
    assert!(
        human.contains(&job.id.to_string()) && human.contains("succeeded"),
        "{human}"
    );
}

/// Regression: SIGTERM during an autostart left QEMU in `prelaunch`; the next kvmd adopted it
/// as paused and never resumed it.
#[test]
fn a_start_cut_short_by_sigterm_is_finished_by_the_next_kvmd() {
    let mut d = Daemon::prepare(
        "",
        &instance_toml(
            "auto",
            "autostart = true\n[instance.auto.hvparams]\ncpu_mask = \"0\"",
        ),
    );
    // Pinning makes QEMU start with -S; the fault holds the start before `cont`.
    d.spawn_with_env(&[("KVMD_FAULTS", "delay_before_cont_ms=5000")]);
    let pid = wait_for("QEMU to be spawned", Duration::from_secs(20), || {
        d.try_info("auto").and_then(|i| i.pid)
    });
    std::thread::sleep(Duration::from_millis(500));
    d.signal(Signal::SIGTERM);
    let status = d.child.as_mut().unwrap().wait().unwrap();
    d.child = None;
    assert!(status.success());
    assert!(alive(pid));
    d.spawn();
    let info = d.wait_state("auto", "running", Duration::from_secs(20));
    assert_eq!(info.pid, Some(pid), "the same QEMU, resumed");
    d.wait_ready("auto", 1);
    let start = jobs(&d)
        .into_iter()
        .find(|j| j.kind == Operation::Start)
        .expect("the start job");
    assert!(
        start.resumed && start.state == JobState::Succeeded,
        "{start:?}"
    );
}

/// Like the test above, with nothing on disk naming the QEMU: its pidfile removed and the
/// job file's undo steps without the kill step (as when kvmd dies between the spawn and the
/// job write). The restarted kvmd finds the QEMU by its `-pidfile` argument and kills it.
#[test]
fn a_start_cut_before_anything_named_its_qemu_is_still_rolled_back() {
    let mut d = Daemon::prepare(
        "",
        &instance_toml("cut2", "[instance.cut2.hvparams]\ncpu_mask = \"0\""),
    );
    d.spawn_with_env(&[("KVMD_FAULTS", "delay_before_runtime_ms=30000")]);
    accepted(
        &d,
        ApiRequest::Start {
            name: name("cut2"),
            paused: false,
            wait: false,
            memory: None,
        },
    );
    let pid = wait_for("QEMU to be spawned", Duration::from_secs(20), || {
        d.try_info("cut2").and_then(|i| i.pid)
    });
    let run = d.run_dir("cut2");
    wait_for("QEMU's pidfile", Duration::from_secs(20), || {
        run.join("qemu.pid").exists().then_some(())
    });
    d.kill9();
    std::fs::remove_file(run.join("qemu.pid")).unwrap();
    let job_file = run.join("job.json");
    let mut job: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&job_file).unwrap()).unwrap();
    job["undo"]
        .as_array_mut()
        .unwrap()
        .retain(|u| !u.to_string().to_lowercase().contains("kill"));
    std::fs::write(&job_file, job.to_string()).unwrap();
    assert!(alive(pid));
    d.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the QEMU {pid} nothing named was not killed within 20 s; kvmd's log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.wait_state("cut2", "stopped", Duration::from_secs(20));
    assert!(qemus_under(d.dir.path()).is_empty());
}

/// A start whose QEMU was spawned but not yet recorded, cut short by `kill -9` of kvmd: the
/// next kvmd rolls it back (that QEMU never ran the guest: it was started with -S) and leaves
/// no QEMU and no runtime files behind; the instance then starts normally.
#[test]
fn a_start_cut_by_kill9_before_it_was_recorded_is_rolled_back() {
    let mut d = Daemon::prepare(
        "",
        &instance_toml("cut", "[instance.cut.hvparams]\ncpu_mask = \"0\""),
    );
    // The fault holds the runtime file's write (on the store thread) for 30 s.
    d.spawn_with_env(&[("KVMD_FAULTS", "delay_before_runtime_ms=30000")]);
    let job = accepted(
        &d,
        ApiRequest::Start {
            name: name("cut"),
            paused: false,
            wait: false,
            memory: None,
        },
    );
    let pid = wait_for("QEMU to be spawned", Duration::from_secs(20), || {
        d.try_info("cut").and_then(|i| i.pid)
    });
    assert!(!d.run_dir("cut").join("runtime.json").exists());
    d.kill9();
    assert!(alive(pid), "kvmd's death does not take QEMU with it");
    d.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the unrecorded QEMU {pid} was not killed within 20 s; kvmd's log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let info = d.wait_state("cut", "stopped", Duration::from_secs(20));
    assert_eq!(info.pid, None);
    let ended = wait_for("the start job to end", Duration::from_secs(20), || {
        jobs(&d)
            .into_iter()
            .find(|j| j.id == job.id && j.outcome.is_some())
    });
    assert!(ended.resumed, "{ended:?}");
    assert_eq!(ended.state, JobState::Failed, "{ended:?}");
    match &ended.outcome {
        Some(JobOutcome::Failed(e)) => {
            assert_eq!(e.code, ErrorCode::StartFailed);
            assert!(
                e.message.contains("before the start was recorded"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(qemus_under(d.dir.path()).is_empty());
    for f in ["runtime.json", "qmp.sock", "qemu.pid"] {
        assert!(!d.run_dir("cut").join(f).exists(), "{f} left behind");
    }
    // Nothing half-done stands in the way of the next start.
    let started = d.start_vm("cut");
    assert_ne!(started.pid, Some(pid));
    assert_eq!(started.state, VmState::Running);
}

/// A start whose QEMU was recorded but not yet resumed, cut short by `kill -9` of kvmd: the
/// next kvmd finishes it with the same QEMU.
#[test]
fn a_start_cut_by_kill9_after_it_was_recorded_is_finished() {
    let mut d = Daemon::prepare(
        "",
        &instance_toml("held", "[instance.held.hvparams]\ncpu_mask = \"0\""),
    );
    // Pinning makes QEMU start with -S; the fault holds the start before `cont`.
    d.spawn_with_env(&[("KVMD_FAULTS", "delay_before_cont_ms=30000")]);
    let job = accepted(
        &d,
        ApiRequest::Start {
            name: name("held"),
            paused: false,
            wait: false,
            memory: None,
        },
    );
    let pid = wait_for(
        "the start to reach configuring",
        Duration::from_secs(20),
        || {
            jobs(&d)
                .into_iter()
                .find(|j| j.id == job.id && j.phase == "configuring")
                .and(d.try_info("held").and_then(|i| i.pid))
        },
    );
    assert!(d.run_dir("held").join("runtime.json").exists());
    d.kill9();
    assert!(alive(pid));
    d.spawn();
    let info = d.wait_state("held", "running", Duration::from_secs(20));
    assert_eq!(info.pid, Some(pid), "the same QEMU, resumed");
    d.wait_ready("held", 1);
    let ended = jobs(&d)
        .into_iter()
        .find(|j| j.id == job.id)
        .expect("the start job");
    assert!(
        ended.resumed && ended.state == JobState::Succeeded,
        "{ended:?}"
    );
}

/// Regression: one failed `pidfd_open` during recovery recorded a live QEMU as exited, and
/// the next start ran a second QEMU for the same instance.
#[test]
fn a_qemu_that_cannot_be_watched_is_kept_and_watched_again() {
    let mut d = Daemon::start_with("health_interval_ms = 500", &instance_toml("pf", ""));
    let pid = d.start_vm("pf").pid.unwrap();
    d.kill9();
    d.spawn_with_env(&[("KVMD_FAULTS", "pidfd_open=1")]);
    let info = d.info("pf");
    assert_eq!((info.state, info.pid), (VmState::Unresponsive, Some(pid)));
    assert!(info.last_exit.is_none(), "not recorded as exited");
    let e = d
        .call(ApiRequest::Start {
            name: name("pf"),
            paused: false,
            wait: true,
            memory: None,
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AlreadyRunning);
    assert_eq!(qemus_under(d.dir.path()), vec![pid], "no second QEMU");
    // Watched again at the next look.
    let info = d.wait_state("pf", "running", Duration::from_secs(10));
    assert_eq!(info.pid, Some(pid));
    match d.call(ApiRequest::Stop {
        name: name("pf"),
        timeout_s: None,
        force: true,
        wait: true,
    }) {
        Ok(ApiReply::Stopped { ended, .. }) => assert_eq!(ended, StopEnd::Sigkill),
        other => panic!("{other:?}"),
    }
    assert!(!alive(pid));
}

/// Regression: a runtime file missing one hvparam (written by another kvmd version) made
/// `stop` panic the actor, and the VM could no longer be stopped.
#[test]
fn a_runtime_file_missing_an_hvparam_still_stops_normally() {
    let mut d = Daemon::start(&instance_toml("old", ""));
    let pid = d.start_vm("old").pid.unwrap();
    d.wait_ready("old", 1);
    d.kill9();
    let path = d.run_dir("old").join("runtime.json");
    let mut rt: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let hv = rt["hvparams"].as_object_mut().unwrap();
    hv.remove("acpi");
    hv.remove("reboot_behavior");
    std::fs::write(&path, rt.to_string()).unwrap();
    d.spawn();
    assert_eq!(d.info("old").pid, Some(pid));
    match d.call(ApiRequest::Stop {
        name: name("old"),
        timeout_s: Some(30),
        force: false,
        wait: true,
    }) {
        Ok(ApiReply::Stopped { ended, info, .. }) => {
            assert_eq!(ended, StopEnd::Acpi, "acpi took its default");
            assert_eq!(info.state, VmState::Stopped);
        }
        other => panic!("{other:?}"),
    }
}

/// Regression: a damaged runtime file over a QEMU that died while kvmd was down showed
/// `stopped` with no `last_exit`: nobody could tell the VM had died.
#[test]
fn a_death_while_kvmd_was_down_is_recorded_even_with_a_damaged_runtime_file() {
    let mut d = Daemon::start(&instance_toml("dm", ""));
    let pid = d.start_vm("dm").pid.unwrap();
    d.kill9();
    kill(pid);
    std::fs::write(d.run_dir("dm").join("runtime.json"), b"{ damaged").unwrap();
    wait_for("QEMU gone", Duration::from_secs(5), || {
        (!alive(pid)).then_some(())
    });
    d.spawn();
    let info = d.wait_state("dm", "crashed", Duration::from_secs(10));
    let exit = info.last_exit.expect("the death is recorded");
    assert_eq!(exit.pid, pid);
    assert!(exit.reason.contains("damaged"), "{}", exit.reason);
}

/// Regression: a `cleanup` sent right after QEMU went away was undone by the exit record that
/// landed after it (`last_exit` came back), and an instance removed from the config was then
/// never forgotten (4 of 8 runs).
#[test]
fn a_cleanup_right_after_an_exit_stays_done_and_a_removed_instance_is_forgotten() {
    let d = Daemon::start(&instance_toml("cl", ""));
    let mut c = d.client();
    for round in 0..8 {
        let pid = match d
            .call(ApiRequest::Start {
                name: name("cl"),
                paused: true,
                wait: true,
                memory: None,
            })
            .unwrap()
        {
            ApiReply::Started(i) => i.pid.unwrap(),
            other => panic!("{other:?}"),
        };
        kill(pid);
        // The moment it shows the crash (polled without pause), clean up.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c
                .call(&ApiRequest::Info {
                    name: Some(name("cl")),
                })
                .unwrap()
                .result
            {
                Ok(ApiReply::Info(v)) if v[0].state == VmState::Crashed => break,
                _ => assert!(Instant::now() < deadline, "round {round}: never crashed"),
            }
        }
        match c
            .call(&ApiRequest::Cleanup { name: name("cl") })
            .unwrap()
            .result
        {
            Ok(ApiReply::CleanedUp { .. }) => {}
            other => panic!("round {round}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(300));
        let info = d.info("cl");
        assert_eq!(info.last_exit, None, "round {round}: history came back");
        assert!(!d.run_dir("cl").exists(), "round {round}: files came back");
    }
    std::fs::write(&d.config, node_toml(d.dir.path(), "")).unwrap();
    d.call(ApiRequest::Reload).unwrap();
    wait_for("cl to be forgotten", Duration::from_secs(5), || {
        d.try_info("cl").is_none().then_some(())
    });
}

/// Regression: a hanging `kvm_path` left a VM `starting` forever, `stop --force` answered
/// `busy`, and shutdown waited 80 s. Now the probe has a deadline, a stop cancels the start,
/// and kvmd exits promptly.
#[test]
fn a_stop_cancels_a_start_that_hangs_and_kvmd_still_exits_promptly() {
    let script_dir = tempfile::tempdir().unwrap();
    let script = script_dir.path().join("hanging-qemu");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut d = Daemon::start_with(
        "probe_timeout_ms = 4000",
        &instance_toml(
            "hang",
            &format!(
                "[instance.hang.hvparams]\nkvm_path = \"{}\"",
                script.display()
            ),
        ),
    );
    let start = accepted(
        &d,
        ApiRequest::Start {
            name: name("hang"),
            paused: false,
            wait: false,
            memory: None,
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    match d.call(ApiRequest::Stop {
        name: name("hang"),
        timeout_s: None,
        force: true,
        wait: true,
    }) {
        Ok(ApiReply::Stopped { ended, info, .. }) => {
            assert_eq!(ended, StopEnd::StartCancelled);
            assert_eq!(info.state, VmState::Stopped);
            assert!(info.job.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    match d.call(ApiRequest::Job {
        target: kvmd::api::JobRef::Id(start.id),
    }) {
        Ok(ApiReply::Job(j)) => assert_eq!(j.state, JobState::Cancelled),
        other => panic!("{other:?}"),
    }
    // A new start hangs in the probe again; SIGTERM must not wait for it beyond its deadline.
    accepted(
        &d,
        ApiRequest::Start {
            name: name("hang"),
            paused: false,
            wait: false,
            memory: None,
        },
    );
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.child.as_mut().unwrap().wait().unwrap();
    d.child = None;
    assert!(status.success());
    assert!(
        t0.elapsed() < Duration::from_secs(7),
        "shutdown took {:?}",
        t0.elapsed()
    );
    assert!(!d.run_dir("hang").join("qemu.pid").exists());
}

fn job_event(e: &kvmd::api::Event) -> Option<&JobInfo> {
    match &e.kind {
        EventKind::JobStarted(j) | EventKind::JobProgress(j) | EventKind::JobEnded(j) => Some(j),
        _ => None,
    }
}

/// Must show: `kvmctl events --follow` shows a start and a stop as they happen; `--since`
/// replays them after a reconnect.
#[test]
fn the_event_stream_shows_a_start_and_a_stop_live_and_replays_them() {
    let d = Daemon::start(&instance_toml("ev", ""));
    let mut follow = d.subscribe(None, true);
    let mut kvmctl = std::process::Command::new(env!("CARGO_BIN_EXE_kvmctl"))
        .args([
            "--socket",
            d.socket().to_str().unwrap(),
            "events",
            "--follow",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.start_vm("ev");
    let started = next_event_matching(
        &mut follow,
        "the start job's end",
        Duration::from_secs(30),
        |e| matches!(&e.kind, EventKind::JobEnded(j) if j.kind == Operation::Start),
    );
    d.call(ApiRequest::Stop {
        name: name("ev"),
        timeout_s: None,
        force: true,
        wait: true,
    })
    .unwrap();
    let stopped = next_event_matching(
        &mut follow,
        "the stop job's end",
        Duration::from_secs(30),
        |e| matches!(&e.kind, EventKind::JobEnded(j) if j.kind == Operation::Stop),
    );
    assert!(matches!(
        job_event(&stopped).and_then(|j| j.outcome.clone()),
        Some(JobOutcome::Done {
            stop: Some(StopResult {
                ended: StopEnd::Sigkill,
                ..
            })
        })
    ));
    // kvmctl printed them as they happened.
    std::thread::sleep(Duration::from_millis(300));
    let _ = kvmctl.kill();
    let out = kvmctl.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("start job") && text.contains("stop job"),
        "{text}"
    );
    assert!(text.contains("starting -> running"), "{text}");
    // A new connection replays from a sequence number.
    let mut replay = d.subscribe(Some(started.seq - 1), false);
    let mut kinds = Vec::new();
    loop {
        match next_item(&mut replay, Duration::from_secs(5)) {
            StreamItem::Event(e) => kinds.push((e.seq, e.kind)),
            StreamItem::End { .. } => break,
            StreamItem::Gap { from, to } => panic!("unexpected gap {from}-{to}"),
        }
    }
    assert_eq!(kinds.first().map(|k| k.0), Some(started.seq));
    assert!(kinds.iter().any(|(s, _)| *s == stopped.seq));
    assert!(
        kinds.windows(2).all(|w| w[0].0 + 1 == w[1].0),
        "in order, no holes"
    );
    assert!(kinds.iter().any(|(_, k)| matches!(
        k,
        EventKind::State {
            state: VmState::Stopped,
            ..
        }
    )));
}
