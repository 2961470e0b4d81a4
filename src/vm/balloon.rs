//! The balloon job's task: ask QEMU's balloon for a size, then follow the guest there from
//! `BALLOON_CHANGE` events (teed from the VM's QMP connection), with `query-balloon` as a
//! safety net, until it is within 1 % (reached), stops moving (stalled) or the deadline
//! passes (timeout). A `balloon` command returns before the guest did anything; this job
//! does not.
//!
//! Invariant: every QMP command under the client's deadline; the loop is bounded.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::qmp::{Notice, Qmp, QmpError, QmpEvent};
use crate::vm::core::BalloonResult;

/// No change for this long: stalled.
const STALL: Duration = Duration::from_secs(5);
/// The job's deadline.
const DEADLINE: Duration = Duration::from_secs(120);
/// How often `query-balloon` is asked besides the events.
const POLL: Duration = Duration::from_secs(1);

const MIB: u64 = 1 << 20;

fn close_enough(actual: u64, target: u64) -> bool {
    actual.abs_diff(target) * 100 <= target
}

/// Move the balloon to `mib`; how it ended and the size reached (MiB).
pub(super) async fn follow(
    qmp: &Qmp,
    mut events: mpsc::Receiver<Notice>,
    mib: u64,
) -> Result<(BalloonResult, u64), QmpError> {
    let target = mib * MIB;
    qmp.balloon(target).await?;
    let mut actual = qmp.query_balloon().await?;
    let end = Instant::now() + DEADLINE;
    let mut last_change = Instant::now();
    let mut next_poll = Instant::now() + POLL;
    loop {
        if close_enough(actual, target) {
            return Ok((BalloonResult::Reached, actual / MIB));
        }
        let now = Instant::now();
        if now >= end {
            return Ok((BalloonResult::Timeout, actual / MIB));
        }
        if now >= last_change + STALL {
            return Ok((BalloonResult::Stalled, actual / MIB));
        }
        let seen = tokio::select! {
            n = events.recv() => match n {
                Some(Notice::Event { event: QmpEvent::BalloonChange { actual }, .. }) => Some(actual),
                Some(_) => None,
                // The connection ended: QEMU's word from now on.
                None => {
                    tokio::time::sleep_until(next_poll.min(end)).await;
                    None
                }
            },
            _ = tokio::time::sleep_until(next_poll.min(end).min(last_change + STALL)) => None,
        };
        let seen = match seen {
            Some(a) => Some(a),
            None if Instant::now() >= next_poll => {
                next_poll = Instant::now() + POLL;
                Some(qmp.query_balloon().await?)
            }
            None => None,
        };
        if let Some(a) = seen {
            if a != actual {
                actual = a;
                last_change = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_one_percent_is_reached() {
        assert!(close_enough(128 * MIB, 128 * MIB));
        assert!(close_enough(129 * MIB, 128 * MIB));
        assert!(!close_enough(130 * MIB, 128 * MIB));
    }
}
