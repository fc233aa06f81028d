//! The contract between the engine and a store: what a unit of work is, and the handful of
//! operations a store performs (list units, prepare the target, copy one batch after a cursor,
//! digest a key range). Everything else (order, concurrency, retries, checkpoints) is the runner's.

use std::fmt;

use async_trait::async_trait;

use super::follow::{Follower, StreamPosition};
use serde::{Deserialize, Serialize};

use super::epoch::TargetEpoch;
use super::error::StoreError;

/// The kinds of store offload knows, in Tutor's offloading order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Mysql,
    Mongodb,
    Redis,
    Objects,
    Meilisearch,
}

impl StoreKind {
    pub const ALL: [StoreKind; 5] = [
        StoreKind::Mysql,
        StoreKind::Mongodb,
        StoreKind::Redis,
        StoreKind::Objects,
        StoreKind::Meilisearch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Mysql => "mysql",
            StoreKind::Mongodb => "mongodb",
            StoreKind::Redis => "redis",
            StoreKind::Objects => "objects",
            StoreKind::Meilisearch => "meilisearch",
        }
    }

    /// What the store's containers' parts and its records are called, for people:
    /// `("tables", "rows")` for MySQL.
    pub fn nouns(self) -> (&'static str, &'static str) {
        match self {
            StoreKind::Mysql => ("tables", "rows"),
            StoreKind::Mongodb => ("collections", "documents"),
            StoreKind::Redis => ("databases", "keys"),
            StoreKind::Objects => ("key ranges", "objects"),
            StoreKind::Meilisearch => ("indexes", "documents"),
        }
    }

    pub fn parse(name: &str) -> Option<StoreKind> {
        StoreKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name.trim().to_ascii_lowercase())
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position inside a unit, opaque to the engine: the store writes it, the catalog keeps it,
/// and the store reads it back to continue after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor(pub serde_json::Value);

/// The part of a unit's key space it covers: keys strictly after `after`, up to and including `upto`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRange {
    pub after: Option<Cursor>,
    pub upto: Option<Cursor>,
}

/// One unit of work: a table (or a key range of it), a collection, a Redis database, a bucket prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    pub store: StoreKind,
    /// Unique within the store, stable across runs, e.g. `openedx.auth_user` or `openedx.big#2`.
    pub name: String,
    /// The database, bucket or keyspace that holds it.
    pub container: String,
    /// The table, collection or prefix inside the container.
    pub object: String,
    pub range: KeyRange,
    pub est_rows: u64,
    pub est_bytes: u64,
    /// Whether the store knows this unit's size. A store that could not size a unit in time
    /// sets it false and leaves the estimates at zero: the runner starts it after the sized
    /// units, and the plan says it was not sized. Catalogs written before the field read as sized.
    #[serde(default = "size_known_by_default")]
    pub size_known: bool,
    /// Store-specific details the store needs again later (key columns, flags).
    #[serde(default)]
    pub spec: serde_json::Value,
}

fn size_known_by_default() -> bool {
    true
}

impl Unit {
    /// Names of the units whose (container, object) is in `objects`, e.g. the occupied tables
    /// or collections a store found on its target.
    pub fn names_within(
        units: &[Unit],
        objects: &std::collections::BTreeSet<(String, String)>,
    ) -> Vec<String> {
        units
            .iter()
            .filter(|u| objects.contains(&(u.container.clone(), u.object.clone())))
            .map(|u| u.name.clone())
            .collect()
    }
}

/// What copying one batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub rows: u64,
    pub bytes: u64,
    /// Where to continue; `None` when the unit is complete.
    pub next: Option<Cursor>,
    /// Items of this batch the store could not copy and skipped, as (key, why): the rest went
    /// on, and the runner leaves the unit incomplete so a later run tries them again.
    pub failed: Vec<(String, String)>,
    /// Of `rows`, the items the target already held identical, so nothing was written (the
    /// objects store skips those); the delta pass reports only the rest as copied again.
    pub unchanged: u64,
}

/// Which side of the migration an operation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl Side {
    /// The word that starts the side's command-line flags: `from` (`--from-mysql`) or `to`.
    pub fn flag_prefix(self) -> &'static str {
        match self {
            Side::Source => "from",
            Side::Target => "to",
        }
    }

    /// The word that names the side in environment variables: `FROM`
    /// (`OFFLOAD_FROM_MYSQL_PASSWORD`) or `TO`.
    pub fn env_prefix(self) -> &'static str {
        match self {
            Side::Source => "FROM",
            Side::Target => "TO",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Count and content digest of the rows of one key range, computed the same way on both sides.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChunkDigest {
    pub rows: u64,
    pub bytes: u64,
    /// Hex digest; equal digests mean equal content.
    pub digest: String,
    /// The last key read, when the store orders by a key; `None` for an empty range or a keyless unit.
    pub last: Option<Cursor>,
    /// Rows by kind, for stores whose records come in kinds (Redis key types); empty otherwise.
    pub kinds: std::collections::BTreeMap<String, u64>,
}

/// The digest of one row (or document, key, object), named by its key for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDigest {
    /// Human-readable key (`id=42`), used to name differences.
    pub key: String,
    pub digest: [u8; 16],
    /// The row's key as a cursor, when the store can address single rows by key range (the
    /// delta pass then copies only the rows that differ); `None` for rows without a key.
    pub cursor: Option<Cursor>,
}

/// What to do when the target already holds data for a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IfExists {
    /// Stop before writing anything.
    #[default]
    Refuse,
    /// Leave existing data alone and do not copy that unit.
    Skip,
    /// Drop what is there and copy afresh.
    Replace,
}

/// One line of a plan: a prerequisite checked, with its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

/// What a store knows about its two ends before any work: server identities and prerequisites.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Survey {
    pub source_version: String,
    pub target_version: String,
    pub checks: Vec<Check>,
    /// Free-form notes for the operator (consistency, what each database is for).
    pub notes: Vec<String>,
}

/// A difference found outside the row data: schema, indexes, options, routines.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeDifference {
    pub container: String,
    pub object: String,
    pub detail: String,
}

/// Who a store's two ends are and what the job selected on them, for the job's resume guard
/// (addresses, users, server options; never a secret). Serialized, it is the store's entry in
/// the guard: `{"source": {"address": ..}, "target": {"address": ..}, "databases": ..}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub source: EndIdentity,
    pub target: EndIdentity,
    /// What was chosen to copy (databases, exclusions, options that shape the copy), as the
    /// store names it; written beside `source` and `target`.
    #[serde(flatten)]
    pub selection: serde_json::Map<String, serde_json::Value>,
}

/// One end of a store in its [`Identity`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndIdentity {
    /// `host:port`, or the folder of a filesystem source: what messages name the end by.
    pub address: String,
    /// The rest the store records of this end (user, auth source, kind), beside `address`.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Identity {
    pub fn new(source: EndIdentity, target: EndIdentity) -> Identity {
        Identity {
            source,
            target,
            selection: serde_json::Map::new(),
        }
    }

    /// This identity with one more selection entry.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Identity {
        self.selection.insert(key.to_string(), value);
        self
    }
}

impl EndIdentity {
    pub fn new(address: impl Into<String>) -> EndIdentity {
        EndIdentity {
            address: address.into(),
            details: serde_json::Map::new(),
        }
    }

    /// This end with one more detail.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> EndIdentity {
        self.details.insert(key.to_string(), value);
        self
    }
}

/// A store: a source and a target of one kind, and the mechanics of moving data between them.
///
/// Writes must be idempotent: the runner records a cursor after a batch is written, so a crash
/// replays at most the last batch.
#[async_trait]
pub trait Store: Send + Sync {
    fn kind(&self) -> StoreKind;

    /// Identities of both ends for the job's resume guard (`host:port`, user, server id; no secrets).
    fn identity(&self) -> Identity;

    /// Connect to both ends, read versions and check prerequisites.
    async fn survey(&self) -> Result<Survey, StoreError>;

    /// The units of work on the source, with size estimates.
    async fn inventory(&self) -> Result<Vec<Unit>, StoreError>;

    /// What the operator should know about these units from [`Store::inventory`] (units it could
    /// not size, and how to size them); shown with the plan.
    fn inventory_notes(&self, _units: &[Unit]) -> Vec<String> {
        Vec::new()
    }

    /// Names of the units whose target already holds data.
    async fn occupied(&self, units: &[Unit]) -> Result<Vec<String>, StoreError>;

    /// Once per job before any data: containers (databases, buckets), and with `Replace`, clearing
    /// the named occupied units.
    async fn prepare_target(
        &self,
        units: &[Unit],
        policy: IfExists,
        occupied: &[String],
    ) -> Result<(), StoreError>;

    /// Once per run before `begin_copy`: how many of the store's units earlier runs of the job
    /// copied, wholly or in part, so its notes can say what this run's reads do not cover.
    fn copied_by_earlier_runs(&self, _units: usize) {}

    /// The life of the target server that writes go into now (see [`TargetEpoch`]): the runner
    /// reads it before a run writes, before it records each batch and after each round of units,
    /// and copies again what a restart may have lost. `None`: the target keeps every write it
    /// acknowledged across restarts and needs no check (S3), or cannot tell.
    async fn target_epoch(&self) -> Result<Option<TargetEpoch>, StoreError> {
        Ok(None)
    }

    /// Once per run before copying: open what the run shares (a consistent snapshot of the source
    /// for `workers` concurrent batches). Returns a note on the consistency achieved.
    async fn begin_copy(&self, workers: usize) -> Result<String, StoreError>;

    /// Create what must exist on the target for this unit. Idempotent.
    async fn prepare(&self, unit: &Unit) -> Result<(), StoreError>;

    /// Copy the next batch of the unit after `after` (from the start when `None`).
    async fn copy_batch(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
    ) -> Result<BatchOutcome, StoreError>;

    /// After all units are copied: what is best created after data (triggers, views, routines,
    /// counters) and what was asked for on the side (users).
    async fn finish_target(&self) -> Result<Vec<String>, StoreError>;

    /// Release what `begin_copy` opened.
    async fn end_copy(&self);

    /// Digest the unit's rows after `after`, up to and including `upto`, at most `limit` rows
    /// in key order when `limit` is set.
    async fn digest_range(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<ChunkDigest, StoreError>;

    /// Per-row digests of a key range, at most `cap` of them, to name differences.
    async fn row_digests(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        cap: usize,
    ) -> Result<Vec<RowDigest>, StoreError>;

    /// Differences of shape between the two sides (schema, indexes, options) for these units.
    async fn compare_shape(&self, units: &[Unit]) -> Result<Vec<ShapeDifference>, StoreError>;

    /// Remove the target's rows of a key range (all of a keyless unit), so the range can be copied
    /// afresh by the delta pass. Stores that cannot do this say so.
    async fn clear_range(
        &self,
        unit: &Unit,
        _after: Option<&Cursor>,
        _upto: Option<&Cursor>,
    ) -> Result<(), StoreError> {
        Err(StoreError::new(
            self.kind(),
            "-",
            super::error::ErrorKind::Unsupported,
            format!("the {} store has no delta pass yet", self.kind()),
            "copy the unit again with --if-exists replace instead",
        )
        .in_unit(&unit.name))
    }

    /// Before writing into a target that `finish_target` already completed (the delta pass):
    /// remove what would react to the writes (triggers). `finish_target` puts it back.
    async fn pause_target_side_effects(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Hold the source's writers off (for the final pass); returns what was done, or `None` when
    /// the server offers no way. Must be undone by [`Store::thaw_source`]. `left_by_earlier_run`:
    /// a run of this job held them off and was stopped before letting them in, so a source found
    /// held off is this job's to release, not the operator's.
    async fn freeze_source(
        &self,
        _left_by_earlier_run: bool,
    ) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// Undo [`Store::freeze_source`]. Called on every path, also after errors and Ctrl-C.
    async fn thaw_source(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// After a run's copy (`end_copy`), and after a delta pass that copied some units again:
    /// where the source's change stream must be read from so that every change the job's reads
    /// may have missed is applied, combining `earlier` (what earlier runs recorded: the
    /// follower's checkpoint when it has followed, else the last stream start) with this
    /// process's reads. `None`: the store has no change stream, or
    /// this copy gives no exact point to follow from (then following starts with a fresh
    /// snapshot where the store can take one, else the final pass uses the delta).
    async fn stream_start(
        &self,
        _earlier: Option<&StreamPosition>,
    ) -> Result<Option<StreamPosition>, StoreError> {
        Ok(None)
    }

    /// Open the source's change stream at `from` (a position this store's `stream_start` or a
    /// follower's checkpoint gave) and apply it to the target. `units` are the job's units of
    /// this store, so touched keys are named by unit. Stores without a change stream say so.
    async fn follower(
        &self,
        _from: &StreamPosition,
        _units: &[Unit],
    ) -> Result<Box<dyn Follower>, StoreError> {
        Err(StoreError::new(
            self.kind(),
            "-",
            super::error::ErrorKind::Unsupported,
            format!("the {} store has no change stream to follow", self.kind()),
            "the final pass copies what changed with the delta pass (offload copy --resume --delta)",
        ))
    }

    /// Per-row digests of the rows with these keys on one side, computed as `row_digests` does
    /// (a key with no row is left out), for the verify in the window that checks only what a
    /// follower touched. Stores that cannot address single rows say so; the unit is then
    /// verified whole.
    async fn row_digests_at(
        &self,
        _side: Side,
        unit: &Unit,
        _keys: &[Cursor],
    ) -> Result<Vec<RowDigest>, StoreError> {
        Err(StoreError::new(
            self.kind(),
            "-",
            super::error::ErrorKind::Unsupported,
            format!("the {} store cannot digest single rows by key", self.kind()),
            "the unit is verified whole instead",
        )
        .in_unit(&unit.name))
    }

    /// A key range of a unit in words, for reports (`id > 10 AND id <= 20`).
    fn render_range(&self, _unit: &Unit, after: Option<&Cursor>, upto: Option<&Cursor>) -> String {
        let show = |c: Option<&Cursor>| c.map(|c| c.0.to_string()).unwrap_or_else(|| "end".into());
        format!("after {} up to {}", show(after), show(upto))
    }
}

#[cfg(test)]
mod tests {
    use super::{Side, Unit};

    #[test]
    fn a_side_names_its_flags_and_variables() {
        assert_eq!(Side::Source.flag_prefix(), "from");
        assert_eq!(Side::Target.flag_prefix(), "to");
        assert_eq!(Side::Source.env_prefix(), "FROM");
        assert_eq!(Side::Target.env_prefix(), "TO");
    }

    #[test]
    fn a_unit_says_whether_its_size_is_known_and_old_catalogs_read_as_sized() {
        let recorded = serde_json::json!({
            "store": "mongodb", "name": "openedx.big", "container": "openedx", "object": "big",
            "range": {"after": null, "upto": null}, "est_rows": 0, "est_bytes": 0,
            "spec": {"batch_docs": 100},
        });
        let mut unit: Unit = serde_json::from_value(recorded).unwrap();
        assert!(unit.size_known);
        unit.size_known = false;
        let again: Unit = serde_json::from_value(serde_json::to_value(&unit).unwrap()).unwrap();
        assert!(!again.size_known);
    }
}
