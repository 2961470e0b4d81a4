//! The only module with `unsafe`: raw syscalls that `nix` and `std` do not wrap.
//!
//! Owns: pidfds (`pidfd_open`, `pidfd_send_signal`, `async_pidfd`), the `pre_exec` hooks that
//! put QEMU in its own session (and let it inherit tap fds), the tun ioctls (`TUNGETFEATURES`,
//! `TUNSETIFF`) and `SO_PEERGROUPS` (`peer_groups`), plus `pid_t`, the one place a std `u32` pid
//! becomes the kernel's type. Every block holds exactly one unsafe operation and carries its own
//! `// SAFETY:` comment.
//!
//! Invariant: no policy here; callers decide what to signal and when.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// `pid` (or a tid) as the kernel's `pid_t`; std and `/proc` hand them out as `u32`.
// The kernel never issues a pid above PID_MAX_LIMIT (2^22), so the cast cannot wrap.
#[allow(clippy::cast_possible_wrap)]
pub fn pid_t(pid: u32) -> libc::pid_t {
    pid as libc::pid_t
}

/// Open a pidfd for `pid`. It becomes readable when the process exits, whether or not it is
/// our child, which is how kvmd notices the exit of an adopted QEMU without polling.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd or -1; no memory
    // is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // A pidfd is an int; the syscall only returns it widened to a long.
    #[allow(clippy::cast_possible_truncation)]
    let fd = fd as RawFd;
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
/// terminal or process group (Ctrl-C, SIGHUP) never reach it and it outlives kvmd, and give it
/// umask 077 so the files it creates (sockets, logs) are private.
pub fn spawn_in_new_session(cmd: &mut Command) -> &mut Command {
    // SAFETY: the hook runs in the child between fork and exec and only calls setsid(2) and
    // umask(2), which are async-signal-safe and touch no memory shared with the parent.
    unsafe { cmd.pre_exec(enter_new_session) }
}

/// The child's side of the `pre_exec` hooks: a new session and umask 077. Only ever run in the
/// child between fork and exec.
fn enter_new_session() -> io::Result<()> {
    // SAFETY: setsid(2) takes no arguments, touches no memory and is async-signal-safe.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: umask(2) takes the mask by value, cannot fail and is async-signal-safe.
    unsafe { libc::umask(0o077) };
    Ok(())
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

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETFEATURES: libc::c_ulong = 0x8004_54cf;
pub const IFF_TAP: u16 = 0x0002;
pub const IFF_NO_PI: u16 = 0x1000;
pub const IFF_ONE_QUEUE: u16 = 0x2000;
pub const IFF_VNET_HDR: u16 = 0x4000;
pub const IFF_MULTI_QUEUE: u16 = 0x0100;

/// `struct ifreq` as the tun driver reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

/// The tun driver's feature flags (IFF_* it supports), from an open `/dev/net/tun`.
pub fn tun_features(tun: BorrowedFd<'_>) -> io::Result<u16> {
    let mut features: libc::c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one unsigned int to the pointer, which points to a live
    // local of that type.
    let rc = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            TUNGETFEATURES,
            &mut features as *mut libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The features are `ifr_flags` bits, a short; the ioctl only hands them over in an int.
    #[allow(clippy::cast_possible_truncation)]
    Ok(features as u16)
}

/// Attach an open `/dev/net/tun` to the tap `name` ("" = let the kernel pick `tapN`) with
/// `flags`; returns the interface's name.
pub fn tun_set_iff(tun: BorrowedFd<'_>, name: &str, flags: u16) -> io::Result<String> {
    if name.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface names have at most 15 bytes",
        ));
    }
    let mut req = IfReq {
        name: [0; 16],
        flags,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; IfReq has its layout (16-byte name,
    // then the flags short, padded to the kernel's 40 bytes) and lives for the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = req.name.iter().position(|b| *b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&req.name[..len]).into_owned())
}

/// Like [`spawn_in_new_session`], and also let the child inherit `fds` (taps, vhost): their
/// close-on-exec flag is cleared in the child only, so the numbers in QEMU's argv stay valid
/// and the parent's copies are unaffected.
pub fn spawn_in_new_session_with_fds(cmd: &mut Command, fds: Vec<i32>) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec and only calls setsid(2),
    // umask(2) and fcntl(2), all async-signal-safe; `fds` was allocated before fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            enter_new_session()?;
            for &fd in &fds {
                inherit_fd(fd)?;
            }
            Ok(())
        })
    }
}

/// Clear `fd`'s close-on-exec flag. Only ever run in the child between fork and exec, so the
/// parent's copy keeps its flag.
fn inherit_fd(fd: i32) -> io::Result<()> {
    // SAFETY: F_GETFD takes no third argument and only reads `fd`'s descriptor flags; fcntl(2)
    // is async-signal-safe and an invalid fd only makes it fail.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: F_SETFD takes the new flags by value and only changes this process's descriptor
    // `fd`; fcntl(2) is async-signal-safe and an invalid fd only makes it fail.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The supplementary groups of the peer of a connected Unix socket, as the kernel recorded
/// them when the peer connected (`SO_PEERGROUPS`). Unlike reading `/proc/PID/status` after
/// accepting, this cannot look at another process that reused the peer's pid.
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    const GID_SIZE: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    // The peer's group list cannot change after connect, so a retry with the size the kernel
    // asked for succeeds; the bound only guards against a kernel that keeps saying ERANGE.
    for _ in 0..8 {
        let mut len = libc::socklen_t::try_from(groups.len() * GID_SIZE)
            .map_err(|_| io::Error::other("SO_PEERGROUPS asked for a buffer over 4 GiB"))?;
        // SAFETY: the fd is open for the duration of the borrow; optval points to `groups`,
        // a live buffer of exactly `len` bytes, and optlen to a live socklen_t. The kernel
        // writes at most `len` bytes and stores the size it used (or needs) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / GID_SIZE);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
        // On ERANGE the kernel stored the size it needs in `len`.
        let needed = (len as usize).div_ceil(GID_SIZE);
        groups.resize(needed.max(groups.len() * 2), 0);
    }
    Err(io::Error::other(
        "SO_PEERGROUPS kept asking for a bigger buffer",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn peer_groups_of_a_socket_pair_are_our_own_supplementary_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut got = peer_groups(a.as_fd()).unwrap();
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        ours.sort_unstable();
        ours.dedup();
        got.dedup();
        assert_eq!(got, ours);
    }
}
