//! The balloon on a booted guest: down and up with the guest's MemTotal checked, the limits
//! from min_memory and memory, and a guest without a balloon driver (stalled).

mod support;

use serde_json::Value;
use support::*;

fn mem_total_kib(d: &Daemon, n: &str) -> u64 {
    d.guest_run(n, "grep MemTotal /proc/meminfo")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("MemTotal in kB")
}

#[test]
fn the_balloon_moves_the_guests_memory_and_says_where_it_got() {
    let d = Daemon::start(
        &instance_toml("b1", "memory = 256\nmin_memory = 128\n").replace("memory = 192\n", ""),
    );
    d.start_vm("b1");
    d.wait_ready("b1", 1);
    let before = mem_total_kib(&d, "b1");
    let out = d.kvmctl(&["balloon", "b1", "160"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("balloon reached at 16"), "{said}");
    let down = mem_total_kib(&d, "b1");
    assert!(
        before - down >= 80 * 1024,
        "MemTotal {before} kB -> {down} kB after ballooning 256 -> 160 MiB"
    );
    let info = d.info("b1");
    let b = info.balloon.expect("balloon in info");
    assert_eq!((b.target_mib, b.state.as_str()), (160, "reached"));
    // And back up.
    let out = d.kvmctl(&["balloon", "b1", "256"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let up = mem_total_kib(&d, "b1");
    assert!(
        up >= before - 1024,
        "MemTotal back to {up} kB (was {before})"
    );
    eprintln!("MemTotal: {before} kB, ballooned to 160 MiB: {down} kB, back: {up} kB");
    // Never below min_memory, never above memory.
    for mib in ["100", "300"] {
        let out = d.kvmctl(&["--json", "balloon", "b1", mib]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["error"]["fields"][0]["field"], "mib", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("between min_memory (128) and memory (256)"),
            "{v}"
        );
    }
    // Without the guest's driver nothing moves: stalled, with the size reached.
    assert_eq!(
        d.guest_run("b1", "rmmod virtio_balloon && echo gone"),
        "gone"
    );
    let out = d.kvmctl(&["balloon", "b1", "160"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("balloon stalled at 256 MiB (target 160 MiB)"),
        "{said}"
    );
    // Start-up ballooning: the guest boots into 160 MiB of its 256.
    let out = d.kvmctl(&["stop", "b1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(
        &d.kvmctl(&["--json", "start", "b1", "--memory", "100"])
            .stdout,
    )
    .unwrap();
    assert_eq!(v["error"]["fields"][0]["field"], "memory", "{v}");
    let out = d.kvmctl(&["start", "b1", "--memory", "160"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.info("b1").balloon.unwrap().target_mib, 160);
    d.wait_ready("b1", 1); // a start begins a new serial.log
    let b = wait_for(
        "the guest at its start-up size",
        std::time::Duration::from_secs(30),
        || d.info("b1").balloon.filter(|b| b.state == "reached"),
    );
    assert_eq!(b.target_mib, 160);
    assert!(b.actual_mib.abs_diff(160) <= 2, "{b:?}");
    let booted = mem_total_kib(&d, "b1");
    assert!(
        before - booted >= 80 * 1024,
        "MemTotal {booted} kB after a start at 160 MiB (a full start: {before} kB)"
    );
    eprintln!("MemTotal after a start at 160 MiB: {booted} kB");
}

#[test]
fn info_shows_the_guests_own_memory_figures() {
    let d = Daemon::start_with(
        "balloon_stats_interval_s = 1\nhealth_interval_ms = 500",
        &instance_toml("gs", ""),
    );
    d.start_vm("gs");
    d.wait_ready("gs", 1);
    let total_kib = mem_total_kib(&d, "gs");
    let g = wait_for(
        "guest memory statistics in info",
        std::time::Duration::from_secs(30),
        || d.info("gs").guest_memory,
    );
    assert_eq!(
        g.total_mib,
        total_kib / 1024,
        "{g:?} vs MemTotal {total_kib} kB"
    );
    assert!(
        g.free_mib <= g.total_mib && g.available_mib <= g.total_mib,
        "{g:?}"
    );
    assert!(g.updated_at_s > 0);
    let text = String::from_utf8_lossy(&d.kvmctl(&["info", "gs"]).stdout).into_owned();
    assert!(text.contains("guest memory:"), "{text}");
}
