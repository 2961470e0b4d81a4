//! Checking an instance against this node (Ganeti's `ValidateParameters`): the files and
//! directories its hvparams name exist, the user exists, this QEMU offers the machine type,
//! the devices and SPICE, io_uring has QEMU ≥ 5, `/dev/vhost-net` exists when `vhost_net` is
//! on for tap NICs, bind addresses are addresses or existing interfaces. With the syntax check
//! ([`crate::hvparams::check_syntax`]) this is what `kvmctl validate` and every start run;
//! every problem is reported, each naming the field, the value and the rule.
//!
//! Invariant: reads the host (file system, interfaces, users); changes nothing.

use std::net::IpAddr;
use std::path::Path;

use crate::check::FieldError;
use crate::cmdline::{disk_driver, nic_driver};
use crate::hvparams::{self, HvParams};
use crate::pinning;
use crate::probe::QemuCaps;
use crate::spec::{InstanceSpec, NicMode, NodeConfig};

/// The syntax check (pure) plus the cpu mask against the vCPU count and host CPUs.
pub fn syntax(spec: &InstanceSpec, hv: &HvParams) -> Vec<FieldError> {
    let mut errs: Vec<FieldError> = hvparams::check_syntax(hv)
        .into_iter()
        .map(|e| e.under("hvparams"))
        .collect();
    if let Ok(mask) = hvparams::parse_cpu_mask(hv.str("cpu_mask")) {
        if let Err(rule) = pinning::check_mask(&mask, spec.vcpus, host_cpus()) {
            errs.push(FieldError::new(
                "hvparams.cpu_mask",
                format!("{:?}", hv.str("cpu_mask")),
                rule,
            ));
        }
    }
    errs
}

pub fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Checks that need the file system but not QEMU (run before probing it).
pub fn files(spec: &InstanceSpec, hv: &HvParams) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let hvf = |k: &str| format!("hvparams.{k}");
    let val = |k: &str| format!("{:?}", hv.str(k));
    for key in [
        "kvm_path",
        "kernel_path",
        "initrd_path",
        "floppy_image_path",
        "vnc_password_file",
        "spice_password_file",
    ] {
        let p = hv.str(key);
        if !p.is_empty() && !Path::new(p).is_file() {
            errs.push(FieldError::new(
                hvf(key),
                val(key),
                "must name an existing file",
            ));
        }
    }
    for key in ["cdrom_image_path", "cdrom2_image_path"] {
        let p = hv.str(key);
        let url = p.starts_with("http://") || p.starts_with("https://");
        if !p.is_empty() && !url && !(p.starts_with('/') && Path::new(p).is_file()) {
            errs.push(FieldError::new(
                hvf(key),
                val(key),
                "must name an existing file (absolute path) or an http(s) URL",
            ));
        }
    }
    for key in ["vnc_x509_path", "mem_path"] {
        let p = hv.str(key);
        if !p.is_empty() && !Path::new(p).is_dir() {
            errs.push(FieldError::new(
                hvf(key),
                val(key),
                "must name an existing directory",
            ));
        }
    }
    let vnc = hv.str("vnc_bind_address");
    if vnc.starts_with('/') && !Path::new(vnc).is_dir() {
        errs.push(FieldError::new(
            hvf("vnc_bind_address"),
            val("vnc_bind_address"),
            "a path must name an existing directory (the socket is DIR/NAME.vnc)",
        ));
    } else if !vnc.is_empty()
        && !vnc.starts_with('/')
        && vnc.parse::<IpAddr>().is_err()
        && interface_address(vnc, 4).is_none()
    {
        errs.push(FieldError::new(hvf("vnc_bind_address"), val("vnc_bind_address"), "must be an IP address, an interface with an IPv4 address, or an absolute directory path"));
    }
    let spice = hv.str("spice_bind");
    if !spice.is_empty()
        && spice.parse::<IpAddr>().is_err()
        && interface_address(spice, hv.int("spice_ip_version")).is_none()
    {
        errs.push(FieldError::new(
            hvf("spice_bind"),
            val("spice_bind"),
            "must be an IP address or an existing interface with an address",
        ));
    }
    if let Ok(ip) = spice.parse::<IpAddr>() {
        let v = hv.int("spice_ip_version");
        if v == 4 && ip.is_ipv6() || v == 6 && ip.is_ipv4() {
            errs.push(FieldError::new(
                hvf("spice_ip_version"),
                v.to_string(),
                format!("does not match the address family of spice_bind {spice}"),
            ));
        }
    }
    if hv.str("security_model") == "user" {
        let user = hv.str("security_domain");
        if !user.is_empty() && nix::unistd::User::from_name(user).ok().flatten().is_none() {
            errs.push(FieldError::new(
                hvf("security_domain"),
                val("security_domain"),
                "must name an existing user",
            ));
        }
    }
    let taps = spec.nics.iter().any(|n| n.mode != NicMode::User);
    if taps && hv.bool("vhost_net") && !crate::net::vhost_available() {
        errs.push(FieldError::new(
            hvf("vhost_net"),
            "true",
            "needs /dev/vhost-net, which this host does not have (set vhost_net = false)",
        ));
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        let needs_link = matches!(nic.mode, NicMode::Bridged | NicMode::Openvswitch);
        if needs_link && nic.link.is_empty() {
            errs.push(FieldError::new(
                format!("nic[{i}].link"),
                "\"\"",
                "must name the bridge or switch for this mode",
            ));
        } else if nic.mode == NicMode::Bridged
            && !Path::new("/sys/class/net")
                .join(&nic.link)
                .join("bridge")
                .is_dir()
        {
            errs.push(FieldError::new(
                format!("nic[{i}].link"),
                format!("{:?}", nic.link),
                "must name an existing Linux bridge",
            ));
        }
        if nic.mode == NicMode::Routed && nic.ip.is_none() {
            errs.push(FieldError::new(
                format!("nic[{i}].ip"),
                "null",
                "is needed by routed mode (the host route points at it)",
            ));
        }
    }
    for (i, d) in spec.disks.iter().enumerate() {
        if !d.path.exists() {
            errs.push(FieldError::new(
                format!("disk[{i}].path"),
                format!("{:?}", d.path.display().to_string()),
                "must name an existing file or block device",
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
    if !caps.has_device(ctrl) && crate::cmdline::SCSI_DISK_TYPES.contains(&hv.str("disk_type")) {
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

/// Everything: syntax, files, QEMU. `caps` is `None` when QEMU could not be probed (that error
/// is then reported by the caller).
pub fn all(spec: &InstanceSpec, node: &NodeConfig, caps: Option<&QemuCaps>) -> Vec<FieldError> {
    let hv = spec.effective_hvparams(node);
    let mut errs = syntax(spec, &hv);
    errs.extend(files(spec, &hv));
    if let Some(c) = caps {
        errs.extend(qemu(spec, &hv, c));
    }
    errs
}

/// The first address of `family` (4, 6, or 0 for either, IPv4 first) on interface `name`.
pub fn interface_address(name: &str, family: i64) -> Option<String> {
    let addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|i| i.interface_name == name)
        .filter_map(|i| {
            let a = i.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    let v4 = addrs.iter().find(|a| a.is_ipv4());
    let v6 = addrs.iter().find(|a| a.is_ipv6());
    match family {
        4 => v4,
        6 => v6,
        _ => v4.or(v6),
    }
    .map(|a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_to_its_address() {
        assert_eq!(interface_address("lo", 4).as_deref(), Some("127.0.0.1"));
        assert_eq!(interface_address("doesnotexist0", 0), None);
    }
}

/// The result of validating every instance of a config file.
pub struct Report {
    /// Per instance, every problem (empty = valid).
    pub instances: Vec<(String, Vec<FieldError>)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.instances.iter().all(|(_, e)| e.is_empty())
    }
}

/// Validate every instance of a loaded config (blocking: probes each QEMU binary once).
/// `syntax_only` skips the node checks.
pub fn config_report(config: &crate::config::Config, syntax_only: bool) -> Report {
    let mut instances = Vec::new();
    for (name, spec) in &config.instances {
        let hv = spec.effective_hvparams(&config.node);
        let mut errs = syntax(spec, &hv);
        if !syntax_only {
            errs.extend(files(spec, &hv));
            if hv.str("security_model") == "pool" && config.node.uid_pool.is_empty() {
                errs.push(FieldError::new(
                    "hvparams.security_model",
                    "\"pool\"",
                    "needs node.uid_pool to be set",
                ));
            }
            match crate::probe::probe(Path::new(hv.str("kvm_path"))) {
                Ok(caps) => errs.extend(qemu(spec, &hv, &caps)),
                Err(e) => {
                    if Path::new(hv.str("kvm_path")).is_file() {
                        errs.push(FieldError::new(
                            "hvparams.kvm_path",
                            format!("{:?}", hv.str("kvm_path")),
                            format!("cannot be probed: {e}"),
                        ));
                    }
                }
            }
        }
        instances.push((name.to_string(), errs));
    }
    Report { instances }
}
