//! `kvmctl top`: a refreshing table of the VMs (state, CPU %, memory, block and network
//! rates) from kvmd's `stats` (its background samples: asking never waits on a VM). Rates
//! come from two samples of the same VM; until a VM has two, its rates show `-`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use kvmd::api::{ApiReply, ApiRequest, VmStats};
use kvmd::control::client::Client;

use crate::render::{rates, table, Rates};
use crate::Failure;

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
    use crate::render::human;

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
