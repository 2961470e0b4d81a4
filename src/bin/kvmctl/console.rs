//! `kvmctl console NAME`: the terminal attached to a VM's serial console through kvmd's
//! control socket (the `console` request; no socat). The terminal is put in raw mode, so
//! every key goes to the guest, Ctrl-C included; Ctrl-] detaches. The terminal is restored
//! on every way out: detach, the console closing, an error, a panic, SIGTERM or SIGHUP.
//!
//! Invariant: raw mode only when stdin is a terminal; the guard restores what it found.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvmd::api::{ApiReply, ApiRequest};
use kvmd::control::client::{connect_raw, ClientError};
use kvmd::control::protocol;
use kvmd::model::name::InstanceName;
use nix::sys::termios::{self, SetArg, Termios};

use crate::Failure;

/// The detach key: Ctrl-] (as telnet and virsh console).
const ESCAPE: u8 = 0x1d;

/// Raw mode on stdin while alive; the saved settings back on drop.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Wait up to `ms` for stdin to have bytes.
fn stdin_ready(ms: u16) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// Attach; exit status 0 on detach or when the console closed, 1 when kvmd refused.
pub fn run(socket: &Path, name: InstanceName, write: bool) -> Result<u8, Failure> {
    let mut stream = connect_raw(socket)?;
    let req = ApiRequest::Console {
        name: name.clone(),
        write,
    };
    stream
        .write_all(&protocol::encode_request(1, &req))
        .map_err(|e| Failure::Client(ClientError::Io(e)))?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| Failure::Client(ClientError::Io(e)))?,
    );
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| Failure::Client(ClientError::Io(e)))?;
    let reply = protocol::decode_reply(line.as_bytes())
        .map_err(|e| Failure::Client(ClientError::Protocol(e)))?;
    match reply.result {
        Ok(ApiReply::Console { .. }) => {}
        Ok(other) => {
            return Err(Failure::Client(ClientError::NotSubscribed(
                protocol::reply_kind(&other),
            )))
        }
        Err(e) => return Err(Failure::Client(ClientError::Refused(e))),
    }
    // What came with the reply is console output already.
    let early = reader.buffer().to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let raw = RawTerminal::enter();
    let how = if write {
        "detach: Ctrl-]"
    } else {
        "watching; detach: Ctrl-]"
    };
    eprint!(
        "Connected to {}'s serial console ({how})\r\n",
        crate::render::e(name.as_str())
    );
    let closed = Arc::new(AtomicBool::new(false));
    let out = {
        let closed = closed.clone();
        let mut from = stream
            .try_clone()
            .map_err(|e| Failure::Client(ClientError::Io(e)))?;
        std::thread::spawn(move || {
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(&early).and_then(|()| stdout.flush());
            let mut buf = [0u8; 4096];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if stdout
                            .write_all(&buf[..k])
                            .and_then(|()| stdout.flush())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            closed.store(true, Ordering::SeqCst);
        })
    };
    let mut buf = [0u8; 8192];
    let mut detached = false;
    while !closed.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        if !stdin_ready(200) {
            continue;
        }
        // The fd itself, not Rust's buffered stdin: what poll saw is what is read.
        let k = match nix::unistd::read(libc::STDIN_FILENO, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        let (typed, escape) = match buf[..k].iter().position(|b| *b == ESCAPE) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..k], false),
        };
        if !typed.is_empty() && stream.write_all(typed).is_err() {
            break;
        }
        if escape {
            detached = true;
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = out.join();
    drop(raw);
    std::thread::sleep(Duration::from_millis(10));
    if detached {
        eprintln!("\r\nDetached from {}", crate::render::e(name.as_str()));
    } else {
        eprintln!("\r\n{}'s console closed", crate::render::e(name.as_str()));
    }
    Ok(0)
}
