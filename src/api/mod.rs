//! The control surface as domain types: the requests kvmd takes, the replies it gives, jobs,
//! events and errors. `control::protocol` maps them to and from the socket's JSON; the
//! supervisor and the VM actors produce them.
//!
//! Invariant: no JSON here, and no actix.

mod error;

pub use error::{ApiError, ErrorCode};

use crate::model::exit::ExitRecord;
use crate::model::job::{JobId, Operation};
use crate::model::name::InstanceName;
use crate::model::state::{StopEnd, VmState};

/// One operation asked of kvmd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// kvmd answers with its version.
    Ping,
    /// Running instances (those with a QEMU process); with `all`, every instance kvmd knows.
    List {
        all: bool,
    },
    /// One instance, or all (`name = None`).
    Info {
        name: Option<InstanceName>,
    },
    /// `wait`: reply when the start has finished; otherwise at once, with the job.
    /// `memory`: start-up memory in MiB (`None`: Ganeti's rule).
    Start {
        name: InstanceName,
        paused: bool,
        wait: bool,
        memory: Option<u64>,
    },
    /// `timeout_s = None` uses the node's stop timeout.
    Stop {
        name: InstanceName,
        timeout_s: Option<u64>,
        force: bool,
        wait: bool,
    },
    /// Soft: stop (ACPI) and start again with the current definition. Hard: QMP system_reset.
    Reboot {
        name: InstanceName,
        hard: bool,
        /// How long the stop half may wait for the guest (default: the node's stop timeout).
        timeout_s: Option<u64>,
        wait: bool,
    },
    /// Freeze a running guest (QMP stop).
    Pause {
        name: InstanceName,
    },
    /// Let a paused guest run (QMP cont), e.g. after `start --paused`.
    Resume {
        name: InstanceName,
    },
    /// Remove a stopped instance's runtime files.
    Cleanup {
        name: InstanceName,
    },
    /// Re-read the config file.
    Reload,
    /// Jobs running and recently ended, oldest first (of one instance, or all).
    Jobs {
        name: Option<InstanceName>,
    },
    /// One job: by id, or an instance's current (else latest) job.
    Job {
        target: JobRef,
    },
    /// Cancel a running job (start, stop, reboot).
    Cancel {
        id: JobId,
    },
    /// Switch this connection into an event stream: events after `since` (a sequence number)
    /// that are still kept, then, with `follow`, new ones as they happen.
    Subscribe {
        since: Option<u64>,
        follow: bool,
    },
    /// Migration source: what a target needs to take this running instance (a versioned
    /// blob, relayed as is).
    MigrationInfo {
        name: InstanceName,
    },
    /// Migration target: would this node take the VM the blob describes? Checks QEMU
    /// version, machine type, devices, capabilities and the slot plan; nothing is started.
    MigrationPreflight {
        info: String,
    },
    /// Target: a paused QEMU for the VM of `info`, listening on `listen` (`ADDR:PORT`).
    Accept {
        name: InstanceName,
        info: String,
        listen: String,
        wait: bool,
    },
    /// Source: migrate to `target` (`ADDR:PORT`, where the target accepted it).
    Migrate {
        name: InstanceName,
        target: String,
        live: bool,
        wait: bool,
    },
    /// A migration's status and figures (source), or the incoming VM's (target).
    MigrationStatus {
        name: InstanceName,
    },
    FinalizeDst {
        name: InstanceName,
        success: bool,
    },
    FinalizeSrc {
        name: InstanceName,
        success: bool,
    },
    MigrateCancel {
        name: InstanceName,
    },
    /// Pin a running instance's threads to host CPUs (`cpu_mask` grammar).
    Pin {
        name: InstanceName,
        mask: String,
    },
    /// Plug a device into a running instance.
    HotplugAdd {
        name: InstanceName,
        device: crate::model::hotplug::HotDevice,
    },
    /// Unplug a plugged device (by its id).
    HotplugDel {
        name: InstanceName,
        id: String,
    },
    /// Change a plugged NIC live: its link up or down.
    HotplugMod {
        name: InstanceName,
        id: String,
        link_up: bool,
    },
    /// Resize a running guest's memory with its balloon (MiB, between `min_memory` and
    /// `memory`).
    Balloon {
        name: InstanceName,
        mib: u64,
    },
    /// Attach to the serial console: after the `console` reply the connection carries the
    /// console's bytes both ways (`write`: this session types; others only watch).
    Console {
        name: InstanceName,
        write: bool,
    },
    /// How to reach an instance's console from elsewhere (Ganeti's `GetInstanceConsole`).
    ConsoleInfo {
        name: InstanceName,
    },
    /// Start an instance another engine defines (Ganeti): `definition` is the JSON of its
    /// `[instance.NAME]` keys; the instance is `managed_by` that engine from then on.
    Create {
        name: InstanceName,
        definition: String,
        managed_by: String,
        paused: bool,
        wait: bool,
        memory: Option<u64>,
    },
    /// Each VM's newest metrics sample (one instance, or all): what `kvmctl top` shows.
    Stats {
        name: Option<InstanceName>,
    },
    /// The node's memory, CPUs, hypervisor version (Ganeti's `GetNodeInfo`).
    NodeInfo,
    /// The node's checks (Ganeti's `Verify`).
    NodeVerify,
    /// Power-cycle the node (Ganeti's `PowercycleNode`); refused without `yes`.
    NodePowercycle {
        yes: bool,
    },
}

/// One VM's newest metrics sample, summed over its vCPUs, disks and NICs (`stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmStats {
    pub name: String,
    pub state: String,
    /// When the sample was taken (ms since the epoch; 0: none yet, only the state).
    pub sampled_at_ms: u64,
    /// QEMU's CPU time (user + system), ms.
    pub cpu_ms: u64,
    /// The vCPU threads' run time, ms.
    pub vcpu_ms: u64,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub rss_bytes: u64,
    pub balloon_bytes: Option<u64>,
    pub guest_available_bytes: Option<u64>,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub block_read_ops: u64,
    pub block_write_ops: u64,
    /// What the guest received and sent on its tap NICs.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// `node-info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub hostname: String,
    pub kvmd_version: String,
    pub memory_total_mib: u64,
    pub memory_free_mib: u64,
    /// The memory of the instances that have a QEMU (their definitions).
    pub memory_instances_mib: u64,
    /// What the node itself uses: total − free − instances (Ganeti's `memory_dom0`).
    pub memory_node_mib: u64,
    pub instances_running: u32,
    pub cpus: u32,
    pub sockets: u32,
    pub cores_per_socket: u32,
    pub threads_per_core: u32,
    pub numa_nodes: u32,
    pub cpu_model: String,
    /// `kvm` or `tcg`.
    pub accelerator: String,
    pub qemu_path: String,
    /// `(major, minor, micro)`, when the probe answered (Ganeti's hv version).
    pub qemu_version: Option<(u32, u32, u32)>,
    pub qemu_version_text: Option<String>,
    /// Files a cluster engine keeps the same on every node (Ganeti's `GetAncillaryFiles`).
    pub ancillary_files: Vec<String>,
}

/// `console-info`: Ganeti's `GetInstanceConsole` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleInfo {
    pub name: InstanceName,
    /// `serial` (a command to run on this node), `vnc`, `spice`, or `none`.
    pub kind: String,
    /// For `serial`: the command that attaches to it on this node.
    pub command: Vec<String>,
    /// For `vnc`/`spice`: where to connect.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// How to get the display's password (the hvparam's file), if one is set.
    pub password_file: Option<String>,
}

/// One result of `node-verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFinding {
    /// `error`, `warning` or `ok`.
    pub severity: String,
    pub check: String,
    pub detail: String,
}

/// `migration-status`: one VM's migration as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// QEMU's status as Ganeti reads it (`setup`, `active`, `postcopy-active`, `completed`,
    /// `failed`, `cancelled`, ...); `none` when no migration ran since kvmd started.
    pub status: String,
    /// The running migrate job.
    pub job: Option<JobId>,
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    /// Bytes per second, as QEMU measures it.
    pub speed_bps: u64,
    pub dirty_pages_rate: u64,
    /// Passes over dirty memory so far.
    pub pass: u64,
    pub downtime_limit_ms: u64,
    /// No progress for this long (`stalled`).
    pub stalled_ms: Option<u64>,
    pub elapsed_ms: u64,
    /// How the last migration ended (source).
    pub summary: Option<MigrationSummary>,
    /// Target: when the guest was continued here (µs since the epoch).
    pub resumed_at_us: Option<u64>,
}

/// The account of an ended migration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationSummary {
    /// `completed`, `cancelled`, `failed` or `unknown`.
    pub outcome: String,
    pub reason: Option<String>,
    /// QEMU's figures.
    pub total_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub transferred: u64,
    pub passes: u64,
    /// How it converged: `precopy`, `precopy, downtime raised`, `auto-converge` or `postcopy`.
    pub path: String,
    pub downtime_limit_ms: u64,
    /// QEMU's time of the source's STOP (the guest's pause began), µs since the epoch.
    pub stopped_at_us: Option<u64>,
    /// How long after QEMU's `completed` event kvmd saw it, µs.
    pub seen_after_us: Option<u64>,
    /// `total_time_ms` and `downtime_ms` are kvmd's measure: QEMU reported 0 (QEMU 7.2 does
    /// for a QEMU that itself arrived by a migration).
    pub kvmd_measured: bool,
}

/// How a `job` request names its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobRef {
    Id(JobId),
    Instance(InstanceName),
}

/// Everything `info` shows about one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    pub name: InstanceName,
    pub state: VmState,
    pub pid: Option<u32>,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// CPU time used by QEMU, in milliseconds.
    pub cpu_time_ms: Option<u64>,
    pub uptime_s: Option<u64>,
    pub started_at_ms: Option<u64>,
    pub qemu_version: Option<String>,
    pub autostart: bool,
    /// Present in the config file (an adopted VM may no longer be).
    pub in_config: bool,
    /// The definition changed since QEMU started; applies at next start.
    pub pending_changes: bool,
    /// The job in progress, if any.
    pub job: Option<JobSummary>,
    pub last_exit: Option<ExitRecord>,
    /// The vCPU pinning in force (`cpu_mask` grammar), while QEMU runs.
    pub cpu_mask: Option<String>,
    /// The last balloon request of this QEMU and where the guest got to.
    pub balloon: Option<BalloonInfo>,
    /// The running VM's hardware as QEMU was given it (from the runtime file).
    pub hardware: Option<Box<Hardware>>,
    /// The guest's own memory figures, from its balloon driver's statistics.
    pub guest_memory: Option<GuestMemory>,
    /// The engine that defines this instance per start (`ganeti`), when not the config file.
    pub managed_by: Option<String>,
}

/// What the guest says of its memory (its balloon driver's statistics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestMemory {
    pub total_mib: u64,
    pub free_mib: u64,
    pub available_mib: u64,
    /// When the guest sent them, seconds since the epoch.
    pub updated_at_s: u64,
}

/// What a running VM has: `virsh dominfo` + `domblklist` + `domiflist` in one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hardware {
    pub uuid: String,
    /// The concrete machine type.
    pub machine: String,
    /// `kvm` or `tcg`.
    pub accelerator: String,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicInfo>,
    /// The serial console's socket, when `serial_console` is on.
    pub serial_socket: Option<String>,
    /// `vnc HOST:DISPLAY` or `spice ...` as QEMU was given it; `None` without a display.
    pub display: Option<String>,
    /// Spare pcie-root-ports created at start for hot-plug (q35; 0 on pc, whose `pci.0`
    /// takes plugged devices directly), and how many no device sits behind.
    pub hotplug_ports: u8,
    pub hotplug_ports_free: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    pub path: String,
    /// `raw` or `qcow2`.
    pub format: String,
    pub readonly: bool,
    /// `disk_type`: `paravirtual`, `ide`, `scsi`, ...
    pub bus: String,
    /// Where it sits: `pci 0x05`, `scsi 0`, `ide 0:1`, `auto`.
    pub address: String,
    pub hotplugged: bool,
    /// A plugged device's id (`kvmctl hotplug del NAME ID`).
    pub id: Option<String>,
    /// `device_del` was sent; the guest has not let it go yet.
    pub pending_removal: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicInfo {
    /// `bridged`, `routed`, `openvswitch` or `user`.
    pub mode: String,
    pub link: String,
    pub mac: String,
    pub tap: Option<String>,
    /// `nic_type`: `paravirtual`, `e1000`, ...
    pub model: String,
    pub address: String,
    pub hotplugged: bool,
    pub id: Option<String>,
    pub pending_removal: bool,
    /// The link as the guest sees it (`hotplug-mod` sets it on a plugged NIC).
    pub link_up: bool,
}

/// A balloon's target and the guest's memory as the balloon sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonInfo {
    pub target_mib: u64,
    pub actual_mib: u64,
    /// `moving` (a balloon job runs), `reached` (within 1 %), `stalled` (the guest stopped
    /// moving before the target) or `timeout`.
    pub state: String,
}

/// The job an instance is busy with, as `info` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    pub id: JobId,
    pub kind: Operation,
    pub phase: String,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 4] = [
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|j| j.as_str() == s)
    }
}

/// Progress of a job that has any: `done` of `total` `unit`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub unit: String,
}

/// One job, running or ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    pub id: JobId,
    pub instance: InstanceName,
    pub kind: Operation,
    pub state: JobState,
    /// What it is doing now (`launching`, `acpi`, `sigterm`, ...) or did last.
    pub phase: String,
    pub progress: Option<Progress>,
    pub started_at_ms: u64,
    /// When the job (or its current phase, for a stop) gives up, if it has a deadline.
    pub deadline_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    /// Taken over by a restarted kvmd (the job began before it started).
    pub resumed: bool,
    /// How it ended; `None` while running.
    pub outcome: Option<JobOutcome>,
}

/// What an ended job produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Succeeded; a stop also says how QEMU went away.
    Done {
        stop: Option<StopResult>,
    },
    Failed(ApiError),
    Cancelled {
        reason: String,
    },
}

/// How a stop ended and how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopResult {
    pub ended: StopEnd,
    pub elapsed_ms: u64,
}

/// What a successful operation returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiReply {
    Pong {
        version: String,
    },
    List(Vec<VmInfo>),
    Info(Vec<VmInfo>),
    Started(VmInfo),
    Stopped {
        ended: StopEnd,
        elapsed_ms: u64,
        info: VmInfo,
    },
    Rebooted(VmInfo),
    Paused(VmInfo),
    Resumed(VmInfo),
    CleanedUp {
        name: InstanceName,
    },
    Reloaded {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        /// `[node]` settings differ from the running ones: they apply when kvmd restarts.
        node_changed: bool,
    },
    /// An operation asked with `wait = false` was accepted: this is its job.
    Accepted(JobInfo),
    Jobs(Vec<JobInfo>),
    Job(JobInfo),
    /// A cancel was accepted; the job ends (rolled back where needed) shortly.
    Cancelling(JobInfo),
    /// The connection is now an event stream. `last_seq` is the newest event kvmd has.
    Subscribed {
        last_seq: u64,
    },
    /// The blob of `migration-info`.
    MigrationInfo {
        info: String,
    },
    /// The target's preflight passed: it would run this machine type under this QEMU.
    PreflightPassed {
        machine: String,
        qemu_version: String,
    },
    MigrationStatus {
        info: VmInfo,
        migration: Box<MigrationReport>,
    },
    /// A migration step (accept, migrate, finalize-src, finalize-dst) ended, or had nothing
    /// left to do: the VM now.
    MigrationStep(VmInfo),
    /// A live pin took effect: the instance with its `cpu_mask`.
    Pinned(VmInfo),
    /// A balloon job ended: the instance with its `balloon`.
    Ballooned(VmInfo),
    /// A hotplug job ended: the instance with its devices.
    Hotplugged(VmInfo),
    /// The connection is now the console's: raw bytes follow, both ways.
    Console {
        name: InstanceName,
        writer: bool,
    },
    ConsoleInfo(ConsoleInfo),
    NodeInfo(Box<NodeInfo>),
    NodeVerified(Vec<NodeFinding>),
    Stats(Vec<VmStats>),
    /// `node-powercycle`: what it does (without `yes`, what it would do: an error instead).
    Powercycling {
        steps: Vec<String>,
    },
}

/// One event: every state change, job start/progress/end, notable QMP event, and the
/// daemon's own. Sequence numbers grow across kvmd restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub instance: Option<InstanceName>,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The state operators see changed.
    State {
        state: VmState,
        previous: VmState,
    },
    JobStarted(JobInfo),
    /// A job moved to a new phase (or made progress).
    JobProgress(JobInfo),
    JobEnded(JobInfo),
    /// QEMU exited, and how that was classified.
    Exited(ExitRecord),
    /// A QMP event worth telling operators about.
    Qemu(QemuEvent),
    /// kvmd itself: started, stopping, config reloaded.
    Daemon(DaemonEvent),
}

/// Notable QMP events, as operators see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QemuEvent {
    Shutdown {
        guest: bool,
        reason: String,
    },
    Reset {
        guest: bool,
        reason: String,
    },
    Powerdown,
    GuestPanicked {
        action: String,
    },
    BlockIoError {
        device: String,
        operation: String,
        action: String,
        reason: String,
    },
    /// kvmd missed a QMP deadline of this QEMU: it is unresponsive.
    Unresponsive {
        command: String,
    },
    /// It answers again.
    Responsive,
    /// An unplugged device the guest has not let go by the deadline (`pending-removal`).
    PendingRemoval {
        device: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonEvent {
    Started {
        version: String,
    },
    Stopping,
    Reloaded {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
    },
}

/// What a subscribed connection carries after [`ApiReply::Subscribed`].
// Nearly every item is an Event: boxing it would cost an allocation per item and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamItem {
    Event(Event),
    /// Events `from..=to` are no longer kept (the subscriber was slow, or asked for events
    /// older than kvmd's history): they are lost to this subscriber, and it is told so.
    Gap {
        from: u64,
        to: u64,
    },
    /// Replay done (only without `follow`): no more items.
    End {
        last_seq: u64,
    },
}
