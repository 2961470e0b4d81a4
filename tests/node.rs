//! The node operations on a real daemon: `node info` against /proc, `node verify` with a
//! planted stale directory and an orphan QEMU, `node powercycle` refused without --yes.

mod support;

use kvmd::api::{ApiReply, ApiRequest};
use serde_json::Value;
use support::*;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn node_info_reports_memory_cpus_and_the_hypervisor() {
    let d = Daemon::start(&instance_toml("n1", ""));
    match d.call(ApiRequest::Start {
        name: name("n1"),
        paused: true,
        wait: true,
        memory: None,
    }) {
        Ok(ApiReply::Started(_)) => {}
        other => panic!("{other:?}"),
    }
    let v = json(&d.kvmctl(&["--json", "node", "info"]));
    let n = &v["result"]["node"];
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert_eq!(n["memory_total_mib"], total_kib / 1024, "{n}");
    assert!(n["memory_free_mib"].as_u64().unwrap() <= total_kib / 1024);
    assert_eq!(n["instances_running"], 1, "{n}");
    assert_eq!(n["memory_instances_mib"], 192, "{n}");
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(n["cpus"], cpus);
    assert_eq!(
        n["sockets"].as_u64().unwrap()
            * n["cores_per_socket"].as_u64().unwrap()
            * n["threads_per_core"].as_u64().unwrap(),
        cpus,
        "{n}"
    );
    assert_eq!(n["accelerator"], "tcg");
    assert_eq!(n["qemu_version"][0], 7, "{n}");
    assert!(n["ancillary_files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f.as_str() == Some(d.config.to_str().unwrap())));
    let text = String::from_utf8_lossy(&d.kvmctl(&["node", "info"]).stdout).into_owned();
    assert!(text.contains("MiB for 1 instances"), "{text}");
}

#[test]
fn node_verify_names_a_stale_directory_and_an_orphan_qemu() {
    let d = Daemon::start("");
    let out = d.kvmctl(&["--json", "node", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = json(&out);
    let findings = v["result"]["findings"].as_array().unwrap().clone();
    let has = |fs: &[Value], sev: &str, check: &str| {
        fs.iter()
            .any(|f| f["severity"] == sev && f["check"] == check)
    };
    assert!(has(&findings, "ok", "qemu"), "{v}");
    assert!(has(&findings, "ok", "run_dir"), "{v}");
    assert!(has(&findings, "ok", "socket"), "{v}");
    assert!(
        has(&findings, "warning", "kvm"),
        "tcg is worth a warning: {v}"
    );
    assert!(!findings.iter().any(|f| f["severity"] == "error"), "{v}");
    // A directory nobody owns, and a QEMU whose pidfile points into the run dir.
    let ghost = d.dir.path().join("run").join("ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    let q = Qemu(
        std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-display", "none", "-S", "-pidfile"])
            .arg(ghost.join("qemu.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = q.0.id();
    wait_for(
        "the orphan's pidfile",
        std::time::Duration::from_secs(10),
        || ghost.join("qemu.pid").exists().then_some(()),
    );
    let v = json(&d.kvmctl(&["--json", "node", "verify"]));
    let findings = v["result"]["findings"].as_array().unwrap().clone();
    assert!(
        findings.iter().any(|f| f["check"] == "orphan"
            && f["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("pid {pid}"))),
        "{v}"
    );
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "stale" && f["detail"].as_str().unwrap().contains("ghost")),
        "{v}"
    );
    drop(q);
    // A run dir others may write to is an error, and fails the command.
    let run = d.dir.path().join("run");
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = d.kvmctl(&["node", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("writable by group or others"));
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
}

#[test]
fn node_powercycle_is_refused_without_yes_and_names_its_steps() {
    let d = Daemon::start("");
    let out = d.kvmctl(&["--json", "node", "powercycle"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["code"], "invalid_parameter", "{v}");
    assert_eq!(v["error"]["fields"][0]["field"], "yes", "{v}");
    let details = v["error"]["details"].to_string();
    assert!(
        details.contains("/proc/sysrq-trigger") && details.contains("reboot -n -f"),
        "{v}"
    );
    assert!(support::alive(d.pid()), "kvmd (and the node) still up");
}
