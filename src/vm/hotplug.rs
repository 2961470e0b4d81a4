//! Plugging devices into a running VM and out again (pc machines: `pci.0` takes them
//! directly, PIIX4 ACPI hotplug). A plug is a transaction: the backend (`blockdev-add`,
//! `netdev_add`), then `device_add` at a free slot, then `query-pci` to see it there; a step
//! that fails undoes the ones before it. An unplug asks the guest (`device_del`) and waits for
//! `DEVICE_DELETED` of that id, only then removes the backend; a guest that does not let go
//! by the deadline leaves the device `pending-removal`, never reported removed.
//!
//! Invariant: every QMP command under the client's deadline; waits are bounded.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::api::{ApiError, ErrorCode};
use crate::model::hotplug::{free_slot, next_id, HotDevice, HotRecord};
use crate::model::name::InstanceName;
use crate::model::spec::{NicMode, NicSpec, NodeConfig};
use crate::qmp::{Notice, Qmp, QmpError, QmpEvent};

use super::error::VmError;

/// How long the guest has to let a device go.
pub(super) const UNPLUG_DEADLINE: Duration = Duration::from_secs(10);

fn qmp_err(e: QmpError) -> ApiError {
    VmError::Qmp(e).to_api()
}

/// The backend's id of device `id`.
fn backend(id: &str) -> String {
    format!("{id}-backend")
}

/// What a tap NIC's hooks need.
#[derive(Clone, Debug)]
pub(super) struct NicEnv {
    pub instance: InstanceName,
    /// The NIC's index for the hooks (after the NICs the VM started with).
    pub index: usize,
    pub node: Arc<NodeConfig>,
    pub vnet_hdr: bool,
}

fn nic_spec(mac: &str, mode: NicMode, link: &str) -> NicSpec {
    NicSpec {
        mode,
        link: link.to_string(),
        mac: mac.to_string(),
        ip: None,
    }
}

/// Run a NIC's down hook for `tap` (blocking, off the actor; failures logged).
async fn nic_down(env: &NicEnv, nic: NicSpec, tap: String) {
    let env = env.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let ctx = crate::host::net::NicContext {
            instance: &env.instance,
            index: env.index,
            nic: &nic,
            tap: &tap,
            script: env.node.nic_script.as_deref(),
            deadline: env.node.hook_timeout,
        };
        if let Err(e) = crate::host::net::nic_down(&ctx) {
            warn!(%tap, error = %super::error::chain(&e), "NIC down hook failed");
        }
    })
    .await;
}

/// A new tap set up per the NIC's mode (its up hook run): its name and fd.
async fn open_tap(env: &NicEnv, nic: NicSpec) -> Result<(String, OwnedFd), ApiError> {
    let env2 = env.clone();
    tokio::task::spawn_blocking(move || {
        let mut tap = crate::host::net::create_tap(1, env2.vnet_hdr, false)
            .map_err(|e| ApiError::new(ErrorCode::Internal, super::error::chain(&e)))?;
        let ctx = crate::host::net::NicContext {
            instance: &env2.instance,
            index: env2.index,
            nic: &nic,
            tap: &tap.name,
            script: env2.node.nic_script.as_deref(),
            deadline: env2.node.hook_timeout,
        };
        if let Err(e) = crate::host::net::nic_up(&ctx) {
            let _ = crate::host::net::nic_down(&ctx);
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("cannot set up {}: {}", tap.name, super::error::chain(&e)),
            ));
        }
        let fd = tap.fds.remove(0);
        Ok((tap.name.clone(), fd))
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
}

/// Plug `device`; its record, or why not (with everything undone).
pub(super) async fn add(
    qmp: &Qmp,
    taken: &[HotRecord],
    device: HotDevice,
    env: &NicEnv,
) -> Result<HotRecord, ApiError> {
    let used: Vec<u8> = qmp
        .query_pci_slots()
        .await
        .map_err(qmp_err)?
        .into_iter()
        .map(|(slot, _)| slot)
        .collect();
    let slot = free_slot(&used).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Busy,
            format!(
                "no free PCI slot on pci.0 ({} of 32 taken); unplug a device first",
                used.len()
            ),
        )
    })?;
    let id = next_id(device.kind(), taken);
    let node = backend(&id);
    let addr = format!("0x{slot:x}");
    let mut tap = None;
    let props = match &device {
        HotDevice::Disk {
            path,
            format,
            readonly,
        } => {
            qmp.blockdev_add_file(&node, path, format, *readonly)
                .await
                .map_err(qmp_err)?;
            serde_json::json!({
                "driver": "virtio-blk-pci", "id": id, "drive": node, "bus": "pci.0",
                "addr": addr, "serial": id,
            })
        }
        HotDevice::Nic { mac, mode, link } if *mode != NicMode::User => {
            let (name, fd) = open_tap(env, nic_spec(mac, *mode, link)).await?;
            let fdname = format!("{id}-fd");
            let passed = async {
                qmp.getfd(&fdname, fd.as_fd()).await?;
                qmp.netdev_add_tap(&node, &fdname).await
            }
            .await;
            // QEMU has its own copy now (or none): ours goes.
            drop(fd);
            if let Err(e) = passed {
                let _ = qmp.closefd(&fdname).await;
                nic_down(env, nic_spec(mac, *mode, link), name).await;
                return Err(qmp_err(e));
            }
            tap = Some(name);
            serde_json::json!({
                "driver": "virtio-net-pci", "id": id, "netdev": node, "bus": "pci.0",
                "addr": addr, "mac": mac,
            })
        }
        HotDevice::Nic { mac, .. } => {
            qmp.netdev_add_user(&node).await.map_err(qmp_err)?;
            serde_json::json!({
                "driver": "virtio-net-pci", "id": id, "netdev": node, "bus": "pci.0",
                "addr": addr, "mac": mac,
            })
        }
    };
    let undo_backend = || async {
        let r = match &device {
            HotDevice::Disk { .. } => qmp.blockdev_del(&node).await,
            HotDevice::Nic { .. } => qmp.netdev_del(&node).await,
        };
        if let Err(e) = r {
            warn!(%node, error = %e, "cannot remove the backend of a failed plug");
        }
        if let (Some(t), HotDevice::Nic { mac, mode, link }) = (&tap, &device) {
            nic_down(env, nic_spec(mac, *mode, link), t.clone()).await;
        }
    };
    if let Err(e) = qmp.device_add(props).await {
        undo_backend().await;
        return Err(qmp_err(e));
    }
    // It must be there, at that slot.
    let seen = qmp
        .query_pci_slots()
        .await
        .map(|d| d.iter().any(|(s, i)| *s == slot && *i == id));
    if !matches!(seen, Ok(true)) {
        let _ = qmp.device_del(&id).await;
        undo_backend().await;
        return Err(ApiError::new(
            ErrorCode::QmpError,
            format!("{id} was added but query-pci does not show it at slot {slot}; undone"),
        ));
    }
    info!(%id, slot, "device plugged");
    Ok(HotRecord {
        id,
        slot,
        device,
        pending_removal: false,
        tap,
        link_up: true,
    })
}

/// Unplug `record`: true when removed (backend too), false when still pending (the guest
/// did not let go by the deadline).
pub(super) async fn del(
    qmp: &Qmp,
    mut events: mpsc::Receiver<Notice>,
    record: &HotRecord,
    env: &NicEnv,
) -> Result<bool, ApiError> {
    let id = record.id.as_str();
    match qmp.device_del(id).await {
        Ok(()) => {}
        // Already on its way out (a second del of a pending removal): wait for it as well.
        Err(QmpError::Command { desc, .. }) if desc.contains("in the process of unplug") => {}
        // Already gone (its DEVICE_DELETED came while nobody listened): remove the backend.
        Err(QmpError::Command { desc, .. }) if desc.contains("not found") => {
            remove_backend(qmp, record, env).await;
            return Ok(true);
        }
        Err(e) => return Err(qmp_err(e)),
    }
    let deadline = tokio::time::sleep(UNPLUG_DEADLINE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            n = events.recv() => match n {
                Some(Notice::Event { event: QmpEvent::DeviceDeleted { device: Some(d), .. }, .. })
                    if d == id => break,
                Some(_) => {}
                None => return Ok(false),
            },
            _ = &mut deadline => {
                // Maybe the event was missed: QEMU's word.
                let still = qmp.query_pci_slots().await.map(|d| d.iter().any(|(_, i)| i == id));
                if matches!(still, Ok(false)) {
                    break;
                }
                return Ok(false);
            }
        }
    }
    remove_backend(qmp, record, env).await;
    info!(%id, "device unplugged");
    Ok(true)
}

/// The backend of an unplugged device; a tap's down hook after QEMU closed the tap.
async fn remove_backend(qmp: &Qmp, record: &HotRecord, env: &NicEnv) {
    let node = backend(&record.id);
    let r = match record.device {
        HotDevice::Disk { .. } => qmp.blockdev_del(&node).await,
        HotDevice::Nic { .. } => qmp.netdev_del(&node).await,
    };
    if let Err(e) = r {
        warn!(%node, error = %e, "cannot remove the backend of an unplugged device");
    }
    if let (Some(t), HotDevice::Nic { mac, mode, link }) = (&record.tap, &record.device) {
        nic_down(env, nic_spec(mac, *mode, link), t.clone()).await;
    }
}
