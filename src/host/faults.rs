//! Fault injection for tests: `KVMD_FAULTS` (read once, at the first use) names points where
//! kvmd pretends a call failed, or waits before a step. Syntax: comma-separated `NAME=N`, e.g.
//! `pidfd_open=2,delay_before_cont_ms=3000`:
//!
//! - `NAME=N` arms the failure point `NAME` for its next `N` passes: [`fail`] returns true
//!   that many times, then false again;
//! - `delay_POINT_ms=N` makes [`delay`]`("POINT")` return `N` ms, every time.
//!
//! Points used today: `pidfd_open` ([`crate::host::process::QemuProcess::open`] fails with
//! `EMFILE`); delays `before_cont` (a start holds before resuming the guest) and
//! `before_runtime` (a start holds before its runtime file is written, on the store thread).
//!
//! Invariant: compiled only with `debug_assertions`; in release builds [`fail`] and [`delay`]
//! are constant no-ops and `KVMD_FAULTS` is never read. Without `KVMD_FAULTS` nothing changes.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    #[error("Fault entry {0:?} is not NAME=N")]
    Malformed(String),
    #[error("Fault {name:?} has a count that is not a number: {value:?}")]
    NotANumber {
        name: String,
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// Parsed `KVMD_FAULTS`: failure counters and delays, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    entries: BTreeMap<String, u64>,
}

impl Faults {
    /// Parse `NAME=N[,NAME=N...]` (blanks around entries are ignored, an empty text arms
    /// nothing). Names are lower-case letters, digits and `_`.
    pub fn parse(text: &str) -> Result<Self, FaultsError> {
        let mut entries = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((name, value)) = entry.split_once('=') else {
                return Err(FaultsError::Malformed(entry.into()));
            };
            let (name, value) = (name.trim(), value.trim());
            let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
            if name.is_empty() || !name.chars().all(valid) {
                return Err(FaultsError::Malformed(entry.into()));
            }
            let n = value
                .parse::<u64>()
                .map_err(|source| FaultsError::NotANumber {
                    name: name.into(),
                    value: value.into(),
                    source,
                })?;
            entries.insert(name.to_string(), n);
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True while `point`'s counter is above zero, counting it down.
    pub fn take_failure(&mut self, point: &str) -> bool {
        match self.entries.get_mut(point) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// The delay armed for `point` (`delay_POINT_ms`); a zero delay is none.
    pub fn delay(&self, point: &str) -> Option<Duration> {
        let key = format!("delay_{point}_ms");
        self.entries
            .get(&key)
            .filter(|ms| **ms > 0)
            .map(|ms| Duration::from_millis(*ms))
    }
}

#[cfg(debug_assertions)]
fn table() -> &'static std::sync::Mutex<Faults> {
    static TABLE: std::sync::OnceLock<std::sync::Mutex<Faults>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let text = std::env::var("KVMD_FAULTS").unwrap_or_default();
        let faults = match Faults::parse(&text) {
            Ok(f) => {
                if !f.is_empty() {
                    let shown = crate::model::text::escape_clipped(&text, 256);
                    tracing::warn!(faults = %shown, "fault injection is armed (KVMD_FAULTS)");
                }
                f
            }
            Err(e) => {
                tracing::warn!(error = %e, "KVMD_FAULTS ignored");
                Faults::default()
            }
        };
        std::sync::Mutex::new(faults)
    })
}

/// Should the failure point `point` fail this time? (Counts the point down.)
#[cfg(debug_assertions)]
pub fn fail(point: &str) -> bool {
    table()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take_failure(point)
}

/// Should the failure point `point` fail this time? Never, in release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fail(_point: &str) -> bool {
    false
}

/// How long to wait before the step `point` (`delay_POINT_ms`), if at all.
#[cfg(debug_assertions)]
pub fn delay(point: &str) -> Option<Duration> {
    table()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .delay(point)
}

/// How long to wait before the step `point`: never, in release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn delay(_point: &str) -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_delays_are_parsed() {
        let mut f = Faults::parse(" pidfd_open=2 , delay_before_cont_ms=3000,").unwrap();
        assert_eq!(f.delay("before_cont"), Some(Duration::from_millis(3000)));
        assert_eq!(
            f.delay("before_cont"),
            Some(Duration::from_millis(3000)),
            "kept"
        );
        assert_eq!(f.delay("pidfd_open"), None);
        assert!(f.take_failure("pidfd_open"));
        assert!(f.take_failure("pidfd_open"));
        assert!(
            !f.take_failure("pidfd_open"),
            "two failures, then normal again"
        );
        assert!(!f.take_failure("other"));
    }

    #[test]
    fn an_empty_text_arms_nothing() {
        assert!(Faults::parse("").unwrap().is_empty());
        assert!(Faults::parse(" , ").unwrap().is_empty());
    }

    #[test]
    fn malformed_entries_are_rejected() {
        assert!(matches!(
            Faults::parse("pidfd_open"),
            Err(FaultsError::Malformed(_))
        ));
        assert!(matches!(
            Faults::parse("=3"),
            Err(FaultsError::Malformed(_))
        ));
        assert!(matches!(
            Faults::parse("Bad-Name=1"),
            Err(FaultsError::Malformed(_))
        ));
        assert!(matches!(
            Faults::parse("pidfd_open=-1"),
            Err(FaultsError::NotANumber { .. })
        ));
        assert!(matches!(
            Faults::parse("pidfd_open=lots"),
            Err(FaultsError::NotANumber { .. })
        ));
    }

    #[test]
    fn unarmed_points_never_fail_here() {
        // This test process has no KVMD_FAULTS for this point.
        assert!(!fail("no_such_point_in_kvmd"));
        assert_eq!(delay("no_such_point_in_kvmd"), None);
    }
}
