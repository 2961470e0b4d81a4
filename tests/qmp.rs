//! Our QMP client against real QEMU (greeting, typed commands, errors, fd passing, a listening
//! socket handed to QEMU by fd) and, for faults a real QEMU will not produce on demand,
//! against a fake server: hangs, late replies, slow start-up, garbage, split and merged lines,
//! stray ids, event floods, disconnects, a bad greeting.
//!
//! Invariant: no lucky sleeps — every wait is bounded by a generous deadline or waits for the
//! thing itself; every QEMU is killed when its test ends.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod support;

use kvmd::qmp::{
    ConnectOptions, Display, MigrationParams, MigrationStatus, Notice, Qmp, QmpError, QmpEvent,
    RunState, NOTICE_CAPACITY,
};
use serde_json::{json, Value};
use support::fake_qmp::{fake, fake_with, reply, Say, GREETING};
use support::Qemu;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(2);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts(startup: Duration, command: Duration) -> ConnectOptions {
    ConnectOptions {
        connect_deadline: Instant::now() + Duration::from_secs(10),
        startup_timeout: startup,
        command_timeout: command,
    }
}

/// Held while spawning, so that a child of one test never inherits the listening socket
/// another test made inheritable for its own QEMU.
static SPAWNING: Mutex<()> = Mutex::new(());

/// `qemu-system-x86_64 -machine none -S` with no devices, plus `extra`.
fn qemu(extra: &[&str]) -> Qemu {
    let _spawning = SPAWNING.lock().unwrap();
    Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-S", "-nodefaults", "-display", "none"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn qmp_arg(sock: &Path) -> String {
    format!("unix:{},server=on,wait=off", sock.display())
}

/// The next notice, within a generous deadline.
async fn next(notices: &mut mpsc::Receiver<Notice>) -> Option<Notice> {
    tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a notice or the end of the channel within 10 s")
}

async fn next_event(notices: &mut mpsc::Receiver<Notice>) -> QmpEvent {
    match next(notices).await {
        Some(Notice::Event { event, .. }) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn real_qemu_greets_answers_and_accepts_a_passed_fd() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let _q = qemu(&["-qmp", &qmp_arg(&sock)]);
    rt().block_on(async {
        let (qmp, _notices) = Qmp::connect_with(&sock, &opts(T, T), || true)
            .await
            .unwrap();
        let text = String::from_utf8(
            Command::new("qemu-system-x86_64")
                .arg("--version")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let (maj, min, mic) = kvmd::qemu::caps::parse_version(&text).unwrap();
        assert_eq!(
            (qmp.greeting.major, qmp.greeting.minor, qmp.greeting.micro),
            (maj, min, mic)
        );
        assert_eq!(
            qmp.query_status().await.unwrap().run_state,
            RunState::Prelaunch
        );
        match qmp
            .execute_raw("no-such-command", None, T)
            .await
            .unwrap_err()
        {
            QmpError::Command { command, class, .. } => {
                assert_eq!(
                    (command.as_str(), class.as_str()),
                    ("no-such-command", "CommandNotFound")
                )
            }
            other => panic!("{other:?}"),
        }
        // getfd only succeeds when a descriptor really arrived with SCM_RIGHTS.
        let e = qmp
            .execute_raw("getfd", Some(json!({"fdname": "nofd"})), T)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("SCM_RIGHTS") || e.to_string().contains("file descriptor"),
            "{e}"
        );
        let (r, _w) = nix::unistd::pipe().unwrap();
        qmp.getfd("pipe0", r.as_fd()).await.unwrap();
        qmp.closefd("pipe0").await.unwrap();
        // Closed already: QEMU no longer knows the name.
        assert!(matches!(
            qmp.closefd("pipe0").await.unwrap_err(),
            QmpError::Command { .. }
        ));
    });
}

#[test]
fn real_qemu_answers_every_typed_command() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let _q = qemu(&["-vnc", "none,password=on", "-qmp", &qmp_arg(&sock)]);
    rt().block_on(async {
        let (qmp, mut notices) = Qmp::connect_with(&sock, &opts(T, T), || true)
            .await
            .unwrap();
        assert_eq!(qmp.query_version().await.unwrap(), qmp.greeting);
        let machines = qmp.query_machines().await.unwrap();
        assert_eq!(machines.iter().filter(|m| m.is_default).count(), 1);
        assert!(machines.iter().any(|m| m.name == "none"));
        assert!(machines.iter().any(|m| m.alias.as_deref() == Some("pc")));
        let concrete = qmp.qom_list_types("device", false).await.unwrap();
        assert!(concrete.iter().any(|t| t == "virtio-net-pci"));
        assert!(!concrete.iter().any(|t| t == "pci-device"), "abstract");
        let all = qmp.qom_list_types("device", true).await.unwrap();
        assert!(all.iter().any(|t| t == "pci-device"));
        assert!(
            qmp.query_cpus_fast().await.unwrap().is_empty(),
            "-machine none"
        );
        qmp.set_password(Display::Vnc, "s3cret").await.unwrap();
        assert!(matches!(
            qmp.set_password(Display::Spice, "s3cret")
                .await
                .unwrap_err(),
            QmpError::Command { .. }
        ));

        let st = qmp.query_status().await.unwrap();
        assert_eq!((st.run_state, st.running), (RunState::Prelaunch, false));
        qmp.cont().await.unwrap();
        assert_eq!(next_event(&mut notices).await, QmpEvent::Resume);
        let st = qmp.query_status().await.unwrap();
        assert_eq!((st.run_state, st.running), (RunState::Running, true));
        qmp.stop().await.unwrap();
        assert_eq!(next_event(&mut notices).await, QmpEvent::Stop);
        assert_eq!(
            qmp.query_status().await.unwrap().run_state,
            RunState::Paused
        );
        qmp.system_reset().await.unwrap();
        assert_eq!(
            next_event(&mut notices).await,
            QmpEvent::Reset {
                guest: false,
                reason: "host-qmp-system-reset".into()
            }
        );
        qmp.system_powerdown().await.unwrap();
        assert_eq!(next_event(&mut notices).await, QmpEvent::Powerdown);
        qmp.with_timeout(Duration::from_secs(10))
            .quit()
            .await
            .unwrap();
        assert_eq!(
            next_event(&mut notices).await,
            QmpEvent::Shutdown {
                guest: false,
                reason: "host-qmp-quit".into()
            }
        );
        assert_eq!(next(&mut notices).await, None, "QEMU exited");
        assert!(qmp.is_closed());
        assert!(matches!(qmp.quit().await, Err(QmpError::Closed)));
    });
}

/// A small pc guest that never runs (`-S`), plus `extra`.
fn qemu_pc(extra: &[&str]) -> Qemu {
    let _spawning = SPAWNING.lock().unwrap();
    Qemu(
        Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "pc,accel=tcg",
                "-m",
                "64",
                "-S",
                "-display",
                "none",
            ])
            .args(["-net", "none"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn real_qemu_migrates_through_the_typed_migration_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (src_sock, dst_sock) = (dir.path().join("src.sock"), dir.path().join("dst.sock"));
    let uri = format!("unix:{}", dir.path().join("migration.sock").display());
    let _src = qemu_pc(&["-qmp", &qmp_arg(&src_sock)]);
    let _dst = qemu_pc(&["-incoming", "defer", "-qmp", &qmp_arg(&dst_sock)]);
    rt().block_on(async {
        let (src, mut src_notices) = Qmp::connect_with(&src_sock, &opts(T, T), || true)
            .await
            .unwrap();
        let (dst, mut dst_notices) = Qmp::connect_with(&dst_sock, &opts(T, T), || true)
            .await
            .unwrap();
        assert_eq!(src.query_migrate().await.unwrap().status, None, "none yet");
        let caps = [("events", true), ("return-path", true)];
        src.migrate_set_capabilities(&caps).await.unwrap();
        dst.migrate_set_capabilities(&caps).await.unwrap();
        let on = src.query_migrate_capabilities().await.unwrap();
        assert!(on.contains(&("return-path".to_string(), true)), "{on:?}");
        assert!(on.contains(&("postcopy-ram".to_string(), false)), "{on:?}");
        assert!(matches!(
            src.migrate_set_capabilities(&[("no-such-capability", true)])
                .await
                .unwrap_err(),
            QmpError::Command { .. }
        ));
        src.migrate_set_parameters(&MigrationParams {
            max_bandwidth: Some(64 << 20),
            downtime_limit: Some(30),
            ..MigrationParams::default()
        })
        .await
        .unwrap();
        assert_eq!(
            dst.query_status().await.unwrap().run_state,
            RunState::Inmigrate
        );
        dst.migrate_incoming(&uri).await.unwrap();
        src.migrate(&uri).await.unwrap();
        // Events on both ends, up to completed.
        for notices in [&mut src_notices, &mut dst_notices] {
            loop {
                match next_event(notices).await {
                    QmpEvent::Migration { status } if status == "completed" => break,
                    QmpEvent::Migration { status } => {
                        assert!(["setup", "active"].contains(&status.as_str()), "{status}")
                    }
                    QmpEvent::MigrationPass { .. } | QmpEvent::Stop | QmpEvent::Resume => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let done = src.query_migrate().await.unwrap();
        assert_eq!(done.status, Some(MigrationStatus::Completed));
        assert!(done.downtime_ms.is_some() && done.total_time_ms.is_some());
        let ram = done.ram.unwrap();
        assert!(ram.transferred > 0 && ram.total >= 64 << 20, "{ram:?}");
        assert_eq!(
            src.query_status().await.unwrap().run_state,
            RunState::Postmigrate
        );
        // The source never ran: neither does the destination.
        assert!(!dst.query_status().await.unwrap().running);
    });
}

#[test]
fn a_cancelled_migration_leaves_the_source_as_it_was_and_the_destination_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (src_sock, dst_sock) = (dir.path().join("src.sock"), dir.path().join("dst.sock"));
    let uri = format!("unix:{}", dir.path().join("migration.sock").display());
    let _src = qemu_pc(&["-qmp", &qmp_arg(&src_sock)]);
    let mut dst = qemu_pc(&["-incoming", "defer", "-qmp", &qmp_arg(&dst_sock)]);
    rt().block_on(async {
        let (src, mut src_notices) = Qmp::connect_with(&src_sock, &opts(T, T), || true)
            .await
            .unwrap();
        let (dst_qmp, _dst_notices) = Qmp::connect_with(&dst_sock, &opts(T, T), || true)
            .await
            .unwrap();
        let caps = [("events", true), ("return-path", true)];
        src.migrate_set_capabilities(&caps).await.unwrap();
        dst_qmp.migrate_set_capabilities(&caps).await.unwrap();
        // 1 byte/s: it cannot finish before the cancel.
        src.migrate_set_parameters(&MigrationParams {
            max_bandwidth: Some(1),
            ..MigrationParams::default()
        })
        .await
        .unwrap();
        dst_qmp.migrate_incoming(&uri).await.unwrap();
        src.migrate(&uri).await.unwrap();
        loop {
            if let QmpEvent::Migration { status } = next_event(&mut src_notices).await {
                if status == "active" {
                    break;
                }
            }
        }
        src.migrate_cancel().await.unwrap();
        loop {
            if let QmpEvent::Migration { status } = next_event(&mut src_notices).await {
                if status == "cancelled" {
                    break;
                }
            }
        }
        assert_eq!(
            src.query_migrate().await.unwrap().status,
            Some(MigrationStatus::Cancelled)
        );
        assert_eq!(
            src.query_status().await.unwrap().run_state,
            RunState::Prelaunch,
            "the source is as it was"
        );
    });
    // The destination exits when the stream breaks off.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dst.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the destination QEMU did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_listening_socket_passed_to_qemu_by_fd_is_connected_before_qemu_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let q = {
        let _spawning = SPAWNING.lock().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let fd = listener.as_raw_fd();
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-S", "-nodefaults", "-display", "none"])
            .arg("-chardev")
            .arg(format!("socket,id=qmp0,fd={fd},server=on,wait=off"))
            .args(["-mon", "chardev=qmp0,mode=control"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Qemu(child) // our copy of the listener closes here; QEMU holds its own
    };
    rt().block_on(async {
        // No polling: the socket listens already, QEMU greets when it is ready.
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let o = opts(Duration::from_secs(10), T);
        let (qmp, mut notices) = Qmp::from_stream(stream, &o).await.unwrap();
        assert_eq!(qmp.greeting.major, qmp.query_version().await.unwrap().major);
        assert_eq!(
            qmp.query_status().await.unwrap().run_state,
            RunState::Prelaunch
        );
        qmp.close().await;
        assert!(matches!(qmp.query_status().await, Err(QmpError::Closed)));
        assert_eq!(next(&mut notices).await, None, "QEMU hung up too");

        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (again, _notices) = Qmp::from_stream(stream, &o).await.unwrap();
        assert_eq!(
            again.query_status().await.unwrap().run_state,
            RunState::Prelaunch
        );
        again.quit().await.unwrap();
    });
    drop(q);
}

/// What the fake server does with a command.

#[test]
fn a_hung_qemu_times_out_at_the_deadline_and_a_late_reply_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, |v| match v["execute"].as_str() {
            Some("hang") => Say::After(Duration::from_millis(1500), reply(&v, json!({"late": 1}))),
            _ => Say::Now(reply(&v, json!({"status": "running", "running": true}))),
        })
        .await;
        let (qmp, _notices) = Qmp::connect_with(&sock, &opts(T, T), || true)
            .await
            .unwrap();
        let t0 = Instant::now();
        let e = qmp
            .execute_raw("hang", None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e:?}");
        assert!(
            t0.elapsed() < Duration::from_millis(1200),
            "{:?}",
            t0.elapsed()
        );
        // Sent while the late reply is still coming: it gets its own answer, not the late one.
        let st = qmp
            .with_timeout(Duration::from_secs(10))
            .query_status()
            .await
            .unwrap();
        assert_eq!(st.run_state, RunState::Running);
        assert!(!qmp.is_closed());
    });
}

#[test]
fn a_command_that_misses_its_deadline_is_reported_as_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, |_| Say::Nothing).await;
        let (qmp, mut notices) = Qmp::connect_with(&sock, &opts(T, T), || true)
            .await
            .unwrap();
        let e = qmp
            .with_timeout(Duration::from_millis(300))
            .query_status()
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Timeout { ref command, .. } if command == "query-status"));
        assert_eq!(
            next(&mut notices).await,
            Some(Notice::TimedOut {
                command: "query-status".into()
            })
        );
        assert_eq!(
            qmp.command_timeout(),
            T,
            "with_timeout changed only its own handle"
        );
    });
}

/// A QEMU with preallocated memory answers qmp_capabilities only after preallocating: the
/// start-up deadline, not the command deadline, bounds that wait.
#[test]
fn a_slow_start_up_is_waited_for_under_the_start_up_deadline_not_the_command_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (slow, too_slow) = (dir.path().join("slow"), dir.path().join("too-slow"));
    let command = Duration::from_millis(300);
    rt().block_on(async {
        let answer = |v: Value| Say::Now(reply(&v, json!({"status": "prelaunch"})));
        fake_with(&slow, GREETING, Duration::from_millis(1500), answer).await;
        fake_with(&too_slow, GREETING, Duration::from_millis(1500), answer).await;

        let t0 = Instant::now();
        let (qmp, _notices) =
            Qmp::connect_with(&slow, &opts(Duration::from_secs(5), command), || true)
                .await
                .unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(qmp.command_timeout(), command);
        assert_eq!(
            qmp.query_status().await.unwrap().run_state,
            RunState::Prelaunch
        );

        let t0 = Instant::now();
        let e = Qmp::connect_with(
            &too_slow,
            &opts(Duration::from_millis(500), command),
            || true,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, QmpError::Timeout { ref command, .. } if command == "qmp_capabilities"),
            "{e:?}"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
    });
}

#[test]
fn garbage_stray_ids_and_interleaved_events_do_not_confuse_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, |v| {
            let id = &v["id"];
            Say::Now(
                format!(
                    "this is not json\n{{\"return\": {{}}, \"id\": 999999}}\n{{\"event\": \"STOP\", \"timestamp\": {{\"seconds\": 1, \"microseconds\": 2}}, \"data\": {{}}, \"new-field\": 1}}\n{{\"event\": \"SOMETHING_NEW\"}}\n{{\"return\": {{\"status\": \"paused\", \"running\": false}}, \"id\": {id}, \"extra\": true}}\n"
                )
                .into_bytes(),
            )
        })
        .await;
        let (qmp, mut notices) = Qmp::connect_with(&sock, &opts(T, T), || true).await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap().run_state, RunState::Paused);
        assert_eq!(
            next(&mut notices).await,
            Some(Notice::Event {
                event: QmpEvent::Stop,
                timestamp_us: 1_000_002
            })
        );
        assert_eq!(
            next_event(&mut notices).await,
            QmpEvent::Other {
                name: "SOMETHING_NEW".into(),
                data: Value::Null
            }
        );
    });
}

/// Nobody reads while QEMU floods events: the channel stays at its capacity, the excess is
/// dropped and counted, and the SHUTDOWN after the flood still arrives.
#[test]
fn a_flood_of_events_is_dropped_and_counted_but_a_lifecycle_event_is_not() {
    const FLOOD: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, |v| {
            let mut out = String::new();
            for i in 0..FLOOD {
                out += &format!("{{\"timestamp\": {{\"seconds\": 1, \"microseconds\": 2}}, \"event\": \"BALLOON_CHANGE\", \"data\": {{\"actual\": {i}}}}}\n");
            }
            out += "{\"timestamp\": {\"seconds\": 3, \"microseconds\": 4}, \"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}\n";
            Say::Now([out.into_bytes(), reply(&v, json!({}))].concat())
        })
        .await;
        let (qmp, mut notices) = Qmp::connect_with(&sock, &opts(T, T), || true).await.unwrap();
        let flood = tokio::spawn({
            let qmp = qmp.clone();
            async move { qmp.execute_raw("flood", None, Duration::from_secs(60)).await }
        });
        let dropped = (FLOOD - NOTICE_CAPACITY) as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while qmp.dropped_notices() < dropped {
            assert!(Instant::now() < deadline, "{} dropped", qmp.dropped_notices());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(notices.len(), NOTICE_CAPACITY);
        assert_eq!(notices.max_capacity(), NOTICE_CAPACITY);

        for i in 0..NOTICE_CAPACITY as u64 {
            assert_eq!(next_event(&mut notices).await, QmpEvent::BalloonChange { actual: i });
        }
        assert_eq!(
            next_event(&mut notices).await,
            QmpEvent::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        // The read loop went on: the reply after the flood arrived.
        flood.await.unwrap().unwrap();
        assert_eq!(qmp.dropped_notices(), dropped);
    });
}

#[test]
fn a_disconnect_fails_waiting_commands_at_once_and_closes_the_notice_channel() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, |_| Say::Close).await;
        let (qmp, mut notices) = Qmp::connect_with(&sock, &opts(T, T), || true)
            .await
            .unwrap();
        let t0 = Instant::now();
        let e = qmp
            .with_timeout(Duration::from_secs(10))
            .stop()
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Closed), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(next(&mut notices).await, None);
        assert!(qmp.is_closed());
        assert!(matches!(qmp.cont().await.unwrap_err(), QmpError::Closed));
    });
}

#[test]
fn a_bad_greeting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake_with(&sock, "{\"hello\": \"world\"}\n", Duration::ZERO, |_| {
            Say::Nothing
        })
        .await;
        let e = Qmp::connect_with(&sock, &opts(T, T), || true)
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Greeting(_)), "{e:?}");
    });
}

#[test]
fn connect_gives_up_when_the_process_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let t0 = Instant::now();
        let e = Qmp::connect_with(&dir.path().join("missing"), &opts(T, T), || false)
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Connect { .. }));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    });
}
