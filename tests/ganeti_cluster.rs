//! A real one-node Ganeti 3.0 cluster whose kvm hypervisor is kvmd (tests/ganeti/one-node.sh,
//! in private network, UTS, mount and PID namespaces): gnt-instance add runs the VM under
//! kvmd; info, list, console (the printed command attaches, types, detaches), runtime memory
//! (balloon), hot-plug of a NIC and a disk, reboot, shutdown, startup, a guest power-off as
//! USER_down, gnt-cluster verify without hypervisor errors, remove; nothing left behind.

#[test]
fn a_real_one_node_ganeti_cluster_runs_its_instance_under_kvmd() {
    assert!(
        std::path::Path::new("/usr/sbin/gnt-cluster").exists(),
        "Debian's ganeti package (installed by scripts/install-deps.sh)"
    );
    let lab = tempfile::Builder::new()
        .prefix("kvmd-ganeti-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/tests/ganeti/one-node.sh"))
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
    let timings = std::fs::read_to_string(lab.path().join("nodeA/timings.txt")).unwrap_or_default();
    eprintln!("{said}\n---- timings ----\n{timings}");
    if !out.status.success() {
        let kvmd = std::fs::read_to_string(lab.path().join("nodeA/kvmd.log")).unwrap_or_default();
        eprintln!("---- kvmd log ----\n{kvmd}");
    }
    assert!(out.status.success(), "the cluster test failed (see above)");
    assert!(said.contains("ALL CHECKS PASSED"), "{said}");
    assert!(said.contains("no Ganeti/qemu processes left"), "{said}");
}
