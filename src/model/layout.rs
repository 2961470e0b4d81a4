//! Where one instance's runtime state lives: the run dir layout, as paths.
//!
//! Invariant: pure path computation from a validated [`InstanceName`]; nothing here touches
//! the file system.

use std::path::{Path, PathBuf};

use crate::model::name::InstanceName;

/// Paths of one instance's runtime state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn new(run_dir: &Path, name: &InstanceName) -> Self {
        Self {
            dir: run_dir.join(name.as_str()),
        }
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// HMP monitor for operators (`socat - UNIX-CONNECT:...`); kvmd itself uses QMP.
    pub fn monitor(&self) -> PathBuf {
        self.dir.join("monitor.sock")
    }
    /// Empty directory QEMU chroots into (`use_chroot`).
    pub fn chroot(&self) -> PathBuf {
        self.dir.join("chroot")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    pub fn qga(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn runtime(&self) -> PathBuf {
        self.dir.join("runtime.json")
    }
    pub fn shutdown_marker(&self) -> PathBuf {
        self.dir.join("shutdown")
    }
    /// Names the engine that owns this instance (`ganeti`) when another engine defines it
    /// per start; absent for the config file's instances.
    pub fn managed_by(&self) -> PathBuf {
        self.dir.join("managed-by")
    }
    pub fn exit_record(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// Present (holding where the VM went) while this node's QEMU is a source whose migration
    /// completed: whatever becomes of that QEMU, the VM is elsewhere.
    pub fn migrated_marker(&self) -> PathBuf {
        self.dir.join("migrated")
    }
    /// Present while this node holds the VM by an incoming migration not finalized yet.
    pub fn incoming_marker(&self) -> PathBuf {
        self.dir.join("incoming")
    }
    /// The long job in flight (`store::job_file`).
    pub fn job(&self) -> PathBuf {
        self.dir.join("job.json")
    }
    /// `serial.log` rotated once: the last bytes before the latest rotation.
    pub fn serial_log_old(&self) -> PathBuf {
        self.dir.join("serial.log.1")
    }
    /// Left by kvmd versions before persisted jobs while stopping an instance; read at
    /// recovery only.
    pub fn stopping_marker(&self) -> PathBuf {
        self.dir.join("stopping")
    }
}
