//! vCPU pinning of a running QEMU: at start (before the guest runs, `-S`) and live (`pin`).
//! The plan is `model::pinning`'s; the threads come from QMP (`query-cpus-fast`) and
//! `/proc/PID/task`.
//!
//! Invariant: blocking work (sched_setaffinity, /proc) runs off the actor.

use tracing::debug;

use crate::model::hvparams;
use crate::model::pinning;
use crate::qmp::Qmp;

use super::error::PinError;

/// The vCPU threads `(cpu-index, thread-id)`.
async fn vcpu_threads(qmp: &Qmp) -> Result<Vec<(u32, u32)>, PinError> {
    let cpus = qmp.query_cpus_fast().await.map_err(PinError::Query)?;
    Ok(cpus.iter().map(|c| (c.cpu_index, c.thread_id)).collect())
}

/// Apply `pins` (blocking, off the actor).
async fn apply(pins: Vec<pinning::Pin>) -> Result<(), PinError> {
    let host = crate::host::validate::host_cpus();
    tokio::task::spawn_blocking(move || {
        for pin in pins {
            match crate::host::affinity::apply(&pin, host) {
                Ok(()) => debug!(tid = pin.tid, cpus = ?pin.cpus, "pinned"),
                // A worker thread that ended since the threads were listed.
                Err(nix::Error::ESRCH) => debug!(tid = pin.tid, "thread gone before pinning"),
                Err(source) => {
                    return Err(PinError::Affinity {
                        tid: pin.tid,
                        source,
                    })
                }
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(PinError::Mask(e.to_string())))
}

/// At start: apply `cpu_mask` while the guest is still stopped (-S): the threads exist but
/// ran nothing.
pub(super) async fn at_start(qmp: &Qmp, pid: u32, mask: &str) -> Result<(), PinError> {
    let mask = hvparams::parse_cpu_mask(mask).map_err(PinError::Mask)?;
    let threads = vcpu_threads(qmp).await?;
    apply(pinning::plan(&mask, pid, &threads)).await
}

/// Live: every thread of the process gets its set (`all` unpins), checked first against the
/// VM's vCPUs and this host's CPUs.
pub(super) async fn live(qmp: &Qmp, pid: u32, vcpus: u32, mask: &str) -> Result<(), PinError> {
    let parsed = hvparams::parse_cpu_mask(mask).map_err(PinError::Mask)?;
    pinning::check_mask(&parsed, vcpus, crate::host::validate::host_cpus())
        .map_err(|why| PinError::Mask(format!("{mask:?} {why}")))?;
    let vcpu = vcpu_threads(qmp).await?;
    let threads = tokio::task::spawn_blocking(move || crate::host::affinity::threads_of(pid))
        .await
        .map_err(|e| PinError::Mask(e.to_string()))?
        .map_err(PinError::Threads)?;
    apply(pinning::plan_live(&parsed, &threads, &vcpu)).await
}
