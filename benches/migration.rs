//! Migration benchmark, run by hand as root: `cargo bench --bench migration`.
//!
//! A booted 256 MiB test guest (TCG) is migrated over a unix socket, alternately by kvmd's
//! migration coordinator and by raw QMP (`migrate-set-capabilities`, `migrate-set-parameters`,
//! `migrate`, then `query-migrate` every 10 ms until completed) with the same capabilities and
//! parameters (Ganeti's `migration_bandwidth` 32 MiB/s and `migration_downtime` 30 ms, and a
//! 1 GiB/s run), in the same run. Printed per driver: total time as QEMU reports it, downtime
//! as QEMU reports it, and how long after QEMU's `MIGRATION completed` event the driver knew
//! (the coordinator: from the event; raw: from its polling).
//!
//! Goals (issue 8): total ≤ 1.05 × raw; downtime ≤ raw + 5 ms; completion seen ≤ 50 ms after
//! QEMU's event. The coordinator is measured in-process (no control socket).
//!
//! Then through the daemons, in the same run: two kvmd (tcp on the loopback, as a cluster
//! would use), `kvmctl migrate --to` of a booted 256 MiB guest at 32 MiB/s, alternately with
//! raw QMP over tcp at the same settings; printed: QEMU's total and downtime, the guest's
//! pause (source STOP to target continued), and kvmctl's end-to-end time (all five steps).
//! Last, a guest dirtying memory, migrated by kvmctl with default settings: total, downtime,
//! and the path the policy took.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix::prelude::*;
use kvmd::migration::coordinator::{capabilities, Coordinator, Ended, Outcome, Plan, Summary};
use kvmd::migration::policy::PolicyConfig;
use kvmd::qmp::{ConnectOptions, MigrationParams, MigrationStatus, Notice, Qmp, QmpEvent};
use support::Qemu;
use tokio::sync::{mpsc, oneshot};

fn qemu(dir: &Path, name: &str, incoming: bool) -> (Qemu, PathBuf, PathBuf) {
    let g = support::guest_dir();
    let qmp = dir.join(format!("{name}.qmp"));
    let serial = dir.join(format!("{name}.serial"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35,accel=tcg",
        "-m",
        "256",
        "-smp",
        "1",
        "-display",
        "none",
    ])
    .args(["-net", "none", "-kernel"])
    .arg(g.join("vmlinux"))
    .arg("-initrd")
    .arg(g.join("initramfs.gz"))
    .args(["-append", "root=/dev/ram0 quiet panic=-1 console=ttyS0"])
    .arg("-chardev")
    .arg(format!(
        "socket,id=s0,path={},server=on,wait=off",
        serial.display()
    ))
    .args(["-serial", "chardev:s0", "-qmp"])
    .arg(format!("unix:{},server=on,wait=off", qmp.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if incoming {
        cmd.args(["-incoming", "defer"]);
    }
    (Qemu(cmd.spawn().unwrap()), qmp, serial)
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_deadline: Instant::now() + Duration::from_secs(10),
        startup_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
    }
}

fn now_us() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

struct Sink(Option<oneshot::Sender<Summary>>);
impl Actor for Sink {
    type Context = Context<Self>;
}
impl Handler<Ended> for Sink {
    type Result = ();
    fn handle(&mut self, m: Ended, _: &mut Context<Self>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(m.0);
        }
    }
}

/// Wait until the guest on `serial` is booted: its shell answers.
async fn booted(serial: PathBuf) {
    tokio::task::spawn_blocking(move || {
        support::wait_shell(&serial, Duration::from_secs(60));
        support::guest_run_on(&serial, "echo ready")
    })
    .await
    .unwrap();
}

/// Raw QMP: the same parameters the coordinator sets.
async fn raw_parameters(src: &Qmp, caps: &[(&str, bool)], bandwidth_mib: u64) {
    src.migrate_set_parameters(&MigrationParams {
        max_bandwidth: Some(bandwidth_mib << 20),
        downtime_limit: Some(30),
        max_postcopy_bandwidth: Some(bandwidth_mib << 20),
        ..MigrationParams::default()
    })
    .await
    .unwrap();
    src.migrate_set_capabilities(caps).await.unwrap();
}

/// (total ms, downtime ms, seen after the event in ms) of one migration.
type Figures = (f64, f64, f64);

/// Boot a source, set up a target, migrate with `kvmd` (the coordinator) or raw QMP.
async fn one(dir: &Path, n: usize, kvmd: bool, bandwidth_mib: u64) -> Figures {
    let (_src_q, src_sock, src_serial) = qemu(dir, &format!("src{n}"), false);
    let (_dst_q, dst_sock, _) = qemu(dir, &format!("dst{n}"), true);
    booted(src_serial).await;
    let uri = format!("unix:{}", dir.join(format!("m{n}.sock")).display());
    let policy = PolicyConfig::for_hvparams(30, &[]);
    let caps = capabilities(&[], &policy);
    let list: Vec<(&str, bool)> = caps.iter().map(|c| (c.as_str(), true)).collect();
    let (dst, _dn) = Qmp::connect_with(&dst_sock, &opts(), || true)
        .await
        .unwrap();
    dst.migrate_set_capabilities(&list).await.unwrap();
    dst.migrate_incoming(&uri).await.unwrap();
    let (src, mut notices) = Qmp::connect_with(&src_sock, &opts(), || true)
        .await
        .unwrap();
    if kvmd {
        let (tx, rx) = oneshot::channel();
        let sink = Sink(Some(tx)).start();
        let plan = Plan {
            uri,
            live: true,
            bandwidth_mib,
            capabilities: caps,
            policy,
            sample_every: Duration::from_millis(500),
            cancel_grace: kvmd::migration::coordinator::CANCEL_GRACE,
        };
        let _c = Coordinator::new(src, notices, plan, sink.recipient()).start();
        let s = rx.await.unwrap();
        assert_eq!(s.outcome, Outcome::Completed, "{s:?}");
        (
            s.total_time_ms.unwrap() as f64,
            s.downtime_ms.unwrap() as f64,
            s.seen_after_us.unwrap() as f64 / 1000.0,
        )
    } else {
        raw_parameters(&src, &list, bandwidth_mib).await;
        // The event's timestamp, collected on the side.
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(n) = notices.recv().await {
                if let Notice::Event {
                    event: QmpEvent::Migration { status },
                    timestamp_us,
                } = n
                {
                    if status == "completed" {
                        let _ = tx.send(timestamp_us);
                    }
                }
            }
        });
        src.migrate(&uri).await.unwrap();
        let info = loop {
            let i = src.query_migrate().await.unwrap();
            if i.status == Some(MigrationStatus::Completed) {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let seen = now_us();
        let event_us = rx.recv().await.unwrap();
        (
            info.total_time_ms.unwrap() as f64,
            info.downtime_ms.unwrap() as f64,
            seen.saturating_sub(event_us) as f64 / 1000.0,
        )
    }
}

/// One `kvmctl migrate --to` between two fresh daemons; its JSON summary.
fn through_daemons(memory: u32, extra: &str, setup: &[&str]) -> serde_json::Value {
    let inst = support::instance_toml("bench", "")
        .replace("memory = 192", &format!("memory = {memory}"))
        + extra;
    let src = support::Daemon::start(&inst);
    let dst = support::Daemon::start("");
    src.start_vm("bench");
    src.wait_ready("bench", 1);
    for cmd in setup {
        support::guest_run_on(&src.run_dir("bench").join("serial.sock"), cmd);
    }
    let out = src.kvmctl(&[
        "--json",
        "migrate",
        "bench",
        "--to",
        dst.socket().to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    v
}

/// Raw QMP over tcp on the loopback at 32 MiB/s: (total, downtime) ms.
async fn raw_tcp(dir: &Path, n: usize) -> (f64, f64) {
    let (_src_q, src_sock, src_serial) = qemu(dir, &format!("tsrc{n}"), false);
    let (_dst_q, dst_sock, _) = qemu(dir, &format!("tdst{n}"), true);
    booted(src_serial).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let policy = PolicyConfig::for_hvparams(30, &[]);
    let caps = capabilities(&[], &policy);
    let list: Vec<(&str, bool)> = caps.iter().map(|c| (c.as_str(), true)).collect();
    let (dst, _dn) = Qmp::connect_with(&dst_sock, &opts(), || true)
        .await
        .unwrap();
    dst.migrate_set_capabilities(&list).await.unwrap();
    dst.migrate_incoming(&uri).await.unwrap();
    let (src, _n) = Qmp::connect_with(&src_sock, &opts(), || true)
        .await
        .unwrap();
    raw_parameters(&src, &list, 32).await;
    src.migrate(&uri).await.unwrap();
    let info = loop {
        let i = src.query_migrate().await.unwrap();
        if i.status == Some(MigrationStatus::Completed) {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (
        info.total_time_ms.unwrap() as f64,
        info.downtime_ms.unwrap() as f64,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let sys = actix::System::new();
    sys.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let rounds = 5;
        for bw in [32, 1024] {
            let (mut k, mut r) = (Vec::new(), Vec::new());
            for i in 0..rounds {
                // Alternate, so drift on the host hits both alike.
                r.push(one(dir.path(), i * 2, false, bw).await);
                k.push(one(dir.path(), i * 2 + 1, true, bw).await);
            }
            let col = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
            let (kt, rt_) = (col(&k, |x| x.0), col(&r, |x| x.0));
            let (kd, rd) = (col(&k, |x| x.1), col(&r, |x| x.1));
            let (ks, rs) = (col(&k, |x| x.2), col(&r, |x| x.2));
            println!("256 MiB guest, {bw} MiB/s, {rounds} rounds each (medians):");
            println!("  total    kvmd {kt:8.1} ms   raw {rt_:8.1} ms   ratio {:.3}", kt / rt_);
            println!("  downtime kvmd {kd:8.1} ms   raw {rd:8.1} ms   diff {:+.1} ms", kd - rd);
            println!("  seen after QEMU's completed event: kvmd {ks:.2} ms   raw (10 ms polling) {rs:.2} ms");
            println!("  all kvmd: {k:?}");
            println!("  all raw:  {r:?}");
        }
        let rounds = 3;
        let (mut d, mut r) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            r.push(raw_tcp(dir.path(), i).await);
            let v = tokio::task::spawn_blocking(|| through_daemons(256, "", &[]))
                .await
                .unwrap();
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            d.push((
                f("total_time_ms"),
                f("downtime_ms"),
                f("pause_ms"),
                f("elapsed_ms"),
                f("seen_after_us") / 1000.0,
            ));
        }
        let dcol = |f: fn(&(f64, f64, f64, f64, f64)) -> f64| median(d.iter().map(f).collect());
        let (rt_, rd) = (median(r.iter().map(|x| x.0).collect()), median(r.iter().map(|x| x.1).collect()));
        println!("256 MiB guest, 32 MiB/s over tcp, kvmctl migrate between two daemons vs raw QMP, {rounds} rounds each (medians):");
        println!("  total    daemons {:8.1} ms   raw {rt_:8.1} ms   ratio {:.3}", dcol(|x| x.0), dcol(|x| x.0) / rt_);
        println!("  downtime daemons {:8.1} ms   raw {rd:8.1} ms   diff {:+.1} ms", dcol(|x| x.1), dcol(|x| x.1) - rd);
        println!("  guest paused (source STOP to target continued) {:.1} ms", dcol(|x| x.2));
        println!("  completion seen {:.2} ms after QEMU's event", dcol(|x| x.4));
        println!("  kvmctl end to end (info, accept, migrate, finalize-dst, finalize-src) {:.1} ms", dcol(|x| x.3));
        println!("  all daemons (total, downtime, pause, end to end, seen): {d:?}");
        println!("  all raw (total, downtime): {r:?}");
        let v = tokio::task::spawn_blocking(|| {
            through_daemons(
                256,
                "",
                &[
                    "head -c 48000000 /dev/urandom > /tmp/r && echo ok",
                    "(while :; do cp /tmp/r /tmp/s; done) </dev/null >/dev/null 2>&1 & echo started",
                ],
            )
        })
        .await
        .unwrap();
        println!(
            "dirtying guest, default settings, kvmctl migrate: total {} ms, downtime {} ms, {} passes, path {}, end to end {} ms",
            v["total_time_ms"], v["downtime_ms"], v["passes"], v["path"], v["elapsed_ms"]
        );
    });
}
