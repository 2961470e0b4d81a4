//! File operations on the run dir: atomic private writes, JSON, removal, and the per-run file
//! set of an instance directory (what a new QEMU run replaces, what history it keeps).
//!
//! Files are written with mode 0600 through a temporary file and a rename, so a reader (or a
//! kvmd restarted after `kill -9`) sees the old or the new content, never half of it. They are
//! not fsync'd: the run dir describes processes, which do not survive a host crash, and it lives
//! on tmpfs in production; a kvmd crash only needs the rename to be atomic.
//!
//! Invariant: decides nothing about VM states; blocking, so it runs on the store thread.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::layout::RunPaths;

/// Create the instance directory (0700).
pub fn create_dir(paths: &RunPaths) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.dir)
}

/// Write `data` to `path` atomically, mode 0600.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
    }
    fs::rename(&tmp, path)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    data.push(b'\n');
    write_atomic(path, &data)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove a file; a missing file is fine.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Remove an instance directory and everything in it; a missing directory is fine.
pub fn remove_dir(paths: &RunPaths) -> io::Result<()> {
    match fs::remove_dir_all(&paths.dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Files that outlive a QEMU: how the last one ended.
const HISTORY: [&str; 3] = ["exit.json", "shutdown", "managed-by"];
/// The job in flight: not the run's to remove (the job clears it when it ends).
const JOB: &str = "job.json";

/// Remove everything of a QEMU run except the exit history; `keep_dir`: leave the (possibly
/// empty) directory in place, otherwise remove it when nothing is left.
fn clear_run_files(paths: &RunPaths, keep_dir: bool) -> io::Result<()> {
    let entries = match fs::read_dir(&paths.dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut kept = 0;
    for entry in entries {
        let entry = entry?;
        if HISTORY.iter().any(|h| entry.file_name() == *h) {
            kept += 1;
        } else if entry.file_name() == JOB {
            // kept, but does not keep the directory
        } else if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            remove_file(&entry.path())?;
        }
    }
    if kept == 0 && !keep_dir {
        fs::remove_dir(&paths.dir)?;
    }
    Ok(())
}

/// Prepare the directory for a new QEMU: created if missing, emptied of the previous run's
/// files, the exit history kept.
pub fn fresh_dir(paths: &RunPaths) -> io::Result<()> {
    create_dir(paths)?;
    clear_run_files(paths, true)
}

/// Undo what a start created: the run's files go, the exit history stays (and the directory
/// with it, only if there is history).
pub fn drop_run_files(paths: &RunPaths) -> io::Result<()> {
    clear_run_files(paths, false)
}
