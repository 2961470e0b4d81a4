//! The only module with `unsafe`: raw syscalls that `nix` and `std` do not wrap.
//!
//! Owns: pidfds (`pidfd_open`, `pidfd_send_signal`) and the `pre_exec` hook that puts QEMU in
//! its own session. Every block carries a `// SAFETY:` comment.
//!
//! Invariant: no policy here; callers decide what to signal and when.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Open a pidfd for `pid`. It becomes readable when the process exits, whether or not it is
/// our child, which is how kvmd notices the exit of an adopted QEMU without polling.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd or -1; no memory
    // is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Send `sig` through a pidfd: unlike kill(2) this cannot hit a new process that reused the pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: the fd is a valid, open pidfd for the duration of the borrow; the info pointer is
    // NULL, which the syscall documents as "like kill(2)".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make the spawned process the leader of a new session, so that signals aimed at kvmd's
/// terminal or process group (Ctrl-C, SIGHUP) never reach it and it outlives kvmd.
pub fn spawn_in_new_session(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec and only calls setsid(2),
    // which is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Register a pidfd with tokio's reactor so its exit can be awaited.
pub fn async_pidfd(pidfd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // refers to the same pidfd until the AsyncFd is dropped; OwnedFd::as_raw_fd always returns
    // that same descriptor.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}
