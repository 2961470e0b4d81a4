//! The `stats` reply: a VM's metrics sample summed over its vCPUs, disks and NICs.

use crate::api::VmStats;
use crate::metrics::VmSample;

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // seconds of CPU: small, positive
fn ms(seconds: f64) -> u64 {
    (seconds * 1000.0).round().max(0.0) as u64
}

/// `s` as `kvmctl top` needs it.
pub(super) fn summary(s: &VmSample) -> VmStats {
    VmStats {
        name: s.name.clone(),
        state: s.state.clone(),
        sampled_at_ms: s.sampled_at_ms,
        cpu_ms: s.cpu_seconds.map_or(0, ms),
        vcpu_ms: s.vcpus.iter().map(|v| ms(v.run_seconds)).sum(),
        vcpus: u32::try_from(s.vcpus.len()).unwrap_or(u32::MAX),
        memory_bytes: s.memory_bytes,
        rss_bytes: s.rss_bytes.unwrap_or(0),
        balloon_bytes: s.balloon_bytes,
        guest_available_bytes: s.guest.map(|g| g.available),
        block_read_bytes: s.disks.iter().map(|d| d.rd_bytes).sum(),
        block_write_bytes: s.disks.iter().map(|d| d.wr_bytes).sum(),
        block_read_ops: s.disks.iter().map(|d| d.rd_ops).sum(),
        block_write_ops: s.disks.iter().map(|d| d.wr_ops).sum(),
        net_rx_bytes: s.nics.iter().map(|n| n.rx_bytes).sum(),
        net_tx_bytes: s.nics.iter().map(|n| n.tx_bytes).sum(),
    }
}
