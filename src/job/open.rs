//! Opening a job folder: a new job only after a plan whose checks pass, an existing one only
//! with `--resume` and only against the setup it was started with (pgcopydb's resume guard).

use std::path::PathBuf;
use std::sync::Arc;

use super::lock::JobLock;
use super::{Job, JobError};
use crate::core::catalog::Catalog;
use crate::core::plan::make_plan;
use crate::core::CoreError;
use crate::settings::Settings;

/// How a command wants the job folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenRequest {
    /// Continue the job that is there (`--resume`).
    pub resume: bool,
    /// Discard the job that is there and start over (`--restart`).
    pub restart: bool,
}

/// A job folder claimed for one run, before its settings are resolved: an existing job's record
/// tells where its endpoints were.
pub struct JobFolder {
    dir: PathBuf,
    existing: Option<Catalog>,
    /// Taken as soon as the folder exists (for a new job: just before its catalog is created).
    lock: Option<JobLock>,
}

impl JobFolder {
    /// Claim the folder as `request` asks: with `restart`, discard the job there; refuse an
    /// existing job without `resume`, and `resume` without a job.
    pub fn claim(dir: PathBuf, request: OpenRequest) -> Result<JobFolder, JobError> {
        // A folder that is there is locked before anything in it is touched.
        let lock = dir.is_dir().then(|| JobLock::acquire(&dir)).transpose()?;
        if request.restart && Catalog::exists(&dir) {
            Catalog::discard(&dir)?;
            tracing::warn!(job = %dir.display(), "discarded the previous job, as --restart asks");
        }
        let exists = Catalog::exists(&dir);
        if exists && !request.resume {
            return Err(CoreError::JobExists {
                job: dir.display().to_string(),
            }
            .into());
        }
        if !exists && request.resume {
            return Err(CoreError::NoJob {
                job: dir.display().to_string(),
            }
            .into());
        }
        let existing = if exists {
            Some(Catalog::open(&dir)?)
        } else {
            None
        };
        Ok(JobFolder {
            dir,
            existing,
            lock,
        })
    }

    /// Claim the folder's job if there is one (commands that also work without a job).
    pub fn existing(dir: PathBuf) -> Result<Option<JobFolder>, JobError> {
        if !Catalog::exists(&dir) {
            return Ok(None);
        }
        let lock = JobLock::acquire(&dir)?;
        let catalog = Catalog::open(&dir)?;
        Ok(Some(JobFolder {
            dir,
            existing: Some(catalog),
            lock: Some(lock),
        }))
    }

    /// The endpoints an existing job recorded (URLs without secrets, where secrets come from).
    pub fn recorded_endpoints(&self) -> Result<Option<serde_json::Value>, JobError> {
        match &self.existing {
            Some(c) => Ok(Some(c.setup()?.endpoints)),
            None => Ok(None),
        }
    }

    /// Open the job with its settings: an existing one after the setup guard, a new one after a
    /// plan whose checks pass (otherwise [`JobError::PlanFailed`], and nothing is written).
    pub async fn open(self, settings: Settings) -> Result<Job, JobError> {
        let stores = settings.open_stores();
        if let Some(catalog) = self.existing {
            catalog.check_setup(&self.dir, &settings.setup(&stores))?;
            let lock = match self.lock {
                Some(lock) => lock,
                None => JobLock::acquire(&self.dir)?,
            };
            return Ok(Job {
                dir: self.dir,
                catalog: Arc::new(catalog),
                stores,
                settings,
                resumed: true,
                _lock: lock,
            });
        }
        let plan = make_plan(&stores).await?;
        if !plan.checks_pass() {
            return Err(JobError::PlanFailed(Box::new(plan)));
        }
        let lock = match self.lock {
            Some(lock) => lock,
            None => JobLock::acquire(&self.dir)?,
        };
        let created = Catalog::create(&self.dir, &settings.setup(&stores))?;
        for s in &plan.stores {
            created.add_units(&s.units)?;
        }
        Ok(Job {
            dir: self.dir,
            catalog: Arc::new(created),
            stores,
            settings,
            resumed: false,
            _lock: lock,
        })
    }
}
