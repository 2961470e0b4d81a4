//! `job.json`: the long job in flight for one instance (a start, stop or reboot), written at
//! each phase change and removed when the job ends, so that a kvmd killed at any point finds
//! it again and finishes it (a stop keeps its deadline) or rolls it back (a start runs its
//! undo steps).
//!
//! Invariant: this module owns the file's format only; the VM core decides what to do with it.

use std::io;

use serde::{Deserialize, Serialize};

use crate::model::job::{JobId, Operation, PersistedJob, Undo};
use crate::model::layout::RunPaths;
use crate::store::files::{read_json, remove_file, write_json};

#[derive(Serialize, Deserialize)]
struct JobFile {
    version: u32,
    id: u64,
    kind: String,
    phase: String,
    started_at_ms: u64,
    deadline_ms: Option<u64>,
    phase_deadline_ms: Option<u64>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    restarting: bool,
    #[serde(default)]
    undo: Vec<UndoStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
enum UndoStep {
    DropRunFiles,
    NicDown { index: usize, tap: String },
    ReleaseUid,
    KillQemu { pid: u32, start_ticks: u64 },
}

impl From<&Undo> for UndoStep {
    fn from(u: &Undo) -> Self {
        match u {
            Undo::DropRunFiles => UndoStep::DropRunFiles,
            Undo::NicDown { index, tap } => UndoStep::NicDown {
                index: *index,
                tap: tap.clone(),
            },
            Undo::ReleaseUid => UndoStep::ReleaseUid,
            Undo::KillQemu { pid, start_ticks } => UndoStep::KillQemu {
                pid: *pid,
                start_ticks: *start_ticks,
            },
        }
    }
}

impl From<UndoStep> for Undo {
    fn from(u: UndoStep) -> Self {
        match u {
            UndoStep::DropRunFiles => Undo::DropRunFiles,
            UndoStep::NicDown { index, tap } => Undo::NicDown { index, tap },
            UndoStep::ReleaseUid => Undo::ReleaseUid,
            UndoStep::KillQemu { pid, start_ticks } => Undo::KillQemu { pid, start_ticks },
        }
    }
}

/// Write the job file (atomically, 0600).
pub fn write(paths: &RunPaths, job: &PersistedJob) -> io::Result<()> {
    crate::store::files::create_dir(paths)?;
    let f = JobFile {
        version: 1,
        id: job.id.0,
        kind: job.kind.as_str().into(),
        phase: job.phase.clone(),
        started_at_ms: job.started_at_ms,
        deadline_ms: job.deadline_ms,
        phase_deadline_ms: job.phase_deadline_ms,
        paused: job.paused,
        force: job.force,
        timeout_ms: job.timeout_ms,
        restarting: job.restarting,
        undo: job.undo.iter().map(UndoStep::from).collect(),
        target: job.target.clone(),
    };
    write_json(&paths.job(), &f)
}

/// Read the job file: `Ok(None)` when there is none; an error when it is unreadable.
pub fn read(paths: &RunPaths) -> io::Result<Option<PersistedJob>> {
    let Some(f) = read_json::<JobFile>(&paths.job())? else {
        return Ok(None);
    };
    let kind = Operation::parse(&f.kind).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: unknown job kind {:?}", paths.job().display(), f.kind),
        )
    })?;
    Ok(Some(PersistedJob {
        id: JobId(f.id),
        kind,
        phase: f.phase,
        started_at_ms: f.started_at_ms,
        deadline_ms: f.deadline_ms,
        phase_deadline_ms: f.phase_deadline_ms,
        paused: f.paused,
        force: f.force,
        timeout_ms: f.timeout_ms,
        restarting: f.restarting,
        undo: f.undo.into_iter().map(Undo::from).collect(),
        target: f.target,
    }))
}

/// Remove the job file; remove the instance directory too if that leaves it empty.
pub fn clear(paths: &RunPaths) -> io::Result<()> {
    remove_file(&paths.job())?;
    match std::fs::remove_dir(&paths.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Not empty (run files, history): that is the usual case.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::name::InstanceName;

    #[test]
    fn a_job_survives_the_round_trip_with_its_undo_steps() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path(), &InstanceName::parse("a").unwrap());
        let job = PersistedJob {
            id: JobId(99),
            kind: Operation::Reboot,
            phase: "sigterm".into(),
            started_at_ms: 1,
            deadline_ms: Some(2),
            phase_deadline_ms: Some(3),
            paused: false,
            force: true,
            timeout_ms: 20_000,
            restarting: true,
            target: Some("tcp:192.0.2.7:8102".into()),
            undo: vec![
                Undo::DropRunFiles,
                Undo::NicDown {
                    index: 1,
                    tap: "tap3".into(),
                },
                Undo::ReleaseUid,
                Undo::KillQemu {
                    pid: 5,
                    start_ticks: 6,
                },
            ],
        };
        write(&paths, &job).unwrap();
        assert_eq!(read(&paths).unwrap(), Some(job));
        clear(&paths).unwrap();
        assert_eq!(read(&paths).unwrap(), None);
        assert!(!paths.dir.exists(), "an empty directory goes with the job");
    }
}
