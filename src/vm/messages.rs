//! What the supervisor and a VM say to each other, as plain types: requests ([`VmAsk`]),
//! answers ([`VmAnswer`]), notices ([`VmNotice`]), and the daemon-wide job ids ([`JobIds`]).
//!
//! Invariant: no actix here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{JobInfo, VmInfo};
use crate::model::job::JobId;

/// What an operator asks of one VM (the supervisor's view of the core's requests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmAsk {
    Start {
        paused: bool,
        /// Start-up memory in MiB (the balloon's size when the guest boots).
        memory: Option<u64>,
    },
    /// Start with this definition (an instance another engine owns), not the config's.
    StartDefined {
        spec: Box<crate::model::spec::InstanceSpec>,
        paused: bool,
        memory: Option<u64>,
    },
    Stop {
        timeout: Option<Duration>,
        force: bool,
    },
    Reboot {
        timeout: Option<Duration>,
    },
    Reset,
    Pause,
    Resume,
    Cleanup,
    Cancel {
        id: JobId,
    },
    Migrate {
        uri: String,
        live: bool,
    },
    Accept {
        spec: Box<crate::model::spec::InstanceSpec>,
        incoming: crate::vm::core::IncomingPlan,
    },
    FinalizeSrc {
        success: bool,
    },
    FinalizeDst {
        success: bool,
    },
    MigrateCancel,
    Pin {
        mask: String,
    },
    Balloon {
        mib: u64,
    },
    HotplugAdd {
        device: crate::model::hotplug::HotDevice,
    },
    HotplugDel {
        id: String,
    },
    HotplugMod {
        id: String,
        link_up: bool,
    },
}

/// How a VM answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmReply {
    /// The job that served the request: ended (or just begun, for a caller that does not
    /// wait).
    Job(JobInfo),
    /// A stop with nothing to stop.
    AlreadyStopped,
    /// A stop that cancelled a start (rolled back).
    StartCancelled,
    /// A cancel was accepted.
    Cancelling(JobInfo),
    /// Nothing was left to do.
    Unchanged,
}

/// A reply and the VM's state right after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmAnswer {
    pub reply: VmReply,
    pub info: VmInfo,
}

/// What a VM tells its supervisor.
#[derive(Clone, Debug)]
pub enum VmNotice {
    /// What `info` shows changed.
    Updated(VmInfo),
    /// A job began, moved on or ended.
    Job(JobInfo),
    /// The VM left the config, has no QEMU, no job and no files: it may be forgotten.
    Retirable(crate::model::name::InstanceName),
}

/// Job ids for the whole daemon: small numbers that keep growing across kvmd restarts
/// (a reservation in `run_dir/jobs.seq`, written once per [`JOB_ID_BLOCK`] ids).
#[derive(Clone, Debug)]
pub struct JobIds(Arc<Mutex<IdState>>);

/// How many ids one write of the reservation covers.
pub const JOB_ID_BLOCK: u64 = 1000;

#[derive(Debug)]
struct IdState {
    next: u64,
    reserved: u64,
    file: Option<PathBuf>,
}

impl JobIds {
    /// Ids persisted in `path`: they continue above the last reservation.
    pub fn persisted(path: &Path) -> Self {
        let next = crate::store::seq_file::first_after(path);
        JobIds(Arc::new(Mutex::new(IdState {
            next,
            reserved: next.saturating_sub(1),
            file: Some(path.to_path_buf()),
        })))
    }

    /// Record the last id handed out exactly (at a clean exit), so the next kvmd continues
    /// right after it instead of after the whole reservation.
    pub fn checkpoint(&self) -> std::io::Result<()> {
        let mut s = self.0.lock().expect("job ids");
        let last = s.next.saturating_sub(1);
        if let Some(path) = &s.file {
            crate::store::seq_file::write(path, last)?;
        }
        s.reserved = last;
        Ok(())
    }

    /// The id the next job will get (not taken yet: see [`JobIds::take`]).
    pub fn peek(&self) -> JobId {
        JobId(self.0.lock().expect("job ids").next)
    }

    /// Take `id` if it is the next one (a job began with it).
    pub fn take(&self, id: JobId) {
        let mut s = self.0.lock().expect("job ids");
        if s.next != id.0 {
            return;
        }
        s.next += 1;
        if id.0 > s.reserved {
            s.reserved = id.0 + JOB_ID_BLOCK - 1;
            if let Some(path) = &s.file {
                if let Err(e) = crate::store::seq_file::write(path, s.reserved) {
                    tracing::warn!(error = %e, "cannot write the job id reservation");
                }
            }
        }
    }
}
