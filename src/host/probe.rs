//! Probing a QEMU binary: runs `--version`, `--help`, `-machine help`, `-device help`, and a
//! `-machine none` QEMU asked over QMP (`query-version`, `query-machines`, `qom-list-types`,
//! `query-migrate-capabilities`, and which URL block drivers load: `blockdev-add` of a closed
//! loopback port),
//! then parses the outputs with `qemu::caps`. Results are cached by (path, size, mtime): a start
//! never re-probes, an upgraded binary is probed again.
//!
//! Bounded: every run of the binary goes through [`crate::host::exec`], and the whole probe,
//! the QMP cross-check included, must finish by one deadline (`node.probe_timeout`). A binary
//! that hangs fails the probe with [`ProbeError::TimedOut`], naming it, and is killed with its
//! process group: no process outlives a probe.
//!
//! Private: the cross-check's QMP socket lives in a fresh directory made with `mkdtemp` (random
//! name, exclusive creation, mode 0700) under a parent the caller chooses (default: the temp
//! dir), and removed afterwards. An existing path is never reused: a directory another user
//! prepared could otherwise answer the probe in QEMU's place and inject options into a QEMU
//! that runs as root.
//!
//! Invariant: blocking; callers run it on a blocking thread. Never longer than its deadline
//! (plus the time to kill and reap); never reuses a directory it did not just create.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use crate::host::exec::{self, ExecError};
use crate::qemu::caps::{Machine, QemuCaps};

/// Output kept per help text (QEMU 7.2's `--help` is 33 KiB; leave room for newer ones).
const HELP_LIMIT: usize = 1 << 20;

/// What the QMP cross-check is called in errors.
const QMP_STEP: &str = "-machine none (QMP cross-check)";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("Cannot run {path:?}")]
    Run {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path:?} {arg} exited with {status}: {output}")]
    Failed {
        path: PathBuf,
        arg: &'static str,
        status: String,
        output: String,
    },
    #[error("Probing {path:?} timed out: {arg} did not finish within the probe deadline ({after:?}) and was killed")]
    TimedOut {
        path: PathBuf,
        arg: &'static str,
        after: Duration,
    },
    #[error("Cannot find a version in the first line of {path:?} --version: {line:?}")]
    NoVersion { path: PathBuf, line: String },
    #[error("{path:?} says version {help:?} in --version but {qmp:?} over QMP")]
    VersionMismatch {
        path: PathBuf,
        help: (u32, u32, u32),
        qmp: (u32, u32, u32),
    },
}

type Key = (PathBuf, u64, Option<SystemTime>);

fn cache() -> &'static Mutex<HashMap<Key, Arc<QemuCaps>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<QemuCaps>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Probe `path` (blocking) within `deadline`, or return the cached result for this exact
/// binary. The QMP socket's private directory is made under `std::env::temp_dir()`.
pub fn probe(path: &Path, deadline: Duration) -> Result<Arc<QemuCaps>, ProbeError> {
    probe_in(path, deadline, &std::env::temp_dir())
}

/// [`probe`], making the QMP socket's private directory under `scratch_parent`.
pub fn probe_in(
    path: &Path,
    deadline: Duration,
    scratch_parent: &Path,
) -> Result<Arc<QemuCaps>, ProbeError> {
    let meta = std::fs::metadata(path).map_err(|source| ProbeError::Run {
        path: path.into(),
        source,
    })?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(c) = cache().lock().expect("probe cache").get(&key) {
        return Ok(c.clone());
    }
    let p = Probe {
        path,
        deadline,
        end: Instant::now() + deadline,
    };
    let version = p.run(&["--version"], "--version")?;
    let help = p.run(&["--help"], "--help")?;
    let machines = p.run(&["-machine", "help"], "-machine help")?;
    let devices = match p.run(&["-device", "help"], "-device help") {
        Err(e @ ProbeError::TimedOut { .. }) => return Err(e),
        other => other.unwrap_or_default(),
    };
    let first = version.lines().next().unwrap_or("").to_string();
    let mut caps =
        QemuCaps::from_outputs(&version, &help, &machines, &devices).ok_or_else(|| {
            ProbeError::NoVersion {
                path: path.into(),
                line: first,
            }
        })?;
    if let Some(q) = p.qmp_facts(scratch_parent)? {
        if q.version != caps.version {
            return Err(ProbeError::VersionMismatch {
                path: path.into(),
                help: caps.version,
                qmp: q.version,
            });
        }
        // QMP is authoritative for machines when it answers.
        if q.default_machine.is_some() {
            caps.default_machine = q.default_machine;
        }
        // Device types QMP knows but `-device help` did not list.
        caps.devices.extend(q.devices);
        caps.url_drivers = q.url_drivers;
        caps.migration_capabilities = q.migration_capabilities;
        for (name, alias) in q.aliases {
            caps.machines.entry(alias).or_insert_with(|| Machine {
                description: String::new(),
                alias_of: Some(name),
            });
        }
    }
    let caps = Arc::new(caps);
    cache()
        .lock()
        .expect("probe cache")
        .insert(key, caps.clone());
    Ok(caps)
}

/// One probe of one binary, against one deadline.
struct Probe<'a> {
    path: &'a Path,
    deadline: Duration,
    end: Instant,
}

impl Probe<'_> {
    fn timed_out(&self, arg: &'static str) -> ProbeError {
        ProbeError::TimedOut {
            path: self.path.into(),
            arg,
            after: self.deadline,
        }
    }

    /// Time left, or the timeout error naming the step that could not start.
    fn remaining(&self, arg: &'static str) -> Result<Duration, ProbeError> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out(arg));
        }
        Ok(left)
    }

    /// Run the binary with `args`; its stdout and stderr, lossily decoded.
    fn run(&self, args: &[&str], arg: &'static str) -> Result<String, ProbeError> {
        let left = self.remaining(arg)?;
        let mut cmd = Command::new(self.path);
        cmd.args(args);
        let what = format!("{} {arg}", self.path.display());
        match exec::run_with_limit(cmd, &what, left, HELP_LIMIT) {
            Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)),
            Err(ExecError::Spawn { source, .. }) => Err(ProbeError::Run {
                path: self.path.into(),
                source,
            }),
            Err(ExecError::TimedOut { .. }) => Err(self.timed_out(arg)),
            Err(ExecError::Failed { status, output, .. }) => Err(ProbeError::Failed {
                path: self.path.into(),
                arg,
                status: status.to_string(),
                output,
            }),
        }
    }

    /// Start `QEMU -machine none` with a QMP socket in a fresh private directory and ask it.
    /// `Ok(None)` if that fails before the deadline (the help output alone is then used); a
    /// QEMU still not answering at the deadline is a timeout.
    fn qmp_facts(&self, scratch_parent: &Path) -> Result<Option<QmpFacts>, ProbeError> {
        let left = self.remaining(QMP_STEP)?;
        let dir = match ScratchDir::create(scratch_parent) {
            Ok(d) => d,
            Err(e) => {
                warn!(parent = ?scratch_parent, error = %e, "cannot make a private directory for the QMP probe; using the help output only");
                return Ok(None);
            }
        };
        let sock = dir.path().join("qmp.sock");
        let mut cmd = Command::new(self.path);
        cmd.args([
            "-machine",
            "none",
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        let child = match cmd.spawn() {
            Ok(c) => Killed(c),
            Err(e) => {
                debug!(error = %e, "cannot start QEMU for the QMP probe");
                return Ok(None);
            }
        };
        let pid = child.0.id();
        let alive = move || crate::host::process::read_stat(pid).is_ok_and(|s| s.state != 'Z');
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return Ok(None);
        };
        let end = self.end;
        let asked = rt.block_on(async move {
            tokio::time::timeout(
                left,
                ask(&sock, end, left.min(Duration::from_secs(5)), alive),
            )
            .await
        });
        // QEMU is killed and reaped, then its directory removed, on every path.
        drop(child);
        drop(dir);
        match asked {
            // Still connecting or asking at the deadline: the binary hangs, as far as we know.
            Err(_) => Err(self.timed_out(QMP_STEP)),
            Ok(None) if Instant::now() >= self.end => Err(self.timed_out(QMP_STEP)),
            Ok(facts) => Ok(facts),
        }
    }
}

/// A child killed with its process group and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // Not reaped yet, so its pid still names its process group.
        let pgid = nix::unistd::Pid::from_raw(crate::host::sys::pid_t(self.0.id()));
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A fresh private directory (`mkdtemp`: random name, created exclusively, mode 0700), removed
/// with its contents when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(parent: &Path) -> nix::Result<Self> {
        nix::unistd::mkdtemp(&parent.join("kvmd-probe-XXXXXX")).map(Self)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What QMP says about the binary: `query-version`, `query-machines`.
struct QmpFacts {
    version: (u32, u32, u32),
    default_machine: Option<String>,
    /// (machine, alias)
    aliases: Vec<(String, String)>,
    /// Concrete device types (`qom-list-types implements=device abstract=false`).
    devices: Vec<String>,
    /// The URL block drivers (curl's) this binary can load; `None` when QMP stopped
    /// answering before all were asked.
    url_drivers: Option<std::collections::BTreeSet<String>>,
    /// The migration capabilities it knows.
    migration_capabilities: Option<std::collections::BTreeSet<String>>,
}

/// Connect to the probe QEMU's QMP socket (until `end`) and ask it; `None` if anything fails.
async fn ask(
    sock: &Path,
    end: Instant,
    t: Duration,
    alive: impl FnMut() -> bool,
) -> Option<QmpFacts> {
    let opts = crate::qmp::ConnectOptions {
        connect_deadline: end,
        startup_timeout: t,
        command_timeout: t,
    };
    let (q, _notices) = crate::qmp::Qmp::connect_with(sock, &opts, alive)
        .await
        .ok()?;
    let v = q.query_version().await.ok()?;
    let version = (v.major, v.minor, v.micro);
    let machines = q.query_machines().await.ok()?;
    let default_machine = machines
        .iter()
        .find(|m| m.is_default)
        .map(|m| m.name.clone());
    let aliases = machines
        .iter()
        .filter_map(|m| Some((m.name.clone(), m.alias.clone()?)))
        .collect();
    let devices = q.qom_list_types("device", false).await.unwrap_or_default();
    // A URL driver exists when opening a URL fails for any reason but "Unknown driver" (the
    // URL is a closed port on loopback: nothing is fetched).
    let mut url_drivers = Some(std::collections::BTreeSet::new());
    for (i, driver) in crate::qemu::caps::URL_DRIVERS.iter().enumerate() {
        let node = format!("kvmd-probe-url{i}");
        match q
            .blockdev_add_url(driver, &node, &format!("{driver}://127.0.0.1:1/probe"))
            .await
        {
            Err(crate::qmp::QmpError::Command { desc, .. })
                if desc.starts_with("Unknown driver") => {}
            Err(crate::qmp::QmpError::Command { .. }) | Ok(()) => {
                if let Some(set) = url_drivers.as_mut() {
                    set.insert(driver.to_string());
                }
            }
            Err(_) => {
                url_drivers = None;
                break;
            }
        }
    }
    let migration_capabilities = q
        .query_migrate_capabilities()
        .await
        .ok()
        .map(|caps| caps.into_iter().map(|(name, _)| name).collect());
    let _ = q.quit().await;
    Some(QmpFacts {
        version,
        default_machine,
        aliases,
        devices,
        url_drivers,
        migration_capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const QEMU: &str = "/usr/bin/qemu-system-x86_64";

    /// The real binary: `--version` and QMP agree, the QMP device list is merged in, and a
    /// second probe of the same binary comes from the cache.
    #[test]
    fn probing_the_installed_qemu() {
        let path = Path::new(QEMU);
        if !path.exists() {
            return;
        }
        let t0 = Instant::now();
        let a = probe(path, Duration::from_secs(60)).unwrap();
        let first = t0.elapsed();
        assert!(a.has_device("virtio-net-pci") && a.has_device("pcie-root-port"));
        assert!(a.default_machine.is_some());
        let mig = a.migration_capabilities.as_ref().expect("QMP answered");
        assert!(
            mig.contains("return-path") && mig.contains("postcopy-ram"),
            "{mig:?}"
        );
        // The URL drivers come from one module (curl): all four or none.
        let urls = a.url_drivers.as_ref().expect("QMP answered");
        assert!(
            urls.is_empty() || urls.len() == crate::qemu::caps::URL_DRIVERS.len(),
            "{urls:?}"
        );
        let t1 = Instant::now();
        let b = probe(path, Duration::from_secs(60)).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
        assert!(t1.elapsed() < first);
    }

    /// Processes whose command line mentions `needle`.
    fn processes_mentioning(needle: &Path) -> Vec<u32> {
        let needle = needle.as_os_str().as_encoded_bytes().to_vec();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                cmd.windows(needle.len()).any(|w| w == needle)
                    && crate::host::process::read_stat(*pid).is_ok_and(|s| s.state != 'Z')
            })
            .collect()
    }

    /// Is the process whose pid a fake QEMU wrote to `pidfile` still running?
    fn running(pidfile: &Path) -> bool {
        let pid: u32 = std::fs::read_to_string(pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        crate::host::process::read_stat(pid).is_ok_and(|s| s.state != 'Z')
    }

    #[test]
    fn a_binary_that_hangs_on_version_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("hanging-qemu");
        let pidfile = dir.path().join("pid");
        exec::write_test_script(
            &fake,
            &format!(
                "#!/bin/sh\necho $$ > {}\nexec sleep 1000\n",
                pidfile.display()
            ),
        );
        let deadline = Duration::from_millis(400);
        let t0 = Instant::now();
        let e = probe_in(&fake, deadline, dir.path()).unwrap_err();
        let took = t0.elapsed();
        assert!(
            matches!(&e, ProbeError::TimedOut { arg: "--version", after, .. } if *after == deadline),
            "{e:?}"
        );
        assert!(took < deadline + Duration::from_millis(700), "{took:?}");
        assert!(e.to_string().contains("hanging-qemu"), "{e}");
        assert!(!running(&pidfile), "nothing left running");
    }

    #[test]
    fn a_binary_that_fails_is_reported_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("broken-qemu");
        exec::write_test_script(&fake, "#!/bin/sh\necho 'no such library' >&2\nexit 2\n");
        match probe_in(&fake, Duration::from_secs(10), dir.path()) {
            Err(ProbeError::Failed {
                arg,
                status,
                output,
                ..
            }) => {
                assert_eq!(arg, "--version");
                assert!(status.contains('2'), "{status}");
                assert_eq!(output, "no such library");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A wrapper around the real QEMU that does what `body` says for `-machine none` (the QMP
    /// cross-check) and runs the real binary otherwise.
    fn wrapper(dir: &Path, name: &str, body: &str) -> PathBuf {
        let fake = dir.join(name);
        exec::write_test_script(
            &fake,
            &format!(
                "#!/bin/sh\nif [ \"$1 $2\" = \"-machine none\" ]; then\n{body}\nfi\nexec {QEMU} \"$@\"\n"
            ),
        );
        fake
    }

    #[test]
    fn a_binary_that_hangs_in_the_qmp_cross_check_is_bounded_by_the_same_deadline() {
        if !Path::new(QEMU).exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let fake = wrapper(
            dir.path(),
            "qmp-hangs",
            &format!("echo $$ > {}; exec sleep 1000", pidfile.display()),
        );
        let deadline = Duration::from_secs(4);
        let t0 = Instant::now();
        let e = probe_in(&fake, deadline, dir.path()).unwrap_err();
        let took = t0.elapsed();
        assert!(
            matches!(&e, ProbeError::TimedOut { arg, .. } if *arg == QMP_STEP),
            "{e:?}"
        );
        assert!(took < deadline + Duration::from_millis(700), "{took:?}");
        assert!(
            processes_mentioning(&fake).is_empty(),
            "the probe QEMU is gone"
        );
        assert!(!running(&pidfile), "the probe QEMU is gone");
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["pid", "qmp-hangs"], "its scratch directory is gone");
    }

    #[test]
    fn scratch_directories_are_fresh_random_and_private() {
        let parent = tempfile::tempdir().unwrap();
        let a = ScratchDir::create(parent.path()).unwrap();
        let b = ScratchDir::create(parent.path()).unwrap();
        assert_ne!(a.path(), b.path());
        for d in [&a, &b] {
            assert_eq!(d.path().parent(), Some(parent.path()));
            let name = d.path().file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with("kvmd-probe-") && name.len() == 17,
                "{name}"
            );
            let meta = std::fs::symlink_metadata(d.path()).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        }
        let gone = a.path().to_path_buf();
        std::fs::write(gone.join("qmp.sock"), b"x").unwrap();
        drop(a);
        assert!(!gone.exists(), "removed with its contents");
    }

    /// The old, predictable directories (`kvmd-probe-PID-ThreadId(N)`) prepared by someone else
    /// are never entered: the probe's socket is in a fresh 0700 directory, which is gone after.
    #[test]
    fn a_prepared_directory_is_never_used() {
        if !Path::new(QEMU).exists() {
            return;
        }
        let parent = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        let seen = tools.path().join("seen");
        let prepared: Vec<PathBuf> = (1..=64)
            .map(|n| {
                let d = parent
                    .path()
                    .join(format!("kvmd-probe-{}-ThreadId({n})", std::process::id()));
                std::fs::create_dir(&d).unwrap();
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
                std::fs::write(d.join("marker"), b"planted").unwrap();
                d
            })
            .collect();
        let fake = wrapper(
            tools.path(),
            "recording-qemu",
            &format!(
                "for a in \"$@\"; do case \"$a\" in unix:*) s=\"${{a#unix:}}\"; d=$(dirname \"${{s%%,*}}\"); echo \"$d $(stat -c %a \"$d\")\" > {};; esac; done",
                seen.display()
            ),
        );
        let caps = probe_in(&fake, Duration::from_secs(60), parent.path()).unwrap();
        assert!(caps.default_machine.is_some());
        let seen = std::fs::read_to_string(&seen).unwrap();
        let (used, mode) = seen.trim().rsplit_once(' ').unwrap();
        let used = Path::new(used);
        assert_eq!(used.parent(), Some(parent.path()));
        assert!(!prepared.iter().any(|p| p == used), "{used:?}");
        assert_eq!(mode, "700");
        assert!(!used.exists(), "removed after the probe");
        for d in &prepared {
            let names: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["marker"], "{d:?} untouched");
            assert_eq!(std::fs::read(d.join("marker")).unwrap(), b"planted");
        }
    }
}
