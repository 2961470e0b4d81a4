//! Defects found under test, each reproduced on real QEMU through the real daemon: operator
//! hooks that hang or keep their output open, a start that fails after its NIC hook ran, a
//! pause and a stop sent together, a chatty guest, a wedged QEMU, untrusted text in logs.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use kvmd::api::{ApiReply, ApiRequest, ErrorCode};
use kvmd::model::state::{StopEnd, VmState};
use nix::sys::signal::Signal;
use support::*;

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    write_script(&p, body);
    p
}

/// Processes whose command line is exactly `sleep <secs>`.
fn sleepers(secs: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd == format!("sleep\0{secs}\0").as_bytes() && alive(*pid)
        })
        .collect()
}

fn stop(d: &Daemon, vm: &str, force: bool, timeout_s: Option<u64>) -> (StopEnd, Duration) {
    let t0 = Instant::now();
    match d.call(ApiRequest::Stop {
        name: name(vm),
        timeout_s,
        force,
        wait: true,
    }) {
        Ok(ApiReply::Stopped { ended, .. }) => (ended, t0.elapsed()),
        other => panic!("stop {vm}: {other:?}"),
    }
}

/// Regression: a `nic_script` that hangs (or backgrounds a child that keeps its stdout open)
/// blocked the shared store thread: every other VM's stop and exit record hung (a `stop
/// --force` of an unrelated VM took 569 s), and a `stop --force` that killed QEMU in 31 ms
/// answered after 30 s.
#[test]
fn a_hanging_hook_is_killed_at_its_deadline_and_slows_no_other_vm() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("hook.log");
    let hook = script(
        scratch.path(),
        "hook",
        &format!(
            "#!/bin/sh\necho \"$ACTION $INSTANCE\" >> {}\ncase \"$ACTION\" in\n  up) sleep 1001 & ;;\n  down) exec sleep 1002 ;;\nesac\n",
            log.display()
        ),
    );
    let d = Daemon::start_with(
        &format!("nic_script = \"{}\"\nhook_timeout_ms = 6000", hook.display()),
        &(instance_toml(
            "hooked",
            &format!("[[instance.hooked.nic]]\nmode = \"routed\"\nip = \"{}.7\"\n[instance.hooked.hvparams]\nvhost_net = false", free_test_net()),
        ) + &instance_toml("other", "")),
    );
    d.start_vm("other");
    // The up hook leaves a child holding its stdout: the start does not wait for it.
    let t0 = Instant::now();
    d.start_vm("hooked");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "start took {:?}",
        t0.elapsed()
    );
    // Killing QEMU answers at once, although its down hook now hangs.
    let (ended, took) = stop(&d, "hooked", true, None);
    assert_eq!(ended, StopEnd::Sigkill);
    assert!(took < Duration::from_secs(2), "stop --force took {took:?}");
    // An unrelated VM is not held up by that hook either.
    let (ended, took) = stop(&d, "other", true, None);
    assert_eq!(ended, StopEnd::Sigkill);
    assert!(
        took < Duration::from_secs(2),
        "the other VM's stop took {took:?}"
    );
    let other = d.info("other");
    assert_eq!(other.state, VmState::Stopped);
    assert!(other.last_exit.is_some() && d.run_dir("other").join("exit.json").exists());
    // The hanging down hook is killed at its deadline, with its process group.
    wait_for("the down hook to run", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("down hooked")
            .then_some(())
    });
    wait_for(
        "the hanging hook to be killed",
        Duration::from_secs(12),
        || sleepers("1002").is_empty().then_some(()),
    );
    assert!(d.log().contains("hook"), "the timeout is logged");
    for pid in sleepers("1001") {
        let _ = nix::sys::signal::kill(nix_pid(pid), Signal::SIGKILL);
    }
}

/// Regression: a start that failed after `nic_script` ran `ACTION=up` never ran
/// `ACTION=down`.
#[test]
fn a_failed_start_runs_the_down_hook_of_every_nic_it_brought_up() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("hook.log");
    let hook = script(
        scratch.path(),
        "hook",
        &format!(
            "#!/bin/sh\necho \"$ACTION $INSTANCE $INTERFACE_INDEX\" >> {}\n",
            log.display()
        ),
    );
    let d = Daemon::start_with(
        &format!("nic_script = \"{}\"", hook.display()),
        &instance_toml(
            "bad",
            &format!("[[instance.bad.nic]]\nmode = \"routed\"\nip = \"{net}.8\"\n[[instance.bad.nic]]\nmode = \"routed\"\nip = \"{net}.9\"\n[instance.bad.hvparams]\nvhost_net = false\nkvm_extra = \"-no-such-option\"", net = free_test_net()),
        ),
    );
    let e = d
        .call(ApiRequest::Start {
            name: name("bad"),
            paused: false,
            wait: true,
            memory: None,
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::StartFailed);
    let lines = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<_> = lines.lines().collect();
    assert_eq!(
        lines,
        ["up bad 0", "up bad 1", "down bad 1", "down bad 0"],
        "every up is undone, last first"
    );
    assert!(qemus_under(d.dir.path()).is_empty());
    assert!(!d.run_dir("bad").exists());
}

/// Regression: `pause` and `stop` sent together: the stop pressed the ACPI button of a paused
/// guest for its whole timeout. The stop follows the pause by a swept few hundred
/// microseconds, on two connections opened beforehand (the race is about a millisecond wide).
#[test]
fn a_pause_and_a_stop_sent_together_end_quickly() {
    let d = Daemon::start(&instance_toml("ps", ""));
    for (round, us) in [0u64, 150, 300, 600, 1000, 2000].into_iter().enumerate() {
        d.start_vm("ps");
        d.wait_ready("ps", 1);
        let mut pc = d.client();
        let mut sc = d.client();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let b = barrier.clone();
        let pauser = std::thread::spawn(move || {
            b.wait();
            pc.call(&ApiRequest::Pause { name: name("ps") })
                .unwrap()
                .result
        });
        barrier.wait();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_micros(us) {
            std::hint::spin_loop();
        }
        let t0 = Instant::now();
        let r = sc
            .call(&ApiRequest::Stop {
                name: name("ps"),
                timeout_s: Some(30),
                force: false,
                wait: true,
            })
            .unwrap()
            .result;
        let took = t0.elapsed();
        let paused = pauser.join().unwrap();
        let ended = match r {
            Ok(ApiReply::Stopped { ended, .. }) => ended,
            other => panic!("round {round}: {other:?}"),
        };
        assert!(
            took < Duration::from_secs(12),
            "round {round} (+{us} us): the stop took {took:?} ({ended:?}, pause: {paused:?})"
        );
        assert!(
            matches!(ended, StopEnd::Sigterm | StopEnd::Acpi),
            "{ended:?}"
        );
        assert_eq!(d.info("ps").state, VmState::Stopped);
    }
}

/// Regression: `serial.log` grew without bound (357 KiB/s from a chatty guest) in a run dir
/// meant to live on tmpfs.
#[test]
fn a_chatty_guest_cannot_grow_its_serial_log_without_bound() {
    let d = Daemon::start_with(
        "serial_log_max_bytes = 65536\nserial_log_keep_bytes = 16384",
        &instance_toml("chatty", ""),
    );
    d.start_vm("chatty");
    d.wait_ready("chatty", 1);
    // About 300 KiB of output.
    let out = d.guest_run(
        "chatty",
        "i=0; while [ $i -lt 3000 ]; do echo 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789; i=$((i+1)); done; echo DONE",
    );
    assert!(
        out.ends_with("DONE"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
    std::thread::sleep(Duration::from_millis(2500));
    let size = |f: &str| std::fs::metadata(d.run_dir("chatty").join(f)).map(|m| m.len());
    let (log, old) = (size("serial.log").unwrap(), size("serial.log.1").unwrap());
    assert!(log <= 65536, "serial.log is {log} bytes");
    assert!(old <= 16384 && old > 0, "serial.log.1 is {old} bytes");
    let text = std::fs::read(d.run_dir("chatty").join("serial.log")).unwrap();
    assert!(!text.contains(&0u8), "no hole of zeros after the rotation");
    assert_eq!(d.guest_run("chatty", "echo still-here"), "still-here");
}

/// Regression: a wedged QEMU was marked `unresponsive` only at the next health check plus the
/// QMP deadline; any command that misses its deadline marks it at once.
#[test]
fn a_command_that_misses_its_deadline_marks_the_vm_unresponsive_at_once() {
    let d = Daemon::start_with("health_interval_ms = 600000", &instance_toml("wedge", ""));
    let pid = d.start_vm("wedge").pid.unwrap();
    nix::sys::signal::kill(nix_pid(pid), Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let e = d
        .call(ApiRequest::Pause {
            name: name("wedge"),
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unresponsive, "{e:?}");
    // The QMP deadline of the test config is 2 s.
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(d.info("wedge").state, VmState::Unresponsive);
    nix::sys::signal::kill(nix_pid(pid), Signal::SIGCONT).unwrap();
    // A command answered in time clears it (no health check needed).
    match d.call(ApiRequest::Pause {
        name: name("wedge"),
    }) {
        Ok(ApiReply::Paused(i)) => assert_eq!(i.state, VmState::Paused),
        other => panic!("{other:?}"),
    }
}

/// Regression: an instance name with a newline or ESC in the config forged a line in kvmd's
/// log, and log files got ANSI colour codes though stderr was not a terminal.
#[test]
fn untrusted_text_cannot_forge_a_log_line_or_colour_the_log() {
    let d = Daemon::start(&instance_toml("fine", ""));
    d.start_vm("fine");
    let evil = format!(
        "{}\n[instance.\"evil\\nFORGED-LINE kvmd: all good\\u001b[31m\"]\nmemory = 64\n",
        std::fs::read_to_string(&d.config).unwrap()
    );
    std::fs::write(&d.config, evil).unwrap();
    let e = d.call(ApiRequest::Reload).unwrap_err();
    assert_eq!(e.code, ErrorCode::ConfigError);
    // The same config given to `kvmd --check-config`.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvmd"))
        .args(["--check-config", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FORGED-LINE"),
        "the value is shown: {stderr}"
    );
    let log = d.log() + &stderr;
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED-LINE")),
        "a forged line:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "escape codes in the log:\n{log}");
}
