//! External programs under a real kvmd: probing QEMU never enters a directory another user
//! prepared (the old predictable `TMPDIR/kvmd-probe-PID-ThreadId(N)`), and a `kvm_path` that
//! hangs fails the start at `probe_timeout` without leaving a process or runtime files.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmd::api::{ApiReply, ApiRequest, ErrorCode};
use kvmd::control::client::Client;
use support::*;

/// The uid (and gid) of `nobody`: an unprivileged local user.
const NOBODY: u32 = 65534;

/// A kvmd in a temporary directory with `TMPDIR` set to `<dir>/tmp`. `before_exec` runs with
/// the pid kvmd will have, before kvmd runs: it is started through `sh -c 'read _; exec "$0"
/// "$@"'`, which keeps its pid across the exec and waits for a line on stdin first. (The shell
/// only execs its arguments; it builds no command.)
fn start_with_tmpdir(
    extra_node: &str,
    instances: &str,
    before_exec: impl FnOnce(u32, &Path),
) -> (Daemon, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("kvmd-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let config = dir.path().join("kvmd.toml");
    std::fs::write(&config, node_toml(dir.path(), extra_node) + instances).unwrap();
    let log = std::fs::File::create(dir.path().join("kvmd.log")).unwrap();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("read _ && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_kvmd"))
        .arg("--config")
        .arg(&config)
        .arg("--log")
        .arg("kvmd=debug")
        .env("TMPDIR", &tmp)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    before_exec(child.id(), &tmp);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let d = Daemon {
        dir,
        child: Some(child),
        config,
        netns: None,
    };
    let sock = d.socket();
    wait_for("kvmd to answer", Duration::from_secs(10), || {
        Client::connect(&sock)
            .ok()
            .and_then(|mut c| c.call(&ApiRequest::Ping).ok())
            .map(|_| ())
    });
    (d, tmp)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_start_never_uses_a_probe_directory_another_user_prepared() {
    let mut prepared = Vec::new();
    let (d, tmp) = start_with_tmpdir("", &instance_toml("p1", ""), |pid, tmp| {
        // What the old code would have used (and then deleted), made world-writable by an
        // unprivileged user, with a marker inside.
        for n in 1..=64 {
            let dir = tmp.join(format!("kvmd-probe-{pid}-ThreadId({n})"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("marker"), b"planted by nobody").unwrap();
            for p in [dir.join("marker"), dir.clone()] {
                std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            prepared.push(dir);
        }
    });
    let info = d.start_vm("p1");
    assert!(info.pid.is_some_and(alive), "{info:?}");
    assert_eq!(d.info("p1").state.as_str(), "running");
    for dir in &prepared {
        assert!(dir.is_dir(), "{dir:?} was used by the probe, and removed");
        assert_eq!(entries(dir), ["marker"], "{dir:?} was entered");
        assert_eq!(
            std::fs::read(dir.join("marker")).unwrap(),
            b"planted by nobody"
        );
        let meta = std::fs::metadata(dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    }
    // The probe's own private directory is gone again: only the prepared ones are left.
    assert_eq!(entries(&tmp).len(), prepared.len(), "{:?}", entries(&tmp));
}

#[test]
fn a_kvm_path_that_hangs_fails_the_start_at_the_probe_timeout_and_leaves_nothing_behind() {
    let tools = tempfile::tempdir().unwrap();
    let hanging = tools.path().join("hanging-qemu");
    let pids = tools.path().join("pids");
    write_script(
        &hanging,
        &format!(
            "#!/bin/sh\necho $$ >> {}\nexec sleep 1000\n",
            pids.display()
        ),
    );
    let instance = instance_toml(
        "h1",
        &format!(
            "[instance.h1.hvparams]\nkvm_path = {:?}",
            hanging.display().to_string()
        ),
    );
    let (d, tmp) = start_with_tmpdir("probe_timeout_ms = 1500", &instance, |_, _| {});
    let t0 = Instant::now();
    let e = match d.call(ApiRequest::Start {
        name: name("h1"),
        paused: false,
        wait: true,
        memory: None,
    }) {
        Err(e) => e,
        Ok(ApiReply::Started(i)) => panic!("a hanging kvm_path started: {i:?}"),
        Ok(other) => panic!("{other:?}"),
    };
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(
        took < Duration::from_millis(1500) + Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(e.code, ErrorCode::StartFailed, "{e:?}");
    let text = format!("{} {}", e.message, e.details.join(" "));
    assert!(
        text.contains("hanging-qemu") && text.contains("timed out"),
        "{e:?}"
    );

    let started: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(started.len(), 1, "probed once, at --version");
    assert!(
        !started.iter().any(|p| alive(*p)),
        "the hung probe was killed"
    );
    assert!(qemus_under(d.dir.path()).is_empty());
    let run = d.run_dir("h1");
    assert!(
        !run.exists() || entries(&run).iter().all(|f| f == "exit.json"),
        "runtime files left: {:?}",
        entries(&run)
    );
    assert!(entries(&tmp).is_empty(), "{:?}", entries(&tmp));
    assert_eq!(d.info("h1").state.as_str(), "stopped");
}
