//! Following the sources after the copy: each store with a change stream applies it to its
//! target from where the copy read (or the last checkpoint), checkpointing in the catalog after
//! every applied batch, until the operator stops it, another run of the job asks it to hand over
//! (the final pass), or, in the final pass, until it holds everything the frozen sources wrote.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Job, JobError};
use crate::core::catalog::{PhaseOwner, UnitState};
use crate::core::follow::{FollowCheckpoint, Follower, Lag, StreamPosition};
use crate::core::progress::{Phase, Reporter};
use crate::core::{CoreError, Store, StoreKind};

/// The file another run of the job writes into the job folder to ask a running follower to
/// checkpoint and hand the job over (the final pass), wherever the follower runs.
pub const HANDOVER_FILE: &str = "follow.handover";

/// When following ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUntil {
    /// Until the operator stops it (Ctrl-C, SIGTERM, SIGHUP) or another run asks for the job.
    Stopped,
    /// Until every change the sources had written when following started is applied: the
    /// final pass, with the sources' writers held off.
    CaughtUp,
}

/// How a job follows.
#[derive(Debug, Clone, Copy)]
pub struct FollowOptions {
    pub until: FollowUntil,
    /// Longest a follower waits for changes before it checkpoints its lag and looks again.
    pub poll: Duration,
}

/// What following did for one store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreFollowed {
    pub store: StoreKind,
    /// `copy` when this run started where the copy read, `checkpoint` when it resumed.
    pub started_from: &'static str,
    /// Changes and transactions this run applied.
    pub events: u64,
    pub transactions: u64,
    /// The store's checkpoint when following ended.
    pub checkpoint: FollowCheckpoint,
    /// Whether it holds everything the source wrote before the final pass read its head.
    pub caught_up: bool,
}

/// What `follow` did, for the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowSummary {
    pub followed: Vec<StoreFollowed>,
    /// Stores of the job not followed, and why (no change stream, no point to start from); the
    /// final pass copies what changed in them with the delta pass.
    pub not_followed: Vec<(StoreKind, String)>,
    /// Why following ended: `stopped`, `handed over`, `caught up`, `nothing to follow`.
    pub ended: String,
    /// Whether the operator stopped it (Ctrl-C, SIGTERM, SIGHUP); the checkpoints are kept.
    pub interrupted: bool,
    pub seconds: f64,
}

/// Where a follower of `kind` starts: its checkpoint, else where the copy read.
fn start_position(
    job: &Job,
    kind: StoreKind,
) -> Result<Option<(StreamPosition, &'static str, FollowCheckpoint)>, CoreError> {
    if let Some(checkpoint) = job.catalog.follow_checkpoint(kind)? {
        let position = checkpoint.position.clone();
        return Ok(Some((position, "checkpoint", checkpoint)));
    }
    Ok(job.catalog.stream_start(kind)?.map(|position| {
        let checkpoint = FollowCheckpoint {
            position: position.clone(),
            events: 0,
            transactions: 0,
            lag: Lag::default(),
            at: String::new(),
        };
        (position, "copy", checkpoint)
    }))
}

/// Whether another run asked the follower to hand the job over.
pub fn handover_requested(job_dir: &Path) -> bool {
    job_dir.join(HANDOVER_FILE).exists()
}

/// Ask a follower running the job in `job_dir` (on this host or another that shares the folder)
/// to checkpoint and let go of the job.
pub fn request_handover(job_dir: &Path) -> std::io::Result<()> {
    std::fs::write(job_dir.join(HANDOVER_FILE), b"")
}

/// Before a final pass: when a follower of the job in `job_dir` is running, ask it to hand the
/// job over and wait (at most `wait`) until it has checkpointed and let go. Returns whether
/// there was one. A holder that is not following is left alone (opening the job then says who
/// holds it).
pub async fn take_over_from_follower(job_dir: &Path, wait: Duration) -> Result<bool, JobError> {
    let Some(holder) = super::lock::JobLock::holder(job_dir) else {
        return Ok(false);
    };
    if !crate::core::catalog::Catalog::exists(job_dir) {
        return Ok(false);
    }
    let catalog = crate::core::catalog::Catalog::open(job_dir)?;
    let following = catalog
        .phase(PhaseOwner::Job, Phase::Follow)?
        .is_some_and(|p| p.started_at.is_some() && p.done_at.is_none());
    if !following {
        return Ok(false);
    }
    request_handover(job_dir).map_err(|e| {
        CoreError::Invalid(format!(
            "cannot ask the follower (pid {} on {}) to hand the job over: writing {} failed ({e}). Stop it (Ctrl-C or SIGTERM), then run this again",
            holder.pid,
            holder.host,
            job_dir.join(HANDOVER_FILE).display()
        ))
    })?;
    let deadline = Instant::now() + wait;
    while super::lock::JobLock::holder(job_dir).is_some() {
        if Instant::now() >= deadline {
            return Err(CoreError::Invalid(format!(
                "the follower of this job (pid {} on {}) was asked to hand the job over and still holds it after {} s. Stop it (Ctrl-C or SIGTERM; its checkpoint is kept), then run this again",
                holder.pid,
                holder.host,
                wait.as_secs()
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(true)
}

impl Job {
    /// Whether any store of the job has a point to follow from (the copy recorded where its
    /// change stream starts, or a follower checkpointed).
    pub fn has_follow_positions(&self) -> Result<bool, JobError> {
        for store in &self.stores {
            if start_position(self, store.kind())?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The stores of the job that can be followed, with their followers opened at their start
    /// positions, and those that cannot, with why.
    async fn open_followers(
        &self,
    ) -> Result<
        (
            Vec<(
                Arc<dyn Store>,
                Box<dyn Follower>,
                &'static str,
                FollowCheckpoint,
            )>,
            Vec<(StoreKind, String)>,
        ),
        JobError,
    > {
        let mut open = Vec::new();
        let mut not = Vec::new();
        for store in &self.stores {
            let kind = store.kind();
            let records = self.catalog.units(Some(kind))?;
            if records
                .iter()
                .any(|r| r.state != UnitState::Copied && r.state != UnitState::Skipped)
            {
                return Err(CoreError::Invalid(format!(
                    "the {kind} copy is not complete, and following applies changes only to a complete copy: run `offload copy --resume` with the same flags first, then follow"
                ))
                .into());
            }
            let Some((from, started_from, checkpoint)) = start_position(self, kind)? else {
                not.push((
                    kind,
                    "no point to follow from: the copy read no change-stream position (no change stream, or a copy that read live)".to_string(),
                ));
                continue;
            };
            let units: Vec<_> = records.into_iter().map(|r| r.unit).collect();
            match store.follower(&from, &units).await {
                Ok(f) => open.push((store.clone(), f, started_from, checkpoint)),
                Err(e) if e.kind == crate::core::ErrorKind::Unsupported => {
                    not.push((kind, format!("{} ({})", e.detail, e.hint)))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((open, not))
    }

    /// Keep each followable target in step with its source (see the module docs).
    pub async fn follow(
        &self,
        options: &FollowOptions,
        reporter: Arc<dyn Reporter>,
        cancel: &CancellationToken,
    ) -> Result<FollowSummary, JobError> {
        let started = Instant::now();
        let (followers, not_followed) = self.open_followers().await?;
        let mut summary = FollowSummary {
            not_followed,
            ..FollowSummary::default()
        };
        if followers.is_empty() {
            summary.ended = "nothing to follow".into();
            return Ok(summary);
        }
        // A handover request left by an earlier final pass is not meant for this run.
        if options.until == FollowUntil::Stopped {
            let _ = std::fs::remove_file(self.dir.join(HANDOVER_FILE));
        }
        self.catalog.phase_start(PhaseOwner::Job, Phase::Follow)?;
        let stop = cancel.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        for (store, follower, started_from, checkpoint) in followers {
            let catalog = self.catalog.clone();
            let reporter = reporter.clone();
            let stop = stop.clone();
            let options = *options;
            tasks.spawn(async move {
                let kind = store.kind();
                let r = follow_one(
                    kind, follower, checkpoint, &catalog, &*reporter, &stop, options,
                )
                .await;
                (kind, started_from, r)
            });
        }
        // Watch for a handover request while following until stopped.
        let watch = {
            let stop = stop.clone();
            let dir = self.dir.clone();
            let poll = options.poll;
            let until = options.until;
            tokio::spawn(async move {
                if until != FollowUntil::Stopped {
                    return false;
                }
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(poll.min(Duration::from_secs(1))) => {}
                    }
                    if handover_requested(&dir) {
                        stop.cancel();
                        return true;
                    }
                }
            })
        };
        let mut first_error: Option<JobError> = None;
        while let Some(joined) = tasks.join_next().await {
            let (kind, started_from, result) = joined.map_err(|e| {
                CoreError::Invalid(format!(
                    "a follower ended abnormally ({e}); its last checkpoint is kept: run the same command again"
                ))
            })?;
            match result {
                Ok(done) => summary.followed.push(StoreFollowed {
                    store: kind,
                    started_from,
                    ..done
                }),
                Err(e) => {
                    // One store's stream ended: stop the others at a checkpoint too.
                    stop.cancel();
                    first_error.get_or_insert(e);
                }
            }
        }
        stop.cancel();
        let handed_over = watch.await.unwrap_or(false);
        if handed_over {
            let _ = std::fs::remove_file(self.dir.join(HANDOVER_FILE));
        }
        summary.followed.sort_by_key(|f| f.store);
        summary.seconds = started.elapsed().as_secs_f64();
        if let Some(e) = first_error {
            return Err(e);
        }
        summary.ended = if handed_over {
            "handed over".into()
        } else if summary.followed.iter().all(|f| f.caught_up)
            && options.until == FollowUntil::CaughtUp
        {
            "caught up".into()
        } else {
            "stopped".into()
        };
        let detail = format!(
            "{}: {}",
            summary.ended,
            summary
                .followed
                .iter()
                .map(|f| format!("{} {} change(s)", f.store, f.events))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.catalog
            .phase_done(PhaseOwner::Job, Phase::Follow, &detail)?;
        summary.interrupted = cancel.is_cancelled();
        Ok(summary)
    }
}

/// Follow one store until `stop`, or until caught up with the head read at the start.
async fn follow_one(
    kind: StoreKind,
    mut follower: Box<dyn Follower>,
    mut checkpoint: FollowCheckpoint,
    catalog: &crate::core::catalog::Catalog,
    reporter: &dyn Reporter,
    stop: &CancellationToken,
    options: FollowOptions,
) -> Result<StoreFollowed, JobError> {
    let head = match options.until {
        FollowUntil::CaughtUp => Some(follower.source_head().await?),
        FollowUntil::Stopped => None,
    };
    let mut events = 0u64;
    let mut transactions = 0u64;
    let result = loop {
        if let Some(head) = &head {
            if follower.caught_up(head) {
                break Ok(true);
            }
        }
        // Never dropped mid-way: `apply` returns within about `poll` at a transaction boundary,
        // and a change applied without its checkpoint would be applied twice on resume.
        if stop.is_cancelled() {
            break Ok(false);
        }
        let applied = match follower.apply(options.poll).await {
            Ok(a) => a,
            Err(e) => break Err(JobError::from(e)),
        };
        events += applied.events;
        transactions += applied.transactions;
        checkpoint = FollowCheckpoint {
            position: applied.position,
            events: checkpoint.events + applied.events,
            transactions: checkpoint.transactions + applied.transactions,
            lag: applied.lag,
            at: crate::core::catalog::now(),
        };
        catalog.record_follow(kind, &checkpoint, &applied.touched)?;
        reporter.on_follow(kind, &checkpoint);
    };
    follower.close().await;
    let caught_up = result?;
    Ok(StoreFollowed {
        store: kind,
        started_from: "",
        events,
        transactions,
        checkpoint,
        caught_up,
    })
}
