//! Wiring the daemon together: run dir, control socket, actor system, signals.
//!
//! SIGTERM/SIGINT: publish `daemon stopping`, stop accepting, finish in-flight requests, exit;
//! VMs keep running (a second signal exits at once). SIGHUP: reload the config. The event bus
//! is made here (its sequence numbers continue those of the previous kvmd, from
//! `run_dir/events.seq`) and `daemon started` is its first event.
//!
//! Invariant: owns process-level setup only; no VM logic.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::api::{DaemonEvent, EventKind};
use crate::config::Config;
use crate::control::server::{self as control, Limits};
use crate::events::{self, EventBus, EventsError};
use crate::store::Store;
use crate::supervisor::SupervisorHandle;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("Cannot create directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Another kvmd is already running (it listens on or locks {0})")]
    AlreadyRunning(PathBuf),
    #[error("Cannot set up the control socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Unknown socket_group {0:?}")]
    NoSuchGroup(String),
    #[error("Cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("The actor system failed")]
    System(#[source] std::io::Error),
    #[error("Cannot set up the event bus")]
    Events(#[source] EventsError),
    #[error("Cannot serve metrics on {listen}")]
    Metrics {
        listen: String,
        #[source]
        source: std::io::Error,
    },
}

fn make_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| DaemonError::Dir {
            path: path.into(),
            source,
        })
}

/// Bind the control socket: refuse if a live kvmd answers there, replace a stale file, set
/// mode and group.
fn bind_socket(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    let sock_err = |source| DaemonError::Socket {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        make_dir(parent, 0o755)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.into()));
        }
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(sock_err)?;
    if let Some(g) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))
            .map_err(|e| sock_err(e.into()))?;
    }
    listener.set_nonblocking(true).map_err(sock_err)?;
    Ok(listener)
}

/// Run kvmd in the foreground until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let node = config.node.clone();
    // Every VM holds a few fds (pidfd, QMP, taps while starting) and every client one: the
    // default soft limit of 1024 is too low for a big host, the hard limit is not.
    match crate::host::limits::raise_nofile_limit() {
        Ok((old, new)) if old != new => info!(old, new, "raised the open-files limit"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot raise the open-files limit"),
    }
    make_dir(&node.run_dir, 0o755)?;
    let gid = match &node.socket_group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| DaemonError::NoSuchGroup(name.clone()))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    // One kvmd per run dir, for its whole lifetime (including a shutdown drain).
    let lock_path = node.run_dir.join("kvmd.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| DaemonError::Dir {
            path: lock_path.clone(),
            source,
        })?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| DaemonError::AlreadyRunning(lock_path.clone()))?;
    let seq_path = node.run_dir.join("events.seq");
    let bus = EventBus::new(node.event_history, events::first_seq_from(&seq_path))
        .with_seq_file(&seq_path)
        .map_err(DaemonError::Events)?;
    let ids = crate::vm::JobIds::persisted(&node.run_dir.join("jobs.seq"));
    let std_listener = bind_socket(&node.socket, node.socket_mode, gid)?;
    let socket_inode = std::fs::metadata(&node.socket).map(|m| m.ino()).ok();
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<i32>();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(DaemonError::Signals)?;
    let sig_handle = signals.handle();
    std::thread::Builder::new()
        .name("kvmd-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig_tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(DaemonError::Signals)?;

    let system = actix::System::new();
    let store = Store::start();
    let store_for_actors = store.clone();
    let limits = Limits {
        max_request_bytes: node.max_request_bytes,
        allowed_gid: gid,
        drain_timeout: node.stop_timeout + Duration::from_secs(60),
        max_connections: node.max_connections,
        max_connections_per_peer: node.max_connections_per_peer,
    };
    let bus_for_actors = bus.clone();
    let node_socket = node.socket.clone();
    let ids_for_actors = ids.clone();
    let bind_result = system.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener).map_err(|source| {
            DaemonError::Socket {
                path: node_socket.clone(),
                source,
            }
        })?;
        let bus = bus_for_actors;
        bus.publish(
            None,
            EventKind::Daemon(DaemonEvent::Started {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        );
        let metrics = match &config.node.metrics {
            Some(listen) => Some((
                crate::control::metrics_http::bind(listen)
                    .await
                    .map_err(|source| DaemonError::Metrics {
                        listen: listen.to_string(),
                        source,
                    })?,
                listen.clone(),
            )),
            None => None,
        };
        let sup = SupervisorHandle::start(config, store_for_actors, bus.clone(), ids_for_actors);
        if let Some((listener, listen)) = metrics {
            actix::spawn(crate::control::metrics_http::serve(listener, listen));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        actix::spawn(control::serve(listener, sup.clone(), limits, stop_rx));
        actix::spawn(async move {
            while let Some(sig) = sig_rx.recv().await {
                match sig {
                    SIGHUP => {
                        info!("SIGHUP: reloading the config");
                        sup.reload_in_background();
                    }
                    _ if *stop_tx.borrow() => {
                        warn!("second termination signal: exiting now; VMs keep running");
                        actix::System::current().stop();
                    }
                    _ => {
                        info!(
                            signal = sig,
                            "termination signal: finishing in-flight requests"
                        );
                        // Published before the server stops, so event streams carry it.
                        bus.publish(None, EventKind::Daemon(DaemonEvent::Stopping));
                        let _ = stop_tx.send(true);
                    }
                }
            }
        });
        Ok::<_, DaemonError>(())
    });
    bind_result?;
    info!(socket = %node.socket.display(), run_dir = %node.run_dir.display(), "kvmd listening");
    let result = system.run().map_err(DaemonError::System);
    // Let queued file writes (exit records) land before the process ends.
    store.flush();
    // The next kvmd numbers its events right after ours.
    if let Err(e) = bus.checkpoint() {
        warn!(error = %e, "cannot record the last event sequence number; the next kvmd skips some");
    }
    // And its jobs right after ours.
    if let Err(e) = ids.checkpoint() {
        warn!(error = %e, "cannot record the last job id; the next kvmd skips some");
    }
    sig_handle.close();
    // Remove the socket only if it is still ours (not one a successor already bound).
    if std::fs::metadata(&node.socket).map(|m| m.ino()).ok() == socket_inode {
        let _ = std::fs::remove_file(&node.socket);
    }
    result
}
