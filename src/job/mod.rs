//! The job's lifecycle as a library, between the commands and the core: open or resume a job
//! folder behind its setup guard ([`JobFolder`]), hold the sources' writers off and let them in
//! again, copy, the delta pass, verify (resuming an interrupted verify), the reindex phase and its
//! gate, the cross-store checks and the cutover gate.
//!
//! One process per job: whatever writes to a job folder holds its lock ([`lock::JobLock`]) until
//! it ends; `status` only reads who holds it.
//!
//! It takes resolved [`Settings`], never command-line types, returns typed outcomes and prints
//! nothing: the commands call it in the order of the runbook and hand the outcomes to `ui`.

pub mod check;
mod copy;
mod cross_checks;
mod cutover;
mod follow;
mod freeze;
pub mod lock;
mod open;
pub mod reach;
mod reindex;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use crate::core::catalog::Catalog;
use crate::core::plan::Plan;
use crate::core::{CoreError, Store, StoreError};
use crate::resolve::SettingsError;
use crate::settings::Settings;
use crate::tutor::TutorError;

pub use copy::CopyOptions;
pub use cross_checks::{active_versions_key, compare_course_index};
pub use cutover::{cutover, cutover_without_job, CutoverOutcome, Forced};
pub use follow::{
    handover_requested, request_handover, take_over_from_follower, FollowOptions, FollowSummary,
    FollowUntil, StoreFollowed, HANDOVER_FILE,
};
pub use freeze::{Frozen, ThawFailure};
pub use open::{check_job_folder, JobFolder, OpenRequest};
pub use reindex::{reindex_alone, source_of_truth, ReindexPhase};
pub use verify::{verify_unplanned, JobVerify, VerifyScope};

/// A job ready to run: its folder, catalog, stores and settings.
pub struct Job {
    pub dir: PathBuf,
    pub catalog: Arc<Catalog>,
    pub stores: Vec<Arc<dyn Store>>,
    pub settings: Settings,
    /// Whether this run continues an existing job.
    pub resumed: bool,
    /// This process's hold on the job folder, released when the job is dropped.
    _lock: lock::JobLock,
}

/// Why a job step could not be done; every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Tutor(#[from] TutorError),
    /// Another process holds the job.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// A new job's plan found a prerequisite missing; nothing was written.
    #[error(
        "some prerequisite checks failed (see above); nothing was written. Fix them and run again"
    )]
    PlanFailed(Box<Plan>),
    /// The job path is a file (or lies below one).
    #[error("the job path {job} is a file, not a folder: offload keeps a job (its catalog and lock) in a folder. Pass --job a folder (it is created when missing), or move the file away")]
    NotAFolder { job: String },
    /// The job folder (or the folder it would be created in) cannot be written.
    #[error("the job folder {job} cannot be used: {folder} is not writable ({detail}). offload writes the job's catalog and lock there, even to read a job. Make it writable (chmod u+w, or chattr -i when it is immutable), or copy the job folder somewhere writable and pass --job with that path")]
    FolderNotWritable {
        job: String,
        folder: String,
        detail: String,
    },
    /// A gate refused (cutover before a clean verify, a changed config.yml, ...).
    #[error("{0}")]
    Refused(String),
    /// Servers the job names that this machine cannot reach; nothing was asked or written.
    #[error("{}", unreachable_message(.0))]
    Unreachable(Vec<reach::Unreachable>),
}

fn unreachable_message(servers: &[reach::Unreachable]) -> String {
    let named: Vec<String> = servers
        .iter()
        .map(|u| format!("{} {} {} ({})", u.store, u.side, u.address, u.why))
        .collect();
    format!(
        "cannot reach {}; nothing was written. Check that each server runs and listens at that address. Tutor's mysql, mongodb, redis, minio and meilisearch hosts exist only inside its Docker network (or its Kubernetes namespace): run offload there with the Tutor plugin (docs/tutor.md), or pass --from-*/--to-* addresses this machine can reach",
        named.join("; ")
    )
}

impl JobError {
    /// Whether the step stopped because the operator interrupted it (Ctrl-C, a signal).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, JobError::Core(CoreError::Interrupted))
    }
}
