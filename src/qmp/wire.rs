//! QMP's JSON: encoding commands and their arguments, parsing the greeting, replies and events,
//! decoding typed results, and bounded excerpts of lines for logs.
//!
//! Event decoding is lenient (see [`QmpEvent`] for the fallbacks): a known event with a
//! missing string or boolean field keeps its variant with a default, one with a missing number
//! becomes `Other`. Reply decoding is strict: a reply that does not have the documented shape
//! is an error naming what is wrong, never a guessed value.
//!
//! Invariant: the only place serde_json looks inside a QMP message; pure — no I/O (beyond
//! debug and warning logs of bounded excerpts), no tokio, and no panic on anything QEMU sends.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::events::QmpEvent;
use super::types::{
    BlockStats, CpuThread, Display, GuestStats, MachineInfo, MigrationInfo, MigrationParams,
    MigrationRam, MigrationStatus, PciDevice, QemuVersion, RunState, Status,
};
use super::QmpError;
use crate::model::text::{escape_bytes_clipped, escape_clipped};

/// Longest line accepted from QEMU (query-qmp-schema is ~200 KiB; leave room).
pub const MAX_LINE: usize = 8 << 20;
/// Longest event line whose data is kept: real events are well under 1 KiB, and up to
/// [`super::NOTICE_CAPACITY`] of them may wait in the channel.
pub const MAX_EVENT_LINE: usize = 16 << 10;
/// How much of an untrusted line or string goes into a log message or an error.
pub const EXCERPT: usize = 256;

/// The first [`EXCERPT`] bytes of `line`, escaped, with `…` when cut: safe to log.
pub fn excerpt(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    escape_bytes_clipped(line, EXCERPT)
}

/// `s` cut to [`EXCERPT`] bytes (at a character boundary) with control characters escaped:
/// for QEMU's strings that end up in our error messages.
fn clip(s: &str) -> String {
    escape_clipped(s, EXCERPT)
}

/// One command line: `{"execute": ..., "arguments": ..., "id": ...}` and a newline.
pub fn encode_command(command: &str, args: Option<Value>, id: u64) -> Vec<u8> {
    let mut msg = Map::new();
    msg.insert("execute".into(), json!(command));
    if let Some(a) = args {
        msg.insert("arguments".into(), a);
    }
    msg.insert("id".into(), json!(id));
    let mut line = serde_json::to_vec(&Value::Object(msg)).expect("JSON value serializes");
    line.push(b'\n');
    line
}

/// Parse `{"QMP": {"version": {"qemu": {...}, "package": ...}, "capabilities": [...]}}`.
pub fn parse_greeting(line: &[u8]) -> Result<QemuVersion, QmpError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| QmpError::Greeting(format!("{e} in {}", excerpt(line))))?;
    let version = v
        .get("QMP")
        .and_then(|q| q.get("version"))
        .ok_or_else(|| QmpError::Greeting(format!("no QMP.version in {}", excerpt(line))))?;
    decode_version(version.clone()).map_err(QmpError::Greeting)
}

/// One message from QEMU, classified.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Return {
        id: Option<u64>,
        value: Value,
    },
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
    Event {
        event: QmpEvent,
        timestamp_us: u64,
    },
    /// Valid JSON we do not understand (ignored).
    Other,
}

/// Classify one line. Unparsable lines are an error (serde's message, which does not quote
/// the line); unknown shapes are `Other`; unknown fields are ignored.
pub fn parse_incoming(line: &[u8]) -> Result<Incoming, String> {
    let mut v: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let id = v.get("id").and_then(Value::as_u64);
    if let Some(r) = v.get_mut("return") {
        return Ok(Incoming::Return {
            id,
            value: r.take(),
        });
    }
    if let Some(e) = v.get("error") {
        let text = |k: &str| e.get(k).and_then(Value::as_str).map(clip);
        return Ok(Incoming::Error {
            id,
            class: text("class").unwrap_or_else(|| "GenericError".into()),
            desc: text("desc").unwrap_or_default(),
        });
    }
    let Some(name) = v.get("event").and_then(Value::as_str).map(str::to_owned) else {
        return Ok(Incoming::Other);
    };
    let ts = v.get("timestamp");
    let part = |k: &str| ts.and_then(|t| t.get(k)).and_then(Value::as_u64);
    let timestamp_us = part("seconds")
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(part("microseconds").unwrap_or(0));
    let data = if line.len() > MAX_EVENT_LINE {
        tracing::warn!(event = %excerpt(name.as_bytes()), len = line.len(), "QMP event line too long: its data is not kept");
        Value::Null
    } else {
        v.get_mut("data").map(Value::take).unwrap_or(Value::Null)
    };
    Ok(Incoming::Event {
        event: decode_event(name, data),
        timestamp_us,
    })
}

/// Reads an event's fields, remembering which ones had to fall back.
struct Fields<'a> {
    data: &'a Value,
    missing: Vec<&'static str>,
}

impl Fields<'_> {
    fn opt_str(&self, key: &str) -> Option<String> {
        self.data
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
    fn str(&mut self, key: &'static str) -> String {
        self.opt_str(key).unwrap_or_else(|| {
            self.missing.push(key);
            String::new()
        })
    }
    fn bool(&mut self, key: &'static str) -> bool {
        self.data
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or_else(|| {
                self.missing.push(key);
                false
            })
    }
    fn num(&mut self, key: &'static str) -> Option<u64> {
        let n = self.data.get(key).and_then(Value::as_u64);
        if n.is_none() {
            self.missing.push(key);
        }
        n
    }
}

/// Type an event from its name and `data` (see [`QmpEvent`] for the fallbacks).
pub fn decode_event(name: String, data: Value) -> QmpEvent {
    let mut f = Fields {
        data: &data,
        missing: Vec::new(),
    };
    let typed = match name.as_str() {
        "SHUTDOWN" => Some(QmpEvent::Shutdown {
            guest: f.bool("guest"),
            reason: f.str("reason"),
        }),
        "RESET" => Some(QmpEvent::Reset {
            guest: f.bool("guest"),
            reason: f.str("reason"),
        }),
        "STOP" => Some(QmpEvent::Stop),
        "RESUME" => Some(QmpEvent::Resume),
        "POWERDOWN" => Some(QmpEvent::Powerdown),
        "GUEST_PANICKED" => Some(QmpEvent::GuestPanicked {
            action: f.str("action"),
        }),
        "BLOCK_IO_ERROR" => Some(QmpEvent::BlockIoError {
            device: f.str("device"),
            node_name: f.opt_str("node-name"),
            operation: f.str("operation"),
            action: f.str("action"),
            // Optional in QEMU's schema: absent means "not an out-of-space error".
            nospace: f.data.get("nospace").and_then(Value::as_bool) == Some(true),
            reason: f.str("reason"),
        }),
        "DEVICE_DELETED" => Some(QmpEvent::DeviceDeleted {
            device: f.opt_str("device"),
            path: f.str("path"),
        }),
        "DEVICE_UNPLUG_GUEST_ERROR" => Some(QmpEvent::DeviceUnplugGuestError {
            device: f.opt_str("device"),
            path: f.str("path"),
        }),
        "BALLOON_CHANGE" => f
            .num("actual")
            .map(|actual| QmpEvent::BalloonChange { actual }),
        "MIGRATION" => Some(QmpEvent::Migration {
            status: f.str("status"),
        }),
        "MIGRATION_PASS" => f.num("pass").map(|pass| QmpEvent::MigrationPass { pass }),
        _ => {
            return QmpEvent::Other { name, data };
        }
    };
    if !f.missing.is_empty() {
        tracing::debug!(event = %name, missing = ?f.missing, "QMP event lacks fields: using fallbacks");
    }
    typed.unwrap_or(QmpEvent::Other { name, data })
}

// Arguments of typed commands.

pub fn args_set_password(protocol: Display, password: &str) -> Option<Value> {
    Some(json!({"protocol": protocol.as_str(), "password": password}))
}

pub fn args_qom_list_types(implements: &str, abstract_: bool) -> Option<Value> {
    Some(json!({"implements": implements, "abstract": abstract_}))
}

pub fn args_fdname(name: &str) -> Option<Value> {
    Some(json!({ "fdname": name }))
}

pub fn args_blockdev_url(driver: &str, node_name: &str, url: &str) -> Option<Value> {
    Some(json!({ "driver": driver, "node-name": node_name, "url": url }))
}

pub fn args_migrate_capabilities(caps: &[(&str, bool)]) -> Option<Value> {
    let list: Vec<Value> = caps
        .iter()
        .map(|(c, on)| json!({"capability": c, "state": on}))
        .collect();
    Some(json!({ "capabilities": list }))
}

pub fn args_migrate_parameters(p: &MigrationParams) -> Option<Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("max-bandwidth", p.max_bandwidth),
        ("downtime-limit", p.downtime_limit),
        ("max-postcopy-bandwidth", p.max_postcopy_bandwidth),
        ("cpu-throttle-initial", p.cpu_throttle_initial),
        ("cpu-throttle-increment", p.cpu_throttle_increment),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    Some(Value::Object(m))
}

pub fn args_uri(uri: &str) -> Option<Value> {
    Some(json!({ "uri": uri }))
}

/// `query-pci` of bus 0: (slot, qdev_id) of every device.
/// Every device of `query-pci`, root bus and behind bridges (root ports), in QEMU's order.
pub fn decode_pci_devices(v: Value) -> Result<Vec<PciDevice>, String> {
    fn walk(devices: &[Value], parent: &str, out: &mut Vec<PciDevice>) {
        for d in devices {
            let Some(slot) = d
                .get("slot")
                .and_then(Value::as_u64)
                .and_then(|s| u8::try_from(s).ok())
            else {
                continue;
            };
            let id = d
                .get("qdev_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // An unmapped BAR reads as -1 (u64::MAX): the guest has not enabled it yet.
            let mapped = d
                .get("regions")
                .and_then(Value::as_array)
                .is_some_and(|rs| {
                    rs.iter().any(|r| {
                        r.get("type").and_then(Value::as_str) == Some("memory")
                            && r.get("address")
                                .and_then(Value::as_i64)
                                .is_some_and(|a| a > 0)
                    })
                });
            if let Some(children) = d
                .get("pci_bridge")
                .and_then(|b| b.get("devices"))
                .and_then(Value::as_array)
            {
                walk(children, &id, out);
            }
            out.push(PciDevice {
                bus: parent.to_string(),
                slot,
                id,
                mapped,
            });
        }
    }
    let buses = v
        .as_array()
        .ok_or_else(|| clip(&format!("not a list: {v}")))?;
    let bus0 = buses
        .iter()
        .find(|b| b.get("bus").and_then(Value::as_u64) == Some(0))
        .ok_or_else(|| "no bus 0".to_string())?;
    let mut out = Vec::new();
    if let Some(ds) = bus0.get("devices").and_then(Value::as_array) {
        walk(ds, "", &mut out);
    }
    Ok(out)
}

/// The `name`s of a list of objects (`query-commands`).
pub fn decode_names(v: Value) -> Result<Vec<String>, String> {
    let items = v
        .as_array()
        .ok_or_else(|| clip(&format!("not a list: {v}")))?;
    Ok(items
        .iter()
        .filter_map(|n| n.get("name").and_then(Value::as_str).map(String::from))
        .collect())
}

/// The `node-name`s of `query-named-block-nodes`.
pub fn decode_node_names(v: Value) -> Result<Vec<String>, String> {
    let nodes = v
        .as_array()
        .ok_or_else(|| clip(&format!("not a list: {v}")))?;
    Ok(nodes
        .iter()
        .filter_map(|n| n.get("node-name").and_then(Value::as_str).map(String::from))
        .collect())
}

pub fn args_qom_set(path: &str, property: &str, value: Value) -> Option<Value> {
    Some(json!({ "path": path, "property": property, "value": value }))
}

pub fn args_qom_get(path: &str, property: &str) -> Option<Value> {
    Some(json!({ "path": path, "property": property }))
}

/// The balloon's `guest-stats` (bytes; `last-update` in seconds since the epoch).
pub fn decode_guest_stats(v: Value) -> Result<GuestStats, String> {
    let stats = v
        .get("stats")
        .ok_or_else(|| clip(&format!("no stats in {v}")))?;
    // A statistic the guest does not report is -1: 0 here.
    let n = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(GuestStats {
        total: n("stat-total-memory"),
        free: n("stat-free-memory"),
        available: n("stat-available-memory"),
        disk_caches: n("stat-disk-caches"),
        major_faults: n("stat-major-faults"),
        minor_faults: n("stat-minor-faults"),
        swap_in: n("stat-swap-in"),
        swap_out: n("stat-swap-out"),
        last_update: v.get("last-update").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// `query-blockstats`: the counters of each device with an id (`-device ...,id=`: under
/// `/machine/peripheral/`); QEMU's own empty drives are skipped.
pub fn decode_blockstats(v: Value) -> Result<Vec<BlockStats>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| clip(&format!("not a list: {v}")))?;
    Ok(list
        .iter()
        .filter_map(|d| {
            let qdev = d.get("qdev").and_then(Value::as_str)?;
            let id = match qdev.strip_prefix("/machine/peripheral/") {
                Some(rest) => rest.split('/').next()?,
                None if !qdev.contains('/') => qdev,
                None => return None,
            };
            if id.is_empty() {
                return None;
            }
            let id = id.to_string();
            let s = d.get("stats")?;
            let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
            Some(BlockStats {
                id,
                rd_bytes: n("rd_bytes"),
                wr_bytes: n("wr_bytes"),
                rd_ops: n("rd_operations"),
                wr_ops: n("wr_operations"),
                flush_ops: n("flush_operations"),
                rd_time_ns: n("rd_total_time_ns"),
                wr_time_ns: n("wr_total_time_ns"),
            })
        })
        .collect())
}

pub fn args_balloon(bytes: u64) -> Option<Value> {
    Some(json!({ "value": bytes }))
}

/// `query-balloon`'s `actual`, in bytes.
pub fn decode_balloon(v: Value) -> Result<u64, String> {
    v.get("actual")
        .and_then(Value::as_u64)
        .ok_or_else(|| clip(&format!("no actual in {v}")))
}

// Replies of typed commands.

fn shaped<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| clip(&e.to_string()))
}

#[derive(Deserialize)]
struct WireStatus {
    status: String,
    running: Option<bool>,
}

pub fn decode_status(v: Value) -> Result<Status, String> {
    let s: WireStatus = shaped(v)?;
    let run_state = RunState::parse(&s.status);
    Ok(Status {
        // `running` has always been there; derive it should a QEMU leave it out.
        running: s.running.unwrap_or(run_state == RunState::Running),
        run_state,
    })
}

#[derive(Deserialize)]
struct WireCpu {
    #[serde(rename = "cpu-index")]
    cpu_index: u32,
    #[serde(rename = "thread-id")]
    thread_id: u32,
}

pub fn decode_cpus(v: Value) -> Result<Vec<CpuThread>, String> {
    let cpus: Vec<WireCpu> = shaped(v)?;
    Ok(cpus
        .into_iter()
        .map(|c| CpuThread {
            cpu_index: c.cpu_index,
            thread_id: c.thread_id,
        })
        .collect())
}

#[derive(Deserialize)]
struct WireTriple {
    major: u32,
    minor: u32,
    micro: u32,
}

#[derive(Deserialize)]
struct WireVersion {
    qemu: WireTriple,
    #[serde(default)]
    package: String,
}

pub fn decode_version(v: Value) -> Result<QemuVersion, String> {
    let w: WireVersion = shaped(v)?;
    Ok(QemuVersion {
        major: w.qemu.major,
        minor: w.qemu.minor,
        micro: w.qemu.micro,
        package: w.package.trim().to_string(),
    })
}

#[derive(Deserialize)]
struct WireMachine {
    name: String,
    alias: Option<String>,
    #[serde(rename = "is-default", default)]
    is_default: bool,
}

pub fn decode_machines(v: Value) -> Result<Vec<MachineInfo>, String> {
    let machines: Vec<WireMachine> = shaped(v)?;
    Ok(machines
        .into_iter()
        .map(|m| MachineInfo {
            name: m.name,
            alias: m.alias,
            is_default: m.is_default,
        })
        .collect())
}

#[derive(Deserialize)]
struct WireType {
    name: String,
}

pub fn decode_type_names(v: Value) -> Result<Vec<String>, String> {
    let types: Vec<WireType> = shaped(v)?;
    Ok(types.into_iter().map(|t| t.name).collect())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct WireMigrationRam {
    transferred: u64,
    remaining: u64,
    total: u64,
    dirty_pages_rate: u64,
    mbps: f64,
    dirty_sync_count: u64,
    page_size: u64,
    postcopy_requests: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct WireMigrationInfo {
    status: Option<String>,
    total_time: Option<u64>,
    downtime: Option<u64>,
    expected_downtime: Option<u64>,
    setup_time: Option<u64>,
    ram: Option<WireMigrationRam>,
    cpu_throttle_percentage: Option<u64>,
    error_desc: Option<String>,
}

pub fn decode_migration(v: Value) -> Result<MigrationInfo, String> {
    let w: WireMigrationInfo = shaped(v)?;
    Ok(MigrationInfo {
        status: w.status.as_deref().map(MigrationStatus::parse),
        total_time_ms: w.total_time,
        downtime_ms: w.downtime,
        expected_downtime_ms: w.expected_downtime,
        setup_time_ms: w.setup_time,
        ram: w.ram.map(|r| MigrationRam {
            transferred: r.transferred,
            remaining: r.remaining,
            total: r.total,
            dirty_pages_rate: r.dirty_pages_rate,
            mbps: r.mbps,
            dirty_sync_count: r.dirty_sync_count,
            page_size: r.page_size,
            postcopy_requests: r.postcopy_requests,
        }),
        cpu_throttle_percentage: w.cpu_throttle_percentage,
        error_desc: w.error_desc,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct WireMigrationParams {
    max_bandwidth: Option<u64>,
    downtime_limit: Option<u64>,
    max_postcopy_bandwidth: Option<u64>,
    cpu_throttle_initial: Option<u64>,
    cpu_throttle_increment: Option<u64>,
}

pub fn decode_migration_params(v: Value) -> Result<MigrationParams, String> {
    let w: WireMigrationParams = shaped(v)?;
    Ok(MigrationParams {
        max_bandwidth: w.max_bandwidth,
        downtime_limit: w.downtime_limit,
        max_postcopy_bandwidth: w.max_postcopy_bandwidth,
        cpu_throttle_initial: w.cpu_throttle_initial,
        cpu_throttle_increment: w.cpu_throttle_increment,
    })
}

#[derive(Deserialize)]
struct WireCapability {
    capability: String,
    state: bool,
}

pub fn decode_capabilities(v: Value) -> Result<Vec<(String, bool)>, String> {
    let caps: Vec<WireCapability> = shaped(v)?;
    Ok(caps.into_iter().map(|c| (c.capability, c.state)).collect())
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
