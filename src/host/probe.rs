//! Probing a QEMU binary: runs `--version`, `--help`, `-machine help`, `-device help`, and a
//! `-machine none` QEMU asked over QMP (`query-version`, `query-machines`, `qom-list-types`),
//! then parses the outputs with `qemu::caps`. Results are cached by (path, size, mtime): a start
//! never re-probes, an upgraded binary is probed again.
//!
//! Invariant: blocking; callers run it on a blocking thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::qemu::caps::{Machine, QemuCaps};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("Cannot run {path}")]
    Run {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} {arg} exited with {status}: {output}")]
    Failed {
        path: PathBuf,
        arg: &'static str,
        status: String,
        output: String,
    },
    #[error("Cannot find a version in the first line of {path} --version: {line:?}")]
    NoVersion { path: PathBuf, line: String },
    #[error("{path} says version {help:?} in --version but {qmp:?} over QMP")]
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

/// Probe `path` (blocking), or return the cached result for this exact binary.
pub fn probe(path: &Path) -> Result<Arc<QemuCaps>, ProbeError> {
    let meta = std::fs::metadata(path).map_err(|source| ProbeError::Run {
        path: path.into(),
        source,
    })?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(c) = cache().lock().expect("probe cache").get(&key) {
        return Ok(c.clone());
    }
    let version = run(path, &["--version"])?;
    let help = run(path, &["--help"])?;
    let machines = run(path, &["-machine", "help"])?;
    let devices = run(path, &["-device", "help"]).unwrap_or_default();
    let first = version.lines().next().unwrap_or("").to_string();
    let mut caps =
        QemuCaps::from_outputs(&version, &help, &machines, &devices).ok_or_else(|| {
            ProbeError::NoVersion {
                path: path.into(),
                line: first,
            }
        })?;
    if let Some(q) = qmp_facts(path) {
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

fn run(path: &Path, args: &[&str]) -> Result<String, ProbeError> {
    let arg: &'static str = match args[0] {
        "--version" => "--version",
        "--help" => "--help",
        "-machine" => "-machine help",
        _ => "-device help",
    };
    let out = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ProbeError::Run {
            path: path.into(),
            source,
        })?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(ProbeError::Failed {
            path: path.into(),
            arg,
            status: out.status.to_string(),
            output: text,
        });
    }
    Ok(text)
}

/// What QMP says about the binary: `query-version`, `query-machines`.
struct QmpFacts {
    version: (u32, u32, u32),
    default_machine: Option<String>,
    /// (machine, alias)
    aliases: Vec<(String, String)>,
    /// Concrete device types (`qom-list-types implements=device abstract=false`).
    devices: Vec<String>,
}

/// Start `QEMU -machine none` with a QMP socket and ask it. `None` if anything fails (the help
/// output alone is then used).
fn qmp_facts(path: &Path) -> Option<QmpFacts> {
    let dir = std::env::temp_dir().join(format!(
        "kvmd-probe-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).ok()?;
    let sock = dir.join("qmp.sock");
    let mut child = Command::new(path)
        .args([
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
        .spawn()
        .ok()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let t = Duration::from_secs(5);
    let facts = rt.block_on(async {
        let (q, _ev) = crate::qmp::Qmp::connect(&sock, Instant::now() + t, t, || true)
            .await
            .ok()?;
        let v = q.execute("query-version", None, t).await.ok()?;
        let num = |k: &str| v.get("qemu")?.get(k)?.as_u64().map(|n| n as u32);
        let version = (num("major")?, num("minor")?, num("micro")?);
        let machines = q.execute("query-machines", None, t).await.ok()?;
        let list = machines.as_array()?;
        let default_machine = list
            .iter()
            .find(|m| m.get("is-default").and_then(|d| d.as_bool()) == Some(true))
            .and_then(|m| m.get("name")?.as_str().map(String::from));
        let aliases = list
            .iter()
            .filter_map(|m| {
                Some((
                    m.get("name")?.as_str()?.to_string(),
                    m.get("alias")?.as_str()?.to_string(),
                ))
            })
            .collect();
        let types = q
            .execute(
                "qom-list-types",
                Some(serde_json::json!({"implements": "device", "abstract": false})),
                t,
            )
            .await
            .ok();
        let devices = types
            .as_ref()
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.get("name")?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let _ = q.execute("quit", None, t).await;
        Some(QmpFacts {
            version,
            default_machine,
            aliases,
            devices,
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real binary: `--version` and QMP agree, the QMP device list is merged in, and a
    /// second probe of the same binary comes from the cache.
    #[test]
    fn probing_the_installed_qemu() {
        let path = Path::new("/usr/bin/qemu-system-x86_64");
        if !path.exists() {
            return;
        }
        let t0 = std::time::Instant::now();
        let a = probe(path).unwrap();
        let first = t0.elapsed();
        assert!(a.has_device("virtio-net-pci") && a.has_device("pcie-root-port"));
        assert!(a.default_machine.is_some());
        let t1 = std::time::Instant::now();
        let b = probe(path).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
        assert!(t1.elapsed() < first);
    }
}
