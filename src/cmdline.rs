//! Building QEMU's argv: a pure function of (instance, hvparams, probed QEMU, paths).
//!
//! Ganeti's order is kept where Ganeti has one (name, memory, smp, pidfile, balloon, reboot,
//! machine, -S, kernel, serial, display, rtc, cpu, uuid, agent, kvm_extra), then kvmd's own
//! QMP socket and the devices. QEMU is always started with `-S`: kvmd applies what must happen
//! before the guest runs, then sends `cont` unless the start was `--paused`.
//!
//! Invariant: no side effects. No file is opened, no QEMU is run; everything probed arrives in
//! [`QemuCaps`]. Golden tests below review the exact output.

use crate::check::FieldError;
use crate::hvparams::HvParams;
use crate::probe::QemuCaps;
use crate::runtime::RunPaths;
use crate::spec::{Accel, DiskFormat, InstanceSpec, NicMode};

/// Hvparams whose QEMU options this version does not generate yet. A non-default value is
/// refused at start rather than silently ignored.
const NOT_YET: &[(&str, &str)] = &[
    ("vnc_bind_address", ""),
    ("spice_bind", ""),
    ("cdrom_image_path", ""),
    ("cdrom2_image_path", ""),
    ("floppy_image_path", ""),
    ("usb_devices", ""),
    ("soundhw", ""),
    ("security_model", "none"),
];

/// The inputs of one QEMU command line.
pub struct Launch<'a> {
    pub spec: &'a InstanceSpec,
    pub hv: &'a HvParams,
    pub caps: &'a QemuCaps,
    pub paths: &'a RunPaths,
    pub accel: Accel,
}

/// Escape a value for QEMU's `key=value,...` option syntax (a comma is doubled).
pub fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// Build the argv. Errors name the hvparam or field that cannot be expressed.
pub fn build_command_line(l: &Launch<'_>) -> Result<Vec<String>, Vec<FieldError>> {
    let (spec, hv) = (l.spec, l.hv);
    let mut errs = Vec::new();
    for (name, default) in NOT_YET {
        let v = hv.str(name);
        if v != *default {
            errs.push(FieldError::new(
                *name,
                format!("{v:?}"),
                "is not supported by this kvmd version yet",
            ));
        }
    }
    if hv.bool("use_chroot") {
        errs.push(FieldError::new(
            "use_chroot",
            "true",
            "is not supported by this kvmd version yet",
        ));
    }
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    push(&[hv.str("kvm_path")]);
    let name = if l.caps.version.0 >= 11 {
        spec.name.to_string()
    } else {
        format!("{},debug-threads=on", spec.name)
    };
    push(&["-name", &name]);
    push(&["-m", &spec.memory.to_string()]);
    let mut smp = spec.vcpus.to_string();
    for (key, opt) in [
        ("cpu_cores", "cores"),
        ("cpu_threads", "threads"),
        ("cpu_sockets", "sockets"),
    ] {
        if hv.int(key) > 0 {
            smp.push_str(&format!(",{opt}={}", hv.int(key)));
        }
    }
    push(&["-smp", &smp]);
    push(&["-pidfile", &l.paths.pidfile().display().to_string()]);
    push(&["-device", "virtio-balloon-pci,id=balloon0"]);
    if hv.str("reboot_behavior") == "exit" {
        push(&["-no-reboot"]);
    }
    let machine = match hv.str("machine_version") {
        "" => l
            .caps
            .default_machine
            .clone()
            .unwrap_or_else(|| "pc".into()),
        m => m.to_string(),
    };
    let mut machine_opt = format!("{machine},accel={}", l.accel.as_str());
    if !hv.bool("acpi") {
        machine_opt.push_str(",acpi=off");
    }
    push(&["-machine", &machine_opt]);
    push(&["-S"]);
    let kernel = hv.str("kernel_path");
    if !kernel.is_empty() {
        push(&["-kernel", kernel]);
        if !hv.str("initrd_path").is_empty() {
            push(&["-initrd", hv.str("initrd_path")]);
        }
        let mut append = format!("root={} {}", hv.str("root_path"), hv.str("kernel_args"));
        if hv.bool("serial_console") {
            append.push_str(&format!(" console=ttyS0,{}", hv.int("serial_speed")));
        }
        push(&["-append", append.trim()]);
    }
    if !hv.str("mem_path").is_empty() {
        push(&["-mem-path", hv.str("mem_path"), "-mem-prealloc"]);
    }
    if hv.bool("serial_console") {
        let chardev = format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            qemu_escape(&l.paths.serial().display().to_string()),
            qemu_escape(&l.paths.serial_log().display().to_string())
        );
        push(&["-chardev", &chardev, "-serial", "chardev:serial0"]);
    } else {
        push(&["-serial", "none"]);
    }
    if !hv.str("keymap").is_empty() {
        push(&["-k", hv.str("keymap")]);
    }
    match hv.str("usb_mouse") {
        "" => {}
        dev => push(&["-usb", "-device", &format!("usb-{dev}")]),
    }
    push(&["-display", "none"]);
    if hv.bool("use_localtime") {
        push(&["-rtc", "base=localtime"]);
    }
    if !hv.str("cpu_type").is_empty() {
        push(&["-cpu", hv.str("cpu_type")]);
    }
    if !hv.str("vga").is_empty() {
        push(&["-vga", hv.str("vga")]);
    }
    push(&["-uuid", &spec.uuid]);
    if hv.bool("use_guest_agent") {
        let chardev = format!(
            "socket,id=qga0,path={},server=on,wait=off",
            qemu_escape(&l.paths.qga().display().to_string())
        );
        push(&[
            "-chardev",
            &chardev,
            "-device",
            "virtio-serial,id=qga0-serial",
            "-device",
            "virtserialport,bus=qga0-serial.0,chardev=qga0,name=org.qemu.guest_agent.0",
        ]);
    }
    match shell_split(hv.str("kvm_extra")) {
        Ok(extra) => a.extend(extra),
        Err(why) => errs.push(FieldError::new(
            "kvm_extra",
            format!("{:?}", hv.str("kvm_extra")),
            why,
        )),
    }
    let qmp = format!(
        "socket,id=qmp0,path={},server=on,wait=off",
        qemu_escape(&l.paths.qmp().display().to_string())
    );
    a.extend([
        "-chardev".into(),
        qmp,
        "-mon".into(),
        "chardev=qmp0,mode=control".into(),
    ]);

    for (i, d) in spec.disks.iter().enumerate() {
        let node = format!("disk{i}");
        let fmt = match d.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        let ro = if d.readonly { "on" } else { "off" };
        let (write_cache, direct, no_flush) = cache_settings(hv.str("disk_cache"));
        let onoff = |b: bool| if b { "on" } else { "off" };
        let aio = match hv.str("disk_aio") {
            "" => "threads",
            other => other,
        };
        a.push("-blockdev".into());
        a.push(format!(
            "driver={fmt},node-name={node},read-only={ro},discard={},cache.direct={},cache.no-flush={},file.driver=file,file.filename={},file.aio={aio}",
            match hv.str("disk_discard") {
                "" => "ignore",
                other => other,
            },
            onoff(direct),
            onoff(no_flush),
            qemu_escape(&d.path.display().to_string()),
        ));
        let mut dev = format!(
            "virtio-blk-pci,id={node}-dev,drive={node},write-cache={}",
            onoff(write_cache)
        );
        if i == 0 && kernel.is_empty() && hv.str("boot_order") == "disk" {
            dev.push_str(",bootindex=1");
        }
        a.extend(["-device".into(), dev]);
        if hv.str("disk_type") != "paravirtual" {
            errs.push(FieldError::new(
                "disk_type",
                format!("{:?}", hv.str("disk_type")),
                "only paravirtual disks are supported by this kvmd version yet",
            ));
        }
    }
    if !spec.nics.is_empty() && hv.str("nic_type") != "paravirtual" {
        errs.push(FieldError::new(
            "nic_type",
            format!("{:?}", hv.str("nic_type")),
            "only paravirtual NICs are supported by this kvmd version yet",
        ));
    }
    if spec.nics.is_empty() {
        a.extend(["-net".into(), "none".into()]);
    }
    for (i, n) in spec.nics.iter().enumerate() {
        match n.mode {
            NicMode::User => {
                a.extend(["-netdev".into(), format!("user,id=nic{i}")]);
                a.extend([
                    "-device".into(),
                    format!("virtio-net-pci,id=nic{i}-dev,netdev=nic{i},mac={}", n.mac),
                ]);
            }
            other => errs.push(
                FieldError::new(
                    format!("nic[{i}].mode"),
                    format!("{other:?}").to_lowercase(),
                    "only user-mode NICs are supported by this kvmd version yet",
                )
                .with_allowed(["user"]),
            ),
        }
    }
    if errs.is_empty() {
        Ok(a)
    } else {
        Err(errs)
    }
}

/// Ganeti's disk cache modes as (device write-cache, cache.direct, cache.no-flush).
pub fn cache_settings(disk_cache: &str) -> (bool, bool, bool) {
    match disk_cache {
        "none" => (true, true, false),
        "writethrough" => (false, false, false),
        _ => (true, false, false), // "default" and "writeback"
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
    use crate::hvparams::{HvOverrides, HvValue};
    use crate::name::InstanceName;
    use crate::spec::{DiskSpec, NicSpec};
    use std::path::{Path, PathBuf};

    fn caps() -> QemuCaps {
        QemuCaps {
            version: (7, 2, 22),
            version_text: "QEMU emulator version 7.2.22".into(),
            default_machine: Some("pc-i440fx-7.2".into()),
        }
    }

    fn spec(over: &[(&str, HvValue)]) -> (InstanceSpec, HvParams) {
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
        let spec = InstanceSpec {
            name: InstanceName::parse("web1").unwrap(),
            uuid: "0b8e3c2a-4d5f-8a1b-9c2d-3e4f5a6b7c8d".into(),
            memory: 256,
            vcpus: 2,
            disks: vec![],
            nics: vec![],
            hvparams: o.clone(),
            autostart: false,
        };
        (spec, HvParams::merged(&[&o]))
    }

    fn build(spec: &InstanceSpec, hv: &HvParams) -> Result<Vec<String>, Vec<FieldError>> {
        let paths = RunPaths {
            dir: PathBuf::from("/run/kvmd/web1"),
        };
        build_command_line(&Launch {
            spec,
            hv,
            caps: &caps(),
            paths: &paths,
            accel: Accel::Tcg,
        })
    }

    #[test]
    fn golden_kernel_boot_with_defaults() {
        let (s, hv) = spec(&[]);
        let argv = build(&s, &hv).unwrap().join(" ");
        assert_eq!(
            argv,
            "/usr/bin/qemu-system-x86_64 -name web1,debug-threads=on -m 256 -smp 2 \
             -pidfile /run/kvmd/web1/qemu.pid -device virtio-balloon-pci,id=balloon0 \
             -machine pc-i440fx-7.2,accel=tcg -S -kernel /guest/vmlinux -initrd /guest/initramfs.gz \
             -append root=/dev/vda1 ro console=ttyS0,38400 \
             -chardev socket,id=serial0,path=/run/kvmd/web1/serial.sock,server=on,wait=off,logfile=/run/kvmd/web1/serial.log,logappend=on \
             -serial chardev:serial0 -display none -uuid 0b8e3c2a-4d5f-8a1b-9c2d-3e4f5a6b7c8d \
             -chardev socket,id=qmp0,path=/run/kvmd/web1/qmp.sock,server=on,wait=off -mon chardev=qmp0,mode=control \
             -net none"
        );
    }

    #[test]
    fn golden_exit_on_reboot_no_acpi_no_serial_machine_and_extra() {
        let (s, hv) = spec(&[
            ("reboot_behavior", HvValue::Str("exit".into())),
            ("acpi", HvValue::Bool(false)),
            ("serial_console", HvValue::Bool(false)),
            ("machine_version", HvValue::Str("q35".into())),
            ("cpu_cores", HvValue::Int(2)),
            (
                "kvm_extra",
                HvValue::Str("-device 'pvpanic' -global \"a b\"".into()),
            ),
            ("use_localtime", HvValue::Bool(true)),
        ]);
        let argv = build(&s, &hv).unwrap();
        let joined = argv.join(" ");
        assert!(joined.contains("-smp 2,cores=2 "));
        assert!(joined.contains("-no-reboot -machine q35,accel=tcg,acpi=off -S"));
        assert!(joined.contains("-append root=/dev/vda1 ro -serial none"));
        assert!(joined.contains("-rtc base=localtime"));
        let i = argv.iter().position(|x| x == "-global").unwrap();
        assert_eq!(argv[i + 1], "a b");
        assert_eq!(argv[i - 1], "pvpanic");
    }

    #[test]
    fn disks_and_user_nics() {
        let (mut s, hv) = spec(&[]);
        s.disks.push(DiskSpec {
            path: Path::new("/srv/a,b.img").into(),
            format: DiskFormat::Raw,
            readonly: true,
        });
        s.nics.push(NicSpec {
            mode: NicMode::User,
            link: String::new(),
            mac: "52:54:00:00:00:01".into(),
            ip: None,
        });
        let joined = build(&s, &hv).unwrap().join(" ");
        assert!(joined.contains("-blockdev driver=raw,node-name=disk0,read-only=on,discard=ignore,cache.direct=off,cache.no-flush=off,file.driver=file,file.filename=/srv/a,,b.img,file.aio=threads -device virtio-blk-pci,id=disk0-dev,drive=disk0,write-cache=on "));
        assert!(joined.ends_with("-netdev user,id=nic0 -device virtio-net-pci,id=nic0-dev,netdev=nic0,mac=52:54:00:00:00:01"));
    }

    #[test]
    fn disk_cache_modes_follow_ganeti() {
        let (mut s, hv) = spec(&[
            ("disk_cache", HvValue::Str("none".into())),
            ("disk_aio", HvValue::Str("native".into())),
            ("disk_discard", HvValue::Str("unmap".into())),
        ]);
        s.disks.push(DiskSpec {
            path: Path::new("/dev/vg/a").into(),
            format: DiskFormat::Raw,
            readonly: false,
        });
        let joined = build(&s, &hv).unwrap().join(" ");
        assert!(joined.contains("discard=unmap,cache.direct=on,cache.no-flush=off,file.driver=file,file.filename=/dev/vg/a,file.aio=native"), "{joined}");
        assert!(joined.contains("write-cache=on"));
        assert_eq!(cache_settings("writethrough"), (false, false, false));
    }

    #[test]
    fn unsupported_settings_are_refused_by_name() {
        let (mut s, hv) = spec(&[("vnc_bind_address", HvValue::Str("127.0.0.1".into()))]);
        s.nics.push(NicSpec {
            mode: NicMode::Bridged,
            link: "br0".into(),
            mac: "52:54:00:00:00:01".into(),
            ip: None,
        });
        let errs = build(&s, &hv).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["vnc_bind_address", "nic[0].mode"]);
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
