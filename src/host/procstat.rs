//! Counters the kernel keeps for a QEMU: its CPU time and resident memory (`/proc/PID/stat`),
//! each vCPU thread's run and run-queue time (`/proc/PID/task/TID/schedstat`), and a tap's
//! traffic (`/sys/class/net/TAP/statistics`). Parsing is pure; reading is a few small files.
//!
//! Invariant: only paths built from numbers and from tap names that pass [`tap_name_ok`].

use std::io;

/// CPU seconds (user + system) and resident bytes from the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str, ticks_per_s: u64, page_size: u64) -> Option<(f64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15, rss 24.
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = n(14)? + n(15)?;
    #[allow(clippy::cast_precision_loss)] // ticks far below 2^53
    let secs = ticks as f64 / ticks_per_s.max(1) as f64;
    Some((secs, n(24)? * page_size))
}

/// Run and run-queue wait seconds from the text of a `schedstat` (nanoseconds).
pub fn parse_schedstat(text: &str) -> Option<(f64, f64)> {
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let run = f.next()??;
    let wait = f.next()??;
    #[allow(clippy::cast_precision_loss)] // nanosecond counters: precision to spare
    Some((run as f64 / 1e9, wait as f64 / 1e9))
}

/// A tap name kvmd may read counters of: an interface name, nothing that walks a path.
pub fn tap_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A QEMU process's CPU seconds and resident bytes.
pub fn process(pid: u32) -> io::Result<(f64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(100);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096);
    parse_stat(&text, ticks, page)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat"))
}

/// One thread's run and run-queue wait seconds.
pub fn thread(pid: u32, tid: u32) -> io::Result<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))?;
    parse_schedstat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected schedstat"))
}

/// A tap's (rx_bytes, tx_bytes, rx_packets, tx_packets), as the host sees them.
pub fn tap(name: &str) -> io::Result<(u64, u64, u64, u64)> {
    if !tap_name_ok(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a tap name",
        ));
    }
    let read = |counter: &str| -> io::Result<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/{counter}"))?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a number"))
    };
    Ok((
        read("rx_bytes")?,
        read("tx_bytes")?,
        read("rx_packets")?,
        read("tx_packets")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_command_name() {
        let text =
            "4242 (qemu (x) ) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 \
                    300000000 2560 18446744073709551615";
        assert_eq!(parse_stat(text, 100, 4096), Some((3.0, 2560 * 4096)));
        assert_eq!(parse_stat("garbage", 100, 4096), None);
    }

    #[test]
    fn schedstat_is_run_and_wait_nanoseconds() {
        assert_eq!(
            parse_schedstat("2500000000 125000000 77\n"),
            Some((2.5, 0.125))
        );
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn tap_names_cannot_walk_paths() {
        assert!(tap_name_ok("tap3"));
        assert!(tap_name_ok("kvth5226"));
        for bad in ["", "..", "a/b", "../../etc", "x y", "averyveryverylongname"] {
            assert!(!tap_name_ok(bad), "{bad}");
        }
    }
}
