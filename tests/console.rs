//! `kvmctl console` through real ptys on a booted guest: type a command and see its output,
//! a second session watching, a second writer refused, detach with Ctrl-], the terminal
//! restored, and `--command` (Ganeti's GetInstanceConsole).

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::termios::{self, LocalFlags};
use support::*;

/// kvmctl in a pty of its own; what it printed is collected.
struct Session {
    child: Child,
    master: std::fs::File,
    slave: OwnedFd,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Session {
    fn start(d: &Daemon, args: &[&str]) -> Session {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave_io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child = Command::new(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .stdin(slave_io(&pty.slave))
            .stdout(slave_io(&pty.slave))
            .stderr(slave_io(&pty.slave))
            .spawn()
            .unwrap();
        let master = std::fs::File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(k) = reader.read(&mut buf) {
                if k == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..k]);
            }
        });
        Session {
            child,
            master,
            slave: pty.slave,
            seen,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str) {
        wait_for(what, Duration::from_secs(20), || {
            self.text().contains(what).then_some(())
        });
    }

    fn type_bytes(&mut self, b: &[u8]) {
        self.master.write_all(b).unwrap();
    }
}

#[test]
fn console_attaches_a_terminal_watchers_watch_and_ctrl_bracket_detaches() {
    let d = Daemon::start(&instance_toml("c1", ""));
    d.start_vm("c1");
    d.wait_ready("c1", 1);
    let mut a = Session::start(&d, &["console", "c1"]);
    a.wait_for("Connected to c1's serial console");
    let before = termios::tcgetattr(a.slave.as_fd()).unwrap();
    assert!(
        !before.local_flags.contains(LocalFlags::ICANON),
        "raw mode while attached"
    );
    let b = Session::start(&d, &["console", "c1", "--read-only"]);
    b.wait_for("watching");
    // A computed answer, so it is the guest's output and not an echo.
    a.type_bytes(b"echo console-$((40+2))-ok\r");
    a.wait_for("console-42-ok");
    b.wait_for("console-42-ok");
    // A second writer is refused; the watcher's keys go nowhere.
    let out = d.kvmctl(&["--json", "console", "c1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "busy", "{v}");
    let mut b = b;
    b.type_bytes(b"echo from-the-$((1+1))-watcher\r");
    a.type_bytes(b"echo marker-$((6*7))\r");
    a.wait_for("marker-42");
    assert!(!a.text().contains("from-the-2-watcher"), "{}", a.text());
    // Ctrl-] detaches; the terminal is as it was before.
    a.type_bytes(&[0x1d]);
    let status = a.child.wait().unwrap();
    assert!(status.success());
    a.wait_for("Detached from c1");
    let after = termios::tcgetattr(a.slave.as_fd()).unwrap();
    assert!(
        after.local_flags.contains(LocalFlags::ICANON)
            && after.local_flags.contains(LocalFlags::ECHO),
        "the terminal is back in canonical mode with echo"
    );
    b.type_bytes(&[0x1d]);
    assert!(b.child.wait().unwrap().success());
    // With nobody attached, kvmd let go of the serial socket.
    assert_eq!(d.guest_run("c1", "echo free-again"), "free-again");
    // Where the console is, for a cluster engine.
    let out = d.kvmctl(&["console", "c1", "--command"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("serial console; on this node run: kvmctl --socket"),
        "{said}"
    );
    assert!(said.contains("console c1"), "{said}");
    // A stopped VM has no console.
    d.call(kvmd::api::ApiRequest::Stop {
        name: name("c1"),
        timeout_s: None,
        force: true,
        wait: true,
    })
    .unwrap();
    let out = d.kvmctl(&["--json", "console", "c1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "not_running", "{v}");
}

#[test]
fn a_console_whose_qemu_goes_away_ends_and_restores_the_terminal() {
    let d = Daemon::start(&instance_toml("c2", ""));
    d.start_vm("c2");
    let mut a = Session::start(&d, &["console", "c2"]);
    a.wait_for("Connected to c2");
    d.call(kvmd::api::ApiRequest::Stop {
        name: name("c2"),
        timeout_s: None,
        force: true,
        wait: true,
    })
    .unwrap();
    let status = a.child.wait().unwrap();
    assert!(status.success());
    a.wait_for("c2's console closed");
    let after = termios::tcgetattr(a.slave.as_fd()).unwrap();
    assert!(after.local_flags.contains(LocalFlags::ICANON));
    a.type_bytes(b"");
}
