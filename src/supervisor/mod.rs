//! The root supervisor actor: owns the config, one VM actor per instance, and the table of
//! their last published states, from which `list` and `info` are answered without asking any
//! VM actor (so a wedged QEMU never slows them).
//!
//! It routes operations to VM actors, applies config reloads (new instances, changed
//! definitions, autostart), and rebuilds a VM actor from runtime state if its mailbox closes
//! (a panicked actor).
//!
//! Invariant: never awaits inside a handler on behalf of a VM; forwarding happens in futures
//! that do not hold the actor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use crate::api::{ApiError, ApiReply, ApiRequest, ErrorCode, VmInfo};
use crate::config::Config;
use crate::host::clock::now_ms;
use crate::host::process;
use crate::model::name::InstanceName;
use crate::model::spec::NodeConfig;
use crate::store::Store;
use crate::vm::{VmActor, VmOutcome, VmRequest, VmUpdated};

/// Everything the supervisor can be asked.
#[derive(Message)]
#[rtype(result = "Result<ApiReply, ApiError>")]
pub struct Call(pub ApiRequest);

/// A new config, read by a reload (SIGHUP or the `reload` request).
#[derive(Message)]
#[rtype(result = "Result<ApiReply, ApiError>")]
struct ApplyConfig(Config);

struct Entry {
    addr: Addr<VmActor>,
    info: VmInfo,
}

pub struct Supervisor {
    config: Config,
    node: Arc<NodeConfig>,
    store: Store,
    vms: BTreeMap<InstanceName, Entry>,
    /// How many VM actors are still recovering their state from the run dir.
    recovering: tokio::sync::watch::Sender<usize>,
}

impl Supervisor {
    pub fn new(config: Config, store: Store) -> Self {
        Self {
            node: Arc::new(config.node.clone()),
            config,
            store,
            vms: BTreeMap::new(),
            recovering: tokio::sync::watch::Sender::new(0),
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
                kind: crate::model::job::Operation::Recovery,
                phase: "recovery".into(),
            }),
            last_exit: None,
        };
        let actor = VmActor::new(
            name.clone(),
            spec,
            self.node.clone(),
            self.store.clone(),
            ctx.address().recipient(),
            autostart,
        );
        self.vms.insert(
            name,
            Entry {
                addr: actor.start(),
                info: placeholder,
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
                    .is_some_and(|j| j.kind == crate::model::job::Operation::Recovery)
            })
            .count();
        self.recovering
            .send_if_modified(|c| std::mem::replace(c, n) != n);
    }

    fn lookup(&self, name: &InstanceName) -> Result<Addr<VmActor>, ApiError> {
        self.vms
            .get(name)
            .map(|e| e.addr.clone())
            .ok_or_else(|| ApiError::not_found(name))
    }

    /// Rebuild VM actors whose mailbox closed (a panic inside the actor).
    fn check_actors(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<_> = self
            .vms
            .iter()
            .filter(|(_, e)| !e.addr.connected())
            .map(|(n, _)| n.clone())
            .collect();
        for name in dead {
            warn!(%name, "VM actor died; rebuilding it from runtime state");
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

/// List the instance directories under the run dir (names validated; others ignored).
fn instances_on_disk(run_dir: &std::path::Path) -> Vec<InstanceName> {
    let Ok(rd) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| InstanceName::parse(&e.file_name().to_string_lossy()).ok())
        .collect()
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

impl Handler<VmUpdated> for Supervisor {
    type Result = ();
    fn handle(&mut self, VmUpdated(info): VmUpdated, _: &mut Context<Self>) {
        // An instance that left the config goes away once it has no QEMU and no runtime files.
        let retire = !info.in_config
            && !self.config.instances.contains_key(&info.name)
            && !info.state.has_process()
            && info.last_exit.is_none()
            && info.job.is_none();
        if retire {
            if let Some(e) = self.vms.remove(&info.name) {
                info!(name = %info.name, "instance no longer in the config and cleaned up: forgotten");
                e.addr.do_send(VmRequest::Retire);
            }
        } else if let Some(e) = self.vms.get_mut(&info.name) {
            e.info = info;
        }
        self.count_recovering();
    }
}

fn forward(
    addr: Addr<VmActor>,
    req: VmRequest,
) -> impl std::future::Future<Output = Result<VmOutcome, ApiError>> {
    async move {
        addr.send(req).await.map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("VM actor unavailable ({e}); it is being rebuilt, retry"),
            )
        })?
    }
}

/// How a VM actor's outcome becomes the reply to the operator's request.
fn vm_call(
    addr: Addr<VmActor>,
    req: VmRequest,
    reply: impl FnOnce(VmOutcome) -> ApiReply + 'static,
) -> ResponseFuture<Result<ApiReply, ApiError>> {
    Box::pin(async move {
        let outcome = match forward(addr, req).await? {
            VmOutcome::Done(info) => VmOutcome::Done(live(info)),
            VmOutcome::Stopped {
                ended,
                elapsed,
                info,
            } => VmOutcome::Stopped {
                ended,
                elapsed,
                info: live(info),
            },
        };
        Ok(reply(outcome))
    })
}

fn info_of(o: VmOutcome) -> VmInfo {
    match o {
        VmOutcome::Done(info) | VmOutcome::Stopped { info, .. } => info,
    }
}

impl Handler<Call> for Supervisor {
    type Result = ResponseFuture<Result<ApiReply, ApiError>>;

    fn handle(&mut self, Call(req): Call, ctx: &mut Context<Self>) -> Self::Result {
        if matches!(req, ApiRequest::List | ApiRequest::Info { .. })
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

/// Like `Call`, but answered from the current table even while VMs are recovering.
#[derive(Message)]
#[rtype(result = "Result<ApiReply, ApiError>")]
struct CallNow(ApiRequest);

impl Handler<CallNow> for Supervisor {
    type Result = ResponseFuture<Result<ApiReply, ApiError>>;
    fn handle(&mut self, CallNow(req): CallNow, ctx: &mut Context<Self>) -> Self::Result {
        self.answer(req, ctx)
    }
}

impl Supervisor {
    /// Send a request to one VM actor and shape its outcome into the reply.
    fn vm(
        &self,
        name: &InstanceName,
        req: VmRequest,
        reply: impl FnOnce(VmOutcome) -> ApiReply + 'static,
    ) -> ResponseFuture<Result<ApiReply, ApiError>> {
        match self.lookup(name) {
            Ok(addr) => vm_call(addr, req, reply),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn answer(
        &mut self,
        req: ApiRequest,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<ApiReply, ApiError>> {
        let ready = |r: Result<ApiReply, ApiError>| -> ResponseFuture<Result<ApiReply, ApiError>> {
            Box::pin(async move { r })
        };
        let stop_timeout = |t: Option<u64>| t.map_or(self.node.stop_timeout, Duration::from_secs);
        match req {
            ApiRequest::Ping => ready(Ok(ApiReply::Pong {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })),
            ApiRequest::List => ready(Ok(ApiReply::List(
                self.vms
                    .values()
                    .filter(|e| e.info.state.has_process())
                    .map(|e| live(e.info.clone()))
                    .collect(),
            ))),
            ApiRequest::Info { name: None } => ready(Ok(ApiReply::Info(
                self.vms.values().map(|e| live(e.info.clone())).collect(),
            ))),
            ApiRequest::Info { name: Some(n) } => ready(match self.vms.get(&n) {
                Some(e) => Ok(ApiReply::Info(vec![live(e.info.clone())])),
                None => Err(ApiError::not_found(&n)),
            }),
            ApiRequest::Start { name, paused, .. } => {
                self.vm(&name, VmRequest::Start { paused }, |o| {
                    ApiReply::Started(info_of(o))
                })
            }
            ApiRequest::Stop {
                name,
                timeout_s,
                force,
                ..
            } => {
                let req = VmRequest::Stop {
                    timeout: stop_timeout(timeout_s),
                    force,
                };
                self.vm(&name, req, |o| match o {
                    VmOutcome::Stopped {
                        ended,
                        elapsed,
                        info,
                    } => ApiReply::Stopped {
                        ended,
                        elapsed_ms: elapsed.as_millis() as u64,
                        info,
                    },
                    VmOutcome::Done(info) => ApiReply::Stopped {
                        ended: crate::model::state::StopEnd::AlreadyStopped,
                        elapsed_ms: 0,
                        info,
                    },
                })
            }
            ApiRequest::Reboot {
                name,
                hard,
                timeout_s,
                ..
            } => self.vm(
                &name,
                VmRequest::Reboot {
                    hard,
                    timeout: stop_timeout(timeout_s),
                },
                |o| ApiReply::Rebooted(info_of(o)),
            ),
            ApiRequest::Pause { name } => {
                self.vm(&name, VmRequest::Pause, |o| ApiReply::Paused(info_of(o)))
            }
            ApiRequest::Resume { name } => {
                self.vm(&name, VmRequest::Resume, |o| ApiReply::Resumed(info_of(o)))
            }
            ApiRequest::Cleanup { name } => {
                let n = name.clone();
                self.vm(&name, VmRequest::Cleanup, move |_| ApiReply::CleanedUp {
                    name: n,
                })
            }
            ApiRequest::Jobs { .. }
            | ApiRequest::Job { .. }
            | ApiRequest::Cancel { .. }
            | ApiRequest::Subscribe { .. } => ready(Err(ApiError::new(
                ErrorCode::UnknownRequest,
                "not yet served by this build",
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

impl Handler<ApplyConfig> for Supervisor {
    type Result = ResponseFuture<Result<ApiReply, ApiError>>;

    fn handle(&mut self, ApplyConfig(new): ApplyConfig, ctx: &mut Context<Self>) -> Self::Result {
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
        let mut futs = Vec::new();
        for name in &added {
            if !self.vms.contains_key(name) {
                self.spawn_vm(name.clone(), true, ctx);
            }
        }
        for (name, spec) in updates {
            if let Some(e) = self.vms.get(&name) {
                let autostart = spec.as_ref().is_some_and(|s| s.autostart);
                futs.push(forward(
                    e.addr.clone(),
                    VmRequest::SetSpec {
                        spec: spec.map(Box::new),
                        autostart,
                    },
                ));
            }
        }
        info!(
            added = added.len(),
            removed = removed.len(),
            changed = changed.len(),
            "config reloaded"
        );
        let added = added.iter().map(|n| n.to_string()).collect();
        Box::pin(async move {
            for f in futs {
                f.await?;
            }
            Ok(ApiReply::Reloaded {
                added,
                removed,
                changed,
                node_changed,
            })
        })
    }
}

/// A cheap, cloneable way to call the supervisor without importing actix, and the node's
/// event bus.
#[derive(Clone)]
pub struct SupervisorHandle {
    addr: Addr<Supervisor>,
    events: crate::events::EventBus,
}

impl SupervisorHandle {
    pub fn start(config: Config, store: Store, events: crate::events::EventBus) -> Self {
        Self {
            addr: Supervisor::new(config, store).start(),
            events,
        }
    }

    /// The event bus every event of this kvmd goes to.
    pub fn events(&self) -> &crate::events::EventBus {
        &self.events
    }

    pub async fn call(&self, req: ApiRequest) -> Result<ApiReply, ApiError> {
        let reply = self.addr.send(Call(req)).await.map_err(|e| {
            ApiError::new(ErrorCode::Internal, format!("supervisor unavailable: {e}"))
        })??;
        // INTEGRATOR: drop this once the supervisor publishes DaemonEvent::Reloaded itself.
        if let ApiReply::Reloaded {
            added,
            removed,
            changed,
            ..
        } = &reply
        {
            self.events.publish(
                None,
                crate::api::EventKind::Daemon(crate::api::DaemonEvent::Reloaded {
                    added: added.clone(),
                    removed: removed.clone(),
                    changed: changed.clone(),
                }),
            );
        }
        Ok(reply)
    }

    /// Fire-and-forget reload (from SIGHUP); the outcome is logged.
    pub fn reload_in_background(&self) {
        let h = self.clone();
        actix::spawn(async move {
            match h.call(ApiRequest::Reload).await {
                Ok(_) => {}
                Err(e) => warn!(error = %e, "reload failed; keeping the previous config"),
            }
        });
    }
}
