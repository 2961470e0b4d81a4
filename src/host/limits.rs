//! Process resource limits: raising kvmd's open-file limit at start, since every VM costs it
//! several descriptors (pidfd, QMP socket, taps while starting, pipes of hooks).
//!
//! Invariant: only kvmd's own limits; QEMU and hooks inherit them and nothing here sets limits
//! for anyone else.

use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (to `fs.nr_open` when the hard limit is
/// unlimited). Returns (old soft limit, new soft limit).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(soft)
            .max(soft)
    } else {
        hard
    };
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    let (now, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok((soft, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        if soft == hard && hard != RLIM_INFINITY {
            // Lower it a little first, so that raising has something to do.
            setrlimit(Resource::RLIMIT_NOFILE, soft - 1, hard).unwrap();
        }
        let (old, new) = raise_nofile_limit().unwrap();
        assert!(new > old || old == hard, "{old} -> {new}");
        if hard != RLIM_INFINITY {
            assert_eq!(new, hard);
        }
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, new);
        // Idempotent.
        assert_eq!(raise_nofile_limit().unwrap(), (new, new));
    }
}
