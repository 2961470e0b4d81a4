//! The migration coordinator's decisions, pure: from what QEMU reports — `MIGRATION` and
//! `MIGRATION_PASS` events, `query-migrate` samples, failed or unrecognised answers — and the
//! clock, what to do next.
//!
//! - **Convergence without tuning.** At every new pass the remaining bytes are recorded. When
//!   they have not shrunk over `stall_passes` passes, precopy is not converging, and the
//!   policy escalates, cheapest first: a downtime limit sized to what is left (remaining bytes
//!   at the rate measured between samples, with a 20 % margin, never above `downtime_ceiling_ms`) rather than
//!   Proxmox's blind doubling; then postcopy when `postcopy-ram` is on. Without postcopy,
//!   `auto-converge` is among the starting capabilities (QEMU refuses capability changes
//!   during a migration, and auto-converge throttles only a guest that outruns the link).
//! - **Stalls.** No byte moved for `stall_after`: the migration is `stalled` (reported once),
//!   and after `abort_after_stall` more it is given up.
//! - **Bad answers** (Ganeti's bound): a failed `query-migrate` or one without a status this
//!   kvmd knows is retried after `retry_interval`; `bad_answer_limit` in a row fail the
//!   migration.
//!
//! Invariant: no I/O, no clock of its own (time comes in with each observation), no QMP.

use std::time::Duration;

use crate::qmp::{MigrationInfo, MigrationStatus};

/// The largest `downtime-limit` QEMU takes (ms).
pub const MAX_DOWNTIME_MS: u64 = 2_000_000;

/// The knobs; [`PolicyConfig::for_hvparams`] derives them from Ganeti's hvparams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The downtime limit to start with (`migration_downtime`), in milliseconds.
    pub downtime_ms: u64,
    /// The highest downtime limit the controller may set, in milliseconds.
    pub downtime_ceiling_ms: u64,
    /// Passes without the remaining bytes shrinking before precopy counts as not converging.
    pub stall_passes: usize,
    /// `postcopy-ram` is among the capabilities on both ends.
    pub postcopy: bool,
    /// `auto-converge` is among the starting capabilities.
    pub auto_converge: bool,
    /// No byte moved for this long: stalled.
    pub stall_after: Duration,
    /// Stalled for this long more: given up.
    pub abort_after_stall: Duration,
    /// Wait before asking again after a bad answer (Ganeti: 2 s).
    pub retry_interval: Duration,
    /// Bad answers in a row that fail the migration (Ganeti: 5).
    pub bad_answer_limit: u32,
}

impl PolicyConfig {
    /// Defaults around a `migration_downtime` (ms) and the `migration_caps` list.
    pub fn for_hvparams(downtime_ms: u64, caps: &[String]) -> PolicyConfig {
        let has = |c: &str| caps.iter().any(|x| x == c);
        // QEMU takes a downtime limit of at most 2000 s.
        let downtime_ms = downtime_ms.min(MAX_DOWNTIME_MS);
        PolicyConfig {
            downtime_ms,
            downtime_ceiling_ms: downtime_ms
                .saturating_mul(20)
                .clamp(500, 2000)
                .max(downtime_ms),
            stall_passes: 3,
            postcopy: has("postcopy-ram"),
            auto_converge: has("auto-converge") || !has("postcopy-ram"),
            stall_after: Duration::from_secs(30),
            abort_after_stall: Duration::from_secs(30),
            retry_interval: Duration::from_secs(2),
            bad_answer_limit: 5,
        }
    }
}

/// What the coordinator saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A `MIGRATION` event.
    Status(MigrationStatus),
    /// A `MIGRATION_PASS` event.
    Pass(u64),
    /// A `query-migrate` answer.
    Sample(MigrationInfo),
    /// `query-migrate` failed (the reason, for the error if the limit is reached).
    BadAnswer(String),
    /// Time passed.
    Tick,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Set this downtime limit (ms).
    SetDowntime(u64),
    /// Switch to postcopy (`migrate-start-postcopy`).
    StartPostcopy,
    /// Ask `query-migrate` again after this long.
    RetryIn(Duration),
    /// No byte moved for this long: report the migration as stalled.
    Stalled(Duration),
    /// Give the migration up (cancel it), for this reason.
    Abort(String),
    /// It is over: QEMU's final status.
    Finished(MigrationStatus),
    /// It failed without QEMU saying so (too many bad answers).
    Failed(String),
}

/// How the migration converges, for the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Precopy at the starting settings.
    Precopy,
    /// Precopy after raising the downtime limit.
    Downtime,
    AutoConverge,
    Postcopy,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Precopy => "precopy",
            Path::Downtime => "precopy, downtime raised",
            Path::AutoConverge => "auto-converge",
            Path::Postcopy => "postcopy",
        }
    }
}

/// The policy's memory of one migration.
#[derive(Clone, Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    downtime_ms: u64,
    /// Remaining bytes, sampled once per pass (the first sample after the pass began),
    /// oldest first.
    remaining_at_pass: Vec<u64>,
    /// A sample arrived since the last value was recorded (a pass event records it then).
    fresh_sample: bool,
    last_pass: u64,
    /// Bytes per millisecond, measured between the last two samples that moved bytes.
    rate: Option<u64>,
    /// (ms, transferred) of the last sample.
    last_sample: Option<(u64, u64)>,
    last_remaining: Option<u64>,
    bad_answers: u32,
    last_transferred: u64,
    /// When (ms since the migration began) bytes last moved.
    last_progress_ms: u64,
    stalled_reported: bool,
    /// `migrate-start-postcopy` was decided (QEMU may not have switched yet).
    postcopy_requested: bool,
    /// QEMU reports postcopy-active: the guest runs on the target; no cancel, no abort.
    postcopy_started: bool,
    path: Path,
    /// QEMU reported a final status.
    finished: bool,
    /// The policy gave up (abort, bad answers): only the final status counts now.
    gave_up: bool,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Policy {
        Policy {
            downtime_ms: cfg.downtime_ms,
            cfg,
            remaining_at_pass: Vec::new(),
            fresh_sample: false,
            last_pass: 0,
            rate: None,
            last_sample: None,
            last_remaining: None,
            bad_answers: 0,
            last_transferred: 0,
            last_progress_ms: 0,
            stalled_reported: false,
            postcopy_requested: false,
            postcopy_started: false,
            path: Path::Precopy,
            finished: false,
            gave_up: false,
        }
    }

    /// The downtime limit in force.
    pub fn downtime_ms(&self) -> u64 {
        self.downtime_ms
    }

    /// The path taken so far.
    pub fn path(&self) -> Path {
        self.path
    }

    pub fn postcopy_started(&self) -> bool {
        self.postcopy_started
    }

    /// The policy decided to give up (and waits only for QEMU's final status).
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// Take `obs`, seen `now_ms` after the migration began; return what to do, in order.
    pub fn observe(&mut self, obs: Observation, now_ms: u64) -> Vec<Decision> {
        if self.finished {
            return Vec::new();
        }
        if self.gave_up {
            let end = match &obs {
                Observation::Status(s) => Some(s.clone()),
                Observation::Sample(i) => i.status.clone(),
                _ => None,
            };
            return match end.filter(MigrationStatus::is_final) {
                Some(s) => {
                    self.finished = true;
                    vec![Decision::Finished(s)]
                }
                None => Vec::new(),
            };
        }
        let mut out = Vec::new();
        match obs {
            Observation::Status(s) => {
                if s == MigrationStatus::PostcopyActive {
                    self.postcopy_started = true;
                }
                if s.is_final() {
                    self.finished = true;
                    out.push(Decision::Finished(s));
                }
            }
            Observation::Pass(n) => {
                if n > self.last_pass {
                    self.last_pass = n;
                    // Only a sample taken since the last record says anything new.
                    if let (true, Some(r)) = (self.fresh_sample, self.last_remaining) {
                        self.remaining_at_pass.push(r);
                        self.fresh_sample = false;
                        self.converge(&mut out);
                    }
                }
            }
            Observation::Sample(info) => match info.status {
                Some(MigrationStatus::None | MigrationStatus::Other(_)) | None => {
                    self.bad(
                        format!(
                            "query-migrate answered without a known status ({})",
                            info.status.as_ref().map_or("none", |s| s.as_str())
                        ),
                        &mut out,
                    );
                }
                Some(status) => {
                    self.bad_answers = 0;
                    if let Some(ram) = &info.ram {
                        if ram.transferred > self.last_transferred {
                            self.last_transferred = ram.transferred;
                            self.last_progress_ms = now_ms;
                            self.stalled_reported = false;
                        }
                        self.last_remaining = Some(ram.remaining);
                        self.fresh_sample = true;
                        if let Some((t, bytes)) = self.last_sample {
                            let (dt, db) = (
                                now_ms.saturating_sub(t),
                                ram.transferred.saturating_sub(bytes),
                            );
                            if dt > 0 && db > 0 {
                                self.rate = Some((db / dt).max(1));
                            }
                        }
                        self.last_sample = Some((now_ms, ram.transferred));
                        if ram.dirty_sync_count > self.last_pass {
                            self.last_pass = ram.dirty_sync_count;
                            self.remaining_at_pass.push(ram.remaining);
                            self.fresh_sample = false;
                            self.converge(&mut out);
                        }
                    }
                    if status == MigrationStatus::PostcopyActive {
                        self.postcopy_started = true;
                    }
                    if info.cpu_throttle_percentage.unwrap_or(0) > 0 && !self.postcopy_started {
                        self.path = Path::AutoConverge;
                    }
                    if status.is_final() {
                        self.finished = true;
                        out.push(Decision::Finished(status));
                    }
                }
            },
            Observation::BadAnswer(why) => self.bad(why, &mut out),
            Observation::Tick => {}
        }
        if !self.finished && !self.gave_up && !self.postcopy_started {
            self.watch_progress(now_ms, &mut out);
        }
        out
    }

    fn bad(&mut self, why: String, out: &mut Vec<Decision>) {
        self.bad_answers += 1;
        // In postcopy the guest runs on the target: giving up would lose it; keep asking.
        if self.bad_answers >= self.cfg.bad_answer_limit && !self.postcopy_started {
            self.gave_up = true;
            out.push(Decision::Failed(format!(
                "{} bad answers from query-migrate in a row; the last: {why}",
                self.bad_answers
            )));
        } else {
            out.push(Decision::RetryIn(self.cfg.retry_interval));
        }
    }

    fn watch_progress(&mut self, now_ms: u64, out: &mut Vec<Decision>) {
        let idle = Duration::from_millis(now_ms.saturating_sub(self.last_progress_ms));
        if idle >= self.cfg.stall_after + self.cfg.abort_after_stall {
            self.gave_up = true;
            out.push(Decision::Abort(format!(
                "no progress for {} s",
                idle.as_secs()
            )));
        } else if idle >= self.cfg.stall_after && !self.stalled_reported {
            self.stalled_reported = true;
            out.push(Decision::Stalled(idle));
        }
    }

    /// Precopy is not converging when the remaining bytes at the last `stall_passes` pass
    /// starts did not shrink below where they were before them.
    fn not_converging(&self) -> bool {
        let n = self.cfg.stall_passes;
        let r = &self.remaining_at_pass;
        if r.len() < n + 1 {
            return false;
        }
        let before = r[r.len() - n - 1];
        r[r.len() - n..].iter().all(|x| *x >= before)
    }

    fn converge(&mut self, out: &mut Vec<Decision>) {
        if self.postcopy_requested || self.postcopy_started || !self.not_converging() {
            return;
        }
        // What pausing now would cost: the remaining bytes at the measured rate.
        let needed = match (self.rate, self.last_remaining) {
            (Some(rate), Some(rem)) => (rem.saturating_mul(6) / 5).div_ceil(rate),
            _ => u64::MAX,
        };
        // Still not converging at a limit that should have been enough (the sample
        // underestimated the pass): double it, up to the ceiling.
        let next = if needed <= self.downtime_ms {
            self.downtime_ms.saturating_mul(2)
        } else {
            needed
        };
        if next <= self.cfg.downtime_ceiling_ms {
            self.downtime_ms = next;
            self.path = Path::Downtime;
            out.push(Decision::SetDowntime(next));
            // Judge the new limit on fresh passes.
            self.remaining_at_pass.clear();
            return;
        }
        if self.cfg.postcopy {
            self.postcopy_requested = true;
            self.path = Path::Postcopy;
            out.push(Decision::StartPostcopy);
        } else if self.downtime_ms < self.cfg.downtime_ceiling_ms {
            // The most pause allowed; auto-converge (if on) slows the guest until it fits.
            self.downtime_ms = self.cfg.downtime_ceiling_ms;
            if self.path == Path::Precopy {
                self.path = Path::Downtime;
            }
            out.push(Decision::SetDowntime(self.downtime_ms));
        }
        self.remaining_at_pass.clear();
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
