//! The job catalog: one SQLite file in the job folder that records the setup a job was started
//! with, every unit and its cursor, phase times and events, so a crash or Ctrl-C resumes where it
//! stopped and a resume against a different setup is refused. Never holds a secret.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::epoch::TargetEpoch;
use super::error::CoreError;
use super::follow::{FollowCheckpoint, StreamPosition, Touched};
use super::progress::Phase;
use super::store::{Cursor, StoreKind, Unit};

pub const CATALOG_FILE: &str = "catalog.sqlite";

/// Touched keys the catalog keeps per unit before it records the unit as touched whole (and the
/// verify in the window checks all of it).
pub const TOUCHED_KEYS_PER_UNIT: usize = 20_000;

/// A unit a follower changed and the keys it changed there (`None`: the unit as a whole).
pub type TouchedUnit = (String, Option<Vec<Cursor>>);

/// The `touched` key that stands for a whole unit.
const WHOLE_UNIT: &str = "*";

/// What a job was started with. `guard` is compared on resume; `endpoints` lets `verify` and
/// `status` reconnect from the job folder alone (URLs without passwords, and where each password
/// comes from).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Setup {
    pub tool_version: String,
    pub guard: serde_json::Value,
    pub endpoints: serde_json::Value,
}

/// Where a unit stands in the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitState {
    Pending,
    Copying,
    Copied,
    Skipped,
    Failed,
}

impl UnitState {
    fn as_str(self) -> &'static str {
        match self {
            UnitState::Pending => "pending",
            UnitState::Copying => "copying",
            UnitState::Copied => "copied",
            UnitState::Skipped => "skipped",
            UnitState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> UnitState {
        match s {
            "copying" => UnitState::Copying,
            "copied" => UnitState::Copied,
            "skipped" => UnitState::Skipped,
            "failed" => UnitState::Failed,
            _ => UnitState::Pending,
        }
    }
}

/// A unit as the catalog knows it.
#[derive(Debug, Clone, Serialize)]
pub struct UnitRecord {
    pub unit: Unit,
    pub state: UnitState,
    pub cursor: Option<Cursor>,
    pub rows_done: u64,
    pub bytes_done: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub verify_state: Option<String>,
    /// The unit's last verification, as JSON.
    pub verify_detail: Option<String>,
    pub updated_at: Option<String>,
}

/// Whose a phase is: the whole job's, or one store's (Meilisearch's reindex included). Stored
/// as `job` or the store's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseOwner {
    Job,
    Store(StoreKind),
}

impl PhaseOwner {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseOwner::Job => "job",
            PhaseOwner::Store(kind) => kind.as_str(),
        }
    }
}

impl From<StoreKind> for PhaseOwner {
    fn from(kind: StoreKind) -> Self {
        PhaseOwner::Store(kind)
    }
}

impl From<&StoreKind> for PhaseOwner {
    fn from(kind: &StoreKind) -> Self {
        PhaseOwner::Store(*kind)
    }
}

/// How the last run of a checking phase (the job's verify, a reindex) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Finished and found both sides equal.
    Clean,
    /// Finished and found differences.
    Differs,
    /// Started and not finished (stopped, killed or failed part way).
    Unfinished,
}

impl Verdict {
    /// The detail a finished phase records: `clean` or `differs`.
    pub fn of(clean: bool) -> &'static str {
        if clean {
            "clean"
        } else {
            "differs"
        }
    }
}

/// A phase of one store (or of the job, with store `job`).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    pub store: String,
    pub phase: String,
    pub started_at: Option<String>,
    pub done_at: Option<String>,
    pub detail: Option<String>,
}

/// The SQLite job catalog.
pub struct Catalog {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// Now, as the catalog writes times (RFC 3339, UTC).
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS setup (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS phase (
    store TEXT NOT NULL, name TEXT NOT NULL, started_at TEXT, done_at TEXT, detail TEXT,
    PRIMARY KEY (store, name));
CREATE TABLE IF NOT EXISTS unit (
    store TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL, spec TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', cursor TEXT, rows_done INTEGER NOT NULL DEFAULT 0,
    bytes_done INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    verify_state TEXT, verify_detail TEXT, updated_at TEXT,
    PRIMARY KEY (store, name));
CREATE TABLE IF NOT EXISTS touched (
    store TEXT NOT NULL, unit TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (store, unit, key));
CREATE TABLE IF NOT EXISTS event (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, level TEXT NOT NULL, store TEXT, unit TEXT,
    message TEXT NOT NULL);
";

impl Catalog {
    /// The catalog file of a job folder.
    pub fn file_in(job: &Path) -> PathBuf {
        job.join(CATALOG_FILE)
    }

    /// Whether a job folder holds a catalog.
    pub fn exists(job: &Path) -> bool {
        Self::file_in(job).is_file()
    }

    fn connect(path: &Path) -> Result<Connection, CoreError> {
        let err = |e: rusqlite::Error| CoreError::of_catalog(path.display().to_string(), e);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(conn)
    }

    /// Start a new job in `job` (created when missing). Fails when a job is already there.
    pub fn create(job: &Path, setup: &Setup) -> Result<Catalog, CoreError> {
        if Self::exists(job) {
            return Err(CoreError::JobExists {
                job: job.display().to_string(),
            });
        }
        std::fs::create_dir_all(job).map_err(|e| CoreError::Catalog {
            path: job.display().to_string(),
            detail: format!("cannot create the job folder: {e}"),
        })?;
        let path = Self::file_in(job);
        let conn = Self::connect(&path)?;
        let catalog = Catalog {
            path,
            conn: Mutex::new(conn),
        };
        catalog.put_setup(
            "setup",
            &serde_json::to_string(setup).expect("setup serializes"),
        )?;
        catalog.put_setup("created_at", &now())?;
        Ok(catalog)
    }

    /// Open the job in `job`.
    pub fn open(job: &Path) -> Result<Catalog, CoreError> {
        if !Self::exists(job) {
            return Err(CoreError::NoJob {
                job: job.display().to_string(),
            });
        }
        let path = Self::file_in(job);
        let conn = Self::connect(&path)?;
        Ok(Catalog {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// Remove a job folder's catalog (for `--restart`).
    pub fn discard(job: &Path) -> Result<(), CoreError> {
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{}", Self::file_in(job).display(), suffix));
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| CoreError::Catalog {
                    path: p.display().to_string(),
                    detail: format!("cannot remove: {e}"),
                })?;
            }
        }
        Ok(())
    }

    fn err(&self, e: rusqlite::Error) -> CoreError {
        CoreError::of_catalog(self.path.display().to_string(), e)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, CoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| self.err(e))
    }

    fn delete_setup(&self, key: &str) -> Result<(), CoreError> {
        self.with(|c| {
            c.execute("DELETE FROM setup WHERE key = ?1", [key])
                .map(|_| ())
        })
    }

    fn put_setup(&self, key: &str, value: &str) -> Result<(), CoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO setup(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
        })
    }

    /// The setup the job was created with.
    pub fn setup(&self) -> Result<Setup, CoreError> {
        let text: Option<String> = self.with(|c| {
            c.query_row("SELECT value FROM setup WHERE key = 'setup'", [], |r| {
                r.get(0)
            })
            .optional()
        })?;
        let text = text.ok_or_else(|| CoreError::Catalog {
            path: self.path.display().to_string(),
            detail: "no setup recorded".into(),
        })?;
        serde_json::from_str(&text).map_err(|e| CoreError::Catalog {
            path: self.path.display().to_string(),
            detail: format!("unreadable setup: {e}"),
        })
    }

    /// Refuse to continue a job whose recorded guard differs from `setup.guard`.
    pub fn check_setup(&self, job: &Path, setup: &Setup) -> Result<(), CoreError> {
        let recorded = self.setup()?;
        if let Some((what, was, now)) = first_difference("", &recorded.guard, &setup.guard) {
            return Err(CoreError::SetupMismatch {
                job: job.display().to_string(),
                what,
                was,
                now,
            });
        }
        Ok(())
    }

    /// The life of a store's target that the job's writes went into, as last recorded.
    pub fn target_epoch(&self, store: StoreKind) -> Result<Option<TargetEpoch>, CoreError> {
        self.setup_value(&format!("target_epoch:{store}"))
    }

    /// A value the catalog keeps as JSON in the setup table under `key`, when there is one.
    fn setup_value<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CoreError> {
        let text: Option<String> = self.with(|c| {
            c.query_row("SELECT value FROM setup WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
        })?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| CoreError::Catalog {
                path: self.path.display().to_string(),
                detail: format!("unreadable {key}: {e}"),
            })
        })
        .transpose()
    }

    /// Where a store's change stream must be read from to apply every change the job's copy
    /// may have missed (see `Store::stream_start`), as last recorded.
    pub fn stream_start(&self, store: StoreKind) -> Result<Option<StreamPosition>, CoreError> {
        self.setup_value(&format!("stream_start:{store}"))
    }

    /// Record (or with `None`, forget) where a store's change stream must be read from.
    pub fn record_stream_start(
        &self,
        store: StoreKind,
        position: Option<&StreamPosition>,
    ) -> Result<(), CoreError> {
        let key = format!("stream_start:{store}");
        match position {
            Some(p) => self.put_setup(
                &key,
                &serde_json::to_string(p).expect("position serializes"),
            ),
            None => self.delete_setup(&key),
        }
    }

    /// A store's follower checkpoint, when it has followed.
    pub fn follow_checkpoint(
        &self,
        store: StoreKind,
    ) -> Result<Option<FollowCheckpoint>, CoreError> {
        self.setup_value(&format!("follow:{store}"))
    }

    /// After units were copied again: a follower's checkpoint moves to `position` (the new
    /// stream start), or is forgotten with `None`; its counters are kept.
    pub fn move_follow_checkpoint(
        &self,
        store: StoreKind,
        position: Option<&StreamPosition>,
    ) -> Result<(), CoreError> {
        let Some(mut checkpoint) = self.follow_checkpoint(store)? else {
            return Ok(());
        };
        let key = format!("follow:{store}");
        match position {
            Some(p) => {
                checkpoint.position = p.clone();
                self.put_setup(
                    &key,
                    &serde_json::to_string(&checkpoint).expect("checkpoint serializes"),
                )
            }
            None => self.delete_setup(&key),
        }
    }

    /// After a follower applied changes: its new checkpoint and the keys it touched, in one
    /// transaction, so a crash leaves either both or neither. A unit with more than
    /// [`TOUCHED_KEYS_PER_UNIT`] touched keys is recorded as touched whole.
    pub fn record_follow(
        &self,
        store: StoreKind,
        checkpoint: &FollowCheckpoint,
        touched: &[Touched],
    ) -> Result<(), CoreError> {
        let text = serde_json::to_string(checkpoint).expect("checkpoint serializes");
        let store_name = store.as_str();
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO setup(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![format!("follow:{store}"), text],
            )?;
            insert_touched(&tx, store_name, touched)?;
            tx.commit()
        })
    }

    /// Keys (or whole units) something other than a follower wrote again on the target since
    /// the last clean verify (the delta pass), so the verify in the window checks them.
    pub fn record_touched(&self, store: StoreKind, touched: &[Touched]) -> Result<(), CoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            insert_touched(&tx, store.as_str(), touched)?;
            tx.commit()
        })
    }

    /// What followers changed since the last clean verify, per store and unit: the keys, or
    /// `None` for a unit touched whole.
    pub fn touched(&self, store: StoreKind) -> Result<Vec<TouchedUnit>, CoreError> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut q =
                c.prepare("SELECT unit, key FROM touched WHERE store = ?1 ORDER BY unit, key")?;
            let rows = q
                .query_map([store.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let mut out: Vec<TouchedUnit> = Vec::new();
        for (unit, key) in rows {
            if out.last().map(|(u, _)| u != &unit).unwrap_or(true) {
                out.push((unit.clone(), Some(Vec::new())));
            }
            let entry = out.last_mut().expect("pushed above");
            if key == WHOLE_UNIT {
                entry.1 = None;
            } else if let Some(keys) = entry.1.as_mut() {
                let value = serde_json::from_str(&key).map_err(|e| CoreError::Catalog {
                    path: self.path.display().to_string(),
                    detail: format!("unreadable touched key of {unit}: {e}"),
                })?;
                keys.push(Cursor(value));
            }
        }
        Ok(out)
    }

    /// Forget what followers touched (a clean verify covered it).
    pub fn clear_touched(&self, store: StoreKind) -> Result<(), CoreError> {
        self.with(|c| {
            c.execute("DELETE FROM touched WHERE store = ?1", [store.as_str()])
                .map(|_| ())
        })
    }

    /// Record the life of a store's target that the job's writes go into from now on.
    pub fn record_target_epoch(
        &self,
        store: StoreKind,
        epoch: &TargetEpoch,
    ) -> Result<(), CoreError> {
        let text = serde_json::to_string(epoch).expect("epoch serializes");
        self.put_setup(&format!("target_epoch:{store}"), &text)
    }

    /// A store's target lost what the job wrote into it (it restarted without keeping it): every
    /// unit of the store that has anything written starts over, its copy and finish phases count
    /// as not done, and the job's last verify no longer counts. Units skipped as the operator
    /// asked stay skipped. One transaction; gives the names of the units reset.
    pub fn redo_store(&self, store: StoreKind) -> Result<Vec<String>, CoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let names = {
                let mut stmt = tx.prepare(
                    "SELECT name FROM unit WHERE store = ?1 AND state <> 'skipped'
                       AND (state <> 'pending' OR cursor IS NOT NULL OR rows_done > 0)
                     ORDER BY seq",
                )?;
                let names = stmt
                    .query_map([store.as_str()], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                names
            };
            tx.execute(
                "UPDATE unit SET state = 'pending', cursor = NULL, rows_done = 0, bytes_done = 0,
                        verify_state = NULL, verify_detail = NULL, updated_at = ?2
                 WHERE store = ?1 AND state <> 'skipped'
                   AND (state <> 'pending' OR cursor IS NOT NULL OR rows_done > 0)",
                params![store.as_str(), now()],
            )?;
            tx.execute(
                "DELETE FROM phase WHERE (store = ?1 AND name IN ('copy', 'finish'))
                    OR (store = 'job' AND name = 'verify')",
                [store.as_str()],
            )?;
            tx.commit()?;
            Ok(names)
        })
    }

    /// Record units (in plan order); units already known keep their state.
    pub fn add_units(&self, units: &[Unit]) -> Result<(), CoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT OR IGNORE INTO unit(store, name, seq, spec, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let at = now();
                for (seq, u) in units.iter().enumerate() {
                    let spec = serde_json::to_string(u).expect("unit serializes");
                    stmt.execute(params![u.store.as_str(), u.name, seq as i64, spec, at])?;
                }
            }
            tx.commit()
        })
    }

    /// Every unit of a store (or of all stores with `None`), in plan order.
    pub fn units(&self, store: Option<StoreKind>) -> Result<Vec<UnitRecord>, CoreError> {
        let rows = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT spec, state, cursor, rows_done, bytes_done, attempts, last_error,
                        verify_state, updated_at, verify_detail
                 FROM unit WHERE (?1 IS NULL OR store = ?1) ORDER BY store, seq",
            )?;
            let rows = stmt
                .query_map(params![store.map(|s| s.as_str())], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, Option<String>>(9)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let bad = |e: serde_json::Error| CoreError::Catalog {
            path: self.path.display().to_string(),
            detail: format!("unreadable unit record: {e}"),
        };
        rows.into_iter()
            .map(
                |(spec, state, cursor, rows, bytes, attempts, err, verify, at, detail)| {
                    Ok(UnitRecord {
                        unit: read_unit(&spec).map_err(bad)?,
                        state: UnitState::parse(&state),
                        cursor: match cursor {
                            Some(c) => Some(Cursor(serde_json::from_str(&c).map_err(bad)?)),
                            None => None,
                        },
                        rows_done: rows as u64,
                        bytes_done: bytes as u64,
                        attempts: attempts as u32,
                        last_error: err,
                        verify_state: verify,
                        verify_detail: detail,
                        updated_at: at,
                    })
                },
            )
            .collect()
    }

    /// Move a unit to `state`, recording `error` (cleared when `None`).
    pub fn set_state(
        &self,
        unit: &Unit,
        state: UnitState,
        error: Option<&str>,
    ) -> Result<(), CoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE unit SET state = ?3, last_error = ?4, updated_at = ?5,
                        attempts = attempts + (CASE WHEN ?4 IS NULL THEN 0 ELSE 1 END),
                        verify_state = CASE WHEN ?3 = 'copying' THEN NULL ELSE verify_state END
                 WHERE store = ?1 AND name = ?2",
                params![unit.store.as_str(), unit.name, state.as_str(), error, now()],
            )
            .map(|_| ())
        })
    }

    /// Start a unit over: no cursor, nothing done.
    pub fn reset_unit(&self, unit: &Unit) -> Result<(), CoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE unit SET state = 'pending', cursor = NULL, rows_done = 0, bytes_done = 0,
                        verify_state = NULL, verify_detail = NULL, updated_at = ?3
                 WHERE store = ?1 AND name = ?2",
                params![unit.store.as_str(), unit.name, now()],
            )
            .map(|_| ())
        })
    }

    /// Record that a batch was written: the new cursor and the counts it added, in one transaction.
    pub fn record_batch(
        &self,
        unit: &Unit,
        cursor: Option<&Cursor>,
        rows: u64,
        bytes: u64,
    ) -> Result<(), CoreError> {
        let cursor = cursor.map(|c| serde_json::to_string(&c.0).expect("cursor serializes"));
        self.with(|c| {
            c.execute(
                "UPDATE unit SET cursor = ?3, rows_done = rows_done + ?4,
                        bytes_done = bytes_done + ?5, updated_at = ?6
                 WHERE store = ?1 AND name = ?2",
                params![
                    unit.store.as_str(),
                    unit.name,
                    cursor,
                    rows as i64,
                    bytes as i64,
                    now()
                ],
            )
            .map(|_| ())
        })
    }

    /// Record a unit's verification outcome (`matched` or `differs`).
    pub fn set_verified(&self, unit: &Unit, state: &str, detail: &str) -> Result<(), CoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE unit SET verify_state = ?3, verify_detail = ?4, updated_at = ?5
                 WHERE store = ?1 AND name = ?2",
                params![unit.store.as_str(), unit.name, state, detail, now()],
            )
            .map(|_| ())
        })
    }

    /// Record that a phase starts (again): its end and detail are cleared.
    pub fn phase_start(&self, owner: impl Into<PhaseOwner>, phase: Phase) -> Result<(), CoreError> {
        let owner = owner.into();
        self.with(|c| {
            c.execute(
                "INSERT INTO phase(store, name, started_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(store, name) DO UPDATE SET started_at = excluded.started_at,
                        done_at = NULL, detail = NULL",
                params![owner.as_str(), phase.as_str(), now()],
            )
            .map(|_| ())
        })
    }

    /// Record that a phase finished, with a word on how (`clean`, `differs`, a path).
    pub fn phase_done(
        &self,
        owner: impl Into<PhaseOwner>,
        phase: Phase,
        detail: &str,
    ) -> Result<(), CoreError> {
        let owner = owner.into();
        self.with(|c| {
            c.execute(
                "INSERT INTO phase(store, name, started_at, done_at, detail) VALUES (?1, ?2, ?3, ?3, ?4)
                 ON CONFLICT(store, name) DO UPDATE SET done_at = excluded.done_at,
                        detail = excluded.detail",
                params![owner.as_str(), phase.as_str(), now(), detail],
            )
            .map(|_| ())
        })
    }

    /// Whether a phase finished (in this or an earlier run).
    pub fn is_phase_done(
        &self,
        owner: impl Into<PhaseOwner>,
        phase: Phase,
    ) -> Result<bool, CoreError> {
        Ok(self
            .phase(owner.into(), phase)?
            .is_some_and(|p| p.done_at.is_some()))
    }

    /// One phase's record, if it ever started.
    pub fn phase(&self, owner: PhaseOwner, phase: Phase) -> Result<Option<PhaseRecord>, CoreError> {
        Ok(self
            .phases()?
            .into_iter()
            .find(|p| p.store == owner.as_str() && p.phase == phase.as_str()))
    }

    /// How a checking phase last ended; `None` when it never ran.
    fn verdict(&self, owner: PhaseOwner, phase: Phase) -> Result<Option<Verdict>, CoreError> {
        Ok(self
            .phase(owner, phase)?
            .map(|p| match (p.done_at.is_some(), p.detail.as_deref()) {
                (false, _) => Verdict::Unfinished,
                (true, Some("clean")) => Verdict::Clean,
                (true, _) => Verdict::Differs,
            }))
    }

    /// How the job's last verify ended; `None` when the job was never verified.
    pub fn last_verify(&self) -> Result<Option<Verdict>, CoreError> {
        self.verdict(PhaseOwner::Job, Phase::Verify)
    }

    /// A full verify (every unit, every chunk) finished: it is the baseline later verifies in
    /// the window start from. Every unit not in `differing` was equal then; those in it (which
    /// differed, or could not be compared) count as touched whole, so a verify in the window
    /// compares them again. Followers and delta passes add what they write after.
    pub fn record_full_verify(&self, differing: &[(StoreKind, String)]) -> Result<(), CoreError> {
        let at = now();
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO setup(key, value) VALUES ('last_full_verify', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [&serde_json::to_string(&at).expect("text serializes")],
            )?;
            tx.execute("DELETE FROM touched", [])?;
            for (store, unit) in differing {
                tx.execute(
                    "INSERT OR IGNORE INTO touched(store, unit, key) VALUES (?1, ?2, ?3)",
                    params![store.as_str(), unit, WHOLE_UNIT],
                )?;
            }
            tx.commit()
        })
    }

    /// When the last full verify finished, if nothing was copied since outside what followers
    /// and delta passes record as touched.
    pub fn last_full_verify(&self) -> Result<Option<String>, CoreError> {
        self.setup_value("last_full_verify")
    }

    /// Data reached the target by a way that records no touched keys (a copy run): the last
    /// full verify no longer covers the job.
    pub fn forget_full_verify(&self) -> Result<(), CoreError> {
        self.with(|c| {
            c.execute("DELETE FROM setup WHERE key = 'last_full_verify'", [])
                .map(|_| ())
        })
    }

    /// How the job's last Meilisearch reindex ended; `None` when it never ran.
    pub fn last_reindex(&self) -> Result<Option<Verdict>, CoreError> {
        self.verdict(PhaseOwner::Store(StoreKind::Meilisearch), Phase::Reindex)
    }

    /// The stores whose source writers a run of this job held off and did not let in again
    /// (a run that was killed while it held them).
    pub fn held_freezes(&self) -> Result<Vec<StoreKind>, CoreError> {
        Ok(self
            .phases()?
            .into_iter()
            .filter(|p| p.phase == Phase::Freeze.as_str() && p.done_at.is_none())
            .filter_map(|p| StoreKind::parse(&p.store))
            .collect())
    }

    pub fn phases(&self) -> Result<Vec<PhaseRecord>, CoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT store, name, started_at, done_at, detail FROM phase ORDER BY started_at",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(PhaseRecord {
                        store: r.get(0)?,
                        phase: r.get(1)?,
                        started_at: r.get(2)?,
                        done_at: r.get(3)?,
                        detail: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Append an event to the job's history.
    pub fn event(
        &self,
        level: &str,
        store: Option<StoreKind>,
        unit: Option<&str>,
        message: &str,
    ) -> Result<(), CoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO event(at, level, store, unit, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![now(), level, store.map(|s| s.as_str()), unit, message],
            )
            .map(|_| ())
        })
    }
}

/// A unit as the catalog stored it. Catalogs written before `Unit::size_known` was a field said
/// "not sized" with `"sized": false` in the unit's spec; that still reads as not sized.
fn read_unit(text: &str) -> Result<Unit, serde_json::Error> {
    let mut unit: Unit = serde_json::from_str(text)?;
    if unit.spec.get("sized") == Some(&serde_json::Value::Bool(false)) {
        unit.size_known = false;
    }
    Ok(unit)
}

/// The first place two JSON values differ, as (path, was, now).
fn first_difference(
    path: &str,
    was: &serde_json::Value,
    now: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    match (was, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_difference(&sub, x, y) {
                    return Some(d);
                }
            }
            None
        }
        _ if was == now => None,
        _ => Some((
            if path.is_empty() {
                "setup".into()
            } else {
                path.into()
            },
            render(was),
            render(now),
        )),
    }
}

fn render(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "(none)".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Record touched keys in an open transaction: a unit touched whole, or with more than
/// [`TOUCHED_KEYS_PER_UNIT`] keys, keeps only the whole-unit mark.
fn insert_touched(
    tx: &rusqlite::Transaction,
    store_name: &str,
    touched: &[Touched],
) -> rusqlite::Result<()> {
    let mut by_unit: std::collections::BTreeMap<&str, Option<Vec<String>>> =
        std::collections::BTreeMap::new();
    for t in touched {
        let entry = by_unit.entry(&t.unit).or_insert_with(|| Some(Vec::new()));
        match (&t.key, entry.as_mut()) {
            (Some(k), Some(keys)) => keys.push(k.0.to_string()),
            (None, _) => *entry = None,
            (Some(_), None) => {}
        }
    }
    let mark_whole = |tx: &rusqlite::Transaction, unit: &str| -> rusqlite::Result<()> {
        tx.execute(
            "DELETE FROM touched WHERE store = ?1 AND unit = ?2",
            params![store_name, unit],
        )?;
        tx.execute(
            "INSERT INTO touched(store, unit, key) VALUES (?1, ?2, ?3)",
            params![store_name, unit, WHOLE_UNIT],
        )
        .map(|_| ())
    };
    for (unit, keys) in by_unit {
        let whole_already = tx
            .query_row(
                "SELECT 1 FROM touched WHERE store = ?1 AND unit = ?2 AND key = ?3",
                params![store_name, unit, WHOLE_UNIT],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if whole_already {
            continue;
        }
        let Some(keys) = keys else {
            mark_whole(tx, unit)?;
            continue;
        };
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO touched(store, unit, key) VALUES (?1, ?2, ?3)",
            )?;
            for key in &keys {
                insert.execute(params![store_name, unit, key])?;
            }
        }
        let count: i64 = tx.query_row(
            "SELECT COUNT(*) FROM touched WHERE store = ?1 AND unit = ?2",
            params![store_name, unit],
            |r| r.get(0),
        )?;
        if count as usize > TOUCHED_KEYS_PER_UNIT {
            mark_whole(tx, unit)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_recorded_with_the_old_sized_key_read_as_not_sized() {
        let old = r#"{"store":"mongodb","name":"openedx.c","container":"openedx","object":"c",
            "range":{"after":null,"upto":null},"est_rows":0,"est_bytes":0,"spec":{"sized":false}}"#;
        assert!(!read_unit(old).unwrap().size_known);
        let new = old.replace(r#""sized":false"#, r#""x":1"#);
        assert!(read_unit(&new).unwrap().size_known);
    }

    #[test]
    fn a_follow_checkpoint_and_its_touched_keys_are_kept_and_a_crowded_unit_counts_whole() {
        use crate::core::follow::{FollowCheckpoint, Lag, StreamPosition, Touched};
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup {
            tool_version: "t".into(),
            guard: serde_json::json!({}),
            endpoints: serde_json::json!({}),
        };
        let catalog = Catalog::create(dir.path(), &setup).unwrap();
        let kind = StoreKind::Mysql;
        assert_eq!(catalog.stream_start(kind).unwrap(), None);
        let start = StreamPosition(serde_json::json!({"file": "bin.000001", "pos": 4}));
        catalog.record_stream_start(kind, Some(&start)).unwrap();
        assert_eq!(catalog.stream_start(kind).unwrap(), Some(start));
        catalog.record_stream_start(kind, None).unwrap();
        assert_eq!(catalog.stream_start(kind).unwrap(), None);

        let checkpoint = FollowCheckpoint {
            position: StreamPosition(serde_json::json!({"file": "bin.000001", "pos": 900})),
            events: 3,
            transactions: 1,
            lag: Lag::default(),
            at: now(),
        };
        let key = |k: i64| Touched {
            unit: "db.t".into(),
            key: Some(Cursor(serde_json::json!([k]))),
        };
        catalog
            .record_follow(kind, &checkpoint, &[key(1), key(2), key(1)])
            .unwrap();
        assert_eq!(
            catalog.follow_checkpoint(kind).unwrap(),
            Some(checkpoint.clone())
        );
        assert_eq!(
            catalog.touched(kind).unwrap(),
            vec![(
                "db.t".to_string(),
                Some(vec![
                    Cursor(serde_json::json!([1])),
                    Cursor(serde_json::json!([2]))
                ])
            )]
        );
        let many: Vec<Touched> = (0..=TOUCHED_KEYS_PER_UNIT as i64).map(key).collect();
        catalog.record_follow(kind, &checkpoint, &many).unwrap();
        assert_eq!(
            catalog.touched(kind).unwrap(),
            vec![("db.t".to_string(), None)]
        );
        catalog.record_follow(kind, &checkpoint, &[key(5)]).unwrap();
        assert_eq!(
            catalog.touched(kind).unwrap(),
            vec![("db.t".to_string(), None)]
        );
        catalog.clear_touched(kind).unwrap();
        assert!(catalog.touched(kind).unwrap().is_empty());
        catalog.record_follow(kind, &checkpoint, &[key(7)]).unwrap();
        catalog
            .record_full_verify(&[(kind, "db.u".into())])
            .unwrap();
        assert_eq!(
            catalog.touched(kind).unwrap(),
            vec![("db.u".to_string(), None)]
        );
        assert!(catalog.last_full_verify().unwrap().is_some());
        catalog.forget_full_verify().unwrap();
        assert!(catalog.last_full_verify().unwrap().is_none());
    }

    #[test]
    fn a_store_whose_target_lost_its_writes_starts_its_written_units_over() {
        use crate::core::store::KeyRange;
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup {
            tool_version: "t".into(),
            guard: serde_json::json!({}),
            endpoints: serde_json::json!({}),
        };
        let catalog = Catalog::create(dir.path(), &setup).unwrap();
        let unit = |name: &str, store| Unit {
            store,
            name: name.into(),
            container: "c".into(),
            object: name.into(),
            range: KeyRange::default(),
            est_rows: 1,
            est_bytes: 1,
            size_known: true,
            spec: serde_json::Value::Null,
        };
        let units = [
            unit("copied", StoreKind::Redis),
            unit("part", StoreKind::Redis),
            unit("skipped", StoreKind::Redis),
            unit("untouched", StoreKind::Redis),
            unit("other", StoreKind::Mysql),
        ];
        catalog.add_units(&units).unwrap();
        catalog.record_batch(&units[0], None, 5, 50).unwrap();
        catalog
            .set_state(&units[0], UnitState::Copied, None)
            .unwrap();
        let cursor = Cursor(serde_json::json!({"scan": "7"}));
        catalog
            .record_batch(&units[1], Some(&cursor), 3, 30)
            .unwrap();
        catalog
            .set_state(&units[2], UnitState::Skipped, None)
            .unwrap();
        catalog
            .set_state(&units[4], UnitState::Copied, None)
            .unwrap();
        catalog
            .phase_done(StoreKind::Redis, Phase::Finish, "")
            .unwrap();
        catalog
            .phase_done(PhaseOwner::Job, Phase::Verify, "clean")
            .unwrap();
        let epoch = TargetEpoch {
            process: "run-1".into(),
            started_at: None,
            keeps_writes: false,
            durability: "no persistence".into(),
        };
        catalog
            .record_target_epoch(StoreKind::Redis, &epoch)
            .unwrap();

        let reset = catalog.redo_store(StoreKind::Redis).unwrap();
        assert_eq!(reset, vec!["copied".to_string(), "part".to_string()]);
        let states: Vec<(String, UnitState, bool, u64)> = catalog
            .units(None)
            .unwrap()
            .into_iter()
            .map(|r| (r.unit.name, r.state, r.cursor.is_some(), r.rows_done))
            .collect();
        assert!(states.contains(&("copied".into(), UnitState::Pending, false, 0)));
        assert!(states.contains(&("part".into(), UnitState::Pending, false, 0)));
        assert!(states.contains(&("skipped".into(), UnitState::Skipped, false, 0)));
        assert!(states.contains(&("other".into(), UnitState::Copied, false, 0)));
        assert!(!catalog
            .is_phase_done(StoreKind::Redis, Phase::Finish)
            .unwrap());
        assert_eq!(catalog.last_verify().unwrap(), None);
        assert_eq!(catalog.target_epoch(StoreKind::Redis).unwrap(), Some(epoch));
        assert_eq!(catalog.target_epoch(StoreKind::Mysql).unwrap(), None);
    }

    #[test]
    fn first_difference_names_the_path() {
        let a = serde_json::json!({"mysql": {"target": "a:1", "filters": ["x"]}});
        let b = serde_json::json!({"mysql": {"target": "b:1", "filters": ["x"]}});
        let d = first_difference("", &a, &b).unwrap();
        assert_eq!(d, ("mysql.target".into(), "a:1".into(), "b:1".into()));
        assert!(first_difference("", &a, &a).is_none());
    }
}
