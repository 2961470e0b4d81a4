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
}
