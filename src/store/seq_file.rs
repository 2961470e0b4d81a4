//! Numbers that keep growing across kvmd restarts (event sequence numbers, job ids): a small
//! file in the run dir holds a reserved upper bound; a restarted kvmd starts above it.
//!
//! Invariant: a number is never handed out twice while the run dir lives; the file is written
//! atomically (mode 0600).

use std::path::Path;

use tracing::warn;

use crate::host::clock::now_ms;

/// The first number to use, given the file left by earlier kvmds: one above the number it
/// holds; 1 when there is none. A damaged file cannot say where numbering stopped, so the
/// current time in milliseconds is used (larger than any count a kvmd could have reached).
pub fn first_after(path: &Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(n) => n.saturating_add(1),
            Err(_) => {
                warn!(path = %path.display(), "damaged sequence file; numbering from the current time");
                now_ms().max(1)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read a sequence file; numbering from the current time");
            now_ms().max(1)
        }
    }
}

/// Record that numbers up to `value` may have been handed out.
pub fn write(path: &Path, value: u64) -> std::io::Result<()> {
    crate::store::files::write_atomic(path, format!("{value}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_continues_above_the_reservation_and_starts_at_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.seq");
        assert_eq!(first_after(&p), 1);
        write(&p, 41).unwrap();
        assert_eq!(first_after(&p), 42);
        std::fs::write(&p, "garbage").unwrap();
        assert!(first_after(&p) > 1_000_000);
    }
}
