//! One VM's sample: what its actor read in one round (QMP and `/proc`), plain data.

/// A VM as its last sample saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmSample {
    pub name: String,
    /// As `kvmctl list` shows it (`running`, `stopped`, ...).
    pub state: String,
    pub unresponsive: bool,
    /// The QEMU process, when there is one.
    pub pid: Option<u32>,
    pub uptime_s: f64,
    /// What QEMU was given.
    pub memory_bytes: u64,
    /// `query-balloon`.
    pub balloon_bytes: Option<u64>,
    /// QEMU's resident memory.
    pub rss_bytes: Option<u64>,
    /// QEMU's CPU time (user + system).
    pub cpu_seconds: Option<f64>,
    pub vcpus: Vec<VcpuSample>,
    pub guest: Option<GuestSample>,
    pub disks: Vec<DiskSample>,
    pub nics: Vec<NicSample>,
    pub migration: Option<MigrationSample>,
    /// When it was taken (ms since the epoch; 0: only the state is known).
    pub sampled_at_ms: u64,
}

/// One vCPU thread's `schedstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VcpuSample {
    pub index: u32,
    pub run_seconds: f64,
    pub wait_seconds: f64,
}

/// The guest's own memory figures (its balloon driver's statistics), bytes and counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestSample {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub disk_caches: u64,
    pub major_faults: u64,
    pub minor_faults: u64,
    pub swap_in: u64,
    pub swap_out: u64,
}

/// One disk's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskSample {
    pub id: String,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
    pub flush_ops: u64,
    pub rd_time_ns: u64,
    pub wr_time_ns: u64,
}

/// One tap NIC's counters, from the guest's side (`rx`: what the guest received).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicSample {
    /// `nic0`.. for the NICs it started with, the plugged NIC's id otherwise.
    pub id: String,
    pub tap: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// An outgoing migration's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationSample {
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub pass: u64,
    pub dirty_pages_rate: u64,
}
