//! The control socket as clients meet it: self-describing replies, refused and capped peers
//! (the fd-exhaustion regression), supplementary groups, kvmctl's errors and JSON, event
//! streams with replay, gaps and shutdown, sequence numbers across restarts, and start/stop
//! waiting through the event stream. Real kvmd, real socket.
//!
//! Connections as other users are opened by this test binary itself, re-run as a helper
//! process under `setpriv` (see `helper_process`), so no other tool is needed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use kvmd::api::{ApiReply, ApiRequest, DaemonEvent, EventKind, StreamItem};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

const NOBODY: u32 = 65534;
const HELPER_ENV: &str = "KVMD_CONTROL_TEST_HELPER";

/// Send one raw line on a new connection and parse the reply.
fn raw(d: &Daemon, line: &str) -> Value {
    let reply = d.client().raw(line.as_bytes()).unwrap();
    serde_json::from_str(&reply).unwrap()
}

/// A command run as uid/gid 65534 with exactly the supplementary `groups`.
fn as_nobody(program: &Path, groups: &[u32]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let list: Vec<_> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", list.join(",")));
    }
    c.arg(program);
    c
}

/// What one connection opened by the helper got.
#[derive(Debug)]
struct Seen {
    /// `pong`, kvmd's error code, or `none` (nothing within 5 s).
    reply: String,
    ms: u128,
    /// kvmd closed the connection after its answer.
    closed: bool,
}

/// This test binary, re-run as another user, holding `count` connections open.
struct Helper {
    child: Child,
    out: BufReader<ChildStdout>,
    seen: Vec<Seen>,
}

impl Helper {
    /// `mode`: `idle` (connect and wait for whatever kvmd says) or `ping` (send a ping).
    fn open(socket: &Path, mode: &str, count: usize, groups: &[u32]) -> Helper {
        let exe = std::env::current_exe().unwrap();
        let mut child = as_nobody(&exe, groups)
            .args([
                "--exact",
                "helper_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, format!("{mode} {count} {}", socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the helper ended early"
            );
            // libtest may have printed `test helper_process ... ` on the same line.
            let Some(at) = line.find("HELPER ") else {
                continue;
            };
            let report = line[at + 7..].trim_end();
            if report == "READY" {
                break;
            }
            let v: Value = serde_json::from_str(report).unwrap();
            seen.push(Seen {
                reply: v["reply"].as_str().unwrap().to_string(),
                ms: v["ms"].as_u64().unwrap().into(),
                closed: v["closed"].as_bool().unwrap(),
            });
        }
        assert_eq!(seen.len(), count, "the helper reported every connection");
        Helper { child, out, seen }
    }

    fn replies(&self) -> Vec<&str> {
        self.seen.iter().map(|s| s.reply.as_str()).collect()
    }

    /// Close the helper's connections and let it exit.
    fn close(mut self) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success(), "{rest}");
    }
}

/// Not a test of its own: the body of [`Helper`] when run with its environment variable.
#[test]
fn helper_process() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ' ');
    let (mode, count, socket) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().parse::<usize>().unwrap(),
        parts.next().unwrap().to_string(),
    );
    let mut held = Vec::new();
    for _ in 0..count {
        let t0 = Instant::now();
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if mode == "ping" {
            let _ = s.write_all(b"{\"id\":1,\"request\":\"ping\"}\n");
        }
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        let ms = t0.elapsed().as_millis();
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(v) if v["ok"] == true => v["kind"].as_str().unwrap_or("?").to_string(),
            Ok(v) => v["error"]["code"].as_str().unwrap_or("?").to_string(),
            Err(_) => "none".to_string(),
        };
        let closed = reply != "pong" && reply != "none" && {
            let mut rest = [0u8; 16];
            matches!((&s).read(&mut rest), Ok(0) | Err(_))
        };
        println!(
            "HELPER {}",
            json!({"reply": reply, "ms": ms, "closed": closed})
        );
        held.push(s);
    }
    println!("HELPER READY");
    std::io::stdout().flush().unwrap();
    let mut wait = String::new();
    let _ = std::io::stdin().read_to_string(&mut wait);
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn bad_requests_still_name_every_field_and_every_reply_names_its_kind() {
    let d = Daemon::start("");
    let v = raw(
        &d,
        "{\"id\":1,\"request\":\"start\",\"name\":\"../etc\",\"turbo\":1}\n",
    );
    assert_eq!(
        (v["ok"].as_bool(), v["kind"].as_str()),
        (Some(false), Some("error"))
    );
    assert_eq!(v["id"], 1);
    let fields: Vec<_> = v["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "turbo"]);
    assert_eq!(
        v["error"]["fields"][1]["allowed"],
        json!([
            "name",
            "paused",
            "memory",
            "definition",
            "managed_by",
            "wait"
        ])
    );

    let v = raw(
        &d,
        "{\"id\":2,\"request\":\"subscribe\",\"since\":-1,\"follow\":\"yes\"}\n",
    );
    let fields: Vec<_> = v["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["since", "follow"]);
    let v = raw(
        &d,
        "{\"id\":3,\"request\":\"cancel\",\"job_id\":\"soon\"}\n",
    );
    assert_eq!(
        (v["error"]["field"].as_str(), v["id"].as_u64()),
        (Some("job_id"), Some(3))
    );
    let v = raw(&d, "{\"request\":\"format-disk\"}\n");
    assert_eq!(v["error"]["code"], "unknown_request");
    assert!(v["error"]["allowed"]
        .as_array()
        .unwrap()
        .contains(&json!("subscribe")));

    let v = raw(&d, "{\"id\":\"x\",\"request\":\"info\"}\n");
    assert_eq!(
        (v["kind"].as_str(), v["id"].as_str()),
        (Some("info"), Some("x"))
    );
    let v = raw(&d, "{\"request\":\"reload\"}\n");
    assert_eq!(v["kind"], "reloaded");
}

#[test]
fn ping_returns_the_daemons_real_version() {
    let d = Daemon::start("");
    assert_eq!(
        d.call(ApiRequest::Ping).unwrap(),
        ApiReply::Pong {
            version: env!("CARGO_PKG_VERSION").to_string()
        }
    );
    let out = d.kvmctl(&["ping"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("kvmd {} answers", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[test]
fn a_refused_peer_is_answered_at_once_and_disconnected() {
    let d = Daemon::start_with("socket_mode = 0o666", "");
    let h = Helper::open(&d.socket(), "idle", 1, &[]);
    let seen = &h.seen[0];
    assert_eq!(seen.reply, "permission_denied", "{seen:?}");
    assert!(seen.ms < 1000, "answered after {} ms", seen.ms);
    assert!(seen.closed, "kvmd closed the connection");
    h.close();
}

#[test]
fn refused_and_surplus_peers_cannot_exhaust_kvmds_file_descriptors() {
    let d = Daemon::start_with(
        "socket_mode = 0o666\nmax_connections = 8\nmax_connections_per_peer = 4",
        "",
    );
    let baseline = fd_count(d.pid());

    // 50 idle connections of a user kvmd does not serve: each refused at once, none held.
    let refused = Helper::open(&d.socket(), "idle", 50, &[]);
    assert!(
        refused.replies().iter().all(|r| *r == "permission_denied"),
        "{:?}",
        refused.replies()
    );
    let slowest = refused.seen.iter().map(|s| s.ms).max().unwrap();
    assert!(slowest < 1000, "the slowest refusal took {slowest} ms");
    assert!(refused.seen.iter().all(|s| s.closed));
    wait_for("kvmd to hold none of them", Duration::from_secs(5), || {
        (fd_count(d.pid()) < baseline + 5).then_some(())
    });

    // Root is exempt from the per-peer cap (4) but not from the global one (8).
    // (Retried until kvmd has let go of the connection `Daemon::start` used for its check.)
    let served = wait_for("8 root connections served", Duration::from_secs(10), || {
        let mut conns: Vec<_> = (0..8).map(|_| d.client()).collect();
        let all_pong = conns.iter_mut().all(|c| {
            matches!(
                c.call(&ApiRequest::Ping).map(|a| a.result),
                Ok(Ok(ApiReply::Pong { .. }))
            )
        });
        all_pong.then_some(conns)
    });
    let mut surplus = Vec::new();
    for _ in 8..20 {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["error"]["code"].as_str(), v["id"].is_null()),
            (Some("too_many_connections"), true),
            "{v}"
        );
        let mut rest = [0u8; 8];
        assert!(
            matches!(s.read(&mut rest), Ok(0) | Err(_)),
            "closed at once"
        );
        surplus.push(s);
    }
    drop(surplus);
    drop(served);

    // With the refused peer still holding its 50 connections, root is served again.
    wait_for("root served again", Duration::from_secs(5), || {
        d.client().call(&ApiRequest::Ping).ok()?.result.ok()
    });
    assert!(matches!(
        d.call(ApiRequest::Info { name: None }),
        Ok(ApiReply::Info(_))
    ));
    refused.close();
}

/// A group that exists for one test.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn create() -> TempGroup {
        let name = format!("kvmdt{}", std::process::id());
        let st = Command::new("groupadd").arg(&name).status().unwrap();
        assert!(st.success(), "groupadd {name}");
        let gid = nix::unistd::Group::from_name(&name)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        TempGroup { name, gid }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

#[test]
fn a_member_of_the_socket_group_by_supplementary_group_only_is_served_up_to_its_cap() {
    let group = TempGroup::create();
    let d = Daemon::start_with(
        &format!(
            "socket_group = \"{}\"\nmax_connections_per_peer = 4",
            group.name
        ),
        "",
    );
    let out = as_nobody(Path::new(env!("CARGO_BIN_EXE_kvmctl")), &[group.gid])
        .args(["--socket", d.socket().to_str().unwrap(), "--json", "ping"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        (v["kind"].as_str(), out.status.success()),
        (Some("pong"), true),
        "{v}"
    );

    let member = Helper::open(&d.socket(), "ping", 5, &[group.gid]);
    assert_eq!(
        member.replies(),
        ["pong", "pong", "pong", "pong", "too_many_connections"]
    );
    assert!(
        d.call(ApiRequest::Ping).is_ok(),
        "root is not held to the member's cap"
    );
    member.close();
}

#[test]
fn kvmctl_json_reports_a_bad_name_as_a_json_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvmctl"))
        .args([
            "--socket",
            "/nonexistent/kvmd.sock",
            "--json",
            "info",
            "BAD/NAME",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["kind"].as_str()),
        (Some(false), Some("error"))
    );
    assert_eq!(v["error"]["code"], "invalid_parameter");
    assert_eq!(v["error"]["field"], "name");
    assert_eq!(v["error"]["value"], "\"BAD/NAME\"");
    assert!(v["error"]["rule"].as_str().unwrap().contains("'/'"));

    let out = Command::new(env!("CARGO_BIN_EXE_kvmctl"))
        .args(["--socket", "/nonexistent/kvmd.sock", "--json", "ping"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "connection_failed");
}

#[test]
fn kvmctl_says_permission_denied_when_the_socket_refuses_it() {
    let d = Daemon::start_with("socket_mode = 0o660", "");
    let kvmctl = Path::new(env!("CARGO_BIN_EXE_kvmctl"));
    let sock = d.socket();
    let out = as_nobody(kvmctl, &[])
        .args(["--socket", sock.to_str().unwrap(), "ping"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("Permission denied on") && err.contains("mode 0660, owner root:root"),
        "{err}"
    );
    assert!(!err.contains("is kvmd running"), "{err}");

    let out = as_nobody(kvmctl, &[])
        .args(["--socket", sock.to_str().unwrap(), "--json", "ping"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "permission_denied");
}

#[test]
fn events_since_zero_on_a_fresh_daemon_replay_its_start_and_then_end() {
    let d = Daemon::start("");
    let out = d.kvmctl(&["--json", "events", "--since", "0"]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["kind"], "event");
    assert_eq!(lines[0]["event"]["seq"], 1);
    assert_eq!(lines[0]["event"]["type"], "daemon");
    assert_eq!(lines[0]["event"]["daemon"]["event"], "started");
    assert_eq!(lines[1], json!({"kind": "end", "last_seq": 1}));

    let out = d.kvmctl(&["events", "--since", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("kvmd {} started", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[test]
fn a_follower_sees_kvmd_stopping_and_then_the_end_of_the_stream() {
    let mut d = Daemon::start("");
    let mut stream = d.subscribe(None, true);
    d.signal(Signal::SIGTERM);
    let ev = next_event_matching(
        &mut stream,
        "daemon stopping",
        Duration::from_secs(10),
        |e| matches!(e.kind, EventKind::Daemon(DaemonEvent::Stopping)),
    );
    assert_eq!(
        next_item(&mut stream, Duration::from_secs(10)),
        StreamItem::End { last_seq: ev.seq }
    );
    assert!(d.child.as_mut().unwrap().wait().unwrap().success());
    d.child = None;
}

#[test]
fn a_reader_asking_for_more_than_the_kept_history_is_told_of_the_gap() {
    let d = Daemon::start_with("event_history = 16", "");
    let mut c = d.client();
    for _ in 0..20 {
        c.call(&ApiRequest::Reload).unwrap().result.unwrap();
    }
    // 21 events (kvmd started, 20 reloads), of which the last 16 are kept.
    let items: Vec<StreamItem> = d.subscribe(Some(0), false).map(Result::unwrap).collect();
    assert_eq!(items[0], StreamItem::Gap { from: 1, to: 5 });
    let seqs: Vec<u64> = items[1..16 + 1]
        .iter()
        .map(|i| match i {
            StreamItem::Event(e) => e.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, (6..=21).collect::<Vec<_>>());
    assert_eq!(items[17..], [StreamItem::End { last_seq: 21 }]);

    let out = d.kvmctl(&["events", "--since", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("WARNING: events 1-5 are lost"),
        "{text}"
    );
}

#[test]
fn sequence_numbers_keep_growing_across_kvmd_restarts() {
    let mut d = Daemon::start("");
    let started_seq = |d: &Daemon| -> u64 {
        let items: Vec<StreamItem> = d.subscribe(Some(0), false).map(Result::unwrap).collect();
        items
            .iter()
            .rev()
            .find_map(|i| match i {
                StreamItem::Event(e)
                    if matches!(e.kind, EventKind::Daemon(DaemonEvent::Started { .. })) =>
                {
                    Some(e.seq)
                }
                _ => None,
            })
            .expect("a started event")
    };
    assert_eq!(started_seq(&d), 1);
    // A clean stop (SIGTERM publishes `stopping`, seq 2): the next kvmd continues at 3.
    d.signal(Signal::SIGTERM);
    d.child.as_mut().unwrap().wait().unwrap();
    d.child = None;
    d.spawn();
    assert_eq!(started_seq(&d), 3);
    // kill -9: the next kvmd starts above the reserved block, never reusing a number.
    d.kill9();
    d.spawn();
    assert!(started_seq(&d) > 3 + 1000);
}

#[test]
fn kvmctl_start_and_stop_wait_for_their_job_and_report_like_before() {
    let d = Daemon::start(&instance_toml("web1", ""));
    let out = d.kvmctl(&["start", "web1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("web1: running (pid "), "{text}");
    d.wait_ready("web1", 1);

    let out = d.kvmctl(&["--json", "stop", "web1"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{v}");
    assert_eq!(
        (v["kind"].as_str(), v["result"]["ended"].as_str()),
        (Some("stopped"), Some("acpi"))
    );
    assert_eq!(v["result"]["instance"]["state"], "stopped");

    let out = d.kvmctl(&["stop", "--no-wait", "web1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with("web1: stopped (already-stopped") || text.starts_with("web1: stop job "),
        "{text}"
    );
    let out = d.kvmctl(&["start", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[not_found]"));
    assert_eq!(d.info("web1").state.as_str(), "stopped");
}
