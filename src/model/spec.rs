//! What an instance is: the definition an operator writes (name, uuid, memory, vCPUs, disks,
//! NICs, hvparams, autostart) and the node settings that shape every start.
//!
//! These types are serialized into the runtime file so that a VM's exact definition at start
//! survives kvmd restarts; that is the only reason they derive serde.
//!
//! Invariant: plain data. Parsing lives in `config`, use in `cmdline` and `vm`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::hvparams::key;
use crate::model::hvparams::{HvOverrides, HvParams};
use crate::model::name::InstanceName;

/// Which QEMU accelerator a VM runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Node-wide settings (`[node]`).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// Control socket path.
    pub socket: PathBuf,
    /// Control socket mode bits (default 0o660).
    pub socket_mode: u32,
    /// Group allowed on the control socket besides root (socket is chowned to it).
    pub socket_group: Option<String>,
    /// Where per-instance runtime state lives (one directory per instance).
    pub run_dir: PathBuf,
    /// QEMU binary; the default of the `kvm_path` hvparam.
    pub qemu: PathBuf,
    /// Accelerator unless an instance's `kvm_flag` says otherwise.
    pub accelerator: Accel,
    /// Deadline of every QMP command.
    pub qmp_timeout: Duration,
    /// Default time an ACPI stop may take before kvmd escalates to signals.
    pub stop_timeout: Duration,
    /// How often the ACPI power button is pressed again during a stop.
    pub acpi_resend_interval: Duration,
    /// Largest accepted control request line, in bytes.
    pub max_request_bytes: usize,
    /// Node-level hvparam defaults (Ganeti's cluster hvparams).
    pub hvparams: HvOverrides,
    /// Run for every tap NIC after kvmd set it up (`ACTION=up`) and after QEMU exited
    /// (`ACTION=down`), with Ganeti's NIC environment.
    pub nic_script: Option<PathBuf>,
    /// Directory with `spice-ca.pem` and `spice.pem` for `spice_use_tls`.
    pub spice_cert_dir: PathBuf,
    /// Uids for `security_model = pool` (Ganeti's cluster uid pool), as inclusive ranges.
    pub uid_pool: Vec<(u32, u32)>,
    /// Deadline of each operator hook and external program (`nic_script`, `ip`, `ovs-vsctl`):
    /// a hook still running then is killed (with its process group) and the step fails.
    pub hook_timeout: Duration,
    /// Deadline of probing a QEMU binary (`--version`, `--help`, the QMP cross-check).
    pub probe_timeout: Duration,
    /// How long a new QEMU may take to greet on QMP and accept `qmp_capabilities` (memory
    /// preallocation with `mem_path` happens before that). Separate from `qmp_timeout`.
    pub startup_timeout: Duration,
    /// How often a running VM's QMP is asked `query-status`. A command that misses its
    /// deadline marks the VM unresponsive at once, whatever this interval.
    pub health_interval: Duration,
    /// An outgoing migration that moved no byte for this long is `stalled`.
    pub migration_stall: Duration,
    /// A stalled migration is given up (cancelled, the source resumed) after this much more.
    pub migration_abort_after_stall: Duration,
    /// The guest's balloon driver reports memory statistics this often (seconds; 0: never);
    /// `info` shows them.
    pub balloon_stats_interval: u64,
    /// Where the Prometheus metrics are served (`None`: nowhere).
    pub metrics: Option<MetricsListen>,
    /// How often each VM's metrics sample is taken (one QMP round and a few `/proc` reads).
    pub metrics_interval: Duration,
    /// Spare pcie-root-ports each q35 VM gets at start, one per device it may hot-plug
    /// (0..=8; pc machines take plugged devices on `pci.0` and need none).
    pub hotplug_ports: u8,
    /// `serial.log` is rotated when it grows past this many bytes...
    pub serial_log_max_bytes: u64,
    /// ...keeping this many of its last bytes in `serial.log.1`.
    pub serial_log_keep_bytes: u64,
    /// Control connections served at once (beyond that, new ones are refused at once).
    pub max_connections: usize,
    /// Control connections one peer uid may hold at once (root is exempt).
    pub max_connections_per_peer: usize,
    /// Events kept for `kvmctl events --since`; older ones are reported as a gap.
    pub event_history: usize,
}

impl NodeConfig {
    /// An instance's hvparams over the node's (`kvm_path` defaults to `node.qemu`).
    pub fn hvparams_with(&self, instance: &crate::model::hvparams::HvOverrides) -> HvParams {
        let mut node_layer = self.hvparams.clone();
        node_layer.entry("kvm_path".into()).or_insert_with(|| {
            crate::model::hvparams::HvValue::Str(self.qemu.display().to_string())
        });
        HvParams::merged(&[&node_layer, instance])
    }

    /// Defaults for every `[node]` key.
    pub fn defaults() -> Self {
        Self {
            socket: PathBuf::from("/run/kvmd/kvmd.sock"),
            socket_mode: 0o660,
            socket_group: None,
            run_dir: PathBuf::from("/run/kvmd"),
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            accelerator: Accel::Kvm,
            qmp_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(120),
            acpi_resend_interval: Duration::from_secs(5),
            max_request_bytes: 64 * 1024,
            hvparams: HvOverrides::new(),
            nic_script: None,
            spice_cert_dir: PathBuf::from("/etc/kvmd/spice"),
            uid_pool: Vec::new(),
            hook_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(20),
            startup_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(2),
            migration_stall: Duration::from_secs(30),
            migration_abort_after_stall: Duration::from_secs(30),
            balloon_stats_interval: 10,
            hotplug_ports: 8,
            metrics: None,
            metrics_interval: Duration::from_secs(5),
            serial_log_max_bytes: 1 << 20,
            serial_log_keep_bytes: 256 << 10,
            max_connections: 256,
            max_connections_per_peer: 32,
            event_history: 4096,
        }
    }
}

/// The metrics listener: a TCP address (loopback unless an address is given) or a Unix
/// socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl MetricsListen {
    /// `PORT` (on 127.0.0.1), `IP:PORT`, `[IPv6]:PORT`, or an absolute socket path.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        if let Ok(port) = s.parse::<u16>() {
            return Ok(Self::Tcp(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                port,
            ))));
        }
        s.parse().map(Self::Tcp).map_err(|_| {
            "must be PORT (on 127.0.0.1), IP:PORT, [IPv6]:PORT or an absolute Unix socket path"
        })
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "http://{a}/metrics"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Disk image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// One disk of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Image file or block device.
    pub path: PathBuf,
    pub format: DiskFormat,
    pub readonly: bool,
}

/// How a NIC is connected on the host (Ganeti's NIC modes plus `user`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicMode {
    Bridged,
    Routed,
    Openvswitch,
    /// QEMU's user-mode networking: no host setup, for demos and tests.
    User,
}

impl NicMode {
    pub const ALL: [&'static str; 4] = ["bridged", "routed", "openvswitch", "user"];
}

/// One NIC of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    pub mode: NicMode,
    /// Bridge (bridged), routing table (routed) or switch (openvswitch).
    pub link: String,
    pub mac: String,
    pub ip: Option<String>,
}

/// One instance definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub name: InstanceName,
    pub uuid: String,
    /// Memory in MiB (Ganeti's maxmem): what QEMU is given.
    pub memory: u64,
    /// Ganeti's minmem: the balloon may shrink the guest down to this (defaults to `memory`).
    pub min_memory: u64,
    pub vcpus: u32,
    /// TCP port for VNC (display = port - 5900) or SPICE (Ganeti's network_port).
    pub network_port: Option<u16>,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    /// This instance's hvparams, before node defaults are merged in.
    pub hvparams: HvOverrides,
    pub autostart: bool,
}

impl InstanceSpec {
    /// Effective hvparams: Ganeti defaults ← node ← instance.
    pub fn effective_hvparams(&self, node: &NodeConfig) -> HvParams {
        node.hvparams_with(&self.hvparams)
    }

    /// The accelerator this instance runs with.
    pub fn accel(&self, hv: &HvParams, node: &NodeConfig) -> Accel {
        match hv.str(key::KVM_FLAG) {
            "enabled" => Accel::Kvm,
            "disabled" => Accel::Tcg,
            _ => node.accelerator,
        }
    }
}

impl Serialize for InstanceName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for InstanceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        InstanceName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A name-derived UUID (RFC 9562 version 8 layout) for instances that do not give one, so the
/// same definition always gets the same `-uuid`.
pub fn uuid_from_name(name: &str) -> String {
    let mut h: [u64; 2] = [0xcbf2_9ce4_8422_2325, 0x8422_2325_cbf2_9ce4];
    for (lane, i) in h.iter_mut().zip(0u8..) {
        for b in name.bytes().chain(std::iter::once(i)) {
            *lane ^= u64::from(b);
            *lane = lane.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&h[0].to_be_bytes());
    bytes[8..].copy_from_slice(&h[1].to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A locally administered MAC derived from the instance uuid and NIC index (`52:54:00` is
/// QEMU's own prefix, which operators recognise).
pub fn mac_from_uuid(uuid: &str, index: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    // The hash takes the index's low byte.
    for b in uuid.bytes().chain(std::iter::once(index.to_le_bytes()[0])) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuid_is_stable_and_well_formed() {
        let a = uuid_from_name("web1");
        assert_eq!(a, uuid_from_name("web1"));
        assert_ne!(a, uuid_from_name("web2"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }

    #[test]
    fn derived_macs_differ_per_nic() {
        let u = uuid_from_name("web1");
        assert_ne!(mac_from_uuid(&u, 0), mac_from_uuid(&u, 1));
        assert!(mac_from_uuid(&u, 0).starts_with("52:54:00:"));
    }
}
