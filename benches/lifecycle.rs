//! kvmd benchmarks, run by hand as root: `cargo bench --bench lifecycle`.
//!
//! Everything is measured in one run and printed next to its baseline:
//! - start latency: `start` request → reply (QEMU running, guest resumed) against raw QEMU
//!   launched with the same argv (minus `-S`) until QMP `query-status` says running;
//! - `list` and `info --all` latency with 1, 10 and 30 paused VMs;
//! - kvmd's RSS idle and with 30 VMs;
//! - detection delay: `kill -9` of QEMU → `crashed` in `info`, guest `poweroff -f` → `user-down`.
//!
//! Goals (issue 2): kvmd's share ≤ 3 % of raw start; `list` of 30 VMs ≤ 5 ms median; detection
//! ≤ 100 ms.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmd::api::{ApiReply, ApiRequest};
use kvmd::qmp::Qmp;
use support::*;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

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

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Raw QEMU: same argv with its paths moved to `dir`, without `-S`, and with QEMU binding
/// its QMP socket itself (kvmd passes a socket it bound: `fd=N`); time until QMP says running.
fn raw_start(
    argv: &[String],
    from: &str,
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
) -> Duration {
    let to = dir.display().to_string();
    let qmp_path = dir.join("qmp.sock");
    let args: Vec<String> = argv
        .iter()
        .filter(|a| *a != "-S")
        .map(|a| {
            if a.starts_with("socket,id=qmp0,fd=") {
                format!(
                    "socket,id=qmp0,path={},server=on,wait=off",
                    qmp_path.display()
                )
            } else {
                a.replace(from, &to)
            }
        })
        .collect();
    let _ = std::fs::remove_file(&qmp_path);
    let t0 = Instant::now();
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let took = rt.block_on(async {
        let opts = kvmd::qmp::ConnectOptions {
            connect_deadline: Instant::now() + Duration::from_secs(10),
            startup_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        };
        let (q, _notices) = Qmp::connect_with(&qmp_path, &opts, || true).await.unwrap();
        loop {
            let st = q.query_status().await.unwrap();
            if st.running {
                break t0.elapsed();
            }
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut instances = String::new();
    for i in 0..30 {
        instances += &instance_toml(&format!("vm{i:02}"), "");
    }
    let d = Daemon::start(&instances);
    let kvmd_pid = d.pid();
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_kib(kvmd_pid);

    // --- start latency, 40 rounds, alternating which goes first ---
    let raw_dir = tempfile::tempdir().unwrap();
    let (mut k, mut r) = (Vec::new(), Vec::new());
    // Round 0 learns the argv (and warms the page cache and kvmd's probe cache); then the two
    // alternate which goes first, so neither profits from the other warming up.
    let mut argv: Vec<String> = Vec::new();
    let kvmd_start = |argv: &mut Vec<String>| {
        let t0 = Instant::now();
        let info = d.start_vm("vm00");
        let took = t0.elapsed();
        assert_eq!(info.state.as_str(), "running");
        let rt: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.run_dir("vm00").join("runtime.json")).unwrap(),
        )
        .unwrap();
        *argv = serde_json::from_value(rt["argv"].clone()).unwrap();
        d.call(ApiRequest::Stop {
            name: name("vm00"),
            timeout_s: None,
            force: true,
            wait: true,
        })
        .unwrap();
        took
    };
    let run_dir = d.run_dir("vm00").display().to_string();
    kvmd_start(&mut argv);
    for round in 0..40 {
        if round % 2 == 0 {
            k.push(ms(kvmd_start(&mut argv)));
            r.push(ms(raw_start(&argv, &run_dir, raw_dir.path(), &rt)));
        } else {
            r.push(ms(raw_start(&argv, &run_dir, raw_dir.path(), &rt)));
            k.push(ms(kvmd_start(&mut argv)));
        }
    }
    let (km, rm) = (median(&mut k), median(&mut r));
    println!(
        "start latency (request → running), median of {} runs:",
        k.len()
    );
    println!("  kvmd      {km:8.1} ms   (p90 {:.1} ms)", pct(&mut k, 0.9));
    println!("  raw QEMU  {rm:8.1} ms   (p90 {:.1} ms)", pct(&mut r, 0.9));
    println!(
        "  ratio kvmd/raw = {:.3}; kvmd's share = {:+.1} % (goal ≤ 3 %)",
        km / rm,
        (km - rm) / rm * 100.0
    );
    // kvmd's own share of a start, from its debug timeline: everything but QEMU's time from
    // spawn to its QMP greeting (and capabilities answer).
    let log = d.log();
    let field = |line: &str, key: &str| -> Option<f64> {
        let at = line.find(&format!("{key}="))? + key.len() + 1;
        let rest = &line[at..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse::<f64>().ok().map(|us| us / 1000.0)
    };
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("start timeline"))
        .skip(1) // the first start probes QEMU
        .collect();
    let mut share: Vec<f64> = lines
        .iter()
        .filter_map(|l| field(l, "kvmd_share_us"))
        .collect();
    let mut qemu: Vec<f64> = lines
        .iter()
        .filter_map(|l| field(l, "qemu_startup_us"))
        .collect();
    let mut total: Vec<f64> = lines.iter().filter_map(|l| field(l, "total_us")).collect();
    let mut spawn: Vec<f64> = lines
        .iter()
        .filter_map(|l| field(l, "spawned_us"))
        .collect();
    if !share.is_empty() {
        println!(
            "  kvmd's own share (timeline, {} starts): median {:.2} ms (p90 {:.2}; goal ≤ 2 ms); request to spawn {:.2} ms; QEMU spawn → greeting {:.1} ms; task total {:.1} ms",
            share.len(),
            median(&mut share),
            pct(&mut share, 0.9),
            median(&mut spawn),
            median(&mut qemu),
            median(&mut total)
        );
        // And end to end, from the client: the reply minus QEMU's own start-up.
        let mut e2e: Vec<f64> = k.iter().zip(qemu.iter()).map(|(k, q)| k - q).collect();
        println!(
            "  end to end minus QEMU's start-up (client's clock): median {:.2} ms",
            median(&mut e2e)
        );
    }

    // --- list / info --all with 1, 10, 30 paused VMs ---
    println!("\nlist / info --all latency (one connection, 300 calls each):");
    let mut started = 0;
    let mut client = d.client();
    for target in [1usize, 10, 30] {
        while started < target {
            let n = format!("vm{started:02}");
            match d
                .call(ApiRequest::Start {
                    name: name(&n),
                    paused: true,
                    wait: true,
                    memory: None,
                })
                .unwrap()
            {
                ApiReply::Started(i) => assert_eq!(i.state.as_str(), "paused"),
                other => panic!("{other:?}"),
            }
            started += 1;
        }
        for (label, req) in [
            ("list", ApiRequest::List { all: false }),
            ("info --all", ApiRequest::Info { name: None }),
        ] {
            let mut v = Vec::new();
            for _ in 0..300 {
                let t0 = Instant::now();
                client.call(&req).unwrap().result.unwrap();
                v.push(ms(t0.elapsed()));
            }
            println!(
                "  {target:2} VMs  {label:<10} median {:6.3} ms  p99 {:6.3} ms",
                median(&mut v),
                pct(&mut v, 0.99)
            );
        }
    }
    let rss_30 = rss_kib(kvmd_pid);
    println!(
        "\nkvmd RSS: idle {:.1} MiB, with 30 VMs {:.1} MiB",
        rss_idle as f64 / 1024.0,
        rss_30 as f64 / 1024.0
    );

    // --- detection delay ---
    for i in 1..30 {
        d.call(ApiRequest::Stop {
            name: name(&format!("vm{i:02}")),
            timeout_s: None,
            force: true,
            wait: true,
        })
        .unwrap();
    }
    let mut crash = Vec::new();
    let mut user = Vec::new();
    for _ in 0..5 {
        let pid = d.start_vm("vm01").pid.unwrap();
        let t0 = Instant::now();
        nix::sys::signal::kill(nix_pid(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        while d.info("vm01").state.as_str() != "crashed" {}
        crash.push(ms(t0.elapsed()));
    }
    for _ in 0..5 {
        d.call(ApiRequest::Cleanup { name: name("vm02") }).unwrap();
        let pid = d.start_vm("vm02").pid.unwrap();
        d.wait_ready("vm02", 1);
        let mut s =
            std::os::unix::net::UnixStream::connect(d.run_dir("vm02").join("serial.sock")).unwrap();
        std::io::Write::write_all(&mut s, b"poweroff -f\n").unwrap();
        let t0 = Instant::now();
        while d.info("vm02").state.as_str() != "user-down" {}
        user.push(ms(t0.elapsed()));
        while alive(pid) || d.info("vm02").pid.is_some() {}
    }
    println!("\ndetection delay, median of 5 (goal ≤ 100 ms):");
    println!(
        "  kill -9 of QEMU → crashed      {:6.1} ms (max {:.1})",
        median(&mut crash),
        pct(&mut crash, 1.0)
    );
    println!("  guest poweroff -f → user-down  {:6.1} ms (max {:.1}; includes the guest's own shutdown under TCG)", median(&mut user), pct(&mut user, 1.0));
}
