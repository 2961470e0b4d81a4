//! Watching a QEMU: its exit (pidfd), its QMP notices, its health (`query-status` with a
//! deadline, reconnecting when the connection died), and recording how it ended.
//!
//! Invariant: these only observe and report; what a fact means is the core's decision.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn, Instrument};

use crate::host::process;
use crate::model::exit::{ExitKind, ExitRecord, ExitStatus};
use crate::model::layout::RunPaths;
use crate::model::spec::{InstanceSpec, NodeConfig};
use crate::qmp::{ConnectOptions, Notice, Qmp};
use crate::store::Store;
use crate::vm::core::{Input, Unanswered};

use super::report::Reporter;

/// Lines of QEMU's stderr kept with a crash.
pub(super) const STDERR_LINES: usize = 20;

/// Tell the actor when the QEMU of `gen` exits.
pub(super) fn forward_exit(
    gen: u64,
    mut exit: watch::Receiver<Option<ExitStatus>>,
    report: Reporter,
) {
    actix::spawn(async move {
        if let Ok(status) = exit.wait_for(|s| s.is_some()).await {
            let status = status.unwrap_or_default();
            debug!(code = ?status.code, signal = ?status.signal, "QEMU exited");
            report.input(Input::Exited { gen, status });
        }
    });
}

/// Forward a connection's notices to the actor (and a running migration's to its `tap`),
/// then its end (after the last event).
pub(super) fn forward_notices(
    gen: u64,
    conn: u64,
    mut notices: mpsc::Receiver<Notice>,
    report: Reporter,
    tap: super::migrate::Tap,
    span: tracing::Span,
) {
    actix::spawn(
        async move {
            while let Some(n) = notices.recv().await {
                super::migrate::tee(&tap, &n);
                match n {
                    Notice::Event { event, .. } => {
                        debug!(event = event.name(), "QMP event");
                        if let Some(event) = super::observe::guest_event(event) {
                            report.input(Input::Guest { gen, event });
                        }
                    }
                    Notice::TimedOut { command } => {
                        warn!(%command, "QEMU missed a QMP deadline: unresponsive");
                        report.input(Input::QmpTimedOut { gen, command });
                    }
                }
            }
            debug!(conn, "QMP connection closed");
            super::migrate::close(&tap);
            report.input(Input::QmpClosed { gen, conn });
        }
        .instrument(span),
    );
}

/// What a health check needs.
pub(super) struct HealthCtx {
    pub gen: u64,
    pub qmp: Option<Qmp>,
    pub exit: Option<watch::Receiver<Option<ExitStatus>>>,
    pub path: PathBuf,
    pub timeout: Duration,
    pub report: Reporter,
    /// Also read the guest's memory statistics.
    pub guest_stats: bool,
}

/// One health check: `query-status` with its deadline, reconnecting first when the last
/// connection died.
pub(super) async fn health(h: HealthCtx) {
    let qmp = match h.qmp {
        Some(q) => q,
        None => {
            let exit = h.exit.clone();
            let opts = ConnectOptions {
                connect_deadline: Instant::now() + Duration::from_millis(500),
                startup_timeout: h.timeout,
                command_timeout: h.timeout,
            };
            match Qmp::connect_with(&h.path, &opts, move || {
                exit.as_ref().is_none_or(|e| e.borrow().is_none())
            })
            .await
            {
                Ok((q, notices)) => {
                    h.report.qmp(h.gen, q.clone(), notices);
                    q
                }
                Err(e) => {
                    h.report.input(Input::Health {
                        gen: h.gen,
                        status: Err(Unanswered {
                            command: "qmp_capabilities".into(),
                            reason: e.to_string(),
                        }),
                    });
                    return;
                }
            }
        }
    };
    let status = qmp
        .query_status()
        .await
        .map(|s| super::observe::run_state(s.run_state))
        .map_err(|e| Unanswered {
            command: "query-status".into(),
            reason: e.to_string(),
        });
    let ok = status.is_ok();
    h.report.input(Input::Health { gen: h.gen, status });
    if ok && h.guest_stats {
        // Statistics the guest has not sent yet have `last-update` 0: nothing to show.
        if let Ok(g) = qmp.guest_stats().await {
            let (total, free, available, at) = (g.total, g.free, g.available, g.last_update);
            if at > 0 && total > 0 {
                const MIB: u64 = 1 << 20;
                let balloon_mib = qmp.query_balloon().await.ok().map(|b| b / MIB);
                h.report.input(Input::GuestMemory {
                    gen: h.gen,
                    balloon_mib,
                    memory: crate::api::GuestMemory {
                        total_mib: total / MIB,
                        free_mib: free / MIB,
                        available_mib: available / MIB,
                        updated_at_s: at,
                    },
                });
            }
        }
    }
}

/// Recording an exit.
pub(super) struct ExitJob {
    pub gen: u64,
    pub epoch: u64,
    pub record: ExitRecord,
    pub taps: Vec<Option<String>>,
    pub spec: Option<InstanceSpec>,
    pub paths: RunPaths,
    pub store: Store,
    pub node: Arc<NodeConfig>,
    pub report: Reporter,
}

/// Write the exit record (with QEMU's last stderr lines for a crash) on the store, and run
/// the NIC down hooks off it, each with its deadline.
pub(super) fn record_exit(j: ExitJob, span: tracing::Span) {
    let ExitJob {
        gen,
        epoch,
        record,
        taps,
        spec,
        paths,
        store,
        node,
        report,
    } = j;
    let crashed = record.kind == ExitKind::Crashed;
    let p = paths.clone();
    let written = store.run(move || {
        let mut rec = record;
        if crashed {
            rec.stderr_tail = process::tail_lines(&p.qemu_log(), STDERR_LINES);
        }
        if let Err(e) = crate::store::runtime_file::record_exit(&p, &rec) {
            warn!(error = %e, "cannot write the exit record");
        }
        rec.stderr_tail
    });
    actix::spawn(
        async move {
            let stderr_tail = written.await.unwrap_or_default();
            report.input(Input::ExitRecorded {
                gen,
                epoch,
                stderr_tail,
            });
        }
        .instrument(span.clone()),
    );
    if let Some(spec) = spec {
        if taps.iter().any(Option::is_some) {
            actix::spawn(
                async move {
                    let _ =
                        tokio::task::spawn_blocking(move || nics_down(&spec, &taps, &node)).await;
                }
                .instrument(span),
            );
        }
    }
}

/// The down side of every tap NIC of a QEMU that exited (its taps are gone already).
pub(super) fn nics_down(spec: &InstanceSpec, taps: &[Option<String>], node: &NodeConfig) {
    for (i, (nic, tap)) in spec.nics.iter().zip(taps).enumerate() {
        if let Some(tap) = tap {
            let ctx = crate::host::net::NicContext {
                instance: &spec.name,
                index: i,
                nic,
                tap,
                script: node.nic_script.as_deref(),
                deadline: node.hook_timeout,
            };
            if let Err(e) = crate::host::net::nic_down(&ctx) {
                warn!(nic = i, tap = %tap, error = %super::error::chain(&e), "NIC down hook failed");
            }
        }
    }
}
