//! The control protocol's wire format: newline-delimited JSON over the Unix socket. This is the
//! only module that knows it; both the server (`control`) and the client (`client`) use it.
//!
//! Request: `{"id": ANY?, "request": "start", "name": "web1", "paused": false}`.
//! Reply: `{"id": ANY, "ok": true, "result": {...}}` or
//! `{"id": ANY, "ok": false, "error": {"code", "message", "field"?, "value"?, "rule"?, "allowed"?, "fields"?, "details"?}}`.
//! Unknown fields in a request are refused with the field named. See docs/protocol.md.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::api::{ApiError, ApiReply, ApiRequest, ErrorCode, VmInfo};
use crate::check::FieldError;
use crate::name::{InstanceName, NAME_RULE};
use crate::runtime::ExitRecord;
use crate::vmstate::{StopEnd, VmState};

/// Every request name, for `unknown_request` errors.
pub const REQUESTS: &[&str] = &[
    "ping", "list", "info", "start", "stop", "reboot", "cleanup", "reload",
];

fn field_err(field: &str, value: &Value, rule: &str) -> ApiError {
    ApiError::invalid(vec![FieldError::new(field, value.to_string(), rule)])
}

struct Fields {
    map: Map<String, Value>,
    request: &'static str,
    allowed: &'static [&'static str],
}

impl Fields {
    fn name(&mut self) -> Result<InstanceName, ApiError> {
        match self.map.remove("name") {
            Some(Value::String(s)) => InstanceName::parse(&s).map_err(|e| {
                ApiError::invalid(vec![FieldError::new(
                    "name",
                    format!("{s:?}"),
                    format!("{}; names are {NAME_RULE}", e.reason),
                )])
            }),
            Some(v) => Err(field_err("name", &v, "must be a string")),
            None => Err(ApiError::invalid(vec![FieldError::new(
                "name",
                "(missing)",
                format!("is required by {}", self.request),
            )])),
        }
    }

    fn opt_name(&mut self) -> Result<Option<InstanceName>, ApiError> {
        if self.map.contains_key("name") {
            self.name().map(Some)
        } else {
            Ok(None)
        }
    }

    fn bool(&mut self, key: &str) -> Result<bool, ApiError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(field_err(key, &v, "must be a boolean")),
        }
    }

    fn opt_u64(&mut self, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(field_err(
                    key,
                    &v,
                    &format!("must be an integer between 0 and {max}"),
                )),
            },
        }
    }

    fn finish(self) -> Result<(), ApiError> {
        match self.map.into_iter().next() {
            None => Ok(()),
            Some((k, v)) => Err(ApiError::invalid(vec![FieldError::new(
                k,
                v.to_string(),
                format!("is not a field of {}", self.request),
            )
            .with_allowed(self.allowed.iter())])),
        }
    }
}

/// Parse one request line. The id (if any) is returned even when the request is bad, so the
/// error reply can carry it.
pub fn parse_request(line: &[u8]) -> (Value, Result<ApiRequest, ApiError>) {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return (
                Value::Null,
                Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("Request is not valid JSON: {e}"),
                )),
            )
        }
    };
    let Value::Object(mut map) = v else {
        return (
            Value::Null,
            Err(ApiError::new(
                ErrorCode::BadRequest,
                "Request must be a JSON object",
            )),
        );
    };
    let id = map.remove("id").unwrap_or(Value::Null);
    let req = match map.remove("request") {
        Some(Value::String(r)) => parse_fields(&r, map),
        Some(v) => Err(ApiError::invalid(vec![FieldError::new(
            "request",
            v.to_string(),
            "must be a string",
        )
        .with_allowed(REQUESTS.iter())])),
        None => Err(
            ApiError::new(ErrorCode::BadRequest, "Request has no \"request\" field")
                .with_details(vec![format!("known requests: {}", REQUESTS.join(", "))]),
        ),
    };
    (id, req)
}

fn parse_fields(request: &str, map: Map<String, Value>) -> Result<ApiRequest, ApiError> {
    let (name, allowed): (&'static str, &'static [&'static str]) = match request {
        "ping" => ("ping", &[]),
        "list" => ("list", &[]),
        "info" => ("info", &["name"]),
        "start" => ("start", &["name", "paused"]),
        "stop" => ("stop", &["name", "timeout", "force"]),
        "reboot" => ("reboot", &["name", "hard"]),
        "cleanup" => ("cleanup", &["name"]),
        "reload" => ("reload", &[]),
        other => {
            let mut e = ApiError::new(
                ErrorCode::UnknownRequest,
                format!("Unknown request {other:?}"),
            );
            e.fields =
                vec![
                    FieldError::new("request", format!("{other:?}"), "must be a known request")
                        .with_allowed(REQUESTS.iter()),
                ];
            return Err(e);
        }
    };
    let mut f = Fields {
        map,
        request: name,
        allowed,
    };
    let req = match name {
        "ping" => ApiRequest::Ping,
        "list" => ApiRequest::List,
        "info" => ApiRequest::Info {
            name: f.opt_name()?,
        },
        "start" => ApiRequest::Start {
            name: f.name()?,
            paused: f.bool("paused")?,
        },
        "stop" => ApiRequest::Stop {
            name: f.name()?,
            timeout_s: f.opt_u64("timeout", 86_400)?,
            force: f.bool("force")?,
        },
        "reboot" => ApiRequest::Reboot {
            name: f.name()?,
            hard: f.bool("hard")?,
        },
        "cleanup" => ApiRequest::Cleanup { name: f.name()? },
        _ => ApiRequest::Reload,
    };
    f.finish()?;
    Ok(req)
}

/// Encode a request (client side).
pub fn encode_request(id: u64, req: &ApiRequest) -> Vec<u8> {
    let mut v = match req {
        ApiRequest::Ping => json!({"request": "ping"}),
        ApiRequest::List => json!({"request": "list"}),
        ApiRequest::Info { name: None } => json!({"request": "info"}),
        ApiRequest::Info { name: Some(n) } => json!({"request": "info", "name": n.as_str()}),
        ApiRequest::Start { name, paused } => {
            json!({"request": "start", "name": name.as_str(), "paused": paused})
        }
        ApiRequest::Stop {
            name,
            timeout_s,
            force,
        } => {
            json!({"request": "stop", "name": name.as_str(), "timeout": timeout_s, "force": force})
        }
        ApiRequest::Reboot { name, hard } => {
            json!({"request": "reboot", "name": name.as_str(), "hard": hard})
        }
        ApiRequest::Cleanup { name } => json!({"request": "cleanup", "name": name.as_str()}),
        ApiRequest::Reload => json!({"request": "reload"}),
    };
    v["id"] = json!(id);
    line(&v)
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("JSON value serializes");
    out.push(b'\n');
    out
}

#[derive(Serialize, Deserialize)]
struct WireExit {
    kind: crate::runtime::ExitKind,
    reason: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    stderr_tail: Vec<String>,
    pid: u32,
    at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct WireVm {
    name: String,
    state: String,
    pid: Option<u32>,
    memory_mib: u64,
    vcpus: u32,
    cpu_time_ms: Option<u64>,
    uptime_s: Option<u64>,
    started_at_ms: Option<u64>,
    qemu_version: Option<String>,
    autostart: bool,
    in_config: bool,
    pending_changes: bool,
    operation: Option<String>,
    last_exit: Option<WireExit>,
}

fn vm_to_wire(i: &VmInfo) -> WireVm {
    WireVm {
        name: i.name.to_string(),
        state: i.state.as_str().to_string(),
        pid: i.pid,
        memory_mib: i.memory_mib,
        vcpus: i.vcpus,
        cpu_time_ms: i.cpu_time_ms,
        uptime_s: i.uptime_s,
        started_at_ms: i.started_at_ms,
        qemu_version: i.qemu_version.clone(),
        autostart: i.autostart,
        in_config: i.in_config,
        pending_changes: i.pending_changes,
        operation: i.operation.map(str::to_string),
        last_exit: i.last_exit.as_ref().map(|e| WireExit {
            kind: e.kind,
            reason: e.reason.clone(),
            exit_code: e.exit_code,
            signal: e.signal,
            stderr_tail: e.stderr_tail.clone(),
            pid: e.pid,
            at_ms: e.at_ms,
        }),
    }
}

const STATES: [VmState; 8] = [
    VmState::Stopped,
    VmState::Starting,
    VmState::Running,
    VmState::Paused,
    VmState::Stopping,
    VmState::UserDown,
    VmState::Crashed,
    VmState::Unresponsive,
];

fn vm_from_wire(w: WireVm) -> Result<VmInfo, String> {
    const OPS: [&str; 4] = ["start", "stop", "reboot", "recovery"];
    Ok(VmInfo {
        name: InstanceName::parse(&w.name).map_err(|e| e.to_string())?,
        state: STATES
            .into_iter()
            .find(|s| s.as_str() == w.state)
            .ok_or_else(|| format!("unknown state {:?}", w.state))?,
        pid: w.pid,
        memory_mib: w.memory_mib,
        vcpus: w.vcpus,
        cpu_time_ms: w.cpu_time_ms,
        uptime_s: w.uptime_s,
        started_at_ms: w.started_at_ms,
        qemu_version: w.qemu_version,
        autostart: w.autostart,
        in_config: w.in_config,
        pending_changes: w.pending_changes,
        operation: w.operation.and_then(|o| OPS.into_iter().find(|x| *x == o)),
        last_exit: w.last_exit.map(|e| ExitRecord {
            kind: e.kind,
            reason: e.reason,
            exit_code: e.exit_code,
            signal: e.signal,
            stderr_tail: e.stderr_tail,
            pid: e.pid,
            at_ms: e.at_ms,
        }),
    })
}

fn reply_result(r: &ApiReply) -> Value {
    let vms = |v: &[VmInfo]| {
        serde_json::to_value(v.iter().map(vm_to_wire).collect::<Vec<_>>()).expect("serializes")
    };
    let vm = |v: &VmInfo| serde_json::to_value(vm_to_wire(v)).expect("serializes");
    match r {
        ApiReply::Pong { version } => json!({"pong": true, "version": version}),
        ApiReply::List(v) => json!({"instances": vms(v)}),
        ApiReply::Info(v) => json!({"instances": vms(v)}),
        ApiReply::Started(i) => json!({"started": vm(i)}),
        ApiReply::Stopped {
            ended,
            elapsed_ms,
            info,
        } => json!({"ended": ended.as_str(), "elapsed_ms": elapsed_ms, "instance": vm(info)}),
        ApiReply::Rebooted(i) => json!({"rebooted": vm(i)}),
        ApiReply::CleanedUp { name } => json!({"cleaned_up": name.as_str()}),
        ApiReply::Reloaded {
            added,
            removed,
            changed,
        } => json!({"reloaded": {"added": added, "removed": removed, "changed": changed}}),
    }
}

/// Encode a reply (server side).
pub fn encode_reply(id: &Value, r: &Result<ApiReply, ApiError>) -> Vec<u8> {
    let v = match r {
        Ok(reply) => json!({"id": id, "ok": true, "result": reply_result(reply)}),
        Err(e) => json!({"id": id, "ok": false, "error": error_value(e)}),
    };
    line(&v)
}

fn field_value(f: &FieldError) -> Value {
    let mut m = json!({"field": f.field, "value": f.value, "rule": f.rule});
    if !f.allowed.is_empty() {
        m["allowed"] = json!(f.allowed);
    }
    m
}

fn error_value(e: &ApiError) -> Value {
    let mut v = json!({"code": e.code.as_str(), "message": e.message});
    if let Some(first) = e.fields.first() {
        for (k, val) in field_value(first).as_object().expect("object") {
            v[k] = val.clone();
        }
        v["fields"] = Value::Array(e.fields.iter().map(field_value).collect());
    }
    if !e.details.is_empty() {
        v["details"] = json!(e.details);
    }
    v
}

/// A decoded reply (client side): the id, and the result or error.
pub struct DecodedReply {
    pub id: Value,
    pub result: Result<ApiReply, ApiError>,
}

/// Decode a reply line. The request is needed to know which result shape to expect.
pub fn decode_reply(line: &[u8], req: &ApiRequest) -> Result<DecodedReply, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("reply is not JSON: {e}"))?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    if v.get("ok").and_then(Value::as_bool) != Some(true) {
        let e = v
            .get("error")
            .ok_or("reply has neither ok=true nor error")?;
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let code = ErrorCode::parse(&s("code")).unwrap_or(ErrorCode::Internal);
        let fields = e
            .get("fields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|f| {
                        let g =
                            |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                        let allowed = f
                            .get("allowed")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default();
                        FieldError {
                            field: g("field"),
                            value: g("value"),
                            rule: g("rule"),
                            allowed,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let details = e
            .get("details")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        return Ok(DecodedReply {
            id,
            result: Err(ApiError {
                code,
                message: s("message"),
                fields,
                details,
            }),
        });
    }
    let r = v.get("result").ok_or("reply has no result")?;
    let vm = |x: &Value| -> Result<VmInfo, String> {
        vm_from_wire(serde_json::from_value(x.clone()).map_err(|e| e.to_string())?)
    };
    let vms = |x: Option<&Value>| -> Result<Vec<VmInfo>, String> {
        x.and_then(Value::as_array)
            .ok_or("no instances")?
            .iter()
            .map(vm)
            .collect()
    };
    let strs = |x: Option<&Value>| -> Vec<String> {
        x.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let reply = match req {
        ApiRequest::Ping => ApiReply::Pong { version: "remote" },
        ApiRequest::List => ApiReply::List(vms(r.get("instances"))?),
        ApiRequest::Info { .. } => ApiReply::Info(vms(r.get("instances"))?),
        ApiRequest::Start { .. } => ApiReply::Started(vm(r.get("started").ok_or("no started")?)?),
        ApiRequest::Stop { .. } => {
            let ended = match r.get("ended").and_then(Value::as_str) {
                Some("acpi") => StopEnd::Acpi,
                Some("sigterm") => StopEnd::Sigterm,
                Some("sigkill") => StopEnd::Sigkill,
                _ => StopEnd::AlreadyStopped,
            };
            ApiReply::Stopped {
                ended,
                elapsed_ms: r.get("elapsed_ms").and_then(Value::as_u64).unwrap_or(0),
                info: vm(r.get("instance").ok_or("no instance")?)?,
            }
        }
        ApiRequest::Reboot { .. } => {
            ApiReply::Rebooted(vm(r.get("rebooted").ok_or("no rebooted")?)?)
        }
        ApiRequest::Cleanup { name } => ApiReply::CleanedUp { name: name.clone() },
        ApiRequest::Reload => {
            let rl = r.get("reloaded").ok_or("no reloaded")?;
            ApiReply::Reloaded {
                added: strs(rl.get("added")),
                removed: strs(rl.get("removed")),
                changed: strs(rl.get("changed")),
            }
        }
    };
    Ok(DecodedReply {
        id,
        result: Ok(reply),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(line: &str) -> ApiError {
        parse_request(line.as_bytes()).1.unwrap_err()
    }

    #[test]
    fn requests_parse_with_their_fields() {
        let (id, r) = parse_request(
            br#"{"id": 7, "request": "stop", "name": "web1", "timeout": 30, "force": true}"#,
        );
        assert_eq!(id, json!(7));
        assert_eq!(
            r.unwrap(),
            ApiRequest::Stop {
                name: InstanceName::parse("web1").unwrap(),
                timeout_s: Some(30),
                force: true
            }
        );
        assert_eq!(
            parse_request(br#"{"request": "info"}"#).1.unwrap(),
            ApiRequest::Info { name: None }
        );
    }

    #[test]
    fn bad_requests_get_stable_codes_and_name_the_field() {
        assert_eq!(err_of("{nope").code, ErrorCode::BadRequest);
        assert_eq!(err_of("[1]").code, ErrorCode::BadRequest);
        let e = err_of(r#"{"request": "launch"}"#);
        assert_eq!(e.code, ErrorCode::UnknownRequest);
        assert!(e.fields[0].allowed.contains(&"start".to_string()));
        let e = err_of(r#"{"request": "start", "name": "../etc"}"#);
        assert_eq!(
            (e.code, e.fields[0].field.as_str()),
            (ErrorCode::InvalidParameter, "name")
        );
        let e = err_of(r#"{"request": "start", "name": "a", "pause": true}"#);
        assert_eq!(e.fields[0].field, "pause");
        assert_eq!(e.fields[0].allowed, ["name", "paused"]);
        let e = err_of(r#"{"request": "stop", "name": "a", "timeout": -1}"#);
        assert_eq!(e.fields[0].field, "timeout");
        let e = err_of(r#"{"request": "stop"}"#);
        assert_eq!(e.fields[0].field, "name");
    }

    #[test]
    fn every_request_round_trips() {
        let n = || InstanceName::parse("a").unwrap();
        for req in [
            ApiRequest::Ping,
            ApiRequest::List,
            ApiRequest::Info { name: Some(n()) },
            ApiRequest::Start {
                name: n(),
                paused: true,
            },
            ApiRequest::Stop {
                name: n(),
                timeout_s: None,
                force: false,
            },
            ApiRequest::Reboot {
                name: n(),
                hard: true,
            },
            ApiRequest::Cleanup { name: n() },
            ApiRequest::Reload,
        ] {
            let line = encode_request(3, &req);
            assert_eq!(parse_request(&line).1.unwrap(), req);
        }
    }

    #[test]
    fn errors_round_trip_with_fields() {
        let e = ApiError::invalid(vec![FieldError::new(
            "hvparams.acpi",
            "\"yes\"",
            "must be a boolean",
        )
        .with_allowed(["true", "false"])]);
        let line = encode_reply(&json!(1), &Err(e.clone()));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["error"]["field"], "hvparams.acpi");
        assert_eq!(v["error"]["code"], "invalid_parameter");
        let back = decode_reply(&line, &ApiRequest::Ping)
            .unwrap()
            .result
            .unwrap_err();
        assert_eq!(back, e);
    }
}
