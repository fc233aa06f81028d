//! Opening a job folder: a new job only after a plan whose checks pass and whose targets may be
//! written as `--if-exists` says, an existing one only with `--resume` and only against the setup
//! it was started with (pgcopydb's resume guard). A new job refused before it is created leaves
//! the folder as it was: no catalog, and no lock file or folder made for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lock::JobLock;
use super::{Job, JobError};
use crate::core::catalog::Catalog;
use crate::core::plan::{make_plan, Plan};
use crate::core::runner::occupied_refusal;
use crate::core::{CoreError, IfExists};
use crate::settings::Settings;

/// How a command wants the job folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenRequest {
    /// Continue the job that is there (`--resume`).
    pub resume: bool,
    /// Discard the job that is there and start over (`--restart`).
    pub restart: bool,
    /// What the copy will do with targets that already hold data: with `Refuse`, a new job
    /// whose plan finds occupied targets is refused before it is created.
    pub if_exists: IfExists,
}

/// A job folder claimed for one run, before its settings are resolved: an existing job's record
/// tells where its endpoints were.
pub struct JobFolder {
    dir: PathBuf,
    existing: Option<Catalog>,
    /// Taken as soon as the folder exists (for a new job: just before its catalog is created).
    /// For a job not created yet it removes what it made when dropped.
    lock: Option<JobLock>,
    if_exists: IfExists,
}

impl JobFolder {
    /// Claim the folder as `request` asks: with `restart`, discard the job there; refuse an
    /// existing job without `resume`, and `resume` without a job.
    pub fn claim(dir: PathBuf, request: OpenRequest) -> Result<JobFolder, JobError> {
        check_job_folder(&dir)?;
        // A folder that is there is locked before anything in it is touched.
        let lock = if !dir.is_dir() {
            None
        } else if Catalog::exists(&dir) && !request.restart {
            Some(JobLock::acquire(&dir)?)
        } else {
            Some(JobLock::acquire_for_new_job(&dir)?)
        };
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
            if_exists: request.if_exists,
        })
    }

    /// Claim the folder's job if there is one (commands that also work without a job).
    pub fn existing(dir: PathBuf) -> Result<Option<JobFolder>, JobError> {
        if dir.exists() && !dir.is_dir() {
            return Err(JobError::NotAFolder {
                job: dir.display().to_string(),
            });
        }
        if !Catalog::exists(&dir) {
            return Ok(None);
        }
        check_job_folder(&dir)?;
        let lock = JobLock::acquire(&dir)?;
        let catalog = Catalog::open(&dir)?;
        Ok(Some(JobFolder {
            dir,
            existing: Some(catalog),
            lock: Some(lock),
            if_exists: IfExists::default(),
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
    /// plan whose checks pass (otherwise [`JobError::PlanFailed`]) and whose targets are empty or
    /// may be written as `--if-exists` says (otherwise the copy's refusal). A refused new job
    /// writes nothing: the catalog is created only after both.
    pub async fn open(self, settings: Settings) -> Result<Job, JobError> {
        super::reach::check(&settings).await?;
        for w in settings.tls_warnings() {
            tracing::warn!(store = %w.store, side = %w.side, "certificate not fully verified: {}", w.detail);
        }
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
        if self.if_exists == IfExists::Refuse {
            refuse_occupied(&plan)?;
        }
        let mut lock = match self.lock {
            Some(lock) => lock,
            None => JobLock::acquire_for_new_job(&self.dir)?,
        };
        let created = Catalog::create(&self.dir, &settings.setup(&stores))?;
        lock.keep();
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

/// The copy's refusal of the first store whose target already holds data for planned units. The
/// runner checks again before it writes, so a target filled since the plan is still refused.
fn refuse_occupied(plan: &Plan) -> Result<(), JobError> {
    match plan.stores.iter().find(|s| !s.occupied.is_empty()) {
        Some(s) => {
            Err(CoreError::from(occupied_refusal(s.store, s.target.clone(), &s.occupied)).into())
        }
        None => Ok(()),
    }
}

/// Refuse, saying what it is, a job path that cannot hold a job: a file, or a folder (or the
/// nearest existing folder above a missing one) that cannot be written.
pub fn check_job_folder(dir: &Path) -> Result<(), JobError> {
    let job = dir.display().to_string();
    if dir.exists() && !dir.is_dir() {
        return Err(JobError::NotAFolder { job });
    }
    // The folder, or the folder it would be created in.
    let mut existing = dir;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
            Some(parent) => parent,
            None => return Ok(()),
        };
    }
    if !existing.is_dir() {
        return Err(JobError::NotAFolder {
            job: existing.display().to_string(),
        });
    }
    if let Err(e) = writable(existing) {
        return Err(JobError::FolderNotWritable {
            job,
            folder: existing.display().to_string(),
            detail: e.to_string(),
        });
    }
    Ok(())
}

/// Whether this process may create files in `folder` (immutable folders included, which even
/// root may not write).
fn writable(folder: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(folder.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: access(2) reads the NUL-terminated path we own.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
