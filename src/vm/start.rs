//! The start task: check, prepare the run dir, open taps and run their hooks, spawn QEMU,
//! connect QMP (on a socket kvmd bound itself, so nothing polls), write the runtime file,
//! pin vCPUs, set passwords, resume — recording an undo step for everything it sets up, and
//! running them in reverse if any step fails or the start is cancelled. A restarted kvmd
//! finishing a start whose QEMU is already up runs only the configure-and-resume part.
//!
//! Every step is bounded: the probe and the hooks by their deadlines, QEMU's greeting by the
//! start-up deadline, QMP commands by theirs.
//!
//! Invariant: reports through the [`Reporter`] only; the core decides what a result means.

use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::api::{ApiError, ErrorCode};
use crate::host::clock::now_ms;
use crate::host::process::{self, QemuProcess};
use crate::model::exit::ExitStatus;
use crate::model::field_error::FieldError;
use crate::model::hvparams::{self, key, HvParams};
use crate::model::job::{JobId, Undo, UndoStack};
use crate::model::layout::RunPaths;
use crate::model::spec::{InstanceSpec, NodeConfig};
use crate::qemu::caps::QemuCaps;
use crate::qemu::cmdline::{build_command_line, CommandLine, Launch};
use crate::qemu::host_facts::{self, Gathered, HostPlan, NodeFacts, PreRun, TapFds};
use crate::qmp::{ConnectOptions, Display, Qmp};
use crate::store::runtime_file::RuntimeFile;
use crate::store::Store;
use crate::vm::core::{Input, RunInfo, TaskControl};

use super::error::{chain, VmError};
use super::report::Reporter;
use super::undo::{self, UndoCtx};
use super::watch::STDERR_LINES;

/// A resumed start's QEMU as recovery had it: its handle, exit watch and QMP connection.
pub(super) type ExistingQemu = (
    Option<Arc<QemuProcess>>,
    Option<watch::Receiver<Option<ExitStatus>>>,
    Option<Qmp>,
);

/// What a start needs.
pub(super) struct StartCtx {
    pub job: JobId,
    pub gen: u64,
    pub spec: InstanceSpec,
    pub paused: bool,
    /// Start-up memory (MiB) the start asked for (`None`: Ganeti's rule).
    pub memory: Option<u64>,
    pub resume: bool,
    /// A resumed start's QEMU: its handle, exit watch and QMP connection, if recovery had them.
    pub existing: Option<ExistingQemu>,
    pub undo: Vec<Undo>,
    /// A migration target: wait for the VM instead of booting it.
    pub incoming: Option<crate::vm::core::IncomingPlan>,
    pub node: Arc<NodeConfig>,
    pub paths: RunPaths,
    pub store: Store,
    pub report: Reporter,
    pub control: mpsc::UnboundedReceiver<TaskControl>,
}

/// The QEMU being started.
struct Spawned {
    process: Arc<QemuProcess>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

pub(super) async fn run(mut s: StartCtx) {
    let t0 = Instant::now();
    let mut undo = UndoStack::from(s.undo.clone());
    let mut spawned: Option<Spawned> = s.existing.as_ref().and_then(|(p, e, _)| {
        Some(Spawned {
            process: p.clone()?,
            exit: e.clone()?,
        })
    });
    let result = if s.resume {
        finish(&mut s, &spawned).await
    } else {
        launch(&mut s, &mut undo, &mut spawned, t0).await
    };
    let result = match result {
        Ok(info) => Ok(info),
        Err(e) => Err(roll_back(&s, undo, spawned, e).await),
    };
    let (job, gen) = (s.job, s.gen);
    s.report.input(Input::StartDone { job, gen, result });
}

/// Tell the core where the start is (and what undoes it so far).
fn phase(s: &StartCtx, phase: &str, undo: &UndoStack) {
    s.report.input(Input::Phase {
        job: s.job,
        phase: phase.into(),
        deadline_ms: None,
        progress: None,
        undo: Some(undo.steps().to_vec()),
    });
}

/// Stop here if the start was cancelled.
fn cancelled(s: &mut StartCtx) -> Result<(), VmError> {
    match s.control.try_recv() {
        Ok(TaskControl::Cancel) => Err(VmError::Cancelled("The start was cancelled".into())),
        _ => Ok(()),
    }
}

/// Wait for `fut`, unless the start is cancelled first.
async fn or_cancel<T>(
    control: &mut mpsc::UnboundedReceiver<TaskControl>,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, VmError> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            v = &mut fut => return Ok(v),
            c = control.recv() => match c {
                Some(TaskControl::Cancel) => {
                    return Err(VmError::Cancelled("The start was cancelled".into()))
                }
                Some(_) => continue,
                None => return Ok(fut.await),
            },
        }
    }
}

/// A fresh start, up to a running (or paused) guest.
async fn launch(
    s: &mut StartCtx,
    undo: &mut UndoStack,
    spawned: &mut Option<Spawned>,
    t0: Instant,
) -> Result<RunInfo, VmError> {
    let hv = s.spec.effective_hvparams(&s.node);
    let accel = s.spec.accel(&hv, &s.node);
    // 1. The node's checks and the probe (bounded by probe_timeout), off the actor.
    let (spec, hv2, node, paths, paused, asked) = (
        s.spec.clone(),
        hv.clone(),
        s.node.clone(),
        s.paths.clone(),
        s.paused,
        s.memory,
    );
    let checked = tokio::task::spawn_blocking(move || {
        let (caps, mut plan) = check(&spec, &hv2, &node, &paths, paused)?;
        // Ganeti's start-up memory: what was asked, else as much of `memory` as the node has
        // available (never below `min_memory`).
        let available = match crate::host::node::facts().memory_free_mib {
            0 => u64::MAX, // unknown: no ballooning of our own
            n => n,
        };
        plan.pre_run.balloon_mib = host_facts::startup_memory(&spec, asked, available);
        Ok::<_, VmError>((caps, plan))
    });
    let (caps, mut plan) = or_cancel(&mut s.control, checked)
        .await?
        .map_err(VmError::Join)??;
    plan.incoming = s.incoming.as_ref().map(|i| i.machine.clone());
    if let Some(i) = &s.incoming {
        plan.hotplug_ports = i.hotplug_ports;
        // The guest's memory comes with it.
        plan.pre_run.balloon_mib = None;
    }
    let t_checked = t0.elapsed();
    // 2. The run dir: the previous run's files go, the exit history stays.
    let (p, chroot) = (s.paths.clone(), plan.chroot_dir.clone());
    let incoming = s.incoming.is_some();
    s.store
        .run(move || {
            crate::store::files::fresh_dir(&p)?;
            if incoming {
                crate::store::files::write_atomic(&p.incoming_marker(), b"")?;
            }
            if let Some(dir) = chroot {
                std::fs::DirBuilder::new().mode(0o700).create(dir)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await?
        .map_err(VmError::RunDir)?;
    undo.push(Undo::DropRunFiles);
    cancelled(s)?;
    phase(s, "launching", undo);
    let t_dir = t0.elapsed();
    // 3. Taps and their hooks, the argv, QEMU (blocking: hooks run with their deadlines).
    let (spec, hv2, node, paths, caps2, plan2) = (
        s.spec.clone(),
        hv.clone(),
        s.node.clone(),
        s.paths.clone(),
        caps.clone(),
        plan.clone(),
    );
    let mut steps = std::mem::take(undo);
    let launched = tokio::task::spawn_blocking(move || {
        let r = spawn_qemu(
            &spec, &hv2, &caps2, &plan2, &node, &paths, accel, &mut steps,
        );
        (steps, r)
    })
    .await
    .map_err(VmError::Join)?;
    *undo = launched.0;
    let l = launched.1?;
    let t_spawned = t0.elapsed();
    let pid = l.pid;
    let process =
        Arc::new(QemuProcess::open(pid, true).map_err(|source| VmError::Watch { pid, source })?);
    let exit =
        super::observe::exit_watch(&process).map_err(|source| VmError::Watch { pid, source })?;
    *spawned = Some(Spawned {
        process: process.clone(),
        exit: exit.clone(),
    });
    s.report.process(s.gen, process.clone(), exit.clone());
    s.report.input(Input::Spawned { gen: s.gen, pid });
    phase(s, "connecting", undo);
    info!(pid, us = us(t_spawned), "QEMU spawned");
    // 4. QMP (the greeting comes when QEMU is ready) while the runtime file is written.
    let runtime = RuntimeFile {
        version: 1,
        spec: s.spec.clone(),
        hvparams: hv.clone(),
        argv: l.command.argv.clone(),
        pid,
        start_ticks: l.start_ticks,
        started_at_ms: now_ms(),
        qemu_version: caps.version_text.clone(),
        paused_at_start: s.paused,
        machine: l.command.machine.clone(),
        slots: l.command.slots.clone(),
        taps: l.taps.clone(),
        pool_uid: l.pool_uid,
        hotplugged: Vec::new(),
        startup_memory_mib: plan.pre_run.balloon_mib,
    };
    let (rt, p) = (runtime.clone(), s.paths.clone());
    let written = s.store.run(move || {
        if let Some(d) = crate::host::faults::delay("before_runtime") {
            std::thread::sleep(d);
        }
        crate::store::files::write_json(&p.runtime(), &rt)
    });
    let stream = tokio::net::UnixStream::from_std(l.qmp).map_err(VmError::QmpSocket)?;
    let opts = ConnectOptions {
        connect_deadline: Instant::now(),
        startup_timeout: s.node.startup_timeout,
        command_timeout: s.node.qmp_timeout,
    };
    let mut died = exit.clone();
    let connecting = async {
        tokio::select! {
            r = Qmp::from_stream(stream, &opts) => r.map_err(VmError::Connect),
            _ = died.wait_for(|e| e.is_some()) => Err(VmError::ExitedEarly),
        }
    };
    let (connected, written) = tokio::join!(or_cancel(&mut s.control, connecting), written);
    let (qmp, notices) = connected??;
    let t_greeted = t0.elapsed();
    s.report.qmp(s.gen, qmp.clone(), notices);
    written?.map_err(VmError::RuntimeFile)?;
    // 5-6. Pin, passwords, resume (a phase of its own only when there is something to do:
    // QEMU was started with -S).
    if plan.pre_run.stops_at_start() {
        phase(s, "configuring", undo);
    }
    configure(s, &qmp, pid, &hv, &plan.pre_run).await?;
    if let Some(incoming) = &s.incoming {
        phase(s, "listening", undo);
        super::migrate::listen(&qmp, incoming).await?;
        info!(uri = %crate::model::text::escape(&incoming.uri), "waiting for the incoming migration");
    }
    let t_resumed = t0.elapsed();
    // The new QEMU is up: the instance is no longer "user down" (Ganeti clears the marker at
    // start too). Queued, not awaited: the reply leaves through the same queue after it, so
    // the reply and the disk still agree.
    let marker = s.paths.shutdown_marker();
    s.store.spawn(move || {
        let _ = crate::store::files::remove_file(&marker);
    });
    let total = t0.elapsed();
    let qemu = t_greeted.saturating_sub(t_spawned);
    debug!(
        checked_us = us(t_checked),
        run_dir_us = us(t_dir),
        spawned_us = us(t_spawned),
        greeted_us = us(t_greeted),
        resumed_us = us(t_resumed),
        total_us = us(total),
        qemu_startup_us = us(qemu),
        kvmd_share_us = us(total.saturating_sub(qemu)),
        "start timeline"
    );
    Ok(super::recover::run_info(&runtime))
}

/// A start a restarted kvmd found with its QEMU up: pin, passwords, resume.
async fn finish(s: &mut StartCtx, spawned: &Option<Spawned>) -> Result<RunInfo, VmError> {
    let p = s.paths.clone();
    let runtime = s
        .store
        .run(move || crate::store::files::read_json::<RuntimeFile>(&p.runtime()))
        .await?
        .map_err(VmError::RuntimeFile)?
        .ok_or_else(|| {
            VmError::RuntimeFile(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the runtime file is gone",
            ))
        })?;
    let qmp = s
        .existing
        .as_ref()
        .and_then(|(_, _, q)| q.clone())
        .ok_or(VmError::Connect(crate::qmp::QmpError::Closed))?;
    let pid = spawned.as_ref().map_or(runtime.pid, |sp| sp.process.pid);
    phase(s, "configuring", &UndoStack::from(s.undo.clone()));
    let mut plan = host_facts::pre_run(&runtime.hvparams, s.paused);
    plan.balloon_mib = runtime.startup_memory_mib;
    configure(s, &qmp, pid, &runtime.hvparams, &plan).await?;
    let marker = s.paths.shutdown_marker();
    let _ = s
        .store
        .run(move || crate::store::files::remove_file(&marker))
        .await;
    info!("finished a start that kvmd was doing when it went down");
    Ok(super::recover::run_info(&runtime))
}

/// What must happen before the guest runs, then `cont` (unless it stays paused).
async fn configure(
    s: &mut StartCtx,
    qmp: &Qmp,
    pid: u32,
    hv: &HvParams,
    pre: &PreRun,
) -> Result<(), VmError> {
    if pre.pin_vcpus {
        super::pin::at_start(qmp, pid, hv.str(key::CPU_MASK))
            .await
            .map_err(VmError::Pin)?;
    }
    for pw in &pre.passwords {
        let file = pw.file.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(file));
        let text = tokio::time::timeout(s.node.hook_timeout, read)
            .await
            .map_err(|_| VmError::PasswordFileTimeout {
                hvparam: pw.hvparam,
                seconds: s.node.hook_timeout.as_secs(),
            })?
            .map_err(VmError::Join)?
            .map_err(|source| VmError::PasswordFile {
                hvparam: pw.hvparam,
                source,
            })?;
        let password = text.lines().next().unwrap_or("");
        let display = if pw.protocol == "vnc" {
            Display::Vnc
        } else {
            Display::Spice
        };
        qmp.set_password(display, password)
            .await
            .map_err(|source| VmError::Password {
                protocol: pw.protocol,
                source,
            })?;
    }
    if let Some(mib) = pre.balloon_mib {
        // Ganeti's start-up ballooning: the guest boots into this size.
        qmp.balloon(mib << 20).await.map_err(VmError::Balloon)?;
        info!(mib, "start-up balloon target set");
    }
    cancelled(s)?;
    if s.node.balloon_stats_interval > 0 {
        // Statistics only: a QEMU or guest without them is no reason to fail a start.
        if let Err(e) = qmp
            .set_guest_stats_interval(s.node.balloon_stats_interval)
            .await
        {
            debug!(error = %e, "no guest memory statistics");
        }
    }
    if pre.stops_at_start() && !pre.paused {
        if let Some(d) = crate::host::faults::delay("before_cont") {
            tokio::time::sleep(d).await;
        }
        qmp.cont().await.map_err(VmError::Resume)?;
    }
    Ok(())
}

/// The node's checks, the probe, and what to gather (blocking).
fn check(
    spec: &InstanceSpec,
    hv: &HvParams,
    node: &NodeConfig,
    paths: &RunPaths,
    paused: bool,
) -> Result<(Arc<QemuCaps>, HostPlan), VmError> {
    let mut errs = crate::host::validate::files(spec, hv);
    let kvm = std::path::Path::new(hv.str(key::KVM_PATH));
    let caps = match crate::host::probe::probe(kvm, node.probe_timeout) {
        Ok(c) => c,
        // A missing binary is already named by the file checks.
        Err(_) if !errs.is_empty() => return Err(VmError::Invalid(errs)),
        Err(e) => return Err(VmError::Probe(e)),
    };
    errs.extend(crate::qemu::checks::qemu(spec, hv, &caps));
    // The argv must be buildable before anything is created for it.
    crate::host::validate::add_new_fields(
        &mut errs,
        crate::host::validate::dry_build(spec, hv, node, &caps),
    );
    if !errs.is_empty() {
        return Err(VmError::Invalid(errs));
    }
    let facts = NodeFacts {
        vhost_available: crate::host::net::vhost_available(),
        spice_cert_dir: node.spice_cert_dir.clone(),
        hotplug_ports: node.hotplug_ports,
    };
    let plan = host_facts::plan(spec, hv, &caps, &facts, paths, paused);
    Ok((caps, plan))
}

/// What the blocking launch step produced.
struct Launched {
    pid: u32,
    start_ticks: u64,
    command: CommandLine,
    taps: Vec<Option<String>>,
    pool_uid: Option<u32>,
    /// Connected to QEMU's QMP listening socket (accepted once QEMU is ready).
    qmp: std::os::unix::net::UnixStream,
}

/// Open the taps and run their hooks, bind the QMP socket, build the argv, spawn QEMU.
#[allow(clippy::too_many_arguments)]
fn spawn_qemu(
    spec: &InstanceSpec,
    hv: &HvParams,
    caps: &QemuCaps,
    plan: &HostPlan,
    node: &NodeConfig,
    paths: &RunPaths,
    accel: crate::model::spec::Accel,
    undo: &mut UndoStack,
) -> Result<Launched, VmError> {
    let mut g = Gathered {
        block_devices: crate::host::validate::device_nodes(spec),
        ..Gathered::default()
    };
    let mut taps = Vec::new();
    let mut names = Vec::new();
    for (index, (nic, want)) in spec.nics.iter().zip(&plan.taps).enumerate() {
        let Some(want) = want else {
            g.taps.push(None);
            names.push(None);
            continue;
        };
        let tap = crate::host::net::create_tap(want.queues, want.vnet_hdr, want.vhost)
            .map_err(|source| VmError::Tap { index, source })?;
        // Recorded before the up hook: a hook that fails half-way is undone too.
        undo.push(Undo::NicDown {
            index,
            tap: tap.name.clone(),
        });
        let ctx = crate::host::net::NicContext {
            instance: &spec.name,
            index,
            nic,
            tap: &tap.name,
            script: node.nic_script.as_deref(),
            deadline: node.hook_timeout,
        };
        crate::host::net::nic_up(&ctx).map_err(|source| VmError::NicUp {
            index,
            tap: tap.name.clone(),
            source,
        })?;
        g.taps.push(Some(TapFds {
            fds: tap.fds.iter().map(|f| f.as_raw_fd()).collect(),
            vhost_fds: tap.vhost_fds.iter().map(|f| f.as_raw_fd()).collect(),
        }));
        names.push(Some(tap.name.clone()));
        taps.push(tap);
    }
    let mut pool_uid = None;
    if plan.pool_uid {
        let (uid, user) =
            crate::host::uidpool::take(&node.uid_pool, &spec.name).map_err(|why| {
                VmError::Invalid(vec![FieldError::new(
                    "hvparams.security_model",
                    "\"pool\"",
                    why,
                )])
            })?;
        undo.push(Undo::ReleaseUid);
        g.pool_user = Some(user);
        pool_uid = Some(uid);
    }
    g.vnc_address = plan
        .vnc_interface
        .as_deref()
        .and_then(|i| crate::host::validate::interface_address(i, 4));
    g.spice_address = plan
        .spice_interface
        .as_ref()
        .and_then(|(i, family)| crate::host::validate::interface_address(i, *family));
    let _ = std::fs::remove_file(paths.qmp());
    let listener =
        std::os::unix::net::UnixListener::bind(paths.qmp()).map_err(VmError::QmpSocket)?;
    g.qmp_fd = Some(listener.as_raw_fd());
    let host = host_facts::host(plan, g);
    let command = build_command_line(&Launch {
        spec,
        hv,
        caps,
        paths,
        accel,
        host: &host,
    })
    .map_err(|errs| VmError::Invalid(hvparams::under_hvparams(errs)))?;
    let mut keep: Vec<i32> = taps
        .iter()
        .flat_map(|t| t.fds.iter().chain(&t.vhost_fds))
        .map(|f| f.as_raw_fd())
        .collect();
    keep.push(listener.as_raw_fd());
    let pid =
        process::spawn_detached(&command.argv, &paths.qemu_log(), &keep).map_err(|source| {
            VmError::Spawn {
                program: command.argv[0].clone(),
                source,
            }
        })?;
    let start_ticks = process::read_stat(pid).map(|s| s.start_ticks).unwrap_or(0);
    undo.push(Undo::KillQemu { pid, start_ticks });
    // Connected now; QEMU accepts (and greets) once it is ready.
    let qmp = std::os::unix::net::UnixStream::connect(paths.qmp()).map_err(VmError::QmpSocket)?;
    qmp.set_nonblocking(true).map_err(VmError::QmpSocket)?;
    // QEMU holds the taps and the listener now; our copies close here, so the taps go
    // when QEMU does.
    drop(taps);
    drop(listener);
    Ok(Launched {
        pid,
        start_ticks,
        command,
        taps: names,
        pool_uid,
        qmp,
    })
}

/// Undo a failed or cancelled start: QEMU killed (its stderr kept for the error), hooks
/// down, uid back, files gone. Returns the error to report.
async fn roll_back(
    s: &StartCtx,
    mut undo: UndoStack,
    spawned: Option<Spawned>,
    e: VmError,
) -> ApiError {
    let steps = undo.take_reversed();
    let ctx = UndoCtx {
        name: s.spec.name.clone(),
        paths: s.paths.clone(),
        store: s.store.clone(),
        node: s.node.clone(),
        spec: Some(s.spec.clone()),
        process: spawned.as_ref().map(|sp| sp.process.clone()),
        exit: spawned.as_ref().map(|sp| sp.exit.clone()),
    };
    // QEMU first, then read what it said before its files go.
    let (kill, rest): (Vec<Undo>, Vec<Undo>) = steps
        .into_iter()
        .partition(|u| matches!(u, Undo::KillQemu { .. }));
    undo::run(&ctx, kill).await;
    let spawned_at_all = spawned.is_some() || s.resume;
    let p = s.paths.clone();
    let stderr = if spawned_at_all {
        s.store
            .run(move || process::tail_lines(&p.qemu_log(), STDERR_LINES))
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    undo::run(&ctx, rest).await;
    let mut api = e.to_api();
    match &e {
        VmError::Cancelled(_) => api.code = ErrorCode::Cancelled,
        VmError::Invalid(_) => {}
        _ => {
            if let Some(last) = stderr.last() {
                api.message = format!("{}; QEMU said: {last}", api.message);
            }
            api.details = stderr.clone();
        }
    }
    warn!(error = %crate::model::text::escape(&chain(&e)), stderr = ?stderr, "start failed; undone");
    api
}

/// Microseconds for the log (saturating: no start takes 584 000 years).
fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
