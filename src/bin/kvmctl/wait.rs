//! Waiting for jobs through the event stream: subscribe on a second connection first, send the
//! request with `wait: false`, take the job id from `accepted`, show its phases, finish on its
//! `job-ended` event. A gap in the stream that may have hidden the end is resolved by asking
//! `job ID`. A kvmd that answers `wait: false` with a final reply (one that does not run jobs
//! yet) is taken at its word, and one without event streams gets the old blocking request.
//!
//! Invariant: every path ends with the job's end as kvmd reports it, never a guess; the job
//! goes on if kvmctl stops waiting.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use kvmd::api::{
    ApiError, ApiReply, ApiRequest, ErrorCode, EventKind, JobInfo, JobOutcome, JobRef, JobState,
    StreamItem,
};
use kvmd::control::client::{Answer, Client, ClientError, EventStream};
use kvmd::model::job::{JobId, Operation};
use kvmd::model::state::StopEnd;

use crate::render::e;

/// Where job phases are shown while waiting.
#[derive(Clone, Copy)]
pub struct Progress {
    pub show: bool,
}

impl Progress {
    /// Phases go to stderr when it is a terminal, or when asked (`--verbose`).
    pub fn new(verbose: bool) -> Self {
        Self {
            show: verbose || std::io::stderr().is_terminal(),
        }
    }

    fn phase(self, job: &JobInfo, last: &mut Option<String>) {
        if self.show && last.as_deref() != Some(job.phase.as_str()) {
            eprintln!(
                "{}: {} job {}: {}",
                e(job.instance.as_str()),
                job.kind,
                job.id,
                e(&job.phase)
            );
            *last = Some(job.phase.clone());
        }
    }
}

/// How a request that starts a job ended up.
pub enum Finished {
    /// kvmd answered with a final reply (or an error) at once.
    Reply(Answer),
    /// The job ran and ended; this is its last state.
    Job(JobInfo),
}

/// A copy of `req` with its `wait` flag set.
fn with_wait(req: &ApiRequest, wait: bool) -> ApiRequest {
    let mut req = req.clone();
    match &mut req {
        ApiRequest::Start { wait: w, .. }
        | ApiRequest::Create { wait: w, .. }
        | ApiRequest::Stop { wait: w, .. }
        | ApiRequest::Reboot { wait: w, .. }
        | ApiRequest::Migrate { wait: w, .. }
        | ApiRequest::Accept { wait: w, .. } => *w = wait,
        _ => {}
    }
    req
}

/// Subscribe for new events, or `None` when this kvmd has no event streams.
fn follow(socket: &Path) -> Result<Option<EventStream>, ClientError> {
    match Client::connect(socket)?.subscribe(None, true) {
        Ok(stream) => Ok(Some(stream)),
        Err(ClientError::Refused(e)) if e.code == ErrorCode::UnknownRequest => Ok(None),
        Err(e) => Err(e),
    }
}

/// Send `req` (a start, stop or reboot) and wait for its job to end.
pub fn run(socket: &Path, req: &ApiRequest, progress: Progress) -> Result<Finished, ClientError> {
    let stream = follow(socket)?;
    let mut client = Client::connect(socket)?;
    let answer = client.call(&with_wait(req, stream.is_none()))?;
    let job = match &answer.result {
        Ok(ApiReply::Accepted(job)) => job.clone(),
        _ => return Ok(Finished::Reply(answer)),
    };
    let ended = match stream {
        Some(mut stream) => until_ended(&mut stream, &mut client, job, progress)?,
        None => poll(&mut client, job, progress)?,
    };
    Ok(Finished::Job(ended))
}

/// Ask kvmd for a job.
fn ask(client: &mut Client, id: JobId) -> Result<Result<JobInfo, ApiError>, ClientError> {
    let answer = client.call(&ApiRequest::Job {
        target: JobRef::Id(id),
    })?;
    Ok(match answer.result {
        Ok(ApiReply::Job(j)) => Ok(j),
        Ok(other) => Err(ApiError::new(
            ErrorCode::Internal,
            format!(
                "kvmd answered a job request with {}",
                kvmd::control::protocol::reply_kind(&other)
            ),
        )),
        Err(e) => Err(e),
    })
}

/// Follow the stream until the job's `job-ended` (or, after a gap or the stream's end, until
/// `job ID` says it has ended).
pub fn until_ended(
    stream: &mut EventStream,
    client: &mut Client,
    job: JobInfo,
    progress: Progress,
) -> Result<JobInfo, ClientError> {
    let id = job.id;
    let mut last_phase = None;
    progress.phase(&job, &mut last_phase);
    if job.state != JobState::Running {
        return Ok(job);
    }
    for item in stream.by_ref() {
        match item? {
            StreamItem::Event(ev) => match ev.kind {
                EventKind::JobStarted(j) | EventKind::JobProgress(j) if j.id == id => {
                    progress.phase(&j, &mut last_phase)
                }
                EventKind::JobEnded(j) if j.id == id => return Ok(j),
                _ => {}
            },
            StreamItem::Gap { .. } => {
                // The end may be among the lost events: ask.
                if let Ok(j) = ask(client, id)? {
                    if j.state != JobState::Running {
                        return Ok(j);
                    }
                }
            }
            StreamItem::End { .. } => break,
        }
    }
    // The stream ended (kvmd is shutting down): the job may have ended just before.
    match ask(client, id)? {
        Ok(j) if j.state != JobState::Running => Ok(j),
        _ => Err(ClientError::Closed),
    }
}

/// Without event streams: ask every quarter second.
fn poll(client: &mut Client, job: JobInfo, progress: Progress) -> Result<JobInfo, ClientError> {
    let mut last_phase = None;
    let mut job = job;
    loop {
        progress.phase(&job, &mut last_phase);
        if job.state != JobState::Running {
            return Ok(job);
        }
        std::thread::sleep(Duration::from_millis(250));
        job = match ask(client, job.id)? {
            Ok(j) => j,
            Err(e) => return Err(ClientError::Refused(e)),
        };
    }
}

/// An ended job as the reply a waiting request used to get (`started`, `stopped`,
/// `rebooted`, with the instance as it is now), or its error.
pub fn as_reply(client: &mut Client, job: &JobInfo) -> Result<ApiReply, ApiError> {
    match &job.outcome {
        Some(JobOutcome::Failed(err)) => return Err(err.clone()),
        Some(JobOutcome::Cancelled { reason }) => {
            return Err(ApiError::new(
                ErrorCode::Cancelled,
                format!(
                    "{} job {} of {} cancelled: {reason}",
                    job.kind, job.id, job.instance
                ),
            ))
        }
        Some(JobOutcome::Done { .. }) => {}
        None => return Ok(ApiReply::Job(job.clone())),
    }
    let info = client
        .call(&ApiRequest::Info {
            name: Some(job.instance.clone()),
        })
        .ok()
        .and_then(|a| match a.result {
            Ok(ApiReply::Info(mut v)) if !v.is_empty() => Some(v.remove(0)),
            _ => None,
        });
    let Some(info) = info else {
        return Ok(ApiReply::Job(job.clone()));
    };
    Ok(match (job.kind, &job.outcome) {
        (Operation::Start, _) => ApiReply::Started(info),
        (Operation::Stop, Some(JobOutcome::Done { stop })) => {
            let (ended, elapsed_ms) =
                stop.map_or((StopEnd::AlreadyStopped, 0), |s| (s.ended, s.elapsed_ms));
            ApiReply::Stopped {
                ended,
                elapsed_ms,
                info,
            }
        }
        (Operation::Reboot | Operation::Reset, _) => ApiReply::Rebooted(info),
        (Operation::Migrate | Operation::Accept, _) => ApiReply::MigrationStep(info),
        _ => ApiReply::Job(job.clone()),
    })
}
