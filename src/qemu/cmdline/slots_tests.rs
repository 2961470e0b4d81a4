//! Golden tests of device placement: each defect found against Ganeti 3.0.2 and QEMU 7.2
//! (issue 7) as the piece of argv that was wrong, for whole families where a family exists.
//! That QEMU really starts these argvs is `tests/acceptance.rs`'s job.

use super::tests::{build_with, hv, s, spec};
use super::*;
use crate::model::hvparams::HvValue;
use crate::model::spec::{DiskFormat, DiskSpec, NicMode, NicSpec};

/// The command line with `disks` disks and `nics` user-mode NICs, booting by `boot_order`
/// (no kernel).
fn with(
    over: &[(&str, HvValue)],
    disks: usize,
    nics: usize,
) -> Result<CommandLine, Vec<FieldError>> {
    let mut over = over.to_vec();
    over.insert(0, ("kernel_path", s("")));
    let (o, h) = hv(&over);
    let mut sp = spec(o);
    sp.disks = (0..disks)
        .map(|i| DiskSpec {
            path: format!("/d{i}").into(),
            format: DiskFormat::Raw,
            readonly: false,
        })
        .collect();
    sp.nics = (0..nics)
        .map(|i| NicSpec {
            mode: NicMode::User,
            link: String::new(),
            mac: format!("52:54:00:00:00:{i:02x}"),
            ip: None,
        })
        .collect();
    let host = Host {
        nics: vec![NicBackend::User; nics],
        ..Host::default()
    };
    build_with(&sp, &h, &host)
}

/// The `-device` values, in order.
fn devices(cl: &CommandLine) -> Vec<&str> {
    cl.argv
        .windows(2)
        .filter(|w| w[0] == "-device")
        .map(|w| w[1].as_str())
        .collect()
}

fn device<'a>(cl: &'a CommandLine, id: &str) -> &'a str {
    let tag = format!(",id={id},");
    devices(cl)
        .into_iter()
        .find(|d| d.contains(&tag))
        .unwrap_or_else(|| panic!("no device {id} in {:?}", cl.argv))
}

fn fields(errs: &[FieldError]) -> Vec<&str> {
    errs.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn a_bootable_cdrom_of_a_paravirtual_type_goes_on_ide() {
    // Defect 1: default disk_type (paravirtual) and cdrom_disk_type "" or "paravirtual".
    for cdrom_type in ["", "paravirtual"] {
        let cl = with(
            &[
                ("boot_order", s("cdrom")),
                ("cdrom_image_path", s("/iso/boot.iso")),
                ("cdrom_disk_type", s(cdrom_type)),
            ],
            1,
            0,
        )
        .unwrap();
        assert_eq!(
            device(&cl, "cdrom1-dev"),
            "ide-cd,id=cdrom1-dev,drive=cdrom1,bus=ide.0,unit=0,bootindex=1"
        );
        assert!(!device(&cl, "disk0").contains("bootindex"));
    }
    // Not bootable: a paravirtual cdrom stays virtio (Ganeti's if=virtio).
    let cl = with(
        &[
            ("cdrom_image_path", s("/iso/a.iso")),
            ("cdrom2_image_path", s("/iso/b.iso")),
            ("boot_order", s("cdrom")),
        ],
        0,
        0,
    )
    .unwrap();
    assert_eq!(
        device(&cl, "cdrom2-dev"),
        "virtio-blk-pci,id=cdrom2-dev,drive=cdrom2"
    );
    // A scsi-cd boots as it is.
    let cl = with(
        &[
            ("boot_order", s("cdrom")),
            ("cdrom_image_path", s("/iso/boot.iso")),
            ("cdrom_disk_type", s("scsi-cd")),
        ],
        0,
        0,
    )
    .unwrap();
    assert_eq!(
        device(&cl, "cdrom1-dev"),
        "scsi-cd,id=cdrom1-dev,drive=cdrom1,bus=scsi.0,channel=0,scsi-id=0,lun=0,bootindex=1"
    );
}

#[test]
fn scsi_cdroms_take_ids_after_the_disks() {
    // Defect 2: every SCSI device has its own id; disks keep Ganeti's 0..n.
    for (disk_type, disks) in [
        ("scsi-hd", 0),
        ("scsi-hd", 1),
        ("scsi-hd", 3),
        ("paravirtual", 2),
    ] {
        let cl = with(
            &[
                ("disk_type", s(disk_type)),
                ("cdrom_disk_type", s("scsi-cd")),
                ("cdrom_image_path", s("/iso/a.iso")),
                ("cdrom2_image_path", s("/iso/b.iso")),
            ],
            disks,
            0,
        )
        .unwrap();
        let ids: Vec<&str> = devices(&cl)
            .into_iter()
            .filter_map(|d| d.split(",scsi-id=").nth(1))
            .map(|rest| rest.split(',').next().unwrap())
            .collect();
        let scsi_disks = if disk_type == "scsi-hd" { disks } else { 0 };
        let mut expected: Vec<String> = (0..scsi_disks + 2).map(|i| i.to_string()).collect();
        // cdroms come first in the argv, with the ids after the disks'.
        expected.rotate_left(scsi_disks);
        assert_eq!(ids, expected, "{disk_type} x{disks}: {:?}", cl.argv);
        assert_eq!(
            devices(&cl)
                .iter()
                .filter(|d| d.ends_with(",id=scsi"))
                .count(),
            1
        );
    }
}

#[test]
fn ide_devices_spread_over_buses_and_units_cdroms_first() {
    // Defect 3: (disks, IDE cdroms) as Ganeti 3.0.2's `-drive if=ide` places them.
    let pc = [
        "ide.0,unit=0",
        "ide.0,unit=1",
        "ide.1,unit=0",
        "ide.1,unit=1",
    ];
    for (disks, cdroms) in [(3, 0), (2, 1), (1, 2), (2, 2), (4, 0), (0, 2)] {
        let mut over = vec![("disk_type", s("ide")), ("cdrom_disk_type", s("ide"))];
        if cdroms > 0 {
            over.push(("cdrom_image_path", s("/iso/a.iso")));
        }
        if cdroms > 1 {
            over.push(("cdrom2_image_path", s("/iso/b.iso")));
        }
        let cl = with(&over, disks, 0).unwrap();
        let mut ids: Vec<String> = (1..=cdroms).map(|i| format!("cdrom{i}-dev")).collect();
        ids.extend((0..disks).map(|i| format!("disk{i}")));
        for (id, at) in ids.iter().zip(pc) {
            assert!(
                device(&cl, id).contains(&format!(",bus={at}")),
                "{id} at {at}: {:?}",
                cl.argv
            );
        }
    }
    // A fifth IDE device does not fit a PC; q35 has six buses of one unit.
    let errs = with(
        &[
            ("disk_type", s("ide")),
            ("cdrom_image_path", s("/iso/a.iso")),
        ],
        4,
        0,
    )
    .unwrap_err();
    assert_eq!(fields(&errs), ["disk_type"]);
    assert!(errs[0].rule.contains("4 IDE positions"), "{}", errs[0].rule);
    let q35 = [("disk_type", s("ide")), ("machine_version", s("q35"))];
    let cl = with(&q35, 6, 0).unwrap();
    assert!(device(&cl, "disk5").contains(",bus=ide.5,unit=0"));
    assert_eq!(fields(&with(&q35, 7, 0).unwrap_err()), ["disk_type"]);
}

#[test]
fn floppy_boots_through_its_controller_and_q35_has_none() {
    // Defect 4.
    let cl = with(
        &[
            ("boot_order", s("floppy")),
            ("floppy_image_path", s("/f.img")),
        ],
        1,
        0,
    )
    .unwrap();
    let a = cl.argv.join(" ");
    assert!(
        a.contains("-device floppy,unit=0,drive=floppy1 -global isa-fdc.bootindexA=1"),
        "{a}"
    );
    assert!(!a.contains("floppy1,bootindex"), "{a}");
    for machine in ["q35", "pc-q35-7.2"] {
        let errs = with(
            &[
                ("floppy_image_path", s("/f.img")),
                ("machine_version", s(machine)),
            ],
            0,
            0,
        )
        .unwrap_err();
        assert_eq!(fields(&errs), ["floppy_image_path"]);
        assert!(errs[0].rule.contains("no floppy controller"));
    }
}

#[test]
fn ide_disks_reserve_pci_slots_so_nics_keep_ganetis_addresses() {
    // Defect 6: two IDE disks take slots 12 and 13 (unused), the NIC gets 0xe as in Ganeti.
    let cl = with(&[("disk_type", s("ide"))], 2, 1).unwrap();
    assert!(
        device(&cl, "nic0").contains(",bus=pci.0,addr=0xe"),
        "{:?}",
        cl.argv
    );
    assert_eq!(
        cl.slots.disks,
        vec![
            Slot::Ide {
                bus: 0,
                unit: 0,
                pci: Some(12)
            },
            Slot::Ide {
                bus: 0,
                unit: 1,
                pci: Some(13)
            }
        ]
    );
    // With few reservations the unused IDE slots even keep the NIC off the balloon's slot.
    let cl = with(
        &[
            ("disk_type", s("ide")),
            ("kvm_pci_reservations", HvValue::Int(3)),
        ],
        1,
        1,
    )
    .unwrap();
    assert!(device(&cl, "nic0").contains("addr=0x4"), "{:?}", cl.argv);
}

#[test]
fn pci_collisions_with_qemus_own_placement_are_errors() {
    // Defect 7: QEMU places VGA (slot 2 on pc) and the balloon (next free) itself.
    let errs = with(&[("kvm_pci_reservations", HvValue::Int(3))], 1, 0).unwrap_err();
    assert_eq!(fields(&errs), ["kvm_pci_reservations"]);
    assert!(
        errs[0].rule.contains("virtio-balloon-pci balloon0") && errs[0].rule.contains("at least 4"),
        "{}",
        errs[0].rule
    );
    // Without VGA the balloon moves down a slot, and 3 is enough.
    assert!(with(
        &[
            ("kvm_pci_reservations", HvValue::Int(3)),
            ("vga", s("none"))
        ],
        1,
        0
    )
    .is_ok());
    // A PCI sound card and the guest agent's virtio-serial are QEMU's too.
    let errs = with(
        &[
            ("kvm_pci_reservations", HvValue::Int(4)),
            ("soundhw", s("hda")),
            ("use_guest_agent", HvValue::Bool(true)),
        ],
        0,
        1,
    )
    .unwrap_err();
    assert!(errs[0].rule.contains("at least 6"), "{}", errs[0].rule);
    // q35: VGA at 1, the -usb controllers at 0x1d, ICH9 at 0x1f: disks and NICs end at 0x1c.
    let q35 = [
        ("machine_version", s("q35")),
        ("kvm_pci_reservations", HvValue::Int(14)),
    ];
    assert!(with(&q35, 15, 0).is_ok());
    let errs = with(&q35, 16, 0).unwrap_err();
    assert_eq!(fields(&errs), ["kvm_pci_reservations"]);
    assert!(
        errs[0].rule.contains("leaves no PCI slot for disk[15]"),
        "{}",
        errs[0].rule
    );
    // kvm_extra's own device on a slot QEMU keeps.
    let errs = with(
        &[
            ("machine_version", s("q35")),
            ("kvm_extra", s("-device virtio-rng-pci,addr=0x1d")),
        ],
        0,
        0,
    )
    .unwrap_err();
    assert_eq!(fields(&errs), ["kvm_extra"]);
    // Functions of one slot are different places; `driver=` spells a device too.
    assert!(with(
        &[(
            "kvm_extra",
            s("-device virtio-rng-pci,addr=0x1e.0x0,multifunction=on -device driver=virtio-rng-pci,addr=0x1e.0x1")
        )],
        0,
        0
    )
    .is_ok());
    let errs = with(
        &[("kvm_extra", s("-device driver=virtio-rng-pci,addr=0x2"))],
        0,
        0,
    )
    .unwrap_err();
    assert!(errs[0].rule.contains("the VGA card"), "{}", errs[0].rule);
    // -nodefaults without -vga: no VGA card, so the balloon takes slot 2 and 3 is free.
    assert!(with(
        &[(
            "kvm_extra",
            s("-nodefaults -device virtio-rng-pci,addr=0x3")
        )],
        0,
        0
    )
    .is_ok());
    let errs = with(&[("kvm_extra", s("-device virtio-rng-pci,addr=0x3"))], 0, 0).unwrap_err();
    assert!(
        errs[0].rule.contains("virtio-balloon-pci"),
        "{}",
        errs[0].rule
    );
    // A kvm_extra device on a slot kvmd gives is blamed on kvm_extra.
    let errs = with(&[("kvm_extra", s("-device virtio-rng-pci,addr=0xc"))], 1, 0).unwrap_err();
    assert_eq!(fields(&errs), ["kvm_extra"]);
}

#[test]
fn kvm_extra_that_does_not_split_is_an_error_of_the_build() {
    // Defect 7: found by the builder, which validate now runs.
    let errs = with(&[("kvm_extra", s("-append 'console=ttyS0"))], 0, 0).unwrap_err();
    assert_eq!(fields(&errs), ["kvm_extra"]);
}

#[test]
fn ganeti_3_0_values_are_taken() {
    // Defect 9: disk_discard "default" is QEMU's default (ignore); ftp(s) cdroms.
    let cl = with(&[("disk_discard", s("default"))], 1, 0).unwrap();
    assert!(cl.argv.iter().any(|a| a.contains(",discard=ignore,")));
    for scheme in ["ftp", "ftps"] {
        let cl = with(
            &[(
                "cdrom_image_path",
                s(&format!("{scheme}://mirror.example/a.iso")),
            )],
            0,
            0,
        )
        .unwrap();
        assert!(
            cl.argv.iter().any(|a| a.contains(&format!(
                "file.driver={scheme},file.url={scheme}://mirror.example/a.iso"
            ))),
            "{:?}",
            cl.argv
        );
    }
}

#[test]
fn machines_without_a_pci_pc_board_are_refused() {
    for m in ["microvm", "isapc"] {
        let errs = with(&[("machine_version", s(m))], 0, 0).unwrap_err();
        assert_eq!(fields(&errs), ["machine_version"]);
    }
}
