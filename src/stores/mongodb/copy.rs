//! Moving and digesting documents: raw `find` cursors over `_id` ranges (kept open between
//! batches, so a collection is read in one pass), batches written as raw BSON with idempotent
//! replays, `_id` split points for big collections, and the digests verification compares.

use mongodb::bson::{doc, Bson, Document, RawBson, RawDocumentBuf};
use mongodb::Cursor as DriverCursor;
use tokio::sync::mpsc;

use super::{keys, MongoStore};
use crate::core::{
    BatchOutcome, ChunkDigest, Cursor, ErrorKind, RowDigest, Side, StoreError, StoreKind, Unit,
};

/// A source cursor left open after a batch, positioned just after `position` (raw cursor bytes).
pub struct OpenRead {
    position: Option<Vec<u8>>,
    cursor: DriverCursor<RawDocumentBuf>,
}

fn bad_cursor(store: &MongoStore, side: Side, c: &Cursor) -> StoreError {
    StoreError::new(
        StoreKind::Mongodb,
        store.endpoint(side).address(),
        ErrorKind::Input,
        format!("unreadable cursor {}", c.0),
        "the job folder was written by another version; start over with --restart",
    )
}

fn decode(store: &MongoStore, side: Side, c: Option<&Cursor>) -> Result<Option<Bson>, StoreError> {
    c.map(|c| keys::decode(c).ok_or_else(|| bad_cursor(store, side, c)))
        .transpose()
}

fn malformed(store: &MongoStore, side: Side, unit: &Unit, why: String) -> StoreError {
    StoreError::new(
        StoreKind::Mongodb,
        store.endpoint(side).address(),
        ErrorKind::Query,
        format!("{}.{}: {why}", unit.container, unit.object),
        "offload copies only documents with an _id; report this collection",
    )
    .in_unit(&unit.name)
}

/// Open a raw `find` over `filter` in `_id` order on one side.
async fn open(
    store: &MongoStore,
    side: Side,
    unit: &Unit,
    filter: Document,
    limit: Option<u64>,
    batch: u64,
    snapshot: bool,
) -> Result<DriverCursor<RawDocumentBuf>, StoreError> {
    let clustered = unit.spec["clustered"].as_bool().unwrap_or(false);
    let unfiltered = filter.is_empty();
    let mut cmd = doc! {"find": unit.object.clone(), "filter": filter, "sort": {"_id": 1}};
    if unfiltered && !clustered {
        cmd.insert("hint", doc! {"_id": 1});
    }
    if let Some(l) = limit {
        cmd.insert("limit", l as i64);
    }
    let batch = batch.clamp(1, 100_000) as u32;
    cmd.insert("batchSize", batch as i32);
    if snapshot && side == Side::Source {
        if let Some(t) = *store.snapshot_time.lock().expect("snapshot time") {
            cmd.insert(
                "readConcern",
                doc! {"level": "snapshot", "atClusterTime": t},
            );
        }
    }
    let db = store.db(side, &unit.container).await?;
    let cursor = db
        .run_cursor_command(cmd)
        .batch_size(batch)
        .await
        .map_err(|e| store.err(side, e).in_unit(&unit.name))?;
    Ok(cursor.with_type::<RawDocumentBuf>())
}

fn batch_docs(store: &MongoStore, unit: &Unit) -> u64 {
    store
        .options
        .batch_docs
        .or_else(|| unit.spec["batch_docs"].as_u64())
        .unwrap_or(1_000)
        .max(1)
}

fn avg_bytes(unit: &Unit) -> u64 {
    unit.spec["avg_bytes"].as_u64().unwrap_or(512).max(16)
}

/// Copy the next batch of a unit after `after`: make sure the target holds nothing of the unit
/// past `after` (a crashed attempt may have left some), then stream documents from the source
/// cursor into inserts on the target, reading the next insert while the previous one is written.
pub async fn copy_batch(
    store: &MongoStore,
    unit: &Unit,
    after: Option<&Cursor>,
) -> Result<BatchOutcome, StoreError> {
    let after = after.or(unit.range.after.as_ref());
    let position = after
        .map(|c| keys::cursor_bytes(c).ok_or_else(|| bad_cursor(store, Side::Source, c)))
        .transpose()?;
    let after_id = decode(store, Side::Source, after)?;
    let upto_id = decode(store, Side::Source, unit.range.upto.as_ref())?;
    let target = store
        .db(Side::Target, &unit.container)
        .await?
        .collection::<RawDocumentBuf>(&unit.object);

    // Idempotence: the target's part of this range past the cursor is cleared unless this
    // process wrote up to exactly here itself. A replayed batch then inserts into empty space.
    let known_clean = store
        .clean
        .lock()
        .expect("clean map")
        .remove(&unit.name)
        .is_some_and(|p| p == position);
    if !known_clean {
        let removed = target
            .delete_many(keys::range_filter(after_id.as_ref(), upto_id.as_ref()))
            .await
            .map_err(|e| store.err(Side::Target, e).in_unit(&unit.name))?;
        if removed.deleted_count > 0 {
            tracing::info!(store = "mongodb", unit = %unit.name, removed = removed.deleted_count, "removed documents an interrupted batch left on the target; copying them again");
        }
    }

    let limit = batch_docs(store, unit);
    let insert_bytes = store.options.insert_bytes;
    let max_bytes = store.options.batch_bytes.saturating_mul(2);
    let open_read = store
        .reads
        .lock()
        .await
        .remove(&unit.name)
        .filter(|o| o.position == position);
    let mut cursor = match open_read {
        Some(o) => o.cursor,
        None => {
            let per_fetch = (insert_bytes as u64 / avg_bytes(unit)).clamp(100, limit.max(100));
            open(
                store,
                Side::Source,
                unit,
                keys::range_filter(after_id.as_ref(), upto_id.as_ref()),
                None,
                per_fetch,
                store.options.snapshot,
            )
            .await?
        }
    };

    let (tx, mut rx) = mpsc::channel::<Vec<RawDocumentBuf>>(1);
    let reader = async {
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut last: Option<RawBson> = None;
        let mut exhausted = false;
        let mut chunk: Vec<RawDocumentBuf> = Vec::new();
        let mut chunk_bytes = 0usize;
        while rows < limit && bytes < max_bytes {
            let more = cursor
                .advance()
                .await
                .map_err(|e| store.err(Side::Source, e).in_unit(&unit.name))?;
            if !more {
                exhausted = true;
                break;
            }
            let doc = cursor.current();
            let id = keys::id_of(doc).map_err(|w| malformed(store, Side::Source, unit, w))?;
            last = Some(id.to_raw_bson());
            rows += 1;
            bytes += doc.as_bytes().len() as u64;
            chunk_bytes += doc.as_bytes().len();
            chunk.push(doc.to_raw_document_buf());
            if chunk_bytes >= insert_bytes {
                chunk_bytes = 0;
                if tx.send(std::mem::take(&mut chunk)).await.is_err() {
                    break; // the writer failed; its error is reported
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(chunk).await;
        }
        drop(tx);
        Ok::<_, StoreError>((rows, bytes, last, exhausted))
    };
    let writer = async {
        while let Some(chunk) = rx.recv().await {
            target
                .insert_many(chunk)
                .ordered(true)
                .bypass_document_validation(true)
                .await
                .map_err(|e| store.err(Side::Target, e).in_unit(&unit.name))?;
        }
        Ok::<(), StoreError>(())
    };
    let (read, written) = tokio::join!(reader, writer);
    written?;
    let (rows, bytes, last, exhausted) = read?;
    if exhausted {
        return Ok(BatchOutcome {
            rows,
            bytes,
            next: None,
            ..BatchOutcome::default()
        });
    }
    let next = match last {
        Some(id) => keys::encode(id.as_raw_bson_ref()),
        // Nothing read and not exhausted cannot happen with a positive limit; be safe.
        None => {
            return Ok(BatchOutcome {
                rows,
                bytes,
                next: None,
                ..BatchOutcome::default()
            })
        }
    };
    let next_position = keys::cursor_bytes(&next);
    store
        .clean
        .lock()
        .expect("clean map")
        .insert(unit.name.clone(), next_position.clone());
    store.reads.lock().await.insert(
        unit.name.clone(),
        OpenRead {
            position: next_position,
            cursor,
        },
    );
    Ok(BatchOutcome {
        rows,
        bytes,
        next: Some(next),
        ..BatchOutcome::default()
    })
}

/// `_id` values that cut a collection into `parts` ranges of about equal document counts, read
/// in one pass over the `_id`s.
pub async fn split_points(
    store: &MongoStore,
    db: &str,
    coll: &str,
    rows: u64,
    parts: u64,
    clustered: bool,
) -> Result<Vec<Cursor>, StoreError> {
    let step = (rows / parts.max(1)).max(1);
    let mut cmd = doc! {"find": coll, "filter": {}, "sort": {"_id": 1}, "projection": {"_id": 1}, "batchSize": 50_000};
    if !clustered {
        cmd.insert("hint", doc! {"_id": 1});
    }
    let mut cursor = store
        .db(Side::Source, db)
        .await?
        .run_cursor_command(cmd)
        .batch_size(50_000)
        .await
        .map_err(|e| store.err(Side::Source, e))?
        .with_type::<RawDocumentBuf>();
    let mut out = Vec::new();
    let mut seen = 0u64;
    while cursor
        .advance()
        .await
        .map_err(|e| store.err(Side::Source, e))?
    {
        seen += 1;
        if seen.is_multiple_of(step) && (out.len() as u64) < parts - 1 && seen < rows {
            if let Ok(id) = keys::id_of(cursor.current()) {
                out.push(keys::encode(id));
            }
        }
    }
    Ok(out)
}

/// Count and ordered digest of the raw documents of an `_id` range on one side.
pub async fn digest_range(
    store: &MongoStore,
    side: Side,
    unit: &Unit,
    after: Option<&Cursor>,
    upto: Option<&Cursor>,
    limit: Option<u64>,
) -> Result<ChunkDigest, StoreError> {
    let filter = keys::range_filter(
        decode(store, side, after)?.as_ref(),
        decode(store, side, upto)?.as_ref(),
    );
    let batch = limit.unwrap_or(10_000).min(10_000);
    let mut cursor = open(store, side, unit, filter, limit, batch, false).await?;
    let mut hasher = blake3::Hasher::new();
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut last: Option<RawBson> = None;
    while cursor
        .advance()
        .await
        .map_err(|e| store.err(side, e).in_unit(&unit.name))?
    {
        let doc = cursor.current();
        let raw = doc.as_bytes();
        hasher.update(&(raw.len() as u64).to_le_bytes());
        hasher.update(raw);
        rows += 1;
        bytes += raw.len() as u64;
        last = Some(
            keys::id_of(doc)
                .map_err(|w| malformed(store, side, unit, w))?
                .to_raw_bson(),
        );
    }
    Ok(ChunkDigest {
        rows,
        bytes,
        digest: hex::encode(&hasher.finalize().as_bytes()[..16]),
        last: last.map(|id| keys::encode(id.as_raw_bson_ref())),
    })
}

/// One digest per document of an `_id` range, named by its `_id`.
pub async fn row_digests(
    store: &MongoStore,
    side: Side,
    unit: &Unit,
    after: Option<&Cursor>,
    upto: Option<&Cursor>,
    cap: usize,
) -> Result<Vec<RowDigest>, StoreError> {
    let filter = keys::range_filter(
        decode(store, side, after)?.as_ref(),
        decode(store, side, upto)?.as_ref(),
    );
    let mut cursor = open(store, side, unit, filter, Some(cap as u64), 10_000, false).await?;
    let mut out = Vec::new();
    while cursor
        .advance()
        .await
        .map_err(|e| store.err(side, e).in_unit(&unit.name))?
    {
        let doc = cursor.current();
        let id = keys::id_of(doc).map_err(|w| malformed(store, side, unit, w))?;
        let key = Bson::try_from(id)
            .map(|b| format!("_id={}", keys::show(&b)))
            .unwrap_or_else(|_| "_id=(unreadable)".into());
        out.push(RowDigest {
            key,
            digest: keys::doc_digest(doc),
        });
    }
    Ok(out)
}
