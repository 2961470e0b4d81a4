//! Running undo steps ([`Undo`]): the one rollback mechanism, used by a failed or cancelled
//! start and by a restarted kvmd rolling back an unfinished one (and, next, by hotplug and
//! incoming migration). Each step is best effort and bounded: a step that fails is logged and
//! the others still run.
//!
//! Invariant: a QEMU is only killed through a pidfd that is known to be that QEMU (the
//! start's own handle, or a pidfd opened and then checked against the recorded start time).

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::host::process::{self, Identity, QemuProcess};
use crate::model::exit::ExitStatus;
use crate::model::job::Undo;
use crate::model::layout::RunPaths;
use crate::model::name::InstanceName;
use crate::model::spec::{InstanceSpec, NodeConfig};
use crate::store::Store;

/// What undo steps need.
pub(super) struct UndoCtx {
    pub name: InstanceName,
    pub paths: RunPaths,
    pub store: Store,
    pub node: Arc<NodeConfig>,
    /// The definition the undone operation used (for the NIC hooks' environment).
    pub spec: Option<InstanceSpec>,
    /// The QEMU handle and exit watch, when the caller has them.
    pub process: Option<Arc<QemuProcess>>,
    pub exit: Option<watch::Receiver<Option<ExitStatus>>>,
}

/// Run `steps` in the order given (callers give them last-recorded first).
pub(super) async fn run(ctx: &UndoCtx, steps: Vec<Undo>) {
    for step in steps {
        match step {
            Undo::KillQemu { pid, start_ticks } => kill(ctx, pid, start_ticks).await,
            Undo::NicDown { index, tap } => {
                let Some(spec) = ctx.spec.clone() else {
                    continue;
                };
                let node = ctx.node.clone();
                let t = tap.clone();
                let ran = tokio::task::spawn_blocking(move || {
                    let Some(nic) = spec.nics.get(index) else {
                        return Ok(());
                    };
                    crate::host::net::nic_down(&crate::host::net::NicContext {
                        instance: &spec.name,
                        index,
                        nic,
                        tap: &t,
                        script: node.nic_script.as_deref(),
                        deadline: node.hook_timeout,
                    })
                })
                .await;
                match ran {
                    Ok(Err(e)) => {
                        warn!(nic = index, tap = %tap, error = %super::error::chain(&e), "NIC down hook failed")
                    }
                    Err(e) => warn!(nic = index, error = %e, "NIC down hook panicked"),
                    Ok(Ok(())) => info!(nic = index, tap = %tap, "NIC down hook ran"),
                }
            }
            Undo::ReleaseUid => crate::host::uidpool::release(&ctx.name),
            Undo::DropRunFiles => {
                let p = ctx.paths.clone();
                match ctx
                    .store
                    .run(move || crate::store::files::drop_run_files(&p))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot remove the run's files"),
                    Err(e) => warn!(error = %e, "cannot remove the run's files"),
                }
            }
        }
    }
}

/// Kill a QEMU and wait (bounded) until it is gone.
async fn kill(ctx: &UndoCtx, pid: u32, start_ticks: u64) {
    let own = ctx.process.as_ref().filter(|p| p.pid == pid);
    if let (Some(p), Some(exit)) = (own, ctx.exit.as_ref()) {
        let _ = p.signal(Signal::SIGKILL);
        let mut exit = exit.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), exit.wait_for(|e| e.is_some())).await;
        return;
    }
    // No handle (a restarted kvmd): open a pidfd, then check it is still that QEMU.
    let Ok(p) = QemuProcess::open(pid, false) else {
        return; // gone
    };
    let pidfile = ctx.paths.pidfile();
    let ticks = if start_ticks == 0 {
        process::read_stat(pid).map(|s| s.start_ticks).unwrap_or(0)
    } else {
        start_ticks
    };
    let identity =
        tokio::task::spawn_blocking(move || process::identify(pid, ticks, &pidfile)).await;
    if !matches!(identity, Ok(Identity::Ours)) {
        return;
    }
    warn!(pid, "killing the QEMU of an unfinished start");
    let _ = p.signal(Signal::SIGKILL);
    if let Ok(fd) = p.try_clone_pidfd() {
        let _ =
            tokio::time::timeout(Duration::from_secs(10), process::wait_exit(fd, pid, false)).await;
    }
}
