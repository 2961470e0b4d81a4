//! What a QEMU binary offers, read from the binary itself and cached per binary.
//!
//! `--version` gives the version, `-machine help` the default machine (resolved once so the
//! runtime file pins a concrete machine type, as Ganeti does). Results are cached by path, size
//! and mtime, so a start does not re-probe and an upgraded binary is probed again.
//!
//! Invariant: the parsers are pure functions over recorded output; only [`probe`] runs QEMU,
//! and it blocks, so callers run it on a blocking thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use regex::Regex;

/// Facts about one QEMU binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuCaps {
    pub version: (u32, u32, u32),
    /// The whole first line of `--version`, e.g. `QEMU emulator version 7.2.22 (Debian ...)`.
    pub version_text: String,
    /// Machine type marked `(default)` in `-machine help`, if any.
    pub default_machine: Option<String>,
}

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
}

/// Parse the version from the first line of `--version`/`--help`: the first `N.N[.N]`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\b(\d+)\.(\d+)(?:\.(\d+))?\b").expect("regex"));
    let c = re.captures(text.lines().next()?)?;
    Some((
        c[1].parse().ok()?,
        c[2].parse().ok()?,
        c.get(3).map_or(Some(0), |m| m.as_str().parse().ok())?,
    ))
}

/// The machine marked `(default)` in `-machine help` output.
pub fn parse_default_machine(text: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(?m)^(\S+)\s.*\(default\)").expect("regex"));
    re.captures(text).map(|c| c[1].to_string())
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
    let version_out = run(path, "--version")?;
    let first = version_out.lines().next().unwrap_or("").to_string();
    let version = parse_version(&version_out).ok_or_else(|| ProbeError::NoVersion {
        path: path.into(),
        line: first.clone(),
    })?;
    let machines = run(path, "-machine").unwrap_or_default();
    let caps = Arc::new(QemuCaps {
        version,
        version_text: first,
        default_machine: parse_default_machine(&machines),
    });
    cache()
        .lock()
        .expect("probe cache")
        .insert(key, caps.clone());
    Ok(caps)
}

fn run(path: &Path, arg: &'static str) -> Result<String, ProbeError> {
    let mut cmd = Command::new(path);
    match arg {
        "-machine" => cmd.args(["-machine", "help"]),
        _ => cmd.arg(arg),
    };
    let out = cmd
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_several_qemus() {
        assert_eq!(parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022"), Some((7, 2, 22)));
        assert_eq!(
            parse_version("QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)"),
            Some((8, 2, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2"),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 1.0 (qemu-kvm-1.0 Debian 1.0+dfsg-2)"),
            Some((1, 0, 0))
        );
        assert_eq!(parse_version("no digits here"), None);
    }

    #[test]
    fn default_machine_of_qemu_7_2() {
        let text = "Supported machines are:\nmicrovm              microvm (i386)\npc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\npc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)\nq35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n";
        assert_eq!(
            parse_default_machine(text).as_deref(),
            Some("pc-i440fx-7.2")
        );
        assert_eq!(
            parse_default_machine("Supported machines are:\nnone  empty machine\n"),
            None
        );
    }
}
