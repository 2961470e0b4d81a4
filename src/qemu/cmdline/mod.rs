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
//! Every disk, cdrom and NIC gets its place from the [`SlotPlan`] (PCI slot, SCSI id, IDE bus
//! and unit), returned with the argv and kept in the runtime file for hotplug; then QEMU's own
//! PCI placement is replayed over the finished argv ([`check_pci`]), so a collision is an error
//! here and not a QEMU that refuses to start. `kvmctl validate` runs this same builder.
//!
//! Invariant: no side effects. No file is opened or stat'ed, no interface resolved, no QEMU
//! run: everything from the host arrives in [`Launch`] and [`QemuCaps`].

use crate::model::field_error::FieldError;
use crate::model::hvparams::kinds::Str;
use crate::model::hvparams::HvParams;
use crate::model::hvparams::{key, Key};
use crate::model::layout::RunPaths;
use crate::model::spec::{Accel, InstanceSpec};
use crate::qemu::caps::QemuCaps;

mod devices;
mod display;
mod security;
mod slots;
#[cfg(test)]
mod slots_tests;
#[cfg(test)]
pub(crate) mod tests;

use devices::{disk_args, nic_args};
pub use devices::{disk_driver, nic_driver};
use display::{spice_args, vnc_args};
use security::security_args;
pub use security::shell_split;
pub use slots::{
    cdroms, check_pci, hotplug_port_device, plan_slots, Board, Cdrom, Slot, SlotPlan,
    HOTPLUG_PORT_SLOT, MAX_HOTPLUG_PORTS,
};

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
    /// Per disk: is it a device node (`host_device`: a block device or a SCSI generic one)
    /// rather than a file?
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
    /// A listening socket for QMP that kvmd bound at the QMP path and QEMU inherits
    /// (`fd=N`): kvmd connects before QEMU even accepts, so it never polls for the socket.
    /// `None`: QEMU binds the path itself.
    pub qmp_fd: Option<i32>,
    /// Start with the vCPUs stopped (`-S`): something must happen over QMP before the guest
    /// runs (vCPU pinning, display passwords), or the start asked for a paused guest.
    pub stopped_at_start: bool,
    /// A migration target: `-incoming defer` (and `-S`: the guest runs only when the
    /// migration is finalized).
    pub incoming: bool,
    /// The concrete machine type to run instead of the one the hvparams name: a migration
    /// target runs exactly the source's.
    pub machine: Option<String>,
    /// Spare `pcie-root-port`s for hot-plug on q35 (functions of slot 0x1e); ignored on pc,
    /// whose `pci.0` takes plugged devices directly.
    pub hotplug_ports: u8,
}

/// The inputs of one QEMU command line.
#[derive(Debug)]
pub struct Launch<'a> {
    pub spec: &'a InstanceSpec,
    pub hv: &'a HvParams,
    pub caps: &'a QemuCaps,
    pub paths: &'a RunPaths,
    pub accel: Accel,
    pub host: &'a Host,
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

/// Build the argv. Errors name the hvparam or field that cannot be expressed, or the slot
/// QEMU would find taken ([`check_pci`]); all are returned.
pub fn build_command_line(l: &Launch<'_>) -> Result<CommandLine, Vec<FieldError>> {
    let cl = build_unchecked(l)?;
    let board = Board::of(&cl.machine).unwrap_or(Board::I440fx);
    let extra = shell_split(l.hv.str(key::KVM_EXTRA)).unwrap_or_default();
    let errs = check_pci(board, &cl.argv, &extra, l.hv, l.caps);
    if errs.is_empty() {
        Ok(cl)
    } else {
        Err(errs)
    }
}

/// The argv without the replay of QEMU's PCI placement: what `tests/acceptance.rs` starts
/// to show that QEMU refuses what [`check_pci`] refuses. Starts use [`build_command_line`].
pub fn build_unchecked(l: &Launch<'_>) -> Result<CommandLine, Vec<FieldError>> {
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

    let machine = match (&l.host.machine, hv.str(key::MACHINE_VERSION)) {
        (Some(pinned), _) => pinned.clone(),
        (None, "") => caps.default_machine.clone().unwrap_or_else(|| "pc".into()),
        (None, m) => caps.resolve_machine(m).unwrap_or_else(|| m.to_string()),
    };
    let board = Board::of(&machine);
    if board.is_none() {
        errs.push(FieldError::new(
            key::MACHINE_VERSION.name(),
            format!("{machine:?}"),
            "has no PCI PC board (pc-i440fx-*, pc-q35-*) for kvmd's PCI devices (the balloon, virtio disks and NICs)",
        ));
    }
    let board = board.unwrap_or(Board::I440fx);
    let cdroms = cdroms(hv).unwrap_or_else(|e| {
        errs.push(e);
        Vec::new()
    });
    let mut slots = plan_slots(spec, hv, board, &cdroms).unwrap_or_else(|e| {
        errs.extend(e);
        SlotPlan::default()
    });
    if board == Board::Q35 {
        slots.hotplug_ports = l.host.hotplug_ports.min(MAX_HOTPLUG_PORTS);
    }
    let uses_scsi = SCSI_DISK_TYPES.contains(&hv.str(key::DISK_TYPE)) && !spec.disks.is_empty()
        || cdroms.iter().any(|c| c.device == "scsi-cd");

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
    // Free page reporting (QEMU 5.1+) hands pages the guest freed back to the host.
    push!(
        "-device",
        if caps.at_least(5, 1) {
            "virtio-balloon-pci,id=balloon0,free-page-reporting=on"
        } else {
            "virtio-balloon-pci,id=balloon0"
        }
    );
    for i in 0..slots.hotplug_ports {
        push!("-device", hotplug_port_device(i));
    }
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
    for (c, slot) in cdroms.iter().zip(&slots.cdroms) {
        let scheme = crate::qemu::caps::URL_DRIVERS
            .iter()
            .find(|p| c.image.starts_with(&format!("{p}://")));
        let file = match scheme {
            Some(scheme) => format!("file.driver={scheme},file.url={}", qemu_escape(&c.image)),
            None => format!("file.driver=file,file.filename={}", qemu_escape(&c.image)),
        };
        push!(
            "-blockdev",
            format!(
                "driver=raw,node-name={},read-only=on,cache.direct=off,cache.no-flush=on,{file}",
                c.id
            )
        );
        push!(
            "-device",
            format!(
                "{},id={id}-dev,drive={id}{}{}",
                c.device,
                slot.device_props(),
                if c.bootable { ",bootindex=1" } else { "" },
                id = c.id,
            )
        );
    }
    let floppy = s(key::FLOPPY_IMAGE_PATH);
    if !floppy.is_empty() {
        if board == Board::Q35 {
            errs.push(FieldError::new(
                key::FLOPPY_IMAGE_PATH.name(),
                format!("{floppy:?}"),
                format!("q35 machines ({machine}) have no floppy controller; use an i440fx machine (pc) or a cdrom"),
            ));
        }
        push!(
            "-blockdev",
            format!(
                "driver=raw,node-name=floppy1,file.driver=file,file.filename={}",
                qemu_escape(&floppy)
            ),
            "-device",
            "floppy,unit=0,drive=floppy1"
        );
        // A floppy drive has no bootindex of its own: its controller has one per drive.
        if boot == "floppy" {
            push!("-global", "isa-fdc.bootindexA=1");
        }
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
    let extra = shell_split(hv.str(key::KVM_EXTRA)).unwrap_or_else(|why| {
        errs.push(FieldError::new(
            "kvm_extra",
            format!("{:?}", hv.str(key::KVM_EXTRA)),
            why,
        ));
        Vec::new()
    });
    a.extend(extra.iter().cloned());

    // --- execute-time part (Ganeti's _ExecuteKVMRuntime) ---
    if !s(key::KEYMAP).is_empty() {
        push!("-k", s(key::KEYMAP));
    }
    nic_args(l, &slots, boot == "network", &mut a, &mut errs);
    let qmp_socket = match l.host.qmp_fd {
        Some(fd) => format!("fd={fd}"),
        None => format!("path={}", qemu_escape(&l.paths.qmp().display().to_string())),
    };
    push!(
        "-chardev",
        format!("socket,id=qmp0,{qmp_socket},server=on,wait=off"),
        "-mon",
        "chardev=qmp0,mode=control"
    );
    disk_args(l, &slots, boot == "disk", &mut a, &mut errs);
    if l.host.stopped_at_start || l.host.incoming {
        push!("-S");
    }
    if l.host.incoming {
        push!("-incoming", "defer");
    }
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
