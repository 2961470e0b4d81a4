//! kvmctl's output: tables and details of instances and jobs, one line per event, errors, and
//! JSON printed safely.
//!
//! Invariant: every string that came from kvmd or the config (names, phases, messages, QEMU's
//! stderr, versions) passes through `escape` before it reaches the terminal; JSON output has
//! no raw control characters either.

use std::fmt::Write as _;
use std::path::Path;

use kvmd::api::{
    ApiError, ApiReply, DaemonEvent, Event, EventKind, JobInfo, JobOutcome, QemuEvent, VmInfo,
};
use kvmd::model::exit::ExitKind;
use kvmd::model::text::escape;
use serde_json::Value;

/// `escape`, as an owned string for format arguments.
pub fn e(s: &str) -> String {
    escape(s).into_owned()
}

/// JSON text with DEL and C1 control characters escaped too (serde_json leaves them raw,
/// and some terminals act on them).
fn json_safe(text: String) -> String {
    if !text.chars().any(|c| ('\u{7f}'..='\u{9f}').contains(&c)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 12);
    for c in text.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// One JSON value on one line.
pub fn json_line(v: &Value) -> String {
    json_safe(serde_json::to_string(v).expect("JSON values serialize"))
}

/// One JSON value, pretty-printed.
pub fn json_pretty(v: &Value) -> String {
    json_safe(serde_json::to_string_pretty(v).expect("JSON values serialize"))
}

pub fn print_error(err: &ApiError) {
    eprintln!("kvmctl: error: {} [{}]", e(&err.message), err.code.as_str());
    for f in &err.fields {
        let mut line = format!("  {}: {} ({})", e(&f.field), e(&f.value), e(&f.rule));
        if !f.allowed.is_empty() {
            let allowed: Vec<_> = f.allowed.iter().map(|a| e(a)).collect();
            let _ = write!(line, "; allowed: {}", allowed.join(", "));
        }
        eprintln!("{line}");
    }
    for d in &err.details {
        eprintln!("  | {}", e(d));
    }
}

pub fn dur(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn time(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    // u64::MAX / 86_400 is below 2^48: the day count always fits.
    #[allow(clippy::cast_possible_wrap)]
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{millis:03}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn pid(p: Option<u32>) -> String {
    p.map_or("-".into(), |p| p.to_string())
}

pub fn vm_table(vms: &[VmInfo]) {
    println!(
        "{:<20} {:<13} {:>8} {:>8} {:>5} {:>9} {:>9}",
        "NAME", "STATE", "PID", "MEM(MiB)", "VCPUS", "CPU", "UPTIME"
    );
    for v in vms {
        println!(
            "{:<20} {:<13} {:>8} {:>8} {:>5} {:>9} {:>9}",
            e(v.name.as_str()),
            v.state.as_str(),
            pid(v.pid),
            v.memory_mib,
            v.vcpus,
            v.cpu_time_ms
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            v.uptime_s.map_or("-".into(), dur),
        );
    }
}

fn exit_kind(k: ExitKind) -> &'static str {
    match k {
        ExitKind::Stopped => "stopped",
        ExitKind::UserDown => "user-down",
        ExitKind::Crashed => "crashed",
        ExitKind::Migrated => "migrated",
    }
}

pub fn vm_details(v: &VmInfo) {
    println!("{}", e(v.name.as_str()));
    println!("  state:        {}", v.state.as_str());
    if let Some(job) = &v.job {
        println!(
            "  job:          {} {} ({})",
            job.kind,
            job.id,
            e(&job.phase)
        );
    }
    println!("  pid:          {}", pid(v.pid));
    if let Some(m) = &v.managed_by {
        println!(
            "  managed by:   {} (started with its definition; kvmd's config does not define it)",
            e(m)
        );
    }
    println!("  memory:       {} MiB", v.memory_mib);
    println!("  vcpus:        {}", v.vcpus);
    if let Some(m) = &v.cpu_mask {
        println!("  pinning:      {}", e(m));
    }
    if let Some(h) = &v.hardware {
        println!("  uuid:         {}", e(&h.uuid));
        println!("  machine:      {} ({})", e(&h.machine), e(&h.accelerator));
        for (i, d) in h.disks.iter().enumerate() {
            println!(
                "  disk/{i}:       {} ({}{}, {} at {}{}{})",
                e(&d.path),
                e(&d.format),
                if d.readonly { ", read-only" } else { "" },
                e(&d.bus),
                e(&d.address),
                d.id.as_deref()
                    .map_or(String::new(), |id| format!(", hot-plugged as {}", e(id))),
                if d.pending_removal {
                    ", pending removal"
                } else {
                    ""
                }
            );
        }
        for (i, n) in h.nics.iter().enumerate() {
            println!(
                "  nic/{i}:        {} {} {} tap {} ({} at {}{}{})",
                e(&n.mode),
                e(&n.link),
                e(&n.mac),
                e(n.tap.as_deref().unwrap_or("-")),
                e(&n.model),
                e(&n.address),
                n.id.as_deref()
                    .map_or(String::new(), |id| format!(", hot-plugged as {}", e(id))),
                if n.pending_removal {
                    ", pending removal"
                } else if !n.link_up {
                    ", link down"
                } else {
                    ""
                }
            );
        }
        if let Some(s) = &h.serial_socket {
            println!(
                "  console:      {} (kvmctl console {})",
                e(s),
                e(v.name.as_str())
            );
        }
        if let Some(d) = &h.display {
            println!("  display:      {}", e(d));
        }
        if h.hotplug_ports > 0 {
            println!(
                "  hot-plug:     {} of {} spare pcie-root-ports free",
                h.hotplug_ports_free, h.hotplug_ports
            );
        }
    }
    if let Some(g) = &v.guest_memory {
        println!(
            "  guest memory: {} MiB total, {} MiB free, {} MiB available (its balloon driver says)",
            g.total_mib, g.free_mib, g.available_mib
        );
    }
    if let Some(b) = &v.balloon {
        println!(
            "  balloon:      {} MiB of target {} MiB ({})",
            b.actual_mib,
            b.target_mib,
            e(&b.state)
        );
    }
    println!(
        "  cpu time:     {}",
        v.cpu_time_ms
            .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0))
    );
    println!("  uptime:       {}", v.uptime_s.map_or("-".into(), dur));
    if let Some(q) = &v.qemu_version {
        println!("  qemu:         {}", e(q));
    }
    println!("  autostart:    {}", v.autostart);
    if !v.in_config {
        println!("  in config:    no (adopted from the run dir)");
    }
    if v.pending_changes {
        println!("  pending:      definition changed; applies at next start");
    }
    if let Some(x) = &v.last_exit {
        println!("  last exit:    {} — {}", exit_kind(x.kind), e(&x.reason));
        for l in &x.stderr_tail {
            println!("    | {}", e(l));
        }
    }
}

/// How a job ended, in a few words.
pub fn outcome(j: &JobInfo) -> String {
    match &j.outcome {
        None => format!("running: {}", e(&j.phase)),
        Some(JobOutcome::Done { stop: Some(s) }) => {
            format!(
                "{} ({} after {} ms)",
                j.state.as_str(),
                s.ended.as_str(),
                s.elapsed_ms
            )
        }
        Some(JobOutcome::Done { stop: None }) => j.state.as_str().to_string(),
        Some(JobOutcome::Failed(err)) => {
            format!("failed: {} [{}]", e(&err.message), err.code.as_str())
        }
        Some(JobOutcome::Cancelled { reason }) => format!("cancelled: {}", e(reason)),
    }
}

pub fn job_table(jobs: &[JobInfo]) {
    println!(
        "{:<18} {:<9} {:<20} {:<10} {:<23} {:>9}",
        "ID", "KIND", "INSTANCE", "STATE", "STARTED (UTC)", "TOOK"
    );
    for j in jobs {
        let took = j.ended_at_ms.map_or("-".into(), |end| {
            format!("{} ms", end.saturating_sub(j.started_at_ms))
        });
        println!(
            "{:<18} {:<9} {:<20} {:<10} {:<23} {:>9}",
            j.id.to_string(),
            j.kind.as_str(),
            e(j.instance.as_str()),
            j.state.as_str(),
            time(j.started_at_ms),
            took
        );
    }
}

pub fn job_details(j: &JobInfo) {
    println!("job {}", j.id);
    println!("  instance:     {}", e(j.instance.as_str()));
    println!("  kind:         {}", j.kind.as_str());
    println!("  state:        {}", j.state.as_str());
    println!("  phase:        {}", e(&j.phase));
    if let Some(p) = &j.progress {
        println!("  progress:     {}/{} {}", p.done, p.total, e(&p.unit));
    }
    println!("  started:      {} UTC", time(j.started_at_ms));
    if let Some(d) = j.deadline_ms {
        println!("  deadline:     {} UTC", time(d));
    }
    if let Some(end) = j.ended_at_ms {
        println!("  ended:        {} UTC", time(end));
    }
    if j.resumed {
        println!("  resumed:      yes (taken over by a restarted kvmd)");
    }
    if j.outcome.is_some() {
        println!("  outcome:      {}", outcome(j));
    }
    if let Some(JobOutcome::Failed(err)) = &j.outcome {
        for d in &err.details {
            println!("    | {}", e(d));
        }
    }
}

/// What an event says, in words.
fn what(kind: &EventKind) -> String {
    let job = |j: &JobInfo, verb: &str| format!("{} job {} {verb}", j.kind, j.id);
    match kind {
        EventKind::State { state, previous } => {
            format!("state {} -> {}", previous.as_str(), state.as_str())
        }
        EventKind::JobStarted(j) => format!("{} (phase {})", job(j, "started"), e(&j.phase)),
        EventKind::JobProgress(j) => match &j.progress {
            Some(p) => format!(
                "{}: {} [{}/{} {}]",
                job(j, "at"),
                e(&j.phase),
                p.done,
                p.total,
                e(&p.unit)
            ),
            None => format!("{}: {}", job(j, "at"), e(&j.phase)),
        },
        EventKind::JobEnded(j) => format!("{}: {}", job(j, "ended"), outcome(j)),
        EventKind::Exited(x) => format!(
            "QEMU pid {} exited: {} — {}",
            x.pid,
            exit_kind(x.kind),
            e(&x.reason)
        ),
        EventKind::Qemu(q) => match q {
            QemuEvent::Shutdown { guest, reason } => format!(
                "QEMU shutdown by the {} ({})",
                if *guest { "guest" } else { "host" },
                e(reason)
            ),
            QemuEvent::Reset { guest, reason } => format!(
                "QEMU reset by the {} ({})",
                if *guest { "guest" } else { "host" },
                e(reason)
            ),
            QemuEvent::Powerdown => "ACPI power button pressed".into(),
            QemuEvent::PendingRemoval { device } => format!(
                "{} is pending removal: the guest has not let it go",
                e(device)
            ),
            QemuEvent::GuestPanicked { action } => {
                format!("guest panicked (QEMU action: {})", e(action))
            }
            QemuEvent::BlockIoError {
                device,
                operation,
                action,
                reason,
            } => format!(
                "block I/O error on {} during {} ({}): {}",
                e(device),
                e(operation),
                e(action),
                e(reason)
            ),
            QemuEvent::Unresponsive { command } => {
                format!("QEMU unresponsive ({} missed its deadline)", e(command))
            }
            QemuEvent::Responsive => "QEMU answers again".into(),
        },
        EventKind::Daemon(d) => match d {
            DaemonEvent::Started { version } => format!("kvmd {} started", e(version)),
            DaemonEvent::Stopping => "kvmd stopping".into(),
            DaemonEvent::Reloaded {
                added,
                removed,
                changed,
            } => format!(
                "config reloaded: {} added, {} removed, {} changed",
                added.len(),
                removed.len(),
                changed.len()
            ),
        },
    }
}

/// One event as one line: sequence number, time, instance, what happened.
pub fn event_line(ev: &Event) -> String {
    format!(
        "{:>8}  {}  {:<20}  {}",
        ev.seq,
        time(ev.at_ms),
        ev.instance.as_ref().map_or("-".into(), |n| e(n.as_str())),
        what(&ev.kind)
    )
}

/// The warning for events lost to this stream.
pub fn gap_line(from: u64, to: u64) -> String {
    let which = if from == to {
        format!("event {from} is")
    } else {
        format!("events {from}-{to} are")
    };
    format!(
        "WARNING: {which} lost to this stream (kvmd keeps only its latest events: this reader \
         was too slow, or --since is older than kvmd's history)"
    )
}

pub fn print_reply(r: &ApiReply, socket: &Path) {
    match r {
        ApiReply::Stats(s) => print!("{}", table(s, &std::collections::HashMap::new())),
        ApiReply::Pong { version } => println!(
            "kvmd {} answers on {}",
            e(version),
            e(&socket.display().to_string())
        ),
        ApiReply::List(v) => vm_table(v),
        ApiReply::Info(v) => {
            for (i, vm) in v.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                vm_details(vm);
            }
        }
        ApiReply::Started(v) => {
            println!(
                "{}: {} (pid {})",
                e(v.name.as_str()),
                v.state.as_str(),
                pid(v.pid)
            )
        }
        ApiReply::Stopped {
            ended,
            elapsed_ms,
            info,
        } => println!(
            "{}: {} ({} after {} ms)",
            e(info.name.as_str()),
            info.state.as_str(),
            ended.as_str(),
            elapsed_ms
        ),
        ApiReply::Rebooted(v) => println!(
            "{}: rebooted, {} (pid {})",
            e(v.name.as_str()),
            v.state.as_str(),
            pid(v.pid)
        ),
        ApiReply::CleanedUp { name } => println!("{}: runtime files removed", e(name.as_str())),
        ApiReply::Paused(v) | ApiReply::Resumed(v) => {
            println!("{}: {}", e(v.name.as_str()), v.state.as_str())
        }
        ApiReply::Accepted(j) => println!(
            "{}: {} job {} accepted",
            e(j.instance.as_str()),
            j.kind,
            j.id
        ),
        ApiReply::Jobs(jobs) => job_table(jobs),
        ApiReply::Job(j) => job_details(j),
        ApiReply::Cancelling(j) => println!(
            "job {} ({} of {}): cancelling",
            j.id,
            j.kind,
            e(j.instance.as_str())
        ),
        ApiReply::Subscribed { last_seq } => println!("subscribed (last event {last_seq})"),
        // Printed as JSON with every control character escaped (the blob holds paths and
        // hvparams from the config), still a blob a target takes.
        ApiReply::MigrationInfo { info } => match serde_json::from_str::<serde_json::Value>(info) {
            Ok(v) => println!("{}", json_line(&v)),
            Err(_) => println!("{}", e(info)),
        },
        ApiReply::PreflightPassed {
            machine,
            qemu_version,
        } => println!(
            "preflight passed: this node would run it as {} under {}",
            e(machine),
            e(qemu_version)
        ),
        ApiReply::MigrationStep(v) => println!("{}: {}", e(v.name.as_str()), v.state.as_str()),
        ApiReply::Console { name, writer } => println!(
            "attached to {}'s console{}",
            e(name.as_str()),
            if *writer { "" } else { " (watching)" }
        ),
        ApiReply::ConsoleInfo(c) => match c.kind.as_str() {
            "serial" => println!(
                "{}: serial console; on this node run: {}",
                e(c.name.as_str()),
                e(&c.command.join(" "))
            ),
            "none" => println!(
                "{}: no console (serial_console off, no VNC, no SPICE)",
                e(c.name.as_str())
            ),
            kind => println!(
                "{}: {} at {}:{}{}",
                e(c.name.as_str()),
                kind,
                e(c.host.as_deref().unwrap_or("?")),
                c.port.map_or("?".to_string(), |p| p.to_string()),
                c.password_file
                    .as_deref()
                    .map_or(String::new(), |f| format!(
                        " (password: the first line of {})",
                        e(f)
                    ))
            ),
        },
        ApiReply::NodeInfo(n) => {
            println!("{} (kvmd {})", e(&n.hostname), e(&n.kvmd_version));
            println!(
                "  memory:      {} MiB total, {} MiB free, {} MiB for {} instances, {} MiB for the node",
                n.memory_total_mib,
                n.memory_free_mib,
                n.memory_instances_mib,
                n.instances_running,
                n.memory_node_mib
            );
            println!(
                "  cpus:        {} ({} socket(s) x {} core(s) x {} thread(s), {} NUMA node(s)) {}",
                n.cpus,
                n.sockets,
                n.cores_per_socket,
                n.threads_per_core,
                n.numa_nodes,
                e(&n.cpu_model)
            );
            println!(
                "  hypervisor:  {}; {} {}",
                e(&n.accelerator),
                e(&n.qemu_path),
                n.qemu_version
                    .map_or("(not probed)".to_string(), |(a, b, c)| format!(
                        "{a}.{b}.{c}"
                    ))
            );
            println!("  ancillary:   {}", e(&n.ancillary_files.join(", ")));
        }
        ApiReply::NodeVerified(v) => {
            for f in v {
                println!("{:<8} {:<12} {}", f.severity, e(&f.check), e(&f.detail));
            }
        }
        ApiReply::Powercycling { steps } => {
            println!("power-cycling this node now:");
            for s in steps {
                println!("  {}", e(s));
            }
        }
        ApiReply::Hotplugged(v) => {
            let hw = v.hardware.as_deref();
            let plugged: Vec<String> = hw
                .map(|h| {
                    h.disks
                        .iter()
                        .filter_map(|d| Some((d.id.clone()?, d.address.clone(), d.pending_removal)))
                        .chain(h.nics.iter().filter_map(|n| {
                            Some((n.id.clone()?, n.address.clone(), n.pending_removal))
                        }))
                        .map(|(id, addr, pending)| {
                            format!(
                                "{} at {}{}",
                                e(&id),
                                e(&addr),
                                if pending { " (pending removal)" } else { "" }
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if plugged.is_empty() {
                println!("{}: no plugged devices", e(v.name.as_str()));
            } else {
                println!("{}: plugged: {}", e(v.name.as_str()), plugged.join(", "));
            }
        }
        ApiReply::Ballooned(v) => match &v.balloon {
            Some(b) => println!(
                "{}: balloon {} at {} MiB (target {} MiB)",
                e(v.name.as_str()),
                e(&b.state),
                b.actual_mib,
                b.target_mib
            ),
            None => println!("{}: balloon done", e(v.name.as_str())),
        },
        ApiReply::Pinned(v) => println!(
            "{}: pinned to {}",
            e(v.name.as_str()),
            e(v.cpu_mask.as_deref().unwrap_or("?"))
        ),
        ApiReply::MigrationStatus { info, migration: m } => {
            println!("{}: {}", e(info.name.as_str()), info.state.as_str());
            println!("  migration:    {}", e(&m.status));
            if let Some(job) = m.job {
                println!("  job:          {job}");
                println!(
                    "  transferred:  {} of {} ({} remaining), pass {}",
                    m.transferred, m.total, m.remaining, m.pass
                );
                println!(
                    "  speed:        {} bytes/s, dirty {} pages/s, downtime limit {} ms",
                    m.speed_bps, m.dirty_pages_rate, m.downtime_limit_ms
                );
                if let Some(s) = m.stalled_ms {
                    println!("  stalled:      {s} ms without progress");
                }
            }
            if let Some(s) = &m.summary {
                let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
                println!(
                    "  last:         {}{}",
                    e(&s.outcome),
                    s.reason
                        .as_ref()
                        .map_or(String::new(), |r| format!(": {}", e(r)))
                );
                println!(
                    "  figures:      total {}, downtime {}, {} bytes in {} passes, {}",
                    ms(s.total_time_ms),
                    ms(s.downtime_ms),
                    s.transferred,
                    s.passes,
                    e(&s.path)
                );
            }
        }
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
                    let names: Vec<_> = l.iter().map(|n| e(n)).collect();
                    println!("  {what}: {}", names.join(", "));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_as_utc_calendar_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00.000");
        assert_eq!(time(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(time(1_795_484_635_052), "2026-11-24 01:43:55.052");
    }

    #[test]
    fn json_output_escapes_c1_controls_that_serde_leaves_raw() {
        let v = serde_json::json!({"m": "a\u{9b}31mb\u{1b}c"});
        let line = json_line(&v);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_gap_warning_names_the_lost_events() {
        assert!(gap_line(3, 9).contains("events 3-9 are lost"));
        assert!(gap_line(4, 4).contains("event 4 is lost"));
    }
}

// ---- kvmctl top ----

/// Per-second rates between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub cpu_percent: f64,
    pub block_read: f64,
    pub block_write: f64,
    pub net_rx: f64,
    pub net_tx: f64,
}

/// The rates from `old` to `new` (`None` when `new` is not a later sample).
#[allow(clippy::cast_precision_loss)] // counters and milliseconds far below 2^53
pub fn rates(old: &kvmd::api::VmStats, new: &kvmd::api::VmStats) -> Option<Rates> {
    if new.sampled_at_ms <= old.sampled_at_ms || old.sampled_at_ms == 0 {
        return None;
    }
    let secs = (new.sampled_at_ms - old.sampled_at_ms) as f64 / 1000.0;
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    Some(Rates {
        cpu_percent: per_s(old.cpu_ms, new.cpu_ms) / 10.0,
        block_read: per_s(old.block_read_bytes, new.block_read_bytes),
        block_write: per_s(old.block_write_bytes, new.block_write_bytes),
        net_rx: per_s(old.net_rx_bytes, new.net_rx_bytes),
        net_tx: per_s(old.net_tx_bytes, new.net_tx_bytes),
    })
}

/// Bytes per second, short: `512`, `12.3K`, `4.0M`, `1.1G`.
pub fn human(v: f64) -> String {
    let units = [("G", 1e9), ("M", 1e6), ("K", 1e3)];
    for (u, f) in units {
        if v >= f {
            return format!("{:.1}{u}", v / f);
        }
    }
    format!("{v:.0}")
}

fn mib(b: u64) -> String {
    (b >> 20).to_string()
}

/// The table of `stats` with the rates known so far.
pub fn table(
    stats: &[kvmd::api::VmStats],
    rates: &std::collections::HashMap<String, Rates>,
) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
        "NAME",
        "STATE",
        "CPU%",
        "MEM(MiB)",
        "RSS(MiB)",
        "AVAIL",
        "BLK-RD/s",
        "BLK-WR/s",
        "NET-RX/s",
        "NET-TX/s"
    );
    for s in stats {
        let r = rates.get(&s.name);
        let rate = |f: fn(&Rates) -> f64| r.map_or("-".to_string(), |r| human(f(r)));
        out.push_str(&format!(
            "{:<20} {:<12} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
            e(&s.name),
            e(&s.state),
            r.map_or("-".into(), |r| format!("{:.1}", r.cpu_percent)),
            if s.sampled_at_ms == 0 {
                "-".into()
            } else {
                mib(s.balloon_bytes.unwrap_or(s.memory_bytes))
            },
            if s.rss_bytes == 0 {
                "-".into()
            } else {
                mib(s.rss_bytes)
            },
            s.guest_available_bytes.map_or("-".into(), mib),
            rate(|r| r.block_read),
            rate(|r| r.block_write),
            rate(|r| r.net_rx),
            rate(|r| r.net_tx),
        ));
    }
    out
}
