//! Boot paths, with real `kvmctl start`s: media built by the test (an El Torito ISO, a floppy,
//! raw disks, each with a boot sector that prints its own marker on the serial port) are
//! booted by SeaBIOS under kvmd, and the serial log shows which medium the firmware booted.
//! Every VM also has a bootable disk, so a cdrom or floppy marker means the boot order
//! was honoured, not that nothing else was bootable. And a tap NIC of a non-paravirtual model
//! starts with `vhost_net` on (vhost is for paravirtual NICs only, as in Ganeti).

mod support;

use std::time::Duration;

use support::*;

/// (instance, hvparams, disks, expected marker)
const CASES: &[(&str, &str, usize, &str)] = &[
    // Defect 1: the default types, a bootable cdrom.
    ("cddefault", "boot_order = \"cdrom\"\ncdrom_image_path = \"@ISO\"", 1, "KVMD-BOOT-CDROM"),
    // Defect 2: SCSI disks plus a SCSI cdrom, booting from the cdrom.
    ("cdscsi", "boot_order = \"cdrom\"\ncdrom_image_path = \"@ISO\"\ndisk_type = \"scsi-hd\"\ncdrom_disk_type = \"scsi-cd\"\nscsi_controller_type = \"virtio-scsi-pci\"", 2, "KVMD-BOOT-CDROM"),
    // Defect 3: three IDE devices (two disks and the cdrom), on q35's AHCI.
    ("cdide", "boot_order = \"cdrom\"\ncdrom_image_path = \"@ISO\"\ndisk_type = \"ide\"\ncdrom_disk_type = \"ide\"", 2, "KVMD-BOOT-CDROM"),
    // Defect 4: floppy boot on i440fx.
    ("floppy", "boot_order = \"floppy\"\nfloppy_image_path = \"@FLOPPY\"\nmachine_version = \"pc\"", 1, "KVMD-BOOT-FLOPPY"),
    // Disk boot on each disk family; three IDE disks on i440fx (both IDE buses).
    ("diskide", "disk_type = \"ide\"\nmachine_version = \"pc\"\ncdrom_image_path = \"@ISO\"", 3, "KVMD-BOOT-DISK"),
    ("diskscsi", "disk_type = \"scsi-hd\"\nscsi_controller_type = \"lsi\"\nmachine_version = \"pc\"", 2, "KVMD-BOOT-DISK"),
    ("diskvirtio", "cdrom_image_path = \"@ISO\"", 1, "KVMD-BOOT-DISK"),
];

#[test]
fn each_boot_path_boots_the_medium_it_names() {
    let media = tempfile::tempdir().unwrap();
    let iso = media.path().join("boot.iso");
    let floppy = media.path().join("boot.img");
    support::images::iso(&iso, "KVMD-BOOT-CDROM");
    support::images::floppy(&floppy, "KVMD-BOOT-FLOPPY");
    let mut instances = String::new();
    for (name, hv, disks, _) in CASES {
        let mut body = String::new();
        for i in 0..*disks {
            let path = media.path().join(format!("{name}-{i}.img"));
            // Only the first disk is bootable: the firmware must pick the one kvmd marked.
            support::images::disk(
                &path,
                if i == 0 {
                    "KVMD-BOOT-DISK"
                } else {
                    "KVMD-BOOT-WRONG"
                },
            );
            body += &format!("[[instance.{name}.disk]]\npath = \"{}\"\n", path.display());
        }
        let hv = hv
            .replace("@ISO", &iso.display().to_string())
            .replace("@FLOPPY", &floppy.display().to_string());
        body += &format!("[instance.{name}.hvparams]\nkernel_path = \"\"\n{hv}\n");
        instances += &instance_toml(name, &body);
    }
    let d = Daemon::start(&instances);
    // Two guests at a time (two cores).
    for pair in CASES.chunks(2) {
        for (name, ..) in pair {
            d.start_vm(name);
        }
        for (name, _, _, marker) in pair {
            wait_for(
                &format!("{name} to print {marker}"),
                Duration::from_secs(60),
                || d.serial_log(name).contains(marker).then_some(()),
            );
            let log = d.serial_log(name);
            assert!(!log.contains("KVMD-BOOT-WRONG"), "{name}: {log}");
            for other in ["KVMD-BOOT-CDROM", "KVMD-BOOT-FLOPPY", "KVMD-BOOT-DISK"] {
                assert!(
                    other == *marker || !log.contains(other),
                    "{name} also booted {other}: {log}"
                );
            }
        }
        for (name, ..) in pair {
            let out = d.kvmctl(&["stop", "--force", name]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn a_tap_nic_of_another_model_starts_with_vhost_net_on_and_gets_no_vhost() {
    // Defect 5: on a host without /dev/vhost-net, kvmd refused such an instance outright.
    let net = free_test_net();
    let br = Bridge::new("v", &format!("{net}.1/24"));
    let inst = instance_toml(
        "e1k",
        &format!("[[instance.e1k.nic]]\nmode = \"bridged\"\nlink = \"{}\"\n[instance.e1k.hvparams]\nnic_type = \"e1000\"\nvhost_net = true\n", br.0),
    );
    let d = Daemon::start(&inst);
    let info = d.start_vm("e1k");
    let pid = info.pid.expect("a running VM has a pid");
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    assert!(argv.contains("-device e1000,id=nic0"), "{argv}");
    assert!(!argv.contains("vhost"), "{argv}");
}
