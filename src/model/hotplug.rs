//! Devices plugged into a running VM: what was asked, and where each one sits. Recorded in
//! the runtime file, so a restarted kvmd shows them and a migration knows they are there.
//!
//! Invariant: plain data; no actix, no I/O, no clock.

use serde::{Deserialize, Serialize};

/// A device to plug.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HotDevice {
    /// A virtio disk backed by an image file or block device.
    Disk {
        path: String,
        /// `raw` or `qcow2`.
        format: String,
        readonly: bool,
    },
    /// A virtio NIC: on QEMU's user networking, or a tap kvmd opens and sets up per the NIC's
    /// mode (the same hooks as at start: `nic_script`, or the bridge/route itself).
    Nic {
        mac: String,
        #[serde(default = "user_mode")]
        mode: crate::model::spec::NicMode,
        /// Bridge (bridged), routing table (routed), switch (openvswitch).
        #[serde(default)]
        link: String,
    },
}

fn user_mode() -> crate::model::spec::NicMode {
    crate::model::spec::NicMode::User
}

impl HotDevice {
    pub fn kind(&self) -> &'static str {
        match self {
            HotDevice::Disk { .. } => "disk",
            HotDevice::Nic { .. } => "nic",
        }
    }
}

/// A plugged device: its id (the QEMU device id, also naming its backend) and where it sits:
/// a slot of `pci.0` (pc), or a spare root port (q35).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotRecord {
    pub id: String,
    /// Its slot on `pci.0` (pc machines; 0 behind a root port).
    pub slot: u8,
    /// The spare root port it sits behind (`hotportN`; q35 machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u8>,
    pub device: HotDevice,
    /// The plug has begun and not ended: written before the first QMP command, so a kvmd
    /// restarted in the middle finds it and makes it whole or undoes it (by what QEMU has).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plugging: bool,
    /// `device_del` was sent but the guest has not let it go yet.
    #[serde(default)]
    pub pending_removal: bool,
    /// A tap NIC's tap device.
    #[serde(default)]
    pub tap: Option<String>,
    /// A NIC's link is up (`hotplug-mod` sets it).
    #[serde(default = "up")]
    pub link_up: bool,
}

fn up() -> bool {
    true
}

/// The id a new device of `kind` gets, the first not in `taken`.
pub fn next_id(kind: &str, taken: &[HotRecord]) -> String {
    (0..)
        .map(|n| format!("hot{kind}{n}"))
        .find(|id| !taken.iter().any(|r| &r.id == id))
        .unwrap_or_default()
}

/// The device id of spare root port `i` (q35).
pub fn hotplug_port_id(i: u8) -> String {
    format!("hotport{i}")
}

/// The lowest of `ports` spare root ports that no record (plugged, plugging or pending
/// removal) sits behind.
pub fn free_port(ports: u8, taken: &[HotRecord]) -> Option<u8> {
    (0..ports).find(|p| !taken.iter().any(|r| r.port == Some(*p)))
}

/// The lowest free slot of PCI bus 0 a plug may take: from `reserved`
/// (`kvm_pci_reservations`, the low slots left to QEMU's own devices; never below 3: host
/// bridge, ISA bridge, VGA), below 32, not `used`.
pub fn free_slot(used: &[u8], reserved: u8) -> Option<u8> {
    (reserved.max(3)..32u8).find(|s| !used.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_slots_are_the_first_free_ones() {
        let taken = vec![HotRecord {
            id: "hotdisk0".into(),
            slot: 5,
            device: HotDevice::Nic {
                mac: String::new(),
                mode: crate::model::spec::NicMode::User,
                link: String::new(),
            },
            pending_removal: false,
            tap: None,
            link_up: true,
            port: Some(1),
            plugging: false,
        }];
        assert_eq!(next_id("disk", &taken), "hotdisk1");
        assert_eq!(next_id("nic", &taken), "hotnic0");
        assert_eq!(free_port(8, &taken), Some(0));
        assert_eq!(free_port(1, &[]), Some(0));
        assert_eq!(
            free_port(
                2,
                &[
                    taken[0].clone(),
                    HotRecord {
                        port: Some(0),
                        ..taken[0].clone()
                    }
                ]
            ),
            None
        );
        assert_eq!(free_port(0, &[]), None);
        assert_eq!(free_slot(&[0, 1, 2, 3, 4], 0), Some(5));
        assert_eq!(free_slot(&[0, 1, 2, 12], 12), Some(13));
        assert_eq!(free_slot(&[], 32), None);
        assert_eq!(free_slot(&(0..32).collect::<Vec<u8>>(), 3), None);
    }
}
