//! Metrics: a real Prometheus (Debian's package, on loopback) scrapes kvmd; its HTTP API
//! shows a VM's vCPU seconds, with the expected labels, rising while the guest spins;
//! `promtool check metrics` passes on kvmd's page; `kvmctl top` shows the VM.

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0): the status line and the body.
fn get(port: u16, path: &str, accept: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.to_string(), body.to_string()))
}

/// A value in Prometheus' answer to an instant query, with its labels.
fn query(port: u16, q: &str) -> Option<(Value, f64)> {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (_, body) = get(port, &format!("/api/v1/query?query={enc}"), "*/*")?;
    let v: Value = serde_json::from_str(&body).ok()?;
    let r = v["data"]["result"].get(0)?.clone();
    let value = r["value"][1].as_str()?.parse().ok()?;
    Some((r["metric"].clone(), value))
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_kvmd_and_sees_vcpu_seconds_rise() {
    let kport = free_port();
    let d = Daemon::start_with(
        &format!("metrics = \"127.0.0.1:{kport}\"\nmetrics_interval_ms = 500"),
        &instance_toml("m", ""),
    );
    d.start_vm("m");
    d.wait_ready("m", 1);
    // kvmd's own page, as promtool reads it (the classic text format).
    let (head, page) = wait_for("kvmd's page", Duration::from_secs(10), || {
        get(kport, "/metrics", "*/*").filter(|(_, b)| b.contains("kvmd_vm_vcpu_seconds_total"))
    });
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A real Prometheus scraping it every second.
    let pport = free_port();
    let dir = d.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kvmd\n    static_configs:\n      - targets: ['127.0.0.1:{kport}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's package)"),
    );
    let series = "kvmd_vm_vcpu_seconds_total{vm=\"m\",vcpu=\"0\"}";
    let (labels, before) = wait_for(
        "Prometheus to have scraped kvmd",
        Duration::from_secs(60),
        || query(pport, series),
    );
    assert_eq!(labels["job"], "kvmd", "{labels}");
    assert_eq!(labels["instance"], format!("127.0.0.1:{kport}"), "{labels}");
    assert_eq!(
        (labels["vm"].as_str(), labels["vcpu"].as_str()),
        (Some("m"), Some("0"))
    );
    assert!(before > 0.0, "the guest booted: its vCPU ran ({before} s)");
    // The guest spins: its vCPU seconds rise by more than a second in Prometheus.
    d.type_line("m", "while :; do :; done &");
    let after = wait_for("vCPU seconds to rise", Duration::from_secs(30), || {
        query(pport, series)
            .map(|(_, v)| v)
            .filter(|v| *v > before + 1.0)
    });
    eprintln!("vCPU seconds in Prometheus: {before} -> {after}");
    // And what kvmd says of itself is there too.
    let (_, jobs) = query(
        pport,
        "kvmd_jobs_total{kind=\"start\",result=\"succeeded\"}",
    )
    .expect("the start job counted");
    assert!(jobs >= 1.0, "{jobs}");
    let (_, up) = query(pport, "kvmd_vm_up{vm=\"m\"}").unwrap();
    assert_eq!(up, 1.0);
    // kvmctl top shows the spinning guest.
    let out = d.kvmctl(&["top", "--count", "3", "--interval", "1"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = table
        .lines()
        .rfind(|l| l.starts_with("m "))
        .unwrap_or_default()
        .to_string();
    let cpu: f64 = last
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a CPU % for m: {table}"));
    assert!(cpu > 30.0, "a spinning guest uses its vCPU: {table}");
    let v: Value = serde_json::from_slice(&d.kvmctl(&["--json", "top", "m"]).stdout).unwrap();
    assert_eq!(v["result"]["stats"][0]["name"], "m", "{v}");
    assert!(
        v["result"]["stats"][0]["vcpu_ms"].as_u64().unwrap() > 1000,
        "{v}"
    );
}

#[test]
fn metrics_on_a_unix_socket_are_served_to_kvmds_group_only() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("metrics.sock");
    let d = Daemon::start_with(
        &format!("metrics = \"{}\"", sock.display()),
        &instance_toml("u", ""),
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "not world-accessible");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(
        text.contains("kvmd_vm_state{vm=\"u\",state=\"stopped\"} 1"),
        "{text}"
    );
    // Anything but /metrics is not found.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /other HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 404"), "{text}");
    drop(d);
}
