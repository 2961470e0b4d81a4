//! What a migration source hands its target (`migration-info`, relayed by whoever drives
//! the migration), and the target's preflight: the checks that refuse a migration with a
//! precise reason before a byte moves (Ganeti's `VersionsSafeForMigration` and
//! `HotplugSupported`-style checks, made real).
//!
//! The blob is JSON with a `format` number; a target refuses a format it does not know.
//! It carries the definition, the effective hvparams, the concrete machine type, the slot
//! plan, the devices of the source's command line, the source's QEMU version and the
//! migration capabilities the source will use.
//!
//! Invariant: pure; the target's QEMU capabilities and its own dry-built command line come in
//! as arguments.

use serde::{Deserialize, Serialize};

use crate::model::hvparams::HvParams;
use crate::model::spec::InstanceSpec;
use crate::qemu::caps::QemuCaps;
use crate::qemu::cmdline::{CommandLine, SlotPlan};

/// The blob format this kvmd writes and reads.
pub const FORMAT: u32 = 1;

/// The source's account of a VM, for its target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationBlob {
    pub format: u32,
    pub spec: InstanceSpec,
    pub hvparams: HvParams,
    /// The concrete machine type the source runs (aliases resolved at its start).
    pub machine: String,
    pub slots: SlotPlan,
    /// The `-device` drivers of the source's argv, in order.
    pub devices: Vec<String>,
    /// The source's QEMU (major, minor, micro).
    pub qemu_version: (u32, u32, u32),
    /// The migration capabilities the source will turn on (the target must know them).
    pub capabilities: Vec<String>,
    /// The engine that owns the instance on the source (`ganeti`): the target records it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// The `-device` drivers of an argv, in order.
pub fn devices_of(argv: &[String]) -> Vec<String> {
    argv.windows(2)
        .filter(|w| w[0] == "-device")
        .map(|w| {
            let first = w[1].split(',').next().unwrap_or("");
            first.strip_prefix("driver=").unwrap_or(first).to_string()
        })
        .collect()
}

impl MigrationBlob {
    /// The blob of a VM running `command` (its exact command line) under QEMU `version`.
    pub fn new(
        spec: InstanceSpec,
        hvparams: HvParams,
        command: &CommandLine,
        qemu_version: (u32, u32, u32),
        capabilities: Vec<String>,
    ) -> MigrationBlob {
        MigrationBlob {
            format: FORMAT,
            spec,
            hvparams,
            machine: command.machine.clone(),
            slots: command.slots.clone(),
            devices: devices_of(&command.argv),
            qemu_version,
            capabilities,
            managed_by: None,
        }
    }

    /// Encode for the wire.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a blob serializes")
    }

    /// Decode a blob; a format this kvmd does not know is refused by name.
    pub fn decode(text: &str) -> Result<MigrationBlob, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not a migration blob: {e}"))?;
        match v.get("format").and_then(serde_json::Value::as_u64) {
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => {
                return Err(format!(
                    "migration blob format {f} is not the one this kvmd reads ({FORMAT})"
                ))
            }
            None => return Err("not a migration blob: no format".into()),
        }
        serde_json::from_value(v).map_err(|e| format!("damaged migration blob: {e}"))
    }
}

/// Why a target refuses a migration before it starts. Every reason found is listed.
pub fn preflight(
    blob: &MigrationBlob,
    target: &QemuCaps,
    target_capabilities: &[String],
    target_argv: &CommandLine,
) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    let (s, t) = (blob.qemu_version, target.version);
    if (t.0, t.1) < (s.0, s.1) {
        why.push(format!(
            "the target's QEMU {}.{}.{} is older than the source's {}.{}.{} (QEMU migrates to the same or a newer version only)",
            t.0, t.1, t.2, s.0, s.1, s.2
        ));
    }
    if !target.machines.contains_key(&blob.machine) {
        why.push(format!(
            "the target's QEMU has no machine type {:?}, which the source runs",
            blob.machine
        ));
    }
    let mut missing: Vec<&str> = blob
        .devices
        .iter()
        .map(String::as_str)
        .filter(|d| !target.has_device(d) && !target.pci_devices.contains(*d))
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        why.push(format!(
            "the target's QEMU lacks the devices {missing:?}, which the source's VM has"
        ));
    }
    let unknown: Vec<&str> = blob
        .capabilities
        .iter()
        .map(String::as_str)
        .filter(|c| !target_capabilities.iter().any(|t| t == c))
        .collect();
    if !unknown.is_empty() {
        why.push(format!(
            "the target's QEMU does not know the migration capabilities {unknown:?}"
        ));
    }
    if target_argv.slots != blob.slots {
        why.push(
            "the target would place the disks, cdroms or NICs at other addresses than the source"
                .into(),
        );
    }
    let target_devices = devices_of(&target_argv.argv);
    if target_devices != blob.devices {
        why.push(format!(
            "the target's device list differs from the source's: {:?} there, {:?} here",
            blob.devices, target_devices
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hvparams::HvOverrides;
    use crate::model::name::InstanceName;

    fn caps() -> QemuCaps {
        crate::qemu::cmdline::tests::caps()
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            name: InstanceName::parse("web1").unwrap(),
            uuid: "0b8e3c2a-4d5f-8a1b-9c2d-3e4f5a6b7c8d".into(),
            memory: 256,
            min_memory: 256,
            vcpus: 1,
            network_port: None,
            disks: vec![],
            nics: vec![],
            hvparams: HvOverrides::new(),
            autostart: false,
        }
    }

    fn argv(machine: &str, devices: &[&str]) -> CommandLine {
        let mut a = vec!["qemu".to_string()];
        for d in devices {
            a.push("-device".into());
            a.push(format!("{d},id=x"));
        }
        CommandLine {
            argv: a,
            slots: SlotPlan::default(),
            machine: machine.into(),
        }
    }

    fn blob() -> MigrationBlob {
        MigrationBlob {
            format: FORMAT,
            spec: spec(),
            hvparams: HvParams::merged(&[]),
            machine: "pc-i440fx-7.2".into(),
            slots: SlotPlan::default(),
            devices: vec!["virtio-balloon-pci".into(), "virtio-net-pci".into()],
            qemu_version: (7, 2, 22),
            capabilities: vec!["events".into(), "return-path".into()],
            managed_by: None,
        }
    }

    fn target_caps() -> Vec<String> {
        ["events", "return-path", "postcopy-ram", "auto-converge"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn a_blob_round_trips_and_an_unknown_format_is_refused_by_name() {
        let b = blob();
        assert_eq!(MigrationBlob::decode(&b.encode()).unwrap(), b);
        let newer = b.encode().replacen("\"format\":1", "\"format\":2", 1);
        let e = MigrationBlob::decode(&newer).unwrap_err();
        assert!(e.contains("format 2"), "{e}");
        assert!(MigrationBlob::decode("{}")
            .unwrap_err()
            .contains("no format"));
        assert!(MigrationBlob::decode("[")
            .unwrap_err()
            .contains("not a migration blob"));
    }

    #[test]
    fn a_matching_target_passes() {
        let t = argv("pc-i440fx-7.2", &["virtio-balloon-pci", "virtio-net-pci"]);
        assert_eq!(preflight(&blob(), &caps(), &target_caps(), &t), Ok(()));
    }

    #[test]
    fn every_mismatch_is_named() {
        let mut b = blob();
        b.qemu_version = (8, 0, 0);
        b.machine = "pc-i440fx-8.0".into();
        b.devices.push("virtio-flux-pci".into());
        b.capabilities.push("x-rdma-pin-all".into());
        let t = argv("pc-i440fx-7.2", &["virtio-balloon-pci", "virtio-net-pci"]);
        let why = preflight(&b, &caps(), &target_caps(), &t).unwrap_err();
        let all = why.join("\n");
        for needle in [
            "older than the source's 8.0.0",
            "no machine type \"pc-i440fx-8.0\"",
            "lacks the devices [\"virtio-flux-pci\"]",
            "capabilities [\"x-rdma-pin-all\"]",
            "device list differs",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }

    #[test]
    fn other_slots_on_the_target_are_refused() {
        let mut t = argv("pc-i440fx-7.2", &["virtio-balloon-pci", "virtio-net-pci"]);
        t.slots.nics.push(crate::qemu::cmdline::Slot::Auto);
        let why = preflight(&blob(), &caps(), &target_caps(), &t).unwrap_err();
        assert!(why[0].contains("other addresses"), "{why:?}");
    }

    #[test]
    fn devices_are_read_from_an_argv() {
        let a: Vec<String> = [
            "qemu",
            "-device",
            "virtio-net-pci,id=nic0",
            "-m",
            "1",
            "-device",
            "driver=e1000,id=n",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(devices_of(&a), ["virtio-net-pci", "e1000"]);
    }
}
