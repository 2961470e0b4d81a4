//! `kvmctl top`: a refreshing table of the VMs (state, CPU %, memory, block and network
//! rates) from kvmd's `stats` (its background samples: asking never waits on a VM). Rates
//! come from two samples of the same VM; until a VM has two, its rates show `-`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use kvmd::api::{ApiReply, ApiRequest, VmStats};
use kvmd::control::client::Client;

use crate::render::e;
use crate::Failure;

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
pub fn rates(old: &VmStats, new: &VmStats) -> Option<Rates> {
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
pub fn table(stats: &[VmStats], rates: &HashMap<String, Rates>) -> String {
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

/// Refresh every `interval` (`count` times, or until interrupted).
pub fn run(
    socket: &Path,
    name: Option<kvmd::model::name::InstanceName>,
    interval: Duration,
    count: Option<u64>,
) -> Result<u8, Failure> {
    let mut client = Client::connect(socket)?;
    let tty = std::io::stdout().is_terminal();
    let mut last: HashMap<String, VmStats> = HashMap::new();
    let mut shown: HashMap<String, Rates> = HashMap::new();
    let mut n = 0u64;
    loop {
        let answer = client.call(&ApiRequest::Stats { name: name.clone() })?;
        let stats = match answer.result {
            Ok(ApiReply::Stats(s)) => s,
            Ok(other) => {
                eprintln!("kvmctl: unexpected reply {other:?}");
                return Ok(crate::EXIT_FAILED);
            }
            Err(err) => {
                crate::render::print_error(&err);
                return Ok(crate::EXIT_FAILED);
            }
        };
        for s in &stats {
            if let Some(r) = last.get(&s.name).and_then(|old| rates(old, s)) {
                shown.insert(s.name.clone(), r);
            }
            if last
                .get(&s.name)
                .is_none_or(|old| s.sampled_at_ms > old.sampled_at_ms)
            {
                last.insert(s.name.clone(), s.clone());
            }
        }
        let mut out = std::io::stdout().lock();
        if tty {
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        let _ = write!(
            out,
            "kvmctl top: {} VMs; kvmd samples each every node.metrics_interval_ms; Ctrl-C quits\n{}",
            stats.len(),
            table(&stats, &shown)
        );
        if !tty {
            let _ = writeln!(out);
        }
        let _ = out.flush();
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(crate::EXIT_OK);
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_samples_of_the_same_vm() {
        let a = VmStats {
            name: "web1".into(),
            sampled_at_ms: 10_000,
            cpu_ms: 1_000,
            block_read_bytes: 0,
            net_tx_bytes: 100,
            ..VmStats::default()
        };
        let b = VmStats {
            sampled_at_ms: 12_000,
            cpu_ms: 2_000,
            block_read_bytes: 4_000_000,
            net_tx_bytes: 100,
            ..a.clone()
        };
        let r = rates(&a, &b).unwrap();
        assert_eq!(r.cpu_percent, 50.0);
        assert_eq!(r.block_read, 2_000_000.0);
        assert_eq!(r.net_tx, 0.0);
        assert!(rates(&b, &a).is_none() && rates(&a, &a).is_none());
        assert_eq!(human(2_000_000.0), "2.0M");
        assert_eq!(human(512.0), "512");
        let t = table(&[b], &HashMap::from([("web1".to_string(), r)]));
        assert!(t.lines().nth(1).unwrap().contains("50.0"), "{t}");
    }
}
