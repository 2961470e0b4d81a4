//! The metrics endpoint: `GET /metrics` over HTTP/1.1 (hyper) on `node.metrics`, a TCP
//! address or a Unix socket, answered from [`crate::metrics::render`] (memory only: a scrape
//! never waits on a VM).
//!
//! Invariant: bounded: at most [`MAX_CONNECTIONS`] at once, a request's head must arrive
//! within [`HEAD_TIMEOUT`]; only `GET`/`HEAD` of `/metrics` (and `/`) are served.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::model::spec::MetricsListen;

/// Scrapers served at once; more wait for a slot.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// OpenMetrics, which Prometheus asks for, and the classic text format for everyone else.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A bound metrics listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Bind `listen`. A Unix socket replaces a stale file and is made 0660 (kvmd's user and
/// group), never world-accessible.
pub async fn bind(listen: &MetricsListen) -> std::io::Result<Listener> {
    match listen {
        MetricsListen::Tcp(addr) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?)),
        MetricsListen::Unix(path) => {
            if path.exists() {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("{} is in use", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let l = tokio::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Ok(Listener::Unix(l))
        }
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let page = crate::metrics::render();
            let open = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            if open {
                reply(StatusCode::OK, OPENMETRICS, page)
            } else {
                reply(StatusCode::OK, CLASSIC, crate::metrics::classic(&page))
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "kvmd: metrics at /metrics\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn serve_one<S>(stream: S, slots: &Arc<Semaphore>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = slots.clone();
    actix::spawn(async move {
        let Ok(_slot) = slots.acquire_owned().await else {
            return;
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service_fn(handle));
        if let Err(e) = conn.await {
            debug!(error = %e, "metrics connection ended");
        }
    });
}

/// Serve scrapes until the process ends.
pub async fn serve(listener: Listener, listen: MetricsListen) {
    info!(%listen, "serving metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match &listener {
            Listener::Tcp(l) => match l.accept().await {
                Ok((s, _)) => serve_one(s, &slots),
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Listener::Unix(l) => match l.accept().await {
                Ok((s, _)) => serve_one(s, &slots),
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
