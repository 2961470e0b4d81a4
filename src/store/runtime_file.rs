//! The on-disk formats of one instance directory: the runtime file (what a running QEMU was
//! started with), the exit record, Ganeti's user-shutdown marker, and what recovery reads back.
//!
//! Invariant: this module decides file names' contents and formats; it does not decide VM
//! states. Blocking; runs on the store thread.

use std::io;

use serde::{Deserialize, Serialize};

use crate::model::exit::{ExitKind, ExitRecord};
use crate::model::hvparams::HvParams;
use crate::model::job::PersistedJob;
use crate::model::layout::RunPaths;
use crate::model::spec::InstanceSpec;
use crate::store::files::{read_json, remove_file, write_atomic, write_json};

/// Everything needed to re-adopt a running QEMU and to explain it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuntimeFile {
    pub version: u32,
    pub spec: InstanceSpec,
    pub hvparams: HvParams,
    /// The exact argv QEMU was started with.
    pub argv: Vec<String>,
    pub pid: u32,
    /// `/proc/PID/stat` start time: with `pid`, the identity checked on re-adoption.
    pub start_ticks: u64,
    /// Wall clock at start, ms since the epoch (for uptime).
    pub started_at_ms: u64,
    pub qemu_version: String,
    /// Started with `--paused`.
    pub paused_at_start: bool,
    /// The concrete machine type (aliases resolved at start).
    #[serde(default)]
    pub machine: String,
    /// PCI slots and SCSI ids of the disks and NICs (for hotplug).
    #[serde(default)]
    pub slots: crate::qemu::cmdline::SlotPlan,
    /// Per NIC, the host tap device (`None` for user-mode NICs).
    #[serde(default)]
    pub taps: Vec<Option<String>>,
    /// The uid taken from the pool (`security_model = pool`).
    #[serde(default)]
    pub pool_uid: Option<u32>,
    /// Devices plugged into it since its start.
    #[serde(default)]
    pub hotplugged: Vec<crate::model::hotplug::HotRecord>,
    /// The balloon size (MiB) the start set before the guest ran, when below `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_memory_mib: Option<u64>,
}

/// Record the vCPU pinning a live `pin` put in force (in the runtime file's hvparams).
pub fn set_cpu_mask(paths: &RunPaths, mask: &str) -> io::Result<()> {
    let Some(mut rt) = read_json::<RuntimeFile>(&paths.runtime())? else {
        return Ok(());
    };
    rt.hvparams
        .set_str(crate::model::hvparams::key::CPU_MASK, mask);
    write_json(&paths.runtime(), &rt)
}

/// Record the devices plugged into the running QEMU.
pub fn set_hotplugged(
    paths: &RunPaths,
    devices: &[crate::model::hotplug::HotRecord],
) -> io::Result<()> {
    let Some(mut rt) = read_json::<RuntimeFile>(&paths.runtime())? else {
        return Ok(());
    };
    rt.hotplugged = devices.to_vec();
    write_json(&paths.runtime(), &rt)
}

/// Record an exit: the exit record, plus Ganeti's `shutdown` marker for a user shutdown (and
/// its removal otherwise).
pub fn record_exit(paths: &RunPaths, rec: &ExitRecord) -> io::Result<()> {
    write_json(&paths.exit_record(), rec)?;
    remove_file(&paths.stopping_marker())?;
    if rec.kind == ExitKind::UserDown {
        write_atomic(&paths.shutdown_marker(), b"")
    } else {
        remove_file(&paths.shutdown_marker())
    }
}

/// What the run dir says about one instance. Each file is read on its own, so one damaged
/// file does not hide the others.
#[derive(Debug)]
pub struct OnDisk {
    /// `Err`: the file exists but cannot be read or parsed (not the same as missing).
    pub runtime: Result<Option<RuntimeFile>, String>,
    pub exit: Option<ExitRecord>,
    /// The directory exists (the instance was started since boot and not cleaned up).
    pub exists: bool,
    /// kvmd was stopping this instance (the `stopping` marker).
    pub stopping: bool,
    /// The VM came by an incoming migration not finalized yet (the `incoming` marker).
    pub incoming: bool,
    /// Where the VM went, when this QEMU's migration completed (the `migrated` marker).
    pub migrated: Option<String>,
    /// The pid in QEMU's pidfile, if any.
    pub pidfile_pid: Option<u32>,
    /// The long job the previous kvmd did not finish, if any.
    pub job: Option<PersistedJob>,
}

impl OnDisk {
    /// No run dir: the instance has not run since boot (or was cleaned up).
    pub fn absent() -> OnDisk {
        OnDisk {
            runtime: Ok(None),
            exit: None,
            exists: false,
            stopping: false,
            incoming: false,
            migrated: None,
            pidfile_pid: None,
            job: None,
        }
    }
}

pub fn read_on_disk(paths: &RunPaths) -> OnDisk {
    if !paths.dir.is_dir() {
        return OnDisk::absent();
    }
    OnDisk {
        runtime: read_json(&paths.runtime()).map_err(|e| e.to_string()),
        exit: read_json(&paths.exit_record()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring an unreadable exit record");
            None
        }),
        exists: true,
        stopping: paths.stopping_marker().exists(),
        incoming: paths.incoming_marker().exists(),
        migrated: std::fs::read_to_string(paths.migrated_marker())
            .ok()
            .map(|s| s.trim().to_string()),
        pidfile_pid: std::fs::read_to_string(paths.pidfile())
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        job: crate::store::job_file::read(paths).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring an unreadable job file");
            None
        }),
    }
}
