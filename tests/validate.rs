//! `kvmctl validate`: every invalid example is rejected with the right field and rule, all
//! problems of an instance at once; Ganeti's full default set is accepted.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn validate(config: &str, extra: &[&str]) -> (bool, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kvmd.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvmctl"))
        .args(["--json", "validate"])
        .arg(&file)
        .args(extra)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

#[test]
fn every_invalid_example_names_its_field_and_rule() {
    // name, instance TOML (after the [instance.NAME] header), expected field, rule substring.
    let vhost_missing = !std::path::Path::new("/dev/vhost-net").exists();
    let mut table: Vec<(&str, String, &str, &str)> = vec![
        ("aio", "[instance.aio.hvparams]\ndisk_aio = \"native\"\ndisk_cache = \"writeback\"".into(), "hvparams.disk_cache", "must be none when disk_aio is native"),
        ("userdom", "[instance.userdom.hvparams]\nsecurity_model = \"user\"".into(), "hvparams.security_domain", "must name a user"),
        ("nonedom", "[instance.nonedom.hvparams]\nsecurity_domain = \"nobody\"".into(), "hvparams.security_domain", "must be empty unless security_model is user"),
        ("nouser", "[instance.nouser.hvparams]\nsecurity_model = \"user\"\nsecurity_domain = \"no-such-user-kvmd\"".into(), "hvparams.security_domain", "must name an existing user"),
        ("vncspice", "[instance.vncspice.hvparams]\nvnc_bind_address = \"127.0.0.1\"\nspice_bind = \"127.0.0.1\"".into(), "hvparams.spice_bind", "VNC and SPICE are exclusive"),
        ("maskgrammar", "[instance.maskgrammar.hvparams]\ncpu_mask = \"0-a\"".into(), "hvparams.cpu_mask", "is not a CPU number"),
        ("maskcount", "vcpus = 2\n[instance.maskcount.hvparams]\ncpu_mask = \"0:1:0\"".into(), "hvparams.cpu_mask", "3 entries"),
        ("speed", "[instance.speed.hvparams]\nserial_speed = 1234".into(), "hvparams.serial_speed", "must be a standard serial speed when serial_console is on"),
        ("cdboot", "[instance.cdboot.hvparams]\nboot_order = \"cdrom\"".into(), "hvparams.cdrom_image_path", "must be set when boot_order is cdrom"),
        ("root", "[instance.root.hvparams]\nroot_path = \"\"".into(), "hvparams.root_path", "must be set when kernel_path is set"),
        ("x509", "[instance.x509.hvparams]\nvnc_x509_verify = true".into(), "hvparams.vnc_x509_verify", "needs vnc_x509_path"),
        ("spiceopt", "[instance.spiceopt.hvparams]\nspice_image_compression = \"glz\"".into(), "hvparams.spice_image_compression", "needs spice_bind"),
        ("machine", "[instance.machine.hvparams]\nmachine_version = \"no-such-machine\"".into(), "hvparams.machine_version", "is not a machine type of this QEMU"),
        ("kernel", "[instance.kernel.hvparams]\nkernel_path = \"/nonexistent/vmlinuz\"".into(), "hvparams.kernel_path", "must name an existing file"),
        ("mempath", "[instance.mempath.hvparams]\nmem_path = \"/nonexistent/hugepages\"".into(), "hvparams.mem_path", "must name an existing directory"),
        ("vncif", "[instance.vncif.hvparams]\nvnc_bind_address = \"doesnotexist0\"".into(), "hvparams.vnc_bind_address", "must be an IP address, an interface"),
        ("spiceaddr", "[instance.spiceaddr.hvparams]\nspice_bind = \"192.0.2.5.5\"".into(), "hvparams.spice_bind", "must be an IP address or an existing interface"),
        ("spicefam", "[instance.spicefam.hvparams]\nspice_bind = \"127.0.0.1\"\nspice_ip_version = 6".into(), "hvparams.spice_ip_version", "does not match the address family"),
        ("mtd", "[[instance.mtd.disk]]\npath = \"/dev/null\"\n[instance.mtd.hvparams]\ndisk_type = \"mtd\"".into(), "hvparams.disk_type", "is not a QEMU device"),
        ("pcires", "[instance.pcires.hvparams]\nkvm_pci_reservations = 40".into(), "hvparams.kvm_pci_reservations", "must be between 0 and 32"),
        ("bridge", "[[instance.bridge.nic]]\nmode = \"bridged\"\nlink = \"nosuchbridge0\"".into(), "nic[0].link", "must name an existing Linux bridge"),
        ("routed", "[[instance.routed.nic]]\nmode = \"routed\"".into(), "nic[0].ip", "is needed by routed mode"),
        ("port", "[instance.port.hvparams]\nmigration_port = 0".into(), "hvparams.migration_port", "must be between 1 and 65534"),
        ("cachemode", "[instance.cachemode.hvparams]\ndisk_cache = \"fast\"".into(), "hvparams.disk_cache", "must be one of the allowed values"),
        ("missingdisk", "[[instance.missingdisk.disk]]\npath = \"/nonexistent/disk.img\"".into(), "disk[0].path", "must name an existing file"),
    ];
    if vhost_missing {
        table.push(("vhost", "[[instance.vhost.nic]]\nmode = \"user\"\n[[instance.vhost.nic]]\nmode = \"routed\"\nip = \"10.9.9.9\"\n[instance.vhost.hvparams]\nvhost_net = true".into(), "hvparams.vhost_net", "needs /dev/vhost-net"));
    }
    let dir = tempfile::tempdir().unwrap();
    let node = node_toml(dir.path(), "") + "vhost_net = false\n";
    for (name, body, field, rule) in &table {
        let (ok, v) = validate(
            &format!("{node}\n[instance.{name}]\nmemory = 128\n{body}\n"),
            &[],
        );
        assert!(!ok, "{name} was accepted");
        let errs = problems(&v, name);
        assert!(
            errs.iter().any(|(f, r)| f == field && r.contains(rule)),
            "{name}: expected {field} / {rule:?}, got {errs:?}"
        );
    }
    let (ok, v) = validate(&format!("{node}\n[instance.good]\nmemory = 128\n"), &[]);
    assert!(ok, "a valid instance is accepted: {v:#}");
}

/// (field, rule) of every problem of instance `name`, whether the config file itself was
/// refused (per-key rules, checked when it is read) or the instance's checks failed.
fn problems(v: &Value, name: &str) -> Vec<(String, String)> {
    let prefix = format!("instance.{name}.");
    let list = v["instances"][name]
        .as_array()
        .or_else(|| v["errors"].as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .map(|e| {
            let f = e["field"].as_str().unwrap();
            (
                f.strip_prefix(&prefix).unwrap_or(f).to_string(),
                e["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn all_problems_of_one_instance_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let config = node_toml(dir.path(), "") + "vhost_net = false\n\n[instance.many]\nmemory = 128\nvcpus = 2\n[instance.many.hvparams]\ncpu_mask = \"0:1:1\"\ndisk_aio = \"native\"\nkernel_path = \"/nonexistent\"\nmachine_version = \"nope\"\n";
    let (_, v) = validate(&config, &[]);
    let fields: Vec<String> = problems(&v, "many").into_iter().map(|(f, _)| f).collect();
    for f in [
        "hvparams.cpu_mask",
        "hvparams.disk_cache",
        "hvparams.kernel_path",
        "hvparams.machine_version",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
    }
}

#[test]
fn ganetis_full_default_set_is_accepted() {
    let defaults = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ganeti-3.1-kvm-defaults.toml"
    ))
    .unwrap();
    let (ok, v) = validate(&defaults, &["--syntax-only"]);
    assert!(ok, "{v:#}");
    // On this node, with a kernel that exists, a QEMU binary and vhost as the host allows,
    // the defaults pass the node checks too.
    let g = guest_dir();
    let kvm = if std::path::Path::new("/usr/bin/kvm").exists() {
        "/usr/bin/kvm"
    } else {
        "/usr/bin/qemu-system-x86_64"
    };
    let node = defaults
        .replace(
            "kvm_path = \"/usr/bin/kvm\"",
            &format!("kvm_path = {kvm:?}"),
        )
        .replace(
            "kernel_path = \"/boot/vmlinuz-3-kvmU\"",
            &format!("kernel_path = \"{}/vmlinux\"", g.display()),
        );
    let (ok, v) = validate(&node, &[]);
    assert!(ok, "{v:#}");
}

#[test]
fn a_broken_config_file_is_reported_with_its_key_path() {
    let (ok, v) = validate(
        "[instance.a]\nmemory = \"lots\"\n[instance.a.hvparams]\npae = true\n",
        &[],
    );
    assert!(!ok);
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["instance.a.memory", "instance.a.hvparams.pae"]);
}

/// Files an instance may name, in `dir`.
fn media(dir: &std::path::Path) -> (String, String, String) {
    let disk = dir.join("disk.img");
    let iso = dir.join("cd.iso");
    let floppy = dir.join("fd.img");
    support::images::disk(&disk, "X");
    support::images::iso(&iso, "X");
    support::images::floppy(&floppy, "X");
    let s = |p: std::path::PathBuf| p.display().to_string();
    (s(disk), s(iso), s(floppy))
}

#[test]
fn validate_refuses_what_qemu_would_refuse_by_running_the_argv_builder() {
    // Issue 7, defect 7: each of these passed validate and failed at start or in QEMU.
    let dir = tempfile::tempdir().unwrap();
    let (disk, iso, floppy) = media(dir.path());
    let disks = |n: usize| {
        (0..n)
            .map(|_| format!("[[instance.NAME.disk]]\npath = \"{disk}\"\n"))
            .collect::<String>()
    };
    let table: Vec<(&str, String, &str, &str)> = vec![
        ("extra", "[instance.extra.hvparams]\nkvm_extra = \"-append 'console=ttyS0\"".into(), "hvparams.kvm_extra", "quote"),
        ("ide5", disks(4) + &format!("[instance.ide5.hvparams]\ndisk_type = \"ide\"\ncdrom_image_path = \"{iso}\"\nmachine_version = \"pc\""), "hvparams.disk_type", "IDE positions"),
        ("fdq35", format!("[instance.fdq35.hvparams]\nfloppy_image_path = \"{floppy}\"\nmachine_version = \"q35\""), "hvparams.floppy_image_path", "no floppy controller"),
        ("pci", disks(1) + "[instance.pci.hvparams]\nkvm_pci_reservations = 2", "hvparams.kvm_pci_reservations", "virtio-balloon-pci"),
        ("lsi9", disks(9) + "[instance.lsi9.hvparams]\ndisk_type = \"scsi-hd\"", "hvparams.disk_type", "SCSI ids 0..7"),
        ("isapc", "[instance.isapc.hvparams]\nmachine_version = \"isapc\"".into(), "hvparams.machine_version", "no PCI PC board"),
        ("passthrough", disks(1) + "[instance.passthrough.hvparams]\ndisk_type = \"scsi-block\"", "disk[0].path", "must be a SCSI device"),
    ];
    let node = node_toml(dir.path(), "") + "vhost_net = false\n";
    for (name, body, field, rule) in &table {
        let body = body.replace("NAME", name);
        let (ok, v) = validate(
            &format!("{node}\n[instance.{name}]\nmemory = 128\n{body}\n"),
            &[],
        );
        assert!(!ok, "{name} was accepted");
        let errs = problems(&v, name);
        assert!(
            errs.iter().any(|(f, r)| f == field && r.contains(rule)),
            "{name}: expected {field} / {rule:?}, got {errs:?}"
        );
    }
    // What QEMU starts is accepted: SCSI disks with a SCSI cdrom (defect 2), three IDE
    // devices (defect 3), a floppy boot on i440fx (defect 4).
    let ok_table = [
        disks(2) + &format!("[instance.NAME.hvparams]\ndisk_type = \"scsi-hd\"\ncdrom_disk_type = \"scsi-cd\"\ncdrom_image_path = \"{iso}\""),
        disks(2) + &format!("[instance.NAME.hvparams]\ndisk_type = \"ide\"\ncdrom_disk_type = \"ide\"\ncdrom_image_path = \"{iso}\""),
        format!("[instance.NAME.hvparams]\nboot_order = \"floppy\"\nfloppy_image_path = \"{floppy}\"\nmachine_version = \"pc\""),
    ];
    for (i, body) in ok_table.iter().enumerate() {
        let name = format!("ok{i}");
        let body = body.replace("NAME", &name);
        let (ok, v) = validate(
            &format!("{node}\n[instance.{name}]\nmemory = 128\n{body}\n"),
            &[],
        );
        assert!(ok, "{name}: {v:#}");
    }
}

#[test]
fn per_key_and_combination_errors_are_listed_together() {
    // Issue 7, defect 8: a per-key error used to hide the combination errors.
    let dir = tempfile::tempdir().unwrap();
    let node = node_toml(dir.path(), "") + "vhost_net = false\n";
    let body = "[instance.mixed.hvparams]\ndisk_cache = \"fast\"\nserial_speed = 12345\nboot_order = \"cdrom\"\nsecurity_model = \"user\"\nvnc_x509_verify = true\n";
    let (ok, v) = validate(
        &format!("{node}\n[instance.mixed]\nmemory = 128\n{body}"),
        &[],
    );
    assert!(!ok);
    let fields: Vec<String> = problems(&v, "mixed").into_iter().map(|(f, _)| f).collect();
    for f in [
        "hvparams.disk_cache",
        "hvparams.serial_speed",
        "hvparams.cdrom_image_path",
        "hvparams.security_domain",
        "hvparams.vnc_x509_verify",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
    }
}

#[test]
fn what_ganeti_3_0_accepts_is_accepted() {
    // Issue 7, defect 9.
    let dir = tempfile::tempdir().unwrap();
    let node = node_toml(dir.path(), "") + "vhost_net = false\n";
    // QEMU's curl module (Debian: qemu-block-extra), wherever this distribution keeps modules.
    let lib_dirs = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("qemu")))
        .chain(["/usr/lib/qemu", "/usr/lib64/qemu"].map(std::path::PathBuf::from));
    let curl = lib_dirs
        .into_iter()
        .any(|d| d.join("block-curl.so").exists());
    for (name, hv) in [
        ("discard", "disk_discard = \"default\""),
        ("speed", "serial_console = false\nserial_speed = 12345"),
        (
            "ftp",
            "cdrom_image_path = \"ftp://mirror.example/debian.iso\"",
        ),
        (
            "ftps",
            "cdrom2_image_path = \"ftps://mirror.example/debian.iso\"",
        ),
        (
            "http",
            "cdrom_image_path = \"http://mirror.example/debian.iso\"",
        ),
    ] {
        let (ok, v) = validate(
            &format!("{node}\n[instance.{name}]\nmemory = 128\n[instance.{name}.hvparams]\n{hv}\n"),
            &[],
        );
        if name.starts_with("ftp") || name == "http" {
            // A URL needs QEMU's curl driver (Debian: qemu-block-extra, which CI installs).
            assert_eq!(ok, curl, "{name}: {v:#}");
            if !curl {
                assert!(problems(&v, name)
                    .iter()
                    .any(|(_, r)| r.contains("qemu-block-extra")));
            }
        } else {
            assert!(ok, "{name}: {v:#}");
        }
    }
}
