//! External programs with a deadline: the one way kvmd runs `ip`, `ovs-vsctl`, the operator's
//! hooks (`nic_script`) and QEMU's `--version`-style probes.
//!
//! A program runs in its own process group with stdin from /dev/null and stdout and stderr
//! through pipes, of which only the first [`OUTPUT_LIMIT`] bytes each are kept (the rest is
//! read and counted, so the program never blocks on a full pipe). kvmd waits for the direct
//! child's exit on a pidfd and reads both pipes in the same `poll` loop. Once the child has
//! exited, what is already in the pipes is drained for at most [`DRAIN_GRACE`] and the result
//! returned: EOF is never waited for, because a grandchild the program left in the background
//! may hold the pipes open forever (it keeps running; its later writes fail with EPIPE). At the
//! deadline the whole process group is killed with SIGKILL and the child reaped.
//!
//! Everything a program says is untrusted: error messages carry it through [`escape`], so a
//! newline or an ESC in its output cannot forge a log line.
//!
//! Invariant: blocking, call from a blocking thread; returns by the deadline plus
//! [`DRAIN_GRACE`]; never a shell (callers give argument lists); the only module that spawns
//! short-lived programs.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::model::text::escape_clipped;
use tracing::warn;

use crate::host::sys::{self, pid_t};

/// Bytes of stdout, and of stderr, kept per program by [`run`].
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// How long the pipes are still read after the program exited.
pub const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// Bytes of program output an error message carries.
const MESSAGE_BYTES: usize = 2048;

/// What a program printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    /// The first bytes of stdout (at most the limit).
    pub stdout: Vec<u8>,
    /// The first bytes of stderr (at most the limit).
    pub stderr: Vec<u8>,
    /// Bytes of stdout read past the limit and dropped.
    pub stdout_dropped: u64,
    /// Bytes of stderr read past the limit and dropped.
    pub stderr_dropped: u64,
}

impl Output {
    /// stderr then stdout, trimmed and escaped into one bounded line, for error messages.
    pub fn summary(&self) -> String {
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(&self.stderr).trim(),
            String::from_utf8_lossy(&self.stdout).trim()
        );
        escape_clipped(text.trim(), MESSAGE_BYTES)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("Cannot run {what}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} did not finish within {after:?} and was killed with its process group")]
    TimedOut { what: String, after: Duration },
    #[error("{what} failed with {status}: {output}")]
    Failed {
        what: String,
        status: ExitStatus,
        output: String,
    },
}

/// Run `cmd` (an argument list, never a shell) with [`OUTPUT_LIMIT`]; `what` names it in
/// errors and logs. Fails with [`ExecError::Failed`] on a non-zero exit.
pub fn run(cmd: Command, what: &str, deadline: Duration) -> Result<Output, ExecError> {
    run_with_limit(cmd, what, deadline, OUTPUT_LIMIT)
}

/// [`run`], keeping up to `limit` bytes of stdout and of stderr.
pub fn run_with_limit(
    mut cmd: Command,
    what: &str,
    deadline: Duration,
    limit: usize,
) -> Result<Output, ExecError> {
    let what = escape_clipped(what, 256);
    let end = Instant::now() + deadline;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().map_err(|source| ExecError::Spawn {
        what: what.clone(),
        source,
    })?;
    let mut group = Group {
        child,
        reaped: false,
    };
    let spawn_err = |source| ExecError::Spawn {
        what: what.clone(),
        source,
    };
    let mut out =
        Stream::new(group.child.stdout.take().map(OwnedFd::from), limit).map_err(spawn_err)?;
    let mut err =
        Stream::new(group.child.stderr.take().map(OwnedFd::from), limit).map_err(spawn_err)?;
    // Our unreaped child: its pid cannot have been reused yet.
    let pidfd = sys::pidfd_open(pid_t(group.child.id())).map_err(spawn_err)?;

    loop {
        let remaining = end.saturating_duration_since(Instant::now());
        let (exited, out_ready, err_ready) = wait_ready(Some(&pidfd), &out, &err, remaining);
        if out_ready {
            out.read_available();
        }
        if err_ready {
            err.read_available();
        }
        if exited {
            break;
        }
        if remaining.is_zero() {
            group.kill();
            warn!(program = %what, after = ?deadline, "killed an external program (and its process group) at its deadline");
            return Err(ExecError::TimedOut {
                what,
                after: deadline,
            });
        }
    }

    // Exited: take what is already in the pipes, but do not wait for EOF.
    let grace_end = Instant::now() + DRAIN_GRACE;
    while out.file.is_some() || err.file.is_some() {
        let remaining = grace_end.saturating_duration_since(Instant::now());
        let (_, out_ready, err_ready) = wait_ready(None, &out, &err, remaining);
        if out_ready {
            out.read_available();
        }
        if err_ready {
            err.read_available();
        }
        if remaining.is_zero() || !(out_ready || err_ready) {
            break;
        }
    }
    let status = group.reap().map_err(spawn_err)?;
    let output = Output {
        status,
        stdout: out.kept,
        stderr: err.kept,
        stdout_dropped: out.dropped,
        stderr_dropped: err.dropped,
    };
    if !status.success() {
        return Err(ExecError::Failed {
            what,
            status,
            output: output.summary(),
        });
    }
    Ok(output)
}

/// Poll the pidfd (if given) and the open pipes for up to `timeout`: (exited, stdout ready,
/// stderr ready).
fn wait_ready(
    pidfd: Option<&OwnedFd>,
    out: &Stream,
    err: &Stream,
    timeout: Duration,
) -> (bool, bool, bool) {
    let mut fds = Vec::with_capacity(3);
    let pid_slot = pidfd.map(|p| {
        fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        0
    });
    let mut slots = [None, None];
    for (slot, stream) in slots.iter_mut().zip([out, err]) {
        if let Some(f) = &stream.file {
            *slot = Some(fds.len());
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
    }
    // Round up so that a sub-millisecond remainder does not spin.
    let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(_) => {}
        // EINTR and the like: report nothing ready; the caller loops with the time left.
        Err(_) => return (false, false, false),
    }
    let ready = |i: Option<usize>| {
        i.and_then(|i| fds[i].revents())
            .is_some_and(|r| !r.is_empty())
    };
    (ready(pid_slot), ready(slots[0]), ready(slots[1]))
}

/// One captured pipe: non-blocking, the first `limit` bytes kept, the rest counted.
struct Stream {
    file: Option<File>,
    kept: Vec<u8>,
    dropped: u64,
    limit: usize,
}

impl Stream {
    fn new(fd: Option<OwnedFd>, limit: usize) -> io::Result<Self> {
        if let Some(fd) = &fd {
            let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
            let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
        }
        Ok(Self {
            file: fd.map(File::from),
            kept: Vec::new(),
            dropped: 0,
            limit,
        })
    }

    /// Read until the pipe is empty; close it at EOF or on an error.
    fn read_available(&mut self) {
        let Some(f) = &mut self.file else { return };
        let mut buf = [0u8; 16 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let keep = n.min(self.limit - self.kept.len());
                    self.kept.extend_from_slice(&buf[..keep]);
                    self.dropped += (n - keep) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.file = None;
    }
}

/// The child and its process group: killed and reaped on drop unless reaped already.
struct Group {
    child: Child,
    reaped: bool,
}

impl Group {
    /// SIGKILL the whole process group, then reap the child.
    fn kill(&mut self) {
        // Not reaped yet, so the group id (the child's pid) still names our group.
        let _ = killpg(Pid::from_raw(pid_t(self.child.id())), Signal::SIGKILL);
        let _ = self.reap();
    }

    fn reap(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait();
        self.reaped = true;
        status
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
        }
    }
}

/// Test helper: write an executable script at `path`. The file is written by `install`, not by
/// this process, so no fork of a concurrent test can hold it open for writing when it is run
/// (which would fail with ETXTBSY).
#[cfg(test)]
pub(crate) fn write_test_script(path: &std::path::Path, text: &str) {
    let src = path.with_extension("src");
    std::fs::write(&src, text).unwrap();
    let st = Command::new("install")
        .args(["-m", "0755"])
        .arg(&src)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(&src).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    /// Has `pid` exited (gone, or a zombie), waiting up to `within` on a pidfd?
    fn exits_within(pid: i32, within: Duration) -> bool {
        let Ok(fd) = sys::pidfd_open(pid) else {
            return true; // no such process
        };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::try_from(within).unwrap()).unwrap() == 1
    }

    fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_program_that_succeeds_returns_its_output() {
        let out = run(
            sh("echo hello; echo warn >&2"),
            "hello",
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"warn\n");
        assert_eq!((out.stdout_dropped, out.stderr_dropped), (0, 0));
    }

    #[test]
    fn a_program_that_fails_reports_its_status_and_output() {
        match run(
            sh("echo oops >&2; echo partial; exit 3"),
            "failing",
            Duration::from_secs(5),
        ) {
            Err(ExecError::Failed {
                what,
                status,
                output,
            }) => {
                assert_eq!(what, "failing");
                assert_eq!(status.code(), Some(3));
                assert_eq!(output, "oops partial");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_program_that_cannot_be_started_is_a_spawn_error() {
        let e = run(
            Command::new("/nonexistent/kvmd-hook"),
            "/nonexistent/kvmd-hook",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, ExecError::Spawn { .. }), "{e:?}");
    }

    #[test]
    fn a_program_that_sleeps_forever_is_killed_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = sh("echo $$ > \"$0\"; exec sleep 1000");
        cmd.arg(&pidfile);
        let deadline = Duration::from_millis(300);
        let t0 = Instant::now();
        let e = run(cmd, "sleeper", deadline).unwrap_err();
        let took = t0.elapsed();
        assert!(
            matches!(e, ExecError::TimedOut { after, .. } if after == deadline),
            "{e:?}"
        );
        assert!(took >= deadline, "{took:?}");
        assert!(took < deadline + Duration::from_millis(700), "{took:?}");
        // It was our child and has been reaped: the pid is gone.
        let pid = read_pid(&pidfile);
        assert!(crate::host::process::read_stat(u32::try_from(pid).unwrap()).is_err());
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = sh("sleep 1000 & echo $! > \"$0\"; wait");
        cmd.arg(&pidfile);
        let e = run(cmd, "hook with a child", Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, ExecError::TimedOut { .. }), "{e:?}");
        let grandchild = read_pid(&pidfile);
        assert!(
            exits_within(grandchild, Duration::from_secs(2)),
            "the grandchild got the group's SIGKILL"
        );
    }

    #[test]
    fn a_program_that_backgrounds_a_child_holding_stdout_returns_promptly() {
        let t0 = Instant::now();
        let out = run(
            sh("sleep 1000 & echo $!"),
            "daemonizing hook",
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let grandchild: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        // Not waited for, and not killed either: it is the program's business.
        assert!(!exits_within(grandchild, Duration::ZERO));
        let _ = nix::sys::signal::kill(Pid::from_raw(grandchild), Signal::SIGKILL);
        assert!(exits_within(grandchild, Duration::from_secs(2)));
    }

    #[test]
    fn output_beyond_the_bound_is_counted_not_kept() {
        let out = run(
            sh("head -c 200000 /dev/zero; head -c 70000 /dev/zero >&2"),
            "chatty",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.stdout.len(), OUTPUT_LIMIT);
        assert_eq!(out.stdout_dropped, 200_000 - OUTPUT_LIMIT as u64);
        assert_eq!(out.stderr.len(), OUTPUT_LIMIT);
        assert_eq!(out.stderr_dropped, 70_000 - OUTPUT_LIMIT as u64);
    }

    #[test]
    fn output_in_errors_cannot_forge_log_lines() {
        match run(
            sh("printf 'bad\\n\\033[31mINFO forged\\n'; exit 1"),
            "a\nb",
            Duration::from_secs(5),
        ) {
            Err(ExecError::Failed { what, output, .. }) => {
                assert_eq!(what, "a\\nb");
                assert!(
                    !output.contains('\n') && !output.contains('\x1b'),
                    "{output}"
                );
                assert!(output.contains("bad\\n\\x1b[31mINFO forged"), "{output}");
            }
            other => panic!("{other:?}"),
        }
    }
}
