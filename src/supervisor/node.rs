//! The node requests: `node-info` (Ganeti's `GetNodeInfo`, with its ancillary files) and
//! `node-powercycle` (guarded). `node-verify` is `host::node::verify` as it is.
//!
//! Invariant: `info` is blocking (files, the probe): called off the actor.

use std::path::Path;

use crate::api::{ApiError, ApiReply, NodeInfo};
use crate::host::node::{facts, POWERCYCLE_STEPS};
use crate::model::field_error::FieldError;
use crate::model::spec::{Accel, NodeConfig};

/// This node, with `used_mib` of memory defined for the `running` instances.
pub(super) fn info(node: &NodeConfig, config: &Path, used_mib: u64, running: u32) -> NodeInfo {
    let f = facts();
    let probe = crate::host::probe::probe(&node.qemu, node.probe_timeout).ok();
    let mut ancillary = vec![config.display().to_string()];
    ancillary.extend(node.nic_script.iter().map(|p| p.display().to_string()));
    NodeInfo {
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
        kvmd_version: env!("CARGO_PKG_VERSION").to_string(),
        memory_total_mib: f.memory_total_mib,
        memory_free_mib: f.memory_free_mib,
        memory_instances_mib: used_mib,
        memory_node_mib: f
            .memory_total_mib
            .saturating_sub(f.memory_free_mib)
            .saturating_sub(used_mib),
        instances_running: running,
        cpus: f.cpus,
        sockets: f.sockets,
        cores_per_socket: f.cores_per_socket,
        threads_per_core: f.threads_per_core,
        numa_nodes: f.numa_nodes,
        cpu_model: f.cpu_model,
        accelerator: match node.accelerator {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
        .into(),
        qemu_path: node.qemu.display().to_string(),
        qemu_version: probe.as_ref().map(|c| c.version),
        qemu_version_text: probe.map(|c| c.version_text.clone()),
        ancillary_files: ancillary,
    }
}

/// How to reach the console of `name` (Ganeti's `GetInstanceConsole`): the serial console
/// through this node's kvmctl, else VNC, else SPICE, from what the running QEMU was given.
pub(super) fn console_info(
    name: &crate::model::name::InstanceName,
    paths: &crate::model::layout::RunPaths,
    socket: &Path,
) -> Result<ApiReply, ApiError> {
    use crate::model::hvparams::key;
    let rt = match crate::store::runtime_file::read_on_disk(paths).runtime {
        Ok(Some(rt)) => rt,
        _ => {
            return Err(ApiError::new(
                crate::api::ErrorCode::NotRunning,
                format!("{name} has no running QEMU, so no console"),
            ))
        }
    };
    let hv = &rt.hvparams;
    let none = |p: &str| (!p.is_empty()).then(|| p.to_string());
    let mut info = crate::api::ConsoleInfo {
        name: name.clone(),
        kind: "none".into(),
        command: Vec::new(),
        host: None,
        port: None,
        password_file: None,
    };
    if hv.bool(key::SERIAL_CONSOLE) {
        info.kind = "serial".into();
        info.command = vec![
            "kvmctl".into(),
            "--socket".into(),
            socket.display().to_string(),
            "console".into(),
            name.to_string(),
        ];
    } else if !hv.str(key::VNC_BIND_ADDRESS).is_empty() {
        info.kind = "vnc".into();
        info.host = none(hv.str(key::VNC_BIND_ADDRESS));
        info.port = rt.spec.network_port;
        info.password_file = none(hv.str(key::VNC_PASSWORD_FILE));
    } else if !hv.str(key::SPICE_BIND).is_empty() {
        info.kind = "spice".into();
        info.host = none(hv.str(key::SPICE_BIND));
        info.port = rt.spec.network_port;
        info.password_file = none(hv.str(key::SPICE_PASSWORD_FILE));
    }
    Ok(ApiReply::ConsoleInfo(info))
}

/// A device to plug, checked: a disk's file exists; a NIC's MAC is well formed (or made up,
/// locally administered, when none is given).
pub(super) fn checked_device(
    name: &crate::model::name::InstanceName,
    device: crate::model::hotplug::HotDevice,
) -> Result<crate::model::hotplug::HotDevice, ApiError> {
    use crate::model::hotplug::HotDevice;
    match device {
        HotDevice::Disk { ref path, .. } if !Path::new(path).exists() => {
            Err(ApiError::invalid(vec![FieldError::new(
                "path",
                crate::model::text::escape(path).into_owned(),
                "must be an existing image file or block device",
            )]))
        }
        HotDevice::Nic { mode, ref link, .. }
            if link.is_empty()
                && matches!(
                    mode,
                    crate::model::spec::NicMode::Bridged | crate::model::spec::NicMode::Openvswitch
                ) =>
        {
            Err(ApiError::invalid(vec![FieldError::new(
                "link",
                "(missing)",
                "a bridged or openvswitch NIC needs its bridge or switch",
            )]))
        }
        HotDevice::Nic { mac, mode, link } if mac.is_empty() => {
            let mut b = [0u8; 3];
            use std::io::Read;
            let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
            let _ = name;
            Ok(HotDevice::Nic {
                mac: format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]),
                mode,
                link,
            })
        }
        HotDevice::Nic { mac, mode, link } => {
            let ok = mac.split(':').count() == 6
                && mac
                    .split(':')
                    .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()));
            if ok {
                Ok(HotDevice::Nic { mac, mode, link })
            } else {
                Err(ApiError::invalid(vec![FieldError::new(
                    "mac",
                    crate::model::text::escape(&mac).into_owned(),
                    "must be six two-digit hex numbers separated by colons",
                )]))
            }
        }
        other => Ok(other),
    }
}

/// Without `yes`: refused, naming what it would do. With it: the reply, then (a second later,
/// so the reply gets out) the power cycle.
pub(super) fn powercycle(yes: bool) -> Result<ApiReply, ApiError> {
    let steps: Vec<String> = POWERCYCLE_STEPS.iter().map(|s| s.to_string()).collect();
    if !yes {
        let mut e = ApiError::invalid(vec![FieldError::new(
            "yes",
            "false",
            "must be true: this reboots the node at once, without stopping its VMs",
        )]);
        e.details = steps;
        return Err(e);
    }
    tracing::warn!("node-powercycle: rebooting this node in 1 s");
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(1));
        if let Err(e) = crate::host::node::powercycle() {
            tracing::error!(error = %e, "the power cycle failed");
        }
    });
    Ok(ApiReply::Powercycling { steps })
}
