//! `kvmctl migrate NAME --to TARGET`: the whole migration against both daemons, the way a
//! cluster engine drives the steps — migration-info on the source, accept on the target (its
//! preflight first), migrate on the source, migration-status until the job ends, then
//! finalize-dst and finalize-src with the outcome — with a progress bar and a summary.
//!
//! TARGET is the target kvmd's control socket, or `ssh://[user@]host[:port][/socket]`: the
//! remote socket is forwarded to a private local one by `ssh -L` (kvmd has no network
//! listener).
//!
//! Invariant: whatever happens after the target accepted, both finalizations run with the
//! same verdict, so exactly one copy runs: the target only after QEMU reported `completed`,
//! the source otherwise. Ctrl-C cancels the migration (it does not leave it half done).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmd::api::{
    ApiError, ApiReply, ApiRequest, ErrorCode, EventKind, MigrationReport, StreamItem,
};
use kvmd::control::client::{Answer, Client, ClientError, EventStream};
use kvmd::model::field_error::FieldError;
use kvmd::model::job::Operation;
use kvmd::model::name::InstanceName;
use serde_json::{json, Value};

use crate::render::{e, json_pretty};
use crate::Failure;

/// The default remote socket of an `ssh://` target.
const REMOTE_SOCKET: &str = "/run/kvmd/kvmd.sock";
/// How long a daemon may stay unreachable while the migration is followed.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// What the operator asked.
pub struct Request<'a> {
    pub name: InstanceName,
    pub source: &'a Path,
    pub to: &'a str,
    pub listen: Option<&'a str>,
    pub live: bool,
    pub json: bool,
    pub verbose: bool,
}

/// Where the target kvmd is reached.
enum Target {
    Socket(PathBuf),
    Ssh(Ssh),
}

/// An `ssh://` target.
struct Ssh {
    destination: String,
    port: Option<u16>,
    socket: String,
    /// `?keyfile=PATH` (as libvirt's qemu+ssh URIs spell it).
    keyfile: Option<String>,
    /// `?known_hosts=PATH`.
    known_hosts: Option<String>,
}

fn usage(field: &str, value: &str, rule: &str) -> Failure {
    Failure::Usage(ApiError::invalid(vec![FieldError::new(
        field,
        e(value),
        rule,
    )]))
}

fn parse_target(to: &str) -> Result<Target, Failure> {
    let Some(rest) = to.strip_prefix("ssh://") else {
        return Ok(Target::Socket(PathBuf::from(to)));
    };
    let rule = "must be a control socket path or ssh://[user@]host[:port][/socket][?keyfile=PATH&known_hosts=PATH]";
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (mut keyfile, mut known_hosts) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("keyfile", v)) if !v.is_empty() => keyfile = Some(v.to_string()),
            Some(("known_hosts", v)) if !v.is_empty() => known_hosts = Some(v.to_string()),
            _ => return Err(usage("to", to, rule)),
        }
    }
    if [&keyfile, &known_hosts]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| v.chars().any(char::is_control)))
    {
        return Err(usage("to", to, rule));
    }
    let (authority, socket) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, REMOTE_SOCKET.to_string()),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h,
            Some(p.parse::<u16>().map_err(|_| usage("to", to, rule))?),
        ),
        _ => (hostport, None),
    };
    // Passed to ssh as one argument after `--`; still, nothing that looks like an option or
    // holds spaces or controls gets that far.
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-[]:".contains(c))
    };
    if !ok(host) || user.is_some_and(|u| !ok(u)) || socket.chars().any(char::is_control) {
        return Err(usage("to", to, rule));
    }
    let destination = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    Ok(Target::Ssh(Ssh {
        destination,
        port,
        socket,
        keyfile,
        known_hosts,
    }))
}

/// An `ssh -L` forwarding of the remote socket to a private local one, ended on drop.
struct Forward {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A fresh directory only this user can enter (its name is random; creating it fails if it
/// exists, so nobody can have prepared it).
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = base.join(format!("kvmctl-{suffix}"));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

fn forward(t: &Ssh) -> Result<Forward, Failure> {
    let fail = |why: String| {
        Failure::Usage(ApiError::new(
            ErrorCode::BadRequest,
            format!("Cannot reach the target over ssh: {why}"),
        ))
    };
    let dir = private_dir().map_err(|err| fail(format!("no private directory: {err}")))?;
    let socket = dir.join("kvmd.sock");
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-N",
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
    ])
    .arg("-L")
    .arg(format!("{}:{}", socket.display(), t.socket));
    if let Some(p) = t.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(k) = &t.keyfile {
        cmd.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(k) = &t.known_hosts {
        cmd.arg("-o").arg(format!("UserKnownHostsFile={k}"));
    }
    cmd.arg("--")
        .arg(&t.destination)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|err| fail(format!("cannot run ssh: {err}")))?;
    let mut f = Forward { child, dir, socket };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f.socket.exists() {
        if let Ok(Some(status)) = f.child.try_wait() {
            return Err(fail(format!("ssh exited ({status})")));
        }
        if Instant::now() > deadline {
            return Err(fail("no forwarded socket after 15 s".into()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(f)
}

/// A free TCP port on the loopback (for a target on this host).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// kvmd's reply, or its error as a refusal.
fn call(socket: &Path, req: &ApiRequest) -> Result<ApiReply, ClientError> {
    let Answer { result, .. } = Client::connect(socket)?.call(req)?;
    result.map_err(ClientError::Refused)
}

/// [`call`], retried while kvmd cannot be reached (a restarting kvmd), for `UNREACHABLE_FOR`.
fn call_retrying(socket: &Path, req: &ApiRequest) -> Result<ApiReply, ClientError> {
    let since = Instant::now();
    loop {
        match call(socket, req) {
            Err(err)
                if !matches!(err, ClientError::Refused(_)) && since.elapsed() < UNREACHABLE_FOR =>
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// What the target says of the instance, once it answers: `Ok(Some(state))`, `Ok(None)` (it
/// does not know it: nothing runs there), `Err(())` (no answer within `UNREACHABLE_FOR`).
fn target_state(socket: &Path, name: &InstanceName) -> Result<Option<String>, ()> {
    match call_retrying(
        socket,
        &ApiRequest::Info {
            name: Some(name.clone()),
        },
    ) {
        Ok(ApiReply::Info(v)) => Ok(v.first().map(|i| i.state.as_str().to_string())),
        Err(ClientError::Refused(e)) if e.code == ErrorCode::NotFound => Ok(None),
        _ => Err(()),
    }
}

/// `finalize-dst --success`, waiting out a `busy` target (a finalization already running)
/// and a kvmd restarting.
fn run_on_target(dst: &Path, name: &InstanceName) -> Result<ApiReply, ClientError> {
    let since = Instant::now();
    loop {
        let r = call_retrying(
            dst,
            &ApiRequest::FinalizeDst {
                name: name.clone(),
                success: true,
            },
        );
        match r {
            Err(ClientError::Refused(e))
                if e.code == ErrorCode::Busy && since.elapsed() < UNREACHABLE_FOR =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// The progress bar (stderr, redrawn on a terminal; a line per second with `--verbose`).
struct Bar {
    tty: bool,
    show: bool,
    last_line: Instant,
    drawn: bool,
    /// The guest's RAM, as the last figures said.
    total: u64,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1_048_576.0)
}

impl Bar {
    fn draw(&mut self, m: &MigrationReport) {
        if !self.show {
            return;
        }
        // The share of guest memory already processed (zero pages cost no bytes on the wire).
        let done = m.total.saturating_sub(m.remaining);
        let pct = (done * 100)
            .checked_div(m.total)
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(0);
        let width = 24;
        let filled = pct * width / 100;
        let eta = if m.remaining == 0 && m.status == "completed" {
            "0s".into()
        } else if m.speed_bps > 0 {
            format!("{}s", m.remaining / m.speed_bps.max(1))
        } else {
            "-".into()
        };
        let mut line = format!(
            "[{}{}] {:>3}%  {} sent  {} left  {}/s  dirty {} pages/s  pass {}  ETA {}  ({})",
            "#".repeat(filled),
            ".".repeat(width - filled),
            pct,
            mib(m.transferred),
            mib(m.remaining),
            mib(m.speed_bps),
            m.dirty_pages_rate,
            m.pass,
            eta,
            e(&m.status),
        );
        if let Some(s) = m.stalled_ms {
            line.push_str(&format!("  stalled {} s", s / 1000));
        }
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
            self.drawn = true;
        } else if self.last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!("{line}");
            self.last_line = Instant::now();
        }
    }

    fn done(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }

    fn note(&mut self, text: &str) {
        if self.show {
            self.done();
            eprintln!("{text}");
        }
    }
}

/// What the flow found, for the summary.
struct Account {
    steps: Vec<Value>,
    outcome: String,
    reason: Option<String>,
    last: Option<MigrationReport>,
    resumed_at_us: Option<u64>,
    runs_on: &'static str,
}

impl Account {
    fn step(&mut self, name: &str, result: Result<&str, String>) {
        self.steps.push(match result {
            Ok(what) => json!({"step": name, "ok": true, "result": what}),
            Err(why) => json!({"step": name, "ok": false, "error": why}),
        });
    }
}

fn err_text(e: &ClientError) -> String {
    match e {
        ClientError::Refused(api) => api.message.clone(),
        other => other.to_string(),
    }
}

/// Follow the migration until its job ended: its end from the source's event stream (so the
/// target is continued at once), the figures from `migration-status` every 200 ms, and by
/// polling alone if the stream is lost. Ctrl-C cancels it (once).
fn follow(
    socket: &Path,
    name: &InstanceName,
    mut stream: Option<EventStream>,
    bar: &mut Bar,
    interrupted: &AtomicBool,
) -> Result<MigrationReport, String> {
    let mut cancelled = false;
    let mut unreachable_since: Option<Instant> = None;
    let tick = Duration::from_millis(200);
    let mut next_poll = Instant::now();
    if let Some(s) = &stream {
        s.set_timeout(Some(tick));
    }
    loop {
        if interrupted.load(Ordering::Relaxed) && !cancelled {
            cancelled = true;
            bar.note("interrupted: cancelling the migration");
            if let Err(err) = call(socket, &ApiRequest::MigrateCancel { name: name.clone() }) {
                bar.note(&format!("cancel refused: {}", e(&err_text(&err))));
            }
        }
        let mut ended = false;
        match stream.as_mut().map(|s| s.next()) {
            Some(Some(Ok(StreamItem::Event(ev)))) => {
                ended = matches!(&ev.kind, EventKind::JobEnded(j)
                    if j.instance == *name && j.kind == Operation::Migrate);
            }
            Some(Some(Ok(_))) => {}
            Some(Some(Err(err))) if err.is_timeout() => {}
            Some(_) => stream = None,
            None => std::thread::sleep(tick),
        }
        if !ended && Instant::now() < next_poll {
            continue;
        }
        next_poll = Instant::now() + tick;
        match call(socket, &ApiRequest::MigrationStatus { name: name.clone() }) {
            Ok(ApiReply::MigrationStatus { migration, .. }) => {
                unreachable_since = None;
                if migration.job.is_none() {
                    if let Some(s) = migration
                        .summary
                        .as_ref()
                        .filter(|s| s.outcome == "completed")
                    {
                        // The last state, which the job's end overtook.
                        let last = MigrationReport {
                            status: "completed".into(),
                            transferred: s.transferred,
                            remaining: 0,
                            total: bar.total,
                            pass: s.passes,
                            ..MigrationReport::default()
                        };
                        bar.draw(&last);
                    }
                    bar.done();
                    return Ok(*migration);
                }
                bar.total = migration.total;
                bar.draw(&migration);
            }
            Ok(_) => return Err("the source answered migration-status oddly".into()),
            Err(err) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    bar.done();
                    return Err(format!(
                        "the source kvmd did not answer for {} s ({}); the migration may go on: see `kvmctl migration-status`",
                        UNREACHABLE_FOR.as_secs(),
                        err_text(&err)
                    ));
                }
            }
        }
    }
}

/// The whole flow. Exit code: 0 when the VM runs on the target; 1 otherwise.
pub fn run(r: &Request) -> Result<u8, Failure> {
    let target = parse_target(r.to)?;
    let listen = match (r.listen, &target) {
        (Some(l), _) => l.to_string(),
        (None, Target::Socket(_)) => format!(
            "127.0.0.1:{}",
            free_port().map_err(|err| usage("listen", "(default)", &err.to_string()))?
        ),
        (None, Target::Ssh(_)) => {
            return Err(usage(
                "listen",
                "(missing)",
                "an ssh:// target needs --listen IP:PORT (the target's address on the migration network)",
            ))
        }
    };
    let _forward;
    let dst: PathBuf = match &target {
        Target::Socket(p) => p.clone(),
        Target::Ssh(t) => {
            let f = forward(t)?;
            let p = f.socket.clone();
            _forward = f;
            p
        }
    };
    if let (Ok(a), Ok(b)) = (r.source.canonicalize(), dst.canonicalize()) {
        if a == b {
            return Err(usage(
                "to",
                r.to,
                "must be another kvmd than the source (the same socket was given)",
            ));
        }
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());
    let tty = std::io::stderr().is_terminal();
    let mut bar = Bar {
        tty,
        show: (tty || r.verbose) && !r.json,
        last_line: Instant::now() - Duration::from_secs(2),
        drawn: false,
        total: 0,
    };
    let name = r.name.clone();
    let t0 = Instant::now();
    let mut acc = Account {
        steps: Vec::new(),
        outcome: "failed".into(),
        reason: None,
        last: None,
        resumed_at_us: None,
        runs_on: "source",
    };
    // 1. The blob from the source.
    let info = match call(r.source, &ApiRequest::MigrationInfo { name: name.clone() }) {
        Ok(ApiReply::MigrationInfo { info }) => {
            acc.step("migration-info", Ok("ok"));
            info
        }
        Ok(_) => return Err(Failure::Client(ClientError::Closed)),
        Err(err) => return Err(Failure::Client(err)),
    };
    // 2. The target: preflight, then a paused QEMU listening.
    bar.note(&format!(
        "{}: asking the target to take it on {}",
        e(name.as_str()),
        e(&listen)
    ));
    if let Err(err) = call(
        &dst,
        &ApiRequest::Accept {
            name: name.clone(),
            info,
            listen: listen.clone(),
            wait: true,
        },
    ) {
        acc.step("accept", Err(err_text(&err)));
        acc.reason = Some(format!("the target refused: {}", err_text(&err)));
        return Ok(finish(r, &acc, t0, &listen));
    }
    acc.step("accept", Ok("incoming"));
    // 3. The source's job, followed to its end.
    // Subscribed before the job begins, so its end cannot be missed.
    let stream = Client::connect(r.source)
        .and_then(|c| c.subscribe(None, true))
        .ok();
    let started = call(
        r.source,
        &ApiRequest::Migrate {
            name: name.clone(),
            target: listen.clone(),
            live: r.live,
            wait: false,
        },
    );
    let verdict = match started {
        Err(err) => {
            acc.step("migrate", Err(err_text(&err)));
            Err(format!("the source refused: {}", err_text(&err)))
        }
        Ok(_) => {
            acc.step("migrate", Ok("started"));
            match follow(r.source, &name, stream, &mut bar, &interrupted) {
                Ok(m) => {
                    let s = m.summary.clone();
                    acc.last = Some(m);
                    match s {
                        Some(s) if s.outcome == "completed" => Ok(()),
                        Some(s) => {
                            acc.outcome = s.outcome.clone();
                            Err(s.reason.unwrap_or_default())
                        }
                        None => Err("the source's migrate job ended before it began".into()),
                    }
                }
                Err(why) => Err(why),
            }
        }
    };
    // 4. The finalizations. A migration that completed: the target runs it, and only when
    // the target says it runs does the source let go; when the target confirms it does not
    // run it, the target's copy is dropped first and the source resumes; when the target
    // cannot say, the source stays `migrated` (paused for good) rather than risk two copies.
    // A migration that did not complete: the source resumes first, then the target drops.
    let completed = verdict.is_ok();
    let target_runs: Result<bool, String> = match verdict {
        Err(why) => Err(why),
        Ok(()) => match run_on_target(&dst, &name) {
            Ok(_) => Ok(true),
            Err(err) => match target_state(&dst, &name) {
                Ok(Some(state)) if state == "running" => Ok(true),
                Ok(_) => Err(format!("the target could not run it: {}", err_text(&err))),
                Err(()) => {
                    acc.step("finalize-dst", Err(err_text(&err)));
                    acc.outcome = "unknown".into();
                    acc.runs_on = "unknown";
                    acc.reason = Some(format!(
                        "the migration completed, but the target did not answer ({}); the source stays migrated (paused for good) so that two copies never run: finish with `kvmctl finalize-dst` on the target and `kvmctl finalize-src` here",
                        err_text(&err)
                    ));
                    return Ok(finish(r, &acc, t0, &listen));
                }
            },
        },
    };
    match target_runs {
        Ok(_) => {
            acc.step("finalize-dst", Ok("running"));
            acc.outcome = "completed".into();
            acc.runs_on = "target";
            if let Ok(ApiReply::MigrationStatus { migration, .. }) =
                call(&dst, &ApiRequest::MigrationStatus { name: name.clone() })
            {
                acc.resumed_at_us = migration.resumed_at_us;
            }
            match call_retrying(
                r.source,
                &ApiRequest::FinalizeSrc {
                    name: name.clone(),
                    success: true,
                },
            ) {
                Ok(_) => acc.step("finalize-src", Ok("moved")),
                Err(err) => acc.step("finalize-src", Err(err_text(&err))),
            }
        }
        Err(why) => {
            acc.reason = Some(why).filter(|w| !w.is_empty());
            let drop_target = |acc: &mut Account| match call_retrying(
                &dst,
                &ApiRequest::FinalizeDst {
                    name: name.clone(),
                    success: false,
                },
            ) {
                Ok(_) => acc.step("finalize-dst", Ok("dropped")),
                Err(err) => acc.step("finalize-dst", Err(err_text(&err))),
            };
            if completed {
                // The target holds a completed copy: drop it, and make sure, before the
                // source runs again.
                drop_target(&mut acc);
                if let Ok(Some(state)) | Err(state) = target_state(&dst, &name)
                    .map(|s| s.filter(|s| s == "running"))
                    .map_err(|()| "no answer".to_string())
                {
                    acc.outcome = "unknown".into();
                    acc.runs_on = "unknown";
                    acc.reason = Some(format!(
                        "the target's copy could not be confirmed gone ({state}); the source stays migrated so that two copies never run"
                    ));
                    return Ok(finish(r, &acc, t0, &listen));
                }
            }
            // The source first when the target never ran it: the guest runs again sooner.
            match call_retrying(
                r.source,
                &ApiRequest::FinalizeSrc {
                    name: name.clone(),
                    success: false,
                },
            ) {
                Ok(_) => acc.step("finalize-src", Ok("running")),
                Err(err) => acc.step("finalize-src", Err(err_text(&err))),
            }
            if !completed {
                drop_target(&mut acc);
            }
            acc.runs_on = match call(
                r.source,
                &ApiRequest::Info {
                    name: Some(name.clone()),
                },
            ) {
                Ok(ApiReply::Info(v)) if v.first().is_some_and(|i| i.state.has_process()) => {
                    "source"
                }
                Ok(_) => "nowhere",
                Err(_) => "source (unconfirmed)",
            };
        }
    }
    Ok(finish(r, &acc, t0, &listen))
}

/// Print the summary; the exit code.
fn finish(r: &Request, acc: &Account, t0: Instant, listen: &str) -> u8 {
    let s = acc.last.as_ref().and_then(|m| m.summary.clone());
    let pause_ms = match (acc.resumed_at_us, s.as_ref().and_then(|s| s.stopped_at_us)) {
        (Some(resumed), Some(stopped)) if resumed >= stopped => Some((resumed - stopped) / 1000),
        _ => None,
    };
    let ok = acc.outcome == "completed";
    if r.json {
        let v = json!({
            "ok": ok,
            "kind": "migration",
            "instance": r.name.as_str(),
            "target": r.to,
            "listen": listen,
            "outcome": acc.outcome,
            "reason": acc.reason,
            "runs_on": acc.runs_on,
            "elapsed_ms": u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "total_time_ms": s.as_ref().and_then(|s| s.total_time_ms),
            "downtime_ms": s.as_ref().and_then(|s| s.downtime_ms),
            "figures": s.as_ref().map(|s| if s.kvmd_measured { "kvmd" } else { "qemu" }),
            "pause_ms": pause_ms,
            "transferred": s.as_ref().map(|s| s.transferred),
            "passes": s.as_ref().map(|s| s.passes),
            "path": s.as_ref().map(|s| s.path.clone()),
            "downtime_limit_ms": s.as_ref().map(|s| s.downtime_limit_ms),
            "seen_after_us": s.as_ref().and_then(|s| s.seen_after_us),
            "steps": acc.steps,
        });
        println!("{}", json_pretty(&v));
    } else {
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        if ok {
            println!(
                "{}: migrated to {} ({}), running there",
                e(r.name.as_str()),
                e(r.to),
                e(listen)
            );
        } else {
            let why = acc
                .reason
                .as_deref()
                .map_or(String::new(), |r| format!(": {}", e(r)));
            println!(
                "{}: migration {}{why}; it runs on the {}",
                e(r.name.as_str()),
                e(&acc.outcome),
                acc.runs_on
            );
        }
        if let Some(s) = &s {
            let by = if s.kvmd_measured {
                "kvmd's measure: QEMU said 0"
            } else {
                "QEMU"
            };
            if s.total_time_ms.is_some() {
                println!("  total time      {} ({by})", ms(s.total_time_ms));
                println!("  downtime        {} ({by})", ms(s.downtime_ms));
            }
            if ok {
                println!(
                    "  guest paused    {} (source STOP to target continued)",
                    ms(pause_ms)
                );
            }
            println!(
                "  transferred     {} in {} passes, {}",
                mib(s.transferred),
                s.passes,
                e(&s.path)
            );
            if let Some(us) = s.seen_after_us {
                println!(
                    "  completion seen {:.1} ms after QEMU's event",
                    us as f64 / 1000.0
                );
            }
        }
        println!("  steps           {}", steps_line(&acc.steps));
    }
    if ok {
        0
    } else {
        1
    }
}

fn steps_line(steps: &[Value]) -> String {
    steps
        .iter()
        .map(|s| {
            let name = s["step"].as_str().unwrap_or("?");
            match s["ok"].as_bool() {
                Some(true) => format!("{name} ✓"),
                _ => format!("{name} ✗"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
