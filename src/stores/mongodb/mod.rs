//! The MongoDB store: copies the platform's databases (modulestore, GridFS contentstore, forum)
//! collection by collection as raw BSON, byte for byte, in `_id` order; large collections split
//! into `_id` ranges. The target gets each collection with its options before data, and its
//! indexes and views after. Verification digests the raw bytes of `_id` ranges on both sides.
//!
//! Tested against SecantusDB (MongoDB wire protocol, reports 8.2) on both sides; a real `mongod`
//! is used by the tests when `OFFLOAD_TEST_MONGODB_URL` / `OFFLOAD_TEST_MONGODB_TARGET_URL` are set.

mod copy;
mod endpoint;
mod keys;
mod shape;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::{Client, Database};
use serde_json::json;

pub use endpoint::MongoEndpoint;
use shape::CollectionSpec;

use crate::core::store::{Check, ShapeDifference, Survey};
use crate::core::{
    BatchOutcome, ChunkDigest, Cursor, ErrorKind, IfExists, KeyRange, RowDigest, Side, Store,
    StoreError, StoreKind, Unit,
};

/// Databases never copied: the server's own.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

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
    /// Read the whole source at one cluster time (needs a replica set).
    pub snapshot: bool,
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
            snapshot: false,
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
    /// Source cursors left open between batches of a unit, by unit name.
    reads: tokio::sync::Mutex<HashMap<String, copy::OpenRead>>,
    /// Per unit, the position after which this process knows the target range is empty.
    clean: Mutex<HashMap<String, Option<Vec<u8>>>>,
    /// The cluster time every source read uses, with `--mongodb-snapshot`.
    snapshot_time: Mutex<Option<Timestamp>>,
    /// Collections left alone by `--if-exists skip`: no indexes are built on them.
    skipped: Mutex<BTreeSet<(String, String)>>,
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
            options,
            parallel: parallel.max(1),
            source_client: tokio::sync::OnceCell::new(),
            target_client: tokio::sync::OnceCell::new(),
            reads: tokio::sync::Mutex::new(HashMap::new()),
            clean: Mutex::new(HashMap::new()),
            snapshot_time: Mutex::new(None),
            skipped: Mutex::new(BTreeSet::new()),
        }
    }

    fn endpoint(&self, side: Side) -> &MongoEndpoint {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    fn err(&self, side: Side, e: mongodb::error::Error) -> StoreError {
        endpoint::map_error(&side.to_string(), self.endpoint(side), e)
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
        cell.get_or_try_init(|| async move {
            let name = side.to_string();
            self.endpoint(side).client(&name, pool).await
        })
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

    /// Size and count of a collection: `collStats` where the server has it, else a count.
    async fn stats(&self, db: &str, coll: &str) -> Result<(u64, u64), StoreError> {
        let d = self.db(Side::Source, db).await?;
        let num = |v: Option<&Bson>| match v {
            Some(Bson::Int32(n)) => *n as u64,
            Some(Bson::Int64(n)) => *n as u64,
            Some(Bson::Double(n)) => *n as u64,
            _ => 0,
        };
        match d.run_command(doc! {"collStats": coll}).await {
            Ok(s) => Ok((num(s.get("count")), num(s.get("size")))),
            Err(_) => {
                let n = d
                    .collection::<Document>(coll)
                    .estimated_document_count()
                    .await
                    .map_err(|e| self.err(Side::Source, e))?;
                Ok((n, 0))
            }
        }
    }

    /// Units of one collection: whole, or `_id` ranges of about `split_bytes` each.
    async fn units_of(&self, db: &str, spec: &CollectionSpec) -> Result<Vec<Unit>, StoreError> {
        let (rows, bytes) = self.stats(db, &spec.name).await?;
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
                copy::split_points(self, db, &spec.name, rows, parts, spec.clustered()).await?;
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

    fn identity(&self) -> serde_json::Value {
        let side = |e: &MongoEndpoint| {
            json!({
                "address": e.address(),
                "user": e.user,
                "auth_source": e.auth_source(),
                "replica_set": e.option("replicaSet"),
            })
        };
        json!({
            "source": side(&self.source),
            "target": side(&self.target),
            "databases": if self.options.databases.is_empty() {
                self.options.platform_databases.iter().chain(&self.options.optional_databases).cloned().collect::<Vec<_>>()
            } else {
                self.options.databases.clone()
            },
            "exclude": self.options.exclude,
            "snapshot": self.options.snapshot,
        })
    }

    async fn survey(&self) -> Result<Survey, StoreError> {
        let mut survey = Survey::default();
        let mut hellos = BTreeMap::new();
        for side in [Side::Source, Side::Target] {
            let hello = self.hello(side).await?;
            let build = self.command(side, "admin", doc! {"buildInfo": 1}).await?;
            let version = build.get_str("version").unwrap_or("unknown").to_string();
            let topology = match hello.get_str("setName") {
                Ok(set) => format!("replica set `{set}`"),
                Err(_) if hello.get_str("msg") == Ok("isdbgrid") => "mongos (sharded)".into(),
                Err(_) => "standalone".into(),
            };
            let shown = format!("{version} ({topology})");
            let user = self
                .endpoint(side)
                .user
                .as_deref()
                .map(|u| format!("as {u} (auth source {})", self.endpoint(side).auth_source()))
                .unwrap_or_else(|| "without authentication".into());
            survey.checks.push(Check::new(
                format!("{side} reachable"),
                true,
                format!("{} {user}: {shown}", self.endpoint(side).address()),
            ));
            match side {
                Side::Source => survey.source_version = shown,
                Side::Target => survey.target_version = shown,
            }
            hellos.insert(side.to_string(), hello);
        }

        let target_hello = &hellos["target"];
        let writable = target_hello
            .get_bool("isWritablePrimary")
            .or_else(|_| target_hello.get_bool("ismaster"))
            .unwrap_or(false);
        survey.checks.push(Check::new(
            "target writable",
            writable,
            if writable {
                "the target accepts writes (primary or standalone)"
            } else {
                "the target is not a writable primary (a secondary?): point --to-mongodb at the primary, or name the replica set with ?replicaSet="
            },
        ));

        let source_hello = &hellos["source"];
        let replica_set = source_hello.get_str("setName").is_ok();
        let stop = "stop the platform's writers first: `tutor local stop lms cms lms-worker cms-worker` (and the forum if it runs apart), then copy";
        let (ok, detail) = match (replica_set, self.options.snapshot) {
            (true, true) => (true, "every source read uses one cluster time (snapshot read concern): a point-in-time copy, if it finishes within the source's minSnapshotHistoryWindowInSeconds (default 300 s; raise it for a longer copy)".to_string()),
            (true, false) => (true, format!("each batch reads what is committed at that moment, not one point in time; for an exact copy {stop}, or pass --mongodb-snapshot")),
            (false, true) => (false, format!("--mongodb-snapshot needs a replica set, and the source is a standalone server, which has no snapshot reads. Without the flag the copy reads each batch as it is at that moment (no point in time across collections or batches): {stop}, and leave out --mongodb-snapshot")),
            (false, false) => (true, format!("the source is a standalone server: no snapshot across collections or batches, so each batch reads what is there at that moment; {stop}")),
        };
        survey
            .checks
            .push(Check::new("consistent read", ok, detail));

        let status = self
            .command(Side::Target, "admin", doc! {"connectionStatus": 1})
            .await?;
        let roles: Vec<String> = status
            .get_document("authInfo")
            .ok()
            .and_then(|a| a.get_array("authenticatedUserRoles").ok())
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_document())
                    .map(|d| {
                        format!(
                            "{}@{}",
                            d.get_str("role").unwrap_or("?"),
                            d.get_str("db").unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let strong = [
            "root@",
            "restore@",
            "dbOwner@",
            "readWriteAnyDatabase@",
            "__system@",
        ];
        let enough = roles.is_empty()
            || roles
                .iter()
                .any(|r| strong.iter().any(|s| r.starts_with(s)) || r.starts_with("readWrite@"));
        survey.checks.push(Check::new(
            "target privileges",
            enough,
            if roles.is_empty() {
                "no authenticated user on the target (authentication off)".to_string()
            } else if enough {
                format!("roles {}; creating indexes and bypassing validators needs dbAdmin or restore", roles.join(", "))
            } else {
                format!("roles {} cannot write: grant readWrite and dbAdmin on the databases (or restore)", roles.join(", "))
            },
        ));

        let layout = self.source_layout().await?;
        let mut dbs = Vec::new();
        for (db, specs) in &layout {
            let skipped: Vec<&str> = specs
                .iter()
                .filter(|s| !s.is_data() && s.kind != "view")
                .map(|s| s.name.as_str())
                .collect();
            if !skipped.is_empty() {
                survey.notes.push(format!(
                    "{db}: not copied (server-managed or time series): {}",
                    skipped.join(", ")
                ));
            }
            let views = specs.iter().filter(|s| s.kind == "view").count();
            dbs.push(format!(
                "{db} ({} collection(s){})",
                specs.iter().filter(|s| s.is_data()).count(),
                if views > 0 {
                    format!(", {views} view(s)")
                } else {
                    String::new()
                }
            ));
        }
        survey.notes.push(format!(
            "databases: {}",
            if dbs.is_empty() {
                "(none)".to_string()
            } else {
                dbs.join(", ")
            }
        ));
        Ok(survey)
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
        Ok(units
            .iter()
            .filter(|u| busy.contains(&(u.container.clone(), u.object.clone())))
            .map(|u| u.name.clone())
            .collect())
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

    async fn begin_copy(&self, _workers: usize) -> Result<String, StoreError> {
        self.reads.lock().await.clear();
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

    async fn digest_range(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<ChunkDigest, StoreError> {
        copy::digest_range(self, side, unit, after, upto, limit).await
    }

    async fn row_digests(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        cap: usize,
    ) -> Result<Vec<RowDigest>, StoreError> {
        copy::row_digests(self, side, unit, after, upto, cap).await
    }

    async fn compare_shape(&self, units: &[Unit]) -> Result<Vec<ShapeDifference>, StoreError> {
        let mut out = Vec::new();
        let mut dbs = BTreeSet::new();
        for (db, coll) in Self::collections_of(units) {
            dbs.insert(db.clone());
            let src = self.collections(Side::Source, &db, Some(&coll)).await?;
            let tgt = self.collections(Side::Target, &db, Some(&coll)).await?;
            let diff = |detail: String| ShapeDifference {
                container: db.clone(),
                object: coll.clone(),
                detail,
            };
            let (Some(s), Some(t)) = (src.first(), tgt.first()) else {
                if !src.is_empty() {
                    out.push(diff("collection missing on the target".into()));
                }
                continue;
            };
            for d in shape::diff_fields("collection option", &s.options, &t.options, &[]) {
                out.push(diff(d));
            }
            let (si, ti) = (
                shape::list_indexes(&self.db(Side::Source, &db).await?, &coll)
                    .await
                    .map_err(|e| self.err(Side::Source, e))?,
                shape::list_indexes(&self.db(Side::Target, &db).await?, &coll)
                    .await
                    .map_err(|e| self.err(Side::Target, e))?,
            );
            for d in shape::diff_indexes(&si, &ti) {
                out.push(diff(d));
            }
        }
        for db in dbs {
            let views = |specs: Vec<CollectionSpec>| -> BTreeMap<String, Document> {
                specs
                    .into_iter()
                    .filter(|s| s.kind == "view")
                    .map(|s| (s.name, s.options))
                    .collect()
            };
            let src = views(self.collections(Side::Source, &db, None).await?);
            let tgt = views(self.collections(Side::Target, &db, None).await?);
            for (name, options) in &src {
                let detail = match tgt.get(name) {
                    None => vec!["view missing on the target".to_string()],
                    Some(t) => shape::diff_fields("view", options, t, &[]),
                };
                for d in detail {
                    out.push(ShapeDifference {
                        container: db.clone(),
                        object: name.clone(),
                        detail: d,
                    });
                }
            }
        }
        Ok(out)
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
