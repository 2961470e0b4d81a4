//! Checking an instance against this node (Ganeti's `ValidateParameters`): the files and
//! directories its hvparams name exist, the user exists, this QEMU offers the machine type,
//! the devices and SPICE, io_uring has QEMU ≥ 5, `/dev/vhost-net` exists when `vhost_net` is
//! on for paravirtual tap NICs, bind addresses are addresses or existing interfaces. With the syntax check
//! ([`crate::model::hvparams::check_syntax`]) this is what `kvmctl validate` and every start run;
//! every problem is reported, each naming the field, the value and the rule.
//!
//! Invariant: reads the host (file system, interfaces, users); changes nothing.

use std::net::IpAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::model::field_error::FieldError;
use crate::model::hvparams::kinds::Str;
use crate::model::hvparams::HvParams;
use crate::model::hvparams::{key, Key};
use crate::model::spec::{InstanceSpec, NicMode, NodeConfig};
use crate::qemu::caps::QemuCaps;
use crate::qemu::checks::{qemu, syntax};
use crate::qemu::cmdline::{CommandLine, Host, Launch};

pub fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// Checks that need the file system but not QEMU (run before probing it).
pub fn files(spec: &InstanceSpec, hv: &HvParams) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let val = |k: Key<Str>| format!("{:?}", hv.str(k));
    for k in [
        key::KVM_PATH,
        key::KERNEL_PATH,
        key::INITRD_PATH,
        key::FLOPPY_IMAGE_PATH,
        key::VNC_PASSWORD_FILE,
        key::SPICE_PASSWORD_FILE,
    ] {
        let p = hv.str(k);
        if !p.is_empty() && !Path::new(p).is_file() {
            errs.push(FieldError::new(
                k.field(),
                val(k),
                "must name an existing file",
            ));
        }
    }
    for k in [key::CDROM_IMAGE_PATH, key::CDROM2_IMAGE_PATH] {
        let p = hv.str(k);
        let url = crate::qemu::caps::URL_DRIVERS
            .iter()
            .any(|scheme| p.starts_with(&format!("{scheme}://")));
        let acceptable = p.is_empty() || url || (p.starts_with('/') && Path::new(p).is_file());
        if !acceptable {
            errs.push(FieldError::new(
                k.field(),
                val(k),
                "must name an existing file (absolute path) or an http(s)/ftp(s) URL",
            ));
        }
    }
    for k in [key::VNC_X509_PATH, key::MEM_PATH] {
        let p = hv.str(k);
        if !p.is_empty() && !Path::new(p).is_dir() {
            errs.push(FieldError::new(
                k.field(),
                val(k),
                "must name an existing directory",
            ));
        }
    }
    let vnc = hv.str(key::VNC_BIND_ADDRESS);
    if vnc.starts_with('/') && !Path::new(vnc).is_dir() {
        errs.push(FieldError::new(
            key::VNC_BIND_ADDRESS.field(),
            val(key::VNC_BIND_ADDRESS),
            "a path must name an existing directory (the socket is DIR/NAME.vnc)",
        ));
    } else if !vnc.is_empty()
        && !vnc.starts_with('/')
        && vnc.parse::<IpAddr>().is_err()
        && interface_address(vnc, 4).is_none()
    {
        errs.push(FieldError::new(key::VNC_BIND_ADDRESS.field(), val(key::VNC_BIND_ADDRESS), "must be an IP address, an interface with an IPv4 address, or an absolute directory path"));
    }
    let spice = hv.str(key::SPICE_BIND);
    if !spice.is_empty()
        && spice.parse::<IpAddr>().is_err()
        && interface_address(spice, hv.int(key::SPICE_IP_VERSION)).is_none()
    {
        errs.push(FieldError::new(
            key::SPICE_BIND.field(),
            val(key::SPICE_BIND),
            "must be an IP address or an existing interface with an address",
        ));
    }
    if let Ok(ip) = spice.parse::<IpAddr>() {
        let v = hv.int(key::SPICE_IP_VERSION);
        if v == 4 && ip.is_ipv6() || v == 6 && ip.is_ipv4() {
            errs.push(FieldError::new(
                key::SPICE_IP_VERSION.field(),
                v.to_string(),
                format!("does not match the address family of spice_bind {spice}"),
            ));
        }
    }
    if hv.str(key::SECURITY_MODEL) == "user" {
        let user = hv.str(key::SECURITY_DOMAIN);
        if !user.is_empty() && nix::unistd::User::from_name(user).ok().flatten().is_none() {
            errs.push(FieldError::new(
                key::SECURITY_DOMAIN.field(),
                val(key::SECURITY_DOMAIN),
                "must name an existing user",
            ));
        }
    }
    // vhost is for paravirtual NICs only (as in Ganeti).
    let taps = spec.nics.iter().any(|n| n.mode != NicMode::User);
    let paravirtual = hv.str(key::NIC_TYPE) == "paravirtual";
    if taps && paravirtual && hv.bool(key::VHOST_NET) && !crate::host::net::vhost_available() {
        errs.push(FieldError::new(
            key::VHOST_NET.field(),
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
    let passthrough = matches!(hv.str(key::DISK_TYPE), "scsi-block" | "scsi-generic");
    for (i, d) in spec.disks.iter().enumerate() {
        let path = format!("{:?}", d.path.display().to_string());
        match std::fs::metadata(&d.path) {
            Err(_) => errs.push(FieldError::new(
                format!("disk[{i}].path"),
                path,
                "must name an existing file or block device",
            )),
            Ok(m) if passthrough && !m.file_type().is_block_device() && !m.file_type().is_char_device() => {
                errs.push(FieldError::new(
                    format!("disk[{i}].path"),
                    path,
                    format!(
                        "must be a SCSI device (/dev/sdX or /dev/sgN) for disk_type {:?}, which passes SCSI commands through",
                        hv.str(key::DISK_TYPE)
                    ),
                ))
            }
            Ok(_) => {}
        }
    }
    errs
}

/// Per disk: is it a device node (a block device, or a SCSI generic character device), which
/// QEMU opens with `host_device` rather than `file`?
pub fn device_nodes(spec: &InstanceSpec) -> Vec<bool> {
    spec.disks
        .iter()
        .map(|d| {
            std::fs::metadata(&d.path).is_ok_and(|m| {
                let t = m.file_type();
                t.is_block_device() || t.is_char_device()
            })
        })
        .collect()
}

/// Build the command line a start would build, with nothing created for it (made-up fds, no
/// taps, no sockets), so that "valid" means "the argv can be built": what only the builder
/// knows (the slot plan, PCI collisions, cdrom and floppy placement, `kvm_extra` quoting) is
/// checked too. Reads the host like the rest of this module (block devices, interfaces).
pub fn dry_build(
    spec: &InstanceSpec,
    hv: &HvParams,
    node: &NodeConfig,
    caps: &QemuCaps,
) -> Result<CommandLine, Vec<FieldError>> {
    dry_build_with(
        spec,
        hv,
        node,
        caps,
        crate::qemu::cmdline::build_command_line,
    )
}

/// A builder of command lines: [`crate::qemu::cmdline::build_command_line`], or (for the
/// acceptance test) one without the PCI check.
pub type Builder = fn(&Launch<'_>) -> Result<CommandLine, Vec<FieldError>>;

/// [`dry_build`] with another builder.
pub fn dry_build_with(
    spec: &InstanceSpec,
    hv: &HvParams,
    node: &NodeConfig,
    caps: &QemuCaps,
    build: Builder,
) -> Result<CommandLine, Vec<FieldError>> {
    let paths = crate::model::layout::RunPaths::new(&node.run_dir, &spec.name);
    build(&Launch {
        spec,
        hv,
        caps,
        paths: &paths,
        accel: spec.accel(hv, node),
        host: &dry_host(spec, hv, node, caps),
    })
    .map_err(crate::model::hvparams::under_hvparams)
}

/// The host facts of a dry build: made-up fds, the real block devices and interfaces.
pub fn dry_host(spec: &InstanceSpec, hv: &HvParams, node: &NodeConfig, caps: &QemuCaps) -> Host {
    use crate::qemu::host_facts;
    let paths = crate::model::layout::RunPaths::new(&node.run_dir, &spec.name);
    let facts = host_facts::NodeFacts {
        vhost_available: crate::host::net::vhost_available(),
        spice_cert_dir: node.spice_cert_dir.clone(),
        hotplug_ports: node.hotplug_ports,
    };
    let plan = host_facts::plan(spec, hv, caps, &facts, &paths, false);
    let (taps, qmp_fd) = host_facts::placeholder_taps(&plan, 1000);
    let gathered = host_facts::Gathered {
        block_devices: device_nodes(spec),
        taps,
        vnc_address: plan
            .vnc_interface
            .as_deref()
            .and_then(|i| interface_address(i, 4)),
        spice_address: plan
            .spice_interface
            .as_ref()
            .and_then(|(i, family)| interface_address(i, *family)),
        pool_user: plan.pool_uid.then(|| "kvmd-pool-user".to_string()),
        qmp_fd: Some(qmp_fd),
    };
    host_facts::host(&plan, gathered)
}

/// Add the errors of a dry build not already reported (the builder re-finds some).
pub fn add_new_fields<T>(errs: &mut Vec<FieldError>, built: Result<T, Vec<FieldError>>) {
    for e in built.err().unwrap_or_default() {
        if !errs
            .iter()
            .any(|known| known.field == e.field && known.rule == e.rule)
        {
            errs.push(e);
        }
    }
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

/// The result of validating every instance of a config file.
#[derive(Debug)]
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
pub fn config_report(
    node: &NodeConfig,
    instances: &std::collections::BTreeMap<crate::model::name::InstanceName, InstanceSpec>,
    syntax_only: bool,
) -> Report {
    Report {
        instances: instances
            .iter()
            .map(|(name, spec)| (name.to_string(), instance(spec, node, syntax_only)))
            .collect(),
    }
}

/// Every problem of one instance, as `kvmctl validate` reports it: syntax, and unless
/// `syntax_only` the node (files, users, the uid pool), the probed QEMU and a dry build.
pub fn instance(spec: &InstanceSpec, node: &NodeConfig, syntax_only: bool) -> Vec<FieldError> {
    let hv = spec.effective_hvparams(node);
    let mut errs = syntax(spec, &hv, host_cpus());
    if syntax_only {
        return errs;
    }
    errs.extend(files(spec, &hv));
    if hv.str(key::SECURITY_MODEL) == "pool" && node.uid_pool.is_empty() {
        errs.push(FieldError::new(
            "hvparams.security_model",
            "\"pool\"",
            "needs node.uid_pool to be set",
        ));
    }
    match crate::host::probe::probe(Path::new(hv.str(key::KVM_PATH)), node.probe_timeout) {
        Ok(caps) => {
            errs.extend(qemu(spec, &hv, &caps));
            add_new_fields(&mut errs, dry_build(spec, &hv, node, &caps));
        }
        Err(e) => {
            if Path::new(hv.str(key::KVM_PATH)).is_file() {
                errs.push(FieldError::new(
                    "hvparams.kvm_path",
                    format!("{:?}", hv.str(key::KVM_PATH)),
                    format!("cannot be probed: {e}"),
                ));
            }
        }
    }
    errs
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
