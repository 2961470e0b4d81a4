//! The job table: every running job and the most recent ended ones, for `jobs`, `job` and
//! `cancel`. Fed by the VMs' job notices.
//!
//! Invariant: plain data; bounded (ended jobs beyond the bound are forgotten, oldest first).

use std::collections::{BTreeMap, VecDeque};

use crate::api::{JobInfo, JobState};
use crate::model::job::JobId;
use crate::model::name::InstanceName;

pub(super) struct JobTable {
    jobs: BTreeMap<JobId, JobInfo>,
    ended: VecDeque<JobId>,
    keep: usize,
}

impl JobTable {
    pub fn new(keep: usize) -> Self {
        Self {
            jobs: BTreeMap::new(),
            ended: VecDeque::new(),
            keep,
        }
    }

    pub fn update(&mut self, job: JobInfo) {
        let id = job.id;
        let ended = job.state != JobState::Running;
        let was_ended = self
            .jobs
            .insert(id, job)
            .is_some_and(|old| old.state != JobState::Running);
        if ended && !was_ended {
            self.ended.push_back(id);
            while self.ended.len() > self.keep {
                if let Some(old) = self.ended.pop_front() {
                    self.jobs.remove(&old);
                }
            }
        }
    }

    pub fn get(&self, id: JobId) -> Option<JobInfo> {
        self.jobs.get(&id).cloned()
    }

    /// Jobs oldest first, of one instance or all.
    pub fn list(&self, name: Option<&InstanceName>) -> Vec<JobInfo> {
        self.jobs
            .values()
            .filter(|j| name.is_none_or(|n| j.instance == *n))
            .cloned()
            .collect()
    }

    /// An instance's running job, else its latest one.
    pub fn of(&self, name: &InstanceName) -> Option<JobInfo> {
        let mine = || self.jobs.values().rev().filter(|j| j.instance == *name);
        mine()
            .find(|j| j.state == JobState::Running)
            .or_else(|| mine().next())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::Operation;

    fn job(id: u64, name: &str, state: JobState) -> JobInfo {
        JobInfo {
            id: JobId(id),
            instance: InstanceName::parse(name).unwrap(),
            kind: Operation::Stop,
            state,
            phase: "acpi".into(),
            progress: None,
            started_at_ms: id,
            deadline_ms: None,
            ended_at_ms: None,
            resumed: false,
            outcome: None,
        }
    }

    #[test]
    fn ended_jobs_are_kept_up_to_the_bound_and_running_ones_always() {
        let mut t = JobTable::new(2);
        t.update(job(1, "a", JobState::Running));
        for id in 2..6 {
            t.update(job(id, "b", JobState::Succeeded));
        }
        let ids: Vec<_> = t.list(None).iter().map(|j| j.id.0).collect();
        assert_eq!(ids, [1, 4, 5]);
        t.update(job(1, "a", JobState::Failed));
        assert_eq!(t.list(None).len(), 2);
    }

    #[test]
    fn an_instance_shows_its_running_job_else_its_latest() {
        let mut t = JobTable::new(10);
        t.update(job(1, "a", JobState::Succeeded));
        t.update(job(2, "a", JobState::Running));
        t.update(job(3, "a", JobState::Succeeded));
        let a = InstanceName::parse("a").unwrap();
        assert_eq!(t.of(&a).unwrap().id, JobId(2));
        t.update(job(2, "a", JobState::Cancelled));
        assert_eq!(t.of(&a).unwrap().id, JobId(3));
    }
}
