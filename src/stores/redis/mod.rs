//! The Redis store: copies every selected database from a snapshot the source streams as to a
//! new replica (cut into DUMP payloads), or key by key following the SCAN cursor where the
//! source gives none; writes with pipelined RESTORE ... REPLACE and the remaining TTL (typed
//! rebuilds in pieces for big keys and for targets that cannot restore the source's payloads),
//! and verifies per database with an order-independent sum of per-key digests. One unit per
//! database; the delta pass empties and copies again a database whose digest changed, and
//! `--freeze-source` pauses the source's writers.
//!
//! Tested against Debian's redis-server 7.0 on both sides, TLS, and redis-server 6.2 as target and
//! as source.

mod batch;
mod copy;
mod digest;
mod endpoint;
mod follow;
mod freeze;
mod pass;
mod position;
pub mod rdb;
mod replica;
pub mod settings;
mod snapshot;
mod stream;
mod survey;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::RedisError;
use serde_json::json;

pub use endpoint::{RedisEndpoint, RedisTls};

use batch::decode_cursor;
use copy::SideError;
use digest::Cutoff;
use values::display_key;

use crate::core::epoch::TargetEpoch;
use crate::core::follow::{Follower, StreamPosition};
use crate::core::store::{ShapeDifference, Survey};
use crate::core::{
    BatchOutcome, ChunkDigest, Cursor, EndIdentity, ErrorKind, Identity, IfExists, RowDigest, Side,
    Store, StoreError, StoreKind, Unit,
};

/// One database to copy, and where it lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbChoice {
    pub source: i64,
    pub target: i64,
}

impl DbChoice {
    /// Parse `N` (same number on the target) or `N:M` (source N into target M).
    pub fn parse(text: &str) -> Result<DbChoice, String> {
        let bad =
            || format!("`{text}` is not a database number; use N or SOURCE:TARGET, e.g. 0 or 1:3");
        let num = |s: &str| {
            s.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(bad)
        };
        match text.split_once(':') {
            Some((a, b)) => Ok(DbChoice {
                source: num(a)?,
                target: num(b)?,
            }),
            None => {
                let n = num(text)?;
                Ok(DbChoice {
                    source: n,
                    target: n,
                })
            }
        }
    }

    pub fn render(&self) -> String {
        if self.source == self.target {
            self.source.to_string()
        } else {
            format!("{}:{}", self.source, self.target)
        }
    }
}

/// How values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyMode {
    /// DUMP/RESTORE, falling back to typed commands when the target rejects a payload.
    #[default]
    Auto,
    /// Typed commands only (what the fallback does), e.g. towards an older server.
    Typed,
}

/// Choices for a Redis migration.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Databases to copy; empty means every database that holds keys.
    pub dbs: Vec<DbChoice>,
    /// Tutor's Celery broker database (OPENEDX_CELERY_REDIS_DB).
    pub celery_db: i64,
    /// Tutor's Django cache database (OPENEDX_CACHE_REDIS_DB).
    pub cache_db: i64,
    /// Keys per batch (and per checkpoint).
    pub batch_keys: u64,
    /// Keys larger than this (MEMORY USAGE) are rebuilt in pieces instead of dumped whole.
    pub big_key_bytes: u64,
    /// Payload bytes per DUMP/RESTORE pipeline.
    pub group_bytes: u64,
    pub mode: CopyMode,
    /// Read keys with a server-side script (EVAL) where the source allows it.
    pub scripts: bool,
    /// Read each database from a snapshot the source streams as to a new replica (PSYNC),
    /// where it allows that; otherwise (and when false) live with SCAN.
    pub snapshot: bool,
    /// Largest accepted difference between a key's remaining TTL on both sides.
    pub ttl_tolerance_ms: i64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            dbs: Vec::new(),
            celery_db: 0,
            cache_db: 1,
            batch_keys: 20_000,
            big_key_bytes: 4 * 1024 * 1024,
            group_bytes: 2 * 1024 * 1024,
            mode: CopyMode::Auto,
            scripts: true,
            snapshot: true,
            ttl_tolerance_ms: 2_000,
        }
    }
}

/// Keys per SCAN call.
const SCAN_COUNT: usize = 1000;
/// SCAN pages copied or digested at once within one unit.
const PAGES_IN_FLIGHT: usize = 6;

/// A Redis source and target.
pub struct RedisStore {
    source: RedisEndpoint,
    target: RedisEndpoint,
    options: RedisOptions,
    conns: tokio::sync::Mutex<HashMap<(bool, i64), MultiplexedConnection>>,
    /// Set once the target rejected a DUMP payload (or typed mode was asked for).
    typed: AtomicBool,
    typed_keys: AtomicU64,
    /// Whether the source runs the server-side read script (cleared on the first refusal).
    scripts: AtomicBool,
    /// Whether databases are read from snapshots (cleared when the source refuses one).
    snapshot: AtomicBool,
    /// Snapshots being read, per unit, between the batches of that unit.
    feeds: tokio::sync::Mutex<HashMap<String, replica::SnapshotFeed>>,
    /// Why the source gave no snapshot, once it did not (for the copy's summary).
    no_snapshot: Mutex<Option<String>>,
    /// The same for verification reads, per side (source, target).
    digest_scripts: [Arc<AtomicBool>; 2],
    /// Per unit: keys expiring before this are left out of verification.
    cutoffs: Mutex<HashMap<String, Cutoff>>,
    source_has_expiretime: Mutex<Option<bool>>,
    run_id: Mutex<Option<String>>,
    /// The pause of the source's writers this process holds (`--freeze-source`).
    pause: Mutex<Option<freeze::HeldPause>>,
    /// Per source database this process began reading: where in the source's replication
    /// stream its read stands (`None`: read live, no exact point), for `stream_start`.
    stream_at: Mutex<BTreeMap<i64, Option<position::DbEntry>>>,
}

fn side_key(side: Side) -> bool {
    side == Side::Source
}

impl RedisStore {
    pub fn new(source: RedisEndpoint, target: RedisEndpoint, options: RedisOptions) -> RedisStore {
        RedisStore {
            typed: AtomicBool::new(options.mode == CopyMode::Typed),
            scripts: AtomicBool::new(options.scripts),
            snapshot: AtomicBool::new(options.snapshot && options.mode != CopyMode::Typed),
            feeds: tokio::sync::Mutex::new(HashMap::new()),
            no_snapshot: Mutex::new(None),
            digest_scripts: [
                Arc::new(AtomicBool::new(options.scripts)),
                Arc::new(AtomicBool::new(options.scripts)),
            ],
            source,
            target,
            options,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            typed_keys: AtomicU64::new(0),
            cutoffs: Mutex::new(HashMap::new()),
            source_has_expiretime: Mutex::new(None),
            run_id: Mutex::new(None),
            pause: Mutex::new(None),
            stream_at: Mutex::new(BTreeMap::new()),
        }
    }

    /// A database of `unit` is read from its start (again): from a snapshot taken at `at`, or
    /// live (`None`). What a follower recorded on the target for it no longer holds.
    async fn begin_db_read(&self, unit: &Unit, at: Option<position::DbEntry>) {
        let dbs = Self::dbs_of(unit);
        self.stream_at
            .lock()
            .expect("stream positions")
            .insert(dbs.source, at);
        if let Ok(mut c) = self.conn(Side::Target, dbs.target).await {
            if let Err(e) = redis::cmd("DEL")
                .arg(position::MARKER_KEY)
                .query_async::<()>(&mut c)
                .await
            {
                tracing::debug!(store = "redis", unit = %unit.name, error = %e, "the follower's marker could not be removed");
            }
        }
    }

    /// Keys of `unit` were read live beside its snapshot (big keys rebuilt in pieces): the
    /// database has no exact point in the stream.
    fn db_read_live(&self, unit: &Unit) {
        self.stream_at
            .lock()
            .expect("stream positions")
            .insert(Self::dbs_of(unit).source, None);
    }

    fn endpoint(&self, side: Side) -> &RedisEndpoint {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    fn err(&self, side: Side, e: &RedisError) -> StoreError {
        let mut err = endpoint::map_error(side, &self.endpoint(side).address(), e);
        if self.endpoint(side).tls.is_some() && e.is_timeout() {
            // A server without TLS never answers the TLS handshake: it waits for a command.
            err.hint = format!(
                "no TLS handshake with the {side} server: if it does not speak TLS, use redis:// instead of rediss://; otherwise check host, port and firewall"
            );
        }
        err
    }

    fn side_err(&self, e: SideError) -> StoreError {
        self.err(e.0, &e.1)
    }

    /// A batch of `unit` failed on one side: the error to return, after forgetting that side's
    /// connection when a retry should open a fresh one.
    async fn batch_failed(&self, unit: &Unit, dbs: DbChoice, e: SideError) -> StoreError {
        let side = e.0;
        let db = if side == Side::Source {
            dbs.source
        } else {
            dbs.target
        };
        let err = self.side_err(e).in_unit(&unit.name);
        self.forget(side, db, &err).await;
        err
    }

    /// A pipelining connection to one database of one side (shared; reopened after an error).
    async fn conn(&self, side: Side, db: i64) -> Result<MultiplexedConnection, StoreError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&(side_key(side), db)) {
            return Ok(c.clone());
        }
        let c = self
            .endpoint(side)
            .connect(db)
            .await
            .map_err(|e| self.err(side, &e))?;
        conns.insert((side_key(side), db), c.clone());
        Ok(c)
    }

    /// Forget a connection after a connection-level error, so a retry opens a fresh one.
    async fn forget(&self, side: Side, db: i64, e: &StoreError) {
        if e.is_retryable() {
            self.conns.lock().await.remove(&(side_key(side), db));
        }
    }

    fn dbs_of(unit: &Unit) -> DbChoice {
        DbChoice {
            source: unit.spec["db"].as_i64().unwrap_or(0),
            target: unit.spec["target_db"]
                .as_i64()
                .unwrap_or_else(|| unit.spec["db"].as_i64().unwrap_or(0)),
        }
    }

    fn role(&self, db: i64) -> &'static str {
        if db == self.options.celery_db {
            "celery-broker"
        } else if db == self.options.cache_db {
            "django-cache"
        } else {
            "keys"
        }
    }

    /// The source's `INFO keyspace`: key counts per database.
    async fn keyspace(&self, side: Side) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut c = self.conn(side, 0).await?;
        let info: String = redis::cmd("INFO")
            .arg("keyspace")
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(side, &e))?;
        Ok(survey::parse_keyspace(&info))
    }

    /// The databases this job copies, with their key counts on the source.
    async fn selected(&self) -> Result<Vec<(DbChoice, u64)>, StoreError> {
        let keyspace = self.keyspace(Side::Source).await?;
        let count = |db: i64| {
            keyspace
                .iter()
                .find(|(d, _)| *d == db)
                .map(|(_, n)| *n)
                .unwrap_or(0)
        };
        if self.options.dbs.is_empty() {
            return Ok(keyspace
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(db, n)| {
                    (
                        DbChoice {
                            source: *db,
                            target: *db,
                        },
                        *n,
                    )
                })
                .collect());
        }
        Ok(self
            .options
            .dbs
            .iter()
            .map(|c| (*c, count(c.source)))
            .collect())
    }

    /// The target server process (`run_id`, new at every restart) and what a restart of it
    /// keeps: Redis acknowledges writes before they reach disk, so never all of them.
    async fn target_process(&self) -> Result<TargetEpoch, StoreError> {
        let mut c = self.conn(Side::Target, 0).await?;
        let read = async {
            let server = survey::info(&mut c, "server").await?;
            let persistence = survey::info(&mut c, "persistence").await?;
            Ok::<_, RedisError>((server, persistence))
        };
        let (server, persistence) = match read.await {
            Ok(v) => v,
            Err(e) => {
                let err = self.err(Side::Target, &e);
                self.forget(Side::Target, 0, &err).await;
                return Err(err);
            }
        };
        let run_id = survey::info_field(&server, "run_id")
            .unwrap_or("")
            .to_string();
        let durability = if survey::info_field(&persistence, "aof_enabled") == Some("1") {
            "Redis with an append-only file: a restart may lose the last writes"
        } else {
            "Redis without an append-only file: a restart loses every write since its last snapshot, all of them without persistence"
        };
        Ok(TargetEpoch {
            process: run_id,
            started_at: None,
            keeps_writes: false,
            durability: durability.to_string(),
        })
    }

    /// The source server process's `run_id` (new at every restart).
    async fn source_run_id(&self) -> Result<String, StoreError> {
        if let Some(id) = self.run_id.lock().expect("run id").clone() {
            return Ok(id);
        }
        let mut c = self.conn(Side::Source, 0).await?;
        let text = survey::info(&mut c, "server")
            .await
            .map_err(|e| self.err(Side::Source, &e))?;
        let id = survey::info_field(&text, "run_id")
            .unwrap_or("")
            .to_string();
        *self.run_id.lock().expect("run id") = Some(id.clone());
        Ok(id)
    }
}

fn digest_hex(sum: u128) -> String {
    format!("{sum:032x}")
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    fn identity(&self) -> Identity {
        let end = |e: &RedisEndpoint| EndIdentity::new(e.address()).with("user", json!(e.user()));
        Identity::new(end(&self.source), end(&self.target)).with(
            "dbs",
            json!(self
                .options
                .dbs
                .iter()
                .map(|d| d.render())
                .collect::<Vec<_>>()),
        )
    }

    async fn survey(&self) -> Result<Survey, StoreError> {
        survey::survey(self).await
    }

    async fn inventory(&self) -> Result<Vec<Unit>, StoreError> {
        let selected = self.selected().await?;
        let mut c = self.conn(Side::Source, 0).await?;
        let memory = survey::info(&mut c, "memory")
            .await
            .map_err(|e| self.err(Side::Source, &e))?;
        let dataset = survey::info_u64(&memory, "used_memory_dataset")
            .or_else(|| survey::info_u64(&memory, "used_memory"))
            .unwrap_or(0);
        let total_keys: u64 = self
            .keyspace(Side::Source)
            .await?
            .iter()
            .map(|(_, n)| n)
            .sum();
        Ok(selected
            .into_iter()
            .map(|(choice, keys)| {
                let name = if choice.source == choice.target {
                    format!("db{}", choice.source)
                } else {
                    format!("db{}->db{}", choice.source, choice.target)
                };
                Unit {
                    store: StoreKind::Redis,
                    name,
                    container: format!("db{}", choice.source),
                    object: self.role(choice.source).to_string(),
                    range: Default::default(),
                    est_rows: keys,
                    est_bytes: dataset
                        .saturating_mul(keys)
                        .checked_div(total_keys)
                        .unwrap_or(0),
                    size_known: true,
                    spec: json!({"db": choice.source, "target_db": choice.target}),
                }
            })
            .collect())
    }

    async fn occupied(&self, units: &[Unit]) -> Result<Vec<String>, StoreError> {
        let keyspace = self.keyspace(Side::Target).await?;
        Ok(units
            .iter()
            .filter(|u| {
                let db = Self::dbs_of(u).target;
                keyspace.iter().any(|(d, n)| *d == db && *n > 0)
            })
            .map(|u| u.name.clone())
            .collect())
    }

    async fn prepare_target(
        &self,
        units: &[Unit],
        policy: IfExists,
        occupied: &[String],
    ) -> Result<(), StoreError> {
        for u in units {
            let db = Self::dbs_of(u).target;
            // Opening the database proves it exists on the target before anything is written.
            let mut c = self.conn(Side::Target, db).await?;
            if policy == IfExists::Replace && occupied.contains(&u.name) {
                tracing::warn!(
                    store = "redis",
                    database = db,
                    "emptying the target database (FLUSHDB), as --if-exists replace asks"
                );
                redis::cmd("FLUSHDB")
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| self.err(Side::Target, &e))?;
            }
        }
        Ok(())
    }

    async fn target_epoch(&self) -> Result<Option<TargetEpoch>, StoreError> {
        self.target_process().await.map(Some)
    }

    async fn begin_copy(&self, _workers: usize) -> Result<String, StoreError> {
        Ok(if self.snapshot.load(Ordering::SeqCst) {
            "redis: each database is read from a snapshot the source makes for a new replica (PSYNC; where the source refuses, live with SCAN): keys written after it are not in the copy; stop the platform's writers for an exact copy"
        } else {
            "redis: keys are read live with SCAN: keys written while the copy runs may or may not be in it; stop the platform's writers for an exact copy"
        }
        .to_string())
    }

    async fn prepare(&self, unit: &Unit) -> Result<(), StoreError> {
        let dbs = Self::dbs_of(unit);
        self.conn(Side::Source, dbs.source).await?;
        self.conn(Side::Target, dbs.target).await?;
        Ok(())
    }

    async fn copy_batch(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
    ) -> Result<BatchOutcome, StoreError> {
        let run_id = self.source_run_id().await?;
        let from_snapshot = after.is_some_and(|c| c.0.get("snapshot").is_some());
        if self.snapshot.load(Ordering::SeqCst) && (after.is_none() || from_snapshot) {
            if let Some(outcome) = self.copy_snapshot_batch(unit, after, &run_id).await? {
                return Ok(outcome);
            }
        }
        if from_snapshot {
            // A snapshot still open for this database is not read on (it stops its reader).
            self.feeds.lock().await.remove(&unit.name);
        }
        let start = match after {
            None => 0,
            // A snapshot was being read, and now the database is read with SCAN: from its
            // start (harmless: RESTORE ... REPLACE).
            Some(_) if from_snapshot => 0,
            Some(c) => {
                let cursor = decode_cursor(c).ok_or_else(|| {
                    StoreError::new(
                        StoreKind::Redis,
                        self.source.address(),
                        ErrorKind::Input,
                        format!("unreadable cursor {}", c.0),
                        "the job folder was written by another version; start over with --restart",
                    )
                    .in_unit(&unit.name)
                })?;
                // A SCAN cursor means something only to the server process that issued it: after
                // a restart of the source its table may be laid out differently, so start over
                // (harmless: RESTORE ... REPLACE).
                match c.0.get("run_id").and_then(|v| v.as_str()) {
                    Some(id) if id != run_id => {
                        tracing::warn!(store = "redis", unit = %unit.name, "the source server restarted since the checkpoint; copying this database again from its start");
                        0
                    }
                    _ => cursor,
                }
            }
        };
        if start == 0 {
            self.begin_db_read(unit, None).await;
        }
        let dbs = Self::dbs_of(unit);
        let src = self.conn(Side::Source, dbs.source).await?;
        let tgt = self.conn(Side::Target, dbs.target).await?;
        match self.copy_pages(src, tgt, start).await {
            Ok((rows, bytes, next)) => Ok(BatchOutcome {
                rows,
                bytes,
                next: (next != 0)
                    .then(|| Cursor(json!({"scan": next.to_string(), "run_id": run_id}))),
                ..BatchOutcome::default()
            }),
            Err(e) => Err(self.batch_failed(unit, dbs, e).await),
        }
    }

    async fn finish_target(&self) -> Result<Vec<String>, StoreError> {
        let typed = self.typed_keys.load(Ordering::Relaxed);
        let mut notes = Vec::new();
        if let Some(reason) = self.no_snapshot.lock().expect("no snapshot").as_ref() {
            notes.push(format!(
                "redis: keys were read live with SCAN, not from a snapshot ({reason}); keys written during the copy may or may not be in it"
            ));
        }
        if typed > 0 {
            notes.push(format!(
                "redis: {typed} key(s) were rebuilt with typed commands (big keys, or a target that cannot restore the source's DUMP payloads)"
            ));
        }
        Ok(notes)
    }

    async fn end_copy(&self) {}

    async fn digest_range(
        &self,
        side: Side,
        unit: &Unit,
        _after: Option<&Cursor>,
        _upto: Option<&Cursor>,
        _limit: Option<u64>,
    ) -> Result<ChunkDigest, StoreError> {
        // Keys have no common order on two servers: the whole database is one chunk, and its
        // digest is the order-free sum of the key digests.
        let (mut rows, mut bytes, mut sum) = (0u64, 0u64, 0u128);
        let mut kinds: HashMap<&'static str, u64> = HashMap::new();
        self.digest_side(side, unit, |d| {
            rows += 1;
            bytes += d.bytes;
            sum = sum.wrapping_add(u128::from_le_bytes(d.digest));
            *kinds.entry(d.kind).or_insert(0) += 1;
            true
        })
        .await?;
        Ok(ChunkDigest {
            rows,
            bytes,
            digest: digest_hex(sum),
            last: None,
            kinds: kinds.into_iter().map(|(k, n)| (k.to_string(), n)).collect(),
        })
    }

    async fn row_digests(
        &self,
        side: Side,
        unit: &Unit,
        _after: Option<&Cursor>,
        _upto: Option<&Cursor>,
        cap: usize,
    ) -> Result<Vec<RowDigest>, StoreError> {
        let mut out = Vec::new();
        self.digest_side(side, unit, |d| {
            out.push(RowDigest {
                key: display_key(&d.key),
                digest: d.digest,
                cursor: None,
            });
            out.len() < cap
        })
        .await?;
        Ok(out)
    }

    async fn stream_start(
        &self,
        earlier: Option<&StreamPosition>,
    ) -> Result<Option<StreamPosition>, StoreError> {
        let mut position = earlier
            .and_then(position::RedisPosition::parse)
            .unwrap_or_default();
        let read = std::mem::take(&mut *self.stream_at.lock().expect("stream positions"));
        for (db, at) in read {
            position.set(db, at);
        }
        Ok(Some(position.to_stream()))
    }

    async fn follower(
        &self,
        from: &StreamPosition,
        units: &[Unit],
    ) -> Result<Box<dyn Follower>, StoreError> {
        let dbs = units
            .iter()
            .map(|u| {
                let d = Self::dbs_of(u);
                (
                    d.source,
                    follow::Followed {
                        target: d.target,
                        unit: u.name.clone(),
                    },
                )
            })
            .collect();
        let follower =
            follow::RedisFollower::open(self.source.clone(), self.target.clone(), dbs, from)
                .await?;
        Ok(Box::new(follower))
    }

    async fn row_digests_at(
        &self,
        side: Side,
        unit: &Unit,
        keys: &[Cursor],
    ) -> Result<Vec<RowDigest>, StoreError> {
        let mut names = Vec::with_capacity(keys.len());
        for k in keys {
            names.push(follow::cursor_key(k).ok_or_else(|| {
                StoreError::new(
                    StoreKind::Redis,
                    self.endpoint(side).address(),
                    ErrorKind::Input,
                    format!("unreadable key {}", k.0),
                    "the job folder was written by another version; verify the whole database with `offload verify --full`",
                )
                .in_unit(&unit.name)
            })?);
        }
        let mut out = Vec::with_capacity(names.len());
        for page in names.chunks(SCAN_COUNT) {
            for d in self.digest_keys(side, unit, page.to_vec()).await? {
                out.push(RowDigest {
                    key: display_key(&d.key),
                    digest: d.digest,
                    cursor: Some(follow::key_cursor(&d.key)),
                });
            }
        }
        Ok(out)
    }

    async fn compare_shape(&self, _units: &[Unit]) -> Result<Vec<ShapeDifference>, StoreError> {
        // A Redis database has no shape apart from its keys; types and TTLs are in the digests.
        Ok(Vec::new())
    }

    async fn clear_range(
        &self,
        unit: &Unit,
        _after: Option<&Cursor>,
        _upto: Option<&Cursor>,
    ) -> Result<(), StoreError> {
        // The whole database is the unit's only range (see digest_range), and the target
        // database holds nothing but this unit's keys.
        let db = Self::dbs_of(unit).target;
        let mut c = self.conn(Side::Target, db).await?;
        tracing::info!(store = "redis", unit = %unit.name, database = db, "emptying the target database (FLUSHDB) to copy it again");
        let flushed = redis::cmd("FLUSHDB").query_async::<()>(&mut c).await;
        if let Err(e) = flushed {
            let err = self.err(Side::Target, &e).in_unit(&unit.name);
            self.forget(Side::Target, db, &err).await;
            return Err(err);
        }
        Ok(())
    }

    async fn freeze_source(
        &self,
        _left_by_earlier_run: bool,
    ) -> Result<Option<String>, StoreError> {
        self.freeze().await
    }

    async fn thaw_source(&self) -> Result<(), StoreError> {
        self.thaw().await
    }

    fn render_range(&self, unit: &Unit, _after: Option<&Cursor>, _upto: Option<&Cursor>) -> String {
        let dbs = Self::dbs_of(unit);
        if dbs.source == dbs.target {
            format!("database {} (every key)", dbs.source)
        } else {
            format!(
                "source database {} / target database {} (every key)",
                dbs.source, dbs.target
            )
        }
    }
}
