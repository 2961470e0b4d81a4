//! The daemon as operators meet it: re-adoption after kill -9, autostart, reload, SIGTERM,
//! a wedged QEMU, bad input, peer credentials. Real kvmd, real socket, real QEMU.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use kvmd::api::{ApiReply, ApiRequest, ErrorCode};
use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

#[test]
fn kill9_of_kvmd_leaves_vms_running_and_a_restart_readopts_them() {
    let mut d = Daemon::start(&(instance_toml("a1", "") + &instance_toml("a2", "")));
    let p1 = d.start_vm("a1").pid.unwrap();
    let p2 = match d
        .call(ApiRequest::Start {
            name: name("a2"),
            paused: true,
            wait: true,
            memory: None,
        })
        .unwrap()
    {
        ApiReply::Started(i) => i.pid.unwrap(),
        other => panic!("{other:?}"),
    };
    d.wait_ready("a1", 1);
    d.kill9();
    assert!(alive(p1) && alive(p2), "VMs outlive kvmd");
    d.spawn();
    let i1 = d.wait_state("a1", "running", Duration::from_secs(10));
    let i2 = d.wait_state("a2", "paused", Duration::from_secs(10));
    assert_eq!(
        (i1.pid, i2.pid),
        (Some(p1), Some(p2)),
        "same pids: nothing was restarted"
    );
    assert!(i1.uptime_s.is_some());
    // QMP works on the adopted VMs: the guest console still answers and a stop goes via ACPI.
    assert_eq!(d.guest_run("a1", "echo adopted"), "adopted");
    assert_eq!(
        d.serial_log("a1").matches("GUEST-READY").count(),
        1,
        "the guest did not reboot"
    );
    match d
        .call(ApiRequest::Stop {
            name: name("a1"),
            timeout_s: Some(30),
            force: false,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended.as_str(), "acpi"),
        other => panic!("{other:?}"),
    }
    // The adopted QEMU is not kvmd's child: its exit is still seen (pidfd), as an admin stop.
    assert_eq!(d.info("a1").state.as_str(), "stopped");
    match d
        .call(ApiRequest::Stop {
            name: name("a2"),
            timeout_s: None,
            force: true,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended.as_str(), "sigkill"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reused_pid_is_not_adopted() {
    let mut d = Daemon::start(&instance_toml("z", ""));
    let pid = d.start_vm("z").pid.unwrap();
    d.kill9();
    // Make the runtime file claim a pid that is alive but is not our QEMU (this test process).
    let path = d.run_dir("z").join("runtime.json");
    let mut rt: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    rt["pid"] = std::process::id().into();
    std::fs::write(&path, rt.to_string()).unwrap();
    nix::sys::signal::kill(nix_pid(pid), Signal::SIGKILL).unwrap();
    d.spawn();
    let info = d.wait_state("z", "crashed", Duration::from_secs(10));
    assert!(info
        .last_exit
        .unwrap()
        .reason
        .contains("while kvmd was not running"));
    assert!(alive(std::process::id()));
}

#[test]
fn autostart_at_start_and_after_sighup_reload() {
    let mut d =
        Daemon::start(&(instance_toml("auto", "autostart = true") + &instance_toml("manual", "")));
    let auto = d.wait_state("auto", "running", Duration::from_secs(30));
    assert!(auto.autostart);
    assert_eq!(d.info("manual").state.as_str(), "stopped");
    // Add an autostart instance and change another's definition, then SIGHUP.
    let text = std::fs::read_to_string(&d.config).unwrap()
        + &instance_toml("late", "autostart = true")
        + "\n[instance.auto.hvparams]\nkernel_args = \"quiet panic=-1 changed\"\n";
    std::fs::write(&d.config, text).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_state("late", "running", Duration::from_secs(30));
    let auto2 = wait_for("pending change", Duration::from_secs(5), || {
        Some(d.info("auto")).filter(|i| i.pending_changes)
    });
    assert_eq!(
        auto2.pid, auto.pid,
        "changed definitions apply at next start, not now"
    );
    // A restarted kvmd does not start the same VMs twice.
    d.kill9();
    d.spawn();
    assert!(d
        .wait_state("late", "running", Duration::from_secs(10))
        .pid
        .is_some());
    // An invalid config on reload is refused and the old one kept.
    std::fs::write(
        &d.config,
        std::fs::read_to_string(&d.config).unwrap()
            + "\n[instance.bad]\nmemory = 64\n[instance.bad.hvparams]\nno_such_param = 1\n",
    )
    .unwrap();
    let e = d.call(ApiRequest::Reload).unwrap_err();
    assert_eq!(e.code, ErrorCode::ConfigError);
    assert_eq!(e.fields[0].field, "instance.bad.hvparams.no_such_param");
    assert_eq!(e.fields[0].rule, "unknown hvparam");
    assert!(d
        .call(ApiRequest::Info {
            name: Some(name("bad"))
        })
        .is_err());
}

#[test]
fn sigterm_stops_kvmd_but_not_the_vms() {
    let mut d = Daemon::start(&instance_toml("t", ""));
    let pid = d.start_vm("t").pid.unwrap();
    d.signal(Signal::SIGTERM);
    let status = d.child.as_mut().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "kvmd exits cleanly on SIGTERM: {status:?}"
    );
    d.child = None;
    assert!(alive(pid));
    assert!(!d.socket().exists(), "socket removed on exit");
    d.spawn();
    assert_eq!(
        d.wait_state("t", "running", Duration::from_secs(10)).pid,
        Some(pid)
    );
}

#[test]
fn a_wedged_qemu_is_unresponsive_and_slows_nothing_else() {
    let d = Daemon::start(&(instance_toml("w1", "") + &instance_toml("w2", "")));
    let p1 = d.start_vm("w1").pid.unwrap();
    d.start_vm("w2");
    // SIGSTOP freezes QEMU for real: its QMP socket stops answering.
    nix::sys::signal::kill(nix_pid(p1), Signal::SIGSTOP).unwrap();
    d.wait_state("w1", "unresponsive", Duration::from_secs(15));
    let mut c = d.client();
    let t0 = Instant::now();
    for _ in 0..20 {
        c.call(&ApiRequest::List { all: false })
            .unwrap()
            .result
            .unwrap();
    }
    let per_call = t0.elapsed() / 20;
    assert!(
        per_call < Duration::from_millis(200),
        "list took {per_call:?} with a wedged VM"
    );
    assert_eq!(d.info("w2").state.as_str(), "running");
    nix::sys::signal::kill(nix_pid(p1), Signal::SIGCONT).unwrap();
    d.wait_state("w1", "running", Duration::from_secs(15));
}

/// Send one raw line and parse the JSON reply.
fn raw(d: &Daemon, bytes: &[u8]) -> Value {
    let line = d.client().raw(bytes).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn bad_input_gets_clear_errors_and_leaves_nothing_behind() {
    let d = Daemon::start(
        &(instance_toml("ok", "")
            + &instance_toml(
                "nokernel",
                "[instance.nokernel.hvparams]\nkernel_path = \"/nonexistent/vmlinux\"",
            )
            + &instance_toml(
                "badqemu",
                "[instance.badqemu.hvparams]\nkvm_extra = \"-no-such-option\"",
            )),
    );
    for bad in ["../etc", "a/b", "..", "UPPER"] {
        let v = raw(
            &d,
            format!("{{\"id\":1,\"request\":\"start\",\"name\":{bad:?}}}\n").as_bytes(),
        );
        assert_eq!(v["error"]["code"], "invalid_parameter", "{bad}");
        assert_eq!(v["error"]["field"], "name");
        assert_eq!(v["id"], 1);
    }
    assert!(!d
        .dir
        .path()
        .join("run/..")
        .join("etc")
        .join("qemu.pid")
        .exists());

    let v = raw(&d, b"{\"request\": \"start\", \"name\": \n");
    assert_eq!(v["error"]["code"], "bad_request");
    let v = raw(&d, b"{\"request\": \"format-disk\"}\n");
    assert_eq!(v["error"]["code"], "unknown_request");
    assert!(v["error"]["allowed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "start"));
    let v = raw(
        &d,
        b"{\"request\": \"start\", \"name\": \"ok\", \"turbo\": true}\n",
    );
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["field"].as_str()),
        (Some("invalid_parameter"), Some("turbo"))
    );
    let v = raw(&d, b"{\"request\": \"start\", \"name\": \"ghost\"}\n");
    assert_eq!(v["error"]["code"], "not_found");

    // Oversized: refused, connection closed, daemon fine.
    let mut s = UnixStream::connect(d.socket()).unwrap();
    let big = format!(
        "{{\"request\":\"ping\",\"pad\":\"{}\"}}\n",
        "x".repeat(200_000)
    );
    let _ = s.write_all(big.as_bytes());
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");

    // A missing kernel file: named, and nothing started.
    let e = d
        .call(ApiRequest::Start {
            name: name("nokernel"),
            paused: false,
            wait: true,
            memory: None,
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParameter);
    assert_eq!(e.fields[0].field, "hvparams.kernel_path");
    assert_eq!(e.fields[0].value, "\"/nonexistent/vmlinux\"");
    assert!(!d.run_dir("nokernel").exists());
    assert_eq!(d.info("nokernel").state.as_str(), "stopped");

    // QEMU refuses its command line: the error carries QEMU's stderr, nothing is left behind.
    let e = d
        .call(ApiRequest::Start {
            name: name("badqemu"),
            paused: false,
            wait: true,
            memory: None,
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::StartFailed);
    assert!(
        e.details.iter().any(|l| l.contains("no-such-option")),
        "{e:?}"
    );
    assert!(!d.run_dir("badqemu").exists(), "no runtime files left");
    assert!(qemus_under(d.dir.path()).is_empty(), "no QEMU left");

    // The daemon is still fine.
    assert_eq!(d.start_vm("ok").state.as_str(), "running");
}

#[test]
fn an_unknown_hvparam_in_the_config_stops_kvmd_from_starting_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kvmd.toml");
    std::fs::write(
        &cfg,
        node_toml(dir.path(), "")
            + &instance_toml("v", "[instance.v.hvparams]\nacpi = \"yes\"\nturbo = true"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvmd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cfg.display().to_string()), "{err}");
    assert!(
        err.contains("instance.v.hvparams.acpi = \"yes\": must be a boolean"),
        "{err}"
    );
    assert!(
        err.contains("instance.v.hvparams.turbo = true: unknown hvparam"),
        "{err}"
    );
}

#[test]
fn peers_outside_root_and_the_socket_group_are_refused() {
    let dir = tempfile::Builder::new()
        .prefix("kvmd-test-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cfg = dir.path().join("kvmd.toml");
    // World-writable socket on purpose, so the credential check itself is what refuses.
    std::fs::write(&cfg, node_toml(dir.path(), "socket_mode = 0o666")).unwrap();
    let mut d = Daemon {
        dir,
        child: None,
        config: cfg,
        netns: None,
    };
    d.spawn();
    let meta = std::fs::metadata(d.socket()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o666
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kvmctl"))
        .args(["--socket", d.socket().to_str().unwrap(), "--json", "ping"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["error"]["code"], "permission_denied");
    // Root is allowed.
    assert!(d.call(ApiRequest::Ping).is_ok());
}

#[test]
fn default_socket_and_runtime_files_are_not_world_accessible() {
    let d = Daemon::start(&instance_toml("m", ""));
    d.start_vm("m");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket()), 0o660);
    assert_eq!(mode(&d.run_dir("m")), 0o700);
    assert_eq!(mode(&d.run_dir("m").join("runtime.json")), 0o600);
}

use std::os::unix::process::CommandExt;

#[test]
fn pause_resume_and_a_refused_reboot_leave_the_vm_usable() {
    let d = Daemon::start(&(instance_toml("keep", "") + &instance_toml("gone", "")));
    let pid = d.start_vm("gone").pid.unwrap();
    match d.call(ApiRequest::Pause { name: name("gone") }).unwrap() {
        ApiReply::Paused(i) => assert_eq!(i.state.as_str(), "paused"),
        other => panic!("{other:?}"),
    }
    let e = d
        .call(ApiRequest::Pause { name: name("gone") })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotRunning);
    match d.call(ApiRequest::Resume { name: name("gone") }).unwrap() {
        ApiReply::Resumed(i) => {
            assert_eq!(i.state.as_str(), "running");
            assert!(
                i.uptime_s.is_some() && i.cpu_time_ms.is_some(),
                "replies carry live numbers: {i:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Remove it from the config: a soft reboot could not start it again, so it is refused
    // before anything is stopped, and the VM stays usable.
    std::fs::write(
        &d.config,
        node_toml(d.dir.path(), "") + &instance_toml("keep", ""),
    )
    .unwrap();
    match d.call(ApiRequest::Reload).unwrap() {
        ApiReply::Reloaded { removed, .. } => assert_eq!(removed, ["gone"]),
        other => panic!("{other:?}"),
    }
    let e = d
        .call(ApiRequest::Reboot {
            name: name("gone"),
            hard: false,
            timeout_s: Some(5),
            wait: true,
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let i = d.info("gone");
    assert_eq!(
        (i.state.as_str(), i.pid, i.job.is_some(), i.in_config),
        ("running", Some(pid), false, false)
    );
    assert_eq!(i.memory_mib, 192, "the running definition is still shown");
    match d
        .call(ApiRequest::Stop {
            name: name("gone"),
            timeout_s: None,
            force: true,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended.as_str(), "sigkill"),
        other => panic!("{other:?}"),
    }
    // Stopped but with runtime files: still shown; once cleaned up, forgotten.
    assert_eq!(d.info("gone").state.as_str(), "stopped");
    d.call(ApiRequest::Cleanup { name: name("gone") }).unwrap();
    wait_for("gone to be forgotten", Duration::from_secs(5), || {
        d.try_info("gone").is_none().then_some(())
    });
}

#[test]
fn the_last_exit_survives_a_start_a_restart_and_a_failed_start() {
    let mut d = Daemon::start(&instance_toml("h", ""));
    let pid = d.start_vm("h").pid.unwrap();
    nix::sys::signal::kill(nix_pid(pid), Signal::SIGKILL).unwrap();
    d.wait_state("h", "crashed", Duration::from_secs(5));
    let pid2 = d.start_vm("h").pid.unwrap();
    let i = d.info("h");
    assert_eq!(
        i.last_exit.as_ref().map(|e| e.signal),
        Some(Some(9)),
        "a running VM still shows how the last one ended"
    );
    d.kill9();
    d.spawn();
    let i = d.wait_state("h", "running", Duration::from_secs(10));
    assert_eq!(i.pid, Some(pid2));
    assert_eq!(i.last_exit.map(|e| e.pid), Some(pid));
    d.call(ApiRequest::Stop {
        name: name("h"),
        timeout_s: None,
        force: true,
        wait: true,
    })
    .unwrap();
    // Now make starts fail: the VM stays exactly as it was.
    std::fs::write(
        &d.config,
        node_toml(d.dir.path(), "")
            + &instance_toml(
                "h",
                "[instance.h.hvparams]\nkvm_extra = \"-no-such-option\"",
            ),
    )
    .unwrap();
    d.call(ApiRequest::Reload).unwrap();
    let before = d.info("h");
    let e = d
        .call(ApiRequest::Start {
            name: name("h"),
            paused: false,
            wait: true,
            memory: None,
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::StartFailed);
    let after = d.info("h");
    assert_eq!(
        (after.state, after.last_exit.clone()),
        (before.state, before.last_exit.clone())
    );
    assert!(d.run_dir("h").join("exit.json").exists());
    assert!(
        !d.run_dir("h").join("qemu.log").exists(),
        "the failed start's files are gone"
    );
    assert!(qemus_under(d.dir.path()).is_empty());
}

#[test]
fn a_hard_reset_under_reboot_behavior_exit_restarts_the_vm() {
    let d = Daemon::start(&instance_toml(
        "hx",
        "[instance.hx.hvparams]\nreboot_behavior = \"exit\"",
    ));
    let pid = d.start_vm("hx").pid.unwrap();
    d.call(ApiRequest::Reboot {
        name: name("hx"),
        hard: true,
        timeout_s: None,
        wait: true,
    })
    .unwrap();
    let info = wait_for("a new QEMU", Duration::from_secs(30), || {
        d.try_info("hx")
            .filter(|i| i.state.as_str() == "running" && i.pid.is_some_and(|p| p != pid))
    });
    assert!(info
        .last_exit
        .unwrap()
        .reason
        .contains("reboot_behavior=exit"));
}

#[test]
fn a_stop_interrupted_by_a_kvmd_crash_ends_as_an_admin_stop() {
    let mut d = Daemon::start(&instance_toml("s", ""));
    let pid = d.start_vm("s").pid.unwrap();
    d.wait_ready("s", 1);
    let sock = d.socket();
    let stopper = std::thread::spawn(move || {
        let mut c = kvmd::control::client::Client::connect(&sock).unwrap();
        let _ = c.call(&ApiRequest::Stop {
            name: name("s"),
            timeout_s: Some(30),
            force: false,
            wait: true,
        });
    });
    wait_for("the stop's job file", Duration::from_secs(5), || {
        std::fs::read_to_string(d.run_dir("s").join("job.json"))
            .ok()
            .filter(|j| j.contains("\"stop\""))
            .map(|_| ())
    });
    d.kill9();
    let _ = stopper.join();
    d.spawn();
    let info = d.wait_state("s", "stopped", Duration::from_secs(30));
    let exit = info.last_exit.unwrap();
    assert_eq!(exit.kind, kvmd::model::exit::ExitKind::Stopped, "{exit:?}");
    assert!(
        !d.run_dir("s").join("shutdown").exists(),
        "not a user shutdown"
    );
    assert!(!alive(pid));
}

#[test]
fn a_second_kvmd_on_the_same_run_dir_refuses_to_start() {
    let d = Daemon::start("");
    let out = Command::new(env!("CARGO_BIN_EXE_kvmd"))
        .arg("--config")
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Another kvmd is already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        d.call(ApiRequest::Ping).is_ok(),
        "the first one is unaffected"
    );
}

#[test]
fn a_damaged_runtime_file_does_not_hide_a_running_vm() {
    let mut d = Daemon::start(&instance_toml("dmg", ""));
    let pid = d.start_vm("dmg").pid.unwrap();
    d.kill9();
    std::fs::write(d.run_dir("dmg").join("runtime.json"), b"{ this is not json").unwrap();
    d.spawn();
    let info = d.wait_state("dmg", "running", Duration::from_secs(10));
    assert_eq!(info.pid, Some(pid), "adopted through its pidfile");
    let e = d
        .call(ApiRequest::Start {
            name: name("dmg"),
            paused: false,
            wait: true,
            memory: None,
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AlreadyRunning, "no second QEMU");
    match d
        .call(ApiRequest::Stop {
            name: name("dmg"),
            timeout_s: None,
            force: true,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended.as_str(), "sigkill"),
        other => panic!("{other:?}"),
    }
    assert!(!alive(pid));
}
