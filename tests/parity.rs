//! The Ganeti 3.0.2 argv comparison runs on every test run: against Ganeti's saved argv
//! (tests/ganeti-parity/expected/, produced by Ganeti's own KVMHypervisor code), kvmd must
//! build every case, and the report must name the differences docs/hvparams.md explains.

use std::process::Command;

#[test]
fn the_ganeti_argv_comparison_runs_for_every_case() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/tests/ganeti-parity/compare.sh"))
        .args(["--ganeti", "expected"])
        .env("KVMD", env!("CARGO_BIN_EXE_kvmd"))
        .current_dir(root)
        .output()
        .expect("run compare.sh (needs python3)");
    let report = String::from_utf8_lossy(&out.stdout);
    let cases = std::fs::read_dir(format!("{root}/tests/ganeti-parity/cases"))
        .unwrap()
        .count();
    assert_eq!(
        report.matches("--print-argv: ok").count(),
        cases,
        "kvmd must build every case:\n{report}"
    );
    assert!(!report.contains("compare.py failed"), "{report}");
    // The differences docs/hvparams.md lists show up in the report.
    for known in [
        "-daemonize",
        "-drive file=",
        "-blockdev driver=raw",
        "-soundhw hda",
        "-audio driver=none,model=hda",
    ] {
        assert!(report.contains(known), "{known} missing from the report");
    }
}
