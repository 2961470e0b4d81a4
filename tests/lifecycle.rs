//! VM lifecycle on real QEMU (TCG) booting the real test guest, through the real daemon and
//! its socket: start, ACPI stop, forced stop, escalation, reboots, user shutdown, crash.

mod support;

use std::time::{Duration, Instant};

use kvmd::api::{ApiReply, ApiRequest};
use kvmd::model::exit::ExitKind;
use kvmd::model::state::StopEnd;
use support::*;

const BOOT: Duration = Duration::from_secs(60);

#[test]
fn start_runs_the_guest_and_acpi_stop_powers_it_off() {
    let d = Daemon::start(&(instance_toml("a", "") + &instance_toml("idle", "")));
    let info = d.start_vm("a");
    assert_eq!(info.state.as_str(), "running");
    // `list` shows what runs; `list --all` every defined instance.
    let out = d.kvmctl(&["list", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("idle") && text.contains("stopped"), "{text}");
    let out = d.kvmctl(&["list"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("idle"));
    let pid = info.pid.unwrap();
    assert!(alive(pid));
    d.wait_ready("a", 1);
    assert_eq!(d.guest_run("a", "echo $((6*7))"), "42");
    let list = match d.call(ApiRequest::List { all: false }).unwrap() {
        ApiReply::List(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].pid, Some(pid));
    assert!(list[0].uptime_s.is_some() && list[0].cpu_time_ms.unwrap() > 0);

    match d
        .call(ApiRequest::Stop {
            name: name("a"),
            timeout_s: Some(30),
            force: false,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, info, .. } => {
            assert_eq!(ended, StopEnd::Acpi);
            assert_eq!(info.state.as_str(), "stopped");
            assert_eq!(info.last_exit.unwrap().kind, ExitKind::Stopped);
        }
        other => panic!("{other:?}"),
    }
    assert!(d.serial_log("a").contains("GUEST-POWERBUTTON"));
    assert!(!alive(pid));
    assert!(
        !d.run_dir("a").join("shutdown").exists(),
        "an admin stop is not a user shutdown"
    );
    // Stopping again is fine and says so.
    match d
        .call(ApiRequest::Stop {
            name: name("a"),
            timeout_s: None,
            force: false,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended, StopEnd::AlreadyStopped),
        other => panic!("{other:?}"),
    }
}

#[test]
fn forced_stop_kills_at_once_and_cleanup_removes_the_runtime_files() {
    let d = Daemon::start(&instance_toml("f", ""));
    let pid = d.start_vm("f").pid.unwrap();
    let t0 = Instant::now();
    match d
        .call(ApiRequest::Stop {
            name: name("f"),
            timeout_s: None,
            force: true,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended, StopEnd::Sigkill),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(!alive(pid));
    assert!(d.run_dir("f").join("runtime.json").exists());
    d.call(ApiRequest::Cleanup { name: name("f") }).unwrap();
    assert!(!d.run_dir("f").exists());
    assert!(d.info("f").last_exit.is_none());
}

#[test]
fn stop_escalates_to_sigterm_when_the_guest_ignores_the_power_button() {
    let d = Daemon::start(&(instance_toml("p", "") + &instance_toml("q", "")));
    d.start_vm("p");
    d.wait_ready("p", 1);
    // A guest without acpid ignores the power button: kvmd presses it again, then SIGTERMs.
    d.guest_run("p", "killall acpid; echo gone");
    let t0 = Instant::now();
    match d
        .call(ApiRequest::Stop {
            name: name("p"),
            timeout_s: Some(5),
            force: false,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended, StopEnd::Sigterm),
        other => panic!("{other:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "{took:?}"
    );
    assert!(
        d.log().contains("pressing the power button again"),
        "the ACPI request is resent"
    );
    assert!(!d.serial_log("p").contains("GUEST-POWERBUTTON"));
    // A paused guest cannot see the button at all: it is SIGTERMed at once.
    match d
        .call(ApiRequest::Start {
            name: name("q"),
            paused: true,
            wait: true,
            memory: None,
        })
        .unwrap()
    {
        ApiReply::Started(i) => assert_eq!(i.state.as_str(), "paused"),
        other => panic!("{other:?}"),
    }
    let t0 = Instant::now();
    match d
        .call(ApiRequest::Stop {
            name: name("q"),
            timeout_s: Some(30),
            force: false,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended, StopEnd::Sigterm),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn stop_without_acpi_uses_sigterm() {
    let d = Daemon::start(&instance_toml("n", "[instance.n.hvparams]\nacpi = false"));
    let pid = d.start_vm("n").pid.unwrap();
    match d
        .call(ApiRequest::Stop {
            name: name("n"),
            timeout_s: Some(20),
            force: false,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(ended, StopEnd::Sigterm),
        other => panic!("{other:?}"),
    }
    assert!(!alive(pid));
}

#[test]
fn soft_reboot_restarts_qemu_and_hard_reboot_resets_in_place() {
    let d = Daemon::start(&instance_toml("r", ""));
    let pid1 = d.start_vm("r").pid.unwrap();
    d.wait_ready("r", 1);
    let pid2 = match d
        .call(ApiRequest::Reboot {
            name: name("r"),
            hard: false,
            timeout_s: None,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Rebooted(i) => {
            assert_eq!(i.state.as_str(), "running");
            i.pid.unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(pid1, pid2);
    assert!(!alive(pid1));
    d.wait_ready("r", 1);
    match d
        .call(ApiRequest::Reboot {
            name: name("r"),
            hard: true,
            timeout_s: None,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Rebooted(i) => assert_eq!(i.pid, Some(pid2)),
        other => panic!("{other:?}"),
    }
    d.wait_ready("r", 2);
}

#[test]
fn guest_reboot_with_reboot_behavior_exit_is_restarted_by_kvmd() {
    let d = Daemon::start(&instance_toml(
        "x",
        "[instance.x.hvparams]\nreboot_behavior = \"exit\"",
    ));
    let pid1 = d.start_vm("x").pid.unwrap();
    d.wait_ready("x", 1);
    d.type_line("x", "reboot -f");
    let info = wait_for("a new QEMU", BOOT, || {
        Some(d.info("x"))
            .filter(|i| i.state.as_str() == "running" && i.pid.is_some_and(|p| p != pid1))
    });
    assert!(!alive(pid1));
    assert!(info
        .last_exit
        .unwrap()
        .reason
        .contains("reboot_behavior=exit"));
    d.wait_ready("x", 1);
}

#[test]
fn guest_poweroff_is_a_user_shutdown_and_survives_a_kvmd_restart() {
    let mut d = Daemon::start(&instance_toml("u", ""));
    let pid = d.start_vm("u").pid.unwrap();
    d.wait_ready("u", 1);
    d.type_line("u", "poweroff");
    let info = d.wait_state("u", "user-down", Duration::from_secs(30));
    assert_eq!(info.last_exit.unwrap().kind, ExitKind::UserDown);
    wait_for("QEMU gone", Duration::from_secs(10), || {
        (!alive(pid)).then_some(())
    });
    wait_for("Ganeti's shutdown marker", Duration::from_secs(5), || {
        d.run_dir("u").join("shutdown").exists().then_some(())
    });
    d.kill9();
    d.spawn();
    let info = d.wait_state("u", "user-down", Duration::from_secs(10));
    assert_eq!(info.pid, None);
    // Starting again clears the user-down state.
    assert_eq!(d.start_vm("u").state.as_str(), "running");
    assert!(!d.run_dir("u").join("shutdown").exists());
}

#[test]
fn killed_qemu_is_crashed_with_its_signal_and_survives_a_kvmd_restart() {
    let mut d = Daemon::start(&instance_toml("c", ""));
    let pid = d.start_vm("c").pid.unwrap();
    nix::sys::signal::kill(nix_pid(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let info = d.wait_state("c", "crashed", Duration::from_secs(5));
    let exit = info.last_exit.unwrap();
    assert_eq!(exit.signal, Some(9));
    assert!(exit.reason.contains("SIGKILL"), "{}", exit.reason);
    d.kill9();
    d.spawn();
    let info = d.wait_state("c", "crashed", Duration::from_secs(10));
    assert_eq!(info.last_exit.unwrap().signal, Some(9));
}

/// `Cpus_allowed_list` of every thread of `pid`, by thread name.
fn affinities(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = e.unwrap().file_name().into_string().unwrap();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .map(|l| l[k.len()..].trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    out
}

#[test]
fn cpu_mask_pins_every_vcpu_thread_before_the_guest_runs() {
    let d = Daemon::start(
        &(instance_toml(
            "pin1",
            "vcpus = 2\n[instance.pin1.hvparams]\ncpu_mask = \"1\"",
        ) + &instance_toml(
            "pin2",
            "vcpus = 2\n[instance.pin2.hvparams]\ncpu_mask = \"1:0\"",
        ) + &instance_toml(
            "pin3",
            "vcpus = 2\n[instance.pin3.hvparams]\ncpu_mask = \"0:1:0\"",
        )),
    );
    let pid = d.start_vm("pin1").pid.unwrap();
    let threads = affinities(pid);
    let vcpus: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n.starts_with("CPU "))
        .collect();
    assert_eq!(vcpus.len(), 2, "{threads:?}");
    assert!(
        vcpus.iter().all(|(_, a)| a == "1"),
        "whole-VM mask pins every vCPU thread: {threads:?}"
    );
    assert_eq!(
        threads
            .iter()
            .find(|(n, _)| n.starts_with("qemu"))
            .unwrap()
            .1,
        "1"
    );

    let pid = d.start_vm("pin2").pid.unwrap();
    let threads = affinities(pid);
    let of = |name: &str| {
        threads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .unwrap()
    };
    assert_eq!(
        (of("CPU 0/TCG"), of("CPU 1/TCG")),
        ("1".to_string(), "0".to_string()),
        "{threads:?}"
    );

    let e = d
        .call(ApiRequest::Start {
            name: name("pin3"),
            paused: false,
            wait: true,
            memory: None,
        })
        .unwrap_err();
    assert_eq!(e.fields[0].field, "hvparams.cpu_mask");
    assert!(e.fields[0].rule.contains("3 entries"), "{e:?}");
}

#[test]
fn a_raw_disk_and_a_user_nic_are_visible_inside_the_guest() {
    let img_dir = tempfile::tempdir().unwrap();
    let img = img_dir.path().join("data.img");
    let mut data = vec![0u8; 8 << 20];
    data[..12].copy_from_slice(b"kvmd-disk-ok");
    std::fs::write(&img, &data).unwrap();
    let extra = format!("[[instance.io.disk]]\npath = \"{}\"\n[[instance.io.nic]]\nmode = \"user\"\nmac = \"52:54:00:12:34:56\"\n", img.display());
    let d = Daemon::start(&instance_toml("io", &extra));
    d.start_vm("io");
    d.wait_ready("io", 1);
    assert_eq!(d.guest_run("io", "cat /sys/block/vda/size"), "16384");
    assert_eq!(d.guest_run("io", "head -c 12 /dev/vda"), "kvmd-disk-ok");
    assert_eq!(
        d.guest_run("io", "cat /sys/class/net/eth0/address"),
        "52:54:00:12:34:56"
    );
    // `info` shows the whole VM, as the guest sees it.
    let hw = d.info("io").hardware.expect("hardware of a running VM");
    assert_eq!(
        (hw.machine.as_str(), hw.accelerator.as_str()),
        ("pc-q35-7.2", "tcg")
    );
    assert_eq!(hw.disks.len(), 1);
    assert_eq!(hw.disks[0].path, img.display().to_string());
    assert_eq!(
        (hw.disks[0].format.as_str(), hw.disks[0].readonly),
        ("raw", false)
    );
    assert!(hw.disks[0].address.starts_with("pcie.0 0x"), "{hw:?}");
    assert_eq!(hw.nics[0].mac, "52:54:00:12:34:56");
    assert_eq!(hw.nics[0].mode, "user");
    assert!(hw.serial_socket.unwrap().ends_with("/io/serial.sock"));
    let text = String::from_utf8_lossy(&d.kvmctl(&["info", "io"]).stdout).into_owned();
    assert!(
        text.contains("disk/0:")
            && text.contains("nic/0:")
            && text.contains("machine:      pc-q35-7.2 (tcg)"),
        "{text}"
    );
}

#[test]
fn kvmctl_pin_repins_every_thread_of_a_running_vm_live() {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(n >= 2, "this test needs two host CPUs");
    let every = format!("0-{}", n - 1);
    let d = Daemon::start(&instance_toml("lp", "vcpus = 2"));
    // No guest needed: QEMU's threads exist paused.
    let pid = match d.call(ApiRequest::Start {
        name: name("lp"),
        paused: true,
        wait: true,
        memory: None,
    }) {
        Ok(ApiReply::Started(i)) => i.pid.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(d.info("lp").cpu_mask.as_deref(), Some("all"));
    // One mask: every thread, emulator and vCPUs.
    let out = d.kvmctl(&["pin", "lp", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pinned to 1"));
    let threads = affinities(pid);
    assert!(threads.iter().all(|(_, a)| a == "1"), "{threads:?}");
    // One per vCPU: each its own; the emulator's threads the union.
    let out = d.kvmctl(&["pin", "lp", "1:0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let threads = affinities(pid);
    let of = |name: &str| {
        threads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .unwrap()
    };
    assert_eq!((of("CPU 0/TCG"), of("CPU 1/TCG")), ("1".into(), "0".into()));
    assert!(
        threads
            .iter()
            .filter(|(n, _)| !n.starts_with("CPU "))
            .all(|(_, a)| a == "0-1"),
        "the union of 1 and 0: {threads:?}"
    );
    assert_eq!(d.info("lp").cpu_mask.as_deref(), Some("1:0"));
    // `all` unpins; a restarted kvmd still shows the mask in force.
    let out = d.kvmctl(&["pin", "lp", "all"]);
    assert!(out.status.success());
    assert!(affinities(pid).iter().all(|(_, a)| *a == every));
    let mut d = d;
    d.kill9();
    d.spawn();
    assert_eq!(d.info("lp").cpu_mask.as_deref(), Some("all"));
    // Bad masks name the offending part; a stopped VM cannot be pinned.
    let out = d.kvmctl(&["--json", "pin", "lp", "0-x"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "invalid_parameter", "{v}");
    assert_eq!(v["error"]["fields"][0]["field"], "mask", "{v}");
    let out = d.kvmctl(&["--json", "pin", "lp", "0:1:0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has 3 entries but the instance has 2 vCPUs"),
        "{v}"
    );
    let out = d.kvmctl(&["--json", "pin", "lp", &n.to_string()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("names CPU {n}")),
        "{v}"
    );
    assert!(
        affinities(pid).iter().all(|(_, a)| *a == every),
        "nothing changed"
    );
    d.call(ApiRequest::Stop {
        name: name("lp"),
        timeout_s: None,
        force: true,
        wait: true,
    })
    .unwrap();
    let out = d.kvmctl(&["--json", "pin", "lp", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "not_running", "{v}");
}
