//! The TOML config file: `[node]` settings and `[instance.NAME]` definitions.
//!
//! Parsing walks the TOML tree by hand so that every problem names the file, the dotted key
//! path and the rule, unknown keys are refused, and all problems of a file are reported at once.
//!
//! Invariant: reads one file and nothing else; it does not check that referenced files exist
//! (that is the start path's node check) and never touches the run dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Value;

use crate::model::field_error::{FieldError, FieldErrors};
use crate::model::hvparams::{self, HvOverrides, HvValue};
use crate::model::name::{InstanceName, NAME_RULE};
use crate::model::spec::{
    mac_from_uuid, uuid_from_name, Accel, DiskFormat, DiskSpec, InstanceSpec, NicMode, NicSpec,
    NodeConfig,
};

/// A loaded, checked config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub node: NodeConfig,
    pub instances: BTreeMap<InstanceName, InstanceSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("Config file {path} has {} error(s): {errors}", errors.0.len())]
    Invalid { path: PathBuf, errors: FieldErrors },
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Check config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: crate::model::text::escape(&e.to_string().trim().replace('\n', " "))
                        .into_owned(),
                })?;
        let mut errs = Vec::new();
        let mut root = Obj::new("", &table);
        let node = match root.table("node") {
            Some(t) => parse_node(Obj::new("node", t), &mut errs),
            None => NodeConfig::defaults(),
        };
        let mut instances = BTreeMap::new();
        if let Some(t) = root.table("instance") {
            for (key, value) in t {
                let path = format!("instance.{key}");
                let name = match InstanceName::parse(key) {
                    Ok(n) => n,
                    Err(e) => {
                        errs.push(FieldError::new(
                            path,
                            format!("{key:?}"),
                            format!("{}; names are {NAME_RULE}", e.reason),
                        ));
                        continue;
                    }
                };
                let Some(t) = value.as_table() else {
                    errs.push(FieldError::new(path, value.to_string(), "must be a table"));
                    continue;
                };
                if let Some(spec) =
                    parse_instance(name.clone(), Obj::new(&path, t), &node, &mut errs)
                {
                    instances.insert(name, spec);
                }
            }
        }
        root.finish(&mut errs);
        if errs.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                node,
                instances,
            })
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                errors: FieldErrors(errs),
            })
        }
    }
}

fn parse_node(mut o: Obj<'_>, errs: &mut Vec<FieldError>) -> NodeConfig {
    let d = NodeConfig::defaults();
    let node = NodeConfig {
        socket: o.abs_path("socket", errs).unwrap_or(d.socket),
        socket_mode: o
            .int("socket_mode", 0, 0o777, errs)
            .unwrap_or(d.socket_mode),
        socket_group: o.string("socket_group", errs).filter(|s| !s.is_empty()),
        run_dir: o.abs_path("run_dir", errs).unwrap_or(d.run_dir),
        qemu: o.abs_path("qemu", errs).unwrap_or(d.qemu),
        accelerator: o
            .one_of("accelerator", &["kvm", "tcg"], errs)
            .map(|a| if a == "tcg" { Accel::Tcg } else { Accel::Kvm })
            .unwrap_or(d.accelerator),
        qmp_timeout: o
            .duration("qmp_timeout_ms", (10, 600_000), Duration::from_millis, errs)
            .unwrap_or(d.qmp_timeout),
        stop_timeout: o
            .duration("stop_timeout", (0, 86_400), Duration::from_secs, errs)
            .unwrap_or(d.stop_timeout),
        acpi_resend_interval: o
            .duration(
                "acpi_resend_interval",
                (1, 3_600),
                Duration::from_secs,
                errs,
            )
            .unwrap_or(d.acpi_resend_interval),
        max_request_bytes: o
            .int("max_request_bytes", 1024, 16 << 20, errs)
            .unwrap_or(d.max_request_bytes),
        hvparams: o
            .table("hvparams")
            .map(|t| parse_hvparams("node.hvparams", t, errs))
            .unwrap_or_default(),
        nic_script: o.abs_path("nic_script", errs),
        spice_cert_dir: o
            .abs_path("spice_cert_dir", errs)
            .unwrap_or(d.spice_cert_dir),
        uid_pool: match o.string("uid_pool", errs) {
            Some(text) => crate::host::uidpool::parse(&text).unwrap_or_else(|why| {
                errs.push(FieldError::new(
                    "node.uid_pool",
                    format!("{text:?}"),
                    format!("{why} (syntax: uids and ranges, e.g. \"2000-2099, 3000\")"),
                ));
                Vec::new()
            }),
            None => Vec::new(),
        },
        hook_timeout: o
            .duration(
                "hook_timeout_ms",
                (100, 3_600_000),
                Duration::from_millis,
                errs,
            )
            .unwrap_or(d.hook_timeout),
        probe_timeout: o
            .duration(
                "probe_timeout_ms",
                (100, 600_000),
                Duration::from_millis,
                errs,
            )
            .unwrap_or(d.probe_timeout),
        startup_timeout: o
            .duration(
                "startup_timeout_ms",
                (100, 3_600_000),
                Duration::from_millis,
                errs,
            )
            .unwrap_or(d.startup_timeout),
        health_interval: o
            .duration(
                "health_interval_ms",
                (100, 3_600_000),
                Duration::from_millis,
                errs,
            )
            .unwrap_or(d.health_interval),
        migration_stall: o
            .duration(
                "migration_stall_ms",
                (100, 86_400_000),
                Duration::from_millis,
                errs,
            )
            .unwrap_or(d.migration_stall),
        balloon_stats_interval: o
            .int("balloon_stats_interval_s", 0, 3600, errs)
            .unwrap_or(d.balloon_stats_interval),
        metrics: o
            .string("metrics", errs)
            .filter(|s| !s.is_empty())
            .and_then(|s| {
                crate::model::spec::MetricsListen::parse(&s)
                    .map_err(|rule| {
                        errs.push(FieldError::new("node.metrics", format!("{s:?}"), rule))
                    })
                    .ok()
            }),
        metrics_interval: o
            .duration(
                "metrics_interval_ms",
                (500, 3_600_000),
                Duration::from_millis,
                errs,
            )
            .unwrap_or(d.metrics_interval),
        hotplug_ports: o
            .int(
                "hotplug_ports",
                0,
                i64::from(crate::qemu::cmdline::MAX_HOTPLUG_PORTS),
                errs,
            )
            .unwrap_or(d.hotplug_ports),
        migration_abort_after_stall: o
            .duration(
                "migration_abort_after_stall_ms",
                (0, 86_400_000),
                Duration::from_millis,
                errs,
            )
            .unwrap_or(d.migration_abort_after_stall),
        serial_log_max_bytes: o
            .int("serial_log_max_bytes", 4096, 1 << 40, errs)
            .unwrap_or(d.serial_log_max_bytes),
        serial_log_keep_bytes: o
            .int("serial_log_keep_bytes", 0, 1 << 40, errs)
            .unwrap_or(d.serial_log_keep_bytes),
        max_connections: o
            .int("max_connections", 1, 65_536, errs)
            .unwrap_or(d.max_connections),
        max_connections_per_peer: o
            .int("max_connections_per_peer", 1, 65_536, errs)
            .unwrap_or(d.max_connections_per_peer),
        event_history: o
            .int("event_history", 16, 1 << 20, errs)
            .unwrap_or(d.event_history),
    };
    if node.hvparams.contains_key("kvm_path") && o.had("qemu") {
        errs.push(FieldError::new(
            "node.hvparams.kvm_path",
            node.hvparams["kvm_path"].to_string(),
            "set either node.qemu or node.hvparams.kvm_path, not both",
        ));
    }
    o.finish(errs);
    node
}

/// One instance; `None` when it has errors. All its errors are listed: an instance with
/// per-key errors also gets the combination rules checked over its other hvparams.
/// JSON (a start request's `definition`) as the TOML the config file would hold.
fn toml_of(v: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64()?),
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(a) => Value::Array(a.iter().filter_map(toml_of).collect()),
        J::Object(o) => Value::Table(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), toml_of(v)?)))
                .collect(),
        ),
    })
}

/// An instance defined by the request that starts it, as another engine (Ganeti) sends it:
/// the keys of an `[instance.NAME]` table (`memory`, `min_memory`, `vcpus`, `uuid`,
/// `network_port`, `disk`, `nic`, `hvparams`), in JSON. Errors name `definition.KEY`. Such
/// an instance never autostarts.
pub fn parse_definition(
    name: &InstanceName,
    json: &str,
    node: &NodeConfig,
) -> Result<InstanceSpec, Vec<FieldError>> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| vec![FieldError::new("definition", "(not JSON)", e.to_string())])?;
    let Some(Value::Table(table)) = toml_of(&v) else {
        return Err(vec![FieldError::new(
            "definition",
            crate::model::text::escape_clipped(&v.to_string(), 80),
            "must be an object with the keys of an [instance.NAME] table",
        )]);
    };
    let mut errs = Vec::new();
    if matches!(table.get("autostart"), Some(Value::Boolean(true))) {
        errs.push(FieldError::new(
            "definition.autostart",
            "true",
            "an instance another engine defines never autostarts under kvmd",
        ));
    }
    let spec = parse_instance(
        name.clone(),
        Obj::new("definition", &table),
        node,
        &mut errs,
    );
    match spec {
        Some(s) if errs.is_empty() => Ok(s),
        _ => Err(errs),
    }
}

fn parse_instance(
    name: InstanceName,
    mut o: Obj<'_>,
    node: &NodeConfig,
    errs: &mut Vec<FieldError>,
) -> Option<InstanceSpec> {
    let before = errs.len();
    let uuid = match o.string("uuid", errs) {
        Some(u) if is_uuid(&u) => u.to_ascii_lowercase(),
        Some(u) => {
            errs.push(FieldError::new(
                o.path("uuid"),
                format!("{u:?}"),
                "must be a UUID like 8-4-4-4-12 hex digits",
            ));
            String::new()
        }
        None => uuid_from_name(name.as_str()),
    };
    let memory: u64 = o.int("memory", 16, 4 << 20, errs).unwrap_or(0);
    if !o.had("memory") {
        errs.push(FieldError::new(
            o.path("memory"),
            "(missing)",
            "is required (MiB)",
        ));
    }
    let vcpus: u32 = o.int("vcpus", 1, 255, errs).unwrap_or(1);
    let min_memory = o.int("min_memory", 16, 4 << 20, errs).unwrap_or(memory);
    if min_memory > memory && o.had("memory") {
        errs.push(FieldError::new(
            o.path("min_memory"),
            min_memory.to_string(),
            format!("must not exceed memory ({memory})"),
        ));
    }
    let network_port: Option<u16> = o.int("network_port", 1, 65535, errs);
    let autostart = o.bool("autostart", errs).unwrap_or(false);
    let mut disks = Vec::new();
    for (i, t) in o.array_of_tables("disk", errs).into_iter().enumerate() {
        let mut d = Obj::new(&format!("{}.disk[{i}]", o.prefix), t);
        let path = d.abs_path("path", errs);
        if !d.had("path") {
            errs.push(FieldError::new(d.path("path"), "(missing)", "is required"));
        }
        let format = d
            .one_of("format", &["raw", "qcow2"], errs)
            .map(|f| {
                if f == "qcow2" {
                    DiskFormat::Qcow2
                } else {
                    DiskFormat::Raw
                }
            })
            .unwrap_or(DiskFormat::Raw);
        let readonly = d.bool("readonly", errs).unwrap_or(false);
        d.finish(errs);
        if let Some(path) = path {
            disks.push(DiskSpec {
                path,
                format,
                readonly,
            });
        }
    }
    let mut nics = Vec::new();
    for (i, t) in o.array_of_tables("nic", errs).into_iter().enumerate() {
        let mut n = Obj::new(&format!("{}.nic[{i}]", o.prefix), t);
        let mode = match n.one_of("mode", &NicMode::ALL, errs).as_deref() {
            Some("routed") => NicMode::Routed,
            Some("openvswitch") => NicMode::Openvswitch,
            Some("user") => NicMode::User,
            _ => NicMode::Bridged,
        };
        let link = n.string("link", errs).unwrap_or_default();
        let mac = match n.string("mac", errs) {
            Some(m) if is_mac(&m) => m.to_ascii_lowercase(),
            Some(m) => {
                errs.push(FieldError::new(
                    n.path("mac"),
                    format!("{m:?}"),
                    "must be a MAC address like 52:54:00:12:34:56",
                ));
                String::new()
            }
            None => mac_from_uuid(&uuid, i),
        };
        let ip = n.string("ip", errs);
        n.finish(errs);
        nics.push(NicSpec {
            mode,
            link,
            mac,
            ip,
        });
    }
    let hvparams = o
        .table("hvparams")
        .map(|t| parse_hvparams(&o.path("hvparams"), t, errs))
        .unwrap_or_default();
    let prefix = o.path("hvparams");
    o.finish(errs);
    if errs.len() != before {
        // The per-key errors are in; the rules that combine keys still apply to the rest,
        // except those about a refused key (they would judge its default, not what was
        // written).
        let refused: Vec<String> = errs[before..]
            .iter()
            .filter_map(|e| e.field.strip_prefix(&format!("{prefix}.")))
            .map(String::from)
            .collect();
        let about_refused = |e: &FieldError| {
            let words = e
                .rule
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            refused.contains(&e.field) || words.into_iter().any(|w| refused.iter().any(|k| k == w))
        };
        let more: Vec<FieldError> = hvparams::check_combinations(&node.hvparams_with(&hvparams))
            .into_iter()
            .filter(|e| !about_refused(e))
            .map(|e| e.under(&prefix))
            .collect();
        errs.extend(more);
    }
    (errs.len() == before).then_some(InstanceSpec {
        name,
        uuid,
        memory,
        min_memory,
        vcpus,
        network_port,
        disks,
        nics,
        hvparams,
        autostart,
    })
}

/// Type-check a `hvparams` table against the hvparam table.
pub fn parse_hvparams(prefix: &str, t: &toml::Table, errs: &mut Vec<FieldError>) -> HvOverrides {
    let mut out = HvOverrides::new();
    for (k, v) in t {
        let value = match v {
            Value::String(s) => HvValue::Str(s.clone()),
            Value::Boolean(b) => HvValue::Bool(*b),
            Value::Integer(i) => HvValue::Int(*i),
            other => {
                errs.push(FieldError::new(
                    format!("{prefix}.{k}"),
                    other.to_string(),
                    format!(
                        "must be a string, boolean or integer, not {}",
                        other.type_str()
                    ),
                ));
                continue;
            }
        };
        match hvparams::check_value(k, &value) {
            Ok(()) => {
                out.insert(k.clone(), value);
            }
            Err(e) => errs.push(e.under(prefix)),
        }
    }
    out
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<_> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<_> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A TOML table being consumed: remembers its path and which keys were read, so the leftovers
/// can be reported as unknown.
struct Obj<'a> {
    prefix: String,
    table: &'a toml::Table,
    seen: Vec<&'a str>,
}

impl<'a> Obj<'a> {
    fn new(prefix: &str, table: &'a toml::Table) -> Self {
        Self {
            prefix: prefix.to_string(),
            table,
            seen: Vec::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn take(&mut self, key: &str) -> Option<&'a Value> {
        let (k, v) = self.table.get_key_value(key)?;
        self.seen.push(k.as_str());
        Some(v)
    }

    fn had(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn wrong(&self, key: &str, v: &Value, want: &str, errs: &mut Vec<FieldError>) {
        errs.push(FieldError::new(
            self.path(key),
            v.to_string(),
            format!("must be {want}, not {}", v.type_str()),
        ));
    }

    fn string(&mut self, key: &str, errs: &mut Vec<FieldError>) -> Option<String> {
        match self.take(key)? {
            Value::String(s) => Some(s.clone()),
            v => {
                self.wrong(key, v, "a string", errs);
                None
            }
        }
    }

    fn bool(&mut self, key: &str, errs: &mut Vec<FieldError>) -> Option<bool> {
        match self.take(key)? {
            Value::Boolean(b) => Some(*b),
            v => {
                self.wrong(key, v, "a boolean", errs);
                None
            }
        }
    }

    /// An integer in `min..=max`, as the `T` the caller stores it in. The bounds fit `T`, so
    /// every value in range converts; one that does not is reported like any out-of-range one.
    fn int<T: TryFrom<i64>>(
        &mut self,
        key: &str,
        min: i64,
        max: i64,
        errs: &mut Vec<FieldError>,
    ) -> Option<T> {
        match self.take(key)? {
            Value::Integer(i) => match T::try_from(*i) {
                Ok(v) if (min..=max).contains(i) => Some(v),
                _ => {
                    errs.push(FieldError::new(
                        self.path(key),
                        i.to_string(),
                        format!("must be between {min} and {max}"),
                    ));
                    None
                }
            },
            v => {
                self.wrong(key, v, "an integer", errs);
                None
            }
        }
    }

    /// A duration in `min..=max` units (`Duration::from_millis` or `from_secs`).
    fn duration(
        &mut self,
        key: &str,
        (min, max): (i64, i64),
        unit: fn(u64) -> Duration,
        errs: &mut Vec<FieldError>,
    ) -> Option<Duration> {
        self.int(key, min, max, errs).map(unit)
    }

    fn one_of(
        &mut self,
        key: &str,
        allowed: &[&str],
        errs: &mut Vec<FieldError>,
    ) -> Option<String> {
        let s = self.string(key, errs)?;
        if allowed.contains(&s.as_str()) {
            Some(s)
        } else {
            errs.push(
                FieldError::new(
                    self.path(key),
                    format!("{s:?}"),
                    "must be one of the allowed values",
                )
                .with_allowed(allowed.iter()),
            );
            None
        }
    }

    fn abs_path(&mut self, key: &str, errs: &mut Vec<FieldError>) -> Option<PathBuf> {
        let s = self.string(key, errs)?;
        if s.starts_with('/') && !s.split('/').any(|c| c == "..") {
            Some(PathBuf::from(s))
        } else {
            errs.push(FieldError::new(
                self.path(key),
                format!("{s:?}"),
                "must be an absolute path without '..'",
            ));
            None
        }
    }

    fn table(&mut self, key: &str) -> Option<&'a toml::Table> {
        match self.take(key)? {
            Value::Table(t) => Some(t),
            _ => None, // reported by `finish` via the type check below
        }
    }

    fn array_of_tables(&mut self, key: &str, errs: &mut Vec<FieldError>) -> Vec<&'a toml::Table> {
        match self.take(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::Table(t) => Some(t),
                    v => {
                        errs.push(FieldError::new(
                            format!("{}[{i}]", self.path(key)),
                            v.to_string(),
                            "must be a table",
                        ));
                        None
                    }
                })
                .collect(),
            Some(v) => {
                let v = v.clone();
                self.wrong(key, &v, &format!("an array of tables ([[...{key}]])"), errs);
                Vec::new()
            }
        }
    }

    /// Report keys nobody asked for, and tables where a table was expected but something else
    /// was given.
    fn finish(self, errs: &mut Vec<FieldError>) {
        for (k, v) in self.table {
            if !self.seen.contains(&k.as_str()) {
                errs.push(FieldError::new(self.path(k), v.to_string(), "unknown key"));
            } else if matches!(k.as_str(), "node" | "instance" | "hvparams") && !v.is_table() {
                errs.push(FieldError::new(
                    self.path(k),
                    v.to_string(),
                    format!("must be a table, not {}", v.type_str()),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hvparams::key;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/kvmd/test.toml"), text)
    }

    fn errors(text: &str) -> Vec<FieldError> {
        match parse(text) {
            Err(ConfigError::Invalid { errors, .. }) => errors.0,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn the_metrics_listener_is_a_port_an_address_or_a_socket_path() {
        use crate::model::spec::MetricsListen;
        let c = parse("[node]\nmetrics = \"9477\"\n").unwrap();
        assert_eq!(
            c.node.metrics,
            Some(MetricsListen::Tcp(([127, 0, 0, 1], 9477).into()))
        );
        let c = parse("[node]\nmetrics = \"/run/kvmd/m.sock\"\n").unwrap();
        assert_eq!(
            c.node.metrics,
            Some(MetricsListen::Unix("/run/kvmd/m.sock".into()))
        );
        assert_eq!(parse("[node]\n").unwrap().node.metrics, None);
        let errs = errors("[node]\nmetrics = \"localhost:x\"\n");
        assert_eq!(errs[0].field, "node.metrics");
        assert!(errs[0].rule.contains("PORT"), "{}", errs[0].rule);
    }

    #[test]
    fn hotplug_ports_default_to_eight_and_stop_at_one_slots_functions() {
        let c = parse("[node]\n").unwrap();
        assert_eq!(c.node.hotplug_ports, 8);
        assert_eq!(
            parse("[node]\nhotplug_ports = 0\n")
                .unwrap()
                .node
                .hotplug_ports,
            0
        );
        let errs = errors("[node]\nhotplug_ports = 9\n");
        assert_eq!(errs[0].field, "node.hotplug_ports");
    }

    #[test]
    fn combination_rules_join_per_key_errors_but_never_judge_a_refused_key() {
        let fields = |hv: &str| -> Vec<(String, String)> {
            errors(&format!(
                "[instance.a]\nmemory = 128\n[instance.a.hvparams]\n{hv}"
            ))
            .into_iter()
            .map(|e| (e.field, e.rule))
            .collect()
        };
        // Both kinds at once.
        let f = fields("disk_cache = \"fast\"\nboot_order = \"cdrom\"\n");
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f
            .iter()
            .any(|(f, _)| f == "instance.a.hvparams.cdrom_image_path"));
        // security_model refused: the domain is not judged against its default.
        let f = fields("security_model = \"usr\"\nsecurity_domain = \"bob\"\n");
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, "instance.a.hvparams.security_model");
        // disk_cache refused: no second error about a value nobody wrote.
        let f = fields("disk_aio = \"native\"\ndisk_cache = \"nonee\"\n");
        assert_eq!(f.len(), 1, "{f:?}");
    }

    #[test]
    fn minimal_instance_gets_defaults() {
        let c = parse("[instance.web1]\nmemory = 256\n").unwrap();
        let spec = &c.instances[&InstanceName::parse("web1").unwrap()];
        assert_eq!(spec.vcpus, 1);
        assert_eq!(spec.memory, 256);
        assert!(!spec.autostart);
        assert_eq!(c.node.accelerator, Accel::Kvm);
        let hv = spec.effective_hvparams(&c.node);
        assert_eq!(hv.str(key::KVM_PATH), "/usr/bin/qemu-system-x86_64");
    }

    #[test]
    fn node_layer_then_instance_layer() {
        let c = parse(
            r#"
            [node]
            accelerator = "tcg"
            [node.hvparams]
            acpi = false
            serial_speed = 115200
            [instance.a]
            memory = 128
            [instance.a.hvparams]
            serial_speed = 9600
            kvm_flag = "enabled"
            "#,
        )
        .unwrap();
        let spec = c.instances.values().next().unwrap();
        let hv = spec.effective_hvparams(&c.node);
        assert!(!hv.bool(key::ACPI));
        assert_eq!(hv.int(key::SERIAL_SPEED), 9600);
        assert_eq!(spec.accel(&hv, &c.node), Accel::Kvm);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_path() {
        let errs = errors(
            r#"
            [node]
            sockett = "/x"
            accelerator = "xen"
            [instance.a]
            memory = "lots"
            [instance.a.hvparams]
            acpi = "yes"
            pae = true
            "#,
        );
        let got: Vec<_> = errs
            .iter()
            .map(|e| (e.field.as_str(), e.rule.as_str()))
            .collect();
        assert!(got.contains(&("node.sockett", "unknown key")), "{got:?}");
        assert!(got.contains(&("node.accelerator", "must be one of the allowed values")));
        assert!(got.contains(&("instance.a.memory", "must be an integer, not string")));
        assert!(got.contains(&("instance.a.hvparams.acpi", "must be a boolean")));
        assert!(got.contains(&("instance.a.hvparams.pae", "unknown hvparam")));
    }

    #[test]
    fn bad_instance_names_are_refused_before_any_path_is_built() {
        let errs = errors("[instance.\"../etc\"]\nmemory = 1\n");
        assert_eq!(errs[0].field, "instance.../etc");
        assert!(errs[0].rule.contains(".."));
    }

    #[test]
    fn the_error_message_names_the_file() {
        let e = parse("[instance.a]\n").unwrap_err().to_string();
        assert!(e.contains("/etc/kvmd/test.toml"), "{e}");
        assert!(e.contains("instance.a.memory"), "{e}");
    }

    #[test]
    fn toml_syntax_errors_carry_the_position() {
        let e = parse("[node\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }));
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn disks_and_nics() {
        let c = parse(
            r#"
            [instance.a]
            memory = 128
            [[instance.a.disk]]
            path = "/srv/a.qcow2"
            format = "qcow2"
            [[instance.a.nic]]
            mode = "user"
            [[instance.a.nic]]
            mode = "bridged"
            link = "br0"
            mac = "52:54:00:AA:bb:cc"
            "#,
        )
        .unwrap();
        let a = c.instances.values().next().unwrap();
        assert_eq!(a.disks[0].format, DiskFormat::Qcow2);
        assert_eq!(a.nics[0].mode, NicMode::User);
        assert_eq!(a.nics[1].mac, "52:54:00:aa:bb:cc");
        let errs = errors("[instance.a]\nmemory = 128\n[[instance.a.disk]]\npath = \"rel\"\n");
        assert_eq!(errs[0].field, "instance.a.disk[0].path");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn the_shipped_example_and_demo_configs_load() {
        for f in ["config/kvmd.example.toml", "config/demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(c.instances.len(), 1, "{f}");
        }
    }
}
