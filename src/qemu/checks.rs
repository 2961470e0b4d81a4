//! The checks of an instance that need no host: Ganeti's syntax rules (every hvparam and every
//! combination), the cpu mask against the vCPU count, and what a probed QEMU offers (machine
//! types, devices, SPICE, io_uring, security options). Every problem is reported, each naming
//! the field, the value and the rule.
//!
//! Invariant: pure. Host facts (the CPU count) and QEMU's capabilities come in as arguments;
//! checks that look at the host live in `host::validate`.

use crate::model::field_error::FieldError;
use crate::model::hvparams::{self, HvParams};
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
    if let Ok(mask) = hvparams::parse_cpu_mask(hv.str("cpu_mask")) {
        if let Err(rule) = pinning::check_mask(&mask, spec.vcpus, host_cpus) {
            errs.push(FieldError::new(
                "hvparams.cpu_mask",
                format!("{:?}", hv.str("cpu_mask")),
                rule,
            ));
        }
    }
    errs
}

/// Checks against what this QEMU offers.
pub fn qemu(spec: &InstanceSpec, hv: &HvParams, caps: &QemuCaps) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let hvf = |k: &str| format!("hvparams.{k}");
    let val = |k: &str| format!("{:?}", hv.str(k));
    let m = hv.str("machine_version");
    if !m.is_empty() && caps.resolve_machine(m).is_none() {
        errs.push(
            FieldError::new(
                hvf("machine_version"),
                val("machine_version"),
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
    if !hv.str("spice_bind").is_empty() && !caps.options.spice {
        errs.push(FieldError::new(
            hvf("spice_bind"),
            val("spice_bind"),
            "this QEMU has no SPICE support",
        ));
    }
    if hv.str("disk_aio") == "io_uring" && caps.version.0 < 5 {
        errs.push(FieldError::new(
            hvf("disk_aio"),
            val("disk_aio"),
            format!(
                "io_uring needs QEMU 5 or newer; this is {}.{}",
                caps.version.0, caps.version.1
            ),
        ));
    }
    if !spec.disks.is_empty() {
        match disk_driver(hv.str("disk_type")) {
            Ok(d) if !caps.has_device(d) => errs.push(FieldError::new(
                hvf("disk_type"),
                val("disk_type"),
                format!("this QEMU has no device {d:?}"),
            )),
            Ok(_) => {}
            Err(why) => errs.push(FieldError::new(hvf("disk_type"), val("disk_type"), why)),
        }
    }
    if !spec.nics.is_empty() && !caps.has_device(nic_driver(hv.str("nic_type"))) {
        errs.push(FieldError::new(
            hvf("nic_type"),
            val("nic_type"),
            format!(
                "this QEMU has no device {:?}",
                nic_driver(hv.str("nic_type"))
            ),
        ));
    }
    let ctrl = match hv.str("scsi_controller_type") {
        "lsi" => "lsi53c895a",
        other => other,
    };
    if !caps.has_device(ctrl)
        && crate::qemu::cmdline::SCSI_DISK_TYPES.contains(&hv.str("disk_type"))
    {
        errs.push(FieldError::new(
            hvf("scsi_controller_type"),
            val("scsi_controller_type"),
            format!("this QEMU has no device {ctrl:?}"),
        ));
    }
    let security = hv.str("security_model") != "none" || hv.bool("use_chroot");
    if security
        && !caps.options.run_with
        && !(caps.options.runas || !hv.str("security_model").eq("user"))
    {
        errs.push(FieldError::new(
            hvf("security_model"),
            val("security_model"),
            "this QEMU can neither -run-with nor -runas",
        ));
    }
    errs
}
