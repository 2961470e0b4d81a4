//! QEMU as an OS process: spawning it detached from kvmd, proving a pid is still our QEMU,
//! waiting for its exit without polling, signalling it, and reading its CPU time.
//!
//! Invariant: knows nothing of QMP or VM states. Blocking work (fork/exec, file reads) is done
//! by callers on a blocking thread; [`wait_exit`] is the only async function and it never
//! blocks.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::host::sys::{self, pid_t};
use crate::model::exit::ExitStatus;

/// The fields of `/proc/PID/stat` kvmd uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z`, ...
    pub state: char,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks: with the pid, the process's identity.
    pub start_ticks: u64,
}

/// Parse `/proc/PID/stat`. The command name may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 (index 0 here), utime 14, stime 15, starttime 22.
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        cpu_ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

pub fn read_stat(pid: u32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))
}

/// Clock ticks per second (for CPU time and start times).
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(100)
}

/// Why a pid is not (or no longer) the QEMU we started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Alive, same start time, and its command line carries our pidfile path.
    Ours,
    /// No such process, or a zombie waiting to be reaped.
    Gone,
    /// A different process now holds the pid.
    Other(String),
}

/// Check that `pid` is still the QEMU started with `pidfile` at `start_ticks` (pid reuse guard).
pub fn identify(pid: u32, start_ticks: u64, pidfile: &Path) -> Identity {
    let stat = match read_stat(pid) {
        Ok(s) => s,
        Err(_) => return Identity::Gone,
    };
    if stat.state == 'Z' || stat.state == 'X' {
        return Identity::Gone;
    }
    if stat.start_ticks != start_ticks {
        return Identity::Other(format!(
            "pid {pid} started at tick {}, ours at {start_ticks}",
            stat.start_ticks
        ));
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let want = pidfile.as_os_str().as_encoded_bytes();
    if args.windows(2).any(|w| w[0] == b"-pidfile" && w[1] == want) {
        Identity::Ours
    } else {
        Identity::Other(format!(
            "pid {pid} does not run with -pidfile {}",
            pidfile.display()
        ))
    }
}

/// The process running with `-pidfile PIDFILE`, found by scanning `/proc`: for a start cut
/// short by `kill -9` of kvmd before anything named its QEMU (no pidfile written yet, the undo
/// step not yet persisted). Only the pid; [`identify`] still decides whether it is ours.
pub fn find_by_pidfile_arg(pidfile: &Path) -> Option<u32> {
    let want = pidfile.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2).any(|w| w[0] == b"-pidfile" && w[1] == want)
        })
}

/// Start QEMU in its own session with stdin from /dev/null and stdout+stderr appended to `log`,
/// letting it inherit `keep_fds` (taps). Returns the pid. The child is not reaped by anyone but
/// [`wait_exit`].
pub fn spawn_detached(argv: &[String], log: &Path, keep_fds: &[i32]) -> io::Result<u32> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    if keep_fds.is_empty() {
        sys::spawn_in_new_session(&mut cmd);
    } else {
        sys::spawn_in_new_session_with_fds(&mut cmd, keep_fds.to_vec());
    }
    let child = cmd.spawn()?;
    // Dropping std's Child neither kills nor reaps; `wait_exit` reaps it.
    Ok(child.id())
}

/// A handle on a running QEMU: pid plus pidfd.
#[derive(Debug)]
pub struct QemuProcess {
    pub pid: u32,
    pidfd: OwnedFd,
    /// True when kvmd spawned it in this run, so it is ours to reap and its status is readable.
    pub own_child: bool,
}

impl QemuProcess {
    /// Open a pidfd on `pid`. Fault point `pidfd_open`: fails with `EMFILE` (test builds).
    pub fn open(pid: u32, own_child: bool) -> io::Result<Self> {
        if crate::host::faults::fail("pidfd_open") {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(Self {
            pid,
            pidfd: sys::pidfd_open(pid_t(pid))?,
            own_child,
        })
    }

    /// Send a signal; a process that already exited is not an error.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> io::Result<()> {
        match sys::pidfd_send_signal(self.pidfd.as_fd(), sig as i32) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    pub fn try_clone_pidfd(&self) -> io::Result<OwnedFd> {
        self.pidfd.try_clone()
    }
}

/// Wait until the process exits (pidfd readable), then reap it when it is our child.
pub async fn wait_exit(pidfd: OwnedFd, pid: u32, own_child: bool) -> io::Result<ExitStatus> {
    let fd = sys::async_pidfd(pidfd)?;
    let _ready = fd.readable().await?;
    if !own_child {
        return Ok(ExitStatus::default());
    }
    // The pidfd is readable once the child is a zombie, so WNOHANG finds it at once.
    loop {
        match waitpid(Pid::from_raw(pid_t(pid)), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Ok(ExitStatus {
                    code: Some(code),
                    signal: None,
                })
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(ExitStatus {
                    code: None,
                    signal: Some(sig as i32),
                })
            }
            Ok(WaitStatus::StillAlive) => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::ECHILD) => return Ok(ExitStatus::default()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The last `n` lines of a (log) file, reading at most its last 16 KiB.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_names_with_spaces_and_parens() {
        let line = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 3 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.cpu_ticks, 175);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn identity_of_this_test_process_is_not_a_qemu() {
        let me = std::process::id();
        let st = read_stat(me).unwrap();
        assert!(matches!(
            identify(me, st.start_ticks, Path::new("/nonexistent")),
            Identity::Other(_)
        ));
        assert!(matches!(
            identify(me, st.start_ticks + 1, Path::new("/x")),
            Identity::Other(_)
        ));
        assert_eq!(identify(u32::MAX - 1, 0, Path::new("/x")), Identity::Gone);
    }

    #[test]
    fn exit_status_reads_well() {
        assert_eq!(
            ExitStatus {
                code: Some(1),
                signal: None
            }
            .to_string(),
            "exit status 1"
        );
        assert_eq!(
            ExitStatus {
                code: None,
                signal: Some(9)
            }
            .to_string(),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
