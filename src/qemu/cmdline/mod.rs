//! Building QEMU's argv: a pure function of (instance, hvparams, probed QEMU, host facts).
//!
//! The order and semantics are Ganeti's (`_GenerateKVMRuntime` then `_ExecuteKVMRuntime`):
//! name, memory, smp, pidfile, SCSI controller, balloon, reboot, ACPI, machine, cdroms and
//! floppy, kernel, mem-path, monitor, serial, USB, display (VNC/SPICE/none), sound, rtc, cpu,
//! vga, USB devices, uuid, guest agent, `kvm_extra`; then keymap, NICs, QMP, disks, `-S` and
//! the security model. Where kvmd deliberately differs from Ganeti the reason is in
//! docs/hvparams.md ("Differences from Ganeti"). QEMU always starts with `-S`: kvmd applies what
//! must happen before the guest runs (vCPU pinning, passwords), then sends `cont` unless the
//! start was `--paused`.
//!
//! Devices get fixed PCI slots from `kvm_pci_reservations` upwards (disks first, then NICs)
//! and SCSI disks fixed SCSI ids: the [`SlotPlan`] is returned with the argv and kept in the
//! runtime file for hotplug.
//!
//! Invariant: no side effects. No file is opened or stat'ed, no interface resolved, no QEMU
//! run: everything from the host arrives in [`Launch`] and [`QemuCaps`].

use crate::model::field_error::FieldError;
use crate::model::hvparams::kinds::Str;
use crate::model::hvparams::HvParams;
use crate::model::hvparams::{key, Key};
use crate::model::layout::RunPaths;
use crate::model::spec::{Accel, DiskFormat, InstanceSpec, NicMode};
use crate::qemu::caps::QemuCaps;

/// Ganeti's SCSI disk types (they go on the `scsi.0` bus of the SCSI controller).
pub const SCSI_DISK_TYPES: &[&str] = &["scsi-generic", "scsi-block", "scsi-hd", "scsi-cd"];

/// How a NIC reaches QEMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicBackend {
    /// QEMU user-mode networking.
    User,
    /// A tap kvmd opened: its queue fds (and vhost fds), inherited by QEMU.
    Tap { fds: Vec<i32>, vhost_fds: Vec<i32> },
}

/// Facts about the host the command line needs, gathered by the start path.
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// Per disk: is it a block device (`host_device`) rather than a file?
    pub block_devices: Vec<bool>,
    /// Per NIC, in order.
    pub nics: Vec<NicBackend>,
    /// `vnc_bind_address` resolved to an IP when it names an interface.
    pub vnc_address: Option<String>,
    /// `spice_bind` resolved to an IP when it names an interface.
    pub spice_address: Option<String>,
    /// The chroot directory, when `use_chroot`.
    pub chroot_dir: Option<String>,
    /// User name for `security_model = pool` (the uid picked from the pool).
    pub pool_user: Option<String>,
    /// Where SPICE's TLS certificates live.
    pub spice_cert_dir: Option<String>,
}

/// The inputs of one QEMU command line.
pub struct Launch<'a> {
    pub spec: &'a InstanceSpec,
    pub hv: &'a HvParams,
    pub caps: &'a QemuCaps,
    pub paths: &'a RunPaths,
    pub accel: Accel,
    pub host: &'a Host,
}

/// Where a device sits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Slot {
    /// A fixed slot on the root PCI bus (`pci.0`, or `pcie.0` on q35).
    Pci { bus: String, slot: u8 },
    /// A SCSI id on `scsi.0`.
    Scsi { id: u8 },
    /// Placed by QEMU (IDE, ISA).
    Auto,
}

impl Slot {
    fn device_props(&self) -> String {
        match self {
            Slot::Pci { bus, slot } => format!(",bus={bus},addr={slot:#x}"),
            Slot::Scsi { id } => format!(",bus=scsi.0,channel=0,scsi-id={id},lun=0"),
            Slot::Auto => String::new(),
        }
    }
}

/// Device placement of one instance (kept in the runtime file).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotPlan {
    pub disks: Vec<Slot>,
    pub nics: Vec<Slot>,
}

/// The generated command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    pub argv: Vec<String>,
    pub slots: SlotPlan,
    /// The concrete machine type (aliases resolved), pinned in the runtime file.
    pub machine: String,
}

/// Escape a value for QEMU's `key=value,...` option syntax (a comma is doubled).
pub fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// Ganeti's disk cache modes as (device write-cache, cache.direct, cache.no-flush).
pub fn cache_settings(disk_cache: &str) -> (bool, bool, bool) {
    match disk_cache {
        "none" => (true, true, false),
        "writethrough" => (false, false, false),
        _ => (true, false, false), // "default" and "writeback"
    }
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The QEMU device of a Ganeti disk type, or why there is none.
pub fn disk_driver(disk_type: &str) -> Result<&'static str, String> {
    Ok(match disk_type {
        "paravirtual" => "virtio-blk-pci",
        "ide" => "ide-hd",
        "scsi-hd" => "scsi-hd",
        "scsi-block" => "scsi-block",
        "scsi-generic" => "scsi-generic",
        "scsi-cd" => "scsi-cd",
        other => return Err(format!("{other:?} is not a QEMU device (Ganeti passes it through and QEMU refuses it); use paravirtual, ide or scsi-hd")),
    })
}

/// The QEMU device of a Ganeti NIC type.
pub fn nic_driver(nic_type: &str) -> &str {
    match nic_type {
        "paravirtual" => "virtio-net-pci",
        other => other,
    }
}

/// Assign PCI slots (disks, then NICs, from `kvm_pci_reservations`) and SCSI ids.
pub fn plan_slots(
    spec: &InstanceSpec,
    hv: &HvParams,
    machine: &str,
) -> Result<SlotPlan, FieldError> {
    let q35 = machine.contains("q35");
    let bus = if q35 { "pcie.0" } else { "pci.0" };
    // q35 keeps slot 0x1f for its ICH9 functions.
    let last: u8 = if q35 { 30 } else { 31 };
    let mut next = hv.int(key::KVM_PCI_RESERVATIONS) as u8;
    let mut pci = |what: &str| -> Result<Slot, FieldError> {
        if next > last {
            return Err(FieldError::new(
                "kvm_pci_reservations",
                hv.int(key::KVM_PCI_RESERVATIONS).to_string(),
                format!(
                    "leaves no PCI slot for {what} (slots {}..{last} are for disks and NICs)",
                    hv.int(key::KVM_PCI_RESERVATIONS)
                ),
            ));
        }
        next += 1;
        Ok(Slot::Pci {
            bus: bus.into(),
            slot: next - 1,
        })
    };
    let disk_type = hv.str(key::DISK_TYPE);
    let mut scsi_id = 0u8;
    let mut plan = SlotPlan::default();
    for i in 0..spec.disks.len() {
        plan.disks.push(if SCSI_DISK_TYPES.contains(&disk_type) {
            scsi_id += 1;
            Slot::Scsi { id: scsi_id - 1 }
        } else if disk_type == "paravirtual" {
            pci(&format!("disk[{i}]"))?
        } else {
            Slot::Auto
        });
    }
    for i in 0..spec.nics.len() {
        plan.nics.push(if hv.str(key::NIC_TYPE) == "ne2k_isa" {
            Slot::Auto
        } else {
            pci(&format!("nic[{i}]"))?
        });
    }
    Ok(plan)
}

/// Build the argv. Errors name the hvparam or field that cannot be expressed; all are returned.
pub fn build_command_line(l: &Launch<'_>) -> Result<CommandLine, Vec<FieldError>> {
    let (spec, hv, caps) = (l.spec, l.hv, l.caps);
    let mut errs = Vec::new();
    let mut a: Vec<String> = Vec::new();
    macro_rules! push {
        ($($x:expr),+ $(,)?) => {{ $( a.push(String::from($x)); )+ }};
    }
    let s = |k: Key<Str>| hv.str(k).to_string();
    let kernel = s(key::KERNEL_PATH);
    let boot = if kernel.is_empty() {
        s(key::BOOT_ORDER)
    } else {
        String::new()
    };

    let machine = match hv.str(key::MACHINE_VERSION) {
        "" => caps.default_machine.clone().unwrap_or_else(|| "pc".into()),
        m => caps.resolve_machine(m).unwrap_or_else(|| m.to_string()),
    };
    let slots = match plan_slots(spec, hv, &machine) {
        Ok(p) => p,
        Err(e) => {
            errs.push(e);
            SlotPlan::default()
        }
    };
    let disk_type = s(key::DISK_TYPE);
    let cdrom_type = match hv.str(key::CDROM_DISK_TYPE) {
        "" => disk_type.clone(),
        t => t.to_string(),
    };
    let uses_scsi = SCSI_DISK_TYPES.contains(&disk_type.as_str()) && !spec.disks.is_empty()
        || cdrom_type == "scsi-cd" && !s(key::CDROM_IMAGE_PATH).is_empty();

    // --- persistent part (Ganeti's _GenerateKVMRuntime) ---
    push!(s(key::KVM_PATH));
    push!(
        "-name",
        if caps.version.0 >= 11 {
            spec.name.to_string()
        } else {
            format!("{},debug-threads=on", spec.name)
        }
    );
    push!("-m", spec.memory.to_string());
    let mut smp = spec.vcpus.to_string();
    for (k, opt) in [
        (key::CPU_CORES, "cores"),
        (key::CPU_THREADS, "threads"),
        (key::CPU_SOCKETS, "sockets"),
    ] {
        if hv.int(k) > 0 {
            smp.push_str(&format!(",{opt}={}", hv.int(k)));
        }
    }
    push!("-smp", smp);
    push!("-pidfile", l.paths.pidfile().display().to_string());
    if uses_scsi {
        push!(
            "-device",
            format!("{},id=scsi", hv.str(key::SCSI_CONTROLLER_TYPE))
        );
    }
    push!("-device", "virtio-balloon-pci,id=balloon0");
    if hv.str(key::REBOOT_BEHAVIOR) == "exit" {
        push!("-no-reboot");
    }
    let acpi_off = !hv.bool(key::ACPI);
    if acpi_off && caps.options.no_acpi {
        push!("-no-acpi");
    }
    let mut machine_opt = format!("{machine},accel={}", l.accel.as_str());
    if acpi_off && !caps.options.no_acpi {
        machine_opt.push_str(",acpi=off");
    }
    push!("-machine", machine_opt);

    // cdroms and floppy
    for (k, id, bootable) in [
        (key::CDROM_IMAGE_PATH, "cdrom1", boot == "cdrom"),
        (key::CDROM2_IMAGE_PATH, "cdrom2", false),
    ] {
        let image = s(k);
        if image.is_empty() {
            continue;
        }
        let file = if let Some(scheme) = ["https", "http"]
            .into_iter()
            .find(|p| image.starts_with(&format!("{p}://")))
        {
            format!("file.driver={scheme},file.url={}", qemu_escape(&image))
        } else {
            format!("file.driver=file,file.filename={}", qemu_escape(&image))
        };
        push!(
            "-blockdev",
            format!(
                "driver=raw,node-name={id},read-only=on,cache.direct=off,cache.no-flush=on,{file}"
            )
        );
        let dev = match cdrom_type.as_str() {
            "ide" => "ide-cd",
            "paravirtual" => "virtio-blk-pci",
            "scsi-cd" | "scsi-hd" | "scsi-block" | "scsi-generic" => "scsi-cd",
            other => {
                errs.push(
                    FieldError::new(
                        "cdrom_disk_type",
                        format!("{other:?}"),
                        "cdroms can be ide, paravirtual or scsi-cd",
                    )
                    .with_allowed(["ide", "paravirtual", "scsi-cd"]),
                );
                "ide-cd"
            }
        };
        let bus = if dev == "scsi-cd" { ",bus=scsi.0" } else { "" };
        push!(
            "-device",
            format!(
                "{dev},id={id}-dev,drive={id}{bus}{}",
                if bootable { ",bootindex=1" } else { "" }
            )
        );
    }
    let floppy = s(key::FLOPPY_IMAGE_PATH);
    if !floppy.is_empty() {
        push!(
            "-blockdev",
            format!(
                "driver=raw,node-name=floppy1,file.driver=file,file.filename={}",
                qemu_escape(&floppy)
            )
        );
        push!(
            "-device",
            format!(
                "floppy,drive=floppy1{}",
                if boot == "floppy" { ",bootindex=1" } else { "" }
            )
        );
    }
    if !kernel.is_empty() {
        push!("-kernel", kernel.clone());
        if !s(key::INITRD_PATH).is_empty() {
            push!("-initrd", s(key::INITRD_PATH));
        }
        let mut append = format!(
            "root={} {}",
            hv.str(key::ROOT_PATH),
            hv.str(key::KERNEL_ARGS)
        );
        if hv.bool(key::SERIAL_CONSOLE) {
            append.push_str(&format!(" console=ttyS0,{}", hv.int(key::SERIAL_SPEED)));
        }
        push!("-append", append.trim());
    }
    if !s(key::MEM_PATH).is_empty() {
        push!("-mem-path", s(key::MEM_PATH), "-mem-prealloc");
    }
    push!(
        "-monitor",
        format!(
            "unix:{},server=on,wait=off",
            qemu_escape(&l.paths.monitor().display().to_string())
        )
    );
    if hv.bool(key::SERIAL_CONSOLE) {
        push!(
            "-chardev",
            format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                qemu_escape(&l.paths.serial().display().to_string()),
                qemu_escape(&l.paths.serial_log().display().to_string())
            ),
            "-serial",
            "chardev:serial0"
        );
    } else {
        push!("-serial", "none");
    }
    let vnc = s(key::VNC_BIND_ADDRESS);
    let spice = s(key::SPICE_BIND);
    let mouse = match (hv.str(key::USB_MOUSE), vnc.is_empty()) {
        ("", false) => "tablet".to_string(),
        (m, _) => m.to_string(),
    };
    // Ganeti always gives the VM a USB controller.
    push!("-usb");
    if !mouse.is_empty() {
        push!("-device", format!("usb-{mouse}"));
    }
    // display
    if !vnc.is_empty() {
        vnc_args(l, &vnc, &mut a, &mut errs);
    } else if !spice.is_empty() {
        spice_args(l, &mut a, &mut errs);
    } else {
        push!("-display", "none");
    }
    let sound = s(key::SOUNDHW);
    if !sound.is_empty() {
        if caps.options.soundhw {
            push!("-soundhw", sound);
        } else {
            let driver = if spice.is_empty() { "none" } else { "spice" };
            push!(
                "-audio",
                format!("driver={driver},model={sound},id=soundhw")
            );
        }
    }
    if hv.bool(key::USE_LOCALTIME) {
        push!("-rtc", "base=localtime");
    }
    if !s(key::CPU_TYPE).is_empty() {
        push!("-cpu", s(key::CPU_TYPE));
    }
    match (hv.str(key::VGA), spice.is_empty()) {
        ("", false) => push!("-vga", "qxl"),
        ("", true) => {}
        (v, _) => push!("-vga", v),
    }
    for dev in hv
        .str(key::USB_DEVICES)
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        push!("-usbdevice", dev);
    }
    push!("-uuid", spec.uuid.clone());
    if hv.bool(key::USE_GUEST_AGENT) {
        push!(
            "-chardev",
            format!(
                "socket,id=qga0,path={},server=on,wait=off",
                qemu_escape(&l.paths.qga().display().to_string())
            ),
            "-device",
            "virtio-serial,id=qga0-serial",
            "-device",
            "virtserialport,bus=qga0-serial.0,chardev=qga0,name=org.qemu.guest_agent.0"
        );
    }
    match shell_split(hv.str(key::KVM_EXTRA)) {
        Ok(extra) => a.extend(extra),
        Err(why) => errs.push(FieldError::new(
            "kvm_extra",
            format!("{:?}", hv.str(key::KVM_EXTRA)),
            why,
        )),
    }

    // --- execute-time part (Ganeti's _ExecuteKVMRuntime) ---
    if !s(key::KEYMAP).is_empty() {
        push!("-k", s(key::KEYMAP));
    }
    nic_args(l, &slots, boot == "network", &mut a, &mut errs);
    push!(
        "-chardev",
        format!(
            "socket,id=qmp0,path={},server=on,wait=off",
            qemu_escape(&l.paths.qmp().display().to_string())
        ),
        "-mon",
        "chardev=qmp0,mode=control"
    );
    disk_args(l, &slots, boot == "disk", &mut a, &mut errs);
    push!("-S");
    security_args(l, &mut a, &mut errs);

    if errs.is_empty() {
        Ok(CommandLine {
            argv: a,
            slots,
            machine,
        })
    } else {
        Err(errs)
    }
}

fn vnc_args(l: &Launch<'_>, bind: &str, a: &mut Vec<String>, errs: &mut Vec<FieldError>) {
    let hv = l.hv;
    if bind.starts_with('/') {
        a.extend([
            "-vnc".into(),
            format!("unix:{}/{}.vnc", qemu_escape(bind), l.spec.name),
        ]);
        return;
    }
    let addr = l
        .host
        .vnc_address
        .clone()
        .unwrap_or_else(|| bind.to_string());
    let Some(port) = l.spec.network_port.filter(|p| *p > 5900) else {
        errs.push(FieldError::new(
            "network_port",
            format!("{:?}", l.spec.network_port),
            "must be set above 5900 when vnc_bind_address is an address (display = port - 5900)",
        ));
        return;
    };
    let display = port - 5900;
    let mut arg = if addr == "0.0.0.0" {
        format!(":{display}")
    } else if addr.contains(':') {
        format!("[{addr}]:{display}")
    } else {
        format!("{addr}:{display}")
    };
    if hv.bool(key::VNC_TLS) {
        let x509 = hv.str(key::VNC_X509_PATH);
        let obj = if x509.is_empty() {
            "tls-creds-anon,id=vnctls0,endpoint=server".to_string()
        } else {
            format!(
                "tls-creds-x509,id=vnctls0,endpoint=server,dir={},verify-peer={}",
                qemu_escape(x509),
                if hv.bool(key::VNC_X509_VERIFY) {
                    "yes"
                } else {
                    "no"
                }
            )
        };
        a.extend(["-object".into(), obj]);
        arg.push_str(",tls-creds=vnctls0");
    }
    if !hv.str(key::VNC_PASSWORD_FILE).is_empty() {
        arg.push_str(",password=on");
    }
    a.extend(["-vnc".into(), arg]);
}

fn spice_args(l: &Launch<'_>, a: &mut Vec<String>, errs: &mut Vec<FieldError>) {
    let hv = l.hv;
    if !l.caps.options.spice {
        errs.push(FieldError::new(
            "spice_bind",
            format!("{:?}", hv.str(key::SPICE_BIND)),
            "this QEMU has no SPICE support (-spice is not in its --help)",
        ));
        return;
    }
    let addr = l
        .host
        .spice_address
        .clone()
        .unwrap_or_else(|| hv.str(key::SPICE_BIND).to_string());
    let Some(port) = l.spec.network_port else {
        errs.push(FieldError::new(
            "network_port",
            "null",
            "must be set when spice_bind is set",
        ));
        return;
    };
    let mut o = format!("addr={addr}");
    if hv.bool(key::SPICE_USE_TLS) {
        let dir = l
            .host
            .spice_cert_dir
            .clone()
            .unwrap_or_else(|| "/etc/kvmd/spice".into());
        o.push_str(&format!(",tls-port={port},x509-cacert-file={dir}/spice-ca.pem,x509-key-file={dir}/spice.pem,x509-cert-file={dir}/spice.pem"));
        if !hv.str(key::SPICE_TLS_CIPHERS).is_empty() {
            o.push_str(&format!(",tls-ciphers={}", hv.str(key::SPICE_TLS_CIPHERS)));
        }
    } else {
        o.push_str(&format!(",port={port}"));
    }
    match hv.int(key::SPICE_IP_VERSION) {
        4 => o.push_str(",ipv4=on"),
        6 => o.push_str(",ipv6=on"),
        _ => {}
    }
    if hv.str(key::SPICE_PASSWORD_FILE).is_empty() {
        o.push_str(",disable-ticketing=on");
    }
    for (k, opt) in [
        (key::SPICE_IMAGE_COMPRESSION, "image-compression"),
        (key::SPICE_JPEG_WAN_COMPRESSION, "jpeg-wan-compression"),
        (
            key::SPICE_ZLIB_GLZ_WAN_COMPRESSION,
            "zlib-glz-wan-compression",
        ),
        (key::SPICE_STREAMING_VIDEO, "streaming-video"),
    ] {
        if !hv.str(k).is_empty() {
            o.push_str(&format!(",{opt}={}", hv.str(k)));
        }
    }
    if !hv.bool(key::SPICE_PLAYBACK_COMPRESSION) {
        o.push_str(",playback-compression=off");
    }
    if hv.bool(key::SPICE_USE_VDAGENT) {
        a.extend([
            "-device".into(),
            "virtio-serial-pci,id=spice".into(),
            "-device".into(),
            "virtserialport,chardev=spicechannel0,name=com.redhat.spice.0".into(),
            "-chardev".into(),
            "spicevmc,id=spicechannel0,name=vdagent".into(),
        ]);
    } else {
        o.push_str(",agent-mouse=off");
    }
    a.extend(["-spice".into(), o]);
}

fn nic_args(
    l: &Launch<'_>,
    slots: &SlotPlan,
    boot_network: bool,
    a: &mut Vec<String>,
    errs: &mut Vec<FieldError>,
) {
    let (spec, hv, caps) = (l.spec, l.hv, l.caps);
    if spec.nics.is_empty() {
        a.extend(["-net".into(), "none".into()]);
        return;
    }
    let driver = nic_driver(hv.str(key::NIC_TYPE));
    if !caps.has_device(driver) {
        errs.push(FieldError::new(
            "nic_type",
            format!("{:?}", hv.str(key::NIC_TYPE)),
            format!("this QEMU has no device {driver:?}"),
        ));
    }
    let queues = hv.int(key::VIRTIO_NET_QUEUES);
    for (i, nic) in spec.nics.iter().enumerate() {
        let id = format!("nic{i}");
        let netdev = match l.host.nics.get(i) {
            Some(NicBackend::User) if nic.mode == NicMode::User => format!("user,id={id}"),
            Some(NicBackend::Tap { fds, vhost_fds }) if nic.mode != NicMode::User => {
                let join = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(":");
                let mut n = if fds.len() > 1 {
                    format!("tap,id={id},fds={}", join(fds))
                } else {
                    format!("tap,id={id},fd={}", fds.first().copied().unwrap_or(-1))
                };
                if !vhost_fds.is_empty() {
                    n.push_str(",vhost=on");
                    n.push_str(&if vhost_fds.len() > 1 {
                        format!(",vhostfds={}", join(vhost_fds))
                    } else {
                        format!(",vhostfd={}", vhost_fds[0])
                    });
                }
                n
            }
            other => {
                errs.push(FieldError::new(
                    format!("nic[{i}].mode"),
                    format!("{:?}", nic.mode).to_lowercase(),
                    format!("has no host backend ({other:?})"),
                ));
                continue;
            }
        };
        a.extend(["-netdev".into(), netdev]);
        let mut dev = format!("{driver},id={id},netdev={id},mac={}", nic.mac);
        if let Some(slot) = slots.nics.get(i) {
            dev.push_str(&slot.device_props());
        }
        let multiqueue =
            matches!(l.host.nics.get(i), Some(NicBackend::Tap { fds, .. }) if fds.len() > 1);
        if multiqueue && driver == "virtio-net-pci" {
            dev.push_str(&format!(",mq=on,vectors={}", 2 * queues + 2));
        }
        if boot_network && i == 0 {
            dev.push_str(",bootindex=1");
        }
        a.extend(["-device".into(), dev]);
    }
}

fn disk_args(
    l: &Launch<'_>,
    slots: &SlotPlan,
    boot_disk: bool,
    a: &mut Vec<String>,
    errs: &mut Vec<FieldError>,
) {
    let (spec, hv, caps) = (l.spec, l.hv, l.caps);
    if spec.disks.is_empty() {
        return;
    }
    let driver = match disk_driver(hv.str(key::DISK_TYPE)) {
        Ok(d) => d,
        Err(why) => {
            errs.push(FieldError::new(
                "disk_type",
                format!("{:?}", hv.str(key::DISK_TYPE)),
                why,
            ));
            return;
        }
    };
    if !caps.has_device(driver) {
        errs.push(FieldError::new(
            "disk_type",
            format!("{:?}", hv.str(key::DISK_TYPE)),
            format!("this QEMU has no device {driver:?}"),
        ));
    }
    let (write_cache, direct, no_flush) = cache_settings(hv.str(key::DISK_CACHE));
    let aio = match hv.str(key::DISK_AIO) {
        "" => "threads",
        other => other,
    };
    let discard = match hv.str(key::DISK_DISCARD) {
        "" => "ignore",
        other => other,
    };
    for (i, d) in spec.disks.iter().enumerate() {
        let id = format!("disk{i}");
        let ro = onoff(d.readonly);
        let mut dev = format!("{driver},id={id},drive={id}");
        if let Some(slot) = slots.disks.get(i) {
            dev.push_str(&slot.device_props());
        }
        if !matches!(driver, "scsi-generic" | "scsi-block" | "scsi-cd") {
            dev.push_str(&format!(",write-cache={}", onoff(write_cache)));
        }
        if i == 0 && boot_disk {
            dev.push_str(",bootindex=1");
        }
        a.extend(["-device".into(), dev]);
        let fmt = match d.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        let file_driver = if l.host.block_devices.get(i).copied().unwrap_or(false) {
            "host_device"
        } else {
            "file"
        };
        let mut bd = format!(
            "driver={fmt},node-name={id},discard={discard},cache.direct={},cache.no-flush={},read-only={ro},file.driver={file_driver},file.filename={},file.aio={aio},file.read-only={ro}",
            onoff(direct),
            onoff(no_flush),
            qemu_escape(&d.path.display().to_string()),
        );
        if caps.options.auto_read_only {
            bd.push_str(",file.auto-read-only=off");
        }
        a.extend(["-blockdev".into(), bd]);
    }
}

fn security_args(l: &Launch<'_>, a: &mut Vec<String>, errs: &mut Vec<FieldError>) {
    let (hv, caps) = (l.hv, l.caps);
    let chroot = l
        .host
        .chroot_dir
        .clone()
        .filter(|_| hv.bool(key::USE_CHROOT));
    if hv.bool(key::USE_CHROOT) && chroot.is_none() {
        errs.push(FieldError::new(
            "use_chroot",
            "true",
            "needs a chroot directory (internal: none was prepared)",
        ));
    }
    let user = match hv.str(key::SECURITY_MODEL) {
        "user" => Some(hv.str(key::SECURITY_DOMAIN).to_string()),
        "pool" => match &l.host.pool_user {
            Some(u) => Some(u.clone()),
            None => {
                errs.push(FieldError::new(
                    "security_model",
                    "\"pool\"",
                    "needs a free uid from node.uid_pool",
                ));
                None
            }
        },
        _ => None,
    };
    if user.is_none() && chroot.is_none() {
        return;
    }
    if caps.options.run_with {
        let mut parts = Vec::new();
        if let Some(u) = &user {
            parts.push(format!("user={}", qemu_escape(u)));
        }
        if let Some(c) = &chroot {
            parts.push(format!("chroot={}", qemu_escape(c)));
        }
        a.extend(["-run-with".into(), parts.join(",")]);
        return;
    }
    if let Some(u) = user {
        if !caps.options.runas {
            errs.push(FieldError::new(
                "security_model",
                format!("{:?}", hv.str(key::SECURITY_MODEL)),
                "this QEMU has neither -run-with nor -runas",
            ));
        }
        a.extend(["-runas".into(), u]);
    }
    if let Some(c) = chroot {
        if !caps.options.chroot {
            errs.push(FieldError::new(
                "use_chroot",
                "true",
                "this QEMU has neither -run-with nor -chroot",
            ));
        }
        a.extend(["-chroot".into(), c]);
    }
}

/// Split a string like a POSIX shell would (quotes and backslashes), without running one.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("has an unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err("ends inside a double quote".into()),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("has an unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(ch) => cur.push(ch),
                    None => return Err("ends with a backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hvparams::{HvOverrides, HvValue};
    use crate::model::name::InstanceName;
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

    fn hv(over: &[(&str, HvValue)]) -> (HvOverrides, HvParams) {
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

    fn spec(o: HvOverrides) -> InstanceSpec {
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

    fn s(v: &str) -> HvValue {
        HvValue::Str(v.into())
    }

    fn build_with(
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
            caps: &caps(),
            paths: &paths,
            accel: Accel::Tcg,
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
             -pidfile /run/kvmd/web1/qemu.pid -device virtio-balloon-pci,id=balloon0 \
             -machine pc-i440fx-7.2,accel=tcg -kernel /guest/vmlinux -initrd /guest/initramfs.gz \
             -append root=/dev/vda1 ro console=ttyS0,38400 \
             -monitor unix:/run/kvmd/web1/monitor.sock,server=on,wait=off \
             -chardev socket,id=serial0,path=/run/kvmd/web1/serial.sock,server=on,wait=off,logfile=/run/kvmd/web1/serial.log,logappend=on \
             -serial chardev:serial0 -usb -display none -uuid 0b8e3c2a-4d5f-8a1b-9c2d-3e4f5a6b7c8d \
             -net none -chardev socket,id=qmp0,path=/run/kvmd/web1/qmp.sock,server=on,wait=off -mon chardev=qmp0,mode=control -S"
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
        let paths = RunPaths {
            dir: PathBuf::from("/r"),
        };
        let cl = build_command_line(&Launch {
            spec: &spec(o),
            hv: &h,
            caps: &c,
            paths: &paths,
            accel: Accel::Kvm,
            host: &Host::default(),
        })
        .unwrap();
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
        assert!(a.contains("-blockdev driver=raw,node-name=cdrom1,read-only=on,cache.direct=off,cache.no-flush=on,file.driver=file,file.filename=/iso/a.iso -device ide-cd,id=cdrom1-dev,drive=cdrom1,bootindex=1"), "{a}");
        assert!(a.contains("node-name=cdrom2,read-only=on,cache.direct=off,cache.no-flush=on,file.driver=https,file.url=https://mirror/b.iso -device ide-cd,id=cdrom2-dev,drive=cdrom2 "), "{a}");
        assert!(a.contains("-device floppy,drive=floppy1 "), "{a}");
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
            a.ends_with("-S -runas nobody -chroot /run/kvmd/web1/chroot"),
            "{a}"
        );
        let (o, h) = hv(&[
            ("security_model", s("user")),
            ("security_domain", s("nobody")),
            ("use_chroot", HvValue::Bool(true)),
        ]);
        let mut c = caps();
        c.options.run_with = true;
        let paths = RunPaths {
            dir: PathBuf::from("/r"),
        };
        let cl = build_command_line(&Launch {
            spec: &spec(o),
            hv: &h,
            caps: &c,
            paths: &paths,
            accel: Accel::Kvm,
            host: &host,
        })
        .unwrap();
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
}
