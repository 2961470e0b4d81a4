//! The checks of an instance that need no host: Ganeti's syntax rules (every hvparam and every
//! combination), the cpu mask against the vCPU count, and what a probed QEMU offers (machine
//! types, devices, SPICE, io_uring, security options). Every problem is reported, each naming
//! the field, the value and the rule.
//!
//! Invariant: pure. Host facts (the CPU count) and QEMU's capabilities come in as arguments;
//! checks that look at the host live in `host::validate`.

use crate::model::field_error::FieldError;
use crate::model::hvparams::kinds::Str;
use crate::model::hvparams::{self, HvParams};
use crate::model::hvparams::{key, Key};
use crate::model::pinning;
use crate::model::spec::InstanceSpec;
use crate::qemu::caps::QemuCaps;
use crate::qemu::cmdline::{disk_driver, nic_driver};

/// The syntax check (pure) plus the cpu mask against the vCPU count and host CPUs.
pub fn syntax(spec: &InstanceSpec, hv: &HvParams, host_cpus: u32) -> Vec<FieldError> {
    let mut errs: Vec<FieldError> = hvparams::check_syntax(hv)
        .into_iter()
        .map(|e| e.under("hvparams"))
        .collect();
    if let Ok(mask) = hvparams::parse_cpu_mask(hv.str(key::CPU_MASK)) {
        if let Err(rule) = pinning::check_mask(&mask, spec.vcpus, host_cpus) {
            errs.push(FieldError::new(
                "hvparams.cpu_mask",
                format!("{:?}", hv.str(key::CPU_MASK)),
                rule,
            ));
        }
    }
    errs
}

/// Checks against what this QEMU offers.
pub fn qemu(spec: &InstanceSpec, hv: &HvParams, caps: &QemuCaps) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let val = |k: Key<Str>| format!("{:?}", hv.str(k));
    let m = hv.str(key::MACHINE_VERSION);
    if !m.is_empty() && caps.resolve_machine(m).is_none() {
        errs.push(
            FieldError::new(
                key::MACHINE_VERSION.field(),
                val(key::MACHINE_VERSION),
                format!("is not a machine type of this QEMU ({})", caps.version_text),
            )
            .with_allowed(
                caps.machines
                    .keys()
                    .take(12)
                    .chain(std::iter::once(&"...".to_string())),
            ),
        );
    }
    if !hv.str(key::SPICE_BIND).is_empty() && !caps.options.spice {
        errs.push(FieldError::new(
            key::SPICE_BIND.field(),
            val(key::SPICE_BIND),
            "this QEMU has no SPICE support",
        ));
    }
    if hv.str(key::DISK_AIO) == "io_uring" && caps.version.0 < 5 {
        errs.push(FieldError::new(
            key::DISK_AIO.field(),
            val(key::DISK_AIO),
            format!(
                "io_uring needs QEMU 5 or newer; this is {}.{}",
                caps.version.0, caps.version.1
            ),
        ));
    }
    if !spec.disks.is_empty() {
        match disk_driver(hv.str(key::DISK_TYPE)) {
            Ok(d) if !caps.has_device(d) => errs.push(FieldError::new(
                key::DISK_TYPE.field(),
                val(key::DISK_TYPE),
                format!("this QEMU has no device {d:?}"),
            )),
            Ok(_) => {}
            Err(why) => errs.push(FieldError::new(
                key::DISK_TYPE.field(),
                val(key::DISK_TYPE),
                why,
            )),
        }
    }
    if !spec.nics.is_empty() && !caps.has_device(nic_driver(hv.str(key::NIC_TYPE))) {
        errs.push(FieldError::new(
            key::NIC_TYPE.field(),
            val(key::NIC_TYPE),
            format!(
                "this QEMU has no device {:?}",
                nic_driver(hv.str(key::NIC_TYPE))
            ),
        ));
    }
    let ctrl = match hv.str(key::SCSI_CONTROLLER_TYPE) {
        "lsi" => "lsi53c895a",
        other => other,
    };
    if !caps.has_device(ctrl)
        && crate::qemu::cmdline::SCSI_DISK_TYPES.contains(&hv.str(key::DISK_TYPE))
    {
        errs.push(FieldError::new(
            key::SCSI_CONTROLLER_TYPE.field(),
            val(key::SCSI_CONTROLLER_TYPE),
            format!("this QEMU has no device {ctrl:?}"),
        ));
    }
    for k in [key::CDROM_IMAGE_PATH, key::CDROM2_IMAGE_PATH] {
        let scheme = hv.str(k).split_once("://").map(|(s, _)| s);
        let missing = |d: &str| {
            caps.url_drivers
                .as_ref()
                .is_some_and(|have| !have.contains(d))
        };
        if let Some(s) = scheme.filter(|s| crate::qemu::caps::URL_DRIVERS.contains(s)) {
            if missing(s) {
                errs.push(FieldError::new(
                    k.field(),
                    val(k),
                    format!("this QEMU cannot read {s}:// URLs (its curl block driver is not installed; on Debian: qemu-block-extra)"),
                ));
            }
        }
    }
    let security = hv.str(key::SECURITY_MODEL) != "none" || hv.bool(key::USE_CHROOT);
    let needs_runas = hv.str(key::SECURITY_MODEL) == "user";
    if security && needs_runas && !caps.options.run_with && !caps.options.runas {
        errs.push(FieldError::new(
            key::SECURITY_MODEL.field(),
            val(key::SECURITY_MODEL),
            "this QEMU can neither -run-with nor -runas",
        ));
    }
    errs
}
