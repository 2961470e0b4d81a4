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
use crate::model::exit::ExitRecord;
use crate::model::field_error::FieldError;
use crate::model::name::{InstanceName, NAME_RULE};
use crate::model::state::{StopEnd, VmState};

/// Every request name, for `unknown_request` errors.
pub const REQUESTS: &[&str] = &[
    "ping", "list", "info", "start", "stop", "reboot", "pause", "resume", "cleanup", "reload",
];

/// The fields each request takes.
fn fields_of(request: &str) -> Option<&'static [&'static str]> {
    Some(match request {
        "ping" | "list" | "reload" => &[],
        "info" | "pause" | "resume" | "cleanup" => &["name"],
        "start" => &["name", "paused"],
        "stop" => &["name", "timeout", "force"],
        "reboot" => &["name", "hard", "timeout"],
        _ => return None,
    })
}

/// The longest rejected value echoed back in an error.
const MAX_ECHO: usize = 200;

/// Show a rejected JSON value, shortened if long.
fn echo(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= MAX_ECHO {
        return text;
    }
    let mut cut = MAX_ECHO;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

/// A request's fields being read: every problem is collected, so one reply names them all.
struct Fields {
    map: Map<String, Value>,
    request: &'static str,
    errors: Vec<FieldError>,
}

impl Fields {
    fn bad(&mut self, field: &str, value: &Value, rule: impl Into<String>) {
        self.errors.push(FieldError::new(field, echo(value), rule));
    }

    fn name(&mut self) -> Option<InstanceName> {
        match self.map.remove("name") {
            Some(Value::String(s)) => match InstanceName::parse(&s) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.bad(
                        "name",
                        &Value::String(s),
                        format!("{}; names are {NAME_RULE}", e.reason),
                    );
                    None
                }
            },
            Some(v) => {
                self.bad("name", &v, "must be a string");
                None
            }
            None => {
                let rule = format!("is required by {}", self.request);
                self.errors.push(FieldError::new("name", "(missing)", rule));
                None
            }
        }
    }

    fn opt_name(&mut self) -> Option<Option<InstanceName>> {
        if self.map.contains_key("name") {
            self.name().map(Some)
        } else {
            Some(None)
        }
    }

    /// A boolean; absent or null means false.
    fn bool(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(v) => {
                self.bad(key, &v, "must be a boolean");
                false
            }
        }
    }

    /// A non-negative integer up to `max`; absent or null means None.
    fn opt_u64(&mut self, key: &str, max: u64) -> Option<u64> {
        match self.map.remove(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Some(n),
                _ => {
                    self.bad(key, &v, format!("must be an integer between 0 and {max}"));
                    None
                }
            },
        }
    }

    fn finish(mut self, allowed: &[&str]) -> Result<(), ApiError> {
        for (k, v) in std::mem::take(&mut self.map) {
            let rule = format!("is not a field of {}", self.request);
            self.errors
                .push(FieldError::new(k, echo(&v), rule).with_allowed(allowed.iter()));
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.errors))
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
    let known = || vec![format!("known requests: {}", REQUESTS.join(", "))];
    let req = match map.remove("request") {
        Some(Value::String(r)) => parse_fields(&r, map),
        Some(v) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("\"request\" must be a string, not {}", echo(&v)),
        )
        .with_details(known())),
        None => Err(
            ApiError::new(ErrorCode::BadRequest, "Request has no \"request\" field")
                .with_details(known()),
        ),
    };
    (id, req)
}

fn parse_fields(request: &str, map: Map<String, Value>) -> Result<ApiRequest, ApiError> {
    let Some(allowed) = fields_of(request) else {
        let mut e = ApiError::new(
            ErrorCode::UnknownRequest,
            format!("Unknown request {}", echo(&Value::String(request.into()))),
        );
        e.fields = vec![FieldError::new(
            "request",
            echo(&Value::String(request.into())),
            "must be a known request",
        )
        .with_allowed(REQUESTS.iter())];
        return Err(e);
    };
    let name = REQUESTS
        .iter()
        .copied()
        .find(|r| *r == request)
        .expect("known request");
    let mut f = Fields {
        map,
        request: name,
        errors: Vec::new(),
    };
    let req = match name {
        "ping" => Some(ApiRequest::Ping),
        "list" => Some(ApiRequest::List),
        "reload" => Some(ApiRequest::Reload),
        "info" => f.opt_name().map(|name| ApiRequest::Info { name }),
        "start" => {
            let (n, paused) = (f.name(), f.bool("paused"));
            n.map(|name| ApiRequest::Start {
                name,
                paused,
                wait: true,
            })
        }
        "stop" => {
            let (n, timeout_s, force) = (f.name(), f.opt_u64("timeout", 86_400), f.bool("force"));
            n.map(|name| ApiRequest::Stop {
                name,
                timeout_s,
                force,
                wait: true,
            })
        }
        "reboot" => {
            let (n, hard, timeout_s) = (f.name(), f.bool("hard"), f.opt_u64("timeout", 86_400));
            if hard && timeout_s.is_some() {
                f.errors.push(FieldError::new(
                    "timeout",
                    timeout_s.unwrap_or(0).to_string(),
                    "only applies to a soft reboot (hard is true)",
                ));
            }
            n.map(|name| ApiRequest::Reboot {
                name,
                hard,
                timeout_s,
                wait: true,
            })
        }
        "pause" => f.name().map(|name| ApiRequest::Pause { name }),
        "resume" => f.name().map(|name| ApiRequest::Resume { name }),
        _ => f.name().map(|name| ApiRequest::Cleanup { name }),
    };
    f.finish(allowed)?;
    Ok(req.expect("no field errors means the request was built"))
}

/// Encode a request (client side).
pub fn encode_request(id: u64, req: &ApiRequest) -> Vec<u8> {
    let mut v = match req {
        ApiRequest::Ping => json!({"request": "ping"}),
        ApiRequest::List => json!({"request": "list"}),
        ApiRequest::Info { name: None } => json!({"request": "info"}),
        ApiRequest::Info { name: Some(n) } => json!({"request": "info", "name": n.as_str()}),
        ApiRequest::Start { name, paused, .. } => {
            json!({"request": "start", "name": name.as_str(), "paused": paused})
        }
        ApiRequest::Stop {
            name,
            timeout_s,
            force,
            ..
        } => {
            json!({"request": "stop", "name": name.as_str(), "timeout": timeout_s, "force": force})
        }
        ApiRequest::Reboot {
            name,
            hard,
            timeout_s,
            ..
        } => {
            json!({"request": "reboot", "name": name.as_str(), "hard": hard, "timeout": timeout_s})
        }
        ApiRequest::Pause { name } => json!({"request": "pause", "name": name.as_str()}),
        ApiRequest::Resume { name } => json!({"request": "resume", "name": name.as_str()}),
        ApiRequest::Cleanup { name } => json!({"request": "cleanup", "name": name.as_str()}),
        ApiRequest::Reload => json!({"request": "reload"}),
        _ => json!({"request": "unsupported"}),
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
    kind: crate::model::exit::ExitKind,
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
        operation: i.job.as_ref().map(|j| j.kind.as_str().to_string()),
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
        job: w
            .operation
            .and_then(|o| crate::model::job::Operation::parse(&o))
            .map(|kind| crate::api::JobSummary {
                id: crate::model::job::JobId(0),
                kind,
                phase: kind.as_str().to_string(),
            }),
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
        ApiReply::Paused(i) => json!({"paused": vm(i)}),
        ApiReply::Resumed(i) => json!({"resumed": vm(i)}),
        ApiReply::CleanedUp { name } => json!({"cleaned_up": name.as_str()}),
        ApiReply::Reloaded {
            added,
            removed,
            changed,
            node_changed,
        } => {
            json!({"reloaded": {"added": added, "removed": removed, "changed": changed, "node_changed": node_changed}})
        }
        _ => json!({}),
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
        ApiRequest::Ping => ApiReply::Pong {
            version: r
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        },
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
        ApiRequest::Pause { .. } => ApiReply::Paused(vm(r.get("paused").ok_or("no paused")?)?),
        ApiRequest::Resume { .. } => {
            ApiReply::Resumed(vm(r.get("resumed").ok_or("no resumed")?)?)
        }
        ApiRequest::Cleanup { name } => ApiReply::CleanedUp { name: name.clone() },
        ApiRequest::Reload => {
            let rl = r.get("reloaded").ok_or("no reloaded")?;
            ApiReply::Reloaded {
                added: strs(rl.get("added")),
                removed: strs(rl.get("removed")),
                changed: strs(rl.get("changed")),
                node_changed: rl
                    .get("node_changed")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        }
        _ => return Err("unsupported request".into()),
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
                force: true,
                wait: true
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
    fn every_bad_field_is_reported_at_once_and_long_values_are_shortened() {
        let long = "x".repeat(10_000);
        let line = format!(
            r#"{{"request": "stop", "name": "../etc", "timeout": "soon", "force": 1, "pad": "{long}"}}"#
        );
        let e = err_of(&line);
        let fields: Vec<_> = e.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "timeout", "force", "pad"]);
        assert!(e.fields[3].value.len() < 300, "{}", e.fields[3].value.len());
        assert!(e.fields[3].value.ends_with("(10002 bytes)"));
        let e = err_of(r#"{"request": 7}"#);
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = err_of(r#"{"request": "reboot", "name": "a", "hard": true, "timeout": 5}"#);
        assert_eq!(e.fields[0].field, "timeout");
        assert_eq!(
            err_of(r#"{"request": "launch"}"#).message,
            "Unknown request \"launch\""
        );
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
                wait: true,
            },
            ApiRequest::Stop {
                name: n(),
                timeout_s: None,
                force: false,
                wait: true,
            },
            ApiRequest::Reboot {
                name: n(),
                hard: false,
                timeout_s: Some(9),
                wait: true,
            },
            ApiRequest::Reboot {
                name: n(),
                hard: true,
                timeout_s: None,
                wait: true,
            },
            ApiRequest::Pause { name: n() },
            ApiRequest::Resume { name: n() },
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
