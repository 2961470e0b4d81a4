//! Real boots with real devices: a tap NIC on a Linux bridge (the guest pings the host), a
//! routed tap NIC, the NIC script's environment, SCSI disks, a cdrom, security_model=user with
//! chroot, and VNC on a unix socket. Each is checked from inside the guest or through QEMU's
//! own monitor.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use kvmd::api::{ApiReply, ApiRequest};
use support::*;

/// Run one HMP command on the VM's monitor socket (kvmd holds QMP; the monitor is free).
fn hmp(d: &Daemon, vm: &str, command: &str) -> String {
    let mut s = UnixStream::connect(d.run_dir(vm).join("monitor.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut read_until_prompt = |s: &mut UnixStream, buf: &mut Vec<u8>| loop {
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        if String::from_utf8_lossy(buf).ends_with("(qemu) ") || n == 0 {
            break;
        }
    };
    read_until_prompt(&mut s, &mut buf);
    buf.clear();
    s.write_all(format!("{command}\n").as_bytes()).unwrap();
    read_until_prompt(&mut s, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The host's route to `ip`, as `ip route show` prints it.
fn route_to(ip: &str) -> String {
    String::from_utf8(
        Command::new("ip")
            .args(["route", "show", ip])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

/// The real uid a process runs as.
fn uid_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

fn tap_of(d: &Daemon, vm: &str, nic: usize) -> String {
    let rt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.run_dir(vm).join("runtime.json")).unwrap())
            .unwrap();
    rt["taps"][nic].as_str().unwrap().to_string()
}

#[test]
fn a_bridged_tap_nic_reaches_the_host_and_the_nic_script_sees_ganetis_environment() {
    let net = free_test_net();
    let br = Bridge::new("b", &format!("{net}.1/24"));
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("nic.log");
    let script = scratch.path().join("nic-script");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$ACTION $INSTANCE $MODE $LINK $MAC $INTERFACE $INTERFACE_INDEX $1\" >> {}\n", log.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("kvmd-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let config = dir.path().join("kvmd.toml");
    let node = node_toml(
        dir.path(),
        &format!("nic_script = \"{}\"", script.display()),
    ) + "vhost_net = false\n";
    let inst = instance_toml("net", &format!("[[instance.net.nic]]\nmode = \"bridged\"\nlink = \"{}\"\nmac = \"52:54:00:77:00:02\"\n", br.0));
    std::fs::write(&config, node + &inst).unwrap();
    let mut d = Daemon {
        dir,
        child: None,
        config,
        netns: None,
    };
    d.spawn();
    d.start_vm("net");
    let tap = tap_of(&d, "net", 0);
    assert_eq!(
        std::fs::read_link(format!("/sys/class/net/{tap}/master"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_str(),
        Some(br.0.as_str()),
        "tap on the bridge"
    );
    d.wait_ready("net", 1);
    let out = d.guest_run(
        "net",
        &format!("ip addr add {net}.2/24 dev eth0 && ip link set eth0 up && ping -c 2 -W 3 {net}.1 >/dev/null && echo PING-OK"),
    );
    assert!(
        out.contains("PING-OK"),
        "guest could not reach the host over the bridge: {out}"
    );
    assert_eq!(
        d.guest_run("net", "cat /sys/class/net/eth0/address"),
        "52:54:00:77:00:02"
    );
    d.call(ApiRequest::Stop {
        name: name("net"),
        timeout_s: Some(30),
        force: false,
        wait: true,
    })
    .unwrap();
    wait_for("the tap to go", Duration::from_secs(5), || {
        (!std::path::Path::new(&format!("/sys/class/net/{tap}")).exists()).then_some(())
    });
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.contains(&format!(
            "up net bridged {} 52:54:00:77:00:02 {tap} 0 {tap}",
            br.0
        )),
        "{lines}"
    );
    wait_for("the down script", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("down net")
            .then_some(())
    });
}

#[test]
fn a_routed_tap_nic_gets_a_host_route_that_goes_with_the_vm() {
    let ip = format!("{}.2", free_test_net());
    let d = Daemon::start(&instance_toml(
        "rt",
        &format!("[[instance.rt.nic]]\nmode = \"routed\"\nip = \"{ip}\"\n[instance.rt.hvparams]\nvhost_net = false"),
    ));
    d.start_vm("rt");
    let tap = tap_of(&d, "rt", 0);
    let route = route_to(&ip);
    assert!(route.contains(&format!("dev {tap}")), "{route}");
    d.call(ApiRequest::Stop {
        name: name("rt"),
        timeout_s: None,
        force: true,
        wait: true,
    })
    .unwrap();
    let route = route_to(&ip);
    assert!(route.trim().is_empty(), "route left behind: {route}");
}

#[test]
fn scsi_disks_on_virtio_scsi_and_a_cdrom_are_really_there() {
    let scratch = tempfile::tempdir().unwrap();
    let (a, b, iso) = (
        scratch.path().join("a.img"),
        scratch.path().join("b.img"),
        scratch.path().join("cd.iso"),
    );
    let mut data = vec![0u8; 4 << 20];
    data[..9].copy_from_slice(b"scsi-disk");
    std::fs::write(&a, &data).unwrap();
    std::fs::write(&b, vec![0u8; 2 << 20]).unwrap();
    std::fs::write(&iso, vec![0u8; 1 << 20]).unwrap();
    let extra = format!(
        "[[instance.sc.disk]]\npath = \"{}\"\n[[instance.sc.disk]]\npath = \"{}\"\nreadonly = true\n[instance.sc.hvparams]\ndisk_type = \"scsi-hd\"\nscsi_controller_type = \"virtio-scsi-pci\"\ncdrom_image_path = \"{}\"\ncdrom_disk_type = \"ide\"\n",
        a.display(),
        b.display(),
        iso.display()
    );
    let d = Daemon::start(&instance_toml("sc", &extra));
    d.start_vm("sc");
    d.wait_ready("sc", 1);
    // Linux scans SCSI targets asynchronously: wait for both disks, and identify them by
    // what they are (size, read-only flag, first bytes), never by the names sda/sdb.
    let disks = d.guest_run(
        "sc",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do [ $(ls /sys/block | grep -c ^sd) -ge 2 ] && break; sleep 0.5; done; \
         for b in /sys/block/sd*; do echo \"$(cat $b/size) $(cat $b/ro) $(head -c 9 /dev/${b##*/} | tr -c a-z- _)\"; done | sort -n",
    );
    assert_eq!(
        disks.lines().map(str::trim).collect::<Vec<_>>(),
        ["4096 1 _________", "8192 0 scsi-disk"],
        "{disks}"
    );
    let block = hmp(&d, "sc", "info block");
    assert!(
        block.contains("cdrom1")
            && block.contains(&iso.display().to_string())
            && block.contains("read-only"),
        "{block}"
    );
}

#[test]
fn security_model_user_with_chroot_runs_qemu_as_that_user_inside_the_chroot() {
    let d = Daemon::start(&instance_toml("sec", "[instance.sec.hvparams]\nsecurity_model = \"user\"\nsecurity_domain = \"nobody\"\nuse_chroot = true"));
    let pid = d.start_vm("sec").pid.unwrap();
    let uid = uid_of(pid);
    assert_eq!(uid, "65534", "QEMU runs as nobody");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        d.run_dir("sec").join("chroot")
    );
    d.wait_ready("sec", 1);
    match d
        .call(ApiRequest::Stop {
            name: name("sec"),
            timeout_s: Some(30),
            force: false,
            wait: true,
        })
        .unwrap()
    {
        ApiReply::Stopped { ended, .. } => assert_eq!(
            ended.as_str(),
            "acpi",
            "QMP still works after dropping privileges"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn vnc_on_a_unix_socket_speaks_rfb() {
    let vnc = tempfile::tempdir().unwrap();
    let d = Daemon::start(&instance_toml(
        "v",
        &format!(
            "[instance.v.hvparams]\nvnc_bind_address = \"{}\"",
            vnc.path().display()
        ),
    ));
    d.start_vm("v");
    let mut s = UnixStream::connect(vnc.path().join("v.vnc")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut banner = [0u8; 12];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"RFB 003.008\n");
    let info = hmp(&d, "v", "info vnc");
    assert!(
        info.contains(&vnc.path().join("v.vnc").display().to_string()),
        "VNC server on the unix socket: {info}"
    );
}

#[test]
fn security_model_pool_gives_each_vm_a_free_uid_from_the_pool() {
    // One uid in the pool (Debian's "sys", which no process runs as): the second VM must wait.
    let dir = tempfile::Builder::new()
        .prefix("kvmd-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let config = dir.path().join("kvmd.toml");
    let pool = "[instance.p1.hvparams]\nsecurity_model = \"pool\"\n";
    let node = node_toml(dir.path(), "uid_pool = \"3\"");
    std::fs::write(
        &config,
        node + &instance_toml("p1", pool) + &instance_toml("p2", &pool.replace("p1", "p2")),
    )
    .unwrap();
    let mut d = Daemon {
        dir,
        child: None,
        config,
        netns: None,
    };
    d.spawn();
    let pid = d.start_vm("p1").pid.unwrap();
    assert_eq!(uid_of(pid), "3");
    let e = d
        .call(ApiRequest::Start {
            name: name("p2"),
            paused: false,
            wait: true,
            memory: None,
        })
        .unwrap_err();
    assert_eq!(e.fields[0].field, "hvparams.security_model");
    assert!(e.fields[0].rule.contains("no free uid"), "{e:?}");
    // The uid survives a kvmd restart (it is in the runtime file) and is freed by the stop.
    d.kill9();
    d.spawn();
    d.wait_state("p1", "running", Duration::from_secs(10));
    assert!(d
        .call(ApiRequest::Start {
            name: name("p2"),
            paused: false,
            wait: true,
            memory: None
        })
        .is_err());
    d.call(ApiRequest::Stop {
        name: name("p1"),
        timeout_s: None,
        force: true,
        wait: true,
    })
    .unwrap();
    let pid2 = d.start_vm("p2").pid.unwrap();
    assert_eq!(uid_of(pid2), "3");
}
