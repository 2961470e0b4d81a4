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
//! | `runtime.json` | [`runtime_file::RuntimeFile`]: the spec, hvparams and exact argv of the running QEMU |
//! | `shutdown` | Ganeti's user-shutdown marker: present iff the guest powered itself off |
//! | `exit.json` | how the last QEMU ended |
//!
//! [`Store`] is the persistence thread: file jobs for every VM run on it one at a time, in the
//! order they were asked for, off the actors' threads.
//!
//! Invariant: the store thread runs file-system jobs only, never operator code (hooks, scripts,
//! external programs), so nothing an operator wrote can stall another VM's files.

pub mod files;
pub mod job_file;
pub mod runtime_file;
pub mod seq_file;
pub mod serial_log;

type Job = Box<dyn FnOnce() + Send>;

/// A store job that could not give its result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The job panicked (a bug): the thread caught it and goes on with the next job.
    #[error("A store job panicked: {0}")]
    Panicked(String),
    /// The store thread is gone (kvmd is exiting).
    #[error("The store thread is gone")]
    Gone,
}

/// The persistence thread: runs file-system jobs one at a time, in order, off the actors'
/// threads. Cheap to clone.
#[derive(Clone, Debug)]
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

    /// Wait (blocking, at most 10 s) until every job queued so far has run. Used at exit, so
    /// no exit record is lost.
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
    /// order this method was called. A job that panics yields [`StoreError::Panicked`]; the
    /// thread goes on with the next one.
    pub fn run<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.tx.send(Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %crate::model::text::escape(&what), "a store job panicked");
                StoreError::Panicked(what)
            });
            let _ = tx.send(r);
        }));
        async move {
            if queued.is_err() {
                return Err(StoreError::Gone);
            }
            rx.await.map_err(|_| StoreError::Gone)?
        }
    }

    /// Queue `f` and do not wait for it (it still runs in order with the others).
    pub fn spawn<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        let fut = self.run(f);
        drop(fut);
    }
}

#[cfg(test)]
mod tests {
    use super::files::*;
    use super::runtime_file::*;
    use super::*;
    use crate::model::exit::{ExitKind, ExitRecord};
    use crate::model::layout::RunPaths;
    use crate::model::name::InstanceName;
    use std::fs;
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
    fn a_panicking_store_job_returns_an_error_and_the_store_goes_on() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = Store::start();
        rt.block_on(async {
            let bad = store.run(|| -> u32 { panic!("boom") });
            let good = store.run(|| 7);
            assert!(matches!(bad.await, Err(StoreError::Panicked(m)) if m == "boom"));
            assert_eq!(good.await.unwrap(), 7);
        });
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
                f.await.unwrap();
            }
        });
        assert_eq!(*log.lock().unwrap(), (0..50).collect::<Vec<_>>());
    }
}
