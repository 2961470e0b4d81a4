//! The one builder of a start's host facts, used by the real start path and by
//! `kvmd --print-argv` (the Ganeti parity harness), so the two cannot drift apart.
//!
//! In two pure steps around one impure one: [`plan`] says what must be gathered from the host
//! (which taps with how many queues and whether vhost, which interface addresses, a pool uid,
//! what must happen over QMP before the guest runs); the caller gathers it (the start path
//! from the real host, `--print-argv` from a case file) into [`Gathered`]; [`host`] turns that
//! into the command line's [`Host`].
//!
//! Invariant: pure. Nothing here opens, stats or resolves anything.

use std::path::PathBuf;

use crate::model::hvparams::{key, parse_cpu_mask, HvParams};
use crate::model::layout::RunPaths;
use crate::model::spec::{InstanceSpec, NicMode};
use crate::qemu::caps::QemuCaps;
use crate::qemu::cmdline::{Host, NicBackend};

/// One tap to open for a NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapRequest {
    /// One fd per queue (multiqueue only for paravirtual NICs on a QEMU that takes `fds=`).
    pub queues: usize,
    pub vnet_hdr: bool,
    /// Also one `/dev/vhost-net` fd per queue.
    pub vhost: bool,
}

/// A display password to set over QMP before the guest runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Password {
    /// `vnc` or `spice`.
    pub protocol: &'static str,
    /// The hvparam that names the file (for errors).
    pub hvparam: &'static str,
    /// The file; its first line is the password.
    pub file: PathBuf,
}

/// What happens over QMP between QEMU's start and the guest's first instruction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreRun {
    /// `cpu_mask` pins vCPU threads (they must exist and not have run yet).
    pub pin_vcpus: bool,
    pub passwords: Vec<Password>,
    /// The start asked for a paused guest.
    pub paused: bool,
    /// Start-up ballooning: the balloon's size (MiB) before the guest runs.
    pub balloon_mib: Option<u64>,
}

impl PreRun {
    /// QEMU must start with its vCPUs stopped (`-S`).
    pub fn stops_at_start(&self) -> bool {
        self.pin_vcpus || !self.passwords.is_empty() || self.paused || self.balloon_mib.is_some()
    }
}

/// What a start must gather from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlan {
    /// Per NIC: the tap to open, or `None` for QEMU's user networking.
    pub taps: Vec<Option<TapRequest>>,
    /// `vnc_bind_address` names an interface: its IPv4 address is needed.
    pub vnc_interface: Option<String>,
    /// `spice_bind` names an interface: its address of this family (0: either).
    pub spice_interface: Option<(String, i64)>,
    /// `security_model = pool`: a uid must be taken from the pool.
    pub pool_uid: bool,
    /// The (empty) directory QEMU chroots into, when `use_chroot`.
    pub chroot_dir: Option<PathBuf>,
    pub spice_cert_dir: PathBuf,
    pub pre_run: PreRun,
    /// A migration target: `-incoming defer` on the source's exact machine type.
    pub incoming: Option<String>,
    /// Spare pcie-root-ports (q35; a migration target takes the source's count).
    pub hotplug_ports: u8,
}

/// Facts about the node that shape a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// `/dev/vhost-net` exists (QEMU 7.2 aborts when asked for vhost without it).
    pub vhost_available: bool,
    /// Where SPICE's TLS certificates live (`node.spice_cert_dir`).
    pub spice_cert_dir: PathBuf,
    /// Spare pcie-root-ports a q35 VM gets for hot-plug (`node.hotplug_ports`).
    pub hotplug_ports: u8,
}

/// The fds of one opened tap, as QEMU will inherit them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapFds {
    pub fds: Vec<i32>,
    pub vhost_fds: Vec<i32>,
}

/// What the host gave, per the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gathered {
    /// Per disk: is it a device node (block, or SCSI generic)?
    pub block_devices: Vec<bool>,
    /// Per NIC, in the plan's order.
    pub taps: Vec<Option<TapFds>>,
    pub vnc_address: Option<String>,
    pub spice_address: Option<String>,
    /// The user of the uid taken from the pool.
    pub pool_user: Option<String>,
    /// The QMP listening socket QEMU inherits.
    pub qmp_fd: Option<i32>,
}

/// A bind setting names an interface (not empty, not a path, not an IP address).
fn interface(v: &str) -> Option<String> {
    (!v.is_empty() && !v.starts_with('/') && v.parse::<std::net::IpAddr>().is_err())
        .then(|| v.to_string())
}

/// What must be gathered for starting `spec` with `hv` on this QEMU.
pub fn plan(
    spec: &InstanceSpec,
    hv: &HvParams,
    caps: &QemuCaps,
    node: &NodeFacts,
    paths: &RunPaths,
    paused: bool,
) -> HostPlan {
    let paravirtual = hv.str(key::NIC_TYPE) == "paravirtual";
    let queues = if paravirtual && caps.options.tap_fds {
        usize::try_from(hv.int(key::VIRTIO_NET_QUEUES).max(1)).unwrap_or(1)
    } else {
        1
    };
    let taps = spec
        .nics
        .iter()
        .map(|n| {
            (n.mode != NicMode::User).then_some(TapRequest {
                queues,
                vnet_hdr: hv.bool(key::VNET_HDR),
                // Ganeti applies vhost to paravirtual NICs only.
                vhost: paravirtual && hv.bool(key::VHOST_NET) && node.vhost_available,
            })
        })
        .collect();
    HostPlan {
        taps,
        vnc_interface: interface(hv.str(key::VNC_BIND_ADDRESS)),
        spice_interface: interface(hv.str(key::SPICE_BIND))
            .map(|i| (i, hv.int(key::SPICE_IP_VERSION))),
        pool_uid: hv.str(key::SECURITY_MODEL) == "pool",
        chroot_dir: hv.bool(key::USE_CHROOT).then(|| paths.chroot()),
        spice_cert_dir: node.spice_cert_dir.clone(),
        pre_run: pre_run(hv, paused),
        incoming: None,
        hotplug_ports: node.hotplug_ports,
    }
}

/// What must happen over QMP before the guest runs (also for a start a restarted kvmd
/// finishes).
pub fn pre_run(hv: &HvParams, paused: bool) -> PreRun {
    let pin_vcpus = parse_cpu_mask(hv.str(key::CPU_MASK))
        .map(|m| !matches!(m.as_slice(), [] | [None]))
        .unwrap_or(false);
    let passwords = [
        (key::VNC_PASSWORD_FILE, key::VNC_BIND_ADDRESS, "vnc"),
        (key::SPICE_PASSWORD_FILE, key::SPICE_BIND, "spice"),
    ]
    .into_iter()
    .filter(|(file, bind, _)| !hv.str(*file).is_empty() && !hv.str(*bind).is_empty())
    .map(|(file, _, protocol)| Password {
        protocol,
        hvparam: file.name(),
        file: PathBuf::from(hv.str(file)),
    })
    .collect();
    PreRun {
        pin_vcpus,
        passwords,
        paused,
        balloon_mib: None,
    }
}

/// Ganeti's start-up memory (`_InstanceStartupMemory`): `asked`, else
/// `max(min_memory, min(memory, available))`; a balloon size only when below `memory`.
pub fn startup_memory(spec: &InstanceSpec, asked: Option<u64>, available: u64) -> Option<u64> {
    let mib = asked.unwrap_or_else(|| spec.min_memory.max(spec.memory.min(available)));
    (mib < spec.memory).then_some(mib)
}

/// Made-up fds for the taps of a plan (one per queue, vhost ones too), numbered from `first`:
/// for building a command line that is not run (`--print-argv`, `kvmctl validate`). Returns
/// them and the next free number.
pub fn placeholder_taps(plan: &HostPlan, first: i32) -> (Vec<Option<TapFds>>, i32) {
    let mut fd = first;
    let mut next = |n: usize| -> Vec<i32> {
        let v: Vec<i32> = (fd..).take(n).collect();
        fd = v.last().map_or(fd, |last| last + 1);
        v
    };
    let taps = plan
        .taps
        .iter()
        .map(|t| {
            t.map(|t| TapFds {
                fds: next(t.queues),
                vhost_fds: if t.vhost { next(t.queues) } else { Vec::new() },
            })
        })
        .collect();
    (taps, fd)
}

/// The command line's host facts from a plan and what was gathered for it.
pub fn host(plan: &HostPlan, g: Gathered) -> Host {
    let nics = plan
        .taps
        .iter()
        .zip(g.taps.into_iter().chain(std::iter::repeat(None)))
        .map(|(want, got)| match (want, got) {
            (Some(_), Some(t)) => NicBackend::Tap {
                fds: t.fds,
                vhost_fds: t.vhost_fds,
            },
            _ => NicBackend::User,
        })
        .collect();
    Host {
        block_devices: g.block_devices,
        nics,
        vnc_address: g.vnc_address,
        spice_address: g.spice_address,
        chroot_dir: plan.chroot_dir.as_ref().map(|d| d.display().to_string()),
        pool_user: g.pool_user,
        spice_cert_dir: Some(plan.spice_cert_dir.display().to_string()),
        qmp_fd: g.qmp_fd,
        stopped_at_start: plan.pre_run.stops_at_start(),
        incoming: plan.incoming.is_some(),
        machine: plan.incoming.clone(),
        hotplug_ports: plan.hotplug_ports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hvparams::{HvOverrides, HvValue};
    use crate::model::name::InstanceName;
    use crate::model::spec::NicSpec;
    use std::path::Path;

    fn caps() -> QemuCaps {
        crate::qemu::cmdline::tests::caps()
    }

    fn spec(nics: Vec<NicMode>) -> InstanceSpec {
        InstanceSpec {
            name: InstanceName::parse("web1").unwrap(),
            uuid: "6c3b2a9e-8f41-4d2c-9e7a-1b2c3d4e5f60".into(),
            memory: 128,
            min_memory: 128,
            vcpus: 2,
            network_port: None,
            disks: Vec::new(),
            nics: nics
                .into_iter()
                .map(|mode| NicSpec {
                    mode,
                    link: "br0".into(),
                    mac: "52:54:00:00:00:01".into(),
                    ip: None,
                })
                .collect(),
            hvparams: HvOverrides::new(),
            autostart: false,
        }
    }

    fn hv(pairs: &[(&str, HvValue)]) -> HvParams {
        let o: HvOverrides = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        HvParams::merged(&[&o])
    }

    fn node(vhost: bool) -> NodeFacts {
        NodeFacts {
            vhost_available: vhost,
            spice_cert_dir: "/etc/kvmd/spice".into(),
            hotplug_ports: 8,
        }
    }

    fn paths() -> RunPaths {
        RunPaths::new(
            Path::new("/run/kvmd"),
            &InstanceName::parse("web1").unwrap(),
        )
    }

    #[test]
    fn multiqueue_taps_only_for_paravirtual_nics_on_a_qemu_with_fds() {
        let s = spec(vec![NicMode::Bridged, NicMode::User]);
        let h = hv(&[("virtio_net_queues", HvValue::Int(4))]);
        let p = plan(&s, &h, &caps(), &node(false), &paths(), false);
        assert_eq!(p.taps[0].unwrap().queues, 4);
        assert_eq!(p.taps[1], None, "user-mode NICs get no tap");
        let h = hv(&[
            ("virtio_net_queues", HvValue::Int(4)),
            ("nic_type", HvValue::Str("e1000".into())),
        ]);
        let p = plan(&s, &h, &caps(), &node(false), &paths(), false);
        assert_eq!(p.taps[0].unwrap().queues, 1);
    }

    #[test]
    fn vhost_only_where_the_node_has_it() {
        let s = spec(vec![NicMode::Bridged]);
        let h = hv(&[]);
        assert!(
            !plan(&s, &h, &caps(), &node(false), &paths(), false).taps[0]
                .unwrap()
                .vhost
        );
        assert!(
            plan(&s, &h, &caps(), &node(true), &paths(), false).taps[0]
                .unwrap()
                .vhost
        );
    }

    #[test]
    fn vhost_only_for_paravirtual_nics() {
        let s = spec(vec![NicMode::Bridged]);
        for model in ["e1000", "rtl8139", "ne2k_pci", "pcnet"] {
            let h = hv(&[("nic_type", HvValue::Str(model.into()))]);
            let tap = plan(&s, &h, &caps(), &node(true), &paths(), false).taps[0].unwrap();
            assert!(!tap.vhost, "{model} gets no vhost");
        }
    }

    #[test]
    fn qemu_starts_stopped_only_when_something_must_happen_first() {
        let s = spec(vec![]);
        let p = |pairs: &[(&str, HvValue)], paused| {
            plan(&s, &hv(pairs), &caps(), &node(false), &paths(), paused)
        };
        assert!(!p(&[], false).pre_run.stops_at_start());
        assert!(p(&[], true).pre_run.stops_at_start());
        assert!(p(&[("cpu_mask", HvValue::Str("0".into()))], false)
            .pre_run
            .stops_at_start());
        assert!(!p(&[("cpu_mask", HvValue::Str("all".into()))], false)
            .pre_run
            .stops_at_start());
        let with_password = p(
            &[
                ("vnc_bind_address", HvValue::Str("127.0.0.1".into())),
                ("vnc_password_file", HvValue::Str("/etc/kvmd/vnc.pw".into())),
            ],
            false,
        );
        assert_eq!(with_password.pre_run.passwords[0].protocol, "vnc");
        assert!(with_password.pre_run.stops_at_start());
    }

    #[test]
    fn bind_settings_that_name_interfaces_are_resolved_others_are_not() {
        let s = spec(vec![]);
        let h = hv(&[
            ("vnc_bind_address", HvValue::Str("eth0".into())),
            ("spice_bind", HvValue::Str("10.0.0.1".into())),
        ]);
        let p = plan(&s, &h, &caps(), &node(false), &paths(), false);
        assert_eq!(p.vnc_interface.as_deref(), Some("eth0"));
        assert_eq!(p.spice_interface, None);
    }

    #[test]
    fn gathered_taps_become_backends_and_the_node_cert_dir_is_used() {
        let s = spec(vec![NicMode::Bridged, NicMode::User]);
        let p = plan(&s, &hv(&[]), &caps(), &node(false), &paths(), false);
        let h = host(
            &p,
            Gathered {
                taps: vec![
                    Some(TapFds {
                        fds: vec![10],
                        vhost_fds: vec![],
                    }),
                    None,
                ],
                qmp_fd: Some(12),
                ..Gathered::default()
            },
        );
        assert_eq!(
            h.nics,
            vec![
                NicBackend::Tap {
                    fds: vec![10],
                    vhost_fds: vec![]
                },
                NicBackend::User
            ]
        );
        assert_eq!(h.spice_cert_dir.as_deref(), Some("/etc/kvmd/spice"));
        assert_eq!(h.qmp_fd, Some(12));
    }

    #[test]
    fn start_up_memory_is_what_was_asked_else_ganetis_rule() {
        let mut s = spec(Vec::new());
        s.memory = 1024;
        s.min_memory = 256;
        // Plenty available: no ballooning; asked: that.
        assert_eq!(startup_memory(&s, None, 20_000), None);
        assert_eq!(startup_memory(&s, Some(512), 20_000), Some(512));
        assert_eq!(startup_memory(&s, Some(1024), 20_000), None);
        // Short of memory: what the node has, never below min_memory.
        assert_eq!(startup_memory(&s, None, 700), Some(700));
        assert_eq!(startup_memory(&s, None, 100), Some(256));
    }
}
