//! The root supervisor actor: owns the config, one VM actor per instance, the table of their
//! last published states (from which `list` and `info` are answered without asking any VM
//! actor, so a wedged QEMU never slows them), and the job table (`jobs`, `job`, `cancel`).
//!
//! It routes operations to VM actors, applies config reloads (new instances, changed
//! definitions, autostart), and rebuilds a VM actor whose mailbox closed (a panicked actor)
//! from runtime state.
//!
//! Invariant: never awaits inside a handler on behalf of a VM; forwarding happens in futures
//! that do not hold the actor. Only the handle ([`SupervisorHandle`]) is seen outside.

mod handle;
mod jobs;
mod node;
mod reply;
mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use crate::api::{
    ApiError, ApiReply, ApiRequest, DaemonEvent, ErrorCode, EventKind, JobRef, VmInfo,
};
use crate::config::Config;
use crate::events::EventBus;
use crate::host::clock::now_ms;
use crate::host::process;
use crate::model::job::Operation;
use crate::model::name::InstanceName;
use crate::model::spec::NodeConfig;
use crate::store::Store;
use crate::vm::{JobIds, VmAsk, VmHandle, VmNotice, VmNotify, VmSetup};

pub use handle::SupervisorHandle;

/// Everything the supervisor can be asked.
#[derive(Message)]
#[rtype(result = "Result<ApiReply, ApiError>")]
pub(crate) struct Call(pub ApiRequest);

/// A new config, read by a reload (SIGHUP or the `reload` request).
#[derive(Message)]
#[rtype(result = "Result<ApiReply, ApiError>")]
struct ApplyConfig(Config);

/// The VM actor of `name`, made if there is none (an accepted migration's instance).
#[derive(Message)]
#[rtype(result = "VmHandle")]
struct EnsureVm(InstanceName);

/// Record that another engine owns an instance (its run dir's `managed-by` marker).
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
struct Managed(InstanceName, String);

/// Like `Call`, but answered from the current table even while VMs are recovering.
#[derive(Message)]
#[rtype(result = "Result<ApiReply, ApiError>")]
struct CallNow(ApiRequest);

struct Entry {
    vm: VmHandle,
    info: VmInfo,
    /// The engine that defines this instance per start (the run dir's `managed-by`).
    managed_by: Option<String>,
}

pub struct Supervisor {
    config: Config,
    node: Arc<NodeConfig>,
    store: Store,
    bus: EventBus,
    ids: JobIds,
    vms: BTreeMap<InstanceName, Entry>,
    jobs: jobs::JobTable,
    /// How many VM actors are still recovering their state from the run dir.
    recovering: tokio::sync::watch::Sender<usize>,
    /// Instances made for an incoming migration whose accept job has not begun yet: not
    /// forgotten for being out of the config and empty.
    arriving: BTreeSet<InstanceName>,
}

impl Supervisor {
    fn new(config: Config, store: Store, bus: EventBus, ids: JobIds) -> Self {
        Self {
            node: Arc::new(config.node.clone()),
            config,
            store,
            bus,
            ids,
            vms: BTreeMap::new(),
            jobs: jobs::JobTable::new(256),
            recovering: tokio::sync::watch::Sender::new(0),
            arriving: BTreeSet::new(),
        }
    }

    fn spawn_vm(&mut self, name: InstanceName, autostart: bool, ctx: &mut Context<Self>) {
        let spec = self.config.instances.get(&name).cloned();
        let placeholder = VmInfo {
            name: name.clone(),
            state: crate::model::state::VmState::Stopped,
            pid: None,
            memory_mib: spec.as_ref().map_or(0, |s| s.memory),
            vcpus: spec.as_ref().map_or(0, |s| s.vcpus),
            cpu_time_ms: None,
            uptime_s: None,
            started_at_ms: None,
            qemu_version: None,
            autostart: spec.as_ref().is_some_and(|s| s.autostart),
            in_config: spec.is_some(),
            pending_changes: false,
            job: Some(crate::api::JobSummary {
                id: crate::model::job::JobId(0),
                kind: Operation::Recovery,
                phase: "reading the run dir".into(),
            }),
            last_exit: None,
            cpu_mask: None,
            balloon: None,
            hardware: None,
            guest_memory: None,
            managed_by: None,
        };
        let vm = crate::vm::spawn(VmSetup {
            name: name.clone(),
            spec,
            node: self.node.clone(),
            store: self.store.clone(),
            bus: self.bus.clone(),
            supervisor: ctx.address().recipient(),
            ids: self.ids.clone(),
            autostart,
        });
        let managed_by = self
            .vms
            .get(&name)
            .and_then(|e| e.managed_by.clone())
            .or_else(|| {
                // A kvmd restart: the marker in the run dir says who owns it.
                let marker =
                    crate::model::layout::RunPaths::new(&self.node.run_dir, &name).managed_by();
                std::fs::read_to_string(marker)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            });
        self.vms.insert(
            name,
            Entry {
                vm,
                info: VmInfo {
                    managed_by: managed_by.clone(),
                    ..placeholder
                },
                managed_by,
            },
        );
        self.count_recovering();
    }

    fn count_recovering(&self) {
        let n = self
            .vms
            .values()
            .filter(|e| {
                e.info
                    .job
                    .as_ref()
                    .is_some_and(|j| j.kind == Operation::Recovery)
            })
            .count();
        self.recovering
            .send_if_modified(|c| std::mem::replace(c, n) != n);
    }

    fn lookup(&self, name: &InstanceName) -> Result<VmHandle, ApiError> {
        self.vms
            .get(name)
            .map(|e| e.vm.clone())
            .ok_or_else(|| ApiError::not_found(name))
    }

    /// Rebuild VM actors whose mailbox closed (a panic inside the actor).
    fn check_actors(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<_> = self
            .vms
            .iter()
            .filter(|(_, e)| !e.vm.alive())
            .map(|(n, _)| n.clone())
            .collect();
        for name in dead {
            warn!(%name, "VM actor died; rebuilding it from runtime state");
            crate::metrics::stats().actor_restarted();
            self.spawn_vm(name, false, ctx);
        }
    }
}

/// Live numbers that are not part of the published state: CPU time (from /proc) and uptime.
fn live(mut info: VmInfo) -> VmInfo {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(process::clock_ticks);
    if let Some(pid) = info.pid {
        if let Ok(st) = process::read_stat(pid) {
            info.cpu_time_ms = Some(st.cpu_ticks * 1000 / ticks);
        }
    }
    if let Some(at) = info.started_at_ms.filter(|_| info.state.has_process()) {
        info.uptime_s = Some(now_ms().saturating_sub(at) / 1000);
    }
    info
}

/// [`live`] for lists: the CPU time as of the VM's last metrics sample (taken off the
/// supervisor every `metrics_interval_ms`), so listing 100 VMs reads no file; a QEMU not
/// sampled yet is read once here.
fn sampled(info: VmInfo, samples: &BTreeMap<String, crate::metrics::VmSample>) -> VmInfo {
    let cpu = samples
        .get(info.name.as_str())
        .filter(|s| s.pid.is_some() && s.pid == info.pid)
        .and_then(|s| s.cpu_seconds);
    let Some(cpu) = cpu else {
        return live(info);
    };
    let mut info = info;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    // CPU seconds: small, positive
    let cpu_ms = (cpu * 1000.0).max(0.0) as u64;
    info.cpu_time_ms = Some(cpu_ms);
    if let Some(at) = info.started_at_ms.filter(|_| info.state.has_process()) {
        info.uptime_s = Some(now_ms().saturating_sub(at) / 1000);
    }
    info
}

/// The instance directories under the run dir (names validated; others ignored).
fn instances_on_disk(run_dir: &std::path::Path) -> Vec<InstanceName> {
    let Ok(rd) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| InstanceName::parse(&e.file_name().to_string_lossy()).ok())
        .collect()
}

/// An actor's state is not for printing: which config it serves says which supervisor it is.
impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("config", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut names: BTreeSet<InstanceName> = self.config.instances.keys().cloned().collect();
        names.extend(instances_on_disk(&self.node.run_dir));
        info!(instances = names.len(), "supervisor started");
        for name in names {
            self.spawn_vm(name, true, ctx);
        }
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.check_actors(ctx));
    }
}

impl Handler<VmNotify> for Supervisor {
    type Result = ();
    fn handle(&mut self, VmNotify(notice): VmNotify, _: &mut Context<Self>) {
        match notice {
            VmNotice::Updated(info) => {
                if let Some(e) = self.vms.get_mut(&info.name) {
                    e.info = VmInfo {
                        managed_by: e.managed_by.clone(),
                        ..info
                    };
                }
            }
            VmNotice::Job(job) => {
                if job.kind == Operation::Accept {
                    self.arriving.remove(&job.instance);
                }
                self.jobs.update(job)
            }
            VmNotice::Retirable(name) => {
                if !self.config.instances.contains_key(&name) && !self.arriving.contains(&name) {
                    if let Some(e) = self.vms.remove(&name) {
                        info!(%name, "instance no longer in the config and cleaned up: forgotten");
                        e.vm.retire();
                    }
                }
            }
        }
        self.count_recovering();
    }
}

type Reply = ResponseFuture<Result<ApiReply, ApiError>>;

fn ready(r: Result<ApiReply, ApiError>) -> Reply {
    Box::pin(async move { r })
}

/// A reply that needs blocking work (files, the probe), off the actor.
fn blocking(f: impl FnOnce() -> Result<ApiReply, ApiError> + Send + 'static) -> Reply {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
    })
}

impl Handler<Call> for Supervisor {
    type Result = Reply;

    fn handle(&mut self, Call(req): Call, ctx: &mut Context<Self>) -> Reply {
        if matches!(req, ApiRequest::List { .. } | ApiRequest::Info { .. })
            && *self.recovering.borrow() > 0
        {
            // Right after kvmd starts, VM actors are still looking at the run dir: answer once
            // they know whether their QEMU is running (bounded; a wedged QEMU takes its QMP
            // deadline at most).
            let (mut rx, me) = (self.recovering.subscribe(), ctx.address());
            return Box::pin(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n == 0)).await;
                me.send(CallNow(req))
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            });
        }
        self.answer(req, ctx)
    }
}

impl Handler<CallNow> for Supervisor {
    type Result = Reply;
    fn handle(&mut self, CallNow(req): CallNow, ctx: &mut Context<Self>) -> Reply {
        self.answer(req, ctx)
    }
}

impl Supervisor {
    /// Ask one VM and shape its answer into the reply.
    fn ask(&self, name: &InstanceName, ask: VmAsk, wait: bool) -> Reply {
        let vm = match self.lookup(name) {
            Ok(vm) => vm,
            Err(e) => return ready(Err(e)),
        };
        let name = name.clone();
        let managed_by = self.vms.get(&name).and_then(|e| e.managed_by.clone());
        Box::pin(async move {
            let answer = vm.ask(ask, wait).await?;
            reply::reply_of(&name, answer, |i| VmInfo {
                managed_by: managed_by.clone(),
                ..live(i)
            })
        })
    }

    /// `start` with a definition: an instance another engine owns (Ganeti). Refused for a
    /// name the config file defines; the definition is checked like the config's; the run
    /// dir's `managed-by` marker is written before the start, so a restarted kvmd knows.
    fn create(
        &mut self,
        name: InstanceName,
        definition: &str,
        managed_by: String,
        start: (bool, Option<u64>, bool),
        ctx: &mut Context<Self>,
    ) -> Reply {
        let (paused, memory, wait) = start;
        if self.config.instances.contains_key(&name) {
            return ready(Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("{name} is defined in kvmd's config file; a start with a definition is for instances another engine owns"),
            )));
        }
        let engine_ok = !managed_by.is_empty()
            && managed_by.len() <= 32
            && managed_by
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !engine_ok {
            return ready(Err(ApiError::invalid(vec![
                crate::model::field_error::FieldError::new(
                    "managed_by",
                    crate::model::text::escape_clipped(&managed_by, 40),
                    "must be 1-32 characters from a-z 0-9 -",
                ),
            ])));
        }
        let spec = match crate::config::parse_definition(&name, definition, &self.node) {
            Ok(s) => s,
            Err(errs) => return ready(Err(ApiError::invalid(errs))),
        };
        if !self.vms.contains_key(&name) {
            self.spawn_vm(name.clone(), false, ctx);
        }
        let Some(e) = self.vms.get_mut(&name) else {
            return ready(Err(ApiError::not_found(&name)));
        };
        e.managed_by = Some(managed_by.clone());
        e.info.managed_by = Some(managed_by.clone());
        let vm = e.vm.clone();
        let paths = crate::model::layout::RunPaths::new(&self.node.run_dir, &name);
        let (store, engine) = (self.store.clone(), managed_by.clone());
        Box::pin(async move {
            record_managed(&store, paths, engine).await?;
            let ask = VmAsk::StartDefined {
                spec: Box::new(spec),
                paused,
                memory,
            };
            let answer = vm.ask(ask, wait).await?;
            reply::reply_of(&name, answer, |i| VmInfo {
                managed_by: Some(managed_by.clone()),
                ..live(i)
            })
        })
    }

    fn answer(&mut self, req: ApiRequest, ctx: &mut Context<Self>) -> Reply {
        let stop_timeout = |t: Option<u64>| t.map(Duration::from_secs);
        match req {
            ApiRequest::Ping => ready(Ok(ApiReply::Pong {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })),
            // Many VMs: their CPU time from the metrics samples, no /proc read here.
            ApiRequest::List { all } => {
                ready(Ok(ApiReply::List(crate::metrics::with_samples(|s| {
                    self.vms
                        .values()
                        .filter(|e| all || e.info.state.has_process())
                        .map(|e| sampled(e.info.clone(), s))
                        .collect()
                }))))
            }
            ApiRequest::Info { name: None } => {
                ready(Ok(ApiReply::Info(crate::metrics::with_samples(|s| {
                    self.vms
                        .values()
                        .map(|e| sampled(e.info.clone(), s))
                        .collect()
                }))))
            }
            ApiRequest::Info { name: Some(n) } => ready(match self.vms.get(&n) {
                Some(e) => Ok(ApiReply::Info(vec![live(e.info.clone())])),
                None => Err(ApiError::not_found(&n)),
            }),
            ApiRequest::Start {
                name,
                paused,
                wait,
                memory,
            } => self.ask(&name, VmAsk::Start { paused, memory }, wait),
            ApiRequest::Stop {
                name,
                timeout_s,
                force,
                wait,
            } => self.ask(
                &name,
                VmAsk::Stop {
                    timeout: stop_timeout(timeout_s),
                    force,
                },
                wait,
            ),
            ApiRequest::Reboot {
                name,
                hard: true,
                wait,
                ..
            } => self.ask(&name, VmAsk::Reset, wait),
            ApiRequest::Reboot {
                name,
                timeout_s,
                wait,
                ..
            } => self.ask(
                &name,
                VmAsk::Reboot {
                    timeout: stop_timeout(timeout_s),
                },
                wait,
            ),
            ApiRequest::Pause { name } => self.ask(&name, VmAsk::Pause, true),
            ApiRequest::Resume { name } => self.ask(&name, VmAsk::Resume, true),
            ApiRequest::Cleanup { name } => self.ask(&name, VmAsk::Cleanup, true),
            ApiRequest::Jobs { name } => ready(match name {
                Some(n) if !self.vms.contains_key(&n) => Err(ApiError::not_found(&n)),
                n => Ok(ApiReply::Jobs(self.jobs.list(n.as_ref()))),
            }),
            ApiRequest::Job { target } => ready(match &target {
                JobRef::Id(id) => self.jobs.get(*id).map(ApiReply::Job).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::NotFound,
                        format!("No job {id} (it may be too old)"),
                    )
                }),
                JobRef::Instance(n) if !self.vms.contains_key(n) => Err(ApiError::not_found(n)),
                JobRef::Instance(n) => self.jobs.of(n).map(ApiReply::Job).ok_or_else(|| {
                    ApiError::new(ErrorCode::NotFound, format!("{n} has had no job yet"))
                }),
            }),
            ApiRequest::Cancel { id } => match self.jobs.get(id) {
                None => ready(Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("No job {id}"),
                ))),
                Some(job) => self.ask(&job.instance, VmAsk::Cancel { id }, true),
            },
            ApiRequest::MigrationInfo { name } => {
                let running = match self.vms.get(&name) {
                    None => return ready(Err(ApiError::not_found(&name))),
                    Some(e) => e.info.state.has_process(),
                };
                if !running {
                    return ready(Err(ApiError::new(
                        ErrorCode::NotRunning,
                        format!("{name} is not running"),
                    )));
                }
                let paths = crate::model::layout::RunPaths::new(&self.node.run_dir, &name);
                blocking(move || crate::migration::steps::migration_info(&paths))
            }
            ApiRequest::MigrationPreflight { info } => {
                let node = self.node.clone();
                blocking(move || crate::migration::steps::preflight_here(&info, &node))
            }
            ApiRequest::Accept {
                name,
                info,
                listen,
                wait,
            } => {
                let uri = match crate::migration::steps::tcp_uri("listen", &listen) {
                    Ok(u) => u,
                    Err(e) => return ready(Err(e)),
                };
                let (node, me) = (self.node.clone(), ctx.address());
                Box::pin(async move {
                    let n = name.clone();
                    let accepted = tokio::task::spawn_blocking(move || {
                        crate::migration::steps::accept_plan(&n, &info, &node)
                    })
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
                    let vm = me
                        .send(EnsureVm(name.clone()))
                        .await
                        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                    if let Some(engine) = accepted.managed_by.clone() {
                        me.send(Managed(name.clone(), engine))
                            .await
                            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
                    }
                    let ask = VmAsk::Accept {
                        spec: Box::new(accepted.spec),
                        incoming: crate::vm::core::IncomingPlan {
                            uri,
                            machine: accepted.machine,
                            capabilities: accepted.capabilities,
                            hotplug_ports: accepted.hotplug_ports,
                        },
                    };
                    let answer = vm.ask(ask, wait).await?;
                    reply::reply_of(&name, answer, live)
                })
            }
            ApiRequest::Migrate {
                name,
                target,
                live,
                wait,
            } => match crate::migration::steps::tcp_uri("target", &target) {
                Ok(uri) => self.ask(&name, VmAsk::Migrate { uri, live }, wait),
                Err(e) => ready(Err(e)),
            },
            ApiRequest::MigrationStatus { name } => {
                let vm = match self.lookup(&name) {
                    Ok(vm) => vm,
                    Err(e) => return ready(Err(e)),
                };
                let me = ctx.address();
                Box::pin(async move {
                    let migration = vm.migration().await?;
                    let info = me
                        .send(CallNow(ApiRequest::Info { name: Some(name) }))
                        .await
                        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
                    match info {
                        ApiReply::Info(mut v) if !v.is_empty() => Ok(ApiReply::MigrationStatus {
                            info: v.remove(0),
                            migration: Box::new(migration),
                        }),
                        _ => Err(ApiError::new(ErrorCode::Internal, "the instance vanished")),
                    }
                })
            }
            ApiRequest::FinalizeDst { name, success } => {
                self.ask(&name, VmAsk::FinalizeDst { success }, true)
            }
            ApiRequest::FinalizeSrc { name, success } => {
                self.ask(&name, VmAsk::FinalizeSrc { success }, true)
            }
            ApiRequest::MigrateCancel { name } => self.ask(&name, VmAsk::MigrateCancel, true),
            ApiRequest::Pin { name, mask } => {
                if let Err(why) = crate::model::hvparams::parse_cpu_mask(&mask) {
                    return ready(Err(ApiError::invalid(vec![
                        crate::model::field_error::FieldError::new(
                            "mask",
                            crate::model::text::escape(&mask).into_owned(),
                            why,
                        ),
                    ])));
                }
                self.ask(&name, VmAsk::Pin { mask }, true)
            }
            ApiRequest::Balloon { name, mib } => self.ask(&name, VmAsk::Balloon { mib }, true),
            ApiRequest::HotplugAdd { name, device } => match node::checked_device(&name, device) {
                Ok(device) => self.ask(&name, VmAsk::HotplugAdd { device }, true),
                Err(e) => ready(Err(e)),
            },
            ApiRequest::HotplugDel { name, id } => self.ask(&name, VmAsk::HotplugDel { id }, true),
            ApiRequest::HotplugMod { name, id, link_up } => {
                self.ask(&name, VmAsk::HotplugMod { id, link_up }, true)
            }
            ApiRequest::Console { name, write } => ready(match self.vms.get(&name) {
                None => Err(ApiError::not_found(&name)),
                Some(e) if e.info.state.has_process() => Ok(ApiReply::Console {
                    name,
                    writer: write,
                }),
                Some(e) => Err(ApiError::new(
                    ErrorCode::NotRunning,
                    format!("{name} has no QEMU (it is {})", e.info.state.as_str()),
                )),
            }),
            ApiRequest::ConsoleInfo { name } => {
                if !self.vms.contains_key(&name) {
                    return ready(Err(ApiError::not_found(&name)));
                }
                let paths = crate::model::layout::RunPaths::new(&self.node.run_dir, &name);
                let socket = self.node.socket.clone();
                blocking(move || node::console_info(&name, &paths, &socket))
            }
            ApiRequest::Create {
                name,
                definition,
                managed_by,
                paused,
                wait,
                memory,
            } => self.create(name, &definition, managed_by, (paused, memory, wait), ctx),
            ApiRequest::Stats { name } => {
                if let Some(n) = name.as_ref().filter(|n| !self.vms.contains_key(*n)) {
                    return ready(Err(ApiError::not_found(n)));
                }
                let stats = crate::metrics::samples()
                    .iter()
                    .filter(|s| name.as_ref().is_none_or(|n| n.as_str() == s.name))
                    .filter(|s| {
                        crate::model::name::InstanceName::parse(&s.name)
                            .is_ok_and(|n| self.vms.contains_key(&n))
                    })
                    .map(stats::summary)
                    .collect();
                ready(Ok(ApiReply::Stats(stats)))
            }
            ApiRequest::NodeInfo => {
                let running: Vec<&VmInfo> = self
                    .vms
                    .values()
                    .map(|e| &e.info)
                    .filter(|i| i.state.has_process())
                    .collect();
                let used = running.iter().map(|i| i.memory_mib).sum::<u64>();
                let count = u32::try_from(running.len()).unwrap_or(u32::MAX);
                let (node, config) = (self.node.clone(), self.config.path.clone());
                blocking(move || {
                    Ok(ApiReply::NodeInfo(Box::new(node::info(
                        &node, &config, used, count,
                    ))))
                })
            }
            ApiRequest::NodeVerify => {
                let owned: crate::host::node::Owned = self
                    .vms
                    .iter()
                    .map(|(n, e)| (n.to_string(), e.info.pid))
                    .collect();
                let (node, config) = (self.node.clone(), self.config.path.clone());
                blocking(move || {
                    Ok(ApiReply::NodeVerified(
                        crate::host::node::verify(&node, &config, &owned)
                            .into_iter()
                            .map(|f| crate::api::NodeFinding {
                                severity: f.severity.as_str().into(),
                                check: f.check,
                                detail: f.detail,
                            })
                            .collect(),
                    ))
                })
            }
            ApiRequest::NodePowercycle { yes } => ready(node::powercycle(yes)),
            ApiRequest::Subscribe { .. } => ready(Err(ApiError::new(
                ErrorCode::BadRequest,
                "subscribe is served by the connection itself",
            ))),
            ApiRequest::Reload => {
                let (path, me) = (self.config.path.clone(), ctx.address());
                Box::pin(async move {
                    let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
                        .await
                        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                    let config = loaded.map_err(|e| {
                        let mut err = ApiError::new(ErrorCode::ConfigError, e.to_string());
                        let mut cause = std::error::Error::source(&e);
                        while let Some(c) = cause {
                            err.details.push(c.to_string());
                            cause = c.source();
                        }
                        if let crate::config::ConfigError::Invalid { errors, .. } = e {
                            err.fields = errors.0;
                        }
                        err
                    })?;
                    me.send(ApplyConfig(config))
                        .await
                        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
                })
            }
        }
    }
}

impl Handler<EnsureVm> for Supervisor {
    type Result = MessageResult<EnsureVm>;

    fn handle(&mut self, EnsureVm(name): EnsureVm, ctx: &mut Context<Self>) -> Self::Result {
        if !self.vms.contains_key(&name) {
            info!(%name, "a VM arrives by migration");
            self.arriving.insert(name.clone());
            self.spawn_vm(name.clone(), false, ctx);
        }
        MessageResult(self.vms[&name].vm.clone())
    }
}

impl Handler<Managed> for Supervisor {
    type Result = ResponseFuture<Result<(), ApiError>>;

    fn handle(&mut self, Managed(name, engine): Managed, _: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.vms.get_mut(&name) {
            e.managed_by = Some(engine.clone());
            e.info.managed_by = Some(engine.clone());
        }
        let paths = crate::model::layout::RunPaths::new(&self.node.run_dir, &name);
        let store = self.store.clone();
        Box::pin(async move { record_managed(&store, paths, engine).await })
    }
}

/// Write the run dir's `managed-by` marker (the directory made 0700 if missing).
async fn record_managed(
    store: &Store,
    paths: crate::model::layout::RunPaths,
    engine: String,
) -> Result<(), ApiError> {
    let name = paths.dir.display().to_string();
    store
        .run(move || {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(&paths.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            crate::store::files::write_atomic(&paths.managed_by(), engine.as_bytes())
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot record who manages {name}: {e}"),
            )
        })
}

impl Handler<ApplyConfig> for Supervisor {
    type Result = Reply;

    fn handle(&mut self, ApplyConfig(new): ApplyConfig, ctx: &mut Context<Self>) -> Reply {
        let node_changed = new.node != self.config.node;
        if node_changed {
            warn!("[node] settings changed; they apply when kvmd restarts");
        }
        let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let mut updates = Vec::new();
        for (name, spec) in &new.instances {
            match self.config.instances.get(name) {
                None if !self.vms.contains_key(name) => added.push(name.clone()),
                None => {
                    added.push(name.clone());
                    updates.push((name.clone(), Some(spec.clone())));
                }
                Some(old) if old != spec => {
                    changed.push(name.to_string());
                    updates.push((name.clone(), Some(spec.clone())));
                }
                Some(_) => {}
            }
        }
        for name in self.config.instances.keys() {
            if !new.instances.contains_key(name) {
                removed.push(name.to_string());
                updates.push((name.clone(), None));
            }
        }
        let old_node = self.config.node.clone();
        self.config = Config {
            node: old_node,
            ..new
        };
        for name in &added {
            if !self.vms.contains_key(name) {
                self.spawn_vm(name.clone(), true, ctx);
            }
        }
        for (name, spec) in updates {
            if let Some(e) = self.vms.get(&name).filter(|e| {
                if let Some(engine) = &e.managed_by {
                    warn!(%name, %engine, "the config file defines an instance another engine manages; kvmd leaves it to that engine");
                }
                e.managed_by.is_none()
            }) {
                let autostart = spec.as_ref().is_some_and(|s| s.autostart);
                e.vm.set_spec(spec, autostart);
            }
        }
        info!(
            added = added.len(),
            removed = removed.len(),
            changed = changed.len(),
            "config reloaded"
        );
        let added: Vec<String> = added.iter().map(|n| n.to_string()).collect();
        self.bus.publish(
            None,
            EventKind::Daemon(DaemonEvent::Reloaded {
                added: added.clone(),
                removed: removed.clone(),
                changed: changed.clone(),
            }),
        );
        ready(Ok(ApiReply::Reloaded {
            added,
            removed,
            changed,
            node_changed,
        }))
    }
}
