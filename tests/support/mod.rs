//! Shared helpers for the integration tests: build/find the test guest, run a real kvmd in a
//! temporary directory, talk to it through the real socket, read and type on a VM's serial
//! console, and wait for conditions with deadlines. Everything a test starts is stopped when
//! its `Daemon` is dropped, even when the test fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kvmd::api::{ApiError, ApiReply, ApiRequest, Event, StreamItem, VmInfo};
use kvmd::control::client::{Client, EventStream};
use kvmd::model::name::InstanceName;

pub mod fake_qmp;
pub mod images;

/// The test guest (kernel + initramfs), built once per machine and cached.
pub fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(
            std::env::var("KVMD_GUEST_DIR").unwrap_or_else(|_| "/var/lib/kvmd/guest".into()),
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/build-guest.sh");
        let st = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .status()
            .expect("run build-guest.sh");
        assert!(st.success(), "building the test guest failed");
        dir
    })
}

/// Write an executable script at `path` with `install`, so that no fork of this
/// (multi-threaded) test process holds it open for writing when kvmd runs it (ETXTBSY).
pub fn write_script(path: &Path, text: &str) {
    let src = path.with_extension("src");
    std::fs::write(&src, text).unwrap();
    let st = Command::new("install")
        .args(["-m", "0755"])
        .arg(&src)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(src).unwrap();
}

pub fn name(s: &str) -> InstanceName {
    InstanceName::parse(s).unwrap()
}

/// A pid as std and the API give it (`u32`), for nix's signal calls.
pub fn nix_pid(pid: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(kvmd::host::sys::pid_t(pid))
}

/// Poll `f` every 20 ms until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Node settings every test daemon gets: TCG, the test guest, fast stops.
pub fn node_toml(dir: &Path, extra_node: &str) -> String {
    let g = guest_dir();
    format!(
        r#"[node]
socket = "{dir}/kvmd.sock"
run_dir = "{dir}/run"
accelerator = "tcg"
stop_timeout = 30
acpi_resend_interval = 2
qmp_timeout_ms = 2000
{extra_node}
[node.hvparams]
kernel_path = "{g}/vmlinux"
initrd_path = "{g}/initramfs.gz"
root_path = "/dev/ram0"
kernel_args = "quiet panic=-1"
machine_version = "q35"
"#,
        dir = dir.display(),
        g = g.display()
    )
}

/// An instance definition in TOML: 192 MiB, 1 vCPU unless `extra` sets `vcpus`.
pub fn instance_toml(name: &str, extra: &str) -> String {
    let vcpus = if extra.contains("vcpus =") {
        ""
    } else {
        "vcpus = 1\n"
    };
    format!("\n[instance.{name}]\nmemory = 192\n{vcpus}{extra}\n")
}

/// A kvmd running in a temporary directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub config: PathBuf,
    /// The network namespace kvmd (and so its QEMUs) runs in, if not the host's.
    pub netns: Option<String>,
}

impl Daemon {
    /// Write the config (node settings + `instances`) and start kvmd.
    pub fn start(instances: &str) -> Daemon {
        Self::start_with("", instances)
    }

    /// Like [`Daemon::start`], with extra `[node]` settings (`extra_node`). The directory is
    /// opened to other users (0755), so tests can reach the socket as them.
    pub fn start_with(extra_node: &str, instances: &str) -> Daemon {
        let mut d = Self::prepare(extra_node, instances);
        d.spawn();
        d
    }

    /// The directory and config of a daemon, not started yet ([`Daemon::spawn`] or
    /// [`Daemon::spawn_with_env`] starts it).
    pub fn prepare(extra_node: &str, instances: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("kvmd-test-")
            .tempdir_in("/tmp")
            .unwrap();
        if !extra_node.is_empty() {
            std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        let config = dir.path().join("kvmd.toml");
        std::fs::write(&config, node_toml(dir.path(), extra_node) + instances).unwrap();
        Daemon {
            dir,
            child: None,
            config,
            netns: None,
        }
    }

    /// Like [`Daemon::start_with`], with kvmd in the network namespace `netns`.
    pub fn start_in(netns: &Netns, extra_node: &str, instances: &str) -> Daemon {
        let mut d = Self::prepare(extra_node, instances);
        d.netns = Some(netns.0.clone());
        d.spawn();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("kvmd.sock")
    }

    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("run").join(name)
    }

    /// Start (or restart) the kvmd process and wait until it answers.
    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    /// Like [`Daemon::spawn`], with extra environment (e.g. `KVMD_FAULTS`).
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kvmd.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_kvmd")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_kvmd")),
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .arg("--log")
            .arg("kvmd=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let sock = self.socket();
        wait_for("kvmd to answer", Duration::from_secs(10), || {
            Client::connect(&sock)
                .ok()
                .and_then(|mut c| c.call(&ApiRequest::Ping).ok())
                .map(|_| ())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// kill -9 the daemon (VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix_pid(self.pid()), sig).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kvmd.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        let c = Client::connect(&self.socket()).unwrap();
        c.set_timeout(Some(Duration::from_secs(120)));
        c
    }

    /// An event stream on a new connection: kept events after `since`, then with `follow`
    /// new ones.
    pub fn subscribe(&self, since: Option<u64>, follow: bool) -> EventStream {
        let c = Client::connect(&self.socket()).unwrap();
        c.set_timeout(Some(Duration::from_secs(30)));
        c.subscribe(since, follow)
            .expect("kvmd accepts the subscription")
    }

    /// Run kvmctl (as root) against this daemon's socket.
    pub fn kvmctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn call(&self, req: ApiRequest) -> Result<ApiReply, ApiError> {
        self.client().call(&req).expect("kvmd answers").result
    }

    pub fn info(&self, n: &str) -> VmInfo {
        self.try_info(n)
            .unwrap_or_else(|| panic!("no instance {n}"))
    }

    /// `info`, or None when kvmd does not know the instance (yet).
    pub fn try_info(&self, n: &str) -> Option<VmInfo> {
        match self.call(ApiRequest::Info {
            name: Some(name(n)),
        }) {
            Ok(ApiReply::Info(mut v)) => Some(v.remove(0)),
            Err(e) if e.code == kvmd::api::ErrorCode::NotFound => None,
            other => panic!("info {n}: {other:?}"),
        }
    }

    pub fn start_vm(&self, n: &str) -> VmInfo {
        match self.call(ApiRequest::Start {
            name: name(n),
            paused: false,
            wait: true,
            memory: None,
        }) {
            Ok(ApiReply::Started(i)) => i,
            other => panic!("start {n}: {other:?}\n{}", self.log()),
        }
    }

    /// Wait until `info` shows the given state.
    pub fn wait_state(&self, n: &str, state: &str, timeout: Duration) -> VmInfo {
        wait_for(&format!("{n} to be {state}"), timeout, || {
            self.try_info(n).filter(|i| i.state.as_str() == state)
        })
    }

    /// Wait until the guest printed GUEST-READY `count` times in its serial log.
    pub fn wait_ready(&self, n: &str, count: usize) {
        let log = self.run_dir(n).join("serial.log");
        wait_for(
            &format!("{n} GUEST-READY x{count}"),
            Duration::from_secs(60),
            || {
                let text = std::fs::read(&log).unwrap_or_default();
                (String::from_utf8_lossy(&text)
                    .matches("GUEST-READY")
                    .count()
                    >= count)
                    .then_some(())
            },
        );
    }

    pub fn serial_log(&self, n: &str) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.run_dir(n).join("serial.log")).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Type a line on the VM's serial console.
    pub fn type_line(&self, n: &str, line: &str) {
        let mut s = UnixStream::connect(self.run_dir(n).join("serial.sock")).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Run a command in the guest with `gx` and return its output (read from the socket, which
    /// unlike the log never duplicates bytes).
    pub fn guest_run(&self, n: &str, cmd: &str) -> String {
        guest_run_on(&self.run_dir(n).join("serial.sock"), cmd)
    }
}

/// Wait until the shell of the guest on the serial socket `serial` prompts (pressing Enter
/// every half second: output from before a connection is not kept).
pub fn wait_shell(serial: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut s = loop {
        match UnixStream::connect(serial) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no serial socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while !String::from_utf8_lossy(&out).contains("guest# ") {
        assert!(
            Instant::now() < deadline,
            "no shell prompt on {}",
            serial.display()
        );
        let _ = s.write_all(b"\n");
        if let Ok(k) = s.read(&mut buf) {
            out.extend_from_slice(&buf[..k]);
        }
    }
}

/// Run a command with `gx` in the guest whose serial console is the socket `serial`.
pub fn guest_run_on(serial: &Path, cmd: &str) -> String {
    let mut s = UnixStream::connect(serial).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(format!("gx sh -c '{cmd}'\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(b) = text.find("GX-BEGIN") {
            if let Some(e) = text[b..].find("GX-END") {
                return text[b + 8..b + e].trim().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no GX-END from {cmd:?}; got {text:?}"
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("serial closed"),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(_) => {}
        }
    }
}

/// The next stream item, waiting at most `timeout`.
pub fn next_item(stream: &mut EventStream, timeout: Duration) -> StreamItem {
    stream.set_timeout(Some(timeout));
    match stream.next() {
        Some(Ok(item)) => item,
        Some(Err(e)) => panic!("no stream item within {timeout:?}: {e}"),
        None => panic!("the stream had already ended"),
    }
}

/// Skip stream items until an event matching `pred` arrives (at most `timeout` in all); a
/// stream that ends first fails the test.
pub fn next_event_matching(
    stream: &mut EventStream,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {timeout:?} waiting for {what}"
        );
        stream.set_timeout(Some(left));
        match stream.next() {
            Some(Ok(StreamItem::Event(e))) if pred(&e) => return e,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("waiting for {what}: {e}"),
            None => panic!("the stream ended before {what}"),
        }
    }
}

/// Is a process alive (and not a zombie)?
pub fn alive(pid: u32) -> bool {
    kvmd::host::process::read_stat(pid).is_ok_and(|s| s.state != 'Z')
}

/// QEMU processes whose command line mentions `dir`.
pub fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd.starts_with(b"/usr/bin/qemu")
                && cmd.windows(needle.len()).any(|w| w == needle)
                && alive(*pid)
        })
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in qemus_under(self.dir.path()) {
            let _ = nix::sys::signal::kill(nix_pid(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!("---- kvmd log ----\n{}", self.log());
        }
    }
}

/// A documentation /24 (RFC 5737) that this host does not route already, as its first three
/// octets: test addresses go there, never to a network the host uses (a machine may well sit
/// on 192.0.2.0/24 itself).
pub fn free_test_net() -> &'static str {
    static NET: OnceLock<&'static str> = OnceLock::new();
    NET.get_or_init(|| {
        let routes = String::from_utf8(
            Command::new("ip")
                .args(["-4", "route", "show", "table", "all"])
                .output()
                .expect("ip route")
                .stdout,
        )
        .unwrap();
        ["203.0.113", "198.51.100", "192.0.2"]
            .into_iter()
            .find(|net| !routes.contains(&format!("{net}.")))
            .expect("a documentation /24 this host does not use")
    })
}

/// A Linux bridge with an address, removed on drop.
pub struct Bridge(pub String);

impl Bridge {
    pub fn new(tag: &str, cidr: &str) -> Bridge {
        let name = format!("kvt{tag}{}", std::process::id() % 10000);
        let ip = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        ip(&["link", "add", "name", &name, "type", "bridge"]);
        ip(&["addr", "add", cidr, "dev", &name]);
        ip(&["link", "set", &name, "up"]);
        Bridge(name)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// A network namespace with its loopback up, deleted on drop.
pub struct Netns(pub String);

fn ip(args: &[&str]) {
    assert!(
        Command::new("ip").args(args).status().unwrap().success(),
        "ip {args:?}"
    )
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("kvmdt-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Two test hosts: namespaces joined by a veth pair, `NET.1/24` in `a` (on `a_link`) and
/// `NET.2/24` in `b`, with NET a documentation /24 this host does not use. `tag` (at most 4
/// bytes are used) tells apart the pairs of tests running at once.
pub struct TwoHosts {
    pub a: Netns,
    pub b: Netns,
    pub a_link: String,
    pub a_ip: String,
    pub b_ip: String,
}

impl TwoHosts {
    pub fn new(tag: &str) -> TwoHosts {
        let (a, b) = (
            Netns::new(&format!("{tag}a")),
            Netns::new(&format!("{tag}b")),
        );
        let id = std::process::id() % 100_000;
        // Named by tag too: tests run in parallel in one process. At most 15 bytes.
        let (va, vb) = (format!("kv{tag:.4}a{id}"), format!("kv{tag:.4}b{id}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &a.0]);
        ip(&["link", "set", &vb, "netns", &b.0]);
        let net = free_test_net();
        let (a_ip, b_ip) = (format!("{net}.1"), format!("{net}.2"));
        ip(&["-n", &a.0, "addr", "add", &format!("{a_ip}/24"), "dev", &va]);
        ip(&["-n", &b.0, "addr", "add", &format!("{b_ip}/24"), "dev", &vb]);
        ip(&["-n", &a.0, "link", "set", &va, "up"]);
        ip(&["-n", &b.0, "link", "set", &vb, "up"]);
        TwoHosts {
            a,
            b,
            a_link: va,
            a_ip,
            b_ip,
        }
    }

    /// Cut (or mend) the link, as a pulled cable does.
    pub fn link(&self, up: bool) {
        ip(&[
            "-n",
            &self.a.0,
            "link",
            "set",
            &self.a_link,
            if up { "up" } else { "down" },
        ]);
    }
}

/// A built argv with its QMP chardev on `path` instead of the fd a real start passes (for
/// tests that run kvmd's command lines themselves).
pub fn with_qmp_path(argv: &[String], path: &Path) -> Vec<String> {
    argv.iter()
        .map(|a| {
            if a.starts_with("socket,id=qmp0,fd=") {
                format!("socket,id=qmp0,path={},server=on,wait=off", path.display())
            } else {
                a.clone()
            }
        })
        .collect()
}

/// A QEMU child killed and reaped when dropped (tests that run QEMU themselves).
pub struct Qemu(pub Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
