//! `kvmctl`: operate kvmd over its control socket.
//!
//! Owns the flags, dispatching commands to requests, and exit codes. `args` declares the
//! command line, `render` prints, `wait` follows jobs through the event stream, `validate`
//! checks config files offline.
//!
//! Invariant: with `--json` every outcome (kvmd's replies and errors, and kvmctl's own: a bad
//! name on the command line, a failed connection) is one JSON document on stdout; text output
//! goes through `render`, which escapes whatever came from kvmd.

mod args;
mod console;
mod migrate;
mod render;
mod top;
mod validate;
mod wait;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kvmd::api::{ApiError, ApiReply, ApiRequest, JobRef, JobState, StreamItem};
use kvmd::control::client::{Answer, Client, ClientError};
use kvmd::control::protocol;
use kvmd::model::field_error::FieldError;
use kvmd::model::job::JobId;
use kvmd::model::name::{InstanceName, NAME_RULE};
use serde_json::{json, Value};

use args::{Args, Cmd};
use render::{e, json_line, json_pretty};

/// Success.
pub(crate) const EXIT_OK: u8 = 0;
/// kvmd refused the request, or the job failed or was cancelled.
pub(crate) const EXIT_FAILED: u8 = 1;
/// A bad command line.
const EXIT_USAGE: u8 = 2;
/// kvmd could not be reached or would not serve this client (socket permissions, a refused
/// peer, too many connections), or the connection was lost.
const EXIT_UNREACHABLE: u8 = 3;

/// Why a command did not succeed, before or instead of kvmd's answer.
pub(crate) enum Failure {
    /// A bad value on the command line, as kvmd would report it.
    Usage(ApiError),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

/// What the user asked for, and how to print it.
struct Ctx {
    socket: PathBuf,
    json: bool,
    progress: wait::Progress,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(err) => {
            let wants_json = std::env::args().any(|a| a == "--json");
            let is_usage = !matches!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            if wants_json && is_usage {
                let message = format!("Bad command line: {}", err.kind());
                let details: Vec<String> = err.to_string().lines().map(String::from).collect();
                print_json_error_value(protocol::error_object("usage", &message, &[], &details));
                return ExitCode::from(EXIT_USAGE);
            }
            err.exit();
        }
    };
    if let Cmd::Validate { file, syntax_only } = &args.cmd {
        return validate::run(file, *syntax_only, args.json);
    }
    let ctx = Ctx {
        socket: socket_path(&args),
        json: args.json,
        progress: wait::Progress::new(args.verbose),
    };
    match run(&ctx, &args.cmd) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(err)) => {
            if ctx.json {
                print_json_error(&err);
            } else {
                render::print_error(&err);
            }
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Client(err)) => {
            print_client_error(&ctx, &err);
            match err {
                ClientError::Refused(_) => ExitCode::from(EXIT_FAILED),
                _ => ExitCode::from(EXIT_UNREACHABLE),
            }
        }
    }
}

fn socket_path(args: &Args) -> PathBuf {
    if let Some(s) = &args.socket {
        return s.clone();
    }
    kvmd::config::Config::load(&args.config)
        .map(|c| c.node.socket)
        .unwrap_or_else(|_| kvmd::model::spec::NodeConfig::defaults().socket)
}

/// `{"ok": false, "kind": "error", "error": ...}` on stdout.
fn print_json_error_value(error: Value) {
    println!(
        "{}",
        json_pretty(&json!({"ok": false, "kind": "error", "error": error}))
    );
}

fn print_json_error(err: &ApiError) {
    print_json_error_value(protocol::error_object(
        err.code.as_str(),
        &err.message,
        &err.fields,
        &err.details,
    ));
}

fn print_client_error(ctx: &Ctx, err: &ClientError) {
    if let ClientError::Refused(api) = err {
        if ctx.json {
            print_json_error(api);
        } else {
            render::print_error(api);
        }
        return;
    }
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    if ctx.json {
        print_json_error_value(protocol::error_object(
            err.code(),
            &err.to_string(),
            &[],
            &causes,
        ));
    } else {
        eprintln!("kvmctl: error: {err}");
        for c in causes {
            eprintln!("  caused by: {}", e(&c));
        }
    }
}

/// A name from the command line, refused the way kvmd refuses one.
fn name(field: &str, s: &str) -> Result<InstanceName, Failure> {
    InstanceName::parse(s).map_err(|err| {
        let value = serde_json::to_string(s).expect("strings serialize");
        let rule = format!("{}; names are {NAME_RULE}", err.reason);
        Failure::Usage(ApiError::invalid(vec![FieldError::new(field, value, rule)]))
    })
}

fn job_id(s: &str) -> Result<JobId, Failure> {
    s.parse().map(JobId).map_err(|_| {
        let value = serde_json::to_string(s).expect("strings serialize");
        Failure::Usage(ApiError::invalid(vec![FieldError::new(
            "id",
            value,
            "must be a job id (a non-negative integer)",
        )]))
    })
}

/// A migration blob from a file, or standard input for `-` (at most 1 MiB).
fn read_blob(path: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read;
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(1 << 20).read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(1 << 20).read_to_string(&mut text))
    };
    read.map_err(|err| {
        let value = serde_json::to_string(&path.display().to_string()).expect("strings serialize");
        Failure::Usage(ApiError::invalid(vec![FieldError::new(
            "info",
            value,
            format!("cannot be read: {err}"),
        )]))
    })?;
    Ok(text.trim().to_string())
}

/// Print one answer (kvmd's reply line with `--json`); the exit code follows the result.
fn print_answer(ctx: &Ctx, answer: &Answer) -> u8 {
    if ctx.json {
        let v: Value = serde_json::from_str(&answer.raw).unwrap_or(Value::Null);
        println!("{}", json_pretty(&v));
    } else {
        match &answer.result {
            Ok(reply) => render::print_reply(reply, &ctx.socket),
            Err(err) => render::print_error(err),
        }
    }
    match &answer.result {
        Ok(_) => EXIT_OK,
        // kvmd does not serve this client at all: like not reaching it.
        Err(e)
            if matches!(
                e.code,
                kvmd::api::ErrorCode::PermissionDenied | kvmd::api::ErrorCode::TooManyConnections
            ) =>
        {
            EXIT_UNREACHABLE
        }
        Err(_) => EXIT_FAILED,
    }
}

/// Print a reply kvmctl put together itself (after waiting for a job).
fn print_result(ctx: &Ctx, result: &Result<ApiReply, ApiError>) -> u8 {
    let raw = protocol::reply_value(&json!(1), result).to_string();
    print_answer(
        ctx,
        &Answer {
            result: result.clone(),
            raw,
        },
    )
}

fn run(ctx: &Ctx, cmd: &Cmd) -> Result<u8, Failure> {
    let req = match cmd {
        Cmd::Ping => ApiRequest::Ping,
        Cmd::List { all } => ApiRequest::List { all: *all },
        Cmd::Info { name: Some(n), .. } => ApiRequest::Info {
            name: Some(name("name", n)?),
        },
        Cmd::Info { name: None, all } => {
            if !all {
                return Err(Failure::Usage(ApiError::invalid(vec![FieldError::new(
                    "name",
                    "(missing)",
                    "give an instance name or --all",
                )])));
            }
            ApiRequest::Info { name: None }
        }
        Cmd::Start {
            name: n,
            paused,
            memory,
            definition,
            managed_by,
            wait,
        } => {
            let req = match definition {
                None => ApiRequest::Start {
                    name: name("name", n)?,
                    paused: *paused,
                    wait: wait.wait(),
                    memory: *memory,
                },
                Some(file) => ApiRequest::Create {
                    name: name("name", n)?,
                    definition: std::fs::read_to_string(file).map_err(|e| {
                        Failure::Usage(ApiError::invalid(vec![FieldError::new(
                            "definition",
                            file.display().to_string(),
                            format!("cannot be read: {e}"),
                        )]))
                    })?,
                    managed_by: managed_by.clone(),
                    paused: *paused,
                    wait: wait.wait(),
                    memory: *memory,
                },
            };
            return job_command(ctx, &req, wait.wait());
        }
        Cmd::Stop {
            name: n,
            timeout,
            force,
            wait,
        } => {
            let req = ApiRequest::Stop {
                name: name("name", n)?,
                timeout_s: *timeout,
                force: *force,
                wait: wait.wait(),
            };
            return job_command(ctx, &req, wait.wait());
        }
        Cmd::Reboot {
            name: n,
            hard,
            timeout,
            wait,
        } => {
            let req = ApiRequest::Reboot {
                name: name("name", n)?,
                hard: *hard,
                timeout_s: *timeout,
                wait: wait.wait(),
            };
            return job_command(ctx, &req, wait.wait());
        }
        Cmd::Pause { name: n } => ApiRequest::Pause {
            name: name("name", n)?,
        },
        Cmd::Resume { name: n } => ApiRequest::Resume {
            name: name("name", n)?,
        },
        Cmd::Cleanup { name: n } => ApiRequest::Cleanup {
            name: name("name", n)?,
        },
        Cmd::Reload => ApiRequest::Reload,
        Cmd::Jobs { name: n } => ApiRequest::Jobs {
            name: n.as_deref().map(|n| name("name", n)).transpose()?,
        },
        Cmd::Job { target, wait } => {
            let target = if target.bytes().all(|b| b.is_ascii_digit()) && !target.is_empty() {
                JobRef::Id(job_id(target)?)
            } else {
                JobRef::Instance(name("target", target)?)
            };
            return job(ctx, target, *wait);
        }
        Cmd::Cancel { id } => ApiRequest::Cancel { id: job_id(id)? },
        Cmd::MigrationInfo { name: n } => ApiRequest::MigrationInfo {
            name: name("name", n)?,
        },
        Cmd::MigrationPreflight { info } => ApiRequest::MigrationPreflight {
            info: read_blob(info)?,
        },
        Cmd::Events { since, follow } => return events(ctx, *since, *follow),
        Cmd::Migrate {
            name: n,
            to: Some(to),
            listen,
            non_live,
            ..
        } => {
            return migrate::run(&migrate::Request {
                name: name("name", n)?,
                source: &ctx.socket,
                to,
                listen: listen.as_deref(),
                live: !non_live,
                json: ctx.json,
                verbose: ctx.progress.show,
            })
        }
        Cmd::Migrate {
            name: n,
            target,
            non_live,
            wait,
            ..
        } => {
            let req = ApiRequest::Migrate {
                name: name("name", n)?,
                target: target.clone().unwrap_or_default(),
                live: !non_live,
                wait: wait.wait(),
            };
            return job_command(ctx, &req, wait.wait());
        }
        Cmd::Accept {
            name: n,
            info,
            listen,
            wait,
        } => {
            let req = ApiRequest::Accept {
                name: name("name", n)?,
                info: read_blob(info)?,
                listen: listen.clone(),
                wait: wait.wait(),
            };
            return job_command(ctx, &req, wait.wait());
        }
        Cmd::MigrationStatus { name: n } => ApiRequest::MigrationStatus {
            name: name("name", n)?,
        },
        Cmd::FinalizeDst { name: n, verdict } => ApiRequest::FinalizeDst {
            name: name("name", n)?,
            success: verdict.success,
        },
        Cmd::FinalizeSrc { name: n, verdict } => ApiRequest::FinalizeSrc {
            name: name("name", n)?,
            success: verdict.success,
        },
        Cmd::MigrateCancel { name: n } => ApiRequest::MigrateCancel {
            name: name("name", n)?,
        },
        Cmd::Top {
            name: n,
            interval,
            count,
        } => {
            let n = n.as_deref().map(|n| name("name", n)).transpose()?;
            if !ctx.json {
                return top::run(
                    &ctx.socket,
                    n,
                    std::time::Duration::from_secs(*interval),
                    *count,
                );
            }
            ApiRequest::Stats { name: n }
        }
        Cmd::Console {
            name: n,
            read_only,
            command,
        } => {
            let n = name("name", n)?;
            if !*command {
                return console::run(&ctx.socket, n, !*read_only);
            }
            ApiRequest::ConsoleInfo { name: n }
        }
        Cmd::Hotplug { what } => match what {
            args::HotplugCmd::Add { name: n, device } => ApiRequest::HotplugAdd {
                name: name("name", n)?,
                device: match device {
                    args::HotDeviceArg::Disk {
                        path,
                        format,
                        readonly,
                    } => kvmd::model::hotplug::HotDevice::Disk {
                        // kvmd resolves nothing relative to kvmctl's directory.
                        path: std::fs::canonicalize(path)
                            .map_or_else(|_| path.clone(), |p| p.display().to_string()),
                        format: format.clone(),
                        readonly: *readonly,
                    },
                    args::HotDeviceArg::Nic { mac, mode, link } => {
                        kvmd::model::hotplug::HotDevice::Nic {
                            mac: mac.clone().unwrap_or_default(),
                            mode: match mode.as_str() {
                                "bridged" => kvmd::model::spec::NicMode::Bridged,
                                "routed" => kvmd::model::spec::NicMode::Routed,
                                "openvswitch" => kvmd::model::spec::NicMode::Openvswitch,
                                "user" => kvmd::model::spec::NicMode::User,
                                other => {
                                    return Err(Failure::Usage(ApiError::invalid(vec![
                                        FieldError::new(
                                            "mode",
                                            render::e(other),
                                            "must be user, bridged, routed or openvswitch",
                                        ),
                                    ])))
                                }
                            },
                            link: link.clone(),
                        }
                    }
                },
            },
            args::HotplugCmd::Del { name: n, id } => ApiRequest::HotplugDel {
                name: name("name", n)?,
                id: id.clone(),
            },
            args::HotplugCmd::Mod { name: n, id, link } => ApiRequest::HotplugMod {
                name: name("name", n)?,
                id: id.clone(),
                link_up: link == "up",
            },
        },
        Cmd::Node { what } => {
            let req = match what {
                args::NodeCmd::Info => ApiRequest::NodeInfo,
                args::NodeCmd::Verify => ApiRequest::NodeVerify,
                args::NodeCmd::Powercycle { yes } => ApiRequest::NodePowercycle { yes: *yes },
            };
            let answer = Client::connect(&ctx.socket)?.call(&req)?;
            let code = print_answer(ctx, &answer);
            // Findings of severity error fail the command.
            if let Ok(ApiReply::NodeVerified(v)) = &answer.result {
                if v.iter().any(|f| f.severity == "error") {
                    return Ok(EXIT_FAILED);
                }
            }
            return Ok(code);
        }
        Cmd::Balloon { name: n, mib } => {
            let req = ApiRequest::Balloon {
                name: name("name", n)?,
                mib: *mib,
            };
            let answer = Client::connect(&ctx.socket)?.call(&req)?;
            let code = print_answer(ctx, &answer);
            if let Ok(ApiReply::Ballooned(v)) = &answer.result {
                if v.balloon.as_ref().is_some_and(|b| b.state != "reached") {
                    return Ok(EXIT_FAILED);
                }
            }
            return Ok(code);
        }
        Cmd::Pin { name: n, mask } => ApiRequest::Pin {
            name: name("name", n)?,
            mask: mask.clone(),
        },
        Cmd::Validate { .. } => unreachable!("handled in main"),
    };
    let answer = Client::connect(&ctx.socket)?.call(&req)?;
    Ok(print_answer(ctx, &answer))
}

/// start, stop, reboot: wait for the job through the event stream, or (`--no-wait`) print
/// the accepted job.
fn job_command(ctx: &Ctx, req: &ApiRequest, wait: bool) -> Result<u8, Failure> {
    if !wait {
        let answer = Client::connect(&ctx.socket)?.call(req)?;
        return Ok(print_answer(ctx, &answer));
    }
    match wait::run(&ctx.socket, req, ctx.progress)? {
        wait::Finished::Reply(answer) => Ok(print_answer(ctx, &answer)),
        wait::Finished::Job(job) => {
            let mut client = Client::connect(&ctx.socket)?;
            Ok(print_result(ctx, &wait::as_reply(&mut client, &job)))
        }
    }
}

/// `kvmctl job ID|NAME [--wait]`.
fn job(ctx: &Ctx, target: JobRef, wait_end: bool) -> Result<u8, Failure> {
    // Subscribe before asking, so an end between the two is not missed.
    let stream = if wait_end {
        Some(Client::connect(&ctx.socket)?.subscribe(None, true)?)
    } else {
        None
    };
    let mut client = Client::connect(&ctx.socket)?;
    let answer = client.call(&ApiRequest::Job { target })?;
    let (Some(mut stream), Ok(ApiReply::Job(job))) = (stream, &answer.result) else {
        return Ok(print_answer(ctx, &answer));
    };
    let ended = wait::until_ended(&mut stream, &mut client, job.clone(), ctx.progress)?;
    let code = print_result(ctx, &Ok(ApiReply::Job(ended.clone())));
    Ok(match ended.state {
        JobState::Succeeded | JobState::Running => code,
        JobState::Failed | JobState::Cancelled => EXIT_FAILED,
    })
}

/// `kvmctl events [--since SEQ] [--follow]`: one line per event; gaps as warnings. A reader
/// that goes away (`| head`) ends it quietly.
fn events(ctx: &Ctx, since: Option<u64>, follow: bool) -> Result<u8, Failure> {
    let mut stream = Client::connect(&ctx.socket)?.subscribe(since, follow)?;
    let mut out = std::io::stdout().lock();
    if !ctx.json && out.is_terminal() {
        let header = format!(
            "{:>8}  {:<23}  {:<20}  WHAT",
            "SEQ", "TIME (UTC)", "INSTANCE"
        );
        if writeln!(out, "{header}").is_err() {
            return Ok(EXIT_OK);
        }
    }
    while let Some(next) = stream.next_raw() {
        let (item, raw) = next?;
        let line = if ctx.json {
            json_line(&serde_json::from_str(&raw).unwrap_or(Value::Null))
        } else {
            match item {
                StreamItem::Event(ev) => render::event_line(&ev),
                StreamItem::Gap { from, to } => render::gap_line(from, to),
                StreamItem::End { .. } => continue,
            }
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(EXIT_OK);
        }
    }
    Ok(EXIT_OK)
}
