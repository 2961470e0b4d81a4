//! How a VM's answer becomes the reply to the operator's request.
//!
//! Invariant: pure mapping; no actix.

use crate::api::{ApiError, ApiReply, ErrorCode, JobOutcome, JobState, VmInfo};
use crate::model::job::Operation;
use crate::model::name::InstanceName;
use crate::model::state::StopEnd;
use crate::vm::{VmAnswer, VmReply};

/// The reply to a request a VM answered; `live` adds the live numbers to the VM's info.
pub(super) fn reply_of(
    name: &InstanceName,
    answer: VmAnswer,
    live: impl Fn(VmInfo) -> VmInfo,
) -> Result<ApiReply, ApiError> {
    let info = live(answer.info);
    match answer.reply {
        VmReply::AlreadyStopped => Ok(ApiReply::Stopped {
            ended: StopEnd::AlreadyStopped,
            elapsed_ms: 0,
            info,
        }),
        VmReply::StartCancelled => Ok(ApiReply::Stopped {
            ended: StopEnd::StartCancelled,
            elapsed_ms: 0,
            info,
        }),
        VmReply::Cancelling(job) => Ok(ApiReply::Cancelling(job)),
        VmReply::Unchanged => Ok(ApiReply::MigrationStep(info)),
        VmReply::Job(job) if job.state == JobState::Running => Ok(ApiReply::Accepted(job)),
        VmReply::Job(job) => match job.outcome.clone() {
            Some(JobOutcome::Failed(e)) => Err(e),
            Some(JobOutcome::Cancelled { reason }) => Err(ApiError::new(
                ErrorCode::Cancelled,
                format!(
                    "{name}: {} job {} was cancelled: {reason}",
                    job.kind, job.id
                ),
            )),
            None | Some(JobOutcome::Done { .. }) => Ok(match job.kind {
                Operation::Stop => {
                    let stop = match &job.outcome {
                        Some(JobOutcome::Done { stop: Some(s) }) => *s,
                        _ => crate::api::StopResult {
                            ended: StopEnd::Unobserved,
                            elapsed_ms: 0,
                        },
                    };
                    ApiReply::Stopped {
                        ended: stop.ended,
                        elapsed_ms: stop.elapsed_ms,
                        info,
                    }
                }
                Operation::Reboot | Operation::Reset => ApiReply::Rebooted(info),
                Operation::Pause => ApiReply::Paused(info),
                Operation::Resume => ApiReply::Resumed(info),
                Operation::Cleanup => ApiReply::CleanedUp { name: name.clone() },
                Operation::Pin => ApiReply::Pinned(info),
                Operation::Balloon => ApiReply::Ballooned(info),
                Operation::Hotplug => ApiReply::Hotplugged(info),
                Operation::Migrate
                | Operation::Accept
                | Operation::FinalizeSrc
                | Operation::FinalizeDst => ApiReply::MigrationStep(info),
                _ => ApiReply::Started(info),
            }),
        },
    }
}
