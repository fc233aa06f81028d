//! The MongoDB store: copies the platform's databases (modulestore, GridFS contentstore, forum)
//! collection by collection as raw BSON, byte for byte, in `_id` order; large collections split
//! into `_id` ranges. The target gets each collection with its options before data, and its
//! indexes and views after. Verification digests the raw bytes of `_id` ranges on both sides.
//!
//! Tested against SecantusDB (MongoDB wire protocol, reports 8.2) on both sides; a real `mongod`
//! is used by the tests when `OFFLOAD_TEST_MONGODB_URL` / `OFFLOAD_TEST_MONGODB_TARGET_URL` are set.

mod ahead;
mod copy;
mod digest;
mod endpoint;
mod follow;
mod keys;
mod read;
pub mod settings;
mod shape;
mod survey;
mod turns;
mod unique;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::{Client, Database};
use serde_json::json;

pub use endpoint::{map_error, MongoEndpoint};
use shape::CollectionSpec;

use crate::core::epoch::TargetEpoch;
use crate::core::follow::{Follower, StreamPosition};
use crate::core::store::{ShapeDifference, Survey};
use crate::core::{
    BatchOutcome, ChunkDigest, Cursor, EndIdentity, ErrorKind, Identity, IfExists, KeyRange,
    RowDigest, Side, Store, StoreError, StoreKind, Unit,
};

/// Databases never copied: the server's own.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

/// The server's code for a command stopped by its `maxTimeMS`.
const MAX_TIME_EXPIRED: i32 = 50;

/// Choices for a MongoDB migration.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// Databases to copy, as chosen with `--mongodb-databases`; empty means the platform's.
    pub databases: Vec<String>,
    /// The platform's databases (`MONGODB_DATABASE`), copied by default and required.
    pub platform_databases: Vec<String>,
    /// The forum's database (`cs_comments_service`), copied by default when present.
    pub optional_databases: Vec<String>,
    /// Databases never to copy.
    pub exclude: Vec<String>,
    /// Rough size of one batch (one checkpoint).
    pub batch_bytes: u64,
    /// Documents per batch, overriding the size-based choice.
    pub batch_docs: Option<u64>,
    /// Size of one insert sent to the target.
    pub insert_bytes: usize,
    /// Collections larger than this are split into `_id` ranges copied in parallel.
    pub split_bytes: u64,
    /// Longest wait for the source to size one collection; zero waits as long as it takes.
    pub size_timeout: std::time::Duration,
    /// Read the whole source at one cluster time (needs a replica set).
    pub snapshot: bool,
    /// Bytes of documents the copy's source reads may hold between them ahead of the target.
    pub read_ahead_bytes: u64,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            databases: Vec::new(),
            platform_databases: vec!["openedx".into()],
            optional_databases: vec!["cs_comments_service".into()],
            exclude: Vec::new(),
            batch_bytes: 16 * 1024 * 1024,
            batch_docs: None,
            insert_bytes: 4 * 1024 * 1024,
            split_bytes: 1024 * 1024 * 1024,
            size_timeout: std::time::Duration::from_secs(2),
            snapshot: false,
            read_ahead_bytes: 128 * 1024 * 1024,
        }
    }
}

/// A MongoDB source and target.
pub struct MongoStore {
    source: MongoEndpoint,
    target: MongoEndpoint,
    options: MongoOptions,
    parallel: usize,
    source_client: tokio::sync::OnceCell<Client>,
    target_client: tokio::sync::OnceCell<Client>,
    /// Source cursors left open between batches of a unit, by unit name and end of range.
    reads: tokio::sync::Mutex<HashMap<String, copy::OpenRead>>,
    /// Per unit (name and end of range), the position after which this process knows the target
    /// range is empty.
    clean: Mutex<HashMap<String, Option<Vec<u8>>>>,
    /// The cluster time every source read uses, with `--mongodb-snapshot`.
    snapshot_time: Mutex<Option<Timestamp>>,
    /// The source's operation time read before this run's first read, where it has a change
    /// stream: where following must start so no change the copy may have missed is left out.
    copy_start: Mutex<Option<follow::ClusterTime>>,
    /// Collections (by side) whose `_id` index walk is out of order: read sorted.
    sorted_only: Mutex<HashSet<String>>,
    /// Collections left alone by `--if-exists skip`: no indexes are built on them.
    skipped: Mutex<BTreeSet<(String, String)>>,
    /// Per side, whose turn it is to open a query (see [`turns`]).
    turns: [Arc<turns::Turns>; 2],
    /// What the copy's source reads may hold ahead of the target (see [`ahead`]).
    ahead: ahead::Budget,
}

impl MongoStore {
    pub fn new(
        source: MongoEndpoint,
        target: MongoEndpoint,
        options: MongoOptions,
        parallel: usize,
    ) -> MongoStore {
        MongoStore {
            source,
            target,
            parallel: parallel.max(1),
            source_client: tokio::sync::OnceCell::new(),
            target_client: tokio::sync::OnceCell::new(),
            reads: tokio::sync::Mutex::new(HashMap::new()),
            clean: Mutex::new(HashMap::new()),
            snapshot_time: Mutex::new(None),
            copy_start: Mutex::new(None),
            sorted_only: Mutex::new(HashSet::new()),
            skipped: Mutex::new(BTreeSet::new()),
            turns: Default::default(),
            ahead: ahead::Budget::new(options.read_ahead_bytes, options.insert_bytes as u64),
            options,
        }
    }

    fn endpoint(&self, side: Side) -> &MongoEndpoint {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    fn turns(&self, side: Side) -> &Arc<turns::Turns> {
        &self.turns[match side {
            Side::Source => 0,
            Side::Target => 1,
        }]
    }

    fn err(&self, side: Side, e: mongodb::error::Error) -> StoreError {
        endpoint::map_error(side, self.endpoint(side), e)
    }

    fn input_error(&self, side: Side, detail: String, hint: &str) -> StoreError {
        StoreError::new(
            StoreKind::Mongodb,
            self.endpoint(side).address(),
            ErrorKind::Input,
            detail,
            hint,
        )
    }

    async fn client(&self, side: Side) -> Result<&Client, StoreError> {
        let cell = match side {
            Side::Source => &self.source_client,
            Side::Target => &self.target_client,
        };
        let pool = (self.parallel * 2 + 4) as u32;
        cell.get_or_try_init(|| async move { self.endpoint(side).client(side, pool).await })
            .await
    }

    async fn db(&self, side: Side, name: &str) -> Result<Database, StoreError> {
        Ok(self.client(side).await?.database(name))
    }

    async fn command(&self, side: Side, db: &str, cmd: Document) -> Result<Document, StoreError> {
        self.db(side, db)
            .await?
            .run_command(cmd)
            .await
            .map_err(|e| self.err(side, e))
    }

    async fn collections(
        &self,
        side: Side,
        db: &str,
        name: Option<&str>,
    ) -> Result<Vec<CollectionSpec>, StoreError> {
        let d = self.db(side, db).await?;
        shape::list_collections(&d, name)
            .await
            .map_err(|e| self.err(side, e))
    }

    /// The source's spec of one collection.
    async fn spec(&self, unit: &Unit) -> Result<CollectionSpec, StoreError> {
        self.collections(Side::Source, &unit.container, Some(&unit.object))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                self.input_error(
                    Side::Source,
                    format!(
                        "collection {}.{} is gone from the source",
                        unit.container, unit.object
                    ),
                    "the source changed since the plan; start the job again with --restart",
                )
                .in_unit(&unit.name)
            })
    }

    /// The databases to copy: the chosen ones, else the platform's plus the forum's when present.
    async fn databases(&self) -> Result<Vec<String>, StoreError> {
        let explicit = !self.options.databases.is_empty();
        let (required, optional) = if explicit {
            (self.options.databases.clone(), Vec::new())
        } else {
            (
                self.options.platform_databases.clone(),
                self.options.optional_databases.clone(),
            )
        };
        let mut out = Vec::new();
        for (db, needed) in required
            .iter()
            .map(|d| (d, true))
            .chain(optional.iter().map(|d| (d, false)))
        {
            if self.options.exclude.contains(db) || out.contains(db) {
                continue;
            }
            if SYSTEM_DATABASES.contains(&db.as_str()) {
                return Err(self.input_error(
                    Side::Source,
                    format!("database `{db}` is the server's own and is not copied"),
                    "leave it out of --mongodb-databases",
                ));
            }
            let present = !self.collections(Side::Source, db, None).await?.is_empty();
            if present {
                out.push(db.clone());
            } else if needed {
                let from = if explicit {
                    "from --mongodb-databases"
                } else {
                    "the platform's database, MONGODB_DATABASE in config.yml"
                };
                return Err(self.input_error(
                    Side::Source,
                    format!("database `{db}` ({from}) has no collections on the source"),
                    "check the name and the source address; choose databases with --mongodb-databases",
                ));
            }
        }
        Ok(out)
    }

    fn collections_of(units: &[Unit]) -> BTreeSet<(String, String)> {
        units
            .iter()
            .map(|u| (u.container.clone(), u.object.clone()))
            .collect()
    }

    async fn hello(&self, side: Side) -> Result<Document, StoreError> {
        self.command(side, "admin", doc! {"hello": 1}).await
    }

    /// Count and size of a collection from `collStats`, or from a count where the server has no
    /// `collStats`; `None` when the source did not answer within `size_timeout` (a server that
    /// scans the collection to size it).
    /// The target server process, as `hello` names it (`topologyVersion.processId`, new at
    /// every start; `None` from a server older than 4.4, which names none). A write acknowledged
    /// with the default write concern may not be in the journal yet, so a restart is taken to
    /// lose writes.
    async fn target_process(&self) -> Result<Option<TargetEpoch>, StoreError> {
        let hello = self.hello(Side::Target).await?;
        let process = hello
            .get_document("topologyVersion")
            .ok()
            .and_then(|t| t.get("processId"))
            .map(|id| match id {
                Bson::ObjectId(oid) => oid.to_hex(),
                other => other.to_string(),
            });
        let Some(process) = process else {
            tracing::warn!(store = "mongodb", host = %self.target.address(), "the target's hello names no process (topologyVersion.processId, MongoDB 4.4 and later): a restart of it during the copy goes unnoticed; verify finds what it lost");
            return Ok(None);
        };
        Ok(Some(TargetEpoch {
            process,
            started_at: None,
            keeps_writes: false,
            durability: "MongoDB acknowledges a write before its journal reaches disk: a crash may lose the last writes".into(),
        }))
    }

    async fn stats(&self, db: &str, coll: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let d = self.db(Side::Source, db).await?;
        let num = |v: Option<&Bson>| match v {
            Some(Bson::Int32(n)) => *n as u64,
            Some(Bson::Int64(n)) => *n as u64,
            Some(Bson::Double(n)) => *n as u64,
            _ => 0,
        };
        let limit = self.options.size_timeout;
        let mut cmd = doc! {"collStats": coll};
        if !limit.is_zero() {
            cmd.insert(
                "maxTimeMS",
                limit.as_millis().clamp(1, i32::MAX as u128) as i64,
            );
        }
        let asked = std::time::Instant::now();
        let answer = d.run_command(cmd).await;
        tracing::debug!(store = "mongodb", database = %db, collection = %coll, ms = asked.elapsed().as_millis() as u64, "collStats answered");
        match answer {
            Ok(s) => Ok(Some((num(s.get("count")), num(s.get("size"))))),
            Err(e) if endpoint::error_code(&e) == Some(MAX_TIME_EXPIRED) => {
                tracing::info!(store = "mongodb", database = %db, collection = %coll, limit_ms = limit.as_millis() as u64, "the source did not size this collection in time; it is copied whole and counted as it copies");
                Ok(None)
            }
            Err(_) => {
                let n = d
                    .collection::<Document>(coll)
                    .estimated_document_count()
                    .await
                    .map_err(|e| self.err(Side::Source, e))?;
                Ok(Some((n, 0)))
            }
        }
    }

    /// Units of one collection: whole, or `_id` ranges of about `split_bytes` each.
    async fn units_of(&self, db: &str, spec: &CollectionSpec) -> Result<Vec<Unit>, StoreError> {
        let sized = self.stats(db, &spec.name).await?;
        let (rows, bytes) = sized.unwrap_or((0, 0));
        let avg = bytes.checked_div(rows).map_or(512, |a| a.max(16));
        let batch_docs = (self.options.batch_bytes / avg).clamp(100, 100_000);
        let unit_spec = json!({
            "batch_docs": batch_docs,
            "avg_bytes": avg,
            "capped": spec.capped(),
            "clustered": spec.clustered(),
        });
        let name = format!("{db}.{}", spec.name);
        let mut boundaries = Vec::new();
        if bytes > self.options.split_bytes && !spec.capped() && rows > 1 {
            let parts = bytes.div_ceil(self.options.split_bytes).min(32);
            boundaries =
                digest::split_points(self, db, &spec.name, rows, parts, spec.clustered()).await?;
        }
        if boundaries.is_empty() {
            return Ok(vec![Unit {
                store: StoreKind::Mongodb,
                name,
                container: db.to_string(),
                object: spec.name.clone(),
                range: KeyRange::default(),
                est_rows: rows,
                est_bytes: bytes,
                size_known: sized.is_some(),
                spec: unit_spec,
            }]);
        }
        let parts = boundaries.len() as u64 + 1;
        let mut after: Option<Cursor> = None;
        let mut out = Vec::new();
        for i in 0..=boundaries.len() {
            let upto = boundaries.get(i).cloned();
            out.push(Unit {
                store: StoreKind::Mongodb,
                name: format!("{name}#{}", i + 1),
                container: db.to_string(),
                object: spec.name.clone(),
                range: KeyRange {
                    after: after.clone(),
                    upto: upto.clone(),
                },
                est_rows: rows / parts,
                est_bytes: bytes / parts,
                size_known: sized.is_some(),
                spec: unit_spec.clone(),
            });
            after = upto;
        }
        Ok(out)
    }

    /// Every data collection and view of the selected databases on the source.
    async fn source_layout(&self) -> Result<Vec<(String, Vec<CollectionSpec>)>, StoreError> {
        let mut out = Vec::new();
        for db in self.databases().await? {
            let specs = self.collections(Side::Source, &db, None).await?;
            out.push((db, specs));
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for MongoStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Mongodb
    }

    fn identity(&self) -> Identity {
        let side = |e: &MongoEndpoint| {
            EndIdentity::new(e.address())
                .with("user", json!(e.user))
                .with("auth_source", json!(e.auth_source()))
                .with("replica_set", json!(e.option("replicaSet")))
        };
        let databases = if self.options.databases.is_empty() {
            self.options
                .platform_databases
                .iter()
                .chain(&self.options.optional_databases)
                .cloned()
                .collect::<Vec<_>>()
        } else {
            self.options.databases.clone()
        };
        Identity::new(side(&self.source), side(&self.target))
            .with("databases", json!(databases))
            .with("exclude", json!(self.options.exclude))
            .with("snapshot", json!(self.options.snapshot))
    }

    async fn survey(&self) -> Result<Survey, StoreError> {
        survey::survey(self).await
    }

    async fn inventory(&self) -> Result<Vec<Unit>, StoreError> {
        let mut units = Vec::new();
        for (db, specs) in self.source_layout().await? {
            for spec in specs.iter().filter(|s| s.is_data()) {
                units.extend(self.units_of(&db, spec).await?);
            }
        }
        Ok(units)
    }

    fn inventory_notes(&self, units: &[Unit]) -> Vec<String> {
        let names: Vec<String> = units
            .iter()
            .filter(|u| !u.size_known)
            .map(|u| format!("{}.{}", u.container, u.object))
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let limit = self.options.size_timeout;
        let limit = if limit.as_millis() < 1000 {
            format!("{} ms", limit.as_millis())
        } else {
            format!("{:.1} s", limit.as_secs_f64())
        };
        vec![format!(
            "not sized: {} (the source did not answer collStats within {limit}; some servers scan the whole collection to answer it). Copied whole, never split into _id ranges, and counted as copied; to size and split, plan again with a longer --mongodb-size-timeout (0 waits as long as it takes)",
            names.join(", "),
        )]
    }

    async fn occupied(&self, units: &[Unit]) -> Result<Vec<String>, StoreError> {
        let mut busy = BTreeSet::new();
        for (db, coll) in Self::collections_of(units) {
            let found = self
                .db(Side::Target, &db)
                .await?
                .collection::<Document>(&coll)
                .find_one(doc! {})
                .projection(doc! {"_id": 1})
                .await
                .map_err(|e| self.err(Side::Target, e))?;
            if found.is_some() {
                busy.insert((db, coll));
            }
        }
        Ok(Unit::names_within(units, &busy))
    }

    async fn prepare_target(
        &self,
        units: &[Unit],
        policy: IfExists,
        occupied: &[String],
    ) -> Result<(), StoreError> {
        if policy == IfExists::Skip {
            let mut skipped = self.skipped.lock().expect("skipped set");
            for u in units.iter().filter(|u| occupied.contains(&u.name)) {
                skipped.insert((u.container.clone(), u.object.clone()));
            }
        }
        if policy != IfExists::Replace {
            return Ok(());
        }
        let doomed: BTreeSet<(String, String)> = units
            .iter()
            .filter(|u| occupied.contains(&u.name))
            .map(|u| (u.container.clone(), u.object.clone()))
            .collect();
        for (db, coll) in doomed {
            tracing::warn!(store = "mongodb", database = %db, collection = %coll, "dropping the target collection, as --if-exists replace asks");
            self.db(Side::Target, &db)
                .await?
                .collection::<Document>(&coll)
                .drop()
                .await
                .map_err(|e| self.err(Side::Target, e))?;
        }
        Ok(())
    }

    async fn target_epoch(&self) -> Result<Option<TargetEpoch>, StoreError> {
        self.target_process().await
    }

    async fn begin_copy(&self, _workers: usize) -> Result<String, StoreError> {
        self.reads.lock().await.clear();
        let followable = follow::has_change_stream(&self.hello(Side::Source).await?);
        let start = if followable {
            follow::operation_time(self).await?
        } else {
            None
        };
        *self.copy_start.lock().expect("copy start") = start;
        if !self.options.snapshot {
            return Ok(
                "mongodb: each batch reads the source as it is at that moment (no snapshot across collections); stop the platform's writers for an exact copy".into(),
            );
        }
        let reply = self
            .command(Side::Source, "admin", doc! {"ping": 1})
            .await?;
        let time = match reply.get("operationTime") {
            Some(Bson::Timestamp(t)) => *t,
            _ => {
                return Err(StoreError::new(
                    StoreKind::Mongodb,
                    self.source.address(),
                    ErrorKind::Unsupported,
                    "the source reports no cluster time, so it cannot serve snapshot reads",
                    "--mongodb-snapshot needs a replica set; stop the platform's writers and copy without it",
                ))
            }
        };
        *self.snapshot_time.lock().expect("snapshot time") = Some(time);
        Ok(format!(
            "mongodb: every source read is at cluster time {}.{} (snapshot read concern); writes after it are not in this copy",
            time.time, time.increment
        ))
    }

    async fn prepare(&self, unit: &Unit) -> Result<(), StoreError> {
        let spec = self.spec(unit).await?;
        let d = self.db(Side::Target, &unit.container).await?;
        match d.run_command(spec.create_command()).await {
            Ok(_) => Ok(()),
            // Already there (a resume, or another range of the same collection).
            Err(e) if shape::is_code(&e, 48) => Ok(()),
            Err(e) => Err(self.err(Side::Target, e).in_unit(&unit.name)),
        }
    }

    async fn copy_batch(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
    ) -> Result<BatchOutcome, StoreError> {
        copy::copy_batch(self, unit, after).await
    }

    async fn clear_range(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
    ) -> Result<(), StoreError> {
        copy::clear_range(self, unit, after, upto).await
    }

    async fn finish_target(&self) -> Result<Vec<String>, StoreError> {
        let mut notes = Vec::new();
        for (db, specs) in self.source_layout().await? {
            let source = self.db(Side::Source, &db).await?;
            let target = self.db(Side::Target, &db).await?;
            let (mut built, mut views) = (0usize, 0usize);
            let skipped = self.skipped.lock().expect("skipped set").clone();
            for spec in specs
                .iter()
                .filter(|s| s.is_data() && !skipped.contains(&(db.clone(), s.name.clone())))
            {
                let all = shape::list_indexes(&source, &spec.name)
                    .await
                    .map_err(|e| self.err(Side::Source, e))?;
                let wanted = shape::indexes_to_create(&all);
                if wanted.is_empty() {
                    continue;
                }
                built += wanted.len();
                let cmd = doc! {"createIndexes": spec.name.clone(), "indexes": wanted};
                target.run_command(cmd).await.map_err(|e| {
                    self.err(Side::Target, e)
                        .in_unit(format!("{db}.{}", spec.name))
                })?;
            }
            for spec in specs.iter().filter(|s| s.kind == "view") {
                match target.run_command(spec.create_command()).await {
                    Ok(_) => views += 1,
                    Err(e) if shape::is_code(&e, 48) => {}
                    Err(e) => {
                        return Err(self
                            .err(Side::Target, e)
                            .in_unit(format!("{db}.{} (view)", spec.name)))
                    }
                }
            }
            if built > 0 || views > 0 {
                notes.push(format!(
                    "mongodb: {built} index(es) built and {views} view(s) created in {db}"
                ));
            }
        }
        Ok(notes)
    }

    async fn end_copy(&self) {
        self.reads.lock().await.clear();
    }

    async fn stream_start(
        &self,
        earlier: Option<&StreamPosition>,
    ) -> Result<Option<StreamPosition>, StoreError> {
        let this_run = *self.copy_start.lock().expect("copy start");
        Ok(follow::stream_start(this_run, earlier))
    }

    async fn follower(
        &self,
        from: &StreamPosition,
        units: &[Unit],
    ) -> Result<Box<dyn Follower>, StoreError> {
        Ok(Box::new(
            follow::MongoFollower::open(self, from, units).await?,
        ))
    }

    async fn row_digests_at(
        &self,
        side: Side,
        unit: &Unit,
        keys: &[Cursor],
    ) -> Result<Vec<RowDigest>, StoreError> {
        follow::row_digests_at(self, side, unit, keys).await
    }

    async fn digest_range(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<ChunkDigest, StoreError> {
        digest::digest_range(self, side, unit, after, upto, limit).await
    }

    async fn row_digests(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        cap: usize,
    ) -> Result<Vec<RowDigest>, StoreError> {
        digest::row_digests(self, side, unit, after, upto, cap).await
    }

    async fn compare_shape(&self, units: &[Unit]) -> Result<Vec<ShapeDifference>, StoreError> {
        survey::compare_shape(self, units).await
    }

    fn render_range(&self, unit: &Unit, after: Option<&Cursor>, upto: Option<&Cursor>) -> String {
        let show = |c: Option<&Cursor>| c.and_then(keys::decode).map(|b| keys::show(&b));
        let mut parts = Vec::new();
        if let Some(a) = show(after) {
            parts.push(format!("after {a}"));
        }
        if let Some(u) = show(upto) {
            parts.push(format!("up to {u}"));
        }
        let range = if parts.is_empty() {
            "all documents".to_string()
        } else {
            format!("_id {}", parts.join(" "))
        };
        format!("{}.{} {range}", unit.container, unit.object)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{MongoEndpoint, MongoOptions, MongoStore};
    use crate::core::{Identity, Store};

    /// Jobs planned before `Identity` was typed recorded this JSON as the guard: a resume must
    /// still find it equal.
    #[test]
    fn identity_serializes_as_the_guard_jobs_recorded() {
        let source =
            MongoEndpoint::parse("mongodb://app:secret@mongo.example.org:27017/?replicaSet=rs0")
                .unwrap();
        let target = MongoEndpoint::parse("mongodb://127.0.0.1:27118").unwrap();
        let options = MongoOptions {
            exclude: vec!["scratch".into()],
            ..MongoOptions::default()
        };
        let store = MongoStore::new(source, target, options, 2);
        let recorded = json!({
            "source": {
                "address": "mongo.example.org:27017",
                "user": "app",
                "auth_source": "admin",
                "replica_set": "rs0",
            },
            "target": {
                "address": "127.0.0.1:27118",
                "user": null,
                "auth_source": "admin",
                "replica_set": null,
            },
            "databases": ["openedx", "cs_comments_service"],
            "exclude": ["scratch"],
            "snapshot": false,
        });
        let identity = store.identity();
        assert_eq!(identity.target.address, "127.0.0.1:27118");
        assert_eq!(serde_json::to_value(&identity).unwrap(), recorded);
        assert_eq!(
            serde_json::from_value::<Identity>(recorded).unwrap(),
            identity
        );
    }
}
