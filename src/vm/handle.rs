//! How the rest of kvmd talks to a VM actor without importing actix: [`VmHandle`], with named
//! async methods.

use actix::prelude::*;

use crate::api::{ApiError, ErrorCode, JobInfo};
use crate::model::spec::InstanceSpec;

use super::actor::{Ask, GetJob, GetMigration, Manage, VmActor};
use super::messages::{VmAnswer, VmAsk};

fn gone(e: MailboxError) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("VM actor unavailable ({e}); it is being rebuilt, retry"),
    )
}

/// A cheap, cloneable handle on one VM actor.
#[derive(Clone, Debug)]
pub struct VmHandle {
    pub(super) addr: Addr<VmActor>,
}

impl VmHandle {
    /// Ask; with `wait`, the answer comes when the job has ended.
    pub async fn ask(&self, ask: VmAsk, wait: bool) -> Result<VmAnswer, ApiError> {
        self.addr.send(Ask { ask, wait }).await.map_err(gone)?
    }

    /// A new definition from a config reload (`None`: removed from the config).
    pub fn set_spec(&self, spec: Option<InstanceSpec>, autostart: bool) {
        self.addr.do_send(Manage::SetSpec {
            spec: spec.map(Box::new),
            autostart,
        });
    }

    /// Stop the actor (the instance was forgotten). QEMU is never touched.
    pub fn retire(&self) {
        self.addr.do_send(Manage::Retire);
    }

    /// The mailbox is open (a panicked actor's mailbox closes).
    pub fn alive(&self) -> bool {
        self.addr.connected()
    }

    /// The migration as this VM sees it.
    pub async fn migration(&self) -> Result<crate::api::MigrationReport, ApiError> {
        self.addr.send(GetMigration).await.map_err(gone)
    }

    /// The running job, if any.
    pub async fn job(&self) -> Option<JobInfo> {
        self.addr.send(GetJob).await.ok().flatten()
    }
}
