//! The recover task: what the run dir says about an instance and whether its QEMU still runs.
//! It gathers facts only; the core decides what they mean ([`crate::vm::core::RecoveryFacts`]).
//!
//! The QEMU is identified fail-closed: a pidfd is opened *before* the identity check (start
//! time and our `-pidfile` argument), so the pidfd is the very process that was identified;
//! a QEMU that is ours but cannot be given a pidfd is reported as such (never as gone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::host::process::{self, Identity, QemuProcess};
use crate::model::exit::ExitStatus;
use crate::model::hvparams::key;
use crate::model::job::Operation;
use crate::model::layout::RunPaths;
use crate::model::spec::NodeConfig;
use crate::qmp::{ConnectOptions, Notice, Qmp};
use crate::store::runtime_file::{OnDisk, RuntimeFile};
use crate::store::Store;
use crate::vm::core::{FoundQemu, RecoveryFacts, RunInfo, RuntimeState};

/// What recovery needs.
pub(super) struct RecoverCtx {
    pub gen: u64,
    pub paths: RunPaths,
    pub store: Store,
    pub node: Arc<NodeConfig>,
}

/// An adopted QEMU's handles.
pub(super) struct Adopted {
    pub process: Arc<QemuProcess>,
    pub exit: watch::Receiver<Option<ExitStatus>>,
    pub qmp: Option<(Qmp, mpsc::Receiver<Notice>)>,
}

/// What recovery found.
pub(super) struct Found {
    pub facts: RecoveryFacts,
    pub adopted: Option<Adopted>,
}

/// The core's view of a runtime file.
pub(super) fn run_info(rt: &RuntimeFile) -> RunInfo {
    RunInfo {
        spec: rt.spec.clone(),
        started_at_ms: rt.started_at_ms,
        qemu_version: rt.qemu_version.clone(),
        acpi: rt.hvparams.bool(key::ACPI),
        reboot_exits: rt.hvparams.str(key::REBOOT_BEHAVIOR) == "exit",
        taps: rt.taps.clone(),
        pool_uid: rt.pool_uid,
        cpu_mask: rt.hvparams.str(key::CPU_MASK).to_string(),
        hardware: hardware(rt),
        hotplugged: rt.hotplugged.clone(),
        startup_memory_mib: rt.startup_memory_mib,
    }
}

fn address(slot: Option<&crate::qemu::cmdline::Slot>) -> String {
    use crate::qemu::cmdline::Slot;
    match slot {
        Some(Slot::Pci { bus, slot }) => format!("{bus} 0x{slot:02x}"),
        Some(Slot::Scsi { id }) => format!("scsi {id}"),
        Some(Slot::Ide { bus, unit, .. }) => format!("ide {bus}:{unit}"),
        Some(Slot::Auto) | None => "auto".into(),
    }
}

/// What `info` shows of a running VM's hardware, from its runtime file.
fn hardware(rt: &RuntimeFile) -> crate::api::Hardware {
    let arg_after = |flag: &str| {
        rt.argv
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].clone())
    };
    let accelerator = rt
        .argv
        .iter()
        .find_map(|a| a.split(',').find_map(|p| p.strip_prefix("accel=")))
        .unwrap_or("")
        .to_string();
    let display = arg_after("-vnc")
        .map(|v| format!("vnc {v}"))
        .or_else(|| arg_after("-spice").map(|v| format!("spice {v}")));
    let serial = rt.argv.iter().find_map(|a| {
        a.strip_prefix("socket,id=serial0,path=")
            .map(|rest| rest.split(',').next().unwrap_or("").to_string())
    });
    crate::api::Hardware {
        uuid: rt.spec.uuid.clone(),
        machine: rt.machine.clone(),
        accelerator,
        disks: rt
            .spec
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| crate::api::DiskInfo {
                path: d.path.display().to_string(),
                format: format!("{:?}", d.format).to_lowercase(),
                readonly: d.readonly,
                bus: rt.hvparams.str(key::DISK_TYPE).to_string(),
                address: address(rt.slots.disks.get(i)),
                hotplugged: false,
                id: None,
                pending_removal: false,
            })
            .collect(),
        nics: rt
            .spec
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| crate::api::NicInfo {
                mode: format!("{:?}", n.mode).to_lowercase(),
                link: n.link.clone(),
                mac: n.mac.clone(),
                tap: rt.taps.get(i).cloned().flatten(),
                model: rt.hvparams.str(key::NIC_TYPE).to_string(),
                address: address(rt.slots.nics.get(i)),
                hotplugged: false,
                id: None,
                pending_removal: false,
                link_up: true,
            })
            .collect(),
        serial_socket: serial,
        display,
        hotplug_ports: rt.slots.hotplug_ports,
        hotplug_ports_free: rt.slots.hotplug_ports,
    }
}

pub(super) async fn gather(r: RecoverCtx) -> Found {
    let p = r.paths.clone();
    let on_disk: OnDisk = match r
        .store
        .run(move || crate::store::runtime_file::read_on_disk(&p))
        .await
    {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot read the run dir");
            OnDisk::absent()
        }
    };
    let (runtime, pid, ticks) = match &on_disk.runtime {
        Ok(Some(rt)) => (
            RuntimeState::Present {
                pid: rt.pid,
                info: Box::new(run_info(rt)),
            },
            Some(rt.pid),
            Some(rt.start_ticks),
        ),
        Ok(None) => {
            // A start cut before its QEMU wrote a pidfile (and maybe before the undo step that
            // names it was persisted): look for that QEMU by its -pidfile argument.
            let starting = on_disk
                .job
                .as_ref()
                .is_some_and(|j| matches!(j.kind, Operation::Start | Operation::Reboot));
            let pid = match on_disk.pidfile_pid {
                Some(pid) => Some(pid),
                None if starting => {
                    let pidfile = r.paths.pidfile();
                    tokio::task::spawn_blocking(move || process::find_by_pidfile_arg(&pidfile))
                        .await
                        .ok()
                        .flatten()
                }
                None => None,
            };
            (RuntimeState::Missing, pid, None)
        }
        Err(e) => {
            warn!(error = %crate::model::text::escape(e), "damaged runtime file; looking for the QEMU by its pidfile");
            (RuntimeState::Damaged(e.clone()), on_disk.pidfile_pid, None)
        }
    };
    let mut adopted = None;
    let qemu = match pid {
        None => FoundQemu::None,
        Some(pid) => {
            // The pidfd first, then the identity: the pidfd is then the identified process.
            let opened = QemuProcess::open(pid, false);
            let pidfile = r.paths.pidfile();
            let identity = tokio::task::spawn_blocking(move || {
                let ticks = ticks
                    .or_else(|| process::read_stat(pid).ok().map(|s| s.start_ticks))
                    .unwrap_or(0);
                process::identify(pid, ticks, &pidfile)
            })
            .await
            .unwrap_or(Identity::Gone);
            match (identity, opened) {
                (Identity::Gone, _) => FoundQemu::Gone { pid },
                (Identity::Other(why), _) => FoundQemu::Other { pid, why },
                (Identity::Ours, Err(e)) => {
                    warn!(pid, error = %e, "our QEMU runs but cannot be watched (pidfd_open failed)");
                    FoundQemu::Adopted {
                        pid,
                        conn: None,
                        status: None,
                        watched: false,
                    }
                }
                (Identity::Ours, Ok(process)) => {
                    let process = Arc::new(process);
                    match super::observe::exit_watch(&process) {
                        Err(e) => {
                            warn!(pid, error = %e, "our QEMU runs but cannot be watched");
                            FoundQemu::Adopted {
                                pid,
                                conn: None,
                                status: None,
                                watched: false,
                            }
                        }
                        Ok(exit) => {
                            let e2 = exit.clone();
                            let opts = ConnectOptions {
                                connect_deadline: Instant::now() + Duration::from_secs(2),
                                startup_timeout: r.node.qmp_timeout,
                                command_timeout: r.node.qmp_timeout,
                            };
                            let qmp = Qmp::connect_with(&r.paths.qmp(), &opts, move || {
                                e2.borrow().is_none()
                            })
                            .await;
                            let (qmp, status) = match qmp {
                                Ok((q, n)) => {
                                    let s = q.query_status().await.ok();
                                    (
                                        Some((q, n)),
                                        s.map(|s| super::observe::run_state(s.run_state)),
                                    )
                                }
                                Err(e) => {
                                    warn!(error = %e, "adopted QEMU does not answer on QMP");
                                    (None, None)
                                }
                            };
                            info!(pid, status = ?status, job = ?on_disk.job.as_ref().map(|j| j.kind), "re-adopted running QEMU");
                            let conn = qmp.as_ref().map(|_| 1);
                            adopted = Some(Adopted { process, exit, qmp });
                            FoundQemu::Adopted {
                                pid,
                                conn,
                                status,
                                watched: true,
                            }
                        }
                    }
                }
            }
        }
    };
    Found {
        facts: RecoveryFacts {
            gen: r.gen,
            dir_exists: on_disk.exists,
            exit_record: on_disk.exit,
            runtime,
            pidfile_pid: on_disk.pidfile_pid,
            job: on_disk.job,
            legacy_stopping: on_disk.stopping,
            incoming: on_disk.incoming,
            migrated: on_disk.migrated,
            qemu,
        },
        adopted,
    }
}
