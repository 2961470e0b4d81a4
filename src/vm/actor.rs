//! The VM actor: a thin shell around the pure [`Core`]. It owns what the core cannot — the
//! QEMU process handle and its exit watch, the QMP connection, the waiting clients, the task
//! control channels — feeds the core requests and facts, and carries out the effects the core
//! answers with.
//!
//! Long work runs as tasks (`start`, `stop`, `recover`, `undo`) that report back through a
//! [`Reporter`], so the mailbox keeps flowing during an ACPI stop: events, exits and `info`
//! are never queued behind QEMU.
//!
//! Invariant: no VM policy here (every decision is the core's); dropping or stopping this
//! actor never touches QEMU. VMs outlive kvmd.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn, Instrument};

use crate::api::{ApiError, ErrorCode, JobInfo, VmInfo};
use crate::events::EventBus;
use crate::host::clock::now_ms;
use crate::host::process::QemuProcess;
use crate::model::exit::{ExitKind, ExitRecord, ExitStatus};
use crate::model::hvparams::HvParams;
use crate::model::job::JobId;
use crate::model::layout::RunPaths;
use crate::model::name::InstanceName;
use crate::model::spec::{InstanceSpec, NodeConfig};
use crate::qmp::{Notice, Qmp};
use crate::store::Store;
use crate::vm::core::{
    Answer, Core, Effect, Input, Now, Outcome, QmpAction, RecoveryFacts, Request, Settings, Task,
    TaskControl, Ticket,
};

use super::messages::{JobIds, VmAnswer, VmAsk, VmNotice, VmReply};
use super::report::{Internal, Reporter};
use super::{migrate, recover, sample, start, stop, undo, watch as watching};
use crate::api::{MigrationReport, MigrationSummary};
use crate::migration::coordinator::{self, Coordinator, Ended, GetProgress, Summary};

/// The per-VM log span. A root span, so that work started from inside another VM's span
/// does not nest `vm{..}:vm{..}`.
pub(super) fn vm_span(name: &InstanceName) -> tracing::Span {
    tracing::info_span!(parent: None, "vm", name = %name)
}

/// An operator's request.
#[derive(Message)]
#[rtype(result = "Result<VmAnswer, ApiError>")]
pub(super) struct Ask {
    pub ask: VmAsk,
    pub wait: bool,
}

/// The supervisor managing the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) enum Manage {
    SetSpec {
        spec: Option<Box<InstanceSpec>>,
        autostart: bool,
    },
    Retire,
}

#[derive(Message)]
#[rtype(result = "Option<JobInfo>")]
pub(super) struct GetJob;

/// `migration-status`.
#[derive(Message)]
#[rtype(result = "MigrationReport")]
pub(super) struct GetMigration;

/// The running outgoing migration.
struct Outgoing {
    job: JobId,
    gen: u64,
    resume_on_failure: bool,
    coordinator: Addr<Coordinator>,
    /// The figures last asked for (the progress tick).
    last: coordinator::Progress,
}

/// What a VM tells its supervisor, as an actix message.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct VmNotify(pub VmNotice);

/// The OS resources of the current QEMU.
#[derive(Default)]
struct Resources {
    gen: u64,
    process: Option<Arc<QemuProcess>>,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
    qmp: Option<Qmp>,
    /// Numbers QMP connections of this generation.
    conn: u64,
}

struct Waiter {
    wait: bool,
    tx: oneshot::Sender<Result<VmAnswer, ApiError>>,
}

pub struct VmActor {
    core: Core,
    name: InstanceName,
    paths: RunPaths,
    node: Arc<NodeConfig>,
    store: Store,
    bus: EventBus,
    supervisor: Recipient<VmNotify>,
    ids: JobIds,
    res: Resources,
    waiters: HashMap<Ticket, Waiter>,
    next_ticket: Ticket,
    controls: HashMap<JobId, mpsc::UnboundedSender<TaskControl>>,
    health_in_flight: bool,
    sample_in_flight: bool,
    /// The vCPU threads of generation `.0` (for the metrics' schedstat reads).
    vcpu_threads: Option<(u64, Vec<crate::qmp::CpuThread>)>,
    published: Option<VmInfo>,
    span: tracing::Span,
    /// Where QMP notices are teed for the running migration.
    tap: migrate::Tap,
    outgoing: Option<Outgoing>,
    /// How the last outgoing migration ended.
    last_migration: Option<Summary>,
    /// Target: when `finalize-dst` continued the guest (µs since the epoch).
    resumed_at_us: Arc<std::sync::Mutex<Option<u64>>>,
}

/// What the actor needs to exist.
#[derive(Debug)]
pub struct VmSetup {
    pub name: InstanceName,
    pub spec: Option<InstanceSpec>,
    pub node: Arc<NodeConfig>,
    pub store: Store,
    pub bus: EventBus,
    pub supervisor: Recipient<VmNotify>,
    pub ids: JobIds,
    /// Start at recovery if the config says so (once per boot of the run dir).
    pub autostart: bool,
}

impl VmActor {
    pub fn new(s: VmSetup) -> Self {
        let now = Now {
            ms: now_ms(),
            id: s.ids.peek(),
        };
        s.ids.take(now.id);
        let core = Core::new(
            s.name.clone(),
            s.spec,
            Settings::new(s.node.stop_timeout),
            s.autostart,
            now,
        );
        Self {
            core,
            paths: RunPaths::new(&s.node.run_dir, &s.name),
            span: vm_span(&s.name),
            name: s.name,
            node: s.node,
            store: s.store,
            bus: s.bus,
            supervisor: s.supervisor,
            ids: s.ids,
            res: Resources::default(),
            waiters: HashMap::new(),
            next_ticket: 0,
            controls: HashMap::new(),
            health_in_flight: false,
            sample_in_flight: false,
            vcpu_threads: None,
            published: None,
            tap: Arc::default(),
            outgoing: None,
            last_migration: None,
            resumed_at_us: Arc::default(),
        }
    }

    fn now(&self) -> Now {
        Now {
            ms: now_ms(),
            id: self.ids.peek(),
        }
    }

    /// Take the peeked job id if a job began with it.
    fn take_id(&self, now: Now, fx: &[Effect]) {
        if fx
            .iter()
            .any(|e| matches!(e, Effect::JobUpdated(j) if j.id == now.id))
        {
            self.ids.take(now.id);
        }
    }

    fn reporter(ctx: &mut Context<Self>) -> Reporter {
        Reporter(ctx.address().recipient())
    }

    /// The definition's problems a start would refuse (the pure syntax checks).
    fn syntax_check(&self) -> Option<ApiError> {
        let spec = self.core.spec()?;
        let hv = spec.effective_hvparams(&self.node);
        let errs = crate::qemu::checks::syntax(spec, &hv, crate::host::validate::host_cpus());
        (!errs.is_empty()).then(|| ApiError::invalid(errs))
    }

    fn feed_request(&mut self, ticket: Ticket, request: Request, ctx: &mut Context<Self>) {
        let now = self.now();
        let fx = self.core.request(ticket, request, now);
        self.take_id(now, &fx);
        self.apply(fx, ctx);
    }

    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) {
        let now = self.now();
        let fx = self.core.input(input, now);
        self.take_id(now, &fx);
        self.apply(fx, ctx);
    }

    /// Carry out the core's effects, in order.
    fn apply(&mut self, fx: Vec<Effect>, ctx: &mut Context<Self>) {
        let mut publish = false;
        for e in fx {
            match e {
                Effect::Answer(ticket, outcome, info) => self.answer(ticket, outcome, *info),
                Effect::Publish => publish = true,
                Effect::Event(kind) => {
                    self.bus.publish(Some(self.name.clone()), kind);
                }
                Effect::JobUpdated(job) => {
                    if job.outcome.is_some() {
                        self.controls.remove(&job.id);
                        log_job_end(&self.span, &job);
                    }
                    self.supervisor.do_send(VmNotify(VmNotice::Job(job)));
                }
                Effect::PersistJob(job) => {
                    let paths = self.paths.clone();
                    let span = self.span.clone();
                    self.store.spawn(move || {
                        if let Err(e) = crate::store::job_file::write(&paths, &job) {
                            warn!(parent: &span, error = %e, "cannot write the job file");
                        }
                    });
                }
                Effect::ClearJob => {
                    let paths = self.paths.clone();
                    self.store.spawn(move || {
                        let _ = crate::store::job_file::clear(&paths);
                    });
                }
                Effect::Spawn(task) => self.spawn(task, ctx),
                Effect::Control(job, c) => {
                    if let Some(tx) = self.controls.get(&job) {
                        let _ = tx.send(c);
                    }
                }
                Effect::ArmExitSettle { gen, after } => {
                    ctx.notify_later(Internal::Input(Input::ExitSettled { gen }), after);
                }
                Effect::RecordExit {
                    gen,
                    epoch,
                    record,
                    taps,
                    spec,
                } => {
                    self.res = Resources::default();
                    log_exit(&self.span, &record);
                    watching::record_exit(
                        watching::ExitJob {
                            gen,
                            epoch,
                            record,
                            taps,
                            spec: spec.map(|s| *s),
                            paths: self.paths.clone(),
                            store: self.store.clone(),
                            node: self.node.clone(),
                            report: Self::reporter(ctx),
                        },
                        self.span.clone(),
                    );
                }
                Effect::Undo { job, steps, spec } => {
                    let process = self.res.process.clone();
                    let exit = self.res.exit.clone();
                    let ctx2 = undo::UndoCtx {
                        name: self.name.clone(),
                        paths: self.paths.clone(),
                        store: self.store.clone(),
                        node: self.node.clone(),
                        spec: spec.map(|s| *s),
                        process,
                        exit,
                    };
                    let report = Self::reporter(ctx);
                    actix::spawn(
                        async move {
                            undo::run(&ctx2, steps).await;
                            report.input(Input::UndoDone { job });
                        }
                        .instrument(self.span.clone()),
                    );
                }
                Effect::RecordPin(mask) => {
                    let paths = self.paths.clone();
                    let span = self.span.clone();
                    self.store.spawn(move || {
                        if let Err(e) = crate::store::runtime_file::set_cpu_mask(&paths, &mask) {
                            warn!(parent: &span, error = %e, "cannot record the pinning");
                        }
                    });
                }
                Effect::RecordHotplug(devices) => {
                    let paths = self.paths.clone();
                    let span = self.span.clone();
                    self.store.spawn(move || {
                        if let Err(e) = crate::store::runtime_file::set_hotplugged(&paths, &devices)
                        {
                            warn!(parent: &span, error = %e, "cannot record the plugged devices");
                        }
                    });
                }
                Effect::MigratedMarker(to) => {
                    let marker = self.paths.migrated_marker();
                    self.store.spawn(move || {
                        let _ = match to {
                            Some(to) => crate::store::files::write_atomic(&marker, to.as_bytes()),
                            None => crate::store::files::remove_file(&marker),
                        };
                    });
                }
                Effect::IncomingDone => {
                    let marker = self.paths.incoming_marker();
                    self.store.spawn(move || {
                        let _ = crate::store::files::remove_file(&marker);
                    });
                }
                Effect::ReleaseUid => crate::host::uidpool::release(&self.name),
                Effect::HoldUid(uid) => crate::host::uidpool::hold(uid, &self.name),
                Effect::Rewatch { gen } => {
                    warn!(parent: &self.span, gen, "cannot watch the adopted QEMU; looking again");
                    let after = self.node.health_interval;
                    ctx.run_later(after, |act, ctx| act.recover(ctx));
                }
            }
        }
        if publish {
            self.publish();
        }
    }

    fn answer(&mut self, ticket: Ticket, outcome: Outcome, info: VmInfo) {
        let reply = match outcome {
            Outcome::Accepted(job) => {
                if self.waiters.get(&ticket).is_some_and(|w| w.wait) {
                    return;
                }
                Ok(VmReply::Job(job))
            }
            Outcome::Ended(job) => Ok(VmReply::Job(job)),
            Outcome::Now(Ok(Answer::AlreadyStopped)) => Ok(VmReply::AlreadyStopped),
            Outcome::Now(Ok(Answer::StartCancelled)) => Ok(VmReply::StartCancelled),
            Outcome::Now(Ok(Answer::Cancelling(job))) => Ok(VmReply::Cancelling(job)),
            Outcome::Now(Ok(Answer::Unchanged)) => Ok(VmReply::Unchanged),
            Outcome::Now(Err(e)) => Err(e),
        };
        if let Some(w) = self.waiters.remove(&ticket) {
            // Through the store's queue: whatever the job wrote before (its job file cleared,
            // an exit record) is on disk before the client hears, so a kvmd killed right
            // after the answer never contradicts it on restart.
            let answer = reply.map(|reply| VmAnswer { reply, info });
            self.store.spawn(move || {
                let _ = w.tx.send(answer);
            });
        }
    }

    fn publish(&mut self) {
        let info = self.core.info();
        if self.published.as_ref().map(|p| p.state) != Some(info.state) {
            crate::metrics::set_state(
                self.name.as_str(),
                info.state.as_str(),
                info.state == crate::model::state::VmState::Unresponsive,
            );
        }
        if self.published.as_ref() != Some(&info) {
            self.published = Some(info.clone());
            self.supervisor.do_send(VmNotify(VmNotice::Updated(info)));
        }
        if self.core.retirable() {
            self.supervisor
                .do_send(VmNotify(VmNotice::Retirable(self.name.clone())));
        }
    }

    fn control_channel(&mut self, job: JobId) -> mpsc::UnboundedReceiver<TaskControl> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.controls.insert(job, tx);
        rx
    }

    fn spawn(&mut self, task: Task, ctx: &mut Context<Self>) {
        let report = Self::reporter(ctx);
        let span = self.span.clone();
        match task {
            Task::Start {
                job,
                gen,
                spec,
                paused,
                resume,
                undo,
                incoming,
                memory,
            } => {
                let control = self.control_channel(job);
                let existing = (self.res.gen == gen).then(|| {
                    (
                        self.res.process.clone(),
                        self.res.exit.clone(),
                        self.res.qmp.clone(),
                    )
                });
                let s = start::StartCtx {
                    job,
                    gen,
                    spec: *spec,
                    paused,
                    resume,
                    existing,
                    undo,
                    incoming,
                    memory,
                    node: self.node.clone(),
                    paths: self.paths.clone(),
                    store: self.store.clone(),
                    report,
                    control,
                };
                actix::spawn(start::run(s).instrument(span));
            }
            Task::Stop {
                job,
                gen,
                acpi,
                from,
                deadline_ms,
                kill_at_ms,
            } => {
                let control = self.control_channel(job);
                let (Some(process), Some(exit), true) = (
                    self.res.process.clone(),
                    self.res.exit.clone(),
                    self.res.gen == gen,
                ) else {
                    report.input(Input::StopDone {
                        job,
                        gen,
                        result: Err(super::error::VmError::NoProcess.to_api()),
                    });
                    return;
                };
                let s = stop::StopCtx {
                    job,
                    gen,
                    acpi,
                    from,
                    deadline_ms,
                    kill_at_ms,
                    resend: self.node.acpi_resend_interval,
                    sigterm_grace: Duration::from_secs(10),
                    sigkill_wait: Duration::from_secs(30),
                    process,
                    exit,
                    qmp: self.res.qmp.clone().filter(|q| !q.is_closed()),
                    control,
                    report,
                };
                actix::spawn(stop::run(s).instrument(span));
            }
            Task::HotplugAdd {
                job,
                gen,
                intent,
                others,
            } => {
                let qmp = self.res.qmp.clone().filter(|_| self.res.gen == gen);
                let env = self.nic_env(others.len());
                let journal = super::hotplug::Journal {
                    store: self.store.clone(),
                    paths: self.paths.clone(),
                    others,
                };
                actix::spawn(
                    async move {
                        let result = match qmp {
                            Some(q) => super::hotplug::add(&q, intent, &env, &journal)
                                .await
                                .map(crate::vm::core::HotChange::Added),
                            None => Err(no_qmp()),
                        };
                        report.input(Input::HotplugDone { job, gen, result });
                    }
                    .instrument(span),
                );
            }
            Task::HotplugReconcile { job, gen, records } => {
                let qmp = self.res.qmp.clone().filter(|_| self.res.gen == gen);
                let env = self.nic_env(0);
                actix::spawn(
                    async move {
                        let result = match qmp {
                            Some(q) => super::hotplug::reconcile(&q, records, &env)
                                .await
                                .map(crate::vm::core::HotChange::Reconciled),
                            None => Err(no_qmp()),
                        };
                        report.input(Input::HotplugDone { job, gen, result });
                    }
                    .instrument(span),
                );
            }
            Task::HotplugMod {
                job,
                gen,
                id,
                link_up,
            } => {
                let qmp = self.res.qmp.clone().filter(|_| self.res.gen == gen);
                actix::spawn(
                    async move {
                        let result = match qmp {
                            Some(q) => q
                                .set_link(&id, link_up)
                                .await
                                .map(|()| crate::vm::core::HotChange::Link(id, link_up))
                                .map_err(|e| super::error::VmError::Qmp(e).to_api()),
                            None => Err(no_qmp()),
                        };
                        report.input(Input::HotplugDone { job, gen, result });
                    }
                    .instrument(span),
                );
            }
            Task::HotplugDel { job, gen, record } => {
                let qmp = self.res.qmp.clone().filter(|_| self.res.gen == gen);
                let (tx, rx) = mpsc::channel(64);
                *self.tap.lock().expect("hotplug tap") = Some(tx);
                let tap = self.tap.clone();
                let env = self.nic_env(0);
                actix::spawn(
                    async move {
                        let result = match qmp {
                            Some(q) => {
                                super::hotplug::del(&q, rx, &record, &env)
                                    .await
                                    .map(|gone| {
                                        if gone {
                                            crate::vm::core::HotChange::Removed(record.id.clone())
                                        } else {
                                            crate::vm::core::HotChange::Pending(record.id.clone())
                                        }
                                    })
                            }
                            None => Err(no_qmp()),
                        };
                        super::migrate::close(&tap);
                        report.input(Input::HotplugDone { job, gen, result });
                    }
                    .instrument(span),
                );
            }
            Task::Balloon { job, gen, mib } => {
                let qmp = self.res.qmp.clone().filter(|_| self.res.gen == gen);
                let (tx, rx) = mpsc::channel(64);
                *self.tap.lock().expect("balloon tap") = Some(tx);
                let tap = self.tap.clone();
                actix::spawn(
                    async move {
                        let result = match qmp {
                            Some(q) => super::balloon::follow(&q, rx, mib)
                                .await
                                .map_err(|e| super::error::VmError::Qmp(e).to_api()),
                            None => Err(no_qmp()),
                        };
                        super::migrate::close(&tap);
                        report.input(Input::BalloonDone { job, gen, result });
                    }
                    .instrument(span),
                );
            }
            Task::Pin { job, gen, mask } => {
                let qmp = self.res.qmp.clone().filter(|_| self.res.gen == gen);
                let process = self.res.process.clone().filter(|_| self.res.gen == gen);
                let vcpus = self.core.running_spec().map_or(0, |s| s.vcpus);
                actix::spawn(
                    async move {
                        let result = match (qmp, process) {
                            (Some(q), Some(p)) => super::pin::live(&q, p.pid, vcpus, &mask)
                                .await
                                .map_err(|e| super::error::VmError::Pin(e).to_api()),
                            _ => Err(no_qmp()),
                        };
                        report.input(Input::QmpDone { job, gen, result });
                    }
                    .instrument(span),
                );
            }
            Task::Migrate {
                job,
                gen,
                uri,
                live,
                resume_on_failure,
                recover,
            } => self.migrate(job, gen, &uri, live, resume_on_failure, recover, ctx),
            Task::Qmp { job, gen, action } => {
                let qmp = self.res.qmp.clone().filter(|_| self.res.gen == gen);
                let resumed_at = self.resumed_at_us.clone();
                actix::spawn(
                    async move {
                        let result = match qmp {
                            None => Err(no_qmp()),
                            Some(q) => match action {
                                QmpAction::Pause => q.stop().await,
                                QmpAction::Resume => q.cont().await,
                                QmpAction::Reset => q.system_reset().await,
                                QmpAction::RunIncoming => {
                                    let r = migrate::run_incoming(&q).await.map_err(|e| e.to_api());
                                    if r.is_ok() {
                                        *resumed_at.lock().expect("resumed_at") =
                                            Some(crate::host::clock::now_us());
                                    }
                                    report.input(Input::QmpDone {
                                        job,
                                        gen,
                                        result: r,
                                    });
                                    return;
                                }
                            }
                            .map_err(|e| super::error::VmError::Qmp(e).to_api()),
                        };
                        report.input(Input::QmpDone { job, gen, result });
                    }
                    .instrument(span),
                );
            }
            Task::Cleanup { .. } | Task::DropIncoming { .. } => {
                let (job, restore) = match task {
                    Task::DropIncoming { job, restore } => (job, restore),
                    Task::Cleanup { job } => (job, None),
                    _ => return,
                };
                let paths = self.paths.clone();
                let done = self.store.run(move || match restore {
                    None => crate::store::files::remove_dir(&paths),
                    Some(rec) => crate::store::files::fresh_dir(&paths)
                        .and_then(|()| crate::store::runtime_file::record_exit(&paths, &rec)),
                });
                actix::spawn(async move {
                    let result = match done.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(ApiError::new(
                            ErrorCode::Internal,
                            format!("Cannot remove runtime files: {e}"),
                        )),
                        Err(e) => Err(super::error::VmError::Store(e).to_api()),
                    };
                    report.input(Input::CleanupDone { job, result });
                });
            }
        }
    }

    /// Look at the run dir (again): adopt a running QEMU or learn how it ended.
    fn recover(&mut self, ctx: &mut Context<Self>) {
        let report = Self::reporter(ctx);
        let gen = self.core.gen().max(self.res.gen) + 1;
        let r = recover::RecoverCtx {
            gen,
            paths: self.paths.clone(),
            store: self.store.clone(),
            node: self.node.clone(),
        };
        actix::spawn(
            async move {
                let found = recover::gather(r).await;
                report.recovered(found);
            }
            .instrument(self.span.clone()),
        );
    }

    fn on_qmp(
        &mut self,
        gen: u64,
        qmp: Qmp,
        notices: mpsc::Receiver<Notice>,
        ctx: &mut Context<Self>,
    ) {
        if gen != self.res.gen {
            let q = qmp.clone();
            actix::spawn(async move { q.close().await });
            return;
        }
        self.res.conn += 1;
        let conn = self.res.conn;
        if let Some(old) = self.res.qmp.replace(qmp) {
            actix::spawn(async move { old.close().await });
        }
        watching::forward_notices(
            gen,
            conn,
            notices,
            Self::reporter(ctx),
            self.tap.clone(),
            self.span.clone(),
        );
        self.feed(Input::QmpUp { gen, conn }, ctx);
    }

    /// The metrics sample: one QMP round and a few `/proc` reads, off the actor; skipped while
    /// the last one is still out.
    fn sample(&mut self, ctx: &mut Context<Self>) {
        if self.sample_in_flight {
            return;
        }
        self.sample_in_flight = true;
        let gen = self.res.gen;
        let migration = self
            .outgoing
            .as_ref()
            .map(|o| crate::metrics::MigrationSample {
                transferred_bytes: o.last.transferred,
                remaining_bytes: o.last.remaining,
                pass: o.last.pass,
                dirty_pages_rate: o.last.dirty_pages_rate,
            });
        let c = sample::SampleCtx {
            info: self.core.info(),
            qmp: self.res.qmp.clone().filter(|q| !q.is_closed()),
            guest_stats: self.node.balloon_stats_interval > 0,
            vcpus: self
                .vcpu_threads
                .as_ref()
                .filter(|(g, _)| *g == gen)
                .map(|(_, t)| t.clone()),
            migration,
        };
        ctx.spawn(
            sample::take(c)
                .instrument(self.span.clone())
                .into_actor(self)
                .map(move |(s, threads), act, _| {
                    act.sample_in_flight = false;
                    if let Some(t) = threads.filter(|t| !t.is_empty()) {
                        act.vcpu_threads = Some((gen, t));
                    }
                    crate::metrics::put_sample(s);
                }),
        );
    }

    fn health(&mut self, ctx: &mut Context<Self>) {
        if self.health_in_flight {
            return;
        }
        let Some(gen) = self.core.health_due().filter(|g| *g == self.res.gen) else {
            return;
        };
        self.health_in_flight = true;
        let h = watching::HealthCtx {
            gen,
            qmp: self.res.qmp.clone().filter(|q| !q.is_closed()),
            exit: self.res.exit.clone(),
            path: self.paths.qmp(),
            timeout: self.node.qmp_timeout,
            report: Self::reporter(ctx),
            guest_stats: self.node.balloon_stats_interval > 0,
        };
        ctx.spawn(
            watching::health(h)
                .instrument(self.span.clone())
                .into_actor(self)
                .map(|_, act, _| act.health_in_flight = false),
        );
    }

    /// Run an outgoing migration: the coordinator actor over this VM's QMP connection and
    /// its teed notices (or, for a migration a previous kvmd began, only settle it).
    #[allow(clippy::too_many_arguments)]
    fn migrate(
        &mut self,
        job: JobId,
        gen: u64,
        uri: &str,
        live: bool,
        resume_on_failure: bool,
        recover: bool,
        ctx: &mut Context<Self>,
    ) {
        let report = Self::reporter(ctx);
        let qmp = self
            .res
            .qmp
            .clone()
            .filter(|q| self.res.gen == gen && !q.is_closed());
        if recover {
            let span = self.span.clone();
            ctx.spawn(
                migrate::settle(qmp.clone(), resume_on_failure)
                    .instrument(span.clone())
                    .into_actor(self)
                    .map(move |summary, act, _| {
                        act.last_migration = Some(summary.clone());
                        actix::spawn(
                            async move {
                                let end = migrate::finish(qmp, &summary, resume_on_failure).await;
                                report.input(Input::MigrateDone { job, gen, end });
                            }
                            .instrument(span),
                        );
                    }),
            );
            return;
        }
        let Some(qmp) = qmp else {
            report.input(Input::MigrateDone {
                job,
                gen,
                end: crate::vm::core::MigrateEnd {
                    outcome: crate::vm::core::MigrateOutcome::Failed(
                        "no QMP connection to this VM's QEMU".into(),
                    ),
                    running: None,
                    postcopy: false,
                },
            });
            return;
        };
        let hv = self
            .core
            .running_spec()
            .map(|s| s.effective_hvparams(&self.node))
            .unwrap_or_else(|| self.node.hvparams_with(&Default::default()));
        let plan = migrate::plan(&hv, &self.node, uri, live);
        let (tx, rx) = mpsc::channel(crate::qmp::NOTICE_CAPACITY);
        *self.tap.lock().expect("migration tap") = Some(tx);
        let coordinator = {
            let _entered = self.span.enter();
            Coordinator::new(qmp, rx, plan, ctx.address().recipient()).start()
        };
        // A cancel of the job goes to the coordinator.
        let mut control = self.control_channel(job);
        let c = coordinator.clone();
        actix::spawn(async move {
            while let Some(m) = control.recv().await {
                if m == TaskControl::Cancel {
                    let accepted = c.send(coordinator::Cancel).await.unwrap_or(false);
                    if !accepted {
                        warn!("the migration could not be cancelled (postcopy runs, or it ended)");
                    }
                }
            }
        });
        self.last_migration = None;
        self.outgoing = Some(Outgoing {
            job,
            gen,
            resume_on_failure,
            coordinator,
            last: coordinator::Progress::default(),
        });
    }

    /// What a hot-plugged tap NIC's hooks need (`plugged`: devices plugged before it).
    fn nic_env(&self, plugged: usize) -> super::hotplug::NicEnv {
        let spec = self.core.running_spec();
        let hv = spec.map(|s| s.effective_hvparams(&self.node));
        super::hotplug::NicEnv {
            instance: self.name.clone(),
            index: spec.map_or(0, |s| s.nics.len()) + plugged,
            node: self.node.clone(),
            vnet_hdr: hv
                .as_ref()
                .is_none_or(|h| h.bool(crate::model::hvparams::key::VNET_HDR)),
            pci_reservations: hv.as_ref().map_or(12, |h| {
                u8::try_from(h.int(crate::model::hvparams::key::KVM_PCI_RESERVATIONS)).unwrap_or(32)
            }),
        }
    }

    /// The progress tick: the coordinator's figures become the job's phase and progress.
    fn migration_progress(&mut self, ctx: &mut Context<Self>) {
        let Some(o) = self.outgoing.as_ref() else {
            return;
        };
        let (job, c) = (o.job, o.coordinator.clone());
        ctx.spawn(
            async move { c.send(GetProgress).await.ok() }
                .into_actor(self)
                .map(move |p, act, ctx| {
                    let Some(p) = p else { return };
                    let Some(o) = act.outgoing.as_mut().filter(|o| o.job == job) else {
                        return;
                    };
                    if o.last == p {
                        return;
                    }
                    o.last = p.clone();
                    let status = p
                        .status
                        .as_ref()
                        .map_or("setup".to_string(), |s| s.to_string());
                    // A stall shows in the job's phase (and so in the events), except once
                    // postcopy runs: that phase is what a cancel is refused on.
                    let phase = if p.stalled_for.is_some() && !status.starts_with("postcopy") {
                        "stalled".to_string()
                    } else {
                        status
                    };
                    act.feed(
                        Input::Phase {
                            job,
                            phase,
                            deadline_ms: None,
                            progress: Some(crate::api::Progress {
                                done: p.transferred,
                                total: p.total,
                                unit: "bytes".into(),
                            }),
                            undo: None,
                        },
                        ctx,
                    );
                }),
        );
    }

    /// What `migration-status` shows.
    fn migration_report(&self) -> MigrationReport {
        let summary = self.last_migration.as_ref().map(summary_of);
        let resumed_at_us = *self.resumed_at_us.lock().expect("resumed_at");
        let Some(o) = self.outgoing.as_ref() else {
            // No coordinator runs, but a job may still decide the migration: a restarted
            // kvmd settling one, or reading the run dir first.
            let busy = self.core.job_info().and_then(|j| match j.kind {
                crate::model::job::Operation::Migrate => Some((j.id, "settling")),
                crate::model::job::Operation::Recovery => Some((j.id, "recovering")),
                _ => None,
            });
            if let Some((id, status)) = busy {
                return MigrationReport {
                    status: status.into(),
                    job: Some(id),
                    resumed_at_us,
                    ..MigrationReport::default()
                };
            }
            let status = summary
                .as_ref()
                .map_or("none".to_string(), |s| s.outcome.clone());
            return MigrationReport {
                status,
                transferred: summary.as_ref().map_or(0, |s| s.transferred),
                pass: summary.as_ref().map_or(0, |s| s.passes),
                summary,
                resumed_at_us,
                ..MigrationReport::default()
            };
        };
        let p = &o.last;
        MigrationReport {
            status: p
                .status
                .as_ref()
                .map_or("setup".to_string(), |s| s.to_string()),
            job: Some(o.job),
            transferred: p.transferred,
            remaining: p.remaining,
            total: p.total,
            speed_bps: mbps_to_bytes(p.mbps),
            dirty_pages_rate: p.dirty_pages_rate,
            pass: p.pass,
            downtime_limit_ms: p.downtime_limit_ms,
            stalled_ms: p
                .stalled_for
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            elapsed_ms: p.elapsed_ms,
            summary: None,
            resumed_at_us,
        }
    }

    fn rotate_serial_log(&mut self) {
        if !self.core.has_qemu() {
            return;
        }
        let (log, max, keep) = (
            self.paths.serial_log(),
            self.node.serial_log_max_bytes,
            self.node.serial_log_keep_bytes,
        );
        let span = self.span.clone();
        self.store.spawn(move || {
            match crate::store::serial_log::rotate_if_needed(&log, max, keep) {
                Ok(Some(dropped)) => debug!(parent: &span, dropped, "serial.log rotated"),
                Ok(None) => {}
                Err(e) => debug!(parent: &span, error = %e, "cannot rotate serial.log"),
            }
        });
    }
}

fn log_job_end(span: &tracing::Span, job: &JobInfo) {
    use crate::api::JobOutcome;
    let result = match &job.outcome {
        Some(JobOutcome::Failed(_)) => "failed",
        Some(JobOutcome::Cancelled { .. }) => "cancelled",
        _ => "succeeded",
    };
    #[allow(clippy::cast_precision_loss)] // milliseconds far below 2^53
    let seconds = job.ended_at_ms.map_or(0.0, |end| {
        end.saturating_sub(job.started_at_ms) as f64 / 1000.0
    });
    crate::metrics::stats().job_ended(&job.kind.to_string(), result, seconds);
    match &job.outcome {
        Some(JobOutcome::Failed(e)) => {
            warn!(parent: span, job = %job.id, kind = %job.kind, error = %crate::model::text::escape(&e.message), "job failed")
        }
        Some(JobOutcome::Cancelled { reason }) => {
            info!(parent: span, job = %job.id, kind = %job.kind, reason = %crate::model::text::escape(reason), "job cancelled")
        }
        _ => info!(parent: span, job = %job.id, kind = %job.kind, "job done"),
    }
}

/// How QEMU ended, in kvmd's log: a crash is a warning, anything else is news.
fn log_exit(span: &tracing::Span, record: &ExitRecord) {
    let reason = crate::model::text::escape(&record.reason);
    if record.kind == ExitKind::Crashed {
        warn!(parent: span, pid = record.pid, code = ?record.exit_code, signal = ?record.signal, %reason, "QEMU crashed");
    } else {
        info!(parent: span, pid = record.pid, kind = ?record.kind, %reason, "QEMU exited");
    }
}

/// An actor's state is not for printing: its instance name says which one it is.
impl std::fmt::Debug for VmActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmActor")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Actor for VmActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.publish();
        self.recover(ctx);
        ctx.run_interval(self.node.health_interval, |act, ctx| act.health(ctx));
        ctx.run_interval(self.node.metrics_interval, |act, ctx| act.sample(ctx));
        ctx.run_interval(Duration::from_secs(1), |act, _| act.rotate_serial_log());
        ctx.run_interval(Duration::from_millis(500), |act, ctx| {
            act.migration_progress(ctx)
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        crate::metrics::forget(self.name.as_str());
    }
}

impl Handler<Ask> for VmActor {
    type Result = ResponseFuture<Result<VmAnswer, ApiError>>;

    fn handle(&mut self, Ask { ask, wait }: Ask, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.waiters.insert(ticket, Waiter { wait, tx });
        let request = match ask {
            VmAsk::StartDefined {
                spec,
                paused,
                memory,
            } => Some(Request::Start {
                paused,
                memory,
                check: None,
                spec: Some(spec),
            }),
            VmAsk::Start { paused, memory } => Some(Request::Start {
                paused,
                memory,
                spec: None,
                check: self.syntax_check(),
            }),
            VmAsk::Stop { timeout, force } => Some(Request::Stop { timeout, force }),
            VmAsk::Reboot { timeout } => {
                // The node checks too (kernel, disks, bridges...), off the actor: a reboot
                // that could not start again stops nothing.
                let check = self.syntax_check();
                let spec = self.core.spec().cloned();
                let node = self.node.clone();
                let report = Self::reporter(ctx);
                actix::spawn(async move {
                    let check = match (check, spec) {
                        (Some(e), _) => Some(e),
                        (None, None) => None,
                        (None, Some(spec)) => tokio::task::spawn_blocking(move || {
                            let hv: HvParams = spec.effective_hvparams(&node);
                            let errs = crate::host::validate::files(&spec, &hv);
                            (!errs.is_empty()).then(|| ApiError::invalid(errs))
                        })
                        .await
                        .unwrap_or(None),
                    };
                    report.request(ticket, Request::Reboot { timeout, check });
                });
                None
            }
            VmAsk::Reset => Some(Request::Reset),
            VmAsk::Pause => Some(Request::Pause),
            VmAsk::Resume => Some(Request::Resume),
            VmAsk::Cleanup => Some(Request::Cleanup),
            VmAsk::Cancel { id } => Some(Request::Cancel { id }),
            VmAsk::Migrate { uri, live } => Some(Request::Migrate { uri, live }),
            VmAsk::Accept { spec, incoming } => Some(Request::Accept { spec, incoming }),
            VmAsk::FinalizeSrc { success } => Some(Request::FinalizeSrc { success }),
            VmAsk::FinalizeDst { success } => Some(Request::FinalizeDst { success }),
            VmAsk::MigrateCancel => Some(Request::MigrateCancel),
            VmAsk::Pin { mask } => Some(Request::Pin { mask }),
            VmAsk::Balloon { mib } => Some(Request::Balloon { mib }),
            VmAsk::HotplugAdd { device } => Some(Request::HotplugAdd { device }),
            VmAsk::HotplugDel { id } => Some(Request::HotplugDel { id }),
            VmAsk::HotplugMod { id, link_up } => Some(Request::HotplugMod { id, link_up }),
        };
        if let Some(r) = request {
            self.feed_request(ticket, r, ctx);
        }
        Box::pin(async move {
            rx.await.map_err(|_| {
                ApiError::new(
                    ErrorCode::Internal,
                    "The VM actor went away before answering",
                )
            })?
        })
    }
}

impl Handler<Manage> for VmActor {
    type Result = ();

    fn handle(&mut self, m: Manage, ctx: &mut Context<Self>) {
        match m {
            Manage::SetSpec { spec, autostart } => {
                self.feed(Input::SetSpec { spec, autostart }, ctx)
            }
            Manage::Retire => ctx.stop(),
        }
    }
}

impl Handler<GetMigration> for VmActor {
    type Result = MessageResult<GetMigration>;

    fn handle(&mut self, _: GetMigration, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.migration_report())
    }
}

impl Handler<Ended> for VmActor {
    type Result = ();

    /// The coordinator ended: settle the source guest, then tell the core.
    fn handle(&mut self, Ended(summary): Ended, ctx: &mut Context<Self>) {
        migrate::close(&self.tap);
        let Some(o) = self.outgoing.take() else {
            return;
        };
        info!(parent: &self.span, outcome = ?summary.outcome, total_ms = ?summary.total_time_ms, downtime_ms = ?summary.downtime_ms, path = summary.path.as_str(), "migration ended");
        let qmp = self.res.qmp.clone().filter(|_| self.res.gen == o.gen);
        let (job, gen, resume) = (o.job, o.gen, o.resume_on_failure);
        ctx.spawn(
            async move {
                // QEMU did not say how it ended: find out (cancel unless it completed or runs
                // postcopy) before anything is decided about the guest.
                let summary = match summary.outcome {
                    coordinator::Outcome::Unknown(_) => {
                        let settled = migrate::settle(qmp.clone(), resume).await;
                        Summary {
                            outcome: settled.outcome,
                            postcopy_started: settled.postcopy_started || summary.postcopy_started,
                            ..summary
                        }
                    }
                    _ => summary,
                };
                let end = migrate::finish(qmp, &summary, resume).await;
                (summary, end)
            }
            .instrument(self.span.clone())
            .into_actor(self)
            .map(move |(summary, end), act, ctx| {
                // The summary says what the job says.
                let outcome = match &end.outcome {
                    crate::vm::core::MigrateOutcome::Completed => coordinator::Outcome::Completed,
                    crate::vm::core::MigrateOutcome::Cancelled(_) => {
                        coordinator::Outcome::Cancelled
                    }
                    crate::vm::core::MigrateOutcome::Failed(w) => {
                        coordinator::Outcome::Failed(w.clone())
                    }
                    crate::vm::core::MigrateOutcome::Unknown(w) => {
                        coordinator::Outcome::Unknown(w.clone())
                    }
                };
                act.last_migration = Some(summary.with_outcome(outcome));
                act.feed(Input::MigrateDone { job, gen, end }, ctx);
            }),
        );
    }
}

impl Handler<GetJob> for VmActor {
    type Result = Option<JobInfo>;

    fn handle(&mut self, _: GetJob, _: &mut Context<Self>) -> Self::Result {
        self.core.job_info()
    }
}

impl Handler<Internal> for VmActor {
    type Result = ();

    fn handle(&mut self, msg: Internal, ctx: &mut Context<Self>) {
        match msg {
            Internal::Input(input) => self.feed(input, ctx),
            Internal::Request { ticket, request } => self.feed_request(ticket, request, ctx),
            Internal::Process { gen, process, exit } => {
                if gen <= self.res.gen && self.res.process.is_some() {
                    return; // stale
                }
                self.res = Resources {
                    gen,
                    process: Some(process),
                    exit: Some(exit.clone()),
                    qmp: None,
                    conn: 0,
                };
                watching::forward_exit(gen, exit, Self::reporter(ctx));
            }
            Internal::Qmp { gen, qmp, notices } => self.on_qmp(gen, qmp, notices, ctx),
            Internal::Recovered(found) => {
                let recover::Found { facts, adopted } = *found;
                let gen = facts.gen;
                if let Some(a) = adopted {
                    // The handles first: the core may resume a job that needs them at once.
                    let (qmp, notices) = match a.qmp {
                        Some((q, n)) => (Some(q), Some(n)),
                        None => (None, None),
                    };
                    self.res = Resources {
                        gen,
                        process: Some(a.process),
                        exit: Some(a.exit.clone()),
                        conn: u64::from(qmp.is_some()),
                        qmp,
                    };
                    let connected = notices.is_some();
                    self.feed(Input::Recovered(facts_with_conn(facts, connected)), ctx);
                    if let Some(notices) = notices {
                        watching::forward_notices(
                            gen,
                            1,
                            notices,
                            Self::reporter(ctx),
                            self.tap.clone(),
                            self.span.clone(),
                        );
                    }
                    watching::forward_exit(gen, a.exit, Self::reporter(ctx));
                } else {
                    self.feed(Input::Recovered(facts), ctx);
                }
            }
        }
    }
}

/// QEMU's megabits per second as whole bytes per second (0 for nonsense).
fn mbps_to_bytes(mbps: f64) -> u64 {
    let b = (mbps * 125_000.0).round();
    if (0.0..1e18).contains(&b) {
        // In range and whole: exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let v = b as u64;
        v
    } else {
        0
    }
}

/// The error of a task whose QEMU has no QMP connection.
fn no_qmp() -> ApiError {
    ApiError::new(
        ErrorCode::Unresponsive,
        "No QMP connection to this VM's QEMU",
    )
}

/// The wire account of a coordinator's summary.
fn summary_of(s: &Summary) -> MigrationSummary {
    let (outcome, reason) = match &s.outcome {
        coordinator::Outcome::Completed => ("completed", None),
        coordinator::Outcome::Cancelled => ("cancelled", None),
        coordinator::Outcome::Failed(why) => ("failed", Some(why.clone())),
        coordinator::Outcome::Unknown(why) => ("unknown", Some(why.clone())),
    };
    MigrationSummary {
        outcome: outcome.into(),
        reason,
        total_time_ms: s.total_time_ms,
        downtime_ms: s.downtime_ms,
        transferred: s.transferred,
        passes: s.passes,
        path: s.path.as_str().into(),
        downtime_limit_ms: s.downtime_limit_ms,
        stopped_at_us: s.stopped_at_us,
        seen_after_us: s.seen_after_us,
        kvmd_measured: s.own_figures,
    }
}

/// The adopted QEMU's QMP connection is number 1 of its generation.
fn facts_with_conn(mut facts: RecoveryFacts, connected: bool) -> RecoveryFacts {
    if let crate::vm::core::FoundQemu::Adopted { conn, .. } = &mut facts.qemu {
        *conn = connected.then_some(1);
    }
    facts
}
