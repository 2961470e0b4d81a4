//! Runtime state on disk, one directory per instance under the run dir (mode 0700):
//!
//! | file | what |
//! |---|---|
//! | `qemu.pid` | written by QEMU (`-pidfile`) |
//! | `qmp.sock` | QMP socket (kvmd's connection) |
//! | `monitor.sock` | HMP monitor socket, for operators |
//! | `chroot/` | empty directory QEMU chroots into (`use_chroot`) |
//! | `serial.sock`, `serial.log` | serial console socket and everything the guest printed |
//! | `qga.sock` | guest-agent socket (`use_guest_agent`) |
//! | `qemu.log` | QEMU's stdout/stderr |
//! | `runtime.json` | [`RuntimeFile`]: the spec, hvparams and exact argv of the running QEMU |
//! | `shutdown` | Ganeti's user-shutdown marker: present iff the guest powered itself off |
//! | `exit.json` | [`ExitRecord`]: how the last QEMU ended |
//!
//! Files are written atomically (temp file, fsync, rename, fsync dir) with mode 0600, on one
//! [`Store`] thread so that writes for one VM land in the order they were asked for.
//!
//! Invariant: this module decides file names and formats; it does not decide VM states.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::hvparams::HvParams;
use crate::name::InstanceName;
use crate::spec::InstanceSpec;

/// Paths of one instance's runtime state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn new(run_dir: &Path, name: &InstanceName) -> Self {
        Self {
            dir: run_dir.join(name.as_str()),
        }
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// HMP monitor for operators (`socat - UNIX-CONNECT:...`); kvmd itself uses QMP.
    pub fn monitor(&self) -> PathBuf {
        self.dir.join("monitor.sock")
    }
    /// Empty directory QEMU chroots into (`use_chroot`).
    pub fn chroot(&self) -> PathBuf {
        self.dir.join("chroot")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    pub fn qga(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn runtime(&self) -> PathBuf {
        self.dir.join("runtime.json")
    }
    pub fn shutdown_marker(&self) -> PathBuf {
        self.dir.join("shutdown")
    }
    pub fn exit_record(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// Present while kvmd is stopping the instance, so a restarted kvmd finishes the stop.
    pub fn stopping_marker(&self) -> PathBuf {
        self.dir.join("stopping")
    }
}

/// Everything needed to re-adopt a running QEMU and to explain it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuntimeFile {
    pub version: u32,
    pub spec: InstanceSpec,
    pub hvparams: HvParams,
    /// The exact argv QEMU was started with.
    pub argv: Vec<String>,
    pub pid: u32,
    /// `/proc/PID/stat` start time: with `pid`, the identity checked on re-adoption.
    pub start_ticks: u64,
    /// Wall clock at start, ms since the epoch (for uptime).
    pub started_at_ms: u64,
    pub qemu_version: String,
    /// Started with `--paused`.
    pub paused_at_start: bool,
    /// The concrete machine type (aliases resolved at start).
    #[serde(default)]
    pub machine: String,
    /// PCI slots and SCSI ids of the disks and NICs (for hotplug).
    #[serde(default)]
    pub slots: crate::cmdline::SlotPlan,
    /// Per NIC, the host tap device (`None` for user-mode NICs).
    #[serde(default)]
    pub taps: Vec<Option<String>>,
    /// The uid taken from the pool (`security_model = pool`).
    #[serde(default)]
    pub pool_uid: Option<u32>,
}

/// How the last QEMU of an instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitKind {
    /// Stopped by kvmd on request.
    Stopped,
    /// The guest powered itself off.
    UserDown,
    /// QEMU died without being asked to.
    Crashed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub kind: ExitKind,
    /// Human explanation, e.g. "guest powered off" or "killed by signal 9 (SIGKILL)".
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Last lines QEMU wrote to stderr.
    pub stderr_tail: Vec<String>,
    pub pid: u32,
    pub at_ms: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
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
const HISTORY: [&str; 2] = ["exit.json", "shutdown"];

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

/// Record an exit: the exit record, plus Ganeti's `shutdown` marker for a user shutdown (and
/// its removal otherwise).
pub fn record_exit(paths: &RunPaths, rec: &ExitRecord) -> io::Result<()> {
    write_json(&paths.exit_record(), rec)?;
    remove_file(&paths.stopping_marker())?;
    if rec.kind == ExitKind::UserDown {
        write_atomic(&paths.shutdown_marker(), b"")
    } else {
        remove_file(&paths.shutdown_marker())
    }
}

/// What the run dir says about one instance. Each file is read on its own, so one damaged
/// file does not hide the others.
#[derive(Debug)]
pub struct OnDisk {
    /// `Err`: the file exists but cannot be read or parsed (not the same as missing).
    pub runtime: Result<Option<RuntimeFile>, String>,
    pub exit: Option<ExitRecord>,
    /// The directory exists (the instance was started since boot and not cleaned up).
    pub exists: bool,
    /// kvmd was stopping this instance (the `stopping` marker).
    pub stopping: bool,
    /// The pid in QEMU's pidfile, if any.
    pub pidfile_pid: Option<u32>,
}

pub fn read_on_disk(paths: &RunPaths) -> OnDisk {
    if !paths.dir.is_dir() {
        return OnDisk {
            runtime: Ok(None),
            exit: None,
            exists: false,
            stopping: false,
            pidfile_pid: None,
        };
    }
    OnDisk {
        runtime: read_json(&paths.runtime()).map_err(|e| e.to_string()),
        exit: read_json(&paths.exit_record()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring an unreadable exit record");
            None
        }),
        exists: true,
        stopping: paths.stopping_marker().exists(),
        pidfile_pid: std::fs::read_to_string(paths.pidfile())
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The persistence thread: runs file-system jobs one at a time, in order, off the actors'
/// threads. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: crossbeam_channel::Sender<Job>,
}

impl Store {
    pub fn start() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name("kvmd-store".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn store thread");
        Self { tx }
    }

    /// Wait (blocking) until every job queued so far has run. Used at exit, so no exit record
    /// is lost.
    pub fn flush(&self) {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        if self
            .tx
            .send(Box::new(move || {
                let _ = tx.send(());
            }))
            .is_ok()
        {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
        }
    }

    /// Queue `f` on the store thread now, and return a future of its result. Jobs run in the
    /// order this method was called.
    pub fn run<T, F>(&self, f: F) -> impl std::future::Future<Output = T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("store thread is alive");
        async move { rx.await.expect("store job finished") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_writes_are_private_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runtime.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!p.with_extension("tmp").exists());
    }

    #[test]
    fn user_down_sets_the_marker_and_other_exits_clear_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path(), &InstanceName::parse("a").unwrap());
        create_dir(&paths).unwrap();
        let mut rec = ExitRecord {
            kind: ExitKind::UserDown,
            reason: "x".into(),
            exit_code: Some(0),
            signal: None,
            stderr_tail: vec![],
            pid: 1,
            at_ms: 0,
        };
        record_exit(&paths, &rec).unwrap();
        assert!(paths.shutdown_marker().exists());
        rec.kind = ExitKind::Crashed;
        record_exit(&paths, &rec).unwrap();
        assert!(!paths.shutdown_marker().exists());
        let back: ExitRecord = read_json(&paths.exit_record()).unwrap().unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn a_new_run_keeps_only_the_exit_history() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path(), &InstanceName::parse("a").unwrap());
        fresh_dir(&paths).unwrap();
        for f in [paths.runtime(), paths.qemu_log(), paths.exit_record()] {
            write_atomic(&f, b"x").unwrap();
        }
        fresh_dir(&paths).unwrap();
        assert!(paths.exit_record().exists());
        assert!(!paths.runtime().exists() && !paths.qemu_log().exists());
        drop_run_files(&paths).unwrap();
        assert!(paths.dir.exists(), "history keeps the directory");
        remove_file(&paths.exit_record()).unwrap();
        drop_run_files(&paths).unwrap();
        assert!(!paths.dir.exists());
    }

    #[test]
    fn store_runs_jobs_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = Store::start();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        rt.block_on(async {
            let mut futs = Vec::new();
            for i in 0..50 {
                let log = log.clone();
                futs.push(store.run(move || log.lock().unwrap().push(i)));
            }
            for f in futs {
                f.await;
            }
        });
        assert_eq!(*log.lock().unwrap(), (0..50).collect::<Vec<_>>());
    }
}
