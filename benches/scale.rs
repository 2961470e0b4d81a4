//! Scale: 100 paused VMs (64 MiB each) on one small host, run by hand as root:
//! `cargo bench --bench scale`.
//!
//! Measured in one run, each against its baseline with 1 VM: `list` and `info --all` p50/p99,
//! a metrics scrape's time, kvmd's idle CPU use (over 20 s with production intervals: health
//! every 2 s, metrics every 5 s) and RSS, and re-adoption after `kill -9` of kvmd (spawn →
//! `list` shows all 100 paused).
//!
//! Goals (issue 10): `list` p99 ≤ 2 ms, scrape ≤ 20 ms, idle CPU ≤ 1 % of one core,
//! RSS ≤ 20 MiB, re-adoption ≤ 1 s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use kvmd::api::{ApiReply, ApiRequest};
use support::*;

const VMS: usize = 100;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // p is a fraction in 0..=1: a non-negative index at most len, which `as` floors.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = (v.len() as f64 * p) as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// kvmd's CPU seconds so far (user + system, all threads).
fn cpu_s(pid: u32) -> f64 {
    let (cpu, _) = kvmd::host::procstat::process(pid).unwrap();
    cpu
}

fn scrape(port: u16) -> (Duration, usize) {
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text\r\n\r\n")
        .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).unwrap();
    (t0.elapsed(), body.len())
}

fn latencies(d: &Daemon, port: u16, label: &str) {
    let mut client = d.client();
    for (what, req, n) in [
        ("list", ApiRequest::List { all: false }, 1000),
        ("info --all", ApiRequest::Info { name: None }, 300),
    ] {
        let mut v = Vec::new();
        for _ in 0..n {
            let t0 = Instant::now();
            client.call(&req).unwrap().result.unwrap();
            v.push(ms(t0.elapsed()));
        }
        println!(
            "  {label:<8} {what:<11} p50 {:7.3} ms   p99 {:7.3} ms",
            pct(&mut v, 0.5),
            pct(&mut v, 0.99)
        );
    }
    let mut v = Vec::new();
    let mut bytes = 0;
    for _ in 0..100 {
        let (t, b) = scrape(port);
        v.push(ms(t));
        bytes = b;
    }
    println!(
        "  {label:<8} {:<11} p50 {:7.3} ms   p99 {:7.3} ms   ({} KiB)",
        "scrape",
        pct(&mut v, 0.5),
        pct(&mut v, 0.99),
        bytes / 1024
    );
}

fn idle(d: &Daemon, label: &str) {
    let pid = d.pid();
    let (c0, t0) = (cpu_s(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let used = (cpu_s(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "  {label:<8} idle CPU {used:5.2} % of one core over 20 s; RSS {:5.1} MiB",
        rss_mib(pid)
    );
}

fn paused_count(d: &Daemon) -> Option<usize> {
    match d
        .client()
        .call(&ApiRequest::List { all: false })
        .ok()?
        .result
    {
        Ok(ApiReply::List(v)) => Some(v.iter().filter(|i| i.state.as_str() == "paused").count()),
        _ => None,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut instances = String::new();
    for i in 0..VMS {
        instances += &instance_toml(&format!("s{i:03}"), "").replace("memory = 192", "memory = 64");
    }
    let mut d = Daemon::start_with(
        &format!(
            "metrics = \"127.0.0.1:{port}\"\nhealth_interval_ms = 2000\nmetrics_interval_ms = 5000"
        ),
        &instances,
    );
    let start = |d: &Daemon, i: usize| match d
        .call(ApiRequest::Start {
            name: name(&format!("s{i:03}")),
            paused: true,
            wait: true,
            memory: None,
        })
        .unwrap()
    {
        ApiReply::Started(v) => assert_eq!(v.state.as_str(), "paused"),
        other => panic!("{other:?}"),
    };
    start(&d, 0);
    std::thread::sleep(Duration::from_secs(6)); // a metrics sample of it
    println!("baseline: 1 paused VM (99 defined, stopped)");
    latencies(&d, port, "1 VM");
    idle(&d, "1 VM");
    let t0 = Instant::now();
    for i in 1..VMS {
        start(&d, i);
    }
    println!(
        "\nstarted {} more paused VMs in {:.1} s",
        VMS - 1,
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(6));
    println!("{VMS} paused VMs (64 MiB each):");
    latencies(&d, port, "100 VMs");
    idle(&d, "100 VMs");
    // Re-adoption: kill -9, spawn, until list shows every VM paused again.
    let mut took = Vec::new();
    for _ in 0..3 {
        d.kill9();
        let t0 = Instant::now();
        d.spawn();
        let answered = t0.elapsed();
        while paused_count(&d) != Some(VMS) {
            std::thread::sleep(Duration::from_millis(5));
            assert!(t0.elapsed() < Duration::from_secs(60), "never re-adopted");
        }
        took.push(ms(t0.elapsed()));
        println!(
            "  re-adoption after kill -9: answering after {:.0} ms, all {VMS} paused after {:.0} ms",
            ms(answered),
            ms(t0.elapsed())
        );
    }
    println!(
        "  re-adoption median {:.0} ms (goal ≤ 1000 ms)",
        pct(&mut took, 0.5)
    );
    println!("  after re-adoption RSS {:.1} MiB", rss_mib(d.pid()));
}
