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
use std::marker::PhantomData;
use std::sync::OnceLock;

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

macro_rules! params {
    ($($key:ident: $kind:ident $name:literal = $default:expr, $rule:expr;)*) => {
        /// All 65 parameters, in Ganeti's documentation order.
        pub const PARAMS: &[ParamDef] = &[$(ParamDef {
            name: $name,
            kind: Kind::$kind,
            default: Default::$kind($default),
            rule: $rule,
        },)*];

        /// One typed key per parameter: `hv.str(key::KVM_PATH)`. A misspelt or mistyped
        /// parameter does not compile.
        pub mod key {
            use super::{kinds, Key};
            $(pub const $key: Key<kinds::$kind> = Key::new($name);)*
        }
    };
}

use Rule::*;

#[rustfmt::skip]
params! {
    KVM_PATH: Str "kvm_path" = "/usr/bin/kvm", AbsPath;
    KERNEL_PATH: Str "kernel_path" = "/boot/vmlinuz-3-kvmU", OptAbsPath;
    INITRD_PATH: Str "initrd_path" = "", OptAbsPath;
    ROOT_PATH: Str "root_path" = "/dev/vda1", Any;
    KERNEL_ARGS: Str "kernel_args" = "ro", Any;
    ACPI: Bool "acpi" = true, Any;
    SERIAL_CONSOLE: Bool "serial_console" = true, Any;
    SERIAL_SPEED: Int "serial_speed" = 38400, Any; // a speed of SERIAL_SPEEDS when serial_console (check_combinations)
    VNC_BIND_ADDRESS: Str "vnc_bind_address" = "", Any;
    VNC_TLS: Bool "vnc_tls" = false, Any;
    VNC_X509_PATH: Str "vnc_x509_path" = "", OptAbsPath;
    VNC_X509_VERIFY: Bool "vnc_x509_verify" = false, Any;
    VNC_PASSWORD_FILE: Str "vnc_password_file" = "", OptAbsPath;
    SPICE_BIND: Str "spice_bind" = "", Any;
    SPICE_IP_VERSION: Int "spice_ip_version" = 0, IntOneOf(&[0, 4, 6]);
    SPICE_PASSWORD_FILE: Str "spice_password_file" = "", OptAbsPath;
    SPICE_IMAGE_COMPRESSION: Str "spice_image_compression" = "", OptOneOf(&["auto_glz", "auto_lz", "glz", "lz", "off", "quic"]);
    SPICE_JPEG_WAN_COMPRESSION: Str "spice_jpeg_wan_compression" = "", OptOneOf(&["auto", "never", "always"]);
    SPICE_ZLIB_GLZ_WAN_COMPRESSION: Str "spice_zlib_glz_wan_compression" = "", OptOneOf(&["auto", "never", "always"]);
    SPICE_STREAMING_VIDEO: Str "spice_streaming_video" = "", OptOneOf(&["all", "filter", "off"]);
    SPICE_PLAYBACK_COMPRESSION: Bool "spice_playback_compression" = true, Any;
    SPICE_USE_TLS: Bool "spice_use_tls" = false, Any;
    SPICE_TLS_CIPHERS: Str "spice_tls_ciphers" = "HIGH:-DES:-3DES:-EXPORT:-DH", Any;
    SPICE_USE_VDAGENT: Bool "spice_use_vdagent" = true, Any;
    FLOPPY_IMAGE_PATH: Str "floppy_image_path" = "", OptAbsPath;
    CDROM_IMAGE_PATH: Str "cdrom_image_path" = "", Any;
    CDROM2_IMAGE_PATH: Str "cdrom2_image_path" = "", Any;
    BOOT_ORDER: Str "boot_order" = "disk", OneOf(&["cdrom", "disk", "floppy", "network"]);
    NIC_TYPE: Str "nic_type" = "paravirtual", OneOf(NIC_TYPES);
    DISK_TYPE: Str "disk_type" = "paravirtual", OneOf(DISK_TYPES);
    CDROM_DISK_TYPE: Str "cdrom_disk_type" = "", OptOneOf(DISK_TYPES);
    SCSI_CONTROLLER_TYPE: Str "scsi_controller_type" = "lsi", OneOf(&["lsi", "virtio-scsi-pci", "megasas", "dc390"]);
    KVM_PCI_RESERVATIONS: Int "kvm_pci_reservations" = 12, Range(0, 32);
    DISK_CACHE: Str "disk_cache" = "default", OneOf(&["default", "none", "writeback", "writethrough"]);
    DISK_AIO: Str "disk_aio" = "threads", OptOneOf(&["threads", "native", "io_uring"]);
    DISK_DISCARD: Str "disk_discard" = "ignore", OptOneOf(&["ignore", "unmap", "default"]); // default (Ganeti 3.0) = ignore
    USB_MOUSE: Str "usb_mouse" = "", OptOneOf(&["mouse", "tablet"]);
    KEYMAP: Str "keymap" = "", Any;
    MIGRATION_PORT: Int "migration_port" = 8102, Range(1, 65534);
    MIGRATION_BANDWIDTH: Int "migration_bandwidth" = 32, Range(0, i64::MAX);
    MIGRATION_DOWNTIME: Int "migration_downtime" = 30, Range(0, i64::MAX);
    MIGRATION_MODE: Str "migration_mode" = "live", OneOf(&["live", "non-live"]);
    USE_GUEST_AGENT: Bool "use_guest_agent" = false, Any;
    USE_LOCALTIME: Bool "use_localtime" = false, Any;
    SECURITY_MODEL: Str "security_model" = "none", OneOf(&["none", "user", "pool"]);
    SECURITY_DOMAIN: Str "security_domain" = "", Any;
    KVM_FLAG: Str "kvm_flag" = "", OptOneOf(&["enabled", "disabled"]);
    VHOST_NET: Bool "vhost_net" = true, Any;
    VIRTIO_NET_QUEUES: Int "virtio_net_queues" = 1, Range(1, 32);
    VNET_HDR: Bool "vnet_hdr" = true, Any;
    USE_CHROOT: Bool "use_chroot" = false, Any;
    USER_SHUTDOWN: Bool "user_shutdown" = false, Any;
    MEM_PATH: Str "mem_path" = "", OptAbsPath;
    REBOOT_BEHAVIOR: Str "reboot_behavior" = "reboot", OneOf(&["reboot", "exit"]);
    CPU_MASK: Str "cpu_mask" = "all", CpuMask;
    CPU_TYPE: Str "cpu_type" = "", Any;
    CPU_CORES: Int "cpu_cores" = 0, Range(0, i64::MAX);
    CPU_THREADS: Int "cpu_threads" = 0, Range(0, i64::MAX);
    CPU_SOCKETS: Int "cpu_sockets" = 0, Range(0, i64::MAX);
    SOUNDHW: Str "soundhw" = "", Any;
    USB_DEVICES: Str "usb_devices" = "", Any;
    VGA: Str "vga" = "", Any;
    KVM_EXTRA: Str "kvm_extra" = "", Any;
    MACHINE_VERSION: Str "machine_version" = "", Any;
    MIGRATION_CAPS: Str "migration_caps" = "", Any;
}

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

/// Marker types of typed keys.
pub mod kinds {
    /// A string parameter.
    #[derive(Debug)]
    pub enum Str {}
    /// A boolean parameter.
    #[derive(Debug)]
    pub enum Bool {}
    /// An integer parameter.
    #[derive(Debug)]
    pub enum Int {}
}

/// A typed key of one parameter (see [`key`]).
pub struct Key<K> {
    name: &'static str,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Key<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K> Copy for Key<K> {}

impl<K> fmt::Debug for Key<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl<K> Key<K> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            _kind: PhantomData,
        }
    }

    pub fn name(self) -> &'static str {
        self.name
    }

    /// The field path of this parameter in an instance definition: `hvparams.NAME`.
    pub fn field(self) -> String {
        format!("hvparams.{}", self.name)
    }
}

/// The full, merged set: always all 65 keys, each of its table type. Built by [`merged`] or
/// read back from a runtime file, where a missing or mistyped key (a file of another kvmd
/// version, say) takes its default: reading a parameter never fails.
///
/// [`merged`]: HvParams::merged
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct HvParams(BTreeMap<String, HvValue>);

impl<'de> serde::Deserialize<'de> for HvParams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let stored = BTreeMap::<String, HvValue>::deserialize(d)?;
        Ok(Self::completed(stored))
    }
}

fn defaults() -> &'static HvParams {
    static D: OnceLock<HvParams> = OnceLock::new();
    D.get_or_init(|| HvParams::merged(&[]))
}

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

    /// A stored set made whole: unknown keys dropped, missing or mistyped ones defaulted.
    pub fn completed(stored: BTreeMap<String, HvValue>) -> Self {
        let map = PARAMS
            .iter()
            .map(|p| {
                let v = match stored.get(p.name) {
                    Some(v) if v.kind() == p.kind => v.clone(),
                    _ => p.default.value(),
                };
                (p.name.to_string(), v)
            })
            .collect();
        Self(map)
    }

    /// The keys of `stored` that [`completed`](Self::completed) would default or drop.
    pub fn incomplete_keys(stored: &BTreeMap<String, HvValue>) -> Vec<String> {
        let mut bad: Vec<String> = PARAMS
            .iter()
            .filter(|p| stored.get(p.name).map(HvValue::kind) != Some(p.kind))
            .map(|p| p.name.to_string())
            .collect();
        bad.extend(stored.keys().filter(|k| def(k).is_none()).cloned());
        bad
    }

    /// The value of a parameter.
    pub fn value<K>(&self, key: Key<K>) -> &HvValue {
        self.0
            .get(key.name)
            .or_else(|| defaults().0.get(key.name))
            .unwrap_or(&HvValue::Bool(false))
    }

    /// Set a string parameter (a value changed while the VM runs, e.g. `cpu_mask`).
    pub fn set_str(&mut self, key: Key<kinds::Str>, value: &str) {
        self.0
            .insert(key.name.to_string(), HvValue::Str(value.to_string()));
    }

    /// A parameter by name, for code that walks the table.
    pub fn get_named(&self, name: &str) -> Option<&HvValue> {
        self.0.get(name)
    }

    pub fn str(&self, key: Key<kinds::Str>) -> &str {
        match self.value(key) {
            HvValue::Str(s) => s,
            _ => "",
        }
    }

    pub fn bool(&self, key: Key<kinds::Bool>) -> bool {
        matches!(self.value(key), HvValue::Bool(true))
    }

    pub fn int(&self, key: Key<kinds::Int>) -> i64 {
        match self.value(key) {
            HvValue::Int(i) => *i,
            _ => 0,
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
    errs.extend(check_combinations(hv));
    errs
}

/// Errors of the command-line builder name bare hvparams; put those under `hvparams.` (as the
/// instance spec has them) and leave other fields (`disk[0].path`, `nic[1].mode`) alone.
pub fn under_hvparams(errs: Vec<FieldError>) -> Vec<FieldError> {
    errs.into_iter()
        .map(|e| {
            if def(&e.field).is_some() {
                e.under("hvparams")
            } else {
                e
            }
        })
        .collect()
}

/// The rules that combine keys (Ganeti's `CheckParameterSyntax` beyond the per-key checks).
pub fn check_combinations(hv: &HvParams) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let s = |n| hv.str(n);
    // Ganeti checks the speed only when there is a serial console.
    if hv.bool(key::SERIAL_CONSOLE) && !SERIAL_SPEEDS.contains(&hv.int(key::SERIAL_SPEED)) {
        errs.push(
            FieldError::new(
                "serial_speed",
                hv.int(key::SERIAL_SPEED).to_string(),
                "must be a standard serial speed when serial_console is on",
            )
            .with_allowed(SERIAL_SPEEDS.iter().map(i64::to_string)),
        );
    }
    if s(key::BOOT_ORDER) == "cdrom" && s(key::CDROM_IMAGE_PATH).is_empty() {
        errs.push(FieldError::new(
            "cdrom_image_path",
            "\"\"",
            "must be set when boot_order is cdrom",
        ));
    }
    if !s(key::KERNEL_PATH).is_empty() && s(key::ROOT_PATH).is_empty() {
        errs.push(FieldError::new(
            "root_path",
            "\"\"",
            "must be set when kernel_path is set",
        ));
    }
    match (s(key::SECURITY_MODEL), s(key::SECURITY_DOMAIN).is_empty()) {
        ("user", true) => errs.push(FieldError::new(
            "security_domain",
            "\"\"",
            "must name a user when security_model is user",
        )),
        ("none" | "pool", false) => errs.push(FieldError::new(
            "security_domain",
            hv.value(key::SECURITY_DOMAIN).to_string(),
            "must be empty unless security_model is user",
        )),
        _ => {}
    }
    if hv.bool(key::VNC_X509_VERIFY) && s(key::VNC_X509_PATH).is_empty() {
        errs.push(FieldError::new(
            "vnc_x509_verify",
            "true",
            "needs vnc_x509_path to be set",
        ));
    }
    if s(key::DISK_AIO) == "native" && s(key::DISK_CACHE) != "none" {
        errs.push(
            FieldError::new(
                "disk_cache",
                hv.value(key::DISK_CACHE).to_string(),
                "must be none when disk_aio is native",
            )
            .with_allowed(["none"]),
        );
    }
    if !s(key::VNC_BIND_ADDRESS).is_empty() && !s(key::SPICE_BIND).is_empty() {
        errs.push(FieldError::new(
            "spice_bind",
            hv.value(key::SPICE_BIND).to_string(),
            "VNC and SPICE are exclusive: vnc_bind_address is set too",
        ));
    }
    if s(key::SPICE_BIND).is_empty() {
        for dep in [
            key::SPICE_PASSWORD_FILE,
            key::SPICE_IMAGE_COMPRESSION,
            key::SPICE_JPEG_WAN_COMPRESSION,
            key::SPICE_ZLIB_GLZ_WAN_COMPRESSION,
            key::SPICE_STREAMING_VIDEO,
        ] {
            if !s(dep).is_empty() {
                errs.push(FieldError::new(
                    dep.name(),
                    hv.value(dep).to_string(),
                    "needs spice_bind to be set",
                ));
            }
        }
        if hv.bool(key::SPICE_USE_TLS) {
            errs.push(FieldError::new(
                "spice_use_tls",
                "true",
                "needs spice_bind to be set",
            ));
        }
        if hv.int(key::SPICE_IP_VERSION) != 0 {
            errs.push(FieldError::new(
                "spice_ip_version",
                hv.value(key::SPICE_IP_VERSION).to_string(),
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
        assert!(hv.bool(key::VHOST_NET));
        assert_eq!(hv.str(key::DISK_DISCARD), "ignore");
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
        // serial_speed is checked with serial_console (check_combinations).
        assert!(check_value("serial_speed", &HvValue::Int(1)).is_ok());
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

#[cfg(test)]
mod stored_tests {
    use super::*;

    #[test]
    fn a_stored_set_missing_or_mistyping_keys_reads_back_whole() {
        let mut stored: BTreeMap<String, HvValue> = HvParams::merged(&[])
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        stored.remove("acpi");
        stored.insert("serial_speed".into(), HvValue::Str("fast".into()));
        stored.insert("from_the_future".into(), HvValue::Bool(true));
        let mut bad = HvParams::incomplete_keys(&stored);
        bad.sort();
        assert_eq!(bad, ["acpi", "from_the_future", "serial_speed"]);
        let text = serde_json::to_string(&stored).unwrap();
        let hv: HvParams = serde_json::from_str(&text).unwrap();
        assert!(hv.bool(key::ACPI), "missing: the default");
        assert_eq!(hv.int(key::SERIAL_SPEED), 38400, "mistyped: the default");
        assert!(hv.get_named("from_the_future").is_none());
        assert_eq!(hv.iter().count(), 65);
    }
}
