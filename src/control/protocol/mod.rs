//! The control protocol's wire format: newline-delimited JSON over the Unix socket. This is the
//! only module that knows it; the server, the client and kvmctl all go through it.
//!
//! Request: `{"id": ANY?, "request": "start", "name": "web1", "paused": false, "wait": true}`
//! (fields from the table in [`requests`]; unknown fields are refused, naming them).
//! Reply, naming its own kind so it decodes without the request:
//! `{"id": ANY, "ok": true, "kind": "started", "result": {...}}` or
//! `{"id": ANY, "ok": false, "kind": "error", "error": {"code", "message", "field"?, "value"?,
//! "rule"?, "allowed"?, "fields"?, "details"?}}`.
//! After a `subscribed` reply the connection carries stream lines:
//! `{"kind": "event", "event": {...}}`, `{"kind": "gap", "from": N, "to": M}`,
//! `{"kind": "end", "last_seq": N}`. See docs/protocol.md.
//!
//! Invariant: domain types are converted here (in [`values`]); none of them derives serde for
//! the wire's sake. Every reply and stream item round-trips.

mod fast;
pub mod requests;
pub mod values;

#[cfg(test)]
mod tests;

use serde_json::{json, Value};

use crate::api::{ApiError, ApiReply, ApiRequest, ErrorCode, StreamItem, VmInfo};
use crate::model::name::InstanceName;
use values::{
    error_from_json, error_to_json, event_from_json, event_to_json, job_from_json, job_to_json,
    vm_from_json, vm_to_json, Obj,
};

pub use requests::{FieldDefault, FieldSpec, FieldType, RequestSpec, REQUESTS};
pub use values::error_object;

/// Why a line from kvmd could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("Line is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("Unknown reply kind {0:?}")]
    UnknownKind(String),
    #[error("Reply has no kind and its result matches no known reply")]
    NoKind,
    #[error("Missing field {0:?}")]
    Missing(String),
    #[error("Field {field:?} {expected}, not {found}")]
    Invalid {
        field: String,
        expected: String,
        found: String,
    },
    #[error("Expected a reply, got a {0} stream line")]
    NotAReply(&'static str),
    #[error("Expected a stream line, got a reply")]
    NotAStreamItem,
}

/// Every reply kind of a successful request (failures have kind `error`).
pub const REPLY_KINDS: &[&str] = &[
    "pong",
    "list",
    "info",
    "started",
    "stopped",
    "rebooted",
    "paused",
    "resumed",
    "cleaned-up",
    "reloaded",
    "accepted",
    "jobs",
    "job",
    "cancelling",
    "subscribed",
    "migration-info",
    "preflight-passed",
    "migration-status",
    "migration-step",
    "pinned",
    "ballooned",
    "hotplugged",
    "console",
    "console-info",
    "node-info",
    "node-verified",
    "stats",
    "powercycling",
];

/// Every stream line kind.
pub const STREAM_KINDS: &[&str] = &["event", "gap", "end"];

/// Parse one request line. The id (if any) is returned even when the request is bad, so the
/// error reply can carry it.
pub fn parse_request(line: &[u8]) -> (Value, Result<ApiRequest, ApiError>) {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            let e = ApiError::new(
                ErrorCode::BadRequest,
                format!("Request is not valid JSON: {e}"),
            );
            return (Value::Null, Err(e));
        }
    };
    let Value::Object(mut map) = v else {
        let e = ApiError::new(ErrorCode::BadRequest, "Request must be a JSON object");
        return (Value::Null, Err(e));
    };
    let id = map.remove("id").unwrap_or(Value::Null);
    let known = || {
        let names: Vec<_> = requests::names().collect();
        vec![format!("known requests: {}", names.join(", "))]
    };
    let req = match map.remove("request") {
        Some(Value::String(r)) => requests::parse_fields(&r, map),
        Some(v) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("\"request\" must be a string, not {}", requests::echo(&v)),
        )
        .with_details(known())),
        None => Err(
            ApiError::new(ErrorCode::BadRequest, "Request has no \"request\" field")
                .with_details(known()),
        ),
    };
    (id, req)
}

/// Encode a request (client side).
pub fn encode_request(id: u64, req: &ApiRequest) -> Vec<u8> {
    let (name, mut fields) = requests::to_wire(req);
    fields.insert("id".into(), json!(id));
    fields.insert("request".into(), json!(name));
    line(&Value::Object(fields))
}

/// A request's name on the wire (`start`, `info`, ...).
pub fn request_name(req: &ApiRequest) -> &'static str {
    requests::to_wire(req).0
}

/// One compact JSON line.
fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("JSON values serialize");
    out.push(b'\n');
    out
}

/// The `kind` a successful reply carries.
pub fn reply_kind(r: &ApiReply) -> &'static str {
    match r {
        ApiReply::Pong { .. } => "pong",
        ApiReply::List(_) => "list",
        ApiReply::Info(_) => "info",
        ApiReply::Started(_) => "started",
        ApiReply::Stopped { .. } => "stopped",
        ApiReply::Rebooted(_) => "rebooted",
        ApiReply::Paused(_) => "paused",
        ApiReply::Resumed(_) => "resumed",
        ApiReply::CleanedUp { .. } => "cleaned-up",
        ApiReply::Reloaded { .. } => "reloaded",
        ApiReply::Accepted(_) => "accepted",
        ApiReply::Jobs(_) => "jobs",
        ApiReply::Job(_) => "job",
        ApiReply::Cancelling(_) => "cancelling",
        ApiReply::Subscribed { .. } => "subscribed",
        ApiReply::MigrationInfo { .. } => "migration-info",
        ApiReply::PreflightPassed { .. } => "preflight-passed",
        ApiReply::MigrationStatus { .. } => "migration-status",
        ApiReply::MigrationStep(_) => "migration-step",
        ApiReply::Pinned(_) => "pinned",
        ApiReply::Ballooned(_) => "ballooned",
        ApiReply::Hotplugged(_) => "hotplugged",
        ApiReply::Console { .. } => "console",
        ApiReply::ConsoleInfo(_) => "console-info",
        ApiReply::NodeInfo(_) => "node-info",
        ApiReply::Stats(_) => "stats",
        ApiReply::NodeVerified(_) => "node-verified",
        ApiReply::Powercycling { .. } => "powercycling",
    }
}

fn vms_json(v: &[VmInfo]) -> Value {
    Value::Array(v.iter().map(vm_to_json).collect())
}

/// The `result` object of a successful reply (the shapes of kvmd 0.1 where they existed).
fn reply_result(r: &ApiReply) -> Value {
    match r {
        ApiReply::Pong { version } => json!({"pong": true, "version": version}),
        ApiReply::List(v) | ApiReply::Info(v) => json!({"instances": vms_json(v)}),
        ApiReply::Started(i) => json!({"started": vm_to_json(i)}),
        ApiReply::Stopped {
            ended,
            elapsed_ms,
            info,
        } => {
            json!({"ended": ended.as_str(), "elapsed_ms": elapsed_ms, "instance": vm_to_json(info)})
        }
        ApiReply::Rebooted(i) => json!({"rebooted": vm_to_json(i)}),
        ApiReply::Paused(i) => json!({"paused": vm_to_json(i)}),
        ApiReply::Resumed(i) => json!({"resumed": vm_to_json(i)}),
        ApiReply::CleanedUp { name } => json!({"cleaned_up": name.as_str()}),
        ApiReply::Reloaded {
            added,
            removed,
            changed,
            node_changed,
        } => json!({"reloaded": {
            "added": added, "removed": removed, "changed": changed, "node_changed": node_changed,
        }}),
        ApiReply::Accepted(j) | ApiReply::Job(j) | ApiReply::Cancelling(j) => {
            json!({"job": job_to_json(j)})
        }
        ApiReply::Jobs(v) => json!({"jobs": v.iter().map(job_to_json).collect::<Vec<_>>()}),
        ApiReply::Subscribed { last_seq } => json!({"last_seq": last_seq}),
        ApiReply::MigrationInfo { info } => json!({"info": info}),
        ApiReply::PreflightPassed {
            machine,
            qemu_version,
        } => json!({"preflight": "passed", "machine": machine, "qemu_version": qemu_version}),
        ApiReply::MigrationStatus { info, migration } => json!({
            "instance": vm_to_json(info),
            "migration": values::migration_to_json(migration),
        }),
        ApiReply::MigrationStep(i) => json!({"instance": vm_to_json(i)}),
        ApiReply::Pinned(i) => json!({"pinned": vm_to_json(i)}),
        ApiReply::Ballooned(i) => json!({"ballooned": vm_to_json(i)}),
        ApiReply::Hotplugged(i) => json!({"hotplugged": vm_to_json(i)}),
        ApiReply::Console { name, writer } => json!({"console": name.as_str(), "writer": writer}),
        ApiReply::ConsoleInfo(c) => json!({
            "name": c.name.as_str(), "kind": c.kind, "command": c.command,
            "host": c.host, "port": c.port, "password_file": c.password_file,
        }),
        ApiReply::NodeInfo(n) => json!({"node": values::node_to_json(n)}),
        ApiReply::Stats(s) => {
            json!({"stats": s.iter().map(values::stats_to_json).collect::<Vec<_>>()})
        }
        ApiReply::NodeVerified(v) => json!({"findings": v.iter().map(|f| json!({
            "severity": f.severity, "check": f.check, "detail": f.detail,
        })).collect::<Vec<_>>()}),
        ApiReply::Powercycling { steps } => json!({"powercycling": steps}),
    }
}

/// A reply as a JSON value (kvmctl prints replies it built itself the same way).
pub fn reply_value(id: &Value, r: &Result<ApiReply, ApiError>) -> Value {
    match r {
        Ok(reply) => json!({
            "id": id, "ok": true, "kind": reply_kind(reply), "result": reply_result(reply),
        }),
        Err(e) => json!({"id": id, "ok": false, "kind": "error", "error": error_to_json(e)}),
    }
}

/// Encode a reply (server side).
pub fn encode_reply(id: &Value, r: &Result<ApiReply, ApiError>) -> Vec<u8> {
    match r {
        Ok(ApiReply::List(v)) => fast::instances_line(id, "list", v),
        Ok(ApiReply::Info(v)) => fast::instances_line(id, "info", v),
        _ => line(&reply_value(id, r)),
    }
}

/// A stream item as a JSON value.
pub fn stream_item_value(item: &StreamItem) -> Value {
    match item {
        StreamItem::Event(e) => json!({"kind": "event", "event": event_to_json(e)}),
        StreamItem::Gap { from, to } => json!({"kind": "gap", "from": from, "to": to}),
        StreamItem::End { last_seq } => json!({"kind": "end", "last_seq": last_seq}),
    }
}

/// Encode one stream line (server side).
pub fn encode_stream_item(item: &StreamItem) -> Vec<u8> {
    line(&stream_item_value(item))
}

/// A decoded reply (client side): the id, and the result or error.
#[derive(Debug)]
pub struct DecodedReply {
    pub id: Value,
    pub result: Result<ApiReply, ApiError>,
}

/// Any line kvmd sends: a reply, or (on a subscribed connection) a stream item.
#[derive(Debug)]
pub enum Incoming {
    Reply(DecodedReply),
    Item(StreamItem),
}

/// The kind of a reply from a kvmd that did not name it (0.1), from its result's shape.
fn infer_kind(result: &Value) -> Result<&'static str, ProtocolError> {
    const SHAPES: &[(&str, &str)] = &[
        ("pong", "pong"),
        ("instances", "info"),
        ("started", "started"),
        ("ended", "stopped"),
        ("rebooted", "rebooted"),
        ("paused", "paused"),
        ("resumed", "resumed"),
        ("cleaned_up", "cleaned-up"),
        ("reloaded", "reloaded"),
    ];
    SHAPES
        .iter()
        .find(|(key, _)| result.get(key).is_some())
        .map(|(_, kind)| *kind)
        .ok_or(ProtocolError::NoKind)
}

fn decode_result(kind: &str, r: &Value) -> Result<ApiReply, ProtocolError> {
    let o = Obj::of(r, "result")?;
    let vms = || -> Result<Vec<VmInfo>, ProtocolError> {
        o.array("instances")?.iter().map(vm_from_json).collect()
    };
    Ok(match kind {
        "pong" => ApiReply::Pong {
            version: o.str("version")?.to_string(),
        },
        "list" => ApiReply::List(vms()?),
        "info" => ApiReply::Info(vms()?),
        "started" => ApiReply::Started(vm_from_json(o.get("started")?)?),
        "stopped" => ApiReply::Stopped {
            ended: values::stop_end_of(&o, "ended")?,
            elapsed_ms: o.u64("elapsed_ms")?,
            info: vm_from_json(o.get("instance")?)?,
        },
        "rebooted" => ApiReply::Rebooted(vm_from_json(o.get("rebooted")?)?),
        "paused" => ApiReply::Paused(vm_from_json(o.get("paused")?)?),
        "resumed" => ApiReply::Resumed(vm_from_json(o.get("resumed")?)?),
        "cleaned-up" => {
            let name = o.str("cleaned_up")?;
            ApiReply::CleanedUp {
                name: InstanceName::parse(name)
                    .map_err(|_| values::invalid("cleaned_up", "must be a name", &json!(name)))?,
            }
        }
        "reloaded" => {
            let rl = o.obj("reloaded")?;
            ApiReply::Reloaded {
                added: rl.strs("added")?,
                removed: rl.strs("removed")?,
                changed: rl.strs("changed")?,
                node_changed: rl.bool("node_changed")?,
            }
        }
        "accepted" => ApiReply::Accepted(job_from_json(o.get("job")?)?),
        "job" => ApiReply::Job(job_from_json(o.get("job")?)?),
        "cancelling" => ApiReply::Cancelling(job_from_json(o.get("job")?)?),
        "jobs" => ApiReply::Jobs(
            o.array("jobs")?
                .iter()
                .map(job_from_json)
                .collect::<Result<_, _>>()?,
        ),
        "subscribed" => ApiReply::Subscribed {
            last_seq: o.u64("last_seq")?,
        },
        "migration-info" => ApiReply::MigrationInfo {
            info: o.str("info")?.to_string(),
        },
        "preflight-passed" => ApiReply::PreflightPassed {
            machine: o.str("machine")?.to_string(),
            qemu_version: o.str("qemu_version")?.to_string(),
        },
        "migration-status" => ApiReply::MigrationStatus {
            info: vm_from_json(o.get("instance")?)?,
            migration: Box::new(values::migration_from_json(o.get("migration")?)?),
        },
        "migration-step" => ApiReply::MigrationStep(vm_from_json(o.get("instance")?)?),
        "pinned" => ApiReply::Pinned(vm_from_json(o.get("pinned")?)?),
        "ballooned" => ApiReply::Ballooned(vm_from_json(o.get("ballooned")?)?),
        "hotplugged" => ApiReply::Hotplugged(vm_from_json(o.get("hotplugged")?)?),
        "console" => ApiReply::Console {
            name: {
                let s = o.str("console")?;
                InstanceName::parse(s)
                    .map_err(|_| values::invalid("console", "must be a name", &json!(s)))?
            },
            writer: o.bool("writer")?,
        },
        "console-info" => ApiReply::ConsoleInfo(crate::api::ConsoleInfo {
            name: {
                let s = o.str("name")?;
                InstanceName::parse(s)
                    .map_err(|_| values::invalid("name", "must be a name", &json!(s)))?
            },
            kind: o.str("kind")?.to_string(),
            command: o.strs("command")?,
            host: o.opt_str("host")?.map(String::from),
            port: o
                .opt_u64("port")?
                .map(|p| {
                    u16::try_from(p).map_err(|_| {
                        values::invalid(
                            "port",
                            "must be a port",
                            o.get("port").unwrap_or(&Value::Null),
                        )
                    })
                })
                .transpose()?,
            password_file: o.opt_str("password_file")?.map(String::from),
        }),
        "node-info" => ApiReply::NodeInfo(Box::new(values::node_from_json(o.get("node")?)?)),
        "stats" => ApiReply::Stats(
            o.array("stats")?
                .iter()
                .map(values::stats_from_json)
                .collect::<Result<_, _>>()?,
        ),
        "node-verified" => ApiReply::NodeVerified(
            o.array("findings")?
                .iter()
                .map(|f| {
                    let f = Obj::of(f, "finding")?;
                    Ok(crate::api::NodeFinding {
                        severity: f.str("severity")?.to_string(),
                        check: f.str("check")?.to_string(),
                        detail: f.str("detail")?.to_string(),
                    })
                })
                .collect::<Result<_, ProtocolError>>()?,
        ),
        "powercycling" => ApiReply::Powercycling {
            steps: o.strs("powercycling")?,
        },
        other => return Err(ProtocolError::UnknownKind(other.to_string())),
    })
}

/// Decode any line kvmd sends. Replies name their kind; a reply from a kvmd that did not
/// (0.1) is recognised by its result's shape.
pub fn decode_line(line: &[u8]) -> Result<Incoming, ProtocolError> {
    let v: Value = serde_json::from_slice(line).map_err(ProtocolError::NotJson)?;
    let o = Obj::of(&v, "line")?;
    let kind = o.opt_str("kind")?;
    match kind {
        Some("event") => {
            return Ok(Incoming::Item(StreamItem::Event(event_from_json(
                o.get("event")?,
            )?)))
        }
        Some("gap") => {
            return Ok(Incoming::Item(StreamItem::Gap {
                from: o.u64("from")?,
                to: o.u64("to")?,
            }))
        }
        Some("end") => {
            return Ok(Incoming::Item(StreamItem::End {
                last_seq: o.u64("last_seq")?,
            }))
        }
        _ => {}
    }
    let id = o.opt("id").cloned().unwrap_or(Value::Null);
    let result = if o.bool("ok")? {
        let r = o.get("result")?;
        let kind = match kind {
            Some(k) => k,
            None => infer_kind(r)?,
        };
        Ok(decode_result(kind, r)?)
    } else {
        Err(error_from_json(o.get("error")?)?)
    };
    Ok(Incoming::Reply(DecodedReply { id, result }))
}

/// Decode a reply line; a stream line here is an error.
pub fn decode_reply(line: &[u8]) -> Result<DecodedReply, ProtocolError> {
    match decode_line(line)? {
        Incoming::Reply(r) => Ok(r),
        Incoming::Item(StreamItem::Event(_)) => Err(ProtocolError::NotAReply("event")),
        Incoming::Item(StreamItem::Gap { .. }) => Err(ProtocolError::NotAReply("gap")),
        Incoming::Item(StreamItem::End { .. }) => Err(ProtocolError::NotAReply("end")),
    }
}

/// Decode a stream line; a reply here is an error.
pub fn decode_stream_item(line: &[u8]) -> Result<StreamItem, ProtocolError> {
    match decode_line(line)? {
        Incoming::Item(item) => Ok(item),
        Incoming::Reply(_) => Err(ProtocolError::NotAStreamItem),
    }
}
