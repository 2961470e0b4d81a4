//! The node itself, as Ganeti's `GetNodeInfo`, `Verify` and `PowercycleNode` see it: memory
//! and CPU topology from `/proc` and `/sys`, the checks a node must pass to run VMs, and the
//! power cycle.
//!
//! Invariant: blocking (files, the probe); callers run these off the actors. Nothing here
//! changes the node except [`powercycle`].

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::model::hvparams::{key, HvParams};
use crate::model::spec::{Accel, NodeConfig};

/// Memory and CPUs of this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub memory_total_mib: u64,
    /// `MemAvailable`.
    pub memory_free_mib: u64,
    pub cpus: u32,
    pub sockets: u32,
    pub cores_per_socket: u32,
    pub threads_per_core: u32,
    pub numa_nodes: u32,
    pub cpu_model: String,
}

/// A `/proc/meminfo` value in MiB.
fn meminfo(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The online CPUs' topology: `(cpu, package, core)` from `/sys/devices/system/cpu`.
fn topology(sys: &Path) -> Vec<(u32, String, String)> {
    let Ok(rd) = std::fs::read_dir(sys) else {
        return Vec::new();
    };
    let mut cpus: Vec<(u32, String, String)> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            let n: u32 = e.file_name().to_str()?.strip_prefix("cpu")?.parse().ok()?;
            let t = e.path().join("topology");
            let pkg = read(t.join("physical_package_id")).trim().to_string();
            let core = read(t.join("core_id")).trim().to_string();
            (!pkg.is_empty()).then_some((n, pkg, core))
        })
        .collect();
    cpus.sort();
    cpus
}

/// What `/proc` and `/sys` say about this node.
pub fn facts() -> NodeFacts {
    let mem = read("/proc/meminfo");
    let topo = topology(Path::new("/sys/devices/system/cpu"));
    let cpus = crate::host::validate::host_cpus();
    let sockets: BTreeSet<&str> = topo.iter().map(|(_, p, _)| p.as_str()).collect();
    let cores: BTreeSet<(&str, &str)> = topo
        .iter()
        .map(|(_, p, c)| (p.as_str(), c.as_str()))
        .collect();
    let sockets_n = u32::try_from(sockets.len()).unwrap_or(1).max(1);
    let cores_n = u32::try_from(cores.len()).unwrap_or(1).max(1);
    let numa = std::fs::read_dir("/sys/devices/system/node")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("node"))
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0);
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    NodeFacts {
        memory_total_mib: meminfo(&mem, "MemTotal"),
        memory_free_mib: meminfo(&mem, "MemAvailable"),
        cpus,
        sockets: sockets_n,
        cores_per_socket: (cores_n / sockets_n).max(1),
        threads_per_core: (cpus / cores_n).max(1),
        numa_nodes: u32::try_from(numa).unwrap_or(0).max(1),
        cpu_model: model,
    }
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// VMs cannot run (or run unsafely) until it is fixed.
    Error,
    /// Something to look at.
    Warning,
    /// What was checked and found fine.
    Ok,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Ok => "ok",
        }
    }
}

/// One result of `verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// What was checked (a stable short name).
    pub check: String,
    pub detail: String,
}

fn finding(severity: Severity, check: &str, detail: impl Into<String>) -> Finding {
    Finding {
        severity,
        check: check.into(),
        detail: detail.into(),
    }
}

/// What `verify` needs to know of the instances: name → pid of its QEMU (if any).
pub type Owned = BTreeMap<String, Option<u32>>;

/// The QEMU processes whose command line names this run dir, by pid.
fn qemus_in(run_dir: &Path) -> Vec<(u32, String)> {
    let needle = run_dir.as_os_str().as_encoded_bytes().to_vec();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_qemu = argv.first().is_some_and(|a| {
                a.rsplit('/')
                    .next()
                    .unwrap_or("")
                    .starts_with("qemu-system")
            });
            let pidfile = argv
                .windows(2)
                .find(|w| w[0] == "-pidfile")
                .map(|w| w[1].clone())?;
            (is_qemu && pidfile.as_bytes().starts_with(&needle)).then_some((pid, pidfile))
        })
        .collect()
}

/// The checks a node must pass to run VMs, every one reported (`Ok` findings say what was
/// checked). `owned` is every instance kvmd knows and the pid of its QEMU.
pub fn verify(node: &NodeConfig, config_path: &Path, owned: &Owned) -> Vec<Finding> {
    let mut f = Vec::new();
    // The QEMU binary, probed.
    match crate::host::probe::probe(&node.qemu, node.probe_timeout) {
        Ok(c) => f.push(finding(
            Severity::Ok,
            "qemu",
            format!("{}: {}", node.qemu.display(), c.version_text),
        )),
        Err(e) => f.push(finding(
            Severity::Error,
            "qemu",
            format!("{} cannot be probed: {e}", node.qemu.display()),
        )),
    }
    // The accelerator.
    match (node.accelerator, Path::new("/dev/kvm").exists()) {
        (Accel::Kvm, false) => f.push(finding(
            Severity::Error,
            "kvm",
            "accelerator = kvm, but /dev/kvm does not exist",
        )),
        (Accel::Kvm, true) => f.push(finding(Severity::Ok, "kvm", "/dev/kvm exists")),
        (Accel::Tcg, _) => f.push(finding(
            Severity::Warning,
            "kvm",
            "accelerator = tcg: guests are emulated (slow); production nodes use kvm",
        )),
    }
    // The run dir: ours, not writable by others.
    match std::fs::metadata(&node.run_dir) {
        Ok(m) if m.permissions().mode() & 0o022 != 0 => f.push(finding(
            Severity::Error,
            "run_dir",
            format!(
                "{} is writable by group or others (mode {:o})",
                node.run_dir.display(),
                m.permissions().mode() & 0o7777
            ),
        )),
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => f.push(finding(
            Severity::Error,
            "run_dir",
            format!(
                "{} is owned by uid {}, not kvmd's",
                node.run_dir.display(),
                m.uid()
            ),
        )),
        Ok(_) => f.push(finding(
            Severity::Ok,
            "run_dir",
            format!(
                "{} is kvmd's, not writable by others",
                node.run_dir.display()
            ),
        )),
        Err(e) => f.push(finding(
            Severity::Error,
            "run_dir",
            format!("{}: {e}", node.run_dir.display()),
        )),
    }
    // The control socket: not world-accessible.
    match std::fs::metadata(&node.socket) {
        Ok(m) if m.permissions().mode() & 0o006 != 0 => f.push(finding(
            Severity::Error,
            "socket",
            format!(
                "{} is accessible by others (mode {:o})",
                node.socket.display(),
                m.permissions().mode() & 0o777
            ),
        )),
        Ok(m) => f.push(finding(
            Severity::Ok,
            "socket",
            format!(
                "{} mode {:o}",
                node.socket.display(),
                m.permissions().mode() & 0o777
            ),
        )),
        Err(e) => f.push(finding(
            Severity::Error,
            "socket",
            format!("{}: {e}", node.socket.display()),
        )),
    }
    // The config file: not writable by others.
    if let Ok(m) = std::fs::metadata(config_path) {
        if m.permissions().mode() & 0o002 != 0 {
            f.push(finding(
                Severity::Error,
                "config",
                format!("{} is writable by others", config_path.display()),
            ));
        }
    }
    // The node's default kernel and initrd.
    let hv: HvParams = node.hvparams_with(&Default::default());
    for (k, name) in [
        (key::KERNEL_PATH, "kernel_path"),
        (key::INITRD_PATH, "initrd_path"),
    ] {
        let p = hv.str(k);
        if !p.is_empty() && !Path::new(p).is_file() {
            f.push(finding(
                Severity::Error,
                name,
                format!("node.hvparams.{name} {p:?} is not a file"),
            ));
        }
    }
    // The NIC hook.
    if let Some(s) = &node.nic_script {
        match std::fs::metadata(s) {
            Ok(m) if m.permissions().mode() & 0o111 != 0 => {}
            _ => f.push(finding(
                Severity::Error,
                "nic_script",
                format!("{} is not an executable file", s.display()),
            )),
        }
    }
    // Run-dir entries no defined instance owns.
    if let Ok(rd) = std::fs::read_dir(&node.run_dir) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) && !owned.contains_key(&name) {
                f.push(finding(
                    Severity::Warning,
                    "stale",
                    format!(
                        "{} belongs to no instance kvmd knows",
                        crate::model::text::escape(&e.path().display().to_string())
                    ),
                ));
            }
        }
    }
    // QEMU processes of this run dir that no instance owns.
    let ours: BTreeSet<u32> = owned.values().flatten().copied().collect();
    for (pid, pidfile) in qemus_in(&node.run_dir) {
        if !ours.contains(&pid) {
            f.push(finding(
                Severity::Warning,
                "orphan",
                format!(
                    "QEMU pid {pid} (-pidfile {}) is owned by no instance",
                    crate::model::text::escape(&pidfile)
                ),
            ));
        }
    }
    f.sort_by_key(|x| x.severity);
    f
}

/// What [`powercycle`] does, in order.
pub const POWERCYCLE_STEPS: [&str; 2] = [
    "write \"b\" to /proc/sysrq-trigger (immediate reboot, no sync, no unmount: as Ganeti does)",
    "if that fails: reboot -n -f",
];

/// Power-cycle this node now, as Ganeti's `LinuxPowercycle` does. Never returns on success.
pub fn powercycle() -> std::io::Result<()> {
    use std::io::Write;
    let sysrq = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sysrq-trigger")
        .and_then(|mut f| f.write_all(b"b"));
    if sysrq.is_ok() {
        return Ok(());
    }
    let mut cmd = std::process::Command::new("reboot");
    cmd.args(["-n", "-f"]);
    crate::host::exec::run(cmd, "reboot -n -f", std::time::Duration::from_secs(30))
        .map(drop)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_values_are_read_in_mib() {
        let text =
            "MemTotal:       24631160 kB\nMemFree:        1000 kB\nMemAvailable:   20480 kB\n";
        assert_eq!(meminfo(text, "MemTotal"), 24053);
        assert_eq!(meminfo(text, "MemAvailable"), 20);
        assert_eq!(meminfo(text, "Nope"), 0);
    }

    #[test]
    fn this_nodes_facts_are_plausible() {
        let f = facts();
        assert!(f.memory_total_mib > 0 && f.memory_free_mib <= f.memory_total_mib);
        assert_eq!(f.cpus, crate::host::validate::host_cpus());
        assert_eq!(
            f.sockets * f.cores_per_socket * f.threads_per_core,
            f.cpus,
            "{f:?}"
        );
    }
}
