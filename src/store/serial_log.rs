//! Rotation of a VM's `serial.log`, which QEMU writes itself (`-chardev socket,...,logfile=PATH,
//! logappend=on`): a chatty guest would otherwise fill the run dir without bound.
//!
//! QEMU opened the file with O_APPEND and keeps it open, so kvmd can neither rename it (QEMU
//! would go on writing to the renamed inode) nor reopen it for QEMU. Instead
//! [`rotate_if_needed`] copies the file's tail to `serial.log.1` and truncates `serial.log` in
//! place: with O_APPEND every write of QEMU lands at the current end, so after the truncation
//! its output continues at offset 0 (no hole, no NUL bytes). Bytes that arrive while the tail
//! is copied are copied too: the size is checked again right before the truncation. What QEMU
//! writes between that last check and the `ftruncate` itself (a couple of syscalls, when the
//! guest writes at that very moment) is lost; a writer without O_APPEND would leave a sparse
//! file, which is why QEMU's `logappend=on` matters.
//!
//! Invariant: never renames, removes or recreates `serial.log` (QEMU holds it open); blocking,
//! so it runs on the store thread; files only, no programs.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::store::files::write_atomic;

/// How many times bytes that arrived during the copy are copied again before truncating anyway.
const CATCH_UP_ROUNDS: usize = 8;

/// Where the rotated tail of `log` goes: `serial.log` -> `serial.log.1`.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    log.with_file_name(name)
}

/// When `log` is larger than `max_bytes`: keep its last `keep_bytes` in `serial.log.1` (atomic
/// replace, mode 0600), truncate `log` to zero, and return how many bytes were dropped. `None`
/// when the file is missing or within the limit.
pub fn rotate_if_needed(log: &Path, max_bytes: u64, keep_bytes: u64) -> io::Result<Option<u64>> {
    let f = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= max_bytes {
        return Ok(None);
    }
    let rotated = rotated_path(log);
    let mut tail = read_range(&f, len.saturating_sub(keep_bytes), len)?;
    // The tail is safe in `.1` before anything is truncated.
    write_atomic(&rotated, &tail)?;
    let mut end = len;
    let mut caught_up = false;
    for _ in 0..CATCH_UP_ROUNDS {
        let now = f.metadata()?.len();
        if now <= end {
            break;
        }
        tail.extend(read_range(&f, end, now)?);
        end = now;
        caught_up = true;
    }
    // Right after the last size check: QEMU's next O_APPEND write lands at offset 0.
    f.set_len(0)?;
    if caught_up {
        let excess = tail
            .len()
            .saturating_sub(usize::try_from(keep_bytes).unwrap_or(usize::MAX));
        tail.drain(..excess);
        write_atomic(&rotated, &tail)?;
    }
    Ok(Some(end - tail.len() as u64))
}

/// Bytes `start..end` of `f`, fewer if the file is shorter by now.
fn read_range(f: &std::fs::File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(end.saturating_sub(start))
        .map_err(|_| io::Error::other("too many bytes to read at once"))?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], start + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| u8::try_from(i % 251).unwrap() + 1).collect()
    }

    #[test]
    fn a_file_under_the_limit_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, pattern(100)).unwrap();
        assert_eq!(rotate_if_needed(&log, 100, 10).unwrap(), None);
        assert_eq!(std::fs::read(&log).unwrap(), pattern(100));
        assert!(!rotated_path(&log).exists());
        assert_eq!(
            rotate_if_needed(&dir.path().join("missing.log"), 1, 1).unwrap(),
            None
        );
    }

    #[test]
    fn a_large_file_keeps_exactly_its_last_bytes_and_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let data = pattern(10_000);
        std::fs::write(&log, &data).unwrap();
        assert_eq!(rotate_if_needed(&log, 4096, 1000).unwrap(), Some(9000));
        let kept = std::fs::read(rotated_path(&log)).unwrap();
        assert_eq!(kept, &data[9000..]);
        let mode = std::fs::metadata(rotated_path(&log))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        // A second rotation replaces the old `.1`.
        std::fs::write(&log, pattern(5000)).unwrap();
        assert_eq!(rotate_if_needed(&log, 4096, 10).unwrap(), Some(4990));
        assert_eq!(
            std::fs::read(rotated_path(&log)).unwrap(),
            &pattern(5000)[4990..]
        );
    }

    #[test]
    fn keeping_nothing_drops_everything() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, pattern(2000)).unwrap();
        assert_eq!(rotate_if_needed(&log, 1000, 0).unwrap(), Some(2000));
        assert_eq!(std::fs::read(rotated_path(&log)).unwrap(), b"");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    }

    fn line_numbers(text: &str) -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
            .collect()
    }

    #[test]
    fn an_appending_writer_continues_at_the_start_of_the_emptied_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let rotated = Arc::new(AtomicBool::new(false));
        let (big_tx, big_rx) = std::sync::mpsc::channel();
        let writer = {
            let (log, rotated) = (log.clone(), rotated.clone());
            std::thread::spawn(move || {
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                let (mut n, mut after) = (0u64, 0);
                while after < 200 {
                    // One write(2) per line: atomic against the truncation.
                    f.write_all(format!("line {n:08}\n").as_bytes()).unwrap();
                    n += 1;
                    if n == 2000 {
                        big_tx.send(()).unwrap();
                    }
                    if rotated.load(Ordering::SeqCst) {
                        after += 1;
                    }
                }
                n
            })
        };
        big_rx.recv().unwrap();
        // The writer is still writing while this runs.
        let dropped = rotate_if_needed(&log, 10_000, 4096).unwrap();
        rotated.store(true, Ordering::SeqCst);
        let written = writer.join().unwrap();
        assert!(dropped.is_some());

        let new = std::fs::read(&log).unwrap();
        assert!(!new.contains(&0), "no hole of NUL bytes");
        let new = String::from_utf8(new).unwrap();
        assert!(new.starts_with("line "), "{:?}", &new[..new.len().min(40)]);
        let lines = line_numbers(&new);
        assert_eq!(lines.len(), new.lines().count(), "whole lines only");
        assert!(lines.windows(2).all(|w| w[1] == w[0] + 1), "in order");
        assert_eq!(*lines.last().unwrap(), written - 1);

        let old = String::from_utf8(std::fs::read(rotated_path(&log)).unwrap()).unwrap();
        assert!(old.len() <= 4096);
        let kept = line_numbers(old.split_once('\n').unwrap().1);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(kept.last().unwrap() < lines.first().unwrap());
    }
}
