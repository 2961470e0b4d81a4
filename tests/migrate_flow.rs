//! Migration between two kvmd daemons on real QEMU, driven by `kvmctl migrate --to` and by
//! the steps a cluster engine sends: the VM keeps its memory, exactly one copy runs at every
//! end, and each fault ends in a definite state.

mod support;

use std::time::Duration;

use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn kvmctl_migrate_moves_a_booted_guest_with_its_memory() {
    let src = support::Daemon::start(&support::instance_toml("web", ""));
    let dst = support::Daemon::start("");
    src.start_vm("web");
    src.wait_ready("web", 1);
    let token = "kept-across-the-move-4711";
    src.guest_run("web", &format!("echo {token} > /tmp/token"));
    let dst_sock = dst.socket();
    let out = src.kvmctl(&[
        "--json",
        "migrate",
        "web",
        "--to",
        dst_sock.to_str().unwrap(),
    ]);
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["outcome"], "completed", "{v}");
    assert_eq!(v["runs_on"], "target", "{v}");
    assert!(v["downtime_ms"].as_u64().is_some(), "{v}");
    eprintln!("{v}");
    // The target runs it, with what the guest had in memory.
    let info = dst.wait_state("web", "running", Duration::from_secs(10));
    assert!(info.pid.is_some());
    assert_eq!(dst.guest_run("web", "cat /tmp/token"), token);
    // The source's QEMU is gone; its info says where the VM went; it will not start here.
    let s = src.wait_state("web", "moved", Duration::from_secs(10));
    assert!(s.pid.is_none());
    let exit = s.last_exit.expect("an exit record");
    assert!(exit.reason.contains("migrated to"), "{}", exit.reason);
    assert!(support::qemus_under(src.dir.path()).is_empty());
    let out = src.kvmctl(&["--json", "start", "web"]);
    let v = json(&out);
    assert_eq!(v["error"]["code"], "already_running", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("migrated to another node"),
        "{v}"
    );
    // And back home: the source takes it in again over its `moved` record.
    let out = dst.kvmctl(&[
        "--json",
        "migrate",
        "web",
        "--to",
        src.socket().to_str().unwrap(),
    ]);
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    src.wait_state("web", "running", Duration::from_secs(10));
    assert_eq!(src.guest_run("web", "cat /tmp/token"), token);
    dst.wait_state("web", "moved", Duration::from_secs(10));
    assert!(support::qemus_under(dst.dir.path()).is_empty());
}

/// A source with `web` booted and migrating slowly (`bandwidth` MiB/s), and an empty target.
fn pair(bandwidth: u32) -> (support::Daemon, support::Daemon) {
    let src = support::Daemon::start(&support::instance_toml(
        "web",
        &format!("[instance.web.hvparams]\nmigration_bandwidth = {bandwidth}\n"),
    ));
    let dst = support::Daemon::start("");
    src.start_vm("web");
    src.wait_ready("web", 1);
    (src, dst)
}

/// `kvmctl --json migrate web --to DST` running in the background.
fn migrate_in_background(src: &support::Daemon, dst: &support::Daemon) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_kvmctl"))
        .arg("--socket")
        .arg(src.socket())
        .args(["--json", "migrate", "web", "--to"])
        .arg(dst.socket())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn status(d: &support::Daemon) -> kvmd::api::MigrationReport {
    match d.call(ApiRequest::MigrationStatus {
        name: support::name("web"),
    }) {
        Ok(ApiReply::MigrationStatus { migration, .. }) => *migration,
        other => panic!("migration-status: {other:?}"),
    }
}

/// Wait until the source's migration is active and has moved some memory.
fn wait_active(src: &support::Daemon) {
    support::wait_for("an active migration", Duration::from_secs(30), || {
        let m = status(src);
        (m.status == "active" && m.transferred > (1 << 20)).then_some(())
    });
}

fn finished(child: std::process::Child) -> Value {
    let out = child.wait_with_output().unwrap();
    json(&out)
}

/// The target holds nothing of the VM: no instance, no QEMU.
fn target_is_empty(dst: &support::Daemon) {
    support::wait_for("the target to forget web", Duration::from_secs(10), || {
        dst.try_info("web").is_none().then_some(())
    });
    assert!(support::qemus_under(dst.dir.path()).is_empty());
    assert!(!dst.run_dir("web").exists());
}

/// The source runs the guest, and it answers on its console.
fn source_runs(src: &support::Daemon) {
    let i = src.wait_state("web", "running", Duration::from_secs(10));
    assert!(i.pid.is_some());
    assert_eq!(src.guest_run("web", "echo alive"), "alive");
}

use kvmd::api::{ApiReply, ApiRequest};

#[test]
fn steps_cancelled_in_setup_and_while_active_leave_the_source_running() {
    let (src, dst) = pair(2);
    let blob = match src.call(ApiRequest::MigrationInfo {
        name: support::name("web"),
    }) {
        Ok(ApiReply::MigrationInfo { info }) => info,
        other => panic!("{other:?}"),
    };
    for phase in ["setup", "active"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        match dst.call(ApiRequest::Accept {
            name: support::name("web"),
            info: blob.clone(),
            listen: listen.clone(),
            wait: true,
        }) {
            Ok(ApiReply::MigrationStep(i)) => assert_eq!(i.state.as_str(), "incoming"),
            other => panic!("accept: {other:?}"),
        }
        match src.call(ApiRequest::Migrate {
            name: support::name("web"),
            target: listen,
            live: true,
            wait: false,
        }) {
            Ok(ApiReply::Accepted(j)) => assert_eq!(j.kind.as_str(), "migrate"),
            other => panic!("migrate: {other:?}"),
        }
        if phase == "active" {
            wait_active(&src);
        }
        let t0 = std::time::Instant::now();
        match src.call(ApiRequest::MigrateCancel {
            name: support::name("web"),
        }) {
            Ok(ApiReply::Cancelling(_)) => {}
            other => panic!("cancel in {phase}: {other:?}"),
        }
        let m = support::wait_for("the migrate job to end", Duration::from_secs(15), || {
            let m = status(&src);
            m.job.is_none().then_some(m)
        });
        let back = t0.elapsed();
        assert_eq!(m.summary.unwrap().outcome, "cancelled", "{phase}");
        eprintln!("cancel in {phase}: the source runs again {back:?} after the cancel");
        source_runs(&src);
        // The steps a cluster engine sends after a failure.
        match src.call(ApiRequest::FinalizeSrc {
            name: support::name("web"),
            success: false,
        }) {
            Ok(ApiReply::MigrationStep(i)) => assert_eq!(i.state.as_str(), "running"),
            other => panic!("finalize-src: {other:?}"),
        }
        match dst.call(ApiRequest::FinalizeDst {
            name: support::name("web"),
            success: false,
        }) {
            Ok(ApiReply::MigrationStep(_)) => {}
            other => panic!("finalize-dst: {other:?}"),
        }
        target_is_empty(&dst);
    }
}

#[test]
fn ctrl_c_cancels_kvmctl_migrate_and_the_source_keeps_running() {
    let (src, dst) = pair(2);
    let child = migrate_in_background(&src, &dst);
    wait_active(&src);
    nix::sys::signal::kill(
        support::nix_pid(child.id()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let v = finished(child);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["outcome"], "cancelled", "{v}");
    assert_eq!(v["runs_on"], "source", "{v}");
    source_runs(&src);
    target_is_empty(&dst);
}

#[test]
fn the_target_qemu_killed_midway_leaves_the_source_running() {
    let (src, dst) = pair(2);
    let child = migrate_in_background(&src, &dst);
    wait_active(&src);
    let pid = dst.info("web").pid.expect("the target's QEMU");
    nix::sys::signal::kill(support::nix_pid(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let v = finished(child);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["outcome"], "failed", "{v}");
    assert_eq!(v["runs_on"], "source", "{v}");
    source_runs(&src);
    target_is_empty(&dst);
}

#[test]
fn the_target_kvmd_killed_midway_still_ends_with_the_vm_on_the_target() {
    let (src, mut dst) = pair(16);
    let child = migrate_in_background(&src, &dst);
    wait_active(&src);
    dst.kill9();
    dst.spawn();
    // Re-adopted, still waiting: never running before finalize-dst.
    let i = dst.info("web");
    assert!(matches!(i.state.as_str(), "incoming"), "{:?}", i.state);
    let v = finished(child);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["runs_on"], "target", "{v}");
    dst.wait_state("web", "running", Duration::from_secs(10));
    src.wait_state("web", "moved", Duration::from_secs(10));
    assert!(support::qemus_under(src.dir.path()).is_empty());
}

#[test]
fn the_source_kvmd_killed_midway_cancels_and_the_source_keeps_running() {
    let (mut src, dst) = pair(2);
    let child = migrate_in_background(&src, &dst);
    wait_active(&src);
    src.kill9();
    src.spawn();
    let v = finished(child);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["runs_on"], "source", "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("kvmd restarted"), "{v}");
    source_runs(&src);
    target_is_empty(&dst);
}

#[test]
fn a_target_without_the_sources_machine_type_refuses_before_any_byte_moves() {
    let src = support::Daemon::start(&support::instance_toml("web", ""));
    src.start_vm("web");
    // A target whose QEMU lacks the machine type the source runs (an older QEMU).
    let tmp = tempfile::tempdir().unwrap();
    let wrapper = tmp.path().join("qemu-without-q35-7.2");
    support::write_script(
        &wrapper,
        "#!/bin/sh\nif [ \"$1\" = -machine ] && [ \"$2\" = help ]; then\n  /usr/bin/qemu-system-x86_64 -machine help | grep -v '^pc-q35-7.2 '\n  exit 0\nfi\nexec /usr/bin/qemu-system-x86_64 \"$@\"\n",
    );
    let dst = support::Daemon::start_with(&format!("qemu = \"{}\"", wrapper.display()), "");
    let t0 = std::time::Instant::now();
    let out = src.kvmctl(&[
        "--json",
        "migrate",
        "web",
        "--to",
        dst.socket().to_str().unwrap(),
    ]);
    let took = t0.elapsed();
    let v = json(&out);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["runs_on"], "source", "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("no machine type \"pc-q35-7.2\""),
        "{reason}"
    );
    eprintln!("refused in {took:?}: {reason}");
    // Nothing moved: the source never began a migration.
    assert_eq!(status(&src).status, "none");
    assert_eq!(src.info("web").state.as_str(), "running");
    target_is_empty(&dst);
}

#[test]
fn the_source_qemu_killed_midway_ends_with_no_copy_and_both_daemons_say_why() {
    let (src, dst) = pair(2);
    let child = migrate_in_background(&src, &dst);
    wait_active(&src);
    let pid = src.info("web").pid.expect("the source's QEMU");
    nix::sys::signal::kill(support::nix_pid(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let v = finished(child);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["runs_on"], "nowhere", "{v}");
    assert_eq!(
        src.wait_state("web", "crashed", Duration::from_secs(10))
            .state
            .as_str(),
        "crashed"
    );
    target_is_empty(&dst);
    assert!(support::qemus_under(src.dir.path()).is_empty());
    // The reasons, in each daemon's events.
    let exited = |d: &support::Daemon| {
        let mut events = d.subscribe(Some(0), false);
        std::iter::from_fn(|| events.next())
            .filter_map(Result::ok)
            .filter_map(|item| match item {
                kvmd::api::StreamItem::Event(e) => match e.kind {
                    kvmd::api::EventKind::Exited(r) => Some(r.reason),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let s = exited(&src);
    assert!(s.iter().any(|r| r.contains("SIGKILL")), "{s:?}");
    let d = exited(&dst);
    assert!(d.iter().any(|r| r.contains("incoming migration")), "{d:?}");
    eprintln!("source: {s:?}\ntarget: {d:?}");
}

#[test]
fn a_non_live_migration_pauses_the_guest_for_the_whole_copy() {
    let (src, dst) = pair(64);
    let out = src.kvmctl(&[
        "--json",
        "migrate",
        "web",
        "--non-live",
        "--to",
        dst.socket().to_str().unwrap(),
    ]);
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    let (total, pause) = (
        v["total_time_ms"].as_u64().unwrap(),
        v["pause_ms"].as_u64().unwrap(),
    );
    // Paused before the first byte: the guest's pause (source STOP to target continued)
    // spans the whole copy. (QEMU's own downtime counts only the switchover.)
    assert!(
        pause >= total,
        "paused {pause} ms of a {total} ms migration"
    );
    dst.wait_state("web", "running", Duration::from_secs(10));
    assert_eq!(dst.guest_run("web", "echo alive"), "alive");
}
