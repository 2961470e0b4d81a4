//! The VM actor: one per instance. It owns the instance's QEMU process (spawned or adopted),
//! its QMP connection, its shutdown monitor (QMP events + pidfd exit watch) and its state.
//!
//! Long operations (start, stop, reboot, adoption) run as tasks that report back to the actor
//! with [`Internal`] messages, so the mailbox keeps flowing while an ACPI stop waits for the
//! guest: events, exits and `info` are never queued behind QEMU. Every change of state is
//! published to the supervisor at once ([`VmUpdated`]).
//!
//! Invariant: dropping or stopping this actor never touches QEMU. VMs outlive kvmd.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn, Instrument};

use crate::api::{ApiError, ErrorCode, VmInfo};
use crate::host::process::{self, Identity, QemuProcess};
use crate::host::validate;
use crate::model::exit::{
    classify_exit, ExitFacts, ExitKind, ExitRecord, ExitStatus, ExitVerdict, ShutdownEvent,
};
use crate::model::field_error::FieldError;
use crate::model::hvparams::key;
use crate::model::hvparams::{self, HvParams};
use crate::model::layout::RunPaths;
use crate::model::name::InstanceName;
use crate::model::pinning;
use crate::model::spec::NicMode;
use crate::model::spec::{InstanceSpec, NodeConfig};
use crate::model::state::{StopEnd, VmState};
use crate::qemu::caps::QemuCaps;
use crate::qemu::cmdline::{build_command_line, CommandLine, Host, Launch, NicBackend};
use crate::qmp::{Event, Qmp};
use crate::store::runtime_file::RuntimeFile;
use crate::store::Store;

/// Temporary: the run-dir helpers under one name while this module is being split.
mod runtime {
    pub use crate::host::clock::now_ms;
    pub use crate::store::files::*;
    pub use crate::store::runtime_file::*;
}
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};

/// How long QEMU may take to open its QMP socket after exec.
const QMP_CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// After SIGTERM, how long before SIGKILL.
const SIGTERM_GRACE: Duration = Duration::from_secs(10);
/// How often a running VM's QMP is probed for liveness (`query-status` with a deadline).
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const USER_DOWN_REASON: &str = "the guest powered itself off";
/// Lines of QEMU's stderr kept with a crash or a failed start.
const STDERR_LINES: usize = 20;

/// The per-VM log span. A root span, so that work started from inside another VM span (an
/// autostart from recovery, say) does not nest `vm{..}:vm{..}`.
fn vm_span(name: &InstanceName) -> tracing::Span {
    tracing::info_span!(parent: None, "vm", name = %name)
}

/// A state change, published to the supervisor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct VmUpdated(pub VmInfo);

/// Everything the supervisor may ask of a VM actor.
#[derive(Message, Debug)]
#[rtype(result = "Result<VmOutcome, ApiError>")]
pub enum VmRequest {
    /// Allowed when no QEMU runs and no operation is in progress.
    Start { paused: bool },
    /// Allowed whenever a QEMU runs and no other operation is in progress; a stopped VM
    /// answers `AlreadyStopped`.
    Stop { timeout: Duration, force: bool },
    /// Soft: stop (waiting up to `timeout`) then start with the current definition. Hard: QMP
    /// `system_reset`. Allowed when running or paused and the definition can start again.
    Reboot { hard: bool, timeout: Duration },
    /// Freeze the guest's vCPUs (QMP `stop`). Allowed when running.
    Pause,
    /// Let a paused guest run (QMP `cont`). Allowed when paused.
    Resume,
    /// The instance left the config and has nothing on disk: stop the actor.
    Retire,
    /// Remove runtime files. Allowed only when no QEMU runs.
    Cleanup,
    /// New definition from a config reload (`None`: removed from the config). Applies at next
    /// start; `autostart` starts a never-started VM now.
    SetSpec {
        spec: Option<Box<InstanceSpec>>,
        autostart: bool,
    },
}

/// What a finished request produced; `info` is the state right after it.
#[derive(Debug)]
pub enum VmOutcome {
    Done(VmInfo),
    Stopped {
        ended: StopEnd,
        elapsed: Duration,
        info: VmInfo,
    },
}

/// Messages the actor's own tasks send it.
#[derive(Message)]
#[rtype(result = "()")]
enum Internal {
    Spawned {
        gen: u64,
        pid: u32,
        process: Arc<QemuProcess>,
        exit: watch::Receiver<Option<ExitStatus>>,
    },
    QmpUp {
        gen: u64,
        qmp: Qmp,
    },
    Running {
        gen: u64,
        paused: bool,
        runtime: Box<RuntimeFile>,
    },
    StartFailed {
        gen: u64,
    },
    /// An operation's task finished (successfully or not): clear `op` if it is still this one
    /// (`seq` tells apart two operations of the same name).
    OpDone {
        seq: u64,
    },
    /// The QMP event stream of this generation ended.
    QmpClosed {
        gen: u64,
    },
    /// Classify a recorded exit now, even if QMP has not closed (its last events are late).
    FinishExit {
        gen: u64,
    },
    /// QMP `stop`/`cont` succeeded (applied now; the STOP/RESUME event may come later).
    SetPaused {
        gen: u64,
        paused: bool,
    },
    Event {
        gen: u64,
        event: Event,
    },
    Exited {
        gen: u64,
        status: ExitStatus,
    },
    ExitRecorded {
        gen: u64,
        record: ExitRecord,
        restart: bool,
    },
    Health {
        gen: u64,
        status: Result<String, String>,
    },
}

/// The result of looking at the run dir at actor start.
enum Recovery {
    Adopted {
        last_exit: Option<ExitRecord>,
        gen: u64,
        process: Arc<QemuProcess>,
        exit: watch::Receiver<Option<ExitStatus>>,
        qmp: Option<Qmp>,
        /// `None` when the runtime file was damaged (adopted by pidfile).
        runtime: Option<Box<RuntimeFile>>,
        status: Option<String>,
        /// kvmd was stopping it when it went down: finish the stop.
        stopping: bool,
    },
    Down {
        record: Option<ExitRecord>,
        dir_exists: bool,
        /// The definition the last QEMU ran with (shown when the instance left the config).
        last_spec: Option<InstanceSpec>,
    },
}

/// Asks the actor to enter `starting` (used by reboot and autostart tasks).
#[derive(Message)]
#[rtype(result = "Result<StartPlan, ApiError>")]
struct PrepareStart {
    paused: bool,
    op: &'static str,
}

#[derive(Message)]
#[rtype(result = "VmInfo")]
struct GetInfo;

/// The QEMU of the current generation.
struct Run {
    gen: u64,
    pid: u32,
    process: Arc<QemuProcess>,
    exit: watch::Receiver<Option<ExitStatus>>,
    qmp: Option<Qmp>,
    runtime: Option<RuntimeFile>,
    /// QEMU exited; classified once the start is over and QMP delivered its last events.
    exited: Option<ExitStatus>,
    /// The QMP event stream ended (every event QEMU sent has been handled).
    qmp_closed: bool,
}

/// Inputs of a start, computed by the actor, used by a task.
pub struct StartPlan {
    gen: u64,
    spec: InstanceSpec,
    hv: HvParams,
    node: Arc<NodeConfig>,
    paths: RunPaths,
    store: Store,
    paused: bool,
    addr: Addr<VmActor>,
}

pub struct VmActor {
    name: InstanceName,
    paths: RunPaths,
    node: Arc<NodeConfig>,
    /// Current definition from the config; `None` for an adopted VM no longer in the config.
    spec: Option<InstanceSpec>,
    store: Store,
    updates: Recipient<VmUpdated>,
    state: VmState,
    unresponsive: bool,
    op: Option<&'static str>,
    /// Incremented per QEMU launch/adoption; messages from older generations are ignored.
    gen: u64,
    run: Option<Run>,
    last_exit: Option<ExitRecord>,
    /// Last SHUTDOWN event of the current QEMU.
    shutdown_event: Option<ShutdownEvent>,
    /// kvmd is stopping this QEMU: its exit is an admin stop.
    stop_requested: bool,
    exit_waiters: Vec<oneshot::Sender<ExitRecord>>,
    /// The run dir has state for this instance (started since boot, not cleaned up).
    dir_exists: bool,
    autostart_on_recovery: bool,
    health_in_flight: bool,
    recovered: bool,
    /// What a start changed, restored if it fails.
    before_start: Option<Before>,
    /// Incremented by every operation, so a late "done" cannot end a newer one.
    op_seq: u64,
    /// The definition the last QEMU ran with, for display once the instance left the config.
    last_spec: Option<InstanceSpec>,
}

/// The state a failed start goes back to.
struct Before {
    state: VmState,
    last_exit: Option<ExitRecord>,
    dir_exists: bool,
}

impl VmActor {
    pub fn new(
        name: InstanceName,
        spec: Option<InstanceSpec>,
        node: Arc<NodeConfig>,
        store: Store,
        updates: Recipient<VmUpdated>,
        autostart: bool,
    ) -> Self {
        Self {
            paths: RunPaths::new(&node.run_dir, &name),
            name,
            node,
            spec,
            store,
            updates,
            state: VmState::Stopped,
            unresponsive: false,
            op: None,
            gen: 0,
            run: None,
            last_exit: None,
            shutdown_event: None,
            stop_requested: false,
            exit_waiters: Vec::new(),
            dir_exists: false,
            autostart_on_recovery: autostart,
            health_in_flight: false,
            recovered: false,
            before_start: None,
            last_spec: None,
            op_seq: 0,
        }
    }

    fn info(&self) -> VmInfo {
        let rt = self.run.as_ref().and_then(|r| r.runtime.as_ref());
        let shown = rt
            .map(|r| &r.spec)
            .or(self.spec.as_ref())
            .or(self.last_spec.as_ref());
        let (memory, vcpus) = shown.map_or((0, 0), |s| (s.memory, s.vcpus));
        let state =
            if self.unresponsive && self.state.has_process() && self.state != VmState::Stopping {
                VmState::Unresponsive
            } else {
                self.state
            };
        VmInfo {
            name: self.name.clone(),
            state,
            pid: self.run.as_ref().map(|r| r.pid),
            memory_mib: memory,
            vcpus,
            cpu_time_ms: None,
            uptime_s: None,
            started_at_ms: rt.map(|r| r.started_at_ms),
            qemu_version: rt.map(|r| r.qemu_version.clone()),
            autostart: self.spec.as_ref().is_some_and(|s| s.autostart),
            in_config: self.spec.is_some(),
            pending_changes: match (rt, &self.spec) {
                (Some(rt), Some(s)) => rt.spec != *s,
                _ => false,
            },
            job: self.op.map(|op| crate::api::JobSummary {
                id: crate::model::job::JobId(self.op_seq),
                kind: crate::model::job::Operation::parse(op)
                    .unwrap_or(crate::model::job::Operation::Start),
                phase: op.to_string(),
            }),
            last_exit: self.last_exit.clone(),
        }
    }

    fn publish(&self) {
        self.updates.do_send(VmUpdated(self.info()));
    }

    fn busy(&self) -> ApiError {
        ApiError::new(
            ErrorCode::Busy,
            format!(
                "{} is busy: {} in progress",
                self.name,
                self.op.unwrap_or("recovery")
            ),
        )
    }

    /// Enter `starting` and return what the start task needs.
    fn prepare_start(
        &mut self,
        paused: bool,
        op: &'static str,
        ctx: &mut Context<Self>,
    ) -> Result<StartPlan, ApiError> {
        if let Some(run) = &self.run {
            let what = if self.state.has_process() {
                "is already running"
            } else {
                "is still shutting down"
            };
            return Err(ApiError::new(
                ErrorCode::AlreadyRunning,
                format!("{} {what} (pid {})", self.name, run.pid),
            ));
        }
        let (spec, hv) = self.start_inputs()?;
        self.before_start = Some(Before {
            state: self.state,
            last_exit: self.last_exit.clone(),
            dir_exists: self.dir_exists,
        });
        self.gen += 1;
        self.begin_op(op);
        self.state = VmState::Starting;
        self.unresponsive = false;
        self.shutdown_event = None;
        self.stop_requested = false;
        self.dir_exists = true;
        self.publish();
        Ok(StartPlan {
            gen: self.gen,
            spec,
            hv,
            node: self.node.clone(),
            paths: self.paths.clone(),
            store: self.store.clone(),
            paused,
            addr: ctx.address(),
        })
    }

    /// The definition and hvparams a start would use, checked; no state changes.
    fn start_inputs(&self) -> Result<(InstanceSpec, HvParams), ApiError> {
        let Some(spec) = self.spec.clone() else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("{} is not defined in the config any more", self.name),
            ));
        };
        let hv = spec.effective_hvparams(&self.node);
        let errs = crate::qemu::checks::syntax(&spec, &hv, validate::host_cpus());
        if !errs.is_empty() {
            return Err(ApiError::invalid(errs));
        }
        Ok((spec, hv))
    }

    /// Mark an operation as in progress; returns its sequence number.
    fn begin_op(&mut self, op: &'static str) -> u64 {
        self.op = Some(op);
        self.op_seq += 1;
        self.op_seq
    }

    fn exit_waiter(&mut self) -> oneshot::Receiver<ExitRecord> {
        let (tx, rx) = oneshot::channel();
        self.exit_waiters.push(tx);
        rx
    }

    fn current(&self, gen: u64) -> bool {
        self.run.as_ref().is_some_and(|r| r.gen == gen)
    }

    fn spawn_health_check(&mut self, ctx: &mut Context<Self>) {
        if self.health_in_flight || !matches!(self.state, VmState::Running | VmState::Paused) {
            return;
        }
        let Some(run) = &self.run else { return };
        let (gen, addr, timeout) = (run.gen, ctx.address(), self.node.qmp_timeout);
        let qmp = run.qmp.clone().filter(|q| !q.is_closed());
        let exit = run.exit.clone();
        let qmp_path = self.paths.qmp();
        self.health_in_flight = true;
        actix::spawn(async move {
            let status = match qmp {
                Some(q) => query_status(&q, timeout).await,
                None => match connect_qmp(
                    &qmp_path,
                    gen,
                    &addr,
                    timeout,
                    exit,
                    Duration::from_millis(500),
                )
                .await
                {
                    Ok(q) => {
                        let s = query_status(&q, timeout).await;
                        addr.do_send(Internal::QmpUp { gen, qmp: q });
                        s
                    }
                    Err(e) => Err(e.to_string()),
                },
            };
            addr.do_send(Internal::Health { gen, status });
        });
    }
}

async fn query_status(qmp: &Qmp, timeout: Duration) -> Result<String, String> {
    match qmp.execute("query-status", None, timeout).await {
        Ok(v) => Ok(v
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Connect QMP and forward its events to the actor.
async fn connect_qmp(
    path: &Path,
    gen: u64,
    addr: &Addr<VmActor>,
    timeout: Duration,
    exit: watch::Receiver<Option<ExitStatus>>,
    deadline: Duration,
) -> Result<Qmp, crate::qmp::QmpError> {
    let (qmp, mut events) = Qmp::connect(path, Instant::now() + deadline, timeout, || {
        exit.borrow().is_none()
    })
    .await?;
    let addr = addr.clone();
    actix::spawn(async move {
        while let Some(event) = events.recv().await {
            addr.do_send(Internal::Event { gen, event });
        }
        // After the last event, in the same order: an exit is classified only after this.
        addr.do_send(Internal::QmpClosed { gen });
    });
    Ok(qmp)
}

/// Watch a QEMU's pidfd and tell the actor (and anyone holding the receiver) when it exits.
fn watch_exit(
    process: &QemuProcess,
    gen: u64,
    addr: Addr<VmActor>,
) -> std::io::Result<watch::Receiver<Option<ExitStatus>>> {
    let pidfd = process.try_clone_pidfd()?;
    let (pid, own) = (process.pid, process.own_child);
    let (tx, rx) = watch::channel(None);
    actix::spawn(async move {
        let status = match process::wait_exit(pidfd, pid, own).await {
            Ok(s) => s,
            Err(e) => {
                warn!(pid, error = %e, "waiting for QEMU exit failed");
                ExitStatus::default()
            }
        };
        let _ = tx.send(Some(status));
        addr.do_send(Internal::Exited { gen, status });
    });
    Ok(rx)
}

/// Wait up to `limit` for the exit to be recorded.
async fn waited(done: &mut oneshot::Receiver<ExitRecord>, limit: Duration) -> bool {
    matches!(tokio::time::timeout(limit, done).await, Ok(Ok(_)))
}

async fn wait_exited(exit: &mut watch::Receiver<Option<ExitStatus>>, limit: Duration) -> bool {
    tokio::time::timeout(limit, exit.wait_for(|s| s.is_some()))
        .await
        .is_ok()
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// What the blocking launch step produced.
struct Launched {
    pid: u32,
    start_ticks: u64,
    command: CommandLine,
    taps: Vec<Option<String>>,
}

/// Field errors of the command-line builder, with hvparams under `hvparams.`.
fn launch_errors(errs: Vec<FieldError>) -> ApiError {
    ApiError::invalid(
        errs.into_iter()
            .map(|e| {
                if hvparams::def(&e.field).is_some() {
                    e.under("hvparams")
                } else {
                    e
                }
            })
            .collect(),
    )
}

/// Open the taps, set them up, build the argv and spawn QEMU (blocking).
fn launch(
    spec: &InstanceSpec,
    hv: &HvParams,
    caps: &QemuCaps,
    paths: &RunPaths,
    accel: crate::model::spec::Accel,
    mut host: Host,
    node: &NodeConfig,
) -> Result<Launched, ApiError> {
    let mut taps = Vec::new();
    let mut names = Vec::new();
    let fail = |msg: String| ApiError::new(ErrorCode::StartFailed, msg);
    let queues = hv.int(key::VIRTIO_NET_QUEUES).max(1) as usize;
    let vhost = hv.bool(key::VHOST_NET) && crate::host::net::vhost_available();
    for (i, nic) in spec.nics.iter().enumerate() {
        if nic.mode == NicMode::User {
            host.nics.push(NicBackend::User);
            names.push(None);
            continue;
        }
        let queues = if hv.str(key::NIC_TYPE) == "paravirtual" && caps.options.tap_fds {
            queues
        } else {
            1
        };
        let tap = crate::host::net::create_tap(queues, hv.bool(key::VNET_HDR), vhost)
            .map_err(|e| fail(format!("nic[{i}]: {}", chain(&e))))?;
        let ctx = crate::host::net::NicContext {
            instance: &spec.name,
            index: i,
            nic,
            tap: &tap.name,
            script: node.nic_script.as_deref(),
            deadline: node.hook_timeout,
        };
        if let Err(e) = crate::host::net::nic_up(&ctx) {
            return Err(fail(format!("nic[{i}] ({}): {}", tap.name, chain(&e))));
        }
        host.nics.push(NicBackend::Tap {
            fds: tap.fds.iter().map(|f| f.as_raw_fd()).collect(),
            vhost_fds: tap.vhost_fds.iter().map(|f| f.as_raw_fd()).collect(),
        });
        names.push(Some(tap.name.clone()));
        taps.push(tap);
    }
    let command = build_command_line(&Launch {
        spec,
        hv,
        caps,
        paths,
        accel,
        host: &host,
    })
    .map_err(launch_errors)?;
    let keep: Vec<i32> = taps
        .iter()
        .flat_map(|t| t.fds.iter().chain(&t.vhost_fds))
        .map(|f| f.as_raw_fd())
        .collect();
    let pid = process::spawn_detached(&command.argv, &paths.qemu_log(), &keep)
        .map_err(|e| fail(format!("Cannot run {}: {e}", command.argv[0])))?;
    // QEMU holds the taps now; our copies close here, so the taps go when QEMU does.
    drop(taps);
    let start_ticks = process::read_stat(pid).map(|s| s.start_ticks).unwrap_or(0);
    Ok(Launched {
        pid,
        start_ticks,
        command,
        taps: names,
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

/// The start task: check, launch QEMU stopped (-S), connect QMP, persist the runtime file,
/// pin vCPUs, `cont`.
async fn start_task(plan: StartPlan) -> Result<(), ApiError> {
    let StartPlan {
        gen,
        spec,
        hv,
        node,
        paths,
        store,
        paused,
        addr,
    } = plan;
    let t0 = Instant::now();
    let accel = spec.accel(&hv, &node);
    let (s2, h2, n2, p2) = (spec.clone(), hv.clone(), node.clone(), paths.clone());
    let checked = tokio::task::spawn_blocking(
        move || -> Result<(Arc<QemuCaps>, Host, Option<u32>), ApiError> {
            let mut errs = validate::files(&s2, &h2);
            let kvm_path = Path::new(h2.str(key::KVM_PATH));
            let caps = match crate::host::probe::probe(kvm_path, n2.probe_timeout) {
                Ok(c) => c,
                Err(e) if errs.is_empty() => {
                    return Err(ApiError::new(
                        ErrorCode::StartFailed,
                        format!("Cannot probe QEMU: {}", chain(&e)),
                    ))
                }
                Err(_) => return Err(ApiError::invalid(errs)),
            };
            errs.extend(crate::qemu::checks::qemu(&s2, &h2, &caps));
            if !errs.is_empty() {
                return Err(ApiError::invalid(errs));
            }
            let resolve = |k, family: i64| {
                let v = h2.str(k);
                (!v.is_empty() && !v.starts_with('/') && v.parse::<std::net::IpAddr>().is_err())
                    .then(|| validate::interface_address(v, family))
                    .flatten()
            };
            let host = Host {
                block_devices: s2
                    .disks
                    .iter()
                    .map(|d| {
                        std::fs::metadata(&d.path).is_ok_and(|m| m.file_type().is_block_device())
                    })
                    .collect(),
                nics: Vec::new(),
                vnc_address: resolve(key::VNC_BIND_ADDRESS, 4),
                spice_address: resolve(key::SPICE_BIND, h2.int(key::SPICE_IP_VERSION)),
                chroot_dir: h2
                    .bool(key::USE_CHROOT)
                    .then(|| p2.chroot().display().to_string()),
                pool_user: None,
                spice_cert_dir: Some(n2.spice_cert_dir.display().to_string()),
            };
            let mut host = host;
            let mut pool_uid = None;
            if h2.str(key::SECURITY_MODEL) == "pool" {
                let (uid, user) =
                    crate::host::uidpool::take(&n2.uid_pool, &s2.name).map_err(|why| {
                        ApiError::invalid(vec![FieldError::new(
                            "hvparams.security_model",
                            "\"pool\"",
                            why,
                        )])
                    })?;
                host.pool_user = Some(user);
                pool_uid = Some(uid);
            }
            Ok((caps, host, pool_uid))
        },
    )
    .await
    .map_err(|e| internal("start preparation panicked", e))
    .and_then(|r| r);
    let (caps, host, pool_uid) = match checked {
        Ok(v) => v,
        Err(e) => {
            addr.do_send(Internal::StartFailed { gen });
            return Err(e);
        }
    };
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "checked");
    let (p, chroot) = (paths.clone(), hv.bool(key::USE_CHROOT));
    let fresh = store
        .run(move || {
            runtime::fresh_dir(&p)?;
            if chroot {
                std::fs::DirBuilder::new().mode(0o700).create(p.chroot())?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    if let Err(e) = fresh {
        return fail_start(
            gen,
            &addr,
            &store,
            &paths,
            None,
            format!("Cannot prepare the run dir: {e}"),
        )
        .await;
    }
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "run dir prepared");
    let (s3, h3, p3, n3, c3) = (
        spec.clone(),
        hv.clone(),
        paths.clone(),
        node.clone(),
        caps.clone(),
    );
    let launched =
        tokio::task::spawn_blocking(move || launch(&s3, &h3, &c3, &p3, accel, host, &n3))
            .await
            .map_err(|e| internal("launch panicked", e))
            .and_then(|r| r);
    let Launched {
        pid,
        start_ticks,
        command,
        taps,
    } = match launched {
        Ok(l) => l,
        Err(e) => {
            let stderr = fail_start(gen, &addr, &store, &paths, None, e.message.clone())
                .await
                .err();
            return Err(if e.code == ErrorCode::InvalidParameter {
                e
            } else {
                stderr.unwrap_or(e)
            });
        }
    };
    let argv = command.argv.clone();
    let process = match QemuProcess::open(pid, true) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            kill_and_reap(pid).await;
            return fail_start(
                gen,
                &addr,
                &store,
                &paths,
                None,
                format!("Cannot open pidfd of {pid}: {e}"),
            )
            .await;
        }
    };
    let exit = match watch_exit(&process, gen, addr.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            kill_and_reap(pid).await;
            return fail_start(
                gen,
                &addr,
                &store,
                &paths,
                None,
                format!("Cannot watch pid {pid}: {e}"),
            )
            .await;
        }
    };
    let _ = addr
        .send(Internal::Spawned {
            gen,
            pid,
            process: process.clone(),
            exit: exit.clone(),
        })
        .await;
    info!(pid, us = t0.elapsed().as_micros() as u64, "QEMU spawned");
    let runtime = RuntimeFile {
        version: 1,
        spec,
        hvparams: hv,
        argv,
        pid,
        start_ticks,
        started_at_ms: runtime::now_ms(),
        qemu_version: caps.version_text.clone(),
        paused_at_start: paused,
        machine: command.machine,
        slots: command.slots,
        taps,
        pool_uid,
    };
    let brought_up = bring_up(gen, &addr, &store, &paths, &node, &runtime, &exit, t0).await;
    if let Err(message) = brought_up {
        return fail_start(gen, &addr, &store, &paths, Some((&process, &exit)), message).await;
    }
    // The new QEMU is up: the instance is no longer "user down" (Ganeti clears the marker at
    // start too). Done before replying, so the reply and the disk agree.
    let marker = paths.shutdown_marker();
    let _ = store.run(move || runtime::remove_file(&marker)).await;
    let _ = addr
        .send(Internal::Running {
            gen,
            paused,
            runtime: Box::new(runtime),
        })
        .await;
    Ok(())
}

/// After spawn: connect QMP while the runtime file is written (QEMU needs tens of ms to open
/// its socket, so the fsync'd write costs nothing on the start path), pin vCPUs, then `cont`.
async fn bring_up(
    gen: u64,
    addr: &Addr<VmActor>,
    store: &Store,
    paths: &RunPaths,
    node: &NodeConfig,
    runtime: &RuntimeFile,
    exit: &watch::Receiver<Option<ExitStatus>>,
    t0: Instant,
) -> Result<(), String> {
    let (rt, p) = (runtime.clone(), paths.runtime());
    let written = store.run(move || runtime::write_json(&p, &rt));
    let qmp_path = paths.qmp();
    let connected = connect_qmp(
        &qmp_path,
        gen,
        addr,
        node.qmp_timeout,
        exit.clone(),
        QMP_CONNECT_DEADLINE,
    );
    let (written, connected) = tokio::join!(written, connected);
    tracing::debug!(
        us = t0.elapsed().as_micros() as u64,
        "QMP connected, runtime file written"
    );
    let qmp = connected.map_err(|e| format!("QEMU did not come up: {e}"))?;
    let _ = addr
        .send(Internal::QmpUp {
            gen,
            qmp: qmp.clone(),
        })
        .await;
    written.map_err(|e| format!("Cannot write the runtime file: {e}"))?;
    pin_vcpus(
        &qmp,
        runtime.pid,
        runtime.hvparams.str(key::CPU_MASK),
        node.qmp_timeout,
    )
    .await
    .map_err(|e| format!("Cannot pin vCPUs: {e}"))?;
    set_passwords(&qmp, &runtime.hvparams, node.qmp_timeout).await?;
    if !runtime.paused_at_start {
        qmp.execute("cont", None, node.qmp_timeout)
            .await
            .map_err(|e| format!("Cannot resume the guest: {e}"))?;
    }
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "guest resumed");
    Ok(())
}

fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Set the VNC/SPICE passwords from their files (first line) before the guest runs.
async fn set_passwords(qmp: &Qmp, hv: &HvParams, timeout: Duration) -> Result<(), String> {
    for (file_key, bind_key, protocol) in [
        (key::VNC_PASSWORD_FILE, key::VNC_BIND_ADDRESS, "vnc"),
        (key::SPICE_PASSWORD_FILE, key::SPICE_BIND, "spice"),
    ] {
        let path = hv.str(file_key).to_string();
        if path.is_empty() || hv.str(bind_key).is_empty() {
            continue;
        }
        let p = path.clone();
        let password = tokio::task::spawn_blocking(move || std::fs::read_to_string(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("Cannot read {} {path}: {e}", file_key.name()))?;
        let password = password.lines().next().unwrap_or("").to_string();
        qmp.execute(
            "set_password",
            Some(serde_json::json!({"protocol": protocol, "password": password})),
            timeout,
        )
        .await
        .map_err(|e| format!("Cannot set the {protocol} password: {e}"))?;
    }
    Ok(())
}

/// Apply `cpu_mask` while the guest is still stopped (-S): threads exist but run nothing yet.
async fn pin_vcpus(qmp: &Qmp, pid: u32, mask: &str, timeout: Duration) -> Result<(), String> {
    let mask = hvparams::parse_cpu_mask(mask)?;
    if matches!(mask.as_slice(), [] | [None]) {
        return Ok(());
    }
    let cpus = qmp
        .execute("query-cpus-fast", None, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let threads: Vec<(u32, u32)> = cpus
        .as_array()
        .ok_or("query-cpus-fast did not return a list")?
        .iter()
        .filter_map(|c| {
            Some((
                c.get("cpu-index")?.as_u64()? as u32,
                c.get("thread-id")?.as_u64()? as u32,
            ))
        })
        .collect();
    let pins = pinning::plan(&mask, pid, &threads);
    let host = host_cpus();
    tokio::task::spawn_blocking(move || {
        for pin in pins {
            let mut set = nix::sched::CpuSet::new();
            for cpu in pin.cpus.unwrap_or_else(|| (0..host).collect()) {
                set.set(cpu as usize).map_err(|e| e.to_string())?;
            }
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pin.tid as i32), &set)
                .map_err(|e| format!("thread {}: {e}", pin.tid))?;
            info!(tid = pin.tid, "pinned");
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Kill and reap a QEMU we just spawned when we cannot watch it: it is our unreaped child, so
/// its pid cannot have been reused yet.
async fn kill_and_reap(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None)).await;
}

/// Run the NIC down hooks of a QEMU that exited (its taps are already gone).
fn nics_down(rt: &RuntimeFile, script: Option<&Path>, deadline: Duration) {
    for (i, (nic, tap)) in rt.spec.nics.iter().zip(&rt.taps).enumerate() {
        if let Some(tap) = tap {
            let ctx = crate::host::net::NicContext {
                instance: &rt.spec.name,
                index: i,
                nic,
                tap,
                script,
                deadline,
            };
            if let Err(e) = crate::host::net::nic_down(&ctx) {
                warn!(nic = i, tap = %tap, error = %chain(&e), "NIC down hook failed");
            }
        }
    }
}

/// Undo a start: kill QEMU, collect its stderr, remove everything the start created.
async fn fail_start(
    gen: u64,
    addr: &Addr<VmActor>,
    store: &Store,
    paths: &RunPaths,
    process: Option<(&Arc<QemuProcess>, &watch::Receiver<Option<ExitStatus>>)>,
    message: String,
) -> Result<(), ApiError> {
    if let Some((p, exit)) = process {
        let _ = p.signal(Signal::SIGKILL);
        wait_exited(&mut exit.clone(), Duration::from_secs(10)).await;
    }
    let p = paths.clone();
    let stderr = store
        .run(move || {
            let tail = process::tail_lines(&p.qemu_log(), STDERR_LINES);
            let _ = runtime::drop_run_files(&p);
            tail
        })
        .await;
    warn!(%message, stderr = ?stderr, "start failed; cleaned up");
    addr.do_send(Internal::StartFailed { gen });
    let mut msg = message;
    if let Some(last) = stderr.last() {
        msg = format!("{msg}; QEMU said: {last}");
    }
    Err(ApiError::new(ErrorCode::StartFailed, msg).with_details(stderr))
}

struct StopPlan {
    process: Arc<QemuProcess>,
    qmp: Option<Qmp>,
    acpi: bool,
    force: bool,
    timeout: Duration,
    resend: Duration,
    qmp_timeout: Duration,
    done: oneshot::Receiver<ExitRecord>,
    /// Where the `stopping` marker goes.
    store: Store,
    paths: RunPaths,
}

/// The stop task: ACPI power button (resent), then SIGTERM, then SIGKILL.
async fn stop_task(mut plan: StopPlan) -> Result<StopEnd, ApiError> {
    let started = Instant::now();
    // Remember the stop on disk first: a kvmd restarted meanwhile finishes it, and does not
    // take the guest's power-off for a user shutdown.
    let marker = plan.paths.stopping_marker();
    if let Err(e) = plan
        .store
        .run(move || runtime::write_atomic(&marker, b""))
        .await
    {
        warn!(error = %e, "cannot write the stopping marker");
    }
    if plan.force {
        let _ = plan.process.signal(Signal::SIGKILL);
        return if waited(&mut plan.done, Duration::from_secs(30)).await {
            Ok(StopEnd::Sigkill)
        } else {
            Err(ApiError::new(
                ErrorCode::Internal,
                "QEMU did not exit after SIGKILL",
            ))
        };
    }
    match (&plan.qmp, plan.acpi) {
        (Some(qmp), true) => {
            let deadline = started + plan.timeout;
            loop {
                if let Err(e) = qmp
                    .execute("system_powerdown", None, plan.qmp_timeout)
                    .await
                {
                    warn!(error = %e, "system_powerdown failed");
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if waited(&mut plan.done, plan.resend.min(deadline - now)).await {
                    return Ok(StopEnd::Acpi);
                }
                if Instant::now() >= deadline {
                    break;
                }
                info!("guest still running; pressing the power button again");
            }
        }
        _ => {
            let _ = plan.process.signal(Signal::SIGTERM);
            if waited(&mut plan.done, plan.timeout.max(Duration::from_millis(1))).await {
                return Ok(StopEnd::Sigterm);
            }
        }
    }
    warn!("stop timeout reached; sending SIGTERM");
    let _ = plan.process.signal(Signal::SIGTERM);
    if waited(&mut plan.done, SIGTERM_GRACE).await {
        return Ok(StopEnd::Sigterm);
    }
    warn!("QEMU ignored SIGTERM; sending SIGKILL");
    let _ = plan.process.signal(Signal::SIGKILL);
    if waited(&mut plan.done, Duration::from_secs(30)).await {
        Ok(StopEnd::Sigkill)
    } else {
        Err(ApiError::new(
            ErrorCode::Internal,
            "QEMU did not exit after SIGKILL",
        ))
    }
}

/// Look at the run dir and adopt a still-running QEMU.
async fn recover_task(
    name: InstanceName,
    paths: RunPaths,
    store: Store,
    addr: Addr<VmActor>,
    qmp_timeout: Duration,
) -> Recovery {
    let p = paths.clone();
    let on_disk = store.run(move || runtime::read_on_disk(&p)).await;
    // Which QEMU to look for: the runtime file's (pid + start time), or, if that file is
    // damaged, whatever QEMU the pidfile names (identified by our -pidfile argument alone).
    let runtime_missing = matches!(on_disk.runtime, Ok(None));
    let (rt, pid, ticks) = match on_disk.runtime {
        Ok(Some(rt)) => {
            let (pid, ticks) = (rt.pid, Some(rt.start_ticks));
            (Some(rt), Some(pid), ticks)
        }
        Ok(None) => (None, on_disk.pidfile_pid, None),
        Err(e) => {
            warn!(error = %e, "damaged runtime file; looking for the QEMU by its pidfile");
            (None, on_disk.pidfile_pid, None)
        }
    };
    let pidfile = paths.pidfile();
    let identity = match pid {
        Some(pid) => tokio::task::spawn_blocking(move || {
            let ticks = ticks
                .or_else(|| process::read_stat(pid).ok().map(|s| s.start_ticks))
                .unwrap_or(0);
            process::identify(pid, ticks, &pidfile)
        })
        .await
        .unwrap_or(Identity::Gone),
        None => Identity::Gone,
    };
    if identity == Identity::Ours && runtime_missing {
        // A start that never wrote its runtime file (kvmd died mid-start): its QEMU was still
        // paused with -S and never ran the guest. Kill it and drop its files.
        let pid = pid.expect("identified");
        warn!(pid, "killing the QEMU of an unfinished start");
        if let Ok(proc) = QemuProcess::open(pid, false) {
            let _ = proc.signal(Signal::SIGKILL);
        }
        let p = paths.clone();
        store.run(move || runtime::drop_run_files(&p)).await.ok();
        let dir_exists = on_disk.exit.is_some();
        return Recovery::Down {
            record: on_disk.exit,
            dir_exists,
            last_spec: None,
        };
    }
    let opened = match (&identity, pid) {
        (Identity::Ours, Some(pid)) => QemuProcess::open(pid, false).ok(),
        _ => None,
    };
    if let Some(process) = opened {
        let gen = 1;
        let process = Arc::new(process);
        if let Ok(exit) = watch_exit(&process, gen, addr.clone()) {
            let qmp = connect_qmp(
                &paths.qmp(),
                gen,
                &addr,
                qmp_timeout,
                exit.clone(),
                Duration::from_secs(2),
            )
            .await;
            let (qmp, status) = match qmp {
                Ok(q) => {
                    let s = query_status(&q, qmp_timeout).await.ok();
                    (Some(q), s)
                }
                Err(e) => {
                    warn!(error = %e, "adopted QEMU does not answer on QMP");
                    (None, None)
                }
            };
            info!(pid = process.pid, status = ?status, stopping = on_disk.stopping, "re-adopted running QEMU");
            // exit.json, if any, is about the QEMU before this one.
            return Recovery::Adopted {
                last_exit: on_disk.exit,
                gen,
                process,
                exit,
                qmp,
                runtime: rt.map(Box::new),
                status,
                stopping: on_disk.stopping,
            };
        }
    }
    let Some(rt) = rt else {
        let dir_exists = on_disk.exists && on_disk.exit.is_some();
        return Recovery::Down {
            record: on_disk.exit,
            dir_exists,
            last_spec: None,
        };
    };
    let last_spec = Some(rt.spec.clone());
    if let Some(rec) = on_disk.exit.filter(|r| r.pid == rt.pid) {
        return Recovery::Down {
            record: Some(rec),
            dir_exists: true,
            last_spec,
        };
    }
    let (pid, stopping) = (rt.pid, on_disk.stopping);
    let (kind, reason) = match (identity, stopping) {
        (_, true) => (
            ExitKind::Stopped,
            "kvmd was stopping it and it exited while kvmd was not running".to_string(),
        ),
        (Identity::Other(why), _) => (
            ExitKind::Crashed,
            format!("QEMU exited while kvmd was not running; cause unknown ({why})"),
        ),
        _ => (
            ExitKind::Crashed,
            "QEMU exited while kvmd was not running; cause unknown".to_string(),
        ),
    };
    warn!(%name, pid, %reason, "recorded the exit");
    let p = paths.clone();
    let record = store
        .run(move || {
            let rec = ExitRecord {
                kind,
                reason,
                exit_code: None,
                signal: None,
                stderr_tail: if kind == ExitKind::Crashed {
                    process::tail_lines(&p.qemu_log(), STDERR_LINES)
                } else {
                    Vec::new()
                },
                pid,
                at_ms: runtime::now_ms(),
            };
            let _ = runtime::record_exit(&p, &rec);
            rec
        })
        .await;
    Recovery::Down {
        record: Some(record),
        dir_exists: true,
        last_spec,
    }
}

impl Actor for VmActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let span = vm_span(&self.name);
        let (name, paths, store, addr, t) = (
            self.name.clone(),
            self.paths.clone(),
            self.store.clone(),
            ctx.address(),
            self.node.qmp_timeout,
        );
        self.begin_op("recovery");
        // Requests wait in the mailbox until recovery is done (a fast file read, plus a QMP
        // handshake bounded by its deadline for an adopted QEMU).
        ctx.wait(
            recover_task(name, paths, store, addr, t)
                .instrument(span)
                .into_actor(self)
                .map(|r, act, ctx| act.on_recovered(r, ctx)),
        );
        ctx.run_interval(HEALTH_INTERVAL, |act, ctx| act.spawn_health_check(ctx));
    }
}

/// A request's reply, boxed.
type Reply = ResponseFuture<Result<VmOutcome, ApiError>>;

fn ready(r: Result<VmOutcome, ApiError>) -> Reply {
    Box::pin(async move { r })
}

/// Run an operation's future, then tell the actor the operation is over (whatever happened),
/// and answer with the state right after it.
fn finish_op(
    addr: Addr<VmActor>,
    seq: u64,
    span: tracing::Span,
    fut: impl std::future::Future<Output = Result<Option<(StopEnd, Duration)>, ApiError>> + 'static,
) -> Reply {
    Box::pin(
        async move {
            let result = fut.await;
            let _ = addr.send(Internal::OpDone { seq }).await;
            let info = addr
                .send(GetInfo)
                .await
                .map_err(|e| internal("VM actor gone", e))?;
            Ok(match result? {
                Some((ended, elapsed)) => VmOutcome::Stopped {
                    ended,
                    elapsed,
                    info,
                },
                None => VmOutcome::Done(info),
            })
        }
        .instrument(span),
    )
}

/// QMP failures as API errors: a missed deadline means the VM is unresponsive.
fn qmp_error(e: crate::qmp::QmpError) -> ApiError {
    match e {
        crate::qmp::QmpError::Timeout { .. } => {
            ApiError::new(ErrorCode::Unresponsive, e.to_string())
        }
        other => ApiError::new(ErrorCode::QmpError, other.to_string()),
    }
}

impl VmActor {
    fn stop_plan(&mut self, force: bool, timeout: Duration) -> Option<StopPlan> {
        // Whatever the displayed state (a powered-off guest's QEMU may still be exiting), a
        // QEMU that exists can be stopped.
        let run = self.run.as_ref()?;
        // A paused guest cannot react to the power button: go straight to SIGTERM.
        let acpi = self.state != VmState::Paused
            && run
                .runtime
                .as_ref()
                .map_or(true, |r| r.hvparams.bool(key::ACPI));
        let plan = StopPlan {
            process: run.process.clone(),
            qmp: run.qmp.clone(),
            acpi,
            force,
            timeout,
            resend: self.node.acpi_resend_interval,
            qmp_timeout: self.node.qmp_timeout,
            done: self.exit_waiter(),
            store: self.store.clone(),
            paths: self.paths.clone(),
        };
        self.stop_requested = true;
        self.state = VmState::Stopping;
        Some(plan)
    }

    fn not_running(&self) -> ApiError {
        ApiError::new(
            ErrorCode::NotRunning,
            format!(
                "{} is not running ({})",
                self.name,
                self.info().state.as_str()
            ),
        )
    }

    /// The QMP connection of a running or paused VM.
    fn live_qmp(&self, allowed: &[VmState], op: &str) -> Result<(u64, Qmp), ApiError> {
        let run = self
            .run
            .as_ref()
            .filter(|_| allowed.contains(&self.state))
            .ok_or_else(|| {
                let wanted: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                ApiError::new(
                    ErrorCode::NotRunning,
                    format!(
                        "{} is {}; {op} needs it {}",
                        self.name,
                        self.info().state.as_str(),
                        wanted.join(" or ")
                    ),
                )
            })?;
        let qmp = run.qmp.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unresponsive,
                format!("{} has no QMP connection", self.name),
            )
        })?;
        Ok((run.gen, qmp))
    }
}

impl Handler<VmRequest> for VmActor {
    type Result = Reply;

    fn handle(&mut self, req: VmRequest, ctx: &mut Context<Self>) -> Reply {
        let span = vm_span(&self.name);
        let addr = ctx.address();
        match req {
            VmRequest::SetSpec { spec, autostart } => {
                self.spec = spec.map(|s| *s);
                self.publish();
                let start = autostart
                    && self.recovered
                    && self.op.is_none()
                    && self.state == VmState::Stopped
                    && !self.dir_exists;
                if start {
                    if let Ok(plan) = self.prepare_start(false, "start", ctx) {
                        info!(parent: &span, "autostart after reload");
                        actix::spawn(
                            async move {
                                let _ = start_task(plan).await;
                            }
                            .instrument(span),
                        );
                    }
                }
                return ready(Ok(VmOutcome::Done(self.info())));
            }
            VmRequest::Retire => {
                ctx.stop();
                return ready(Ok(VmOutcome::Done(self.info())));
            }
            _ => {}
        }
        if let Some(op) = self.op {
            return ready(Err(ApiError::new(
                ErrorCode::Busy,
                format!("{} is busy: {op} in progress", self.name),
            )));
        }
        match req {
            VmRequest::Start { paused } => match self.prepare_start(paused, "start", ctx) {
                Ok(plan) => finish_op(addr, self.op_seq, span, async move {
                    start_task(plan).await.map(|_| None)
                }),
                Err(e) => ready(Err(e)),
            },
            VmRequest::Stop { timeout, force } => {
                let Some(plan) = self.stop_plan(force, timeout) else {
                    return ready(Ok(VmOutcome::Stopped {
                        ended: StopEnd::AlreadyStopped,
                        elapsed: Duration::ZERO,
                        info: self.info(),
                    }));
                };
                let seq = self.begin_op("stop");
                self.publish();
                info!(parent: &span, force, timeout_s = timeout.as_secs(), "stopping");
                finish_op(addr, seq, span, async move {
                    let t0 = Instant::now();
                    let ended = stop_task(plan).await?;
                    info!(
                        ended = ended.as_str(),
                        ms = t0.elapsed().as_millis() as u64,
                        "stopped"
                    );
                    Ok(Some((ended, t0.elapsed())))
                })
            }
            VmRequest::Reboot { hard: true, .. } => {
                match self.live_qmp(&[VmState::Running, VmState::Paused], "a hard reboot") {
                    Ok((_, qmp)) => {
                        let t = self.node.qmp_timeout;
                        ready_async(addr, async move {
                            qmp.execute("system_reset", None, t)
                                .await
                                .map(|_| ())
                                .map_err(qmp_error)
                        })
                    }
                    Err(e) => ready(Err(e)),
                }
            }
            VmRequest::Reboot {
                hard: false,
                timeout,
            } => {
                if !matches!(self.state, VmState::Running | VmState::Paused) {
                    return ready(Err(self.not_running()));
                }
                // Refuse before stopping anything if the VM could not start again.
                let (spec, hv) = match self.start_inputs() {
                    Ok(v) => v,
                    Err(e) => return ready(Err(e)),
                };
                let plan = self
                    .stop_plan(false, timeout)
                    .expect("running VM has a process");
                let seq = self.begin_op("reboot");
                self.publish();
                finish_op(addr.clone(), seq, span, async move {
                    // The node checks too (kernel, disks, bridges...): a reboot that could not
                    // start again stops nothing.
                    let errs = tokio::task::spawn_blocking(move || validate::files(&spec, &hv))
                        .await
                        .map_err(|e| internal("check panicked", e))?;
                    if !errs.is_empty() {
                        return Err(ApiError::invalid(errs));
                    }
                    stop_task(plan).await?;
                    let plan = addr
                        .send(PrepareStart {
                            paused: false,
                            op: "reboot",
                        })
                        .await
                        .map_err(|e| internal("VM actor gone", e))??;
                    start_task(plan).await.map(|_| None)
                })
            }
            VmRequest::Pause | VmRequest::Resume => {
                let pause = matches!(req, VmRequest::Pause);
                let from = if pause {
                    VmState::Running
                } else {
                    VmState::Paused
                };
                match self.live_qmp(&[from], if pause { "pause" } else { "resume" }) {
                    Ok((gen, qmp)) => {
                        let t = self.node.qmp_timeout;
                        let a = addr.clone();
                        ready_async(addr, async move {
                            qmp.execute(if pause { "stop" } else { "cont" }, None, t)
                                .await
                                .map_err(qmp_error)?;
                            let _ = a.send(Internal::SetPaused { gen, paused: pause }).await;
                            Ok(())
                        })
                    }
                    Err(e) => ready(Err(e)),
                }
            }
            VmRequest::Cleanup => {
                if self.state.has_process() || self.run.is_some() {
                    return ready(Err(ApiError::new(
                        ErrorCode::AlreadyRunning,
                        format!("Cannot clean up {}: it is running", self.name),
                    )));
                }
                let p = self.paths.clone();
                let job = self.store.run(move || runtime::remove_dir(&p));
                self.last_exit = None;
                self.dir_exists = false;
                self.state = VmState::Stopped;
                self.publish();
                let info = self.info();
                Box::pin(async move {
                    job.await
                        .map_err(|e| internal("Cannot remove runtime files", e))?;
                    Ok(VmOutcome::Done(info))
                })
            }
            VmRequest::SetSpec { .. } | VmRequest::Retire => unreachable!("handled above"),
        }
    }
}

/// A short request (QMP command): run it, then answer with the state right after it.
fn ready_async(
    addr: Addr<VmActor>,
    fut: impl std::future::Future<Output = Result<(), ApiError>> + 'static,
) -> Reply {
    Box::pin(async move {
        fut.await?;
        Ok(VmOutcome::Done(
            addr.send(GetInfo)
                .await
                .map_err(|e| internal("VM actor gone", e))?,
        ))
    })
}

impl Handler<PrepareStart> for VmActor {
    type Result = Result<StartPlan, ApiError>;
    fn handle(&mut self, m: PrepareStart, ctx: &mut Context<Self>) -> Self::Result {
        if self.op.is_some_and(|op| op != m.op) {
            return Err(self.busy());
        }
        self.prepare_start(m.paused, m.op, ctx)
    }
}

impl Handler<GetInfo> for VmActor {
    type Result = MessageResult<GetInfo>;
    fn handle(&mut self, _: GetInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.info())
    }
}

impl Handler<Internal> for VmActor {
    type Result = ();

    fn handle(&mut self, msg: Internal, ctx: &mut Context<Self>) {
        let _span = vm_span(&self.name).entered();
        match msg {
            Internal::Spawned {
                gen,
                pid,
                process,
                exit,
            } if gen == self.gen => {
                self.run = Some(Run {
                    gen,
                    pid,
                    process,
                    exit,
                    qmp: None,
                    runtime: None,
                    exited: None,
                    qmp_closed: false,
                });
                self.publish();
            }
            Internal::QmpUp { gen, qmp } => {
                if let Some(run) = self.run.as_mut().filter(|r| r.gen == gen) {
                    run.qmp = Some(qmp);
                }
            }
            Internal::Running {
                gen,
                paused,
                runtime,
            } if self.current(gen) => {
                self.last_spec = Some(runtime.spec.clone());
                if let Some(run) = self.run.as_mut() {
                    run.runtime = Some(*runtime);
                }
                self.before_start = None;
                if self.state == VmState::Starting {
                    self.state = if paused {
                        VmState::Paused
                    } else {
                        VmState::Running
                    };
                }
                self.op = None;
                info!(paused, "started");
                self.publish();
                // QEMU may already be gone (e.g. the guest died right after `cont`).
                self.exit_when_ready(gen, ctx);
            }
            Internal::StartFailed { gen } if gen == self.gen => {
                crate::host::uidpool::release(&self.name);
                self.run = None;
                self.op = None;
                let before = self.before_start.take().unwrap_or(Before {
                    state: VmState::Stopped,
                    last_exit: None,
                    dir_exists: false,
                });
                self.state = before.state;
                self.last_exit = before.last_exit;
                self.dir_exists = before.dir_exists;
                self.publish();
            }
            Internal::OpDone { seq } => {
                if self.op.is_some() && self.op_seq == seq {
                    self.op = None;
                    if self.state == VmState::Stopping && self.run.is_some() {
                        // The stop failed and QEMU is still there.
                        self.state = VmState::Running;
                        self.stop_requested = false;
                        let marker = self.paths.stopping_marker();
                        actix::spawn(self.store.run(move || {
                            let _ = runtime::remove_file(&marker);
                        }));
                    }
                    self.publish();
                }
            }
            Internal::SetPaused { gen, paused } if self.current(gen) => {
                if matches!(self.state, VmState::Running | VmState::Paused) {
                    self.state = if paused {
                        VmState::Paused
                    } else {
                        VmState::Running
                    };
                    self.publish();
                }
            }
            Internal::Event { gen, event } if self.current(gen) => self.on_event(event),
            Internal::Exited { gen, status } if self.current(gen) => {
                if let Some(run) = self.run.as_mut() {
                    run.exited = Some(status);
                }
                self.exit_when_ready(gen, ctx);
            }
            Internal::QmpClosed { gen } if self.current(gen) => {
                if let Some(run) = self.run.as_mut() {
                    run.qmp_closed = true;
                }
                self.exit_when_ready(gen, ctx);
            }
            Internal::FinishExit { gen } if self.current(gen) && !self.starting() => {
                if let Some(status) = self.run.as_ref().and_then(|r| r.exited) {
                    self.on_exit(gen, status, ctx);
                }
            }
            Internal::ExitRecorded {
                gen,
                record,
                restart,
            } => {
                if gen == self.gen && self.run.is_none() {
                    self.last_exit = Some(record.clone());
                    self.publish();
                }
                for w in self.exit_waiters.drain(..) {
                    let _ = w.send(record.clone());
                }
                if restart && self.op.is_none() {
                    if let Ok(plan) = self.prepare_start(false, "reboot", ctx) {
                        info!("guest rebooted with reboot_behavior=exit: starting it again");
                        actix::spawn(async move {
                            if let Err(e) = start_task(plan).await {
                                warn!(error = %e, "restart after guest reboot failed");
                            }
                        });
                    }
                }
            }
            Internal::Health { gen, status } => {
                self.health_in_flight = false;
                if !self.current(gen) {
                    return;
                }
                let was = (self.unresponsive, self.state);
                match status {
                    Ok(s) => {
                        self.unresponsive = false;
                        match (s.as_str(), self.state) {
                            ("running", VmState::Paused) => self.state = VmState::Running,
                            ("paused", VmState::Running) => self.state = VmState::Paused,
                            _ => {}
                        }
                    }
                    Err(e) => {
                        if !self.unresponsive {
                            warn!(error = %e, "QEMU missed its QMP deadline: unresponsive");
                        }
                        self.unresponsive = true;
                    }
                }
                if was != (self.unresponsive, self.state) {
                    self.publish();
                }
            }
            _ => {} // from an older generation
        }
    }
}

impl VmActor {
    fn on_event(&mut self, ev: Event) {
        match ev.name.as_str() {
            "SHUTDOWN" => {
                let sd = ShutdownEvent {
                    guest: ev.bool("guest").unwrap_or(false),
                    reason: ev.str("reason").unwrap_or("").to_string(),
                };
                info!(guest = sd.guest, reason = %sd.reason, "SHUTDOWN event");
                if !self.stop_requested && sd.guest && sd.reason == "guest-shutdown" {
                    // Show the user shutdown at once; the exit (and the record on disk) follows
                    // within milliseconds.
                    self.state = VmState::UserDown;
                    self.last_exit = Some(ExitRecord {
                        kind: ExitKind::UserDown,
                        reason: USER_DOWN_REASON.into(),
                        exit_code: None,
                        signal: None,
                        stderr_tail: Vec::new(),
                        pid: self.run.as_ref().map_or(0, |r| r.pid),
                        at_ms: runtime::now_ms(),
                    });
                    self.publish();
                }
                self.shutdown_event = Some(sd);
            }
            "STOP" if self.state == VmState::Running => {
                self.state = VmState::Paused;
                self.publish();
            }
            "RESUME" if self.state == VmState::Paused => {
                self.state = VmState::Running;
                self.publish();
            }
            "RESET" | "POWERDOWN" => info!(event = %ev.name, data = %ev.data, "QMP event"),
            _ => tracing::debug!(event = %ev.name, "QMP event"),
        }
    }

    /// A start task is in charge of the current QEMU (it reports failures itself).
    fn starting(&self) -> bool {
        self.state == VmState::Starting
    }

    /// Classify a recorded exit once nothing can change the verdict any more: the start is
    /// over, and QMP has delivered every event (a SHUTDOWN can arrive just after the pidfd
    /// fires). If QMP stays silent, classify after 500 ms anyway.
    fn exit_when_ready(&mut self, gen: u64, ctx: &mut Context<Self>) {
        let Some(run) = self.run.as_ref().filter(|r| r.gen == gen) else {
            return;
        };
        let Some(status) = run.exited else { return };
        if self.starting() {
            return; // Running or StartFailed decides.
        }
        if run.qmp.is_none() || run.qmp_closed {
            self.on_exit(gen, status, ctx);
        } else {
            ctx.notify_later(Internal::FinishExit { gen }, Duration::from_millis(500));
        }
    }

    fn on_exit(&mut self, gen: u64, status: ExitStatus, ctx: &mut Context<Self>) {
        let run = self.run.take().expect("current run");
        crate::host::uidpool::release(&self.name);
        let reboot_exits = run
            .runtime
            .as_ref()
            .is_some_and(|r| r.hvparams.str(key::REBOOT_BEHAVIOR) == "exit");
        let verdict = classify_exit(&ExitFacts {
            stop_requested: self.stop_requested,
            shutdown: self.shutdown_event.take(),
            status,
            reboot_exits,
        });
        let (kind, reason, restart) = match verdict {
            ExitVerdict::Stopped => (ExitKind::Stopped, "stopped by kvmd".to_string(), false),
            ExitVerdict::UserDown => (
                ExitKind::UserDown,
                "the guest powered itself off".to_string(),
                false,
            ),
            ExitVerdict::RestartForReboot => (
                ExitKind::Stopped,
                "the guest rebooted (reboot_behavior=exit); kvmd starts it again".to_string(),
                true,
            ),
            ExitVerdict::Crashed(r) => (ExitKind::Crashed, r, false),
        };
        match kind {
            ExitKind::Crashed => warn!(pid = run.pid, %reason, %status, "QEMU crashed"),
            _ => info!(pid = run.pid, %reason, %status, "QEMU exited"),
        }
        self.state = VmState::after_exit(kind);
        self.stop_requested = false;
        self.unresponsive = false;
        if self.op == Some("stop") {
            self.op = None;
        }
        let (paths, pid, addr) = (self.paths.clone(), run.pid, ctx.address());
        // Visible at once in info; the stderr tail follows when the record is written.
        self.last_exit = Some(ExitRecord {
            kind,
            reason: reason.clone(),
            exit_code: status.code,
            signal: status.signal,
            stderr_tail: Vec::new(),
            pid,
            at_ms: runtime::now_ms(),
        });
        self.publish();
        let (down, script, hook_timeout) = (
            run.runtime.clone(),
            self.node.nic_script.clone(),
            self.node.hook_timeout,
        );
        let job = self.store.run(move || {
            if let Some(rt) = &down {
                nics_down(rt, script.as_deref(), hook_timeout);
            }
            let rec = ExitRecord {
                kind,
                reason,
                exit_code: status.code,
                signal: status.signal,
                stderr_tail: if kind == ExitKind::Crashed {
                    process::tail_lines(&paths.qemu_log(), STDERR_LINES)
                } else {
                    Vec::new()
                },
                pid,
                at_ms: runtime::now_ms(),
            };
            if let Err(e) = runtime::record_exit(&paths, &rec) {
                warn!(error = %e, "cannot write the exit record");
            }
            rec
        });
        actix::spawn(async move {
            let record = job.await;
            addr.do_send(Internal::ExitRecorded {
                gen,
                record,
                restart,
            });
        });
    }

    fn on_recovered(&mut self, r: Recovery, ctx: &mut Context<Self>) {
        self.op = None;
        self.recovered = true;
        match r {
            Recovery::Adopted {
                last_exit,
                gen,
                process,
                exit,
                qmp,
                runtime,
                status,
                stopping,
            } => {
                self.gen = gen;
                self.last_exit = last_exit;
                self.last_spec = runtime.as_ref().map(|r| r.spec.clone());
                if let Some(uid) = runtime.as_ref().and_then(|r| r.pool_uid) {
                    crate::host::uidpool::hold(uid, &self.name);
                }
                self.dir_exists = true;
                self.state = match status.as_deref() {
                    Some("paused") | Some("prelaunch") | Some("suspended") => VmState::Paused,
                    _ => VmState::Running,
                };
                self.unresponsive = qmp.is_none();
                self.run = Some(Run {
                    gen,
                    pid: process.pid,
                    process,
                    exit,
                    qmp,
                    runtime: runtime.map(|r| *r),
                    exited: None,
                    qmp_closed: false,
                });
                // An exit that raced with adoption: classify it like any other.
                let raced = *self.run.as_ref().expect("just set").exit.borrow();
                if let Some(status) = raced {
                    self.run.as_mut().expect("just set").exited = Some(status);
                    self.publish();
                    self.exit_when_ready(gen, ctx);
                    return;
                }
                if stopping {
                    // kvmd went down during a stop: finish it (a guest power-off from here on
                    // is the admin's stop, not a user shutdown).
                    if let Some(plan) = self.stop_plan(false, self.node.stop_timeout) {
                        let seq = self.begin_op("stop");
                        info!("kvmd was stopping this VM when it went down: finishing the stop");
                        let addr = ctx.address();
                        actix::spawn(async move {
                            if let Err(e) = stop_task(plan).await {
                                warn!(error = %e, "resumed stop failed");
                            }
                            addr.do_send(Internal::OpDone { seq });
                        });
                    }
                }
            }
            Recovery::Down {
                record,
                dir_exists,
                last_spec,
            } => {
                self.dir_exists = dir_exists;
                self.last_spec = last_spec;
                self.state = record
                    .as_ref()
                    .map_or(VmState::Stopped, |r| VmState::after_exit(r.kind));
                self.last_exit = record;
                if self.autostart_on_recovery
                    && !dir_exists
                    && self.spec.as_ref().is_some_and(|s| s.autostart)
                {
                    if let Ok(plan) = self.prepare_start(false, "start", ctx) {
                        info!("autostart");
                        let span = vm_span(&self.name);
                        actix::spawn(
                            async move {
                                if let Err(e) = start_task(plan).await {
                                    warn!(error = %e, "autostart failed");
                                }
                            }
                            .instrument(span),
                        );
                        return;
                    }
                }
            }
        }
        self.publish();
    }
}
