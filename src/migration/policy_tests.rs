//! Unit tests of the migration policy: convergence, escalation, stalls, bad answers.

use super::*;
use crate::qmp::MigrationRam;

fn cfg() -> PolicyConfig {
    PolicyConfig::for_hvparams(30, &[])
}

/// A sample: `status`, bytes moved so far, bytes left, pass number, rate in megabits/s.
fn sample(status: &str, transferred: u64, remaining: u64, pass: u64, mbps: f64) -> Observation {
    Observation::Sample(MigrationInfo {
        status: Some(MigrationStatus::parse(status)),
        ram: Some(MigrationRam {
            transferred,
            remaining,
            total: 1 << 30,
            dirty_sync_count: pass,
            mbps,
            ..MigrationRam::default()
        }),
        ..MigrationInfo::default()
    })
}

/// Four passes, 10 MB moved per 500 ms (20_000 bytes/ms), `remaining` bytes left each time:
/// not converging. What the policy decided.
fn stuck(p: &mut Policy, remaining: u64) -> Vec<Decision> {
    (1..=4)
        .flat_map(|pass| {
            p.observe(
                sample("active", pass * 10_000_000, remaining, pass, 100.0),
                pass * 500,
            )
        })
        .collect()
}

#[test]
fn defaults_follow_the_hvparams() {
    let c = PolicyConfig::for_hvparams(30, &["postcopy-ram".into()]);
    assert!(
        c.postcopy && !c.auto_converge,
        "postcopy instead of throttling"
    );
    assert_eq!(c.downtime_ceiling_ms, 600);
    let c = PolicyConfig::for_hvparams(300, &[]);
    assert!(c.auto_converge && !c.postcopy);
    assert_eq!(c.downtime_ceiling_ms, 2000, "capped");
    assert_eq!(
        (c.bad_answer_limit, c.retry_interval),
        (5, Duration::from_secs(2))
    );
}

#[test]
fn a_converging_migration_is_left_alone_and_its_end_reported() {
    let mut p = Policy::new(cfg());
    let mut t = 0;
    let mut all = Vec::new();
    for (pass, remaining) in [(1, 900), (2, 400), (3, 150), (4, 60), (5, 20)] {
        t += 100;
        all.extend(p.observe(
            sample("active", 1000 * pass, remaining << 20, pass, 800.0),
            t,
        ));
    }
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(
        p.observe(Observation::Status(MigrationStatus::Completed), t + 10),
        vec![Decision::Finished(MigrationStatus::Completed)]
    );
    assert_eq!(p.path(), Path::Precopy);
    assert!(
        p.observe(Observation::Tick, t + 100_000).is_empty(),
        "over is over"
    );
}

#[test]
fn a_stuck_precopy_gets_a_downtime_sized_to_what_is_left() {
    let mut p = Policy::new(cfg());
    // 10 MB per 500 ms = 20_000 bytes/ms; 2 MB left stays 2 MB: not converging.
    let out = stuck(&mut p, 2_000_000);
    // 2_000_000 / 20_000 = 100 ms, with a 20 % margin: 120 ms.
    assert_eq!(out, vec![Decision::SetDowntime(120)]);
    assert_eq!(p.downtime_ms(), 120);
    assert_eq!(p.path(), Path::Downtime);
}

#[test]
fn more_than_the_ceiling_switches_to_postcopy_when_it_is_on() {
    let mut p = Policy::new(PolicyConfig::for_hvparams(30, &["postcopy-ram".into()]));
    // 200 MB left at 20_000 bytes/ms: 12 s of pause would be needed.
    let out = stuck(&mut p, 200_000_000);
    assert_eq!(out, vec![Decision::StartPostcopy]);
    assert_eq!(p.path(), Path::Postcopy);
    // Once postcopy runs, nothing more is decided until the end (no stall or abort either:
    // the guest runs on the target).
    let more = p.observe(
        sample("postcopy-active", 50_000_000, 100_000_000, 5, 100.0),
        10_000,
    );
    assert!(more.is_empty(), "{more:?}");
    assert!(p.observe(Observation::Tick, 600_000).is_empty());
}

#[test]
fn without_postcopy_the_ceiling_is_set_and_auto_converge_does_the_rest() {
    let mut p = Policy::new(cfg());
    let out = stuck(&mut p, 200_000_000);
    assert_eq!(out, vec![Decision::SetDowntime(600)]);
    assert_eq!(p.path(), Path::Downtime);
    // QEMU's throttle shows in the samples: the path says so.
    let mut info = match sample("active", 60_000_000, 150_000_000, 5, 100.0) {
        Observation::Sample(i) => i,
        _ => unreachable!(),
    };
    info.cpu_throttle_percentage = Some(30);
    assert!(p.observe(Observation::Sample(info), 3000).is_empty());
    assert_eq!(p.path(), Path::AutoConverge);
}

#[test]
fn remaining_bytes_that_shrink_slowly_are_converging() {
    let mut p = Policy::new(cfg());
    let mut out = Vec::new();
    for (pass, remaining) in [(1, 1000), (2, 990), (3, 980), (4, 970), (5, 960)] {
        out.extend(p.observe(
            sample("active", pass * 1000, remaining << 20, pass, 100.0),
            pass * 500,
        ));
    }
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn pass_events_record_the_sample_taken_since_the_last_one_and_only_that() {
    let mut p = Policy::new(cfg());
    assert!(p
        .observe(sample("active", 0, 2_000_000, 0, 100.0), 0)
        .is_empty());
    assert!(p
        .observe(sample("active", 2_000_000, 2_000_000, 1, 100.0), 100)
        .is_empty());
    // Passes with no sample in between say nothing new.
    for pass in 2..=6 {
        assert!(p.observe(Observation::Pass(pass), 100 + pass).is_empty());
    }
    // A sample (same pass count as QEMU reported last), then a pass: recorded.
    let mut out = Vec::new();
    for (i, pass) in (7..=9).enumerate() {
        let t = 200 + 100 * i as u64;
        let moved = 2_000_000 * (2 + i as u64);
        out.extend(p.observe(sample("active", moved, 2_000_000, 1, 100.0), t));
        out.extend(p.observe(Observation::Pass(pass), t + 1));
    }
    // 2 MB per 100 ms = 20_000 bytes/ms: 120 ms for the 2 MB left.
    assert_eq!(out, vec![Decision::SetDowntime(120)]);
}

#[test]
fn a_limit_that_should_have_been_enough_is_doubled() {
    let mut p = Policy::new(cfg());
    // 10 MB per 500 ms; 100 kB left needs 6 ms, under the 30 ms limit, yet no progress.
    let out = stuck(&mut p, 100_000);
    assert_eq!(out, vec![Decision::SetDowntime(60)]);
}

#[test]
fn a_postcopy_qemu_never_switches_to_is_still_watched_for_stalls() {
    let mut p = Policy::new(PolicyConfig::for_hvparams(30, &["postcopy-ram".into()]));
    let out = stuck(&mut p, 200_000_000);
    assert_eq!(out, vec![Decision::StartPostcopy]);
    assert!(!p.postcopy_started(), "requested, not confirmed");
    // QEMU stays in precopy and stops moving: stalled, then given up.
    assert_eq!(
        p.observe(Observation::Tick, 2000 + 30_000),
        vec![Decision::Stalled(Duration::from_secs(30))]
    );
    assert!(matches!(
        p.observe(Observation::Tick, 2000 + 60_000).as_slice(),
        [Decision::Abort(_)]
    ));
}

#[test]
fn in_postcopy_bad_answers_never_give_up() {
    let mut p = Policy::new(PolicyConfig::for_hvparams(30, &["postcopy-ram".into()]));
    assert!(p
        .observe(Observation::Status(MigrationStatus::PostcopyActive), 10)
        .is_empty());
    for i in 0..10 {
        assert_eq!(
            p.observe(Observation::BadAnswer("timeout".into()), 20 + i),
            vec![Decision::RetryIn(Duration::from_secs(2))]
        );
    }
}

#[test]
fn a_huge_downtime_hvparam_is_clamped_to_qemus_limit() {
    let c = PolicyConfig::for_hvparams(u64::MAX, &[]);
    assert_eq!(c.downtime_ms, MAX_DOWNTIME_MS);
    assert!(c.downtime_ceiling_ms >= c.downtime_ms);
}

#[test]
fn no_progress_is_reported_once_as_stalled_then_given_up() {
    let mut p = Policy::new(cfg());
    assert!(p
        .observe(sample("active", 5000, 1 << 30, 1, 10.0), 1000)
        .is_empty());
    assert!(p.observe(Observation::Tick, 30_000).is_empty(), "29 s idle");
    assert_eq!(
        p.observe(Observation::Tick, 31_000),
        vec![Decision::Stalled(Duration::from_secs(30))]
    );
    assert!(p.observe(Observation::Tick, 40_000).is_empty(), "once");
    // Progress again: the stall is over (and would be reported anew).
    assert!(p
        .observe(sample("active", 6000, 1 << 30, 1, 10.0), 45_000)
        .is_empty());
    assert_eq!(
        p.observe(Observation::Tick, 75_000),
        vec![Decision::Stalled(Duration::from_secs(30))]
    );
    match p.observe(Observation::Tick, 105_000).as_slice() {
        [Decision::Abort(why)] => assert!(why.contains("no progress for 60 s"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Given up: only QEMU's final status is still news.
    assert!(p.gave_up());
    assert!(p.observe(Observation::Tick, 200_000).is_empty());
    assert!(p
        .observe(Observation::BadAnswer("x".into()), 200_001)
        .is_empty());
    assert_eq!(
        p.observe(Observation::Status(MigrationStatus::Cancelled), 200_002),
        vec![Decision::Finished(MigrationStatus::Cancelled)]
    );
}

#[test]
fn five_bad_answers_in_a_row_fail_the_migration_a_good_one_resets_the_count() {
    let mut p = Policy::new(cfg());
    for i in 0..4 {
        assert_eq!(
            p.observe(Observation::BadAnswer("timeout".into()), i * 2000),
            vec![Decision::RetryIn(Duration::from_secs(2))]
        );
    }
    assert!(p.observe(sample("active", 1, 1, 1, 1.0), 8000).is_empty());
    // An answer without a status, or with one kvmd does not know, is bad too.
    let unknown = Observation::Sample(MigrationInfo {
        status: Some(MigrationStatus::Other("warping".into())),
        ..MigrationInfo::default()
    });
    for i in 0..4 {
        let out = p.observe(
            if i % 2 == 0 {
                unknown.clone()
            } else {
                Observation::Sample(MigrationInfo::default())
            },
            9000 + i,
        );
        assert_eq!(out, vec![Decision::RetryIn(Duration::from_secs(2))]);
    }
    match p
        .observe(
            Observation::BadAnswer("QMP command query-migrate timed out".into()),
            9100,
        )
        .as_slice()
    {
        [Decision::Failed(why)] => assert!(why.starts_with("5 bad answers"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn transitional_statuses_are_good_answers() {
    let mut p = Policy::new(cfg());
    for s in [
        "setup",
        "pre-switchover",
        "device",
        "cancelling",
        "wait-unplug",
    ] {
        let out = p.observe(
            Observation::Sample(MigrationInfo {
                status: Some(MigrationStatus::parse(s)),
                ..MigrationInfo::default()
            }),
            10,
        );
        assert!(out.is_empty(), "{s}: {out:?}");
    }
}
