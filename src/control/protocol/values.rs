//! The JSON shapes of the values replies and events carry: VM info, jobs, events, exit
//! records and errors, both ways. Domain types do not derive serde for the wire's sake; every
//! wire name (states, stop endings, exit kinds, event types) is spelled here.
//!
//! Invariant: encoding then decoding any value gives it back unchanged; decoding never trusts
//! the input (a missing or mistyped field is a [`ProtocolError`] naming it).

use serde_json::{json, Map, Value};

use super::ProtocolError;
use crate::api::{
    ApiError, DaemonEvent, DiskInfo, ErrorCode, Event, EventKind, Hardware, JobInfo, JobOutcome,
    JobState, JobSummary, MigrationReport, MigrationSummary, NicInfo, NodeInfo, Progress,
    QemuEvent, StopResult, VmInfo, VmStats,
};
use crate::model::exit::{ExitKind, ExitRecord};
use crate::model::field_error::FieldError;
use crate::model::job::{JobId, Operation};
use crate::model::name::InstanceName;
use crate::model::state::{StopEnd, VmState};

fn exit_kind_str(k: ExitKind) -> &'static str {
    match k {
        ExitKind::Stopped => "stopped",
        ExitKind::UserDown => "user-down",
        ExitKind::Crashed => "crashed",
        ExitKind::Migrated => "migrated",
    }
}

const EXIT_KINDS: [ExitKind; 4] = [
    ExitKind::Stopped,
    ExitKind::UserDown,
    ExitKind::Crashed,
    ExitKind::Migrated,
];

/// The longest found value quoted in a decode error.
const MAX_FOUND: usize = 80;

fn found(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= MAX_FOUND {
        return text;
    }
    let mut cut = MAX_FOUND;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// A JSON object being read, with errors that name the missing or mistyped key.
pub(super) struct Obj<'a>(pub &'a Map<String, Value>);

impl<'a> Obj<'a> {
    pub fn of(v: &'a Value, what: &str) -> Result<Self, ProtocolError> {
        v.as_object()
            .map(Obj)
            .ok_or_else(|| invalid(what, "must be an object", v))
    }

    pub fn get(&self, key: &str) -> Result<&'a Value, ProtocolError> {
        self.0
            .get(key)
            .ok_or_else(|| ProtocolError::Missing(key.to_string()))
    }

    /// The value, `None` when absent or null.
    pub fn opt(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn obj(&self, key: &str) -> Result<Obj<'a>, ProtocolError> {
        Obj::of(self.get(key)?, key)
    }

    pub fn str(&self, key: &str) -> Result<&'a str, ProtocolError> {
        let v = self.get(key)?;
        v.as_str()
            .ok_or_else(|| invalid(key, "must be a string", v))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ProtocolError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| invalid(key, "must be a string or null", v)),
        }
    }

    pub fn u64(&self, key: &str) -> Result<u64, ProtocolError> {
        let v = self.get(key)?;
        v.as_u64()
            .ok_or_else(|| invalid(key, "must be a non-negative integer", v))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, ProtocolError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| invalid(key, "must be a non-negative integer or null", v)),
        }
    }

    pub fn u32(&self, key: &str) -> Result<u32, ProtocolError> {
        let v = self.get(key)?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| invalid(key, "must be an integer between 0 and 4294967295", v))
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, ProtocolError> {
        match self.opt(key) {
            None => Ok(None),
            Some(_) => self.u32(key).map(Some),
        }
    }

    pub fn opt_i32(&self, key: &str) -> Result<Option<i32>, ProtocolError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| invalid(key, "must be a 32-bit integer or null", v)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool, ProtocolError> {
        let v = self.get(key)?;
        v.as_bool()
            .ok_or_else(|| invalid(key, "must be a boolean", v))
    }

    /// A list of strings; absent or null is empty.
    pub fn strs(&self, key: &str) -> Result<Vec<String>, ProtocolError> {
        match self.opt(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| invalid(key, "must hold strings", x))
                })
                .collect(),
            Some(v) => Err(invalid(key, "must be an array of strings", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<&'a Vec<Value>, ProtocolError> {
        let v = self.get(key)?;
        v.as_array()
            .ok_or_else(|| invalid(key, "must be an array", v))
    }
}

pub(super) fn invalid(field: &str, expected: &str, v: &Value) -> ProtocolError {
    ProtocolError::Invalid {
        field: field.to_string(),
        expected: expected.to_string(),
        found: found(v),
    }
}

/// Look a wire name up in a list of values by their names.
fn named<T: Copy>(
    key: &str,
    s: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
    what: &str,
) -> Result<T, ProtocolError> {
    all.iter()
        .copied()
        .find(|x| name(*x) == s)
        .ok_or_else(|| invalid(key, &format!("must be a known {what}"), &Value::from(s)))
}

fn instance_name(key: &str, s: &str) -> Result<InstanceName, ProtocolError> {
    InstanceName::parse(s).map_err(|e| {
        invalid(
            key,
            &format!("must be a valid name ({})", e.reason),
            &Value::from(s),
        )
    })
}

fn state_of(o: &Obj, key: &str) -> Result<VmState, ProtocolError> {
    named(key, o.str(key)?, &VmState::ALL, VmState::as_str, "state")
}

fn operation_of(o: &Obj, key: &str) -> Result<Operation, ProtocolError> {
    named(
        key,
        o.str(key)?,
        &Operation::ALL,
        Operation::as_str,
        "operation",
    )
}

pub(super) fn stop_end_of(o: &Obj, key: &str) -> Result<StopEnd, ProtocolError> {
    named(
        key,
        o.str(key)?,
        &StopEnd::ALL,
        StopEnd::as_str,
        "stop ending",
    )
}

// ---- exit records ----

pub fn exit_to_json(e: &ExitRecord) -> Value {
    json!({
        "kind": exit_kind_str(e.kind),
        "reason": e.reason,
        "exit_code": e.exit_code,
        "signal": e.signal,
        "stderr_tail": e.stderr_tail,
        "pid": e.pid,
        "at_ms": e.at_ms,
    })
}

pub fn exit_from_json(v: &Value) -> Result<ExitRecord, ProtocolError> {
    let o = Obj::of(v, "exit")?;
    Ok(ExitRecord {
        kind: named(
            "kind",
            o.str("kind")?,
            &EXIT_KINDS,
            exit_kind_str,
            "exit kind",
        )?,
        reason: o.str("reason")?.to_string(),
        exit_code: o.opt_i32("exit_code")?,
        signal: o.opt_i32("signal")?,
        stderr_tail: o.strs("stderr_tail")?,
        pid: o.u32("pid")?,
        at_ms: o.u64("at_ms")?,
    })
}

// ---- VM info ----

pub(super) fn summary_to_json(j: &JobSummary) -> Value {
    json!({"id": j.id.0, "kind": j.kind.as_str(), "phase": j.phase})
}

pub fn vm_to_json(i: &VmInfo) -> Value {
    json!({
        "name": i.name.as_str(),
        "state": i.state.as_str(),
        "pid": i.pid,
        "memory_mib": i.memory_mib,
        "vcpus": i.vcpus,
        "cpu_time_ms": i.cpu_time_ms,
        "uptime_s": i.uptime_s,
        "started_at_ms": i.started_at_ms,
        "qemu_version": i.qemu_version,
        "autostart": i.autostart,
        "in_config": i.in_config,
        "pending_changes": i.pending_changes,
        // Kept for clients older than `job`: the kind of the job in progress.
        "operation": i.job.as_ref().map(|j| j.kind.as_str()),
        "job": i.job.as_ref().map(summary_to_json),
        "last_exit": i.last_exit.as_ref().map(exit_to_json),
        "cpu_mask": i.cpu_mask,
        "balloon": i.balloon.as_ref().map(|b| json!({
            "target_mib": b.target_mib, "actual_mib": b.actual_mib, "state": b.state,
        })),
        "hardware": i.hardware.as_deref().map(hardware_to_json),
        "guest_memory": i.guest_memory.as_ref().map(|g| json!({
            "total_mib": g.total_mib, "free_mib": g.free_mib,
            "available_mib": g.available_mib, "updated_at_s": g.updated_at_s,
        })),
        "managed_by": i.managed_by,
    })
}

fn hardware_to_json(h: &Hardware) -> Value {
    json!({
        "uuid": h.uuid,
        "machine": h.machine,
        "accelerator": h.accelerator,
        "disks": h.disks.iter().map(|d| json!({
            "path": d.path, "format": d.format, "readonly": d.readonly, "bus": d.bus,
            "address": d.address, "hotplugged": d.hotplugged, "id": d.id,
            "pending_removal": d.pending_removal,
        })).collect::<Vec<_>>(),
        "nics": h.nics.iter().map(|n| json!({
            "mode": n.mode, "link": n.link, "mac": n.mac, "tap": n.tap, "model": n.model,
            "address": n.address, "hotplugged": n.hotplugged, "id": n.id,
            "pending_removal": n.pending_removal, "link_up": n.link_up,
        })).collect::<Vec<_>>(),
        "serial_socket": h.serial_socket,
        "display": h.display,
        "hotplug_ports": h.hotplug_ports,
        "hotplug_ports_free": h.hotplug_ports_free,
    })
}

fn hardware_from_json(v: &Value) -> Result<Hardware, ProtocolError> {
    let o = Obj::of(v, "hardware")?;
    Ok(Hardware {
        uuid: o.str("uuid")?.to_string(),
        machine: o.str("machine")?.to_string(),
        accelerator: o.str("accelerator")?.to_string(),
        disks: o
            .array("disks")?
            .iter()
            .map(|d| {
                let d = Obj::of(d, "disk")?;
                Ok(DiskInfo {
                    path: d.str("path")?.to_string(),
                    format: d.str("format")?.to_string(),
                    readonly: d.bool("readonly")?,
                    bus: d.str("bus")?.to_string(),
                    address: d.str("address")?.to_string(),
                    hotplugged: d.bool("hotplugged")?,
                    id: d.opt_str("id")?.map(String::from),
                    pending_removal: d
                        .opt("pending_removal")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                })
            })
            .collect::<Result<_, ProtocolError>>()?,
        nics: o
            .array("nics")?
            .iter()
            .map(|n| {
                let n = Obj::of(n, "nic")?;
                Ok(NicInfo {
                    mode: n.str("mode")?.to_string(),
                    link: n.str("link")?.to_string(),
                    mac: n.str("mac")?.to_string(),
                    tap: n.opt_str("tap")?.map(String::from),
                    model: n.str("model")?.to_string(),
                    address: n.str("address")?.to_string(),
                    hotplugged: n.bool("hotplugged")?,
                    id: n.opt_str("id")?.map(String::from),
                    pending_removal: n
                        .opt("pending_removal")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    link_up: n.opt("link_up").and_then(Value::as_bool).unwrap_or(true),
                })
            })
            .collect::<Result<_, ProtocolError>>()?,
        serial_socket: o.opt_str("serial_socket")?.map(String::from),
        display: o.opt_str("display")?.map(String::from),
        hotplug_ports: port_count(&o, "hotplug_ports"),
        hotplug_ports_free: port_count(&o, "hotplug_ports_free"),
    })
}

/// A port count of `hardware` (absent from older kvmds: 0).
fn port_count(o: &Obj<'_>, key: &str) -> u8 {
    o.opt(key)
        .and_then(Value::as_u64)
        .and_then(|n| u8::try_from(n).ok())
        .unwrap_or(0)
}

pub fn vm_from_json(v: &Value) -> Result<VmInfo, ProtocolError> {
    let o = Obj::of(v, "instance")?;
    let job = match o.opt("job") {
        Some(j) => {
            let j = Obj::of(j, "job")?;
            Some(JobSummary {
                id: JobId(j.u64("id")?),
                kind: operation_of(&j, "kind")?,
                phase: j.str("phase")?.to_string(),
            })
        }
        // A kvmd older than jobs says only which operation runs.
        None => match o.opt("operation") {
            Some(_) => {
                let kind = operation_of(&o, "operation")?;
                Some(JobSummary {
                    id: JobId(0),
                    kind,
                    phase: kind.as_str().to_string(),
                })
            }
            None => None,
        },
    };
    Ok(VmInfo {
        name: instance_name("name", o.str("name")?)?,
        state: state_of(&o, "state")?,
        pid: o.opt_u32("pid")?,
        memory_mib: o.u64("memory_mib")?,
        vcpus: o.u32("vcpus")?,
        cpu_time_ms: o.opt_u64("cpu_time_ms")?,
        uptime_s: o.opt_u64("uptime_s")?,
        started_at_ms: o.opt_u64("started_at_ms")?,
        qemu_version: o.opt_str("qemu_version")?.map(String::from),
        autostart: o.bool("autostart")?,
        in_config: o.bool("in_config")?,
        pending_changes: o.bool("pending_changes")?,
        job,
        last_exit: o.opt("last_exit").map(exit_from_json).transpose()?,
        cpu_mask: o.opt_str("cpu_mask")?.map(String::from),
        managed_by: o.opt_str("managed_by")?.map(String::from),
        guest_memory: match o.opt("guest_memory").filter(|v| !v.is_null()) {
            None => None,
            Some(g) => {
                let g = Obj::of(g, "guest_memory")?;
                Some(crate::api::GuestMemory {
                    total_mib: g.u64("total_mib")?,
                    free_mib: g.u64("free_mib")?,
                    available_mib: g.u64("available_mib")?,
                    updated_at_s: g.u64("updated_at_s")?,
                })
            }
        },
        hardware: o
            .opt("hardware")
            .filter(|v| !v.is_null())
            .map(hardware_from_json)
            .transpose()?
            .map(Box::new),
        balloon: match o.opt("balloon").filter(|v| !v.is_null()) {
            None => None,
            Some(b) => {
                let b = Obj::of(b, "balloon")?;
                Some(crate::api::BalloonInfo {
                    target_mib: b.u64("target_mib")?,
                    actual_mib: b.u64("actual_mib")?,
                    state: b.str("state")?.to_string(),
                })
            }
        },
    })
}

// ---- errors ----

fn field_to_json(f: &FieldError) -> Value {
    let mut m = json!({"field": f.field, "value": f.value, "rule": f.rule});
    if !f.allowed.is_empty() {
        m["allowed"] = json!(f.allowed);
    }
    m
}

/// The `error` object of a failed reply, for a code that may be kvmd's or a client's own
/// (kvmctl's `connection_failed`): the first rejected field is also shown flat.
pub fn error_object(code: &str, message: &str, fields: &[FieldError], details: &[String]) -> Value {
    let mut v = json!({"code": code, "message": message});
    if let Some(first) = fields.first() {
        if let Value::Object(flat) = field_to_json(first) {
            for (k, val) in flat {
                v[k] = val;
            }
        }
        v["fields"] = Value::Array(fields.iter().map(field_to_json).collect());
    }
    if !details.is_empty() {
        v["details"] = json!(details);
    }
    v
}

pub fn error_to_json(e: &ApiError) -> Value {
    error_object(e.code.as_str(), &e.message, &e.fields, &e.details)
}

/// An error object. An unknown code (from a newer kvmd) decodes as `internal`, keeping the
/// message, so the operator still sees what happened.
pub fn error_from_json(v: &Value) -> Result<ApiError, ProtocolError> {
    let o = Obj::of(v, "error")?;
    let code_text = o.str("code")?;
    let mut message = o.str("message")?.to_string();
    let code = ErrorCode::parse(code_text).unwrap_or_else(|| {
        message = format!("{message} ({code_text})");
        ErrorCode::Internal
    });
    let fields = match o.opt("fields") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|f| {
                let f = Obj::of(f, "fields")?;
                Ok(FieldError {
                    field: f.str("field")?.to_string(),
                    value: f.str("value")?.to_string(),
                    rule: f.str("rule")?.to_string(),
                    allowed: f.strs("allowed")?,
                })
            })
            .collect::<Result<_, ProtocolError>>()?,
        Some(other) => return Err(invalid("fields", "must be an array", other)),
    };
    Ok(ApiError {
        code,
        message,
        fields,
        details: o.strs("details")?,
    })
}

// ---- jobs ----

fn outcome_to_json(o: &JobOutcome) -> Value {
    match o {
        JobOutcome::Done { stop } => json!({
            "type": "done",
            "stop": stop.map(|s| json!({"ended": s.ended.as_str(), "elapsed_ms": s.elapsed_ms})),
        }),
        JobOutcome::Failed(e) => json!({"type": "failed", "error": error_to_json(e)}),
        JobOutcome::Cancelled { reason } => json!({"type": "cancelled", "reason": reason}),
    }
}

fn outcome_from_json(v: &Value) -> Result<JobOutcome, ProtocolError> {
    let o = Obj::of(v, "outcome")?;
    Ok(match o.str("type")? {
        "done" => JobOutcome::Done {
            stop: match o.opt("stop") {
                None => None,
                Some(s) => {
                    let s = Obj::of(s, "stop")?;
                    Some(StopResult {
                        ended: stop_end_of(&s, "ended")?,
                        elapsed_ms: s.u64("elapsed_ms")?,
                    })
                }
            },
        },
        "failed" => JobOutcome::Failed(error_from_json(o.get("error")?)?),
        "cancelled" => JobOutcome::Cancelled {
            reason: o.str("reason")?.to_string(),
        },
        other => {
            return Err(invalid(
                "type",
                "must be done, failed or cancelled",
                &Value::from(other),
            ))
        }
    })
}

pub fn job_to_json(j: &JobInfo) -> Value {
    json!({
        "id": j.id.0,
        "instance": j.instance.as_str(),
        "kind": j.kind.as_str(),
        "state": j.state.as_str(),
        "phase": j.phase,
        "progress": j.progress.as_ref().map(|p| json!({"done": p.done, "total": p.total, "unit": p.unit})),
        "started_at_ms": j.started_at_ms,
        "deadline_ms": j.deadline_ms,
        "ended_at_ms": j.ended_at_ms,
        "resumed": j.resumed,
        "outcome": j.outcome.as_ref().map(outcome_to_json),
    })
}

pub fn job_from_json(v: &Value) -> Result<JobInfo, ProtocolError> {
    let o = Obj::of(v, "job")?;
    Ok(JobInfo {
        id: JobId(o.u64("id")?),
        instance: instance_name("instance", o.str("instance")?)?,
        kind: operation_of(&o, "kind")?,
        state: named(
            "state",
            o.str("state")?,
            &JobState::ALL,
            JobState::as_str,
            "job state",
        )?,
        phase: o.str("phase")?.to_string(),
        progress: match o.opt("progress") {
            None => None,
            Some(p) => {
                let p = Obj::of(p, "progress")?;
                Some(Progress {
                    done: p.u64("done")?,
                    total: p.u64("total")?,
                    unit: p.str("unit")?.to_string(),
                })
            }
        },
        started_at_ms: o.u64("started_at_ms")?,
        deadline_ms: o.opt_u64("deadline_ms")?,
        ended_at_ms: o.opt_u64("ended_at_ms")?,
        resumed: o.bool("resumed")?,
        outcome: o.opt("outcome").map(outcome_from_json).transpose()?,
    })
}

// ---- stats ----

pub fn stats_to_json(s: &VmStats) -> Value {
    json!({
        "name": s.name, "state": s.state, "sampled_at_ms": s.sampled_at_ms,
        "cpu_ms": s.cpu_ms, "vcpu_ms": s.vcpu_ms, "vcpus": s.vcpus,
        "memory_bytes": s.memory_bytes, "rss_bytes": s.rss_bytes,
        "balloon_bytes": s.balloon_bytes, "guest_available_bytes": s.guest_available_bytes,
        "block_read_bytes": s.block_read_bytes, "block_write_bytes": s.block_write_bytes,
        "block_read_ops": s.block_read_ops, "block_write_ops": s.block_write_ops,
        "net_rx_bytes": s.net_rx_bytes, "net_tx_bytes": s.net_tx_bytes,
    })
}

pub fn stats_from_json(v: &Value) -> Result<VmStats, ProtocolError> {
    let o = Obj::of(v, "stats")?;
    Ok(VmStats {
        name: o.str("name")?.to_string(),
        state: o.str("state")?.to_string(),
        sampled_at_ms: o.u64("sampled_at_ms")?,
        cpu_ms: o.u64("cpu_ms")?,
        vcpu_ms: o.u64("vcpu_ms")?,
        vcpus: o.u32("vcpus")?,
        memory_bytes: o.u64("memory_bytes")?,
        rss_bytes: o.u64("rss_bytes")?,
        balloon_bytes: o.opt_u64("balloon_bytes")?,
        guest_available_bytes: o.opt_u64("guest_available_bytes")?,
        block_read_bytes: o.u64("block_read_bytes")?,
        block_write_bytes: o.u64("block_write_bytes")?,
        block_read_ops: o.u64("block_read_ops")?,
        block_write_ops: o.u64("block_write_ops")?,
        net_rx_bytes: o.u64("net_rx_bytes")?,
        net_tx_bytes: o.u64("net_tx_bytes")?,
    })
}

// ---- the node ----

pub fn node_to_json(n: &NodeInfo) -> Value {
    json!({
        "hostname": n.hostname,
        "kvmd_version": n.kvmd_version,
        "memory_total_mib": n.memory_total_mib,
        "memory_free_mib": n.memory_free_mib,
        "memory_instances_mib": n.memory_instances_mib,
        "memory_node_mib": n.memory_node_mib,
        "instances_running": n.instances_running,
        "cpus": n.cpus,
        "sockets": n.sockets,
        "cores_per_socket": n.cores_per_socket,
        "threads_per_core": n.threads_per_core,
        "numa_nodes": n.numa_nodes,
        "cpu_model": n.cpu_model,
        "accelerator": n.accelerator,
        "qemu_path": n.qemu_path,
        "qemu_version": n.qemu_version.map(|(a, b, c)| json!([a, b, c])),
        "qemu_version_text": n.qemu_version_text,
        "ancillary_files": n.ancillary_files,
    })
}

pub fn node_from_json(v: &Value) -> Result<NodeInfo, ProtocolError> {
    let o = Obj::of(v, "node")?;
    let version = match o.opt("qemu_version").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => {
            let parts: Vec<u32> = v
                .as_array()
                .ok_or_else(|| invalid("qemu_version", "must be [major, minor, micro]", v))?
                .iter()
                .map(|p| p.as_u64().and_then(|p| u32::try_from(p).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| invalid("qemu_version", "must be [major, minor, micro]", v))?;
            match parts.as_slice() {
                [a, b, c] => Some((*a, *b, *c)),
                _ => return Err(invalid("qemu_version", "must be [major, minor, micro]", v)),
            }
        }
    };
    Ok(NodeInfo {
        hostname: o.str("hostname")?.to_string(),
        kvmd_version: o.str("kvmd_version")?.to_string(),
        memory_total_mib: o.u64("memory_total_mib")?,
        memory_free_mib: o.u64("memory_free_mib")?,
        memory_instances_mib: o.u64("memory_instances_mib")?,
        memory_node_mib: o.u64("memory_node_mib")?,
        instances_running: o.u32("instances_running")?,
        cpus: o.u32("cpus")?,
        sockets: o.u32("sockets")?,
        cores_per_socket: o.u32("cores_per_socket")?,
        threads_per_core: o.u32("threads_per_core")?,
        numa_nodes: o.u32("numa_nodes")?,
        cpu_model: o.str("cpu_model")?.to_string(),
        accelerator: o.str("accelerator")?.to_string(),
        qemu_path: o.str("qemu_path")?.to_string(),
        qemu_version: version,
        qemu_version_text: o.opt_str("qemu_version_text")?.map(String::from),
        ancillary_files: o.strs("ancillary_files")?,
    })
}

// ---- migrations ----

pub fn migration_to_json(m: &MigrationReport) -> Value {
    json!({
        "status": m.status,
        "job_id": m.job.map(|j| j.0),
        "transferred": m.transferred,
        "remaining": m.remaining,
        "total": m.total,
        "speed_bps": m.speed_bps,
        "dirty_pages_rate": m.dirty_pages_rate,
        "pass": m.pass,
        "downtime_limit_ms": m.downtime_limit_ms,
        "stalled_ms": m.stalled_ms,
        "elapsed_ms": m.elapsed_ms,
        "resumed_at_us": m.resumed_at_us,
        "summary": m.summary.as_ref().map(|s| json!({
            "outcome": s.outcome,
            "reason": s.reason,
            "total_time_ms": s.total_time_ms,
            "downtime_ms": s.downtime_ms,
            "transferred": s.transferred,
            "passes": s.passes,
            "path": s.path,
            "downtime_limit_ms": s.downtime_limit_ms,
            "stopped_at_us": s.stopped_at_us,
            "seen_after_us": s.seen_after_us,
            "kvmd_measured": s.kvmd_measured,
        })),
    })
}

pub fn migration_from_json(v: &Value) -> Result<MigrationReport, ProtocolError> {
    let o = Obj::of(v, "migration")?;
    let summary = match o.opt("summary").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => {
            let s = Obj::of(v, "summary")?;
            Some(MigrationSummary {
                outcome: s.str("outcome")?.to_string(),
                reason: s.opt_str("reason")?.map(String::from),
                total_time_ms: s.opt_u64("total_time_ms")?,
                downtime_ms: s.opt_u64("downtime_ms")?,
                transferred: s.u64("transferred")?,
                passes: s.u64("passes")?,
                path: s.str("path")?.to_string(),
                downtime_limit_ms: s.u64("downtime_limit_ms")?,
                stopped_at_us: s.opt_u64("stopped_at_us")?,
                seen_after_us: s.opt_u64("seen_after_us")?,
                kvmd_measured: s
                    .opt("kvmd_measured")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        }
    };
    Ok(MigrationReport {
        status: o.str("status")?.to_string(),
        job: o.opt_u64("job_id")?.map(JobId),
        transferred: o.u64("transferred")?,
        remaining: o.u64("remaining")?,
        total: o.u64("total")?,
        speed_bps: o.u64("speed_bps")?,
        dirty_pages_rate: o.u64("dirty_pages_rate")?,
        pass: o.u64("pass")?,
        downtime_limit_ms: o.u64("downtime_limit_ms")?,
        stalled_ms: o.opt_u64("stalled_ms")?,
        elapsed_ms: o.u64("elapsed_ms")?,
        resumed_at_us: o.opt_u64("resumed_at_us")?,
        summary,
    })
}

// ---- events ----

fn qemu_to_json(q: &QemuEvent) -> Value {
    match q {
        QemuEvent::Shutdown { guest, reason } => {
            json!({"event": "shutdown", "guest": guest, "reason": reason})
        }
        QemuEvent::Reset { guest, reason } => {
            json!({"event": "reset", "guest": guest, "reason": reason})
        }
        QemuEvent::Powerdown => json!({"event": "powerdown"}),
        QemuEvent::GuestPanicked { action } => json!({"event": "guest-panicked", "action": action}),
        QemuEvent::BlockIoError {
            device,
            operation,
            action,
            reason,
        } => {
            json!({"event": "block-io-error", "device": device, "operation": operation, "action": action, "reason": reason})
        }
        QemuEvent::Unresponsive { command } => json!({"event": "unresponsive", "command": command}),
        QemuEvent::Responsive => json!({"event": "responsive"}),
        QemuEvent::PendingRemoval { device } => {
            json!({"event": "pending-removal", "device": device})
        }
    }
}

fn qemu_from_json(v: &Value) -> Result<QemuEvent, ProtocolError> {
    let o = Obj::of(v, "qemu")?;
    let s = |k: &str| o.str(k).map(String::from);
    Ok(match o.str("event")? {
        "shutdown" => QemuEvent::Shutdown {
            guest: o.bool("guest")?,
            reason: s("reason")?,
        },
        "reset" => QemuEvent::Reset {
            guest: o.bool("guest")?,
            reason: s("reason")?,
        },
        "powerdown" => QemuEvent::Powerdown,
        "guest-panicked" => QemuEvent::GuestPanicked {
            action: s("action")?,
        },
        "block-io-error" => QemuEvent::BlockIoError {
            device: s("device")?,
            operation: s("operation")?,
            action: s("action")?,
            reason: s("reason")?,
        },
        "unresponsive" => QemuEvent::Unresponsive {
            command: s("command")?,
        },
        "responsive" => QemuEvent::Responsive,
        "pending-removal" => QemuEvent::PendingRemoval {
            device: s("device")?,
        },
        other => {
            return Err(invalid(
                "event",
                "must be a known QEMU event",
                &Value::from(other),
            ))
        }
    })
}

fn daemon_to_json(d: &DaemonEvent) -> Value {
    match d {
        DaemonEvent::Started { version } => json!({"event": "started", "version": version}),
        DaemonEvent::Stopping => json!({"event": "stopping"}),
        DaemonEvent::Reloaded {
            added,
            removed,
            changed,
        } => json!({"event": "reloaded", "added": added, "removed": removed, "changed": changed}),
    }
}

fn daemon_from_json(v: &Value) -> Result<DaemonEvent, ProtocolError> {
    let o = Obj::of(v, "daemon")?;
    Ok(match o.str("event")? {
        "started" => DaemonEvent::Started {
            version: o.str("version")?.to_string(),
        },
        "stopping" => DaemonEvent::Stopping,
        "reloaded" => DaemonEvent::Reloaded {
            added: o.strs("added")?,
            removed: o.strs("removed")?,
            changed: o.strs("changed")?,
        },
        other => {
            return Err(invalid(
                "event",
                "must be a known daemon event",
                &Value::from(other),
            ))
        }
    })
}

/// Every event `type` on the wire.
pub const EVENT_TYPES: &[&str] = &[
    "state",
    "job-started",
    "job-progress",
    "job-ended",
    "exited",
    "qemu",
    "daemon",
];

pub fn event_to_json(e: &Event) -> Value {
    let mut v = json!({
        "seq": e.seq,
        "at_ms": e.at_ms,
        "instance": e.instance.as_ref().map(InstanceName::as_str),
    });
    let (ty, key, payload) = match &e.kind {
        EventKind::State { state, previous } => {
            v["state"] = json!(state.as_str());
            v["previous"] = json!(previous.as_str());
            ("state", None, Value::Null)
        }
        EventKind::JobStarted(j) => ("job-started", Some("job"), job_to_json(j)),
        EventKind::JobProgress(j) => ("job-progress", Some("job"), job_to_json(j)),
        EventKind::JobEnded(j) => ("job-ended", Some("job"), job_to_json(j)),
        EventKind::Exited(x) => ("exited", Some("exit"), exit_to_json(x)),
        EventKind::Qemu(q) => ("qemu", Some("qemu"), qemu_to_json(q)),
        EventKind::Daemon(d) => ("daemon", Some("daemon"), daemon_to_json(d)),
    };
    v["type"] = json!(ty);
    if let Some(key) = key {
        v[key] = payload;
    }
    v
}

pub fn event_from_json(v: &Value) -> Result<Event, ProtocolError> {
    let o = Obj::of(v, "event")?;
    let kind = match o.str("type")? {
        "state" => EventKind::State {
            state: state_of(&o, "state")?,
            previous: state_of(&o, "previous")?,
        },
        "job-started" => EventKind::JobStarted(job_from_json(o.get("job")?)?),
        "job-progress" => EventKind::JobProgress(job_from_json(o.get("job")?)?),
        "job-ended" => EventKind::JobEnded(job_from_json(o.get("job")?)?),
        "exited" => EventKind::Exited(exit_from_json(o.get("exit")?)?),
        "qemu" => EventKind::Qemu(qemu_from_json(o.get("qemu")?)?),
        "daemon" => EventKind::Daemon(daemon_from_json(o.get("daemon")?)?),
        other => {
            return Err(invalid(
                "type",
                &format!("must be one of {}", EVENT_TYPES.join(", ")),
                &Value::from(other),
            ))
        }
    };
    Ok(Event {
        seq: o.u64("seq")?,
        at_ms: o.u64("at_ms")?,
        instance: o
            .opt_str("instance")?
            .map(|s| instance_name("instance", s))
            .transpose()?,
        kind,
    })
}
