//! Errors of the library: one `StoreError` shape for every store (store, host, unit, what to do next)
//! and `CoreError` for the engine. Messages never carry a password.

use std::fmt;

use super::store::StoreKind;

/// What went wrong, coarsely: decides retries and how the CLI words the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server could not be reached (refused, DNS, timeout).
    Connect,
    /// The server refused the credentials or the user lacks a privilege.
    Auth,
    /// The target already holds data and the policy says not to touch it.
    TargetNotEmpty,
    /// A query or command failed on the server.
    Query,
    /// The connection dropped or the server asked us to try again (deadlock, lock wait).
    Transient,
    /// The input (URL, option, config) does not make sense.
    Input,
    /// The server cannot do what the job needs (version, feature).
    Unsupported,
}

/// An error from a store, with enough context to act on and nothing secret.
#[derive(Debug, thiserror::Error)]
pub struct StoreError {
    pub store: StoreKind,
    /// `host:port` of the server involved (never with credentials).
    pub host: String,
    /// The unit being worked on, when there is one.
    pub unit: Option<String>,
    pub kind: ErrorKind,
    /// What happened, in the server's or driver's words (passwords removed).
    pub detail: String,
    /// What the user should do next.
    pub hint: String,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.store, self.host)?;
        if let Some(unit) = &self.unit {
            write!(f, " ({unit})")?;
        }
        write!(f, ": {}", self.detail)?;
        if !self.hint.is_empty() {
            write!(f, ". {}", self.hint)?;
        }
        Ok(())
    }
}

impl StoreError {
    pub fn new(
        store: StoreKind,
        host: impl Into<String>,
        kind: ErrorKind,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        StoreError {
            store,
            host: host.into(),
            unit: None,
            kind,
            detail: detail.into(),
            hint: hint.into(),
        }
    }

    /// Attach the unit being worked on.
    pub fn in_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::Connect)
    }
}

/// Errors of the engine and the job as a whole.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("job catalog {path}: {detail}. The job folder may be damaged; start over with --restart or use another --job folder")]
    Catalog { path: String, detail: String },

    #[error("the job folder is full: no space left on the device holding {path} ({detail}). The checkpoint before this point is kept and nothing was marked done that is not. Free space where the job folder is (or move the folder elsewhere), then run the same command with --resume")]
    JobFolderFull { path: String, detail: String },

    #[error("the job folder {job} was created for a different setup ({what}: was {was}, now {now}). Resume it with the same options, discard it with --restart, or pick another folder with --job")]
    SetupMismatch {
        job: String,
        what: String,
        was: String,
        now: String,
    },

    #[error("the job folder {job} already holds a job. Continue it with --resume, or discard it with --restart")]
    JobExists { job: String },

    #[error("no job in {job}. Run `offload copy` first, or point --job at the job folder")]
    NoJob { job: String },

    #[error("{count} unit(s) failed; the first: {first}. Fix the cause and run again with --resume to continue where it stopped")]
    UnitsFailed { count: usize, first: String },

    #[error("the {store} target restarted during the copy {times} time(s) and may have lost what was written into it ({durability}); the units it held are marked to copy again. Find out why it restarts (memory limit, supervisor, crash), then run the same command with --resume")]
    TargetRestarted {
        store: StoreKind,
        times: u32,
        durability: String,
    },

    #[error("interrupted; progress is saved. Run the same command with --resume to continue")]
    Interrupted,

    #[error("{0}")]
    Invalid(String),
}

impl CoreError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CoreError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl CoreError {
    /// An error of the catalog at `path`: [`CoreError::JobFolderFull`] when its device is full
    /// (a state to free space and resume from, not damage), else [`CoreError::Catalog`].
    pub fn of_catalog(path: String, e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return CoreError::JobFolderFull {
                path,
                detail: e.to_string(),
            };
        }
        CoreError::Catalog {
            path,
            detail: e.to_string(),
        }
    }
}

impl From<rusqlite::Error> for CoreError {
    fn from(e: rusqlite::Error) -> Self {
        CoreError::of_catalog(String::from("catalog.sqlite"), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: rusqlite::ErrorCode, extended: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code,
                extended_code: extended,
            },
            None,
        )
    }

    #[test]
    fn a_full_disk_under_the_catalog_says_to_free_space_and_resume_not_damage() {
        let full = CoreError::of_catalog(
            "/jobs/a/catalog.sqlite".into(),
            sqlite(rusqlite::ErrorCode::DiskFull, 13),
        );
        let said = full.to_string();
        assert!(matches!(full, CoreError::JobFolderFull { .. }), "{said}");
        assert!(said.contains("the job folder is full"), "{said}");
        assert!(said.contains("/jobs/a/catalog.sqlite"), "{said}");
        assert!(
            said.contains("Free space") && said.contains("--resume"),
            "{said}"
        );
        assert!(!said.contains("damaged"), "{said}");

        let other =
            CoreError::of_catalog("c".into(), sqlite(rusqlite::ErrorCode::NotADatabase, 26));
        assert!(matches!(other, CoreError::Catalog { .. }));
    }
}
