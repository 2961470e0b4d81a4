//! The migration steps a cluster engine drives on each node that need no VM actor: the
//! source's `migration-info` (the blob, from the runtime file of the running instance) and the
//! target's `migration-preflight` (would this node take that VM: its QEMU, the files the VM
//! names, and the command line a target would build, against the source's).
//!
//! Invariant: blocking (file reads, the probe); callers run these off the actors. Nothing is
//! started or written.

use crate::api::{ApiError, ApiReply, ErrorCode};
use crate::model::hvparams::key;
use crate::model::layout::RunPaths;
use crate::model::spec::NodeConfig;
use crate::qemu::cmdline::{build_command_line, CommandLine, Launch};

use super::coordinator::capabilities;
use super::info::{preflight, MigrationBlob};
use super::policy::PolicyConfig;

/// The capabilities a migration of a VM with these hvparams uses (on both ends).
pub fn capabilities_of(hv: &crate::model::hvparams::HvParams) -> Vec<String> {
    let caps: Vec<String> = hv
        .str(key::MIGRATION_CAPS)
        .split(':')
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    let downtime = u64::try_from(hv.int(key::MIGRATION_DOWNTIME)).unwrap_or(0);
    capabilities(&caps, &PolicyConfig::for_hvparams(downtime, &caps))
}

/// Source: the blob of the instance whose run dir is `paths` (it must run).
pub fn migration_info(paths: &RunPaths) -> Result<ApiReply, ApiError> {
    let name = paths
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rt = match crate::store::runtime_file::read_on_disk(paths).runtime {
        Ok(Some(rt)) => rt,
        Ok(None) => {
            return Err(ApiError::new(
                ErrorCode::NotRunning,
                format!("{name} has no running QEMU to migrate"),
            ))
        }
        Err(e) => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("{name}'s runtime file cannot be read: {e}"),
            ))
        }
    };
    let version = crate::qemu::caps::parse_version(&rt.qemu_version).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            format!(
                "no version in {:?}",
                crate::model::text::escape(&rt.qemu_version)
            ),
        )
    })?;
    let caps = capabilities_of(&rt.hvparams);
    let command = CommandLine {
        argv: rt.argv,
        slots: rt.slots,
        machine: rt.machine,
    };
    let mut blob = MigrationBlob::new(rt.spec, rt.hvparams, &command, version, caps);
    blob.managed_by = std::fs::read_to_string(paths.managed_by())
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    Ok(ApiReply::MigrationInfo {
        info: blob.encode(),
    })
}

/// The command line a target on this node builds for the VM of `blob` (with hvparams `hv`):
/// `-incoming defer` and `-S` on the source's machine type, made-up fds, nothing started.
pub fn target_command_line(
    blob: &MigrationBlob,
    hv: &crate::model::hvparams::HvParams,
    node: &NodeConfig,
    caps: &crate::qemu::caps::QemuCaps,
) -> Result<CommandLine, Vec<crate::model::field_error::FieldError>> {
    let mut host = crate::host::validate::dry_host(&blob.spec, hv, node, caps);
    host.incoming = true;
    host.machine = Some(blob.machine.clone());
    host.hotplug_ports = blob.slots.hotplug_ports;
    build_command_line(&Launch {
        spec: &blob.spec,
        hv,
        caps,
        paths: &RunPaths::new(&node.run_dir, &blob.spec.name),
        accel: blob.spec.accel(hv, node),
        host: &host,
    })
}

/// The migration capabilities a probed QEMU knows (none when it was not asked).
pub fn known_capabilities(caps: &crate::qemu::caps::QemuCaps) -> Vec<String> {
    caps.migration_capabilities
        .iter()
        .flatten()
        .cloned()
        .collect()
}

fn refused(reasons: Vec<String>) -> ApiError {
    let message = match reasons.as_slice() {
        [one] => format!("This node would not take the VM: {one}"),
        many => format!("This node would not take the VM ({} reasons)", many.len()),
    };
    ApiError::new(ErrorCode::MigrationRefused, message).with_details(reasons)
}

/// The VM of a blob as this node runs it: the source's definition with the source's
/// effective hvparams, except that this node's own QEMU binary is used (never a path a blob
/// names), and it never autostarts here.
fn target_spec(blob: &MigrationBlob, node: &NodeConfig) -> crate::model::spec::InstanceSpec {
    let mut over: crate::model::hvparams::HvOverrides = blob
        .hvparams
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let own = node.hvparams_with(&crate::model::hvparams::HvOverrides::new());
    over.insert(
        key::KVM_PATH.name().to_string(),
        crate::model::hvparams::HvValue::Str(own.str(key::KVM_PATH).to_string()),
    );
    let mut spec = blob.spec.clone();
    spec.hvparams = over;
    spec.autostart = false;
    spec
}

/// Decode a blob and check it against this node: the files it names, this node's QEMU, the
/// target command line; the checked blob, the VM as it would run here, and that command line.
fn checked(
    info: &str,
    node: &NodeConfig,
) -> Result<
    (
        MigrationBlob,
        crate::model::spec::InstanceSpec,
        CommandLine,
        String,
    ),
    ApiError,
> {
    let blob = MigrationBlob::decode(info).map_err(|why| {
        ApiError::invalid(vec![crate::model::field_error::FieldError::new(
            "info",
            format!("({} bytes)", info.len()),
            why,
        )])
    })?;
    let spec = target_spec(&blob, node);
    let hv = &spec.effective_hvparams(node);
    let file_errs = crate::host::validate::files(&spec, hv);
    if !file_errs.is_empty() {
        return Err(refused(file_errs.iter().map(ToString::to_string).collect()));
    }
    let caps = crate::host::probe::probe(
        std::path::Path::new(hv.str(key::KVM_PATH)),
        node.probe_timeout,
    )
    .map_err(|e| refused(vec![format!("this node's QEMU cannot be probed: {e}")]))?;
    let target = target_command_line(&blob, hv, node, &caps)
        .map_err(|errs| refused(errs.iter().map(ToString::to_string).collect()))?;
    preflight(&blob, &caps, &known_capabilities(&caps), &target).map_err(refused)?;
    Ok((blob, spec, target, caps.version_text.clone()))
}

/// Target: would this node take the VM `info` describes?
pub fn preflight_here(info: &str, node: &NodeConfig) -> Result<ApiReply, ApiError> {
    let (_, _, target, qemu_version) = checked(info, node)?;
    Ok(ApiReply::PreflightPassed {
        machine: target.machine,
        qemu_version,
    })
}

/// What a target starts for an accepted VM.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub spec: crate::model::spec::InstanceSpec,
    /// The source's exact machine type.
    pub machine: String,
    /// The capabilities the source turns on.
    pub capabilities: Vec<String>,
    /// The source's spare pcie-root-ports (q35): the target creates as many.
    pub hotplug_ports: u8,
    /// The engine that owns the instance, as the source says.
    pub managed_by: Option<String>,
}

/// Target: the preflight, then what `accept` starts for instance `name`.
pub fn accept_plan(
    name: &crate::model::name::InstanceName,
    info: &str,
    node: &NodeConfig,
) -> Result<Accepted, ApiError> {
    let (blob, spec, target, _) = checked(info, node)?;
    if spec.name != *name {
        return Err(ApiError::invalid(vec![
            crate::model::field_error::FieldError::new(
                "name",
                name.as_str(),
                format!("must be the instance the blob describes ({})", spec.name),
            ),
        ]));
    }
    Ok(Accepted {
        spec,
        machine: target.machine,
        capabilities: blob.capabilities,
        hotplug_ports: blob.slots.hotplug_ports,
        managed_by: blob.managed_by.clone(),
    })
}

/// `IP:PORT` (IPv6 as `[ADDR]:PORT`) as QEMU's `tcp:` URI; an error names `field`.
pub fn tcp_uri(field: &str, addr: &str) -> Result<String, ApiError> {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(format!("tcp:{a}")),
        _ => Err(ApiError::invalid(vec![
            crate::model::field_error::FieldError::new(
                field,
                crate::model::text::escape(addr).into_owned(),
                "must be IP:PORT with an IP literal and a port from 1 to 65535 (IPv6 as [ADDR]:PORT)",
            ),
        ])),
    }
}
