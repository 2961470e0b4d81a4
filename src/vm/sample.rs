//! The metrics sample of one VM: one QMP round (`query-blockstats`, `query-balloon`, the
//! guest's memory statistics, and `query-cpus-fast` until the vCPU threads are known) and a
//! few `/proc` and `/sys` reads off the actor, written to the metrics cache.
//!
//! Invariant: every QMP command under the client's deadline; a VM without QMP (or
//! unresponsive) gets its `/proc` figures only; nothing here can slow another VM.

use crate::api::VmInfo;
use crate::metrics::{DiskSample, GuestSample, MigrationSample, NicSample, VcpuSample, VmSample};
use crate::model::state::VmState;
use crate::qmp::{CpuThread, Qmp};

/// What a sample needs from the actor.
pub(super) struct SampleCtx {
    pub info: VmInfo,
    pub qmp: Option<Qmp>,
    pub guest_stats: bool,
    /// The vCPU threads, once known (they do not change while QEMU runs).
    pub vcpus: Option<Vec<CpuThread>>,
    pub migration: Option<MigrationSample>,
}

/// Take the sample; also the vCPU threads, for next time.
pub(super) async fn take(c: SampleCtx) -> (VmSample, Option<Vec<CpuThread>>) {
    let info = &c.info;
    let mut s = VmSample {
        name: info.name.to_string(),
        state: info.state.as_str().to_string(),
        unresponsive: info.state == VmState::Unresponsive,
        pid: info.pid,
        uptime_s: info.started_at_ms.map_or(0.0, |at| {
            crate::host::clock::now_ms().saturating_sub(at) as f64 / 1000.0
        }),
        memory_bytes: info.memory_mib << 20,
        migration: c.migration,
        sampled_at_ms: crate::host::clock::now_ms(),
        ..VmSample::default()
    };
    let Some(pid) = info.pid else {
        return (s, None);
    };
    let mut vcpus = c.vcpus;
    if let Some(q) = c.qmp.as_ref().filter(|_| !s.unresponsive) {
        if let Ok(disks) = q.query_blockstats().await {
            s.disks = disks
                .into_iter()
                .map(|d| DiskSample {
                    id: d.id,
                    rd_bytes: d.rd_bytes,
                    wr_bytes: d.wr_bytes,
                    rd_ops: d.rd_ops,
                    wr_ops: d.wr_ops,
                    flush_ops: d.flush_ops,
                    rd_time_ns: d.rd_time_ns,
                    wr_time_ns: d.wr_time_ns,
                })
                .collect();
        }
        s.balloon_bytes = q.query_balloon().await.ok();
        if c.guest_stats {
            s.guest = q
                .guest_stats()
                .await
                .ok()
                .filter(|g| g.last_update > 0)
                .map(|g| GuestSample {
                    total: g.total,
                    free: g.free,
                    available: g.available,
                    disk_caches: g.disk_caches,
                    major_faults: g.major_faults,
                    minor_faults: g.minor_faults,
                    swap_in: g.swap_in,
                    swap_out: g.swap_out,
                });
        }
        if vcpus.is_none() {
            vcpus = q.query_cpus_fast().await.ok();
        }
    }
    let taps: Vec<(String, String)> = info
        .hardware
        .iter()
        .flat_map(|h| h.nics.iter().enumerate())
        .filter_map(|(i, n)| {
            let tap = n.tap.clone()?;
            Some((n.id.clone().unwrap_or_else(|| format!("nic{i}")), tap))
        })
        .collect();
    let threads = vcpus.clone().unwrap_or_default();
    let read = tokio::task::spawn_blocking(move || {
        let process = crate::host::procstat::process(pid).ok();
        let vcpus: Vec<VcpuSample> = threads
            .iter()
            .filter_map(|t| {
                let (run, wait) = crate::host::procstat::thread(pid, t.thread_id).ok()?;
                Some(VcpuSample {
                    index: t.cpu_index,
                    run_seconds: run,
                    wait_seconds: wait,
                })
            })
            .collect();
        let nics: Vec<NicSample> = taps
            .into_iter()
            .filter_map(|(id, tap)| {
                let (rx, tx, rxp, txp) = crate::host::procstat::tap(&tap).ok()?;
                // The tap receives what the guest sends.
                Some(NicSample {
                    id,
                    tap,
                    rx_bytes: tx,
                    tx_bytes: rx,
                    rx_packets: txp,
                    tx_packets: rxp,
                })
            })
            .collect();
        (process, vcpus, nics)
    })
    .await;
    if let Ok((process, v, nics)) = read {
        if let Some((cpu, rss)) = process {
            s.cpu_seconds = Some(cpu);
            s.rss_bytes = Some(rss);
        }
        s.vcpus = v;
        s.nics = nics;
    }
    (s, vcpus)
}
