//! Our QMP client against real QEMU (greeting, commands, errors, fd passing) and, for faults a
//! real QEMU will not produce on demand, against a fake server: hangs, garbage, split and
//! merged lines, stray ids, disconnects, a bad greeting.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvmd::qmp::{Qmp, QmpError};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

const T: Duration = Duration::from_secs(2);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Qemu(Child);
impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_none(sock: &Path) -> Qemu {
    Qemu(
        Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "none",
                "-S",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn real_qemu_greets_answers_and_accepts_a_passed_fd() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let _q = qemu_none(&sock);
    rt().block_on(async {
        let (qmp, _events) =
            Qmp::connect(&sock, Instant::now() + Duration::from_secs(10), T, || true)
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
        let st = qmp.execute("query-status", None, T).await.unwrap();
        assert_eq!(st["status"], "prelaunch");
        match qmp.execute("no-such-command", None, T).await.unwrap_err() {
            QmpError::Command { class, .. } => assert_eq!(class, "CommandNotFound"),
            other => panic!("{other:?}"),
        }
        // getfd only succeeds when a descriptor really arrived with SCM_RIGHTS.
        let e = qmp
            .execute("getfd", Some(json!({"fdname": "nofd"})), T)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("SCM_RIGHTS") || e.to_string().contains("file descriptor"),
            "{e}"
        );
        let (r, _w) = nix::unistd::pipe().unwrap();
        qmp.execute_with_fd("getfd", Some(json!({"fdname": "pipe0"})), r.as_fd(), T)
            .await
            .unwrap();
        qmp.execute("closefd", Some(json!({"fdname": "pipe0"})), T)
            .await
            .unwrap();
    });
}

/// A fake QMP server: greets, answers qmp_capabilities, then hands each later command line to
/// `script`, which returns the raw bytes to send back (possibly nothing, possibly garbage).
async fn fake(
    path: &Path,
    greeting: &'static str,
    script: impl Fn(serde_json::Value) -> Option<Vec<u8>> + Send + 'static,
) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(greeting.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["execute"] == "qmp_capabilities" {
                w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", v["id"]).as_bytes())
                    .await
                    .unwrap();
                continue;
            }
            match script(v) {
                Some(bytes) if bytes == b"CLOSE" => return,
                Some(bytes) => {
                    // Send in two pieces to exercise reassembly.
                    let (a, b) = bytes.split_at(bytes.len() / 2);
                    w.write_all(a).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    w.write_all(b).await.unwrap();
                }
                None => {}
            }
        }
    });
}

const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 9}, \"package\": \"\"}, \"capabilities\": []}}\n";

#[test]
fn a_hung_qemu_times_out_at_the_deadline_and_a_late_reply_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, GREETING, |v| match v["execute"].as_str() {
            Some("hang") => None,
            _ => Some(format!("{{\"return\": {{\"ok\": 1}}, \"id\": {}}}\n", v["id"]).into_bytes()),
        })
        .await;
        let (qmp, _ev) = Qmp::connect(&sock, Instant::now() + T, T, || true)
            .await
            .unwrap();
        let t0 = Instant::now();
        let e = qmp
            .execute("hang", None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(qmp.execute("query-status", None, T).await.unwrap()["ok"], 1);
    });
}

#[test]
fn garbage_stray_ids_and_interleaved_events_do_not_confuse_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, GREETING, |v| {
            let id = &v["id"];
            Some(
                format!(
                    "this is not json\n{{\"return\": {{}}, \"id\": 999999}}\n{{\"event\": \"STOP\", \"timestamp\": {{\"seconds\": 1, \"microseconds\": 2}}, \"data\": {{}}, \"new-field\": 1}}\n{{\"event\": \"SOMETHING_NEW\"}}{}\n{{\"return\": {{\"status\": \"paused\"}}, \"id\": {id}, \"extra\": true}}\n",
                    "",
                )
                .into_bytes(),
            )
        })
        .await;
        let (qmp, mut events) = Qmp::connect(&sock, Instant::now() + T, T, || true).await.unwrap();
        assert_eq!(qmp.execute("query-status", None, T).await.unwrap()["status"], "paused");
        assert_eq!(events.recv().await.unwrap().name, "STOP");
        assert_eq!(events.recv().await.unwrap().name, "SOMETHING_NEW");
    });
}

#[test]
fn a_disconnect_fails_waiting_commands_at_once_and_closes_the_event_stream() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, GREETING, |_| Some(b"CLOSE".to_vec())).await;
        let (qmp, mut events) = Qmp::connect(&sock, Instant::now() + T, T, || true)
            .await
            .unwrap();
        let t0 = Instant::now();
        let e = qmp
            .execute("quit", None, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Closed), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(events.recv().await.is_none());
        assert!(qmp.is_closed());
        assert!(matches!(
            qmp.execute("x", None, T).await.unwrap_err(),
            QmpError::Closed
        ));
    });
}

#[test]
fn a_bad_greeting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q");
    rt().block_on(async {
        fake(&sock, "{\"hello\": \"world\"}\n", |_| None).await;
        let e = Qmp::connect(&sock, Instant::now() + T, T, || true)
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
        let e = Qmp::connect(
            &dir.path().join("missing"),
            Instant::now() + Duration::from_secs(10),
            T,
            || false,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, QmpError::Connect { .. }));
        assert!(t0.elapsed() < Duration::from_secs(1));
    });
}
