//! Following a replica-set source after the copy: its change stream, read from the cluster time
//! taken before the copy's first read (or the resume token of the last checkpoint), applied to
//! the target document by document, so the final pass only catches up the last seconds. Every
//! write is idempotent (a document replaced whole by its `_id`, a delete by `_id`), which is
//! why starting the stream before the copy's reads, and replaying events after a crash, both
//! converge. A standalone source has no change stream: the plan says so and the final pass uses
//! the delta pass.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mongodb::bson::{
    doc, Bson, Document, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf, Timestamp,
};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::options::FullDocumentType;
use mongodb::Client;
use serde::{Deserialize, Serialize};

use super::read::{self, Fault, Query};
use super::{digest, endpoint, keys, unique, MongoEndpoint, MongoStore};
use crate::core::follow::{Applied, Follower, Lag, StreamPosition, Touched};
use crate::core::{Cursor, ErrorKind, RowDigest, Side, StoreError, StoreKind, Unit};

/// Longest the server holds an empty `getMore` of the stream: `apply` returns within about its
/// `wait` plus this.
const AWAIT: Duration = Duration::from_millis(250);

/// Events applied by one `apply` at most, so a long backlog is checkpointed as it goes.
const EVENTS_PER_APPLY: u64 = 5_000;

/// Writes sent to the target in one command at most, and about the most bytes of documents.
const WRITES_PER_COMMAND: usize = 1_000;
const COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of documents one `apply` holds at most before it applies them.
const BYTES_PER_APPLY: usize = 32 * 1024 * 1024;

/// How often the count of what is behind is read at most, and how long after it failed it is
/// left alone.
const BEHIND_EVERY: Duration = Duration::from_secs(5);
const BEHIND_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Keys looked up by one query of [`row_digests_at`].
const KEYS_PER_QUERY: usize = 500;

/// Longest the count of what is behind may take before the lag is reported without it.
const BEHIND_COUNT_MS: i64 = 500;

/// MongoDB's codes for a change stream whose starting point the oplog no longer holds.
const HISTORY_LOST: [i32; 2] = [286, 280];

/// A cluster time as the position records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterTime {
    pub t: u32,
    pub i: u32,
}

impl From<Timestamp> for ClusterTime {
    fn from(ts: Timestamp) -> Self {
        ClusterTime {
            t: ts.time,
            i: ts.increment,
        }
    }
}

impl From<ClusterTime> for Timestamp {
    fn from(c: ClusterTime) -> Self {
        Timestamp {
            time: c.t,
            increment: c.i,
        }
    }
}

impl std::fmt::Display for ClusterTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.t, self.i)
    }
}

/// Where the MongoDB change stream is, as the catalog keeps it: before following, the cluster
/// time to start at (inclusive); once following ran, the resume token after the last applied
/// event and the cluster time everything is applied up to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Everything up to this cluster time is applied (or, without `token`, the stream starts
    /// here, this time included).
    pub time: ClusterTime,
    /// The change stream's resume token (relaxed extended JSON), once following ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<serde_json::Value>,
}

impl Position {
    pub fn to_stream(&self) -> StreamPosition {
        StreamPosition(serde_json::to_value(self).expect("position serializes"))
    }

    pub fn of(p: &StreamPosition) -> Option<Position> {
        serde_json::from_value(p.0.clone()).ok()
    }

    fn resume_token(&self) -> Option<ResumeToken> {
        let value = Bson::try_from(self.token.clone()?).ok()?;
        mongodb::bson::from_bson(value).ok()
    }
}

fn token_json(token: &ResumeToken) -> Option<serde_json::Value> {
    mongodb::bson::to_bson(token)
        .ok()
        .map(|b| b.into_relaxed_extjson())
}

/// The cluster time a resume token stands for, where its form is known: MongoDB's tokens are a
/// hex key string that starts with a timestamp (type byte 0x82, then seconds and increment, big
/// endian); SecantusDB's are the hex of a BSON document whose `t` is the timestamp. `None` for
/// any other form (the caller then relies on what it read itself).
pub fn token_time(token: &ResumeToken) -> Option<ClusterTime> {
    let value = mongodb::bson::to_bson(token).ok()?;
    let data = value.as_document()?.get_str("_data").ok()?;
    let bytes = hex::decode(data).ok()?;
    if bytes.first() == Some(&0x82) && bytes.len() >= 9 {
        let t = u32::from_be_bytes(bytes[1..5].try_into().ok()?);
        let i = u32::from_be_bytes(bytes[5..9].try_into().ok()?);
        return Some(ClusterTime { t, i });
    }
    let raw = RawDocument::from_bytes(&bytes).ok()?;
    match raw.get("t").ok()?? {
        RawBsonRef::Timestamp(ts) => Some(ts.into()),
        _ => None,
    }
}

/// The source's current operation time (`None` from a server that keeps none: standalone).
pub async fn operation_time(store: &MongoStore) -> Result<Option<ClusterTime>, StoreError> {
    let reply = store
        .command(Side::Source, "admin", doc! {"ping": 1})
        .await?;
    Ok(match reply.get("operationTime") {
        Some(Bson::Timestamp(t)) => Some((*t).into()),
        _ => None,
    })
}

/// Whether a `hello` reply comes from a server with change streams (a replica-set member or a
/// mongos router).
pub fn has_change_stream(hello: &Document) -> bool {
    hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid")
}

/// Where following must start after this run's copy (see `Store::stream_start`): the earlier of
/// the cluster time this run read before its first read and what earlier runs recorded.
pub fn stream_start(
    this_run: Option<ClusterTime>,
    earlier: Option<&StreamPosition>,
) -> Option<StreamPosition> {
    let this_run = this_run?;
    let start = match earlier.and_then(Position::of) {
        Some(before) if before.time < this_run => before.time,
        _ => this_run,
    };
    Some(
        Position {
            time: start,
            token: None,
        }
        .to_stream(),
    )
}

/// A unit of the job, as the follower finds the unit of a changed document.
#[derive(Debug, Clone)]
struct UnitRange {
    name: String,
    after: Option<Bson>,
    upto: Option<Bson>,
}

/// The job's units by (database, collection).
type UnitIndex = BTreeMap<(String, String), Vec<UnitRange>>;

fn index_units(units: &[Unit]) -> UnitIndex {
    let mut out: UnitIndex = BTreeMap::new();
    for u in units {
        out.entry((u.container.clone(), u.object.clone()))
            .or_default()
            .push(UnitRange {
                name: u.name.clone(),
                after: u.range.after.as_ref().and_then(keys::decode),
                upto: u.range.upto.as_ref().and_then(keys::decode),
            });
    }
    out
}

/// Whether `id` lies in (after, upto], as the server orders `_id`s; `None` where the order of
/// the values cannot be told here.
fn in_range(id: &Bson, r: &UnitRange) -> Option<bool> {
    if let Some(a) = &r.after {
        if keys::compare(id, a)? != Ordering::Greater {
            return Some(false);
        }
    }
    if let Some(u) = &r.upto {
        if keys::compare(id, u)? == Ordering::Greater {
            return Some(false);
        }
    }
    Some(true)
}

/// What the verify in the window must look at after a change to `id` in `(db, coll)`: the key in
/// its unit, or every unit of the collection whole when the unit cannot be told.
fn touched_by(units: &UnitIndex, db: &str, coll: &str, id: Option<RawBsonRef<'_>>) -> Vec<Touched> {
    let Some(ranges) = units.get(&(db.to_string(), coll.to_string())) else {
        return Vec::new();
    };
    let whole = || {
        ranges
            .iter()
            .map(|r| Touched {
                unit: r.name.clone(),
                key: None,
            })
            .collect()
    };
    let Some(id) = id else {
        return whole();
    };
    let cursor = keys::encode(id);
    if ranges.len() == 1 && ranges[0].after.is_none() && ranges[0].upto.is_none() {
        return vec![Touched {
            unit: ranges[0].name.clone(),
            key: Some(cursor),
        }];
    }
    let Ok(value) = Bson::try_from(id) else {
        return whole();
    };
    let mut found = None;
    for r in ranges {
        match in_range(&value, r) {
            Some(true) => {
                found = Some(r.name.clone());
                break;
            }
            Some(false) => {}
            None => return whole(),
        }
    }
    match found {
        Some(unit) => vec![Touched {
            unit,
            key: Some(cursor),
        }],
        None => whole(),
    }
}

/// The change stream's `$match`: the job's collections, the events that end following for them
/// (a rename into one of their names, a dropped database), and `invalidate`, which has no `ns`.
fn stream_filter(units: &UnitIndex) -> Document {
    let mut by_db: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (db, coll) in units.keys() {
        by_db.entry(db).or_default().push(coll);
    }
    let mut or: Vec<Bson> = Vec::new();
    for (db, colls) in &by_db {
        or.push(Bson::Document(
            doc! {"ns.db": *db, "ns.coll": {"$in": colls.clone()}},
        ));
        or.push(Bson::Document(
            doc! {"to.db": *db, "to.coll": {"$in": colls.clone()}},
        ));
        or.push(Bson::Document(
            doc! {"ns.db": *db, "operationType": "dropDatabase"},
        ));
    }
    or.push(Bson::Document(doc! {"operationType": "invalidate"}));
    doc! {"$match": {"$or": or}}
}

/// The resume token of a raw change event.
#[derive(Deserialize)]
struct TokenOnly {
    #[serde(rename = "_id")]
    id: ResumeToken,
}

/// One change event, read from its raw form.
struct Event<'a> {
    token: ResumeToken,
    kind: &'a str,
    db: &'a str,
    coll: &'a str,
    id: Option<RawBsonRef<'a>>,
    full: Option<&'a RawDocument>,
    time: Option<ClusterTime>,
    /// Milliseconds since the epoch of the source's write, where the event carries it.
    wall_ms: Option<i64>,
    /// The transaction the event belongs to (`lsid` bytes and `txnNumber`), when in one.
    txn: Option<(Vec<u8>, i64)>,
    to: Option<String>,
}

impl<'a> Event<'a> {
    fn parse(raw: &'a RawDocument) -> Option<Event<'a>> {
        let token = mongodb::bson::from_slice::<TokenOnly>(raw.as_bytes())
            .ok()?
            .id;
        let ns = raw.get_document("ns").ok();
        let txn_number = match raw.get("txnNumber").ok().flatten() {
            Some(RawBsonRef::Int64(n)) => Some(n),
            Some(RawBsonRef::Int32(n)) => Some(i64::from(n)),
            _ => None,
        };
        let txn = match (raw.get_document("lsid"), txn_number) {
            (Ok(lsid), Some(n)) => Some((lsid.as_bytes().to_vec(), n)),
            _ => None,
        };
        Some(Event {
            token,
            kind: raw.get_str("operationType").ok()?,
            db: ns.and_then(|n| n.get_str("db").ok()).unwrap_or(""),
            coll: ns.and_then(|n| n.get_str("coll").ok()).unwrap_or(""),
            id: raw
                .get_document("documentKey")
                .ok()
                .and_then(|k| k.get("_id").ok().flatten()),
            full: raw.get_document("fullDocument").ok(),
            time: raw.get_timestamp("clusterTime").ok().map(Into::into),
            wall_ms: raw
                .get_datetime("wallTime")
                .ok()
                .map(|d| d.timestamp_millis()),
            txn,
            to: raw.get_document("to").ok().map(|t| {
                format!(
                    "{}.{}",
                    t.get_str("db").unwrap_or("?"),
                    t.get_str("coll").unwrap_or("?")
                )
            }),
        })
    }

    /// Events of one transaction share its cluster time and are applied together; any other
    /// event is a group of its own.
    fn group(&self) -> Option<(Option<ClusterTime>, Vec<u8>, i64)> {
        self.txn
            .as_ref()
            .map(|(lsid, n)| (self.time, lsid.clone(), *n))
    }
}

/// A write a change event asks of the target.
enum Op {
    /// Put this whole document in place of the one with this `_id` (or where none is).
    Put(RawBson, RawDocumentBuf),
    Delete(RawBson),
}

impl Op {
    fn is_put(&self) -> bool {
        matches!(self, Op::Put(..))
    }

    fn bytes(&self) -> usize {
        match self {
            Op::Put(_, d) => d.as_bytes().len() + 64,
            Op::Delete(_) => 64,
        }
    }
}

/// The ordered `update` (every op a put) or `delete` command for these ops.
fn write_command(coll: &str, ops: &[Op]) -> RawDocumentBuf {
    let mut statements = RawArrayBuf::new();
    for op in ops {
        let (Op::Put(id, _) | Op::Delete(id)) = op;
        let mut q = RawDocumentBuf::new();
        q.append("_id", id.clone());
        let mut s = RawDocumentBuf::new();
        s.append("q", q);
        match op {
            Op::Put(_, doc) => {
                s.append("u", doc.clone());
                s.append("upsert", true);
            }
            Op::Delete(_) => s.append("limit", 1),
        }
        statements.push(s);
    }
    let mut cmd = RawDocumentBuf::new();
    let put = ops.first().is_some_and(Op::is_put);
    if put {
        cmd.append("update", coll);
        cmd.append("updates", statements);
        cmd.append("bypassDocumentValidation", true);
    } else {
        cmd.append("delete", coll);
        cmd.append("deletes", statements);
    }
    cmd.append("ordered", true);
    cmd
}

/// What applies events to the target (everything of the follower but its stream, which is not
/// shared between threads).
struct Applier {
    source: MongoEndpoint,
    target: MongoEndpoint,
    source_client: Client,
    target_client: Client,
    units: UnitIndex,
}

/// The follower of a MongoDB replica set's change stream.
pub struct MongoFollower {
    applier: Applier,
    stream: ChangeStream<RawDocumentBuf>,
    /// Where the target is: everything up to `position.time` applied.
    position: Position,
    /// An event read but not applied yet: the first of the next transaction, read when `apply`
    /// was due to return, or one that ends following, read after changes still to checkpoint.
    pending: Option<RawDocumentBuf>,
    /// When the count of what is behind may be read next, and the last count read.
    behind_next: Instant,
    behind_last: Option<u64>,
}

impl MongoFollower {
    /// Open the source's change stream at `from` (a start time, or a checkpoint's token).
    pub async fn open(
        store: &MongoStore,
        from: &StreamPosition,
        units: &[Unit],
    ) -> Result<MongoFollower, StoreError> {
        let position = Position::of(from).ok_or_else(|| {
            StoreError::new(
                StoreKind::Mongodb,
                store.source.address(),
                ErrorKind::Input,
                format!("unreadable change-stream position {}", from.0),
                "the job folder was written by another version; copy again with --restart, then follow",
            )
        })?;
        let source_client = store.client(Side::Source).await?.clone();
        let target_client = store.client(Side::Target).await?.clone();
        let units = index_units(units);
        let mut watch = source_client
            .watch()
            .pipeline([stream_filter(&units)])
            .full_document(FullDocumentType::UpdateLookup)
            .max_await_time(AWAIT)
            .batch_size(1_000);
        watch = match position.resume_token() {
            Some(token) => watch.resume_after(token),
            None => watch.start_at_operation_time(position.time.into()),
        };
        let stream = watch
            .await
            .map_err(|e| opening_error(store, &position, e))?
            .with_type::<RawDocumentBuf>();
        tracing::info!(store = "mongodb", from = %position.time, resumed = position.token.is_some(), "following the source's change stream");
        Ok(MongoFollower {
            applier: Applier {
                source: store.source.clone(),
                target: store.target.clone(),
                source_client,
                target_client,
                units,
            },
            stream,
            position,
            pending: None,
            behind_next: Instant::now(),
            behind_last: None,
        })
    }

    /// What is behind, read at most every [`BEHIND_EVERY`] (and left alone a while after a
    /// count failed or took too long: some servers scan their whole oplog to count).
    async fn behind(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now < self.behind_next {
            return self.behind_last;
        }
        let counted = self.applier.behind(self.position.time).await;
        self.behind_next = now
            + if counted.is_some() {
                BEHIND_EVERY
            } else {
                BEHIND_AFTER_FAILURE
            };
        self.behind_last = counted;
        counted
    }

    fn source_err(&self, e: mongodb::error::Error) -> StoreError {
        if endpoint::error_code(&e).is_some_and(|c| HISTORY_LOST.contains(&c)) {
            return history_lost(&self.applier.source.address(), &self.position, &e);
        }
        endpoint::map_error(Side::Source, &self.applier.source, e)
    }
}

impl Applier {
    fn target_err(&self, e: mongodb::error::Error, db: &str, coll: &str) -> StoreError {
        endpoint::map_error(Side::Target, &self.target, e).in_unit(format!("{db}.{coll}"))
    }

    /// An event that following cannot apply: it stops, naming the event.
    fn ending(&self, ev: &Event<'_>) -> StoreError {
        let at = ev
            .time
            .map(|t| format!(" at cluster time {t}"))
            .unwrap_or_default();
        let what = match ev.kind {
            "drop" => format!("collection {}.{} was dropped on the source{at}", ev.db, ev.coll),
            "rename" => format!(
                "collection {}.{} was renamed to {} on the source{at}",
                ev.db,
                ev.coll,
                ev.to.as_deref().unwrap_or("?")
            ),
            "dropDatabase" => format!("database {} was dropped on the source{at}", ev.db),
            "invalidate" => format!("the source invalidated the change stream{at}"),
            other => format!(
                "the source's change stream holds a `{other}` event for {}.{}{at}, which following cannot apply",
                ev.db, ev.coll
            ),
        };
        let mut e = StoreError::new(
            StoreKind::Mongodb,
            self.source.address(),
            ErrorKind::Unsupported,
            format!("{what}: following stops here (every change before it is applied and checkpointed)"),
            "following applies document changes only: run the final pass with the delta pass (`offload copy --resume --delta`, or `offload migrate --resume --freeze-source` without a follower), or, if the collection changed on purpose, copy again with --restart",
        );
        if !ev.db.is_empty() && !ev.coll.is_empty() {
            e = e.in_unit(format!("{}.{}", ev.db, ev.coll));
        }
        e
    }

    /// Apply these change events to the target, in stream order per collection (collections
    /// are independent): runs of puts and of deletes, each as few `update` / `delete` commands
    /// as their size allows. The keys they touched go to `touched`.
    async fn apply_events(
        &self,
        events: &[RawDocumentBuf],
        touched: &mut Vec<Touched>,
    ) -> Result<(), StoreError> {
        let mut by_coll: BTreeMap<(String, String), Vec<Op>> = BTreeMap::new();
        for raw in events {
            let Some(ev) = Event::parse(raw) else {
                continue;
            };
            let unit = format!("{}.{}", ev.db, ev.coll);
            let Some(id) = ev.id else {
                return Err(StoreError::new(
                    StoreKind::Mongodb,
                    self.source.address(),
                    ErrorKind::Query,
                    format!(
                        "a `{}` event for {unit} carries no documentKey._id",
                        ev.kind
                    ),
                    "report this server: offload follows documents by _id",
                )
                .in_unit(unit));
            };
            touched.extend(touched_by(&self.units, ev.db, ev.coll, Some(id)));
            let op = match ev.kind {
                "delete" => Op::Delete(id.to_raw_bson()),
                // An update whose lookup found nothing: the document is gone by now, and its
                // delete follows in the stream.
                "update" if ev.full.is_none() => continue,
                _ => {
                    let full = ev.full.ok_or_else(|| {
                        StoreError::new(
                            StoreKind::Mongodb,
                            self.source.address(),
                            ErrorKind::Query,
                            format!("an `{}` event for {unit} carries no fullDocument", ev.kind),
                            "report this server: offload needs the documents in insert and replace events",
                        )
                        .in_unit(unit.clone())
                    })?;
                    Op::Put(id.to_raw_bson(), full.to_raw_document_buf())
                }
            };
            by_coll
                .entry((ev.db.to_string(), ev.coll.to_string()))
                .or_default()
                .push(op);
        }
        for ((db, coll), ops) in by_coll {
            for run in ops.chunk_by(|a, b| a.is_put() == b.is_put()) {
                let mut from = 0;
                while from < run.len() {
                    let mut to = from;
                    let mut bytes = 0usize;
                    while to < run.len()
                        && to - from < WRITES_PER_COMMAND
                        && (to == from || bytes < COMMAND_BYTES)
                    {
                        bytes += run[to].bytes();
                        to += 1;
                    }
                    self.write(&db, &coll, &run[from..to], touched).await?;
                    from = to;
                }
            }
        }
        Ok(())
    }

    /// One ordered `update` (puts) or `delete` command. A unique-key clash with a target
    /// document that still holds a key the put document now has (its own change comes later in
    /// the stream) removes that holder and goes on from there; the collection is then verified
    /// whole.
    async fn write(
        &self,
        db: &str,
        coll: &str,
        ops: &[Op],
        touched: &mut Vec<Touched>,
    ) -> Result<(), StoreError> {
        let database = self.target_client.database(db);
        let (mut from, mut rounds) = (0usize, 0usize);
        while from < ops.len() {
            let reply = database
                .run_raw_command(write_command(coll, &ops[from..]))
                .await
                .map_err(|e| self.target_err(e, db, coll))?;
            let failed = |detail: String| {
                StoreError::new(
                    StoreKind::Mongodb,
                    self.target.address(),
                    ErrorKind::Query,
                    detail,
                    "fix the cause the server names, then run `offload follow` again: it resumes from its checkpoint",
                )
                .in_unit(format!("{db}.{coll}"))
            };
            if let Ok(w) = reply.get_document("writeConcernError") {
                return Err(failed(format!(
                    "write concern error {}: {}",
                    w.get_i32("code").unwrap_or(0),
                    w.get_str("errmsg").unwrap_or("")
                )));
            }
            let Some(error) = reply
                .get_array("writeErrors")
                .ok()
                .and_then(|a| a.first())
                .and_then(|e| e.as_document())
            else {
                return Ok(());
            };
            let index = match error.get("index") {
                Some(Bson::Int32(n)) => *n as usize,
                Some(Bson::Int64(n)) => *n as usize,
                _ => 0,
            };
            let code = error.get_i32("code").unwrap_or(0);
            let message = error.get_str("errmsg").unwrap_or("").to_string();
            let at = from + index.min(ops.len() - from - 1);
            if let (unique::DUPLICATE_KEY, Op::Put(_, doc)) = (code, &ops[at]) {
                if rounds <= ops.len() + 4 {
                    let removed = unique::remove_holders_in(&database, coll, doc)
                        .await
                        .map_err(|e| self.target_err(e, db, coll))?;
                    if removed > 0 {
                        tracing::info!(store = "mongodb", collection = %format!("{db}.{coll}"), removed, "removed target documents holding a unique key a followed document now has; the collection is verified whole");
                        touched.extend(touched_by(&self.units, db, coll, None));
                        from = at;
                        rounds += 1;
                        continue;
                    }
                }
            }
            return Err(failed(format!("write error {code}: {message}")));
        }
        Ok(())
    }

    /// How many writes of the job's collections the source's oplog holds after `after`; `None`
    /// when the oplog cannot be read (no privilege on `local`) or not in time.
    async fn behind(&self, after: ClusterTime) -> Option<u64> {
        let namespaces: Vec<String> = self
            .units
            .keys()
            .map(|(db, coll)| format!("{db}.{coll}"))
            .collect();
        let oplog = self
            .source_client
            .database("local")
            .collection::<Document>("oplog.rs");
        let filter = doc! {
            "ts": {"$gt": Timestamp::from(after)},
            "$or": [{"ns": {"$in": namespaces}}, {"ns": "admin.$cmd"}],
        };
        match oplog
            .count_documents(filter)
            .max_time(Duration::from_millis(BEHIND_COUNT_MS as u64))
            .await
        {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(store = "mongodb", error = %e, "the source's oplog could not be counted; the lag is shown without what is behind");
                None
            }
        }
    }
}

fn history_lost(address: &str, position: &Position, e: &mongodb::error::Error) -> StoreError {
    StoreError::new(
        StoreKind::Mongodb,
        address,
        ErrorKind::Unsupported,
        format!(
            "the source's oplog no longer holds the point following must resume from (cluster time {}): {e}",
            position.time
        ),
        "the changes since then cannot be replayed: run the final pass with the delta pass (`offload copy --resume --delta`), or copy again with --restart and follow from the new copy; a larger oplog (replSetResizeOplog) keeps more history",
    )
}

fn opening_error(store: &MongoStore, position: &Position, e: mongodb::error::Error) -> StoreError {
    let address = store.source.address();
    match endpoint::error_code(&e) {
        Some(c) if HISTORY_LOST.contains(&c) => history_lost(&address, position, &e),
        // Not a replica set (40573), or change streams not supported at all.
        Some(40573) | Some(115) | Some(59) => StoreError::new(
            StoreKind::Mongodb,
            address,
            ErrorKind::Unsupported,
            format!("the source has no change streams: {e}"),
            "a standalone server has none; run it as a one-node replica set (mongod --replSet rs0, then rs.initiate()) to follow it, or let the final pass use the delta pass",
        ),
        _ => endpoint::map_error(Side::Source, &store.source, e),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl Follower for MongoFollower {
    async fn apply(&mut self, wait: Duration) -> Result<Applied, StoreError> {
        let deadline = Instant::now() + wait;
        // Read before any getMore of this call: an empty reply after it means the stream holds
        // nothing older (for servers whose resume tokens do not show their time).
        let before = self.applier.source_head_time().await.ok().flatten();
        let (mut events, mut transactions) = (0u64, 0u64);
        let mut batch: Vec<RawDocumentBuf> = Vec::new();
        let mut bytes = 0usize;
        let mut group: Option<(Option<ClusterTime>, Vec<u8>, i64)> = None;
        let mut last: Option<(ResumeToken, Option<ClusterTime>, Option<i64>)> = None;
        let mut idle = false;
        loop {
            let raw = match self.pending.take() {
                Some(raw) => raw,
                None => match self.stream.next_if_any().await {
                    Ok(Some(raw)) => raw,
                    Ok(None) => {
                        idle = true;
                        break;
                    }
                    Err(e) => return Err(self.source_err(e)),
                },
            };
            let Some(ev) = Event::parse(&raw) else {
                return Err(StoreError::new(
                    StoreKind::Mongodb,
                    self.applier.source.address(),
                    ErrorKind::Query,
                    "an unreadable change event (no _id token or operationType)",
                    "report this server: offload reads change events as MongoDB documents them",
                ));
            };
            let this_group = ev.group();
            let new_group = this_group.is_none() || this_group != group;
            let document_change = matches!(ev.kind, "insert" | "update" | "replace" | "delete");
            let full = Instant::now() >= deadline
                || events >= EVENTS_PER_APPLY
                || bytes >= BYTES_PER_APPLY;
            if events > 0 && new_group && (!document_change || full) {
                // Apply and checkpoint what is held; this event starts the next call.
                drop(ev);
                self.pending = Some(raw);
                break;
            }
            if !document_change {
                return Err(self.applier.ending(&ev));
            }
            events += 1;
            if new_group {
                transactions += 1;
            }
            group = this_group;
            last = Some((ev.token.clone(), ev.time, ev.wall_ms));
            drop(ev);
            bytes += raw.as_bytes().len();
            batch.push(raw);
        }
        let mut touched = Vec::new();
        self.applier.apply_events(&batch, &mut touched).await?;
        for _ in 0..events {
            crate::core::failpoint::counted("mongodb-followed");
        }
        let mut lag = Lag {
            behind_unit: "events".into(),
            ..Lag::default()
        };
        if let Some((token, time, wall_ms)) = &last {
            if let Some(t) = time {
                self.position.time = self.position.time.max(*t);
            }
            self.position.token = token_json(token);
            let at_ms = wall_ms.or(time.map(|t| t.t as i64 * 1000));
            lag.seconds = at_ms.map(|ms| ((now_ms() - ms).max(0) as f64) / 1000.0);
        }
        if idle {
            // Everything the source wrote up to the stream's high-water mark is applied, and
            // everything up to the operation time read before this call's empty reply (a server
            // may move its operation time on without writing, as SecantusDB does for every
            // command, so the high-water mark alone may never reach a head read later).
            if let Some(token) = self.stream.resume_token() {
                if let Some(t) = token_time(&token) {
                    self.position.time = self.position.time.max(t);
                }
                self.position.token = token_json(&token).or(self.position.token.take());
            }
            if let Some(t) = before {
                self.position.time = self.position.time.max(t);
            }
            lag.behind = Some(0);
        } else {
            lag.behind = self.behind().await;
        }
        Ok(Applied {
            position: self.position.to_stream(),
            events,
            transactions,
            lag,
            touched,
        })
    }

    async fn source_head(&mut self) -> Result<StreamPosition, StoreError> {
        let time = self.applier.source_head_time().await?.ok_or_else(|| {
            StoreError::new(
                StoreKind::Mongodb,
                self.applier.source.address(),
                ErrorKind::Unsupported,
                "the source reports no operation time, so where its change stream ends cannot be told",
                "follow only a replica-set source; the final pass uses the delta pass otherwise",
            )
        })?;
        Ok(Position { time, token: None }.to_stream())
    }

    fn caught_up(&self, head: &StreamPosition) -> bool {
        Position::of(head).is_some_and(|h| self.position.time >= h.time)
    }

    async fn close(self: Box<Self>) {
        drop(self.stream);
    }
}

impl Applier {
    async fn source_head_time(&self) -> Result<Option<ClusterTime>, StoreError> {
        let reply = self
            .source_client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| endpoint::map_error(Side::Source, &self.source, e))?;
        Ok(match reply.get("operationTime") {
            Some(Bson::Timestamp(t)) => Some((*t).into()),
            _ => None,
        })
    }
}

/// Per-document digests of the documents with these `_id`s on one side, as `row_digests`
/// computes them (a key with no document is left out), in `_id` order.
pub async fn row_digests_at(
    store: &MongoStore,
    side: Side,
    unit: &Unit,
    keys_wanted: &[Cursor],
) -> Result<Vec<RowDigest>, StoreError> {
    let mut out = Vec::new();
    for chunk in keys_wanted.chunks(KEYS_PER_QUERY) {
        let ids = chunk
            .iter()
            .map(|c| read::decode(store, side, Some(c)).map(|v| v.expect("a key was given")))
            .collect::<Result<Vec<Bson>, StoreError>>()?;
        let filter = doc! {"_id": {"$in": ids}};
        let found = read::sorted_on_disorder(store, side, unit, || async {
            let mut docs = read::open(
                store,
                side,
                unit,
                Query {
                    filter: filter.clone(),
                    limit: None,
                    batch: KEYS_PER_QUERY as u64,
                    projection: None,
                    snapshot: false,
                },
            )
            .await?;
            let mut found = Vec::new();
            while docs.advance(store, side, unit).await? {
                found.push(digest::row_digest(store, side, unit, docs.current())?);
            }
            Ok::<_, Fault>(found)
        })
        .await?;
        out.extend(found);
    }
    out.sort_by(|a, b| {
        let id = |r: &RowDigest| r.cursor.as_ref().and_then(keys::decode);
        match (id(a), id(b)) {
            (Some(x), Some(y)) => keys::compare(&x, &y).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::KeyRange;

    fn unit(name: &str, after: Option<Bson>, upto: Option<Bson>) -> Unit {
        let cursor = |v: Bson| {
            let mut d = RawDocumentBuf::new();
            d.append("_id", mongodb::bson::RawBson::try_from(v).unwrap());
            keys::encode(d.get("_id").unwrap().unwrap())
        };
        Unit {
            store: StoreKind::Mongodb,
            name: name.into(),
            container: "openedx".into(),
            object: "big".into(),
            range: KeyRange {
                after: after.map(cursor),
                upto: upto.map(cursor),
            },
            est_rows: 0,
            est_bytes: 0,
            size_known: true,
            spec: serde_json::Value::Null,
        }
    }

    fn raw_id(v: Bson) -> RawDocumentBuf {
        let mut d = RawDocumentBuf::new();
        d.append("_id", mongodb::bson::RawBson::try_from(v).unwrap());
        d
    }

    #[test]
    fn a_changed_document_is_named_in_the_unit_whose_range_holds_its_id() {
        let units = index_units(&[
            unit("openedx.big#1", None, Some(Bson::Int32(10))),
            unit(
                "openedx.big#2",
                Some(Bson::Int32(10)),
                Some(Bson::String("m".into())),
            ),
            unit("openedx.big#3", Some(Bson::String("m".into())), None),
        ]);
        let named = |v: Bson| {
            let d = raw_id(v);
            touched_by(&units, "openedx", "big", d.get("_id").unwrap())
                .into_iter()
                .map(|t| (t.unit, t.key.is_some()))
                .collect::<Vec<_>>()
        };
        assert_eq!(named(Bson::Int32(10)), vec![("openedx.big#1".into(), true)]);
        assert_eq!(
            named(Bson::Double(10.5)),
            vec![("openedx.big#2".into(), true)]
        );
        assert_eq!(
            named(Bson::String("a".into())),
            vec![("openedx.big#2".into(), true)]
        );
        assert_eq!(
            named(Bson::String("z".into())),
            vec![("openedx.big#3".into(), true)]
        );
        // An ObjectId sorts after every string.
        assert_eq!(
            named(Bson::ObjectId(mongodb::bson::oid::ObjectId::new())),
            vec![("openedx.big#3".into(), true)]
        );
        // A value whose order is not known here: the whole collection is verified.
        let whole = named(Bson::Decimal128(mongodb::bson::Decimal128::from_bytes(
            [0; 16],
        )));
        assert_eq!(whole.len(), 3);
        assert!(whole.iter().all(|(_, key)| !key));
        let d = raw_id(Bson::Int32(1));
        assert!(touched_by(&units, "openedx", "other", d.get("_id").unwrap()).is_empty());
    }

    #[test]
    fn positions_round_trip_and_the_earliest_start_wins() {
        let at = |t, i| ClusterTime { t, i };
        let p = stream_start(Some(at(100, 2)), None).unwrap();
        assert_eq!(Position::of(&p).unwrap().time, at(100, 2));
        let earlier = stream_start(Some(at(90, 7)), None).unwrap();
        assert_eq!(
            Position::of(&stream_start(Some(at(100, 2)), Some(&earlier)).unwrap())
                .unwrap()
                .time,
            at(90, 7)
        );
        let later = stream_start(Some(at(120, 0)), None).unwrap();
        assert_eq!(
            Position::of(&stream_start(Some(at(100, 2)), Some(&later)).unwrap())
                .unwrap()
                .time,
            at(100, 2)
        );
        assert_eq!(
            stream_start(None, Some(&earlier)),
            None,
            "a standalone source gives none"
        );

        let token: ResumeToken =
            mongodb::bson::from_bson(Bson::Document(doc! {"_data": "8263A1B2C3000000042B0229"}))
                .unwrap();
        let pos = Position {
            time: at(1, 1),
            token: token_json(&token),
        };
        let back = Position::of(&pos.to_stream()).unwrap();
        assert_eq!(back, pos);
        assert_eq!(back.resume_token(), Some(token));
    }

    #[test]
    fn resume_tokens_show_their_cluster_time_in_both_known_forms() {
        // MongoDB's key string: 0x82, then seconds and increment, big endian.
        let mongod: ResumeToken =
            mongodb::bson::from_bson(Bson::Document(doc! {"_data": "8263A1B2C3000000042B0229"}))
                .unwrap();
        assert_eq!(
            token_time(&mongod),
            Some(ClusterTime {
                t: 0x63A1B2C3,
                i: 4
            })
        );
        // SecantusDB's: the hex of a BSON document whose `t` is the time.
        let inner = doc! {"s": 9, "t": Timestamp { time: 1_796_671_413, increment: 6 }, "n": "t.c"};
        let secantus: ResumeToken = mongodb::bson::from_bson(Bson::Document(
            doc! {"_data": hex::encode(mongodb::bson::to_vec(&inner).unwrap())},
        ))
        .unwrap();
        assert_eq!(
            token_time(&secantus),
            Some(ClusterTime {
                t: 1_796_671_413,
                i: 6
            })
        );
        let other: ResumeToken =
            mongodb::bson::from_bson(Bson::Document(doc! {"_data": "zz"})).unwrap();
        assert_eq!(token_time(&other), None);
    }

    #[test]
    fn puts_and_deletes_become_ordered_commands_by_id() {
        let id = |n: i32| mongodb::bson::RawBson::Int32(n);
        let mut d = RawDocumentBuf::new();
        d.append("_id", 1);
        d.append("v", "x");
        let puts = write_command("docs", &[Op::Put(id(1), d.clone()), Op::Put(id(2), d)]);
        let puts = puts.to_document().unwrap();
        assert_eq!(puts.get_str("update").unwrap(), "docs");
        assert!(puts.get_bool("ordered").unwrap());
        assert!(puts.get_bool("bypassDocumentValidation").unwrap());
        let first = puts.get_array("updates").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(
            first,
            doc! {"q": {"_id": 1}, "u": {"_id": 1, "v": "x"}, "upsert": true}
        );
        let deletes = write_command("docs", &[Op::Delete(id(3))])
            .to_document()
            .unwrap();
        assert_eq!(deletes.get_str("delete").unwrap(), "docs");
        assert_eq!(
            deletes.get_array("deletes").unwrap()[0],
            Bson::Document(doc! {"q": {"_id": 3}, "limit": 1})
        );
    }

    #[test]
    fn the_stream_filter_names_every_collection_of_the_job_and_the_events_that_end_following() {
        let mut u2 = unit("openedx.small", None, None);
        u2.object = "small".into();
        let mut u3 = unit("cs_comments_service.contents", None, None);
        u3.container = "cs_comments_service".into();
        u3.object = "contents".into();
        let f = stream_filter(&index_units(&[unit("openedx.big", None, None), u2, u3]));
        let text = f.to_string();
        assert!(
            text.contains(r#""ns.coll": { "$in": ["big", "small"] }"#),
            "{text}"
        );
        assert!(text.contains(r#""ns.db": "cs_comments_service""#), "{text}");
        assert!(
            text.contains("dropDatabase") && text.contains("invalidate"),
            "{text}"
        );
        assert!(text.contains(r#""to.db": "openedx""#), "{text}");
    }
}
