//! Migration between two test hosts: network namespaces joined by a veth pair, one kvmd in
//! each, the migration stream over that link; `kvmctl migrate` through the target's control
//! socket and through `ssh://` to an sshd in the target's namespace; and a cut link.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Daemon, TwoHosts};

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `web` booted on host a, nothing on host b.
fn hosts(tag: &str, src_node: &str) -> (TwoHosts, Daemon, Daemon) {
    let h = TwoHosts::new(tag);
    let src = Daemon::start_in(&h.a, src_node, &support::instance_toml("web", ""));
    let dst = Daemon::start_in(&h.b, "", "");
    src.start_vm("web");
    src.wait_ready("web", 1);
    (h, src, dst)
}

/// The established TCP connections of `ns` to `peer` (the migration stream).
fn connections_to(ns: &support::Netns, peer: &str) -> usize {
    let out = ns
        .command("ss")
        .args(["-Htn", "state", "established", "dst", peer])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_vm_moves_between_two_hosts_over_their_link() {
    let (h, src, dst) = hosts("mv", "");
    src.guest_run("web", "echo across-the-veth > /tmp/token");
    let listen = format!("{}:8102", h.b_ip);
    // kvmctl runs on host a, as an operator there would.
    let out =
        h.a.command(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--socket")
            .arg(src.socket())
            .args(["--json", "migrate", "web", "--listen", &listen, "--to"])
            .arg(dst.socket())
            .output()
            .unwrap();
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["listen"], listen.as_str());
    assert_eq!(dst.guest_run("web", "cat /tmp/token"), "across-the-veth");
    src.wait_state("web", "moved", Duration::from_secs(10));
    // The stream went over the veth: the target's QEMU listened on host b's address.
    let argv = std::fs::read_to_string(dst.run_dir("web").join("runtime.json")).unwrap();
    assert!(argv.contains("-incoming"), "{argv}");
}

#[test]
fn a_cut_link_stalls_the_migration_which_is_given_up_with_the_source_running() {
    let (h, src, dst) = hosts(
        "cut",
        "migration_stall_ms = 2000\nmigration_abort_after_stall_ms = 2000",
    );
    let child =
        h.a.command(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--socket")
            .arg(src.socket())
            .args(["--json", "migrate", "web", "--listen"])
            .arg(format!("{}:8102", h.b_ip))
            .arg("--to")
            .arg(dst.socket())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    support::wait_for("the migration stream", Duration::from_secs(30), || {
        (connections_to(&h.a, &h.b_ip) > 0).then_some(())
    });
    h.link(false);
    let out = child.wait_with_output().unwrap();
    let v = json(&out);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["runs_on"], "source", "{v}");
    eprintln!("{v}");
    let i = src.wait_state("web", "running", Duration::from_secs(10));
    assert!(i.pid.is_some());
    assert_eq!(src.guest_run("web", "echo alive"), "alive");
    support::wait_for("the target to forget web", Duration::from_secs(10), || {
        dst.try_info("web").is_none().then_some(())
    });
    assert!(support::qemus_under(dst.dir.path()).is_empty());
    // Given up for the stall, which was announced first (the job's phase, in the events).
    assert!(v["reason"].as_str().unwrap().contains("no progress"), "{v}");
    let mut events = src.subscribe(Some(0), false);
    let stalled = std::iter::from_fn(|| events.next())
        .filter_map(Result::ok)
        .any(|item| {
            matches!(item, kvmd::api::StreamItem::Event(e)
                if matches!(&e.kind, kvmd::api::EventKind::JobProgress(j) if j.phase == "stalled"))
        });
    assert!(stalled, "no job-progress event with phase stalled");
}

/// An sshd in a namespace, with its own host key and one authorized client key; killed on
/// drop.
struct Sshd {
    child: std::process::Child,
    pub keyfile: std::path::PathBuf,
    pub known_hosts: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Sshd {
    fn start(ns: &support::Netns, ip: &str) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("kvmd-sshd-")
            .tempdir_in("/tmp")
            .unwrap();
        let p = |n: &str| dir.path().join(n);
        let keygen = |file: &std::path::Path| {
            let st = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(file)
                .status()
                .unwrap();
            assert!(st.success());
        };
        keygen(&p("host_key"));
        keygen(&p("id"));
        std::fs::copy(p("id.pub"), p("authorized_keys")).unwrap();
        let host_pub = std::fs::read_to_string(p("host_key.pub")).unwrap();
        std::fs::write(p("known_hosts"), format!("{ip} {host_pub}")).unwrap();
        std::fs::write(
            p("sshd_config"),
            format!(
                "ListenAddress {ip}\nPort 22\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 AllowStreamLocalForwarding yes\n",
                hk = p("host_key").display(),
                pid = p("sshd.pid").display(),
                ak = p("authorized_keys").display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = std::fs::File::create(p("sshd.log")).unwrap();
        let child = ns
            .command("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(p("sshd_config"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        support::wait_for("sshd to listen", Duration::from_secs(10), || {
            let out = ns
                .command("ss")
                .args(["-Htln", "sport", "= :22"])
                .output()
                .unwrap();
            (!out.stdout.is_empty()).then_some(())
        });
        Sshd {
            child,
            keyfile: p("id"),
            known_hosts: p("known_hosts"),
            _dir: dir,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kvmctl_migrate_reaches_the_target_daemon_over_ssh() {
    let (h, src, dst) = hosts("ssh", "");
    let sshd = Sshd::start(&h.b, &h.b_ip);
    src.guest_run("web", "echo over-ssh > /tmp/token");
    let to = format!(
        "ssh://root@{}{}?keyfile={}&known_hosts={}",
        h.b_ip,
        dst.socket().display(),
        sshd.keyfile.display(),
        sshd.known_hosts.display()
    );
    let out =
        h.a.command(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--socket")
            .arg(src.socket())
            .args(["--json", "migrate", "web", "--listen"])
            .arg(format!("{}:8102", h.b_ip))
            .args(["--to", &to])
            .output()
            .unwrap();
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(dst.guest_run("web", "cat /tmp/token"), "over-ssh");
    src.wait_state("web", "moved", Duration::from_secs(10));
    // An ssh:// target needs the target's address for the stream.
    let out = src.kvmctl(&["--json", "migrate", "web", "--to", "ssh://root@192.0.2.1"]);
    let v = json(&out);
    assert_eq!(v["error"]["fields"][0]["field"], "listen", "{v}");
}
