//! Plugging devices into a running VM and out again: on pc machines `pci.0` takes them
//! directly (PIIX4 ACPI hotplug), on q35 each goes behind a spare `pcie-root-port` created at
//! start. A plug is a transaction: its intent is written to the runtime file first, then the
//! backend (`blockdev-add`, or a tap kvmd opens and `getfd`/`netdev_add`), `device_add`, and
//! `query-pci` to see it there; a step that fails undoes the ones before it, and a kvmd killed
//! in the middle finds the intent and [`reconcile`]s it with QEMU (the whole device or
//! nothing). An unplug waits until the guest has taken a device plugged just before, asks the
//! guest (`device_del`) and waits for `DEVICE_DELETED` of that id, only then removes the
//! backend; a guest that does not let go by the deadline leaves the device `pending-removal`,
//! never reported removed, and one that refuses (`DEVICE_UNPLUG_GUEST_ERROR`) keeps it.
//!
//! Invariant: every QMP command under the client's deadline; waits are bounded.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::api::{ApiError, ErrorCode};
use crate::model::hotplug::{free_slot, hotplug_port_id, HotDevice, HotRecord};
use crate::model::layout::RunPaths;
use crate::model::name::InstanceName;
use crate::model::spec::{NicMode, NicSpec, NodeConfig};
use crate::qmp::{Notice, PciDevice, Qmp, QmpError, QmpEvent};
use crate::store::Store;

use super::error::VmError;

/// How long the guest has to let a device go.
pub(super) const UNPLUG_DEADLINE: Duration = Duration::from_secs(10);
/// How long an unplug waits for the guest to have taken a device plugged just before.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

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
    /// `kvm_pci_reservations`: the low slots of `pci.0` left to QEMU's own devices.
    pub pci_reservations: u8,
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

/// Where a plug's progress is written before QEMU is asked anything: the runtime file's
/// list of plugged devices (the others as they are, plus this one), on the store thread in
/// order with the actor's own writes.
pub(super) struct Journal {
    pub store: Store,
    pub paths: RunPaths,
    pub others: Vec<HotRecord>,
}

impl Journal {
    async fn write(&self, rec: &HotRecord) -> Result<(), ApiError> {
        let (paths, mut list) = (self.paths.clone(), self.others.clone());
        list.push(rec.clone());
        let written = self
            .store
            .run(move || crate::store::runtime_file::set_hotplugged(&paths, &list))
            .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::new(
                ErrorCode::Internal,
                format!("cannot record the plug in the runtime file: {e}"),
            )),
            Err(e) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
        }
    }
}

/// A test's pause at `point` (`KVMD_FAULTS=delay_POINT_ms=N`; nothing in release builds).
async fn hold(point: &str) {
    if let Some(d) = crate::host::faults::delay(point) {
        warn!(point, ms = ?d, "fault injection: holding");
        tokio::time::sleep(d).await;
    }
}

/// Can this QEMU plug `device` at all? (Ganeti's `HotplugSupported`: the QMP commands.)
async fn supported(qmp: &Qmp, device: &HotDevice) -> Result<(), ApiError> {
    let have = qmp.query_commands().await.map_err(qmp_err)?;
    let backend = match device {
        HotDevice::Disk { .. } => "blockdev-add",
        HotDevice::Nic { .. } => "netdev_add",
    };
    let missing: Vec<&str> = ["device_add", "device_del", "query-pci", backend]
        .into_iter()
        .filter(|c| !have.iter().any(|h| h == c))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "this QEMU cannot hot-plug a {}: it lacks the QMP commands {missing:?}",
                device.kind()
            ),
        ))
    }
}

/// Where a device goes: behind its spare root port (q35), or at the lowest free slot of
/// `pci.0` from `kvm_pci_reservations` up, as Ganeti allocates (pc; QEMU's own devices are
/// asked for with `query-pci`). Its `bus`/`addr`.
async fn placement(
    qmp: &Qmp,
    rec: &mut HotRecord,
    reserved: u8,
) -> Result<serde_json::Value, ApiError> {
    if let Some(port) = rec.port {
        return Ok(serde_json::json!({ "bus": hotplug_port_id(port) }));
    }
    let used: Vec<u8> = qmp
        .query_pci()
        .await
        .map_err(qmp_err)?
        .into_iter()
        .filter(|d| d.bus.is_empty())
        .map(|d| d.slot)
        .collect();
    let slot = free_slot(&used, reserved).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Busy,
            format!(
                "no free PCI slot on pci.0 from kvm_pci_reservations ({reserved}) to 31 ({} of 32 taken); unplug a device first",
                used.len()
            ),
        )
    })?;
    rec.slot = slot;
    Ok(serde_json::json!({ "bus": "pci.0", "addr": format!("0x{slot:x}") }))
}

/// Is device `id` where `rec` says, by `query-pci`?
fn placed(devices: &[PciDevice], rec: &HotRecord) -> bool {
    devices.iter().any(|d| {
        d.id == rec.id
            && match rec.port {
                Some(p) => d.bus == hotplug_port_id(p),
                None => d.bus.is_empty() && d.slot == rec.slot,
            }
    })
}

/// Plug the device of `intent` (its id and root port chosen, `plugging` set); its record,
/// or why not (with everything undone). The intent is in the runtime file before the first
/// QMP command.
pub(super) async fn add(
    qmp: &Qmp,
    intent: HotRecord,
    env: &NicEnv,
    journal: &Journal,
) -> Result<HotRecord, ApiError> {
    supported(qmp, &intent.device).await?;
    journal.write(&intent).await?;
    let mut rec = intent;
    let place = placement(qmp, &mut rec, env.pci_reservations).await?;
    let id = rec.id.clone();
    let node = backend(&id);
    let (driver, link_props) = match &rec.device {
        HotDevice::Disk {
            path,
            format,
            readonly,
        } => {
            qmp.blockdev_add_file(&node, path, format, *readonly)
                .await
                .map_err(qmp_err)?;
            (
                "virtio-blk-pci",
                serde_json::json!({ "drive": node, "serial": id }),
            )
        }
        HotDevice::Nic { mac, mode, link } if *mode != NicMode::User => {
            let (name, fd) = open_tap(env, nic_spec(mac, *mode, link)).await?;
            rec.tap = Some(name.clone());
            let fdname = format!("{id}-fd");
            let passed = async {
                journal.write(&rec).await?;
                qmp.getfd(&fdname, fd.as_fd()).await.map_err(qmp_err)?;
                qmp.netdev_add_tap(&node, &fdname).await.map_err(qmp_err)
            }
            .await;
            // QEMU has its own copy now (or none): ours goes.
            drop(fd);
            if let Err(e) = passed {
                let _ = qmp.closefd(&fdname).await;
                nic_down(env, nic_spec(mac, *mode, link), name).await;
                return Err(e);
            }
            (
                "virtio-net-pci",
                serde_json::json!({ "netdev": node, "mac": mac }),
            )
        }
        HotDevice::Nic { mac, .. } => {
            qmp.netdev_add_user(&node).await.map_err(qmp_err)?;
            (
                "virtio-net-pci",
                serde_json::json!({ "netdev": node, "mac": mac }),
            )
        }
    };
    hold("hotplug_after_backend").await;
    let mut props = serde_json::json!({ "driver": driver, "id": id });
    for (k, v) in place
        .as_object()
        .into_iter()
        .chain(link_props.as_object())
        .flatten()
    {
        props[k] = v.clone();
    }
    let added = if crate::host::faults::fail("hotplug_device_add") {
        Err(ApiError::new(
            ErrorCode::QmpError,
            "device_add failed (fault injection)",
        ))
    } else {
        qmp.device_add(props).await.map_err(qmp_err)
    };
    if let Err(e) = added {
        remove_backend(qmp, &rec, env).await;
        return Err(e);
    }
    // It must be there, where it was put.
    let seen = qmp.query_pci().await.map(|d| placed(&d, &rec));
    if !matches!(seen, Ok(true)) {
        let _ = qmp.device_del(&id).await;
        remove_backend(qmp, &rec, env).await;
        return Err(ApiError::new(
            ErrorCode::QmpError,
            format!("{id} was added but query-pci does not show it where it was put; undone"),
        ));
    }
    hold("hotplug_after_device").await;
    rec.plugging = false;
    info!(%id, slot = rec.slot, port = ?rec.port, "device plugged");
    Ok(rec)
}

/// Wait (at most `limit`) until the guest has taken device `id` (a memory BAR mapped): an
/// unplug sent before that races the guest's own handling of the plug.
async fn settled(qmp: &Qmp, id: &str, limit: Duration) {
    let t0 = tokio::time::Instant::now();
    loop {
        match qmp.query_pci().await {
            Ok(d) if d.iter().any(|d| d.id == id && !d.mapped) => {}
            _ => break,
        }
        if t0.elapsed() >= limit {
            info!(%id, "the guest has not taken the device; unplugging anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if t0.elapsed() > Duration::from_millis(100) {
        info!(%id, waited = ?t0.elapsed(), "waited for the guest to take the device before unplugging");
    }
}

/// Unplug `record`: true when removed (backend too), false when still pending (the guest
/// did not let go by the deadline); an error when the guest refused
/// (`DEVICE_UNPLUG_GUEST_ERROR`) or QEMU did.
pub(super) async fn del(
    qmp: &Qmp,
    mut events: mpsc::Receiver<Notice>,
    record: &HotRecord,
    env: &NicEnv,
) -> Result<bool, ApiError> {
    let id = record.id.as_str();
    let t0 = tokio::time::Instant::now();
    if !record.pending_removal {
        settled(qmp, id, SETTLE_LIMIT).await;
    }
    loop {
        match qmp.device_del(id).await {
            Ok(()) => break,
            // Already on its way out (a second del of a pending removal): wait for it as well.
            Err(QmpError::Command { desc, .. }) if desc.contains("in the process of unplug") => {
                break
            }
            // Already gone (its DEVICE_DELETED came while nobody listened): remove the backend.
            Err(QmpError::Command { desc, .. }) if desc.contains("not found") => {
                remove_backend(qmp, record, env).await;
                return Ok(true);
            }
            // A PCIe slot still busy with the plug (power indicator blinking): again shortly.
            Err(QmpError::Command { desc, .. })
                if desc.contains("busy") && t0.elapsed() < UNPLUG_DEADLINE =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(qmp_err(e)),
        }
    }
    let deadline = tokio::time::sleep(UNPLUG_DEADLINE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            n = events.recv() => match n {
                Some(Notice::Event { event: QmpEvent::DeviceDeleted { device: Some(d), .. }, .. })
                    if d == id => break,
                Some(Notice::Event { event: QmpEvent::DeviceUnplugGuestError { device: Some(d), .. }, .. })
                    if d == id => {
                    return Err(ApiError::new(
                        ErrorCode::GuestRefused,
                        format!(
                            "the guest of {} refused to let {id} go (DEVICE_UNPLUG_GUEST_ERROR); it stays plugged",
                            env.instance
                        ),
                    ));
                }
                Some(_) => {}
                None => return Ok(false),
            },
            _ = &mut deadline => {
                // Maybe the event was missed: QEMU's word.
                let still = qmp.query_pci().await.map(|d| d.iter().any(|d| d.id == id));
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

/// After a restart: make the runtime file's devices agree with QEMU (`query-pci`,
/// `query-named-block-nodes`). A plug cut short is finished when its device is in QEMU, and
/// undone (backend, fd, tap) when it is not; a pending removal whose `DEVICE_DELETED` came
/// while kvmd was away loses its backend and its record. The devices as they are now.
pub(super) async fn reconcile(
    qmp: &Qmp,
    records: Vec<HotRecord>,
    env: &NicEnv,
) -> Result<Vec<HotRecord>, ApiError> {
    let pci = qmp.query_pci().await.map_err(qmp_err)?;
    let nodes = qmp.block_node_names().await.map_err(qmp_err)?;
    let mut kept = Vec::new();
    for mut r in records {
        let present = pci.iter().any(|d| d.id == r.id);
        if present && r.plugging {
            if let Some(d) = pci.iter().find(|d| d.id == r.id && d.bus.is_empty()) {
                r.slot = d.slot;
            }
            r.plugging = false;
            info!(id = %r.id, "a plug cut short by a restart is finished: QEMU has the device");
            kept.push(r);
        } else if present {
            kept.push(r);
        } else {
            let why = if r.plugging {
                "a plug cut short by a restart is undone: QEMU does not have the device"
            } else {
                "a device gone from QEMU while kvmd was away: its backend is removed"
            };
            info!(id = %r.id, backend = nodes.contains(&backend(&r.id)), "{why}");
            let _ = qmp.closefd(&format!("{}-fd", r.id)).await;
            remove_backend(qmp, &r, env).await;
        }
    }
    Ok(kept)
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

#[cfg(test)]
mod tests {
    //! The one unplug answer x86 QEMU does not give on demand, from a fake QMP server.
    use super::*;
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[tokio::test]
    async fn a_guest_refusing_an_unplug_is_reported_and_the_device_stays() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\n").await.unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                let answer = match v["execute"].as_str().unwrap() {
                    "query-pci" => json!([{"bus": 0, "devices": [{"slot": 5, "qdev_id": "hotnic0",
                        "regions": [{"type": "memory", "address": 4261412864_i64}]}]}]),
                    _ => json!({}),
                };
                let reply = json!({"return": answer, "id": v["id"]});
                w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                if v["execute"] == "device_del" {
                    let ev = json!({"event": "DEVICE_UNPLUG_GUEST_ERROR", "timestamp": {"seconds": 1, "microseconds": 0},
                        "data": {"device": "hotnic0", "path": "/machine/peripheral/hotnic0"}});
                    w.write_all(format!("{ev}\n").as_bytes()).await.unwrap();
                }
            }
        });
        let opts = crate::qmp::ConnectOptions {
            connect_deadline: std::time::Instant::now() + Duration::from_secs(5),
            startup_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        };
        let (qmp, mut notices) = Qmp::connect_with(&sock, &opts, || true).await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(n) = notices.recv().await {
                let _ = tx.send(n).await;
            }
        });
        let record = HotRecord {
            id: "hotnic0".into(),
            slot: 5,
            port: None,
            device: HotDevice::Nic {
                mac: "52:54:00:00:00:01".into(),
                mode: NicMode::User,
                link: String::new(),
            },
            plugging: false,
            pending_removal: false,
            tap: None,
            link_up: true,
        };
        let env = NicEnv {
            instance: InstanceName::parse("web1").unwrap(),
            index: 0,
            node: Arc::new(NodeConfig::defaults()),
            vnet_hdr: false,
            pci_reservations: 12,
        };
        let t0 = std::time::Instant::now();
        let e = del(&qmp, rx, &record, &env).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::GuestRefused);
        assert!(
            e.message.contains("refused to let hotnic0 go"),
            "{}",
            e.message
        );
        assert!(
            t0.elapsed() < UNPLUG_DEADLINE,
            "answered at once, not at the deadline"
        );
    }
}
