//! Reading a collection in `_id` order. A whole collection is read by walking its `_id` index
//! (a `hint`), which SecantusDB answers about ten times faster than a sort; but SecantusDB walks
//! sub-document `_id`s in its own key order, not the server's sort order that `_id` range
//! filters use. So every walk is checked as it goes, and a collection whose walk is out of order
//! is read sorted from then on. A range (a filter) is always read sorted. Reads of one server
//! take turns at asking for their first reply (see `turns`).

use std::future::Future;

use mongodb::bson::{doc, Bson, Document, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::Cursor as DriverCursor;

use super::turns::Turn;
use super::{keys, MongoStore};
use crate::core::{Cursor, ErrorKind, Side, StoreError, StoreKind, Unit};

/// Why a read stopped.
pub enum Fault {
    Store(StoreError),
    /// An index walk returned documents out of `_id` order, or a cut of it cannot be trusted.
    Disorder,
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Fault {
        Fault::Store(e)
    }
}

pub fn bad_cursor(store: &MongoStore, side: Side, c: &Cursor) -> StoreError {
    StoreError::new(
        StoreKind::Mongodb,
        store.endpoint(side).address(),
        ErrorKind::Input,
        format!("unreadable cursor {}", c.0),
        "the job folder was written by another version; start over with --restart",
    )
}

pub fn decode(
    store: &MongoStore,
    side: Side,
    c: Option<&Cursor>,
) -> Result<Option<Bson>, StoreError> {
    c.map(|c| keys::decode(c).ok_or_else(|| bad_cursor(store, side, c)))
        .transpose()
}

pub fn malformed(store: &MongoStore, side: Side, unit: &Unit, why: String) -> StoreError {
    StoreError::new(
        StoreKind::Mongodb,
        store.endpoint(side).address(),
        ErrorKind::Query,
        format!("{}.{}: {why}", unit.container, unit.object),
        "offload copies only documents with an _id; report this collection",
    )
    .in_unit(&unit.name)
}

fn sorted_key(side: Side, db: &str, coll: &str) -> String {
    format!("{side}|{db}.{coll}")
}

/// Whether this collection on this side must be read sorted rather than by walking its index.
fn sorted_only(store: &MongoStore, side: Side, db: &str, coll: &str) -> bool {
    store
        .sorted_only
        .lock()
        .expect("sorted set")
        .contains(&sorted_key(side, db, coll))
}

/// Read this collection on this side sorted from now on.
pub fn mark_sorted(store: &MongoStore, side: Side, db: &str, coll: &str) {
    tracing::info!(store = "mongodb", %side, collection = %format!("{db}.{coll}"), "the server's walk of this collection's _id index does not follow _id order (SecantusDB walks sub-document _ids in an order of its own); reading it sorted instead");
    store
        .sorted_only
        .lock()
        .expect("sorted set")
        .insert(sorted_key(side, db, coll));
}

/// Run a read; when it reports disorder, mark the collection and run it once more, sorted.
pub async fn sorted_on_disorder<T, F, Fut>(
    store: &MongoStore,
    side: Side,
    unit: &Unit,
    read: F,
) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Fault>>,
{
    for _ in 0..2 {
        match read().await {
            Ok(v) => return Ok(v),
            Err(Fault::Store(e)) => return Err(e),
            Err(Fault::Disorder) => mark_sorted(store, side, &unit.container, &unit.object),
        }
    }
    Err(StoreError::new(
        StoreKind::Mongodb,
        store.endpoint(side).address(),
        ErrorKind::Query,
        format!(
            "{}.{}: the server returns documents out of _id order even when asked to sort them",
            unit.container, unit.object
        ),
        "report this server and collection; offload needs a server that sorts by _id",
    )
    .in_unit(&unit.name))
}

/// A `find` in `_id` order on one side; an index walk is checked document by document.
pub struct Read {
    cursor: DriverCursor<RawDocumentBuf>,
    /// Whether this is an index walk (no sort asked of the server).
    pub walk: bool,
    prev: Option<RawBson>,
}

/// Why a read stopped, before it is put in a store's words (a read that runs in a task of its
/// own has no store at hand).
pub enum ReadStop {
    Driver(mongodb::error::Error),
    Disorder,
    /// A document without a usable `_id`: why.
    Malformed(String),
}

impl ReadStop {
    pub fn into_fault(self, store: &MongoStore, side: Side, unit: &Unit) -> Fault {
        match self {
            ReadStop::Driver(e) => Fault::Store(store.err(side, e).in_unit(&unit.name)),
            ReadStop::Disorder => Fault::Disorder,
            ReadStop::Malformed(why) => Fault::Store(malformed(store, side, unit, why)),
        }
    }
}

impl Read {
    /// The next document; `false` at the end. On a walk, `Disorder` when it is not after the
    /// previous one.
    pub async fn advance(
        &mut self,
        store: &MongoStore,
        side: Side,
        unit: &Unit,
    ) -> Result<bool, Fault> {
        self.next()
            .await
            .map_err(|stop| stop.into_fault(store, side, unit))
    }

    /// [`Read::advance`] without a store: why it stopped, unworded.
    pub async fn next(&mut self) -> Result<bool, ReadStop> {
        let more = self.cursor.advance().await.map_err(ReadStop::Driver)?;
        if more && self.walk {
            let id = keys::id_of(self.cursor.current()).map_err(ReadStop::Malformed)?;
            if let Some(prev) = &self.prev {
                if keys::out_of_order(prev.as_raw_bson_ref(), id) {
                    return Err(ReadStop::Disorder);
                }
            }
            self.prev = Some(id.to_raw_bson());
        }
        Ok(more)
    }

    pub fn current(&self) -> &RawDocument {
        self.cursor.current()
    }

    /// Whether a walk cut short by a limit may have left out documents that sort before its
    /// last one: only where that last `_id` is a sub-document (see the module note).
    pub fn cut_untrusted(&self, cut: bool) -> bool {
        self.walk
            && cut
            && matches!(
                self.prev.as_ref().map(|p| p.as_raw_bson_ref()),
                Some(RawBsonRef::Document(_))
            )
    }
}

/// What to read.
pub struct Query {
    pub filter: Document,
    pub limit: Option<u64>,
    /// Documents per reply.
    pub batch: u64,
    pub projection: Option<Document>,
    /// Read at the copy's cluster time (`--mongodb-snapshot`, source only).
    pub snapshot: bool,
}

/// Open a raw `find` over `q.filter` in `_id` order on one side: a whole collection by walking
/// its `_id` index unless it has to be read sorted, a range sorted.
pub async fn open(
    store: &MongoStore,
    side: Side,
    unit: &Unit,
    q: Query,
) -> Result<Read, StoreError> {
    Ok(open_in_turn(store, side, unit, q).await?.0)
}

/// [`open`], handing back the turn it took so the caller can keep it a while (a read that reads
/// ahead keeps it until it holds its share of documents).
pub async fn open_in_turn(
    store: &MongoStore,
    side: Side,
    unit: &Unit,
    q: Query,
) -> Result<(Read, Turn), StoreError> {
    let clustered = unit.spec["clustered"].as_bool().unwrap_or(false);
    let walk = q.filter.is_empty()
        && !clustered
        && !sorted_only(store, side, &unit.container, &unit.object);
    let mut cmd = doc! {"find": unit.object.clone(), "filter": q.filter, "sort": {"_id": 1}};
    if walk {
        cmd.insert("hint", doc! {"_id": 1});
    }
    if let Some(p) = q.projection {
        cmd.insert("projection", p);
    }
    if let Some(l) = q.limit {
        cmd.insert("limit", l as i64);
    }
    let batch = q.batch.clamp(1, 100_000) as u32;
    cmd.insert("batchSize", batch as i32);
    if q.snapshot && side == Side::Source {
        if let Some(t) = *store.snapshot_time.lock().expect("snapshot time") {
            cmd.insert(
                "readConcern",
                doc! {"level": "snapshot", "atClusterTime": t},
            );
        }
    }
    let db = store.db(side, &unit.container).await?;
    // The smallest collection first; one not sized in time is taken to be large.
    let size = if unit.size_known {
        unit.est_bytes
    } else {
        u64::MAX
    };
    let asked = std::time::Instant::now();
    let turn = store.turns(side).take(size).await;
    let waited = asked.elapsed();
    let cursor = db
        .run_cursor_command(cmd)
        .batch_size(batch)
        .await
        .map_err(|e| store.err(side, e).in_unit(&unit.name))?;
    tracing::debug!(store = "mongodb", %side, unit = %unit.name, turn_ms = waited.as_millis() as u64, reply_ms = (asked.elapsed() - waited).as_millis() as u64, "first reply of a read");
    let read = Read {
        cursor: cursor.with_type::<RawDocumentBuf>(),
        walk,
        prev: None,
    };
    Ok((read, turn))
}
