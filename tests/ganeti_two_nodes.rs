//! A real two-node Ganeti 3.0 cluster on one host, each node with its own namespaces, sshd
//! and kvmd (tests/ganeti/two-node.sh, from a helper session's recipe): cluster init, node
//! add, a sharedfile instance under node1's kvmd, `gnt-instance migrate` live to node2 and
//! non-live back, a migration failed on purpose (the target's QEMU killed) and recovered with
//! `migrate --cleanup`, failover, `kvmctl migrate` between the two kvmds and back with Ganeti
//! adopting the result (`migrate --cleanup`), verify; nothing left behind. Its own binary, so
//! no other Ganeti test runs beside it (the leak checks look at every process on the host).

#[test]
fn a_real_two_node_ganeti_cluster_migrates_and_fails_over_through_kvmd() {
    assert!(
        std::path::Path::new("/usr/sbin/gnt-cluster").exists()
            && std::path::Path::new("/usr/sbin/sshd").exists(),
        "Debian's ganeti and openssh-server (installed by scripts/install-deps.sh)"
    );
    let lab = tempfile::Builder::new()
        .prefix("kvmd-ganeti2-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/tests/ganeti/two-node.sh"))
        .env("LAB", lab.path())
        .env("KVMD_BIN", env!("CARGO_BIN_EXE_kvmd"))
        .env("KVMCTL_BIN", env!("CARGO_BIN_EXE_kvmctl"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results = std::fs::read_to_string(lab.path().join("results.txt")).unwrap_or_default();
    eprintln!("{said}");
    for step in [
        "1a cluster init: ok",
        "1b node add: ok",
        "2 instance add: ok (node1's kvmd, guest booted)",
        "3a after live migrate: only node2 runs it",
        "3b after non-live migrate: only node1 runs it",
        "4a migration failed on purpose",
        "4b migrate --cleanup: ok",
        "4c after cleanup runs on exactly one node",
        "5 failover: ganeti ok",
        "6a kvmctl migrate node",
        "6b Ganeti's primary is now node",
        "6c back on node",
        "verify: ok",
    ] {
        assert!(results.contains(step), "missing {step:?} in:\n{results}");
    }
    assert!(!results.contains("FAILED"), "{results}");
    assert!(
        results
            .lines()
            .any(|l| l.starts_with("5 after failover: only node")),
        "{results}"
    );
    assert!(out.status.success(), "leftovers or a failed step:\n{said}");
}
