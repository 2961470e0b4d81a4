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

/// A plugged device: its id (the QEMU device id, also naming its backend) and PCI slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotRecord {
    pub id: String,
    pub slot: u8,
    pub device: HotDevice,
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

/// The lowest free slot of PCI bus 0 a plug may take: above QEMU's own (host bridge, ISA
/// bridge, VGA), below 32, not `used`.
pub fn free_slot(used: &[u8]) -> Option<u8> {
    (3..32u8).find(|s| !used.contains(s))
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
        }];
        assert_eq!(next_id("disk", &taken), "hotdisk1");
        assert_eq!(next_id("nic", &taken), "hotnic0");
        assert_eq!(free_slot(&[0, 1, 2, 3, 4]), Some(5));
        assert_eq!(free_slot(&(0..32).collect::<Vec<u8>>()), None);
    }
}
