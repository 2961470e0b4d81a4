//! Disks and NICs on the command line, at the places the slot plan (`slots`) gave them:
//! Ganeti's device names, cache modes, tap backends.
//!
//! Invariant: pure, like the rest of `cmdline`.

use super::{cache_settings, onoff, qemu_escape, Launch, NicBackend, SlotPlan};
use crate::model::field_error::FieldError;
use crate::model::hvparams::key;
use crate::model::spec::{DiskFormat, NicMode};

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

pub(super) fn nic_args(
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

pub(super) fn disk_args(
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
    // Ganeti 3.0's `default` is QEMU's default, ignore (Ganeti 3.1 upgrades it so).
    let discard = match hv.str(key::DISK_DISCARD) {
        "" | "default" => "ignore",
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
