//! Golden tests of the command line: full argvs, reviewed like code.

use super::*;
use crate::model::hvparams::{HvOverrides, HvValue};
use crate::model::name::InstanceName;
use crate::model::spec::{DiskFormat, NicMode};
use crate::model::spec::{DiskSpec, NicSpec};
use std::path::{Path, PathBuf};

/// The real QEMU 7.2 of this project's machines, from recorded output.
pub(crate) fn caps() -> QemuCaps {
    let data = |f: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/qemu-7.2")
                .join(f),
        )
        .unwrap()
    };
    QemuCaps::from_outputs(
        &data("version.txt"),
        &data("help.txt"),
        &data("machine-help.txt"),
        &data("device-help.txt"),
    )
    .unwrap()
}

pub(super) fn hv(over: &[(&str, HvValue)]) -> (HvOverrides, HvParams) {
    let mut o = HvOverrides::new();
    o.insert(
        "kvm_path".into(),
        HvValue::Str("/usr/bin/qemu-system-x86_64".into()),
    );
    o.insert("kernel_path".into(), HvValue::Str("/guest/vmlinux".into()));
    o.insert(
        "initrd_path".into(),
        HvValue::Str("/guest/initramfs.gz".into()),
    );
    for (k, v) in over {
        o.insert(k.to_string(), v.clone());
    }
    let merged = HvParams::merged(&[&o]);
    (o, merged)
}

pub(super) fn spec(o: HvOverrides) -> InstanceSpec {
    InstanceSpec {
        name: InstanceName::parse("web1").unwrap(),
        uuid: "0b8e3c2a-4d5f-8a1b-9c2d-3e4f5a6b7c8d".into(),
        memory: 256,
        min_memory: 256,
        vcpus: 2,
        network_port: None,
        disks: vec![],
        nics: vec![],
        hvparams: o,
        autostart: false,
    }
}

pub(super) fn s(v: &str) -> HvValue {
    HvValue::Str(v.into())
}

pub(super) fn build_with(
    spec: &InstanceSpec,
    hv: &HvParams,
    host: &Host,
) -> Result<CommandLine, Vec<FieldError>> {
    build_on(&caps(), Accel::Tcg, spec, hv, host)
}

/// The command line for a QEMU with capabilities `caps`, run dir `/run/kvmd/web1`.
fn build_on(
    caps: &QemuCaps,
    accel: Accel,
    spec: &InstanceSpec,
    hv: &HvParams,
    host: &Host,
) -> Result<CommandLine, Vec<FieldError>> {
    let paths = RunPaths {
        dir: PathBuf::from("/run/kvmd/web1"),
    };
    build_command_line(&Launch {
        spec,
        hv,
        caps,
        paths: &paths,
        accel,
        host,
    })
}

fn argv(over: &[(&str, HvValue)]) -> String {
    let (o, h) = hv(over);
    build_with(&spec(o), &h, &Host::default())
        .unwrap()
        .argv
        .join(" ")
}

#[test]
fn golden_kernel_boot_with_defaults() {
    assert_eq!(
        argv(&[]),
        "/usr/bin/qemu-system-x86_64 -name web1,debug-threads=on -m 256 -smp 2 \
         -pidfile /run/kvmd/web1/qemu.pid -device virtio-balloon-pci,id=balloon0,free-page-reporting=on \
         -machine pc-i440fx-7.2,accel=tcg -kernel /guest/vmlinux -initrd /guest/initramfs.gz \
         -append root=/dev/vda1 ro console=ttyS0,38400 \
         -monitor unix:/run/kvmd/web1/monitor.sock,server=on,wait=off \
         -chardev socket,id=serial0,path=/run/kvmd/web1/serial.sock,server=on,wait=off,logfile=/run/kvmd/web1/serial.log,logappend=on \
         -serial chardev:serial0 -usb -display none -uuid 0b8e3c2a-4d5f-8a1b-9c2d-3e4f5a6b7c8d \
         -net none -chardev socket,id=qmp0,path=/run/kvmd/web1/qmp.sock,server=on,wait=off -mon chardev=qmp0,mode=control"
    );
}

#[test]
fn golden_exit_on_reboot_no_acpi_no_serial_q35_topology_localtime_extra() {
    let a = argv(&[
        ("reboot_behavior", s("exit")),
        ("acpi", HvValue::Bool(false)),
        ("serial_console", HvValue::Bool(false)),
        ("machine_version", s("q35")),
        ("cpu_cores", HvValue::Int(2)),
        ("cpu_sockets", HvValue::Int(1)),
        ("kvm_extra", s("-device 'pvpanic' -global \"a b\"")),
        ("use_localtime", HvValue::Bool(true)),
        ("cpu_type", s("qemu64,+ssse3")),
        ("vga", s("std")),
        ("keymap", s("de")),
    ]);
    assert!(a.contains("-smp 2,cores=2,sockets=1 "), "{a}");
    // QEMU 7.2 still lists -no-acpi, so Ganeti's choice is kept; q35 resolves to its version.
    assert!(
        a.contains("-no-reboot -no-acpi -machine pc-q35-7.2,accel=tcg -kernel"),
        "{a}"
    );
    assert!(a.contains("-append root=/dev/vda1 ro -monitor"), "{a}");
    assert!(
        a.contains(
            "-serial none -usb -display none -rtc base=localtime -cpu qemu64,+ssse3 -vga std -uuid"
        ),
        "{a}"
    );
    assert!(
        a.contains("-device pvpanic -global a b -k de -net none"),
        "{a}"
    );
}

#[test]
fn acpi_off_without_no_acpi_goes_on_the_machine() {
    let (o, h) = hv(&[("acpi", HvValue::Bool(false))]);
    let mut c = caps();
    c.options.no_acpi = false;
    let cl = build_on(&c, Accel::Kvm, &spec(o), &h, &Host::default()).unwrap();
    assert!(cl
        .argv
        .join(" ")
        .contains("-machine pc-i440fx-7.2,accel=kvm,acpi=off"));
}

#[test]
fn disks_get_pci_slots_from_the_reservation_and_cache_settings() {
    let (o, h) = hv(&[
        ("disk_cache", s("none")),
        ("disk_aio", s("native")),
        ("disk_discard", s("unmap")),
        ("kernel_path", s("")),
    ]);
    let mut sp = spec(o);
    sp.disks.push(DiskSpec {
        path: Path::new("/dev/vg/a").into(),
        format: DiskFormat::Raw,
        readonly: false,
    });
    sp.disks.push(DiskSpec {
        path: Path::new("/srv/b,c.qcow2").into(),
        format: DiskFormat::Qcow2,
        readonly: true,
    });
    let host = Host {
        block_devices: vec![true, false],
        ..Host::default()
    };
    let cl = build_with(&sp, &h, &host).unwrap();
    let a = cl.argv.join(" ");
    assert!(a.contains("-device virtio-blk-pci,id=disk0,drive=disk0,bus=pci.0,addr=0xc,write-cache=on,bootindex=1 -blockdev driver=raw,node-name=disk0,discard=unmap,cache.direct=on,cache.no-flush=off,read-only=off,file.driver=host_device,file.filename=/dev/vg/a,file.aio=native,file.read-only=off,file.auto-read-only=off"), "{a}");
    assert!(a.contains("-device virtio-blk-pci,id=disk1,drive=disk1,bus=pci.0,addr=0xd,write-cache=on -blockdev driver=qcow2,node-name=disk1"), "{a}");
    assert!(
        a.contains("read-only=on,file.driver=file,file.filename=/srv/b,,c.qcow2"),
        "{a}"
    );
    assert_eq!(
        cl.slots.disks,
        vec![
            Slot::Pci {
                bus: "pci.0".into(),
                slot: 12
            },
            Slot::Pci {
                bus: "pci.0".into(),
                slot: 13
            }
        ]
    );
}

#[test]
fn scsi_disks_get_a_controller_and_scsi_ids() {
    let (o, h) = hv(&[
        ("disk_type", s("scsi-hd")),
        ("scsi_controller_type", s("virtio-scsi-pci")),
    ]);
    let mut sp = spec(o);
    for p in ["/a", "/b"] {
        sp.disks.push(DiskSpec {
            path: p.into(),
            format: DiskFormat::Raw,
            readonly: false,
        });
    }
    let cl = build_with(&sp, &h, &Host::default()).unwrap();
    let a = cl.argv.join(" ");
    assert!(a.contains("-pidfile /run/kvmd/web1/qemu.pid -device virtio-scsi-pci,id=scsi -device virtio-balloon-pci"), "{a}");
    assert!(a.contains("-device scsi-hd,id=disk1,drive=disk1,bus=scsi.0,channel=0,scsi-id=1,lun=0,write-cache=on"), "{a}");
    assert_eq!(cl.slots.disks[0], Slot::Scsi { id: 0 });
}

#[test]
fn nics_come_after_disks_and_taps_pass_their_fds() {
    let (o, h) = hv(&[
        ("virtio_net_queues", HvValue::Int(2)),
        ("kvm_pci_reservations", HvValue::Int(8)),
    ]);
    let mut sp = spec(o);
    sp.disks.push(DiskSpec {
        path: "/a".into(),
        format: DiskFormat::Raw,
        readonly: false,
    });
    sp.nics.push(NicSpec {
        mode: NicMode::Bridged,
        link: "br0".into(),
        mac: "52:54:00:00:00:01".into(),
        ip: None,
    });
    sp.nics.push(NicSpec {
        mode: NicMode::User,
        link: String::new(),
        mac: "52:54:00:00:00:02".into(),
        ip: None,
    });
    let host = Host {
        nics: vec![
            NicBackend::Tap {
                fds: vec![7, 8],
                vhost_fds: vec![],
            },
            NicBackend::User,
        ],
        ..Host::default()
    };
    let cl = build_with(&sp, &h, &host).unwrap();
    let a = cl.argv.join(" ");
    assert!(a.contains("-netdev tap,id=nic0,fds=7:8 -device virtio-net-pci,id=nic0,netdev=nic0,mac=52:54:00:00:00:01,bus=pci.0,addr=0x9,mq=on,vectors=6"), "{a}");
    assert!(a.contains("-netdev user,id=nic1 -device virtio-net-pci,id=nic1,netdev=nic1,mac=52:54:00:00:00:02,bus=pci.0,addr=0xa"), "{a}");
    let vh = Host {
        nics: vec![
            NicBackend::Tap {
                fds: vec![7],
                vhost_fds: vec![9],
            },
            NicBackend::User,
        ],
        ..Host::default()
    };
    assert!(build_with(&sp, &h, &vh)
        .unwrap()
        .argv
        .join(" ")
        .contains("-netdev tap,id=nic0,fd=7,vhost=on,vhostfd=9"));
}

#[test]
fn running_out_of_pci_slots_names_the_reservation() {
    let (o, h) = hv(&[("kvm_pci_reservations", HvValue::Int(31))]);
    let mut sp = spec(o);
    for p in ["/a", "/b"] {
        sp.disks.push(DiskSpec {
            path: p.into(),
            format: DiskFormat::Raw,
            readonly: false,
        });
    }
    let errs = build_with(&sp, &h, &Host::default()).unwrap_err();
    assert_eq!(errs[0].field, "kvm_pci_reservations");
}

#[test]
fn cdroms_floppy_and_boot_order() {
    let a = argv(&[
        ("kernel_path", s("")),
        ("cdrom_image_path", s("/iso/a.iso")),
        ("cdrom2_image_path", s("https://mirror/b.iso")),
        ("boot_order", s("cdrom")),
        ("cdrom_disk_type", s("ide")),
        ("floppy_image_path", s("/f.img")),
    ]);
    assert!(a.contains("-blockdev driver=raw,node-name=cdrom1,read-only=on,cache.direct=off,cache.no-flush=on,file.driver=file,file.filename=/iso/a.iso -device ide-cd,id=cdrom1-dev,drive=cdrom1,bus=ide.0,unit=0,bootindex=1"), "{a}");
    assert!(a.contains("node-name=cdrom2,read-only=on,cache.direct=off,cache.no-flush=on,file.driver=https,file.url=https://mirror/b.iso -device ide-cd,id=cdrom2-dev,drive=cdrom2,bus=ide.0,unit=1 "), "{a}");
    assert!(a.contains("-device floppy,unit=0,drive=floppy1 "), "{a}");
    assert!(!a.contains("isa-fdc.bootindexA"), "{a}");
    assert!(!a.contains("-kernel"));
}

#[test]
fn vnc_on_an_address_a_unix_path_and_with_tls() {
    let (o, h) = hv(&[
        ("vnc_bind_address", s("127.0.0.1")),
        ("vnc_tls", HvValue::Bool(true)),
        ("vnc_x509_path", s("/etc/x509")),
        ("vnc_x509_verify", HvValue::Bool(true)),
        ("vnc_password_file", s("/etc/vncpw")),
    ]);
    let mut sp = spec(o);
    sp.network_port = Some(5905);
    let a = build_with(&sp, &h, &Host::default())
        .unwrap()
        .argv
        .join(" ");
    assert!(a.contains("-usb -device usb-tablet -object tls-creds-x509,id=vnctls0,endpoint=server,dir=/etc/x509,verify-peer=yes -vnc 127.0.0.1:5,tls-creds=vnctls0,password=on"), "{a}");
    let a = argv(&[("vnc_bind_address", s("/run/vnc"))]);
    assert!(a.contains("-vnc unix:/run/vnc/web1.vnc"), "{a}");
    let (o, h) = hv(&[("vnc_bind_address", s("0.0.0.0"))]);
    let errs = build_with(&spec(o), &h, &Host::default()).unwrap_err();
    assert_eq!(errs[0].field, "network_port");
}

#[test]
fn spice_with_every_option() {
    let (o, h) = hv(&[
        ("spice_bind", s("0.0.0.0")),
        ("spice_ip_version", HvValue::Int(4)),
        ("spice_use_tls", HvValue::Bool(true)),
        ("spice_image_compression", s("glz")),
        ("spice_jpeg_wan_compression", s("never")),
        ("spice_zlib_glz_wan_compression", s("auto")),
        ("spice_streaming_video", s("filter")),
        ("spice_playback_compression", HvValue::Bool(false)),
        ("soundhw", s("hda")),
    ]);
    let mut sp = spec(o);
    sp.network_port = Some(11000);
    let host = Host {
        spice_cert_dir: Some("/etc/kvmd/spice".into()),
        ..Host::default()
    };
    let a = build_with(&sp, &h, &host).unwrap().argv.join(" ");
    assert!(a.contains("-device virtio-serial-pci,id=spice -device virtserialport,chardev=spicechannel0,name=com.redhat.spice.0 -chardev spicevmc,id=spicechannel0,name=vdagent -spice addr=0.0.0.0,tls-port=11000,x509-cacert-file=/etc/kvmd/spice/spice-ca.pem,x509-key-file=/etc/kvmd/spice/spice.pem,x509-cert-file=/etc/kvmd/spice/spice.pem,tls-ciphers=HIGH:-DES:-3DES:-EXPORT:-DH,ipv4=on,disable-ticketing=on,image-compression=glz,jpeg-wan-compression=never,zlib-glz-wan-compression=auto,streaming-video=filter,playback-compression=off"), "{a}");
    assert!(
        a.contains("-audio driver=spice,model=hda,id=soundhw"),
        "{a}"
    );
    assert!(a.contains("-vga qxl"), "{a}");
}

#[test]
fn security_models_and_chroot_use_runas_and_chroot_on_qemu_7_2() {
    let (o, h) = hv(&[
        ("security_model", s("user")),
        ("security_domain", s("nobody")),
        ("use_chroot", HvValue::Bool(true)),
    ]);
    let host = Host {
        chroot_dir: Some("/run/kvmd/web1/chroot".into()),
        ..Host::default()
    };
    let a = build_with(&spec(o), &h, &host).unwrap().argv.join(" ");
    assert!(
        a.ends_with("mode=control -runas nobody -chroot /run/kvmd/web1/chroot"),
        "{a}"
    );
    let (o, h) = hv(&[
        ("security_model", s("user")),
        ("security_domain", s("nobody")),
        ("use_chroot", HvValue::Bool(true)),
    ]);
    let mut c = caps();
    c.options.run_with = true;
    let cl = build_on(&c, Accel::Kvm, &spec(o), &h, &host).unwrap();
    assert!(cl
        .argv
        .join(" ")
        .ends_with("-run-with user=nobody,chroot=/run/kvmd/web1/chroot"));
}

#[test]
fn guest_agent_usb_devices_mem_path() {
    let a = argv(&[
        ("use_guest_agent", HvValue::Bool(true)),
        ("usb_devices", s("tablet, mouse")),
        ("mem_path", s("/hugepages")),
        ("usb_mouse", s("mouse")),
    ]);
    assert!(a.contains("-mem-path /hugepages -mem-prealloc"), "{a}");
    assert!(a.contains("-usb -device usb-mouse"), "{a}");
    assert!(a.contains("-usbdevice tablet -usbdevice mouse"), "{a}");
    assert!(a.contains("-chardev socket,id=qga0,path=/run/kvmd/web1/qga.sock,server=on,wait=off -device virtio-serial,id=qga0-serial -device virtserialport,bus=qga0-serial.0,chardev=qga0,name=org.qemu.guest_agent.0"), "{a}");
}

#[test]
fn unusable_disk_types_are_refused_by_name() {
    let (o, h) = hv(&[("disk_type", s("mtd"))]);
    let mut sp = spec(o);
    sp.disks.push(DiskSpec {
        path: "/a".into(),
        format: DiskFormat::Raw,
        readonly: false,
    });
    let errs = build_with(&sp, &h, &Host::default()).unwrap_err();
    assert_eq!(errs[0].field, "disk_type");
    assert!(errs[0].rule.contains("not a QEMU device"));
}

#[test]
fn shell_split_handles_quotes() {
    assert_eq!(
        shell_split(r#"a 'b c' "d \"e\"" f\ g"#).unwrap(),
        ["a", "b c", "d \"e\"", "f g"]
    );
    assert_eq!(shell_split("  ").unwrap(), Vec::<String>::new());
    assert!(shell_split("'open").is_err());
}

#[test]
fn a_migration_target_waits_incoming_on_the_sources_machine() {
    let (o, h) = hv(&[("machine_version", s("q35"))]);
    let host = Host {
        incoming: true,
        machine: Some("pc-q35-6.2".into()),
        ..Host::default()
    };
    let cl = build_with(&spec(o), &h, &host).unwrap();
    let a = cl.argv.join(" ");
    assert!(a.contains("-machine pc-q35-6.2,accel=tcg"), "{a}");
    assert!(a.ends_with("-S -incoming defer"), "{a}");
    assert_eq!(cl.machine, "pc-q35-6.2");
}

#[test]
fn q35_gets_its_spare_root_ports_as_functions_of_slot_0x1e_and_pc_none() {
    let (o, h) = hv(&[("machine_version", s("q35"))]);
    let host = Host {
        hotplug_ports: 3,
        ..Host::default()
    };
    let cl = build_with(&spec(o), &h, &host).unwrap();
    let ports: Vec<&String> = cl
        .argv
        .iter()
        .filter(|a| a.starts_with("pcie-root-port"))
        .collect();
    assert_eq!(
        ports,
        [
            "pcie-root-port,id=hotport0,bus=pcie.0,addr=0x1e.0,chassis=1,port=0x10,multifunction=on",
            "pcie-root-port,id=hotport1,bus=pcie.0,addr=0x1e.1,chassis=2,port=0x11",
            "pcie-root-port,id=hotport2,bus=pcie.0,addr=0x1e.2,chassis=3,port=0x12",
        ]
    );
    assert_eq!(cl.slots.hotplug_ports, 3);
    // pc takes plugged devices on pci.0: no ports, whatever the setting.
    let (o, h) = hv(&[("machine_version", s("pc"))]);
    let cl = build_with(&spec(o), &h, &host).unwrap();
    assert!(!cl.argv.iter().any(|a| a.starts_with("pcie-root-port")));
    assert_eq!(cl.slots.hotplug_ports, 0);
    // An operator's device at 0x1e collides with them, and says so.
    let (o, h) = hv(&[
        ("machine_version", s("q35")),
        ("kvm_extra", s("-device e1000,addr=0x1e.1")),
    ]);
    let errs = build_with(&spec(o), &h, &host).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.field == "kvm_extra" && e.rule.contains("hotport1")),
        "{errs:?}"
    );
}
