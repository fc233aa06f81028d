//! The copy and the delta pass of a job: the runner over the job's stores, and the final pass
//! that copies again only what changed since (recorded as the job's `delta` phase).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Job, JobError};
use crate::core::catalog::PhaseOwner;
use crate::core::delta::{delta, DeltaSummary};
use crate::core::progress::{Phase, Reporter};
use crate::core::runner::{CopySummary, RunOptions, Runner};
use crate::core::{IfExists, StoreKind};

/// How a job copies.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    /// Units worked on at once, across all stores.
    pub parallel: usize,
    /// Attempts after the first for a retryable error.
    pub retries: u32,
    /// What to do with a target that already holds data.
    pub if_exists: IfExists,
    /// Rows per compared chunk in the delta pass.
    pub chunk_rows: u64,
    /// Longest one attempt at a batch may take before it is dropped and retried (`None`: no
    /// limit).
    pub stall_timeout: Option<std::time::Duration>,
}

impl Job {
    /// Copy every unit not copied yet (units an earlier run finished are skipped).
    pub async fn copy(
        &self,
        options: &CopyOptions,
        reporter: Arc<dyn Reporter>,
        cancel: &CancellationToken,
    ) -> Result<CopySummary, JobError> {
        self.catalog.phase_start(PhaseOwner::Job, Phase::Copy)?;
        let runner = Runner {
            catalog: self.catalog.clone(),
            reporter,
            cancel: cancel.clone(),
            options: RunOptions {
                parallel: options.parallel.max(1),
                retries: options.retries,
                if_exists: options.if_exists,
                stall_timeout: options.stall_timeout,
            },
        };
        let summary = runner.copy(&self.stores).await;
        if summary.as_ref().map_or(true, |s| s.units_copied_now > 0) {
            // What this run wrote (or may have written, when it failed) is not covered by the
            // last full verify: the next verify checks everything.
            self.catalog.forget_full_verify()?;
        }
        let summary = summary?;
        self.catalog.phase_done(PhaseOwner::Job, Phase::Copy, "")?;
        Ok(summary)
    }

    /// The delta pass of a job whose copy is complete, recorded as the job's `delta` phase.
    pub async fn delta(
        &self,
        options: &CopyOptions,
        reporter: Arc<dyn Reporter>,
        cancel: &CancellationToken,
    ) -> Result<DeltaSummary, JobError> {
        let all: Vec<StoreKind> = self.stores.iter().map(|s| s.kind()).collect();
        self.delta_of(&all, options, reporter, cancel).await
    }

    /// The delta pass over some of the job's stores (those the final pass does not follow).
    pub async fn delta_of(
        &self,
        kinds: &[StoreKind],
        options: &CopyOptions,
        reporter: Arc<dyn Reporter>,
        cancel: &CancellationToken,
    ) -> Result<DeltaSummary, JobError> {
        let stores: Vec<_> = self
            .stores
            .iter()
            .filter(|s| kinds.contains(&s.kind()))
            .cloned()
            .collect();
        self.catalog.phase_start(PhaseOwner::Job, Phase::Delta)?;
        let d = delta(
            &stores,
            self.catalog.clone(),
            options.chunk_rows,
            options.parallel.max(1),
            options.retries,
            reporter,
            cancel,
        )
        .await?;
        self.catalog.phase_done(
            PhaseOwner::Job,
            Phase::Delta,
            &format!("{} unit(s) changed", d.units_changed),
        )?;
        Ok(d)
    }
}
