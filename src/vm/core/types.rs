//! The vocabulary between the core and the actor: requests, inputs (facts), effects (what
//! to do), tasks (work run off the actor) and the values they carry.
//!
//! Invariant: plain data; no actix, no tokio, no I/O.

use std::time::Duration;

use crate::api::{ApiError, EventKind, JobInfo, Progress, VmInfo};
use crate::model::exit::{ExitRecord, ExitStatus};
use crate::model::job::{JobId, PersistedJob, Undo};
use crate::model::spec::InstanceSpec;
use crate::model::state::StopEnd;

use super::RecoveryFacts;

/// Timing rules of the core (from the node config; constants where Ganeti has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Default time a stop waits for the guest after the ACPI button.
    pub stop_timeout: Duration,
    /// After SIGTERM, how long before SIGKILL.
    pub sigterm_grace: Duration,
    /// After an exit, how long to wait for QMP's last events before classifying it anyway.
    pub exit_settle: Duration,
    /// Requests queued behind a running job, at most.
    pub max_deferred: usize,
}

impl Settings {
    pub fn new(stop_timeout: Duration) -> Self {
        Self {
            stop_timeout,
            sigterm_grace: Duration::from_secs(10),
            exit_settle: Duration::from_millis(500),
            max_deferred: 8,
        }
    }
}

/// The time and a fresh job id, given with every call (the core has no clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Wall clock, milliseconds since the epoch.
    pub ms: u64,
    /// The id a job begun by this call takes.
    pub id: JobId,
}

/// Identifies one waiting request; the answer comes back in [`Effect::Answer`].
pub type Ticket = u64;

/// What the operator asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `check`: the definition's problems (syntax, cpu mask), found by the caller.
    Start {
        paused: bool,
        check: Option<ApiError>,
        /// Start-up memory (MiB): the balloon's size when the guest boots.
        memory: Option<u64>,
        /// The definition to start with (an instance another engine owns), not the config's.
        spec: Option<Box<InstanceSpec>>,
    },
    /// `timeout`: the grace for the guest (default: the node's stop timeout).
    Stop {
        timeout: Option<Duration>,
        force: bool,
    },
    /// A soft reboot: stop, then start with the current definition.
    Reboot {
        timeout: Option<Duration>,
        check: Option<ApiError>,
    },
    /// A hard reboot: QMP `system_reset`.
    Reset,
    Pause,
    Resume,
    Cleanup,
    Cancel {
        id: JobId,
    },
    /// Source: migrate the running VM to `uri` (a target that accepted it).
    Migrate {
        uri: String,
        live: bool,
    },
    /// Target: a QEMU for the VM `spec` that waits for it on `incoming.uri`.
    Accept {
        spec: Box<InstanceSpec>,
        incoming: IncomingPlan,
    },
    FinalizeSrc {
        success: bool,
    },
    FinalizeDst {
        success: bool,
    },
    /// Cancel the running migration.
    MigrateCancel,
    /// Pin the running VM's threads (`mask`: checked against the grammar by the caller).
    Pin {
        mask: String,
    },
    /// Resize the guest's memory with the balloon.
    Balloon {
        mib: u64,
    },
    HotplugAdd {
        device: crate::model::hotplug::HotDevice,
    },
    HotplugDel {
        id: String,
    },
    HotplugMod {
        id: String,
        link_up: bool,
    },
}

/// What a hotplug job did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotChange {
    Added(crate::model::hotplug::HotRecord),
    Removed(String),
    /// `device_del` was sent; the guest did not let go by the deadline.
    Pending(String),
    /// A NIC's link was set.
    Link(String, bool),
    /// The devices as QEMU has them, after a restart.
    Reconciled(Vec<crate::model::hotplug::HotRecord>),
}

/// How a balloon job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonResult {
    /// Within 1 % of the target.
    Reached,
    /// The guest stopped moving before the target.
    Stalled,
    /// Still moving at the deadline.
    Timeout,
}

impl BalloonResult {
    pub fn as_str(self) -> &'static str {
        match self {
            BalloonResult::Reached => "reached",
            BalloonResult::Stalled => "stalled",
            BalloonResult::Timeout => "timeout",
        }
    }
}

/// What a target's QEMU needs besides the VM's definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingPlan {
    /// Where QEMU listens (`tcp:ADDR:PORT`).
    pub uri: String,
    /// The source's exact machine type.
    pub machine: String,
    /// The migration capabilities the source turns on (the target needs the same).
    pub capabilities: Vec<String>,
    /// The source's spare pcie-root-ports (q35), created here too.
    pub hotplug_ports: u8,
}

/// How a migration ended on the source, as the core cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrateOutcome {
    Completed,
    Cancelled(String),
    Failed(String),
    /// QEMU did not say.
    Unknown(String),
}

/// What the migrate task reports at its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateEnd {
    pub outcome: MigrateOutcome,
    /// The guest runs on this node now (`query-status` after the end; `None`: no answer).
    pub running: Option<bool>,
    /// Postcopy began (the guest is on the target, whatever happens next).
    pub postcopy: bool,
}

/// How a request is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered at once.
    Now(Result<Answer, ApiError>),
    /// The job that serves the request began (callers that do not wait are answered here).
    Accepted(JobInfo),
    /// The job that serves the request ended.
    Ended(JobInfo),
}

/// An immediate answer.
// Boxing the JobInfo would save nothing: Answer travels in an Outcome, whose other variants
// hold a JobInfo inline.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A stop of an instance without QEMU.
    AlreadyStopped,
    /// A cancel was accepted; the job ends shortly.
    Cancelling(JobInfo),
    /// A stop that cancelled a start: the start was rolled back, no QEMU is left.
    StartCancelled,
    /// Nothing was left to do (a finalization that already happened).
    Unchanged,
}

/// A QMP event, as far as the core cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    Shutdown {
        guest: bool,
        reason: String,
    },
    Reset {
        guest: bool,
        reason: String,
    },
    Stop,
    Resume,
    Powerdown,
    Panicked {
        action: String,
    },
    BlockIoError {
        device: String,
        operation: String,
        action: String,
        reason: String,
    },
    /// A device finished unplugging (`DEVICE_DELETED` with its id).
    DeviceDeleted {
        id: String,
    },
}

/// A QMP command QEMU did not answer (in time, or at all), and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unanswered {
    pub command: String,
    pub reason: String,
}

/// QEMU's run state as `query-status` reports it, as far as the core cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Started with `-S` and never resumed.
    Prelaunch,
    Other(String),
}

/// What the core knows of a running QEMU beyond its pid: from the runtime file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    pub spec: InstanceSpec,
    pub started_at_ms: u64,
    pub qemu_version: String,
    /// The guest has ACPI (a stop presses the power button).
    pub acpi: bool,
    /// `reboot_behavior = exit`: a guest reboot ends QEMU and kvmd starts it again.
    pub reboot_exits: bool,
    /// Per NIC, its tap (for the down hooks).
    pub taps: Vec<Option<String>>,
    pub pool_uid: Option<u32>,
    /// The vCPU pinning in force (`cpu_mask` grammar): the start's, or the last live pin's.
    pub cpu_mask: String,
    /// What `info` shows of the hardware.
    pub hardware: crate::api::Hardware,
    /// Devices plugged since the start.
    pub hotplugged: Vec<crate::model::hotplug::HotRecord>,
    /// The balloon size (MiB) the start set before the guest ran (start-up ballooning).
    pub startup_memory_mib: Option<u64>,
}

impl RunInfo {
    /// The balloon as start-up ballooning left it: moving to its size as the guest boots.
    pub fn startup_balloon(&self) -> Option<crate::api::BalloonInfo> {
        self.startup_memory_mib.map(|mib| crate::api::BalloonInfo {
            target_mib: mib,
            actual_mib: self.spec.memory,
            state: "startup".into(),
        })
    }
}

/// Work the actor runs off the actor, reporting back with inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// Launch (or, with `resume`, finish launching) QEMU for generation `gen`.
    Start {
        job: JobId,
        gen: u64,
        spec: Box<InstanceSpec>,
        paused: bool,
        /// A restarted kvmd finishing a start whose QEMU is already up: configure and resume.
        resume: bool,
        /// A resumed start's undo steps so far (from its job file).
        undo: Vec<Undo>,
        /// A migration target: wait for the VM instead of booting it.
        incoming: Option<IncomingPlan>,
        /// Start-up memory (MiB) asked for.
        memory: Option<u64>,
    },
    /// Migrate the QEMU of `gen` to `uri` (the coordinator); with `recover`, only settle a
    /// migration a previous kvmd began (cancel it unless it completed or runs postcopy).
    /// On failure, resume the guest if `resume_on_failure` and postcopy never began.
    Migrate {
        job: JobId,
        gen: u64,
        uri: String,
        live: bool,
        resume_on_failure: bool,
        recover: bool,
    },
    /// Make QEMU of generation `gen` go away: ACPI (when `acpi`) until `deadline_ms`, then
    /// SIGTERM, then SIGKILL. `from` is where to begin (a resumed stop may be past ACPI).
    Stop {
        job: JobId,
        gen: u64,
        acpi: bool,
        from: StopPhase,
        /// End of the ACPI phase (wall clock).
        deadline_ms: u64,
        /// End of the SIGTERM grace, when resuming in that phase (wall clock).
        kill_at_ms: Option<u64>,
    },
    /// One QMP command.
    Qmp {
        job: JobId,
        gen: u64,
        action: QmpAction,
    },
    /// Remove the instance directory.
    Cleanup { job: JobId },
    /// Pin the threads of the QEMU of `gen` by `mask`; reports [`Input::QmpDone`].
    Pin { job: JobId, gen: u64, mask: String },
    /// Plug the device of `intent` (`others`: the devices already plugged); reports
    /// [`Input::HotplugDone`].
    HotplugAdd {
        job: JobId,
        gen: u64,
        intent: crate::model::hotplug::HotRecord,
        others: Vec<crate::model::hotplug::HotRecord>,
    },
    /// After a restart: make `records` agree with what QEMU has; reports
    /// [`Input::HotplugDone`] with [`HotChange::Reconciled`].
    HotplugReconcile {
        job: JobId,
        gen: u64,
        records: Vec<crate::model::hotplug::HotRecord>,
    },
    HotplugDel {
        job: JobId,
        gen: u64,
        record: crate::model::hotplug::HotRecord,
    },
    HotplugMod {
        job: JobId,
        gen: u64,
        id: String,
        link_up: bool,
    },
    /// Ask the balloon for `mib` and follow the guest there; reports [`Input::BalloonDone`].
    Balloon { job: JobId, gen: u64, mib: u64 },
    /// A dropped incoming migration: remove the run's files; with `restore`, keep the
    /// directory with this exit record (the instance's history before the accept), else
    /// remove the directory. Reports [`Input::CleanupDone`].
    DropIncoming {
        job: JobId,
        restore: Option<ExitRecord>,
    },
}

/// Where a stop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopPhase {
    Acpi,
    Sigterm,
    Sigkill,
}

impl StopPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            StopPhase::Acpi => "acpi",
            StopPhase::Sigterm => "sigterm",
            StopPhase::Sigkill => "sigkill",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QmpAction {
    Pause,
    Resume,
    Reset,
    /// A migration target: `cont`, only if QEMU says the incoming migration completed.
    RunIncoming,
}

/// Messages to a running task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskControl {
    /// Stop and undo what was done (start), or stop pressing the button (stop).
    Cancel,
    /// Skip ahead to SIGKILL (a forced stop joined a running one).
    Escalate,
    /// The guest's vCPUs stopped: pressing the power button is pointless, go to SIGTERM.
    GuestPaused,
}

/// What the actor must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Answer a waiting request; with the VM as it was at that moment (not after whatever
    /// the same step went on to begin).
    Answer(Ticket, Outcome, Box<VmInfo>),
    /// What `info` shows changed: publish it to the supervisor.
    Publish,
    /// Tell subscribers.
    Event(EventKind),
    /// A job began, moved on or ended (the supervisor's job table).
    JobUpdated(JobInfo),
    /// Write the job file (long jobs only), so a restarted kvmd finishes or undoes it.
    PersistJob(PersistedJob),
    /// Remove the job file.
    ClearJob,
    Spawn(Task),
    Control(JobId, TaskControl),
    /// Send [`Input::ExitSettled`] after `after`.
    ArmExitSettle {
        gen: u64,
        after: Duration,
    },
    /// Write the exit record (and Ganeti's user-shutdown marker); run the NIC down hooks of
    /// `taps` off the store; then send [`Input::ExitRecorded`].
    RecordExit {
        gen: u64,
        epoch: u64,
        record: ExitRecord,
        taps: Vec<Option<String>>,
        spec: Option<Box<InstanceSpec>>,
    },
    /// Run undo steps of an unfinished job found at recovery, then send [`Input::UndoDone`].
    Undo {
        job: JobId,
        steps: Vec<Undo>,
        spec: Option<Box<InstanceSpec>>,
    },
    /// Give this instance's pool uid back.
    ReleaseUid,
    /// Hold this pool uid for this instance (an adopted QEMU runs as it).
    HoldUid(u32),
    /// The incoming migration was finalized: remove the `incoming` marker.
    IncomingDone,
    /// A live pin took effect: record the mask in the runtime file (a restarted kvmd shows it).
    RecordPin(String),
    /// Record the plugged devices in the runtime file.
    RecordHotplug(Vec<crate::model::hotplug::HotRecord>),
    /// Write (`Some(where)`) or remove the `migrated` marker.
    MigratedMarker(Option<String>),
    /// The adopted QEMU of `gen` could not be watched (no pidfd): look at the run dir again
    /// later and send a fresh [`Input::Recovered`].
    Rewatch {
        gen: u64,
    },
}

/// What the actor reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// What recovery found in the run dir.
    Recovered(RecoveryFacts),
    /// New definition from a config reload (`None`: removed). Applies at the next start;
    /// `autostart` starts a never-started instance now.
    SetSpec {
        spec: Option<Box<InstanceSpec>>,
        autostart: bool,
    },
    Spawned {
        gen: u64,
        pid: u32,
    },
    /// A QMP connection (numbered per generation) is up.
    QmpUp {
        gen: u64,
        conn: u64,
    },
    /// That connection's event stream ended (every event QEMU sent on it was delivered).
    QmpClosed {
        gen: u64,
        conn: u64,
    },
    Guest {
        gen: u64,
        event: GuestEvent,
    },
    /// A QMP command missed its deadline.
    QmpTimedOut {
        gen: u64,
        command: String,
    },
    /// A health check's `query-status`.
    Health {
        gen: u64,
        status: Result<RunState, Unanswered>,
    },
    Exited {
        gen: u64,
        status: ExitStatus,
    },
    ExitSettled {
        gen: u64,
    },
    ExitRecorded {
        gen: u64,
        epoch: u64,
        stderr_tail: Vec<String>,
    },
    /// A task moved to another phase; `undo` replaces the job's undo steps when given.
    Phase {
        job: JobId,
        phase: String,
        deadline_ms: Option<u64>,
        progress: Option<Progress>,
        undo: Option<Vec<Undo>>,
    },
    StartDone {
        job: JobId,
        gen: u64,
        result: Result<RunInfo, ApiError>,
    },
    StopDone {
        job: JobId,
        gen: u64,
        result: Result<StopEnd, ApiError>,
    },
    QmpDone {
        job: JobId,
        gen: u64,
        result: Result<(), ApiError>,
    },
    CleanupDone {
        job: JobId,
        result: Result<(), ApiError>,
    },
    UndoDone {
        job: JobId,
    },
    MigrateDone {
        job: JobId,
        gen: u64,
        end: MigrateEnd,
    },
    BalloonDone {
        job: JobId,
        gen: u64,
        result: Result<(BalloonResult, u64), ApiError>,
    },
    HotplugDone {
        job: JobId,
        gen: u64,
        result: Result<HotChange, ApiError>,
    },
    /// The guest's memory statistics, read by the health check.
    GuestMemory {
        gen: u64,
        memory: crate::api::GuestMemory,
        /// `query-balloon`'s size, MiB.
        balloon_mib: Option<u64>,
    },
}
