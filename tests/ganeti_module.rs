//! The Ganeti hypervisor module (integrations/ganeti/hv_kvmd.py) driven with Ganeti 3.0's own
//! Python objects (Debian's `ganeti` package) against a real kvmd and QEMU: start with the
//! instance's definition, list/info, node info, verify, the console command, a guest
//! power-off seen as Ganeti's SHUTDOWN, repeated stops and cleanups. Ganeti's KVM class
//! makes directories under /run/ganeti: the script runs in a private mount namespace with a
//! tmpfs there, so the host's are never touched.

mod support;

use std::process::Command;

use support::*;

#[test]
fn ganetis_objects_drive_kvmd_through_the_hypervisor_module() {
    assert!(
        std::path::Path::new("/usr/share/ganeti/3.0/ganeti/hypervisor/hv_kvm").exists(),
        "Debian's ganeti package (installed by scripts/install-deps.sh)"
    );
    let d = Daemon::start("");
    std::fs::create_dir_all("/run/ganeti").unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let kvmctl_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kvmctl"))
        .parent()
        .unwrap()
        .display()
        .to_string();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs -o mode=0755 tmpfs /run/ganeti && exec /usr/bin/python3 \"$0\" \"$1\"")
        .arg(format!("{root}/integrations/ganeti/test_hv_kvmd.py"))
        .arg(guest_dir())
        .env("KVMD_SOCKET", d.socket())
        .env(
            "PYTHONPATH",
            format!("/usr/share/ganeti/3.0:{root}/integrations/ganeti"),
        )
        .env(
            "PATH",
            format!("{kvmctl_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("FAIL"), "{said}");
}

#[test]
fn ganetis_migration_steps_move_a_vm_between_two_kvmds() {
    let h = TwoHosts::new("gm");
    let src = Daemon::start_in(&h.a, "", "");
    let dst = Daemon::start_in(&h.b, "", "");
    std::fs::create_dir_all("/run/ganeti").unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs -o mode=0755 tmpfs /run/ganeti && exec /usr/bin/python3 \"$0\" \"$@\"")
        .arg(format!(
            "{root}/integrations/ganeti/test_hv_kvmd_migrate.py"
        ))
        .arg(guest_dir())
        .arg(src.socket())
        .arg(dst.socket())
        .arg(&h.b_ip)
        .env(
            "PYTHONPATH",
            format!("/usr/share/ganeti/3.0:{root}/integrations/ganeti"),
        )
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("FAIL"), "{said}");
}
