//! `kvmctl`: operate kvmd over its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kvmd::api::{ApiError, ApiReply, ApiRequest, VmInfo};
use kvmd::control::client::Client;
use kvmd::model::name::InstanceName;

/// Control kvmd: start, stop and inspect virtual machines.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Control socket (default: node.socket from the config file).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Config file to read the socket path from.
    #[arg(long, global = true, default_value = "/etc/kvmd/kvmd.toml")]
    config: PathBuf,
    /// Print kvmd's JSON reply instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check that kvmd answers.
    Ping,
    /// Running instances.
    List,
    /// Details of one instance, or of all with --all.
    Info {
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Start an instance.
    Start {
        name: String,
        /// Leave the guest paused after QEMU starts.
        #[arg(long)]
        paused: bool,
    },
    /// Stop an instance: ACPI power button, then SIGTERM, then SIGKILL.
    Stop {
        name: String,
        /// Seconds to wait for the guest before escalating (default: node.stop_timeout).
        #[arg(long)]
        timeout: Option<u64>,
        /// Kill QEMU at once.
        #[arg(long)]
        force: bool,
    },
    /// Reboot: stop and start with the current definition (--hard: reset in place).
    Reboot {
        name: String,
        #[arg(long)]
        hard: bool,
        /// Seconds the stop half waits for the guest (default: node.stop_timeout).
        #[arg(long, conflicts_with = "hard")]
        timeout: Option<u64>,
    },
    /// Freeze a running guest.
    Pause { name: String },
    /// Let a paused guest run (e.g. after start --paused).
    Resume { name: String },
    /// Remove a stopped instance's runtime files.
    Cleanup { name: String },
    /// Make kvmd re-read its config file.
    Reload,
    /// Check a config file without kvmd: syntax, hvparam rules, and this node (files, users,
    /// what the QEMU binary offers). Prints every problem; exits non-zero on any.
    Validate {
        file: PathBuf,
        /// Only the checks that do not look at this host.
        #[arg(long)]
        syntax_only: bool,
    },
}

fn name(s: &str) -> Result<InstanceName> {
    InstanceName::parse(s).map_err(anyhow::Error::new)
}

fn socket_path(args: &Args) -> PathBuf {
    if let Some(s) = &args.socket {
        return s.clone();
    }
    kvmd::config::Config::load(&args.config)
        .map(|c| c.node.socket)
        .unwrap_or_else(|_| kvmd::model::spec::NodeConfig::defaults().socket)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmctl: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn validate(file: &Path, syntax_only: bool, json: bool) -> Result<ExitCode> {
    let config = match kvmd::config::Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            let fields = match &e {
                kvmd::config::ConfigError::Invalid { errors, .. } => errors.0.clone(),
                _ => Vec::new(),
            };
            if json {
                let list: Vec<_> = fields.iter().map(|f| serde_json::json!({"field": f.field, "value": f.value, "rule": f.rule, "allowed": f.allowed})).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"ok": false, "config": e.to_string(), "errors": list})
                    )?
                );
            } else {
                eprintln!("kvmctl: {}", file.display());
                if fields.is_empty() {
                    eprintln!("  {e}");
                }
                for f in &fields {
                    eprintln!("  {f}");
                }
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let report = kvmd::host::validate::config_report(&config, syntax_only);
    if json {
        let instances: serde_json::Map<String, serde_json::Value> = report
            .instances
            .iter()
            .map(|(n, errs)| {
                let list: Vec<_> = errs.iter().map(|f| serde_json::json!({"field": f.field, "value": f.value, "rule": f.rule, "allowed": f.allowed})).collect();
                (n.clone(), serde_json::Value::Array(list))
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"ok": report.ok(), "instances": instances})
            )?
        );
    } else {
        for (name, errs) in &report.instances {
            if errs.is_empty() {
                println!("{name}: ok");
            } else {
                println!("{name}: {} problem(s)", errs.len());
                for e in errs {
                    println!("  {e}");
                }
            }
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run(args: &Args) -> Result<ExitCode> {
    if let Cmd::Validate { file, syntax_only } = &args.cmd {
        return validate(file, *syntax_only, args.json);
    }
    let req = match &args.cmd {
        Cmd::Ping => ApiRequest::Ping,
        Cmd::List => ApiRequest::List,
        Cmd::Info { name: Some(n), .. } => ApiRequest::Info {
            name: Some(name(n)?),
        },
        Cmd::Info { name: None, all } => {
            if !all {
                anyhow::bail!("give an instance name or --all");
            }
            ApiRequest::Info { name: None }
        }
        Cmd::Start { name: n, paused } => ApiRequest::Start {
            name: name(n)?,
            paused: *paused,
            wait: true,
        },
        Cmd::Stop {
            name: n,
            timeout,
            force,
        } => ApiRequest::Stop {
            name: name(n)?,
            timeout_s: *timeout,
            force: *force,
            wait: true,
        },
        Cmd::Reboot {
            name: n,
            hard,
            timeout,
        } => ApiRequest::Reboot {
            name: name(n)?,
            hard: *hard,
            timeout_s: *timeout,
            wait: true,
        },
        Cmd::Pause { name: n } => ApiRequest::Pause { name: name(n)? },
        Cmd::Resume { name: n } => ApiRequest::Resume { name: name(n)? },
        Cmd::Cleanup { name: n } => ApiRequest::Cleanup { name: name(n)? },
        Cmd::Reload => ApiRequest::Reload,
        Cmd::Validate { .. } => unreachable!("handled above"),
    };
    let socket = socket_path(args);
    let mut client = Client::connect(&socket).with_context(|| "is kvmd running?")?;
    let answer = client.call(&req)?;
    if args.json {
        let v: serde_json::Value =
            serde_json::from_str(&answer.raw).context("kvmd's reply is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(if answer.result.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    match answer.result {
        Ok(reply) => {
            print_reply(&reply, &socket);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            print_error(&e);
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_error(e: &ApiError) {
    eprintln!("kvmctl: error: {} [{}]", e.message, e.code.as_str());
    for f in &e.fields {
        eprint!("  {}: {} ({})", f.field, f.value, f.rule);
        if !f.allowed.is_empty() {
            eprint!("; allowed: {}", f.allowed.join(", "));
        }
        eprintln!();
    }
    for d in &e.details {
        eprintln!("  | {d}");
    }
}

fn dur(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn table(vms: &[VmInfo]) {
    println!(
        "{:<20} {:<13} {:>8} {:>8} {:>5} {:>9} {:>9}",
        "NAME", "STATE", "PID", "MEM(MiB)", "VCPUS", "CPU", "UPTIME"
    );
    for v in vms {
        println!(
            "{:<20} {:<13} {:>8} {:>8} {:>5} {:>9} {:>9}",
            v.name.as_str(),
            v.state.as_str(),
            v.pid.map_or("-".into(), |p| p.to_string()),
            v.memory_mib,
            v.vcpus,
            v.cpu_time_ms
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            v.uptime_s.map_or("-".into(), dur),
        );
    }
}

fn details(v: &VmInfo) {
    println!("{}", v.name);
    println!("  state:        {}", v.state.as_str());
    if let Some(job) = &v.job {
        println!("  job:          {} {} ({})", job.kind, job.id, job.phase);
    }
    println!(
        "  pid:          {}",
        v.pid.map_or("-".into(), |p| p.to_string())
    );
    println!("  memory:       {} MiB", v.memory_mib);
    println!("  vcpus:        {}", v.vcpus);
    println!(
        "  cpu time:     {}",
        v.cpu_time_ms
            .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0))
    );
    println!("  uptime:       {}", v.uptime_s.map_or("-".into(), dur));
    if let Some(q) = &v.qemu_version {
        println!("  qemu:         {q}");
    }
    println!("  autostart:    {}", v.autostart);
    if !v.in_config {
        println!("  in config:    no (adopted from the run dir)");
    }
    if v.pending_changes {
        println!("  pending:      definition changed; applies at next start");
    }
    if let Some(e) = &v.last_exit {
        println!(
            "  last exit:    {} — {}",
            serde_json::to_string(&e.kind)
                .unwrap_or_default()
                .trim_matches('"'),
            e.reason
        );
        for l in &e.stderr_tail {
            println!("    | {l}");
        }
    }
}

fn print_reply(r: &ApiReply, socket: &Path) {
    match r {
        ApiReply::Pong { .. } => println!("kvmd answers on {}", socket.display()),
        ApiReply::List(v) => table(v),
        ApiReply::Info(v) => {
            for (i, vm) in v.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                details(vm);
            }
        }
        ApiReply::Started(v) => println!(
            "{}: {} (pid {})",
            v.name,
            v.state.as_str(),
            v.pid.map_or("-".into(), |p| p.to_string())
        ),
        ApiReply::Stopped {
            ended,
            elapsed_ms,
            info,
        } => println!(
            "{}: {} ({} after {} ms)",
            info.name,
            info.state.as_str(),
            ended.as_str(),
            elapsed_ms
        ),
        ApiReply::Rebooted(v) => println!(
            "{}: rebooted, {} (pid {})",
            v.name,
            v.state.as_str(),
            v.pid.map_or("-".into(), |p| p.to_string())
        ),
        ApiReply::CleanedUp { name } => println!("{name}: runtime files removed"),
        ApiReply::Paused(v) | ApiReply::Resumed(v) => println!("{}: {}", v.name, v.state.as_str()),
        ApiReply::Accepted(_)
        | ApiReply::Jobs(_)
        | ApiReply::Job(_)
        | ApiReply::Cancelling(_)
        | ApiReply::Subscribed { .. } => println!("(not yet shown by this build)"),
        ApiReply::Reloaded {
            added,
            removed,
            changed,
            node_changed,
        } => {
            if *node_changed {
                println!("note: [node] settings changed; they apply when kvmd restarts");
            }
            println!(
                "config reloaded: {} added, {} removed, {} changed",
                added.len(),
                removed.len(),
                changed.len()
            );
            for (what, l) in [("added", added), ("removed", removed), ("changed", changed)] {
                if !l.is_empty() {
                    println!("  {what}: {}", l.join(", "));
                }
            }
        }
    }
}
