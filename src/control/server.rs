//! The control socket server: accepts connections, checks the peer's credentials
//! (SO_PEERCRED: root, kvmd's own user, or the configured group), reads newline-delimited
//! requests up to a size limit, and passes them to the supervisor.
//!
//! On shutdown it stops accepting, lets in-flight requests finish (and answers new ones on
//! open connections with `shutting_down`), then stops the actor system.
//!
//! Invariant: no VM logic; it knows the wire format only through `protocol`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::api::{ApiError, ErrorCode};
use crate::control::protocol;
use crate::supervisor::SupervisorHandle;

/// Who may talk to kvmd and how much.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    /// Members of this group are allowed besides root and kvmd's own user.
    pub allowed_gid: Option<u32>,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Is this peer allowed? Root, our own uid, the allowed group as primary or supplementary.
pub fn peer_allowed(uid: u32, gid: u32, pid: i32, allowed_gid: Option<u32>) -> bool {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return true;
    }
    let Some(g) = allowed_gid else { return false };
    if gid == g {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Groups:"))
                .map(|l| l[7..].split_whitespace().any(|x| x.parse() == Ok(g)))
        })
        .unwrap_or(false)
}

/// Serve until `shutdown` turns true, then drain and stop the actor system.
pub async fn serve(
    listener: UnixListener,
    sup: SupervisorHandle,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let inflight = Arc::new(InFlight::default());
    let conn_shutdown = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (sup, limits, inflight, shutdown) = (sup.clone(), limits.clone(), inflight.clone(), conn_shutdown.clone());
                    actix::spawn(async move { handle_connection(stream, sup, limits, inflight, shutdown).await });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    info!(
        in_flight = inflight.count.load(Ordering::SeqCst),
        "shutting down: no longer accepting requests"
    );
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        loop {
            let idle = inflight.idle.notified();
            if inflight.count.load(Ordering::SeqCst) == 0 {
                break;
            }
            idle.await;
        }
    })
    .await;
    if drained.is_err() {
        warn!("in-flight requests did not finish in time; exiting anyway (VMs keep running)");
    }
    info!("kvmd exiting; VMs keep running");
    actix::System::current().stop();
}

async fn handle_connection(
    stream: UnixStream,
    sup: SupervisorHandle,
    limits: Limits,
    inflight: Arc<InFlight>,
    mut shutdown: watch::Receiver<bool>,
) {
    let creds = getsockopt(&stream, PeerCredentials);
    let (read, mut write) = stream.into_split();
    match creds {
        Ok(c) if peer_allowed(c.uid(), c.gid(), c.pid(), limits.allowed_gid) => {
            debug!(uid = c.uid(), pid = c.pid(), "client connected")
        }
        other => {
            warn!(creds = ?other.map(|c| (c.uid(), c.gid(), c.pid())), "refusing control client");
            // Read the first request before refusing it: the refusal then carries its id, and
            // the client never writes into a closed socket (which would lose the answer).
            let mut first = Vec::new();
            let mut limited = BufReader::new(read).take(limits.max_request_bytes as u64);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                limited.read_until(b'\n', &mut first),
            )
            .await;
            let (id, _) = protocol::parse_request(&first);
            let e = ApiError::new(ErrorCode::PermissionDenied, "Permission denied: only root, kvmd's user and the configured socket_group may use kvmd");
            let _ = write.write_all(&protocol::encode_reply(&id, &Err(e))).await;
            return;
        }
    }
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = limits.max_request_bytes as u64 + 1;
        let mut limited = (&mut reader).take(limit);
        let read = tokio::select! {
            r = limited.read_until(b'\n', &mut buf) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "client read failed");
                return;
            }
        }
        if buf.last() != Some(&b'\n') && buf.len() as u64 >= limit {
            let e = ApiError::new(
                ErrorCode::RequestTooLarge,
                format!("Request is larger than {} bytes", limits.max_request_bytes),
            );
            let _ = write
                .write_all(&protocol::encode_reply(&Value::Null, &Err(e)))
                .await;
            return;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            if buf.last() != Some(&b'\n') {
                return; // EOF after whitespace
            }
            continue;
        }
        if *shutdown.borrow() {
            let (id, _) = protocol::parse_request(&buf);
            let e = ApiError::new(ErrorCode::ShuttingDown, "kvmd is shutting down");
            let _ = write.write_all(&protocol::encode_reply(&id, &Err(e))).await;
            return;
        }
        inflight.count.fetch_add(1, Ordering::SeqCst);
        let (id, req) = protocol::parse_request(&buf);
        let result = match req {
            Ok(req) => {
                debug!(?req, "request");
                sup.call(req).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            info!(code = e.code.as_str(), error = %e.message, "request failed");
        }
        let wrote = write.write_all(&protocol::encode_reply(&id, &result)).await;
        if inflight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            inflight.idle.notify_waiters();
        }
        if wrote.is_err() {
            return;
        }
    }
}
