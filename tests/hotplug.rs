//! Hot-plug on a booted pc guest: a disk and a NIC plugged and seen by the guest, unplugged
//! with DEVICE_DELETED and their backends gone; a failed plug leaves nothing; a guest that
//! does not let go leaves the device pending-removal; 50 plug/unplug cycles leak nothing;
//! slots run out with a clear refusal; q35 is refused with the reason.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn pc(name: &str) -> String {
    instance_toml(
        name,
        &format!("[instance.{name}.hvparams]\nmachine_version = \"pc\"\n"),
    )
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_disk_and_a_nic_are_plugged_seen_by_the_guest_and_unplugged() {
    let d = Daemon::start(&pc("hp"));
    d.start_vm("hp");
    d.wait_ready("hp", 1);
    let img = d.dir.path().join("hot.img");
    let mut data = vec![0u8; 4 << 20];
    data[..10].copy_from_slice(b"hot-disk-1");
    std::fs::write(&img, &data).unwrap();
    // A plug that fails half-way (not a qcow2 image) leaves no backend behind: the same id
    // plugs fine next.
    let out = d.kvmctl(&[
        "--json",
        "hotplug",
        "add",
        "hp",
        "disk",
        img.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    assert_eq!(
        json(&out)["ok"],
        false,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = d.kvmctl(&[
        "--json",
        "hotplug",
        "add",
        "hp",
        "disk",
        img.to_str().unwrap(),
    ]);
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    let disks = v["result"]["hotplugged"]["hardware"]["disks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(disks.len(), 1, "{v}");
    assert_eq!(disks[0]["id"], "hotdisk0", "{v}");
    // The guest sees it (its driver binds a moment after QEMU has it), with its contents (it
    // has no other disk: vda).
    wait_for("vda in the guest", Duration::from_secs(20), || {
        d.guest_run("hp", "ls /sys/block")
            .contains("vda")
            .then_some(())
    });
    // (The guest reports hotplug uevents on the same console: they may come in between.)
    assert!(d
        .guest_run("hp", "cat /sys/block/vda/serial")
        .ends_with("hotdisk0"));
    assert!(d
        .guest_run("hp", "head -c 10 /dev/vda")
        .ends_with("hot-disk-1"));
    let out = d.kvmctl(&[
        "--json",
        "hotplug",
        "add",
        "hp",
        "nic",
        "--mac",
        "52:54:00:0a:0b:0c",
    ]);
    assert_eq!(
        json(&out)["ok"],
        true,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_for("eth0 in the guest", Duration::from_secs(20), || {
        d.guest_run("hp", "cat /sys/class/net/eth0/address 2>/dev/null")
            .ends_with("52:54:00:0a:0b:0c")
            .then_some(())
    });
    let text = String::from_utf8_lossy(&d.kvmctl(&["info", "hp"]).stdout).into_owned();
    assert!(
        text.contains("hot-plugged as hotdisk0") && text.contains("hotnic0"),
        "{text}"
    );
    // The NIC's link, live: the guest sees its carrier go and come back.
    d.guest_run("hp", "ip link set eth0 up");
    let carrier = |want: &'static str| {
        wait_for("the carrier", Duration::from_secs(10), || {
            d.guest_run("hp", "cat /sys/class/net/eth0/carrier")
                .ends_with(want)
                .then_some(())
        })
    };
    let v = json(&d.kvmctl(&[
        "--json", "hotplug", "mod", "hp", "hotnic0", "--link", "down",
    ]));
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["nics"][0]["link_up"], false,
        "{v}"
    );
    carrier("0");
    let v = json(&d.kvmctl(&["--json", "hotplug", "mod", "hp", "hotnic0", "--link", "up"]));
    assert_eq!(v["ok"], true, "{v}");
    carrier("1");
    // A disk's changes need a re-plug, and say so.
    let v = json(&d.kvmctl(&["--json", "hotplug", "mod", "hp", "hotdisk0", "--link", "up"]));
    assert_eq!(v["error"]["code"], "invalid_parameter", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("re-plug"),
        "{v}"
    );
    // Out again: the guest lets go, the devices and their backends are gone.
    for id in ["hotdisk0", "hotnic0"] {
        let out = d.kvmctl(&["--json", "hotplug", "del", "hp", id]);
        assert_eq!(
            json(&out)["ok"],
            true,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let hw = d.info("hp").hardware.unwrap();
    assert!(hw.disks.is_empty() && hw.nics.is_empty(), "{hw:?}");
    wait_for("vda gone from the guest", Duration::from_secs(20), || {
        (d.guest_run("hp", "ls /sys/block | grep -c vd || true")
            .lines()
            .last()
            == Some("0"))
        .then_some(())
    });
    // The runtime file agrees, so a restarted kvmd does too.
    let rt = std::fs::read_to_string(d.run_dir("hp").join("runtime.json")).unwrap();
    assert!(rt.contains("\"hotplugged\": []"), "{rt}");
    // An unknown id.
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "hp", "hotdisk9"]));
    assert_eq!(v["error"]["code"], "not_found", "{v}");
}

#[test]
fn a_guest_that_does_not_let_go_leaves_the_device_pending_removal() {
    let mut d = Daemon::start(&pc("pr"));
    d.start_vm("pr");
    d.wait_ready("pr", 1);
    let out = d.kvmctl(&["--json", "hotplug", "add", "pr", "nic"]);
    assert_eq!(json(&out)["ok"], true);
    // vCPUs stopped: nobody in the guest answers the unplug.
    d.call(kvmd::api::ApiRequest::Pause { name: name("pr") })
        .unwrap();
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "pr", "hotnic0"]));
    assert_eq!(v["ok"], true, "{v}");
    let nics = &v["result"]["hotplugged"]["hardware"]["nics"];
    assert_eq!(
        nics[0]["pending_removal"], true,
        "never reported removed while there: {v}"
    );
    // A restarted kvmd still knows it.
    d.kill9();
    d.spawn();
    let hw = d.info("pr").hardware.unwrap();
    assert!(hw.nics[0].pending_removal, "{hw:?}");
    // Running again, the guest lets go: its DEVICE_DELETED finishes the removal.
    d.call(kvmd::api::ApiRequest::Resume { name: name("pr") })
        .unwrap();
    wait_for("the late removal", Duration::from_secs(20), || {
        d.info("pr").hardware.unwrap().nics.is_empty().then_some(())
    });
    let rt = std::fs::read_to_string(d.run_dir("pr").join("runtime.json")).unwrap();
    assert!(rt.contains("\"hotplugged\": []"), "{rt}");
    // A second del of a pending device is accepted, and the device goes either way.
    let out = d.kvmctl(&["--json", "hotplug", "add", "pr", "nic"]);
    assert_eq!(json(&out)["ok"], true);
    d.call(kvmd::api::ApiRequest::Pause { name: name("pr") })
        .unwrap();
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "pr", "hotnic0"]));
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["nics"][0]["pending_removal"], true,
        "{v}"
    );
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "pr", "hotnic0"]));
    assert_eq!(v["ok"], true, "a second del while still pending: {v}");
    d.call(kvmd::api::ApiRequest::Resume { name: name("pr") })
        .unwrap();
    wait_for("the second removal", Duration::from_secs(20), || {
        d.info("pr").hardware.unwrap().nics.is_empty().then_some(())
    });
}

#[test]
fn fifty_plug_cycles_leak_nothing_and_slots_run_out_with_a_reason() {
    let d = Daemon::start(&pc("cy"));
    d.start_vm("cy");
    d.wait_ready("cy", 1);
    let qemu = d.info("cy").pid.unwrap();
    let img = d.dir.path().join("cycle.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let (kvmd0, qemu0) = (fds(d.pid()), fds(qemu));
    for i in 0..50 {
        let v = json(&d.kvmctl(&[
            "--json",
            "hotplug",
            "add",
            "cy",
            "disk",
            img.to_str().unwrap(),
        ]));
        assert_eq!(v["ok"], true, "cycle {i}: {v}");
        let v = json(&d.kvmctl(&["--json", "hotplug", "del", "cy", "hotdisk0"]));
        assert_eq!(v["ok"], true, "cycle {i}: {v}");
    }
    let (kvmd1, qemu1) = (fds(d.pid()), fds(qemu));
    eprintln!("fds after 50 cycles: kvmd {kvmd0} -> {kvmd1}, QEMU {qemu0} -> {qemu1}");
    assert!(kvmd1 <= kvmd0 + 2, "kvmd fds {kvmd0} -> {kvmd1}");
    assert_eq!(qemu1, qemu0, "QEMU fds");
    // Fill pci.0, then one more is refused before QEMU is asked.
    let mut n = 0;
    loop {
        let v = json(&d.kvmctl(&["--json", "hotplug", "add", "cy", "nic"]));
        if v["ok"] != true {
            assert_eq!(v["error"]["code"], "busy", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no free PCI slot"),
                "{v}"
            );
            break;
        }
        n += 1;
        assert!(n < 32, "never ran out: {v}");
    }
    // Ganeti's range: from kvm_pci_reservations (12) to slot 31.
    eprintln!("{n} NICs plugged before pci.0 was full");
    assert_eq!(n, 20, "slots 12..=31");
}

#[test]
fn q35_plugs_go_behind_spare_root_ports_until_they_run_out() {
    let d = Daemon::start_with("hotplug_ports = 2", &instance_toml("q", ""));
    d.start_vm("q");
    d.wait_ready("q", 1);
    let hw = d.info("q").hardware.unwrap();
    assert_eq!((hw.hotplug_ports, hw.hotplug_ports_free), (2, 2), "{hw:?}");
    let img = d.dir.path().join("q35.img");
    let mut data = vec![0u8; 4 << 20];
    data[..10].copy_from_slice(b"q35-disk-1");
    std::fs::write(&img, &data).unwrap();
    let v = json(&d.kvmctl(&[
        "--json",
        "hotplug",
        "add",
        "q",
        "disk",
        img.to_str().unwrap(),
    ]));
    assert_eq!(v["ok"], true, "{v}");
    let hw = &v["result"]["hotplugged"]["hardware"];
    assert_eq!(hw["disks"][0]["address"], "hotport0", "{v}");
    assert_eq!(hw["hotplug_ports_free"], 1, "{v}");
    wait_for("the disk in the q35 guest", Duration::from_secs(20), || {
        d.guest_run("q", "head -c 10 /dev/vda 2>/dev/null")
            .ends_with("q35-disk-1")
            .then_some(())
    });
    // Unplug right after the plug: the unplug waits for the guest to have taken the device,
    // and the device goes (not pending, not "busy").
    let v = json(&d.kvmctl(&["--json", "hotplug", "add", "q", "nic"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["nics"][0]["address"],
        "hotport1"
    );
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "q", "hotnic0"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["nics"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "removed at once: {v}"
    );
    // Plugged while the guest is stopped, unplugged the moment it runs again: the unplug
    // waits until the guest has taken the NIC, then the NIC goes.
    d.call(kvmd::api::ApiRequest::Pause { name: name("q") })
        .unwrap();
    let v = json(&d.kvmctl(&["--json", "hotplug", "add", "q", "nic"]));
    assert_eq!(v["ok"], true, "{v}");
    d.call(kvmd::api::ApiRequest::Resume { name: name("q") })
        .unwrap();
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "q", "hotnic0"]));
    assert_eq!(v["ok"], true, "{v}");
    let nics = &v["result"]["hotplugged"]["hardware"]["nics"];
    assert_eq!(
        nics.as_array().unwrap().len(),
        0,
        "removed, not pending: {v}"
    );
    for l in d.log().lines().filter(|l| l.contains("take the device")) {
        eprintln!("{l}");
    }
    wait_for(
        "the guest saw the NIC come and go",
        Duration::from_secs(20),
        || {
            let log = d.serial_log("q");
            (log.contains("GUEST-UEVENT add net") && log.contains("GUEST-UEVENT remove net"))
                .then_some(())
        },
    );
    // Both ports taken: the third plug is refused before QEMU is asked, naming the setting.
    let v = json(&d.kvmctl(&["--json", "hotplug", "add", "q", "nic"]));
    assert_eq!(v["ok"], true, "{v}");
    let v = json(&d.kvmctl(&["--json", "hotplug", "add", "q", "nic"]));
    assert_eq!(v["error"]["code"], "busy", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("hotplug_ports = 2"), "{msg}");
    // An unplug frees its port.
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "q", "hotdisk0"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["hotplug_ports_free"], 1,
        "{v}"
    );
    let v = json(&d.kvmctl(&["--json", "hotplug", "add", "q", "nic"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["nics"][1]["address"],
        "hotport0"
    );
}

/// kvmd killed while a plug (`hotplug add`, run in a thread) holds at a fault point.
fn kill_mid_plug(d: &mut Daemon, faults: &str, args: &[&str], ready: impl Fn(&Daemon) -> bool) {
    d.kill9();
    d.spawn_with_env(&[("KVMD_FAULTS", faults)]);
    let sock = d.socket();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let plug = std::thread::spawn(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--socket")
            .arg(sock)
            .args(args)
            .output()
            .unwrap()
    });
    wait_for(
        "the plug to reach the fault point",
        Duration::from_secs(20),
        || ready(d).then_some(()),
    );
    d.kill9();
    let out = plug.join().unwrap();
    assert!(!out.status.success(), "the plug cannot have finished");
    d.spawn();
}

#[test]
fn a_kvmd_killed_in_the_middle_of_a_plug_leaves_the_whole_device_or_nothing() {
    let mut d = Daemon::start(&instance_toml("k", ""));
    d.start_vm("k");
    d.wait_ready("k", 1);
    let rt = d.run_dir("k").join("runtime.json");
    // 1. Killed after the backend was added, before device_add: nothing stays.
    let img = d.dir.path().join("k.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let img_arg = img.to_str().unwrap();
    let args = ["--json", "hotplug", "add", "k", "disk", img_arg];
    kill_mid_plug(&mut d, "delay_hotplug_after_backend_ms=30000", &args, |d| {
        d.log().contains("holding point=\"hotplug_after_backend\"")
    });
    wait_for("the cut plug undone", Duration::from_secs(20), || {
        let file = std::fs::read_to_string(&rt).unwrap();
        (!file.contains("plugging") && d.info("k").job.is_none()).then_some(())
    });
    assert!(d.info("k").hardware.unwrap().disks.is_empty());
    assert!(d.log().contains("a plug cut short by a restart is undone"));
    // Its backend is gone: the same id and port take a new plug.
    let v = json(&d.kvmctl(&["--json", "hotplug", "add", "k", "disk", img_arg]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["disks"][0]["id"],
        "hotdisk0"
    );
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["disks"][0]["address"],
        "hotport0"
    );
    // 2. Killed after device_add: the guest has the NIC, and so does kvmd after its restart.
    kill_mid_plug(
        &mut d,
        "delay_hotplug_after_device_ms=30000",
        &[
            "--json",
            "hotplug",
            "add",
            "k",
            "nic",
            "--mac",
            "52:54:00:77:00:0a",
        ],
        |d| d.log().contains("holding point=\"hotplug_after_device\""),
    );
    wait_for("the cut plug finished", Duration::from_secs(20), || {
        let nics = d.info("k").hardware.unwrap().nics;
        (nics.len() == 1 && !std::fs::read_to_string(&rt).unwrap().contains("plugging"))
            .then_some(())
    });
    assert!(d
        .log()
        .contains("a plug cut short by a restart is finished"));
    wait_for("eth0 in the guest", Duration::from_secs(20), || {
        d.guest_run("k", "cat /sys/class/net/eth0/address 2>/dev/null")
            .ends_with("52:54:00:77:00:0a")
            .then_some(())
    });
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "k", "hotnic0"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["result"]["hotplugged"]["hardware"]["nics"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "{v}"
    );
}

#[test]
fn a_plugged_tap_nic_on_a_bridge_reaches_the_host_and_goes_away_cleanly() {
    let net = free_test_net();
    let br = Bridge::new("h", &format!("{net}.1/24"));
    // The first device_add fails (fault injection), after the tap, its fd and the netdev.
    let mut d = Daemon::prepare("", &pc("tn"));
    d.spawn_with_env(&[("KVMD_FAULTS", "hotplug_device_add=1")]);
    d.start_vm("tn");
    d.wait_ready("tn", 1);
    let links = || {
        let mut l: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        l.sort();
        l
    };
    let qemu = d.info("tn").pid.unwrap();
    let before = (links(), fds(d.pid()), fds(qemu));
    let plug = [
        "--json",
        "hotplug",
        "add",
        "tn",
        "nic",
        "--mode",
        "bridged",
        "--link",
        &br.0,
        "--mac",
        "52:54:00:77:00:09",
    ];
    let v = json(&d.kvmctl(&plug));
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fault injection"),
        "{v}"
    );
    // Nothing stays: no tap, no fd in kvmd or QEMU, no record. (kvmd's count moves with
    // the control connections open at the moment.)
    assert_eq!(
        (links(), fds(qemu)),
        (before.0, before.2),
        "a tap or a QEMU fd stayed"
    );
    assert!(fds(d.pid()) <= before.1, "kvmd kept an fd");
    assert!(d.info("tn").hardware.unwrap().nics.is_empty());
    let v = json(&d.kvmctl(&[
        "--json",
        "hotplug",
        "add",
        "tn",
        "nic",
        "--mode",
        "bridged",
        "--link",
        &br.0,
        "--mac",
        "52:54:00:77:00:09",
    ]));
    assert_eq!(v["ok"], true, "{v}");
    let tap = v["result"]["hotplugged"]["hardware"]["nics"][0]["tap"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_link(format!("/sys/class/net/{tap}/master"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_str(),
        Some(br.0.as_str()),
        "the plugged tap is on the bridge"
    );
    wait_for("eth0 in the guest", Duration::from_secs(20), || {
        d.guest_run("tn", "cat /sys/class/net/eth0/address 2>/dev/null")
            .ends_with("52:54:00:77:00:09")
            .then_some(())
    });
    let out = d.guest_run(
        "tn",
        &format!("ip addr add {net}.2/24 dev eth0 && ip link set eth0 up && ping -c 2 -W 3 {net}.1 >/dev/null && echo PING-OK"),
    );
    assert!(out.contains("PING-OK"), "{out}");
    let v = json(&d.kvmctl(&["--json", "hotplug", "del", "tn", "hotnic0"]));
    assert_eq!(v["ok"], true, "{v}");
    wait_for("the tap gone", Duration::from_secs(10), || {
        (!std::path::Path::new(&format!("/sys/class/net/{tap}")).exists()).then_some(())
    });
}
