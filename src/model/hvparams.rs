//! Ganeti's 65 KVM hypervisor parameters: names, types, defaults and per-parameter syntax rules.
//!
//! Names and defaults are Ganeti 3.1's (`vhost_net = true`, `disk_discard = ignore`), so a
//! Ganeti user's hvparams load unchanged. Values are merged defaults → node → instance into an
//! [`HvParams`] that always holds all 65 keys. The syntax rules here are the per-key ones
//! (type, allowed set, range, absolute path); checks that combine keys live in [`check_syntax`].
//!
//! Invariant: pure. No file system, no QEMU; node-side checks (files exist, QEMU offers the
//! machine) belong to the start path.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::field_error::FieldError;

/// The type of one hvparam.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Bool,
    Int,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Bool => "a boolean",
            Kind::Int => "an integer",
        }
    }
}

/// A value of one hvparam.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum HvValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl HvValue {
    fn kind(&self) -> Kind {
        match self {
            HvValue::Str(_) => Kind::Str,
            HvValue::Bool(_) => Kind::Bool,
            HvValue::Int(_) => Kind::Int,
        }
    }

    fn is_unset(&self) -> bool {
        matches!(self, HvValue::Str(s) if s.is_empty())
    }
}

impl fmt::Display for HvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HvValue::Str(s) => write!(f, "{s:?}"),
            HvValue::Bool(b) => write!(f, "{b}"),
            HvValue::Int(i) => write!(f, "{i}"),
        }
    }
}

/// The per-key rule.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// Anything of the right type.
    Any,
    /// Must be set (non-empty) and one of these.
    OneOf(&'static [&'static str]),
    /// Empty, or one of these.
    OptOneOf(&'static [&'static str]),
    /// One of these integers.
    IntOneOf(&'static [i64]),
    /// Integer in `min..=max`.
    Range(i64, i64),
    /// Must be set and an absolute, normalized path.
    AbsPath,
    /// Empty, or an absolute, normalized path.
    OptAbsPath,
    /// Ganeti's multi-CPU-mask grammar.
    CpuMask,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub kind: Kind,
    pub default: Default,
    pub rule: Rule,
}

/// A default value (a `const`-friendly twin of [`HvValue`]).
#[derive(Clone, Copy, Debug)]
pub enum Default {
    Str(&'static str),
    Bool(bool),
    Int(i64),
}

impl Default {
    fn value(self) -> HvValue {
        match self {
            Default::Str(s) => HvValue::Str(s.to_string()),
            Default::Bool(b) => HvValue::Bool(b),
            Default::Int(i) => HvValue::Int(i),
        }
    }
}

pub const SERIAL_SPEEDS: &[i64] = &[
    75, 110, 300, 600, 1200, 1800, 2400, 4800, 9600, 14400, 19200, 28800, 38400, 57600, 115200,
    230400, 345600, 460800,
];
pub const NIC_TYPES: &[&str] = &[
    "e1000",
    "i82551",
    "i82559er",
    "i82557b",
    "ne2k_isa",
    "ne2k_pci",
    "paravirtual",
    "pcnet",
    "rtl8139",
];
pub const DISK_TYPES: &[&str] = &[
    "ide",
    "mtd",
    "paravirtual",
    "pflash",
    "scsi",
    "sd",
    "scsi-generic",
    "scsi-block",
    "scsi-hd",
    "scsi-cd",
];

macro_rules! p {
    ($name:literal, Str, $d:expr, $rule:expr) => {
        ParamDef {
            name: $name,
            kind: Kind::Str,
            default: Default::Str($d),
            rule: $rule,
        }
    };
    ($name:literal, Bool, $d:expr) => {
        ParamDef {
            name: $name,
            kind: Kind::Bool,
            default: Default::Bool($d),
            rule: Rule::Any,
        }
    };
    ($name:literal, Int, $d:expr, $rule:expr) => {
        ParamDef {
            name: $name,
            kind: Kind::Int,
            default: Default::Int($d),
            rule: $rule,
        }
    };
}

use Rule::*;

/// All 65 parameters, in Ganeti's documentation order.
#[rustfmt::skip]
pub const PARAMS: &[ParamDef] = &[
    p!("kvm_path", Str, "/usr/bin/kvm", AbsPath),
    p!("kernel_path", Str, "/boot/vmlinuz-3-kvmU", OptAbsPath),
    p!("initrd_path", Str, "", OptAbsPath),
    p!("root_path", Str, "/dev/vda1", Any),
    p!("kernel_args", Str, "ro", Any),
    p!("acpi", Bool, true),
    p!("serial_console", Bool, true),
    p!("serial_speed", Int, 38400, IntOneOf(SERIAL_SPEEDS)),
    p!("vnc_bind_address", Str, "", Any),
    p!("vnc_tls", Bool, false),
    p!("vnc_x509_path", Str, "", OptAbsPath),
    p!("vnc_x509_verify", Bool, false),
    p!("vnc_password_file", Str, "", OptAbsPath),
    p!("spice_bind", Str, "", Any),
    p!("spice_ip_version", Int, 0, IntOneOf(&[0, 4, 6])),
    p!("spice_password_file", Str, "", OptAbsPath),
    p!("spice_image_compression", Str, "", OptOneOf(&["auto_glz", "auto_lz", "glz", "lz", "off", "quic"])),
    p!("spice_jpeg_wan_compression", Str, "", OptOneOf(&["auto", "never", "always"])),
    p!("spice_zlib_glz_wan_compression", Str, "", OptOneOf(&["auto", "never", "always"])),
    p!("spice_streaming_video", Str, "", OptOneOf(&["all", "filter", "off"])),
    p!("spice_playback_compression", Bool, true),
    p!("spice_use_tls", Bool, false),
    p!("spice_tls_ciphers", Str, "HIGH:-DES:-3DES:-EXPORT:-DH", Any),
    p!("spice_use_vdagent", Bool, true),
    p!("floppy_image_path", Str, "", OptAbsPath),
    p!("cdrom_image_path", Str, "", Any),
    p!("cdrom2_image_path", Str, "", Any),
    p!("boot_order", Str, "disk", OneOf(&["cdrom", "disk", "floppy", "network"])),
    p!("nic_type", Str, "paravirtual", OneOf(NIC_TYPES)),
    p!("disk_type", Str, "paravirtual", OneOf(DISK_TYPES)),
    p!("cdrom_disk_type", Str, "", OptOneOf(DISK_TYPES)),
    p!("scsi_controller_type", Str, "lsi", OneOf(&["lsi", "virtio-scsi-pci", "megasas", "dc390"])),
    p!("kvm_pci_reservations", Int, 12, Range(0, 32)),
    p!("disk_cache", Str, "default", OneOf(&["default", "none", "writeback", "writethrough"])),
    p!("disk_aio", Str, "threads", OptOneOf(&["threads", "native", "io_uring"])),
    p!("disk_discard", Str, "ignore", OptOneOf(&["ignore", "unmap"])),
    p!("usb_mouse", Str, "", OptOneOf(&["mouse", "tablet"])),
    p!("keymap", Str, "", Any),
    p!("migration_port", Int, 8102, Range(1, 65534)),
    p!("migration_bandwidth", Int, 32, Range(0, i64::MAX)),
    p!("migration_downtime", Int, 30, Range(0, i64::MAX)),
    p!("migration_mode", Str, "live", OneOf(&["live", "non-live"])),
    p!("use_guest_agent", Bool, false),
    p!("use_localtime", Bool, false),
    p!("security_model", Str, "none", OneOf(&["none", "user", "pool"])),
    p!("security_domain", Str, "", Any),
    p!("kvm_flag", Str, "", OptOneOf(&["enabled", "disabled"])),
    p!("vhost_net", Bool, true),
    p!("virtio_net_queues", Int, 1, Range(1, 32)),
    p!("vnet_hdr", Bool, true),
    p!("use_chroot", Bool, false),
    p!("user_shutdown", Bool, false),
    p!("mem_path", Str, "", OptAbsPath),
    p!("reboot_behavior", Str, "reboot", OneOf(&["reboot", "exit"])),
    p!("cpu_mask", Str, "all", CpuMask),
    p!("cpu_type", Str, "", Any),
    p!("cpu_cores", Int, 0, Range(0, i64::MAX)),
    p!("cpu_threads", Int, 0, Range(0, i64::MAX)),
    p!("cpu_sockets", Int, 0, Range(0, i64::MAX)),
    p!("soundhw", Str, "", Any),
    p!("usb_devices", Str, "", Any),
    p!("vga", Str, "", Any),
    p!("kvm_extra", Str, "", Any),
    p!("machine_version", Str, "", Any),
    p!("migration_caps", Str, "", Any),
];

/// Look a parameter up by name.
pub fn def(name: &str) -> Option<&'static ParamDef> {
    PARAMS.iter().find(|p| p.name == name)
}

/// All names, for "allowed values" in errors.
pub fn names() -> impl Iterator<Item = &'static str> {
    PARAMS.iter().map(|p| p.name)
}

/// A partial set of hvparams as written in one place (node defaults or one instance), already
/// type-checked against the table.
pub type HvOverrides = BTreeMap<String, HvValue>;

/// The full, merged set: always all 65 keys.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct HvParams(BTreeMap<String, HvValue>);

impl HvParams {
    /// Defaults, then each layer of overrides in order.
    pub fn merged(layers: &[&HvOverrides]) -> Self {
        let mut map: BTreeMap<String, HvValue> = PARAMS
            .iter()
            .map(|p| (p.name.to_string(), p.default.value()))
            .collect();
        for layer in layers {
            for (k, v) in layer.iter() {
                map.insert(k.clone(), v.clone());
            }
        }
        Self(map)
    }

    pub fn get(&self, name: &str) -> &HvValue {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("hvparam {name} is not in the table"))
    }

    pub fn str(&self, name: &str) -> &str {
        match self.get(name) {
            HvValue::Str(s) => s,
            other => panic!("hvparam {name} is {other:?}, not a string"),
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        match self.get(name) {
            HvValue::Bool(b) => *b,
            other => panic!("hvparam {name} is {other:?}, not a boolean"),
        }
    }

    pub fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            HvValue::Int(i) => *i,
            other => panic!("hvparam {name} is {other:?}, not an integer"),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &HvValue)> {
        self.0.iter()
    }
}

/// Check one override against the table: known name, right type, per-key rule.
pub fn check_value(name: &str, value: &HvValue) -> Result<(), FieldError> {
    let Some(def) = def(name) else {
        return Err(
            FieldError::new(name, value.to_string(), "unknown hvparam").with_allowed(names())
        );
    };
    if value.kind() != def.kind {
        return Err(FieldError::new(
            name,
            value.to_string(),
            format!("must be {}", def.kind.noun()),
        ));
    }
    check_rule(def, value)
}

fn check_rule(def: &ParamDef, value: &HvValue) -> Result<(), FieldError> {
    let bad = |rule: String| Err(FieldError::new(def.name, value.to_string(), rule));
    match (def.rule, value) {
        (Any, _) => Ok(()),
        (OneOf(set), HvValue::Str(s)) | (OptOneOf(set), HvValue::Str(s)) => {
            if s.is_empty() && matches!(def.rule, OptOneOf(_)) || set.contains(&s.as_str()) {
                Ok(())
            } else {
                let rule = if matches!(def.rule, OptOneOf(_)) {
                    "must be empty or one of the allowed values"
                } else {
                    "must be one of the allowed values"
                };
                Err(FieldError::new(def.name, value.to_string(), rule).with_allowed(set.iter()))
            }
        }
        (IntOneOf(set), HvValue::Int(i)) => {
            if set.contains(i) {
                Ok(())
            } else {
                Err(FieldError::new(
                    def.name,
                    value.to_string(),
                    "must be one of the allowed values",
                )
                .with_allowed(set.iter()))
            }
        }
        (Range(min, max), HvValue::Int(i)) => {
            if (min..=max).contains(i) {
                Ok(())
            } else if max == i64::MAX {
                bad(format!("must be at least {min}"))
            } else {
                bad(format!("must be between {min} and {max}"))
            }
        }
        (AbsPath, HvValue::Str(s)) if s.is_empty() => bad("must be set".into()),
        (AbsPath | OptAbsPath, HvValue::Str(s)) => {
            if s.is_empty() || is_normalized_abs_path(s) {
                Ok(())
            } else {
                bad("must be an absolute, normalized path".into())
            }
        }
        (CpuMask, HvValue::Str(s)) => parse_cpu_mask(s)
            .map(|_| ())
            .map_err(|why| FieldError::new(def.name, value.to_string(), why)),
        _ => bad(format!("must be {}", def.kind.noun())),
    }
}

fn is_normalized_abs_path(s: &str) -> bool {
    s.starts_with('/')
        && !s[1..]
            .split('/')
            .any(|c| c == "." || c == ".." || c.is_empty())
        || s == "/"
}

/// One vCPU's (or the whole VM's) allowed host CPUs. `None` = all CPUs ("all").
pub type CpuSet = Option<Vec<u32>>;

/// Parse Ganeti's multi-CPU mask: `:`-separated entries, each `all` or a list of CPUs and
/// ranges (`0-2,5`). One entry applies to the whole VM; several entries are one per vCPU.
pub fn parse_cpu_mask(mask: &str) -> Result<Vec<CpuSet>, String> {
    if mask.is_empty() {
        return Ok(vec![None]);
    }
    mask.split(':')
        .map(|entry| {
            let entry = entry.trim();
            if entry == "all" {
                return Ok(None);
            }
            let mut cpus = Vec::new();
            for part in entry.split(',') {
                let part = part.trim();
                let num = |t: &str| {
                    t.parse::<u32>()
                        .map_err(|_| format!("{t:?} is not a CPU number (grammar: all | N | N-M, joined by ',' per vCPU and ':' between vCPUs)"))
                };
                if let Some((a, b)) = part.split_once('-') {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("range {part:?} runs backwards"));
                    }
                    cpus.extend(a..=b);
                } else {
                    cpus.push(num(part)?);
                }
            }
            cpus.sort_unstable();
            cpus.dedup();
            Ok(Some(cpus))
        })
        .collect()
}

/// Checks that combine keys (Ganeti's `check_*` syntax validators). Every violation is returned.
pub fn check_syntax(hv: &HvParams) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (name, value) in hv.iter() {
        if let Err(e) = check_value(name, value) {
            errs.push(e);
        }
    }
    let s = |n| hv.str(n);
    if s("boot_order") == "cdrom" && s("cdrom_image_path").is_empty() {
        errs.push(FieldError::new(
            "cdrom_image_path",
            "\"\"",
            "must be set when boot_order is cdrom",
        ));
    }
    if !s("kernel_path").is_empty() && s("root_path").is_empty() {
        errs.push(FieldError::new(
            "root_path",
            "\"\"",
            "must be set when kernel_path is set",
        ));
    }
    match (s("security_model"), s("security_domain").is_empty()) {
        ("user", true) => errs.push(FieldError::new(
            "security_domain",
            "\"\"",
            "must name a user when security_model is user",
        )),
        ("none" | "pool", false) => errs.push(FieldError::new(
            "security_domain",
            hv.get("security_domain").to_string(),
            "must be empty unless security_model is user",
        )),
        _ => {}
    }
    if hv.bool("vnc_x509_verify") && s("vnc_x509_path").is_empty() {
        errs.push(FieldError::new(
            "vnc_x509_verify",
            "true",
            "needs vnc_x509_path to be set",
        ));
    }
    if s("disk_aio") == "native" && s("disk_cache") != "none" {
        errs.push(
            FieldError::new(
                "disk_cache",
                hv.get("disk_cache").to_string(),
                "must be none when disk_aio is native",
            )
            .with_allowed(["none"]),
        );
    }
    if !s("vnc_bind_address").is_empty() && !s("spice_bind").is_empty() {
        errs.push(FieldError::new(
            "spice_bind",
            hv.get("spice_bind").to_string(),
            "VNC and SPICE are exclusive: vnc_bind_address is set too",
        ));
    }
    if s("spice_bind").is_empty() {
        for dep in [
            "spice_password_file",
            "spice_image_compression",
            "spice_jpeg_wan_compression",
            "spice_zlib_glz_wan_compression",
            "spice_streaming_video",
        ] {
            if !s(dep).is_empty() {
                errs.push(FieldError::new(
                    dep,
                    hv.get(dep).to_string(),
                    "needs spice_bind to be set",
                ));
            }
        }
        if hv.bool("spice_use_tls") {
            errs.push(FieldError::new(
                "spice_use_tls",
                "true",
                "needs spice_bind to be set",
            ));
        }
        if hv.int("spice_ip_version") != 0 {
            errs.push(FieldError::new(
                "spice_ip_version",
                hv.get("spice_ip_version").to_string(),
                "needs spice_bind to be set",
            ));
        }
    }
    errs
}

/// `true` when the value is unset in Ganeti's sense (empty string).
pub fn is_unset(value: &HvValue) -> bool {
    value.is_unset()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_all_65_ganeti_parameters_once() {
        assert_eq!(PARAMS.len(), 65);
        let mut names: Vec<_> = names().collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 65);
    }

    #[test]
    fn defaults_pass_their_own_rules_except_ganetis_kernel_path() {
        let hv = HvParams::merged(&[]);
        assert_eq!(check_syntax(&hv), vec![]);
        assert!(hv.bool("vhost_net"));
        assert_eq!(hv.str("disk_discard"), "ignore");
    }

    #[test]
    fn unknown_parameter_is_rejected_with_the_known_names() {
        let e = check_value("pae", &HvValue::Bool(true)).unwrap_err();
        assert_eq!(e.field, "pae");
        assert_eq!(e.rule, "unknown hvparam");
        assert_eq!(e.allowed.len(), 65);
    }

    #[test]
    fn wrong_type_names_the_expected_type() {
        let e = check_value("acpi", &HvValue::Str("yes".into())).unwrap_err();
        assert_eq!(e.rule, "must be a boolean");
        assert_eq!(e.value, "\"yes\"");
    }

    #[test]
    fn set_membership_lists_the_allowed_values() {
        let e = check_value("disk_cache", &HvValue::Str("fast".into())).unwrap_err();
        assert!(e.allowed.contains(&"writeback".to_string()));
        assert!(check_value("disk_aio", &HvValue::Str(String::new())).is_ok());
        assert!(check_value("boot_order", &HvValue::Str(String::new())).is_err());
    }

    #[test]
    fn ranges_and_paths_are_enforced() {
        assert!(check_value("kvm_pci_reservations", &HvValue::Int(33)).is_err());
        assert!(check_value("serial_speed", &HvValue::Int(1)).is_err());
        assert!(check_value("kernel_path", &HvValue::Str("vmlinuz".into())).is_err());
        assert!(check_value("kernel_path", &HvValue::Str("/a/../b".into())).is_err());
        assert!(check_value("kernel_path", &HvValue::Str("/boot/vmlinuz".into())).is_ok());
        assert!(check_value("kvm_path", &HvValue::Str(String::new())).is_err());
    }

    #[test]
    fn cpu_mask_grammar() {
        assert_eq!(parse_cpu_mask("all").unwrap(), vec![None]);
        assert_eq!(
            parse_cpu_mask("0-2,5:all:1,3").unwrap(),
            vec![Some(vec![0, 1, 2, 5]), None, Some(vec![1, 3])]
        );
        assert!(parse_cpu_mask("2-1").is_err());
        assert!(parse_cpu_mask("x").is_err());
        assert!(parse_cpu_mask("0,").is_err());
    }

    #[test]
    fn combined_rules_report_every_violation() {
        let mut o = HvOverrides::new();
        o.insert("disk_aio".into(), HvValue::Str("native".into()));
        o.insert("security_model".into(), HvValue::Str("user".into()));
        o.insert("vnc_bind_address".into(), HvValue::Str("127.0.0.1".into()));
        o.insert("spice_bind".into(), HvValue::Str("127.0.0.1".into()));
        let errs = check_syntax(&HvParams::merged(&[&o]));
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["security_domain", "disk_cache", "spice_bind"]);
    }
}
