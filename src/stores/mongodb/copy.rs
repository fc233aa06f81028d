//! Moving documents: a source read per unit kept open between batches (so a collection is read
//! in one pass), batches written as raw BSON into cleared space so a replay is harmless, and the
//! clearing of a range for the delta pass.

use std::time::{Duration, Instant};

use mongodb::bson::{Bson, RawBson, RawDocumentBuf};
use mongodb::Collection;
use serde_json::json;

use super::ahead::{Cuts, Next, ReadAhead};
use super::read::{self, bad_cursor, decode, Fault, Query};
use super::{keys, unique, MongoStore};
use crate::core::{BatchOutcome, Cursor, ErrorKind, KeyRange, Side, StoreError, StoreKind, Unit};

/// A source read left open after a batch, positioned just after `position` (raw cursor bytes);
/// it goes on reading ahead meanwhile.
pub struct OpenRead {
    position: Option<Vec<u8>>,
    read: ReadAhead,
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

/// Copy the next batch of a unit after `after`. When the source walked the collection out of
/// `_id` order, the unit starts over from its beginning, read sorted: what was written in walk
/// order may be missing documents that sort before the cursor.
pub async fn copy_batch(
    store: &MongoStore,
    unit: &Unit,
    after: Option<&Cursor>,
) -> Result<BatchOutcome, StoreError> {
    match copy_once(store, unit, after).await {
        Ok(outcome) => Ok(outcome),
        Err(Fault::Store(e)) => Err(e),
        Err(Fault::Disorder) => {
            read::mark_sorted(store, Side::Source, &unit.container, &unit.object);
            tracing::info!(store = "mongodb", unit = %unit.name, "copying this unit again from its start, reading the source sorted by _id");
            read::sorted_on_disorder(store, Side::Source, unit, || {
                copy_once(store, unit, unit.range.after.as_ref())
            })
            .await
        }
    }
}

/// One batch: make sure the target holds nothing of the unit past `after` (a crashed attempt
/// may have left some), then write into the target what the source read holds, in inserts of
/// about `insert_bytes`, while the read goes on reading ahead (see `ahead`).
async fn copy_once(
    store: &MongoStore,
    unit: &Unit,
    after: Option<&Cursor>,
) -> Result<BatchOutcome, Fault> {
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
    // process wrote up to exactly here itself (or cleared it). A replayed batch then inserts
    // into empty space.
    let slot = range_slot(unit);
    let known_clean = store
        .clean
        .lock()
        .expect("clean map")
        .remove(&slot)
        .is_some_and(|p| p == position);
    let open_read = store
        .reads
        .lock()
        .await
        .remove(&slot)
        .filter(|o| o.position == position);
    // A position an earlier process reached by walking the index, at a sub-document `_id`: the
    // walk's order may not have been the server's sort order, so what precedes it is in doubt.
    if open_read.is_none()
        && after.is_some_and(|c| c.0["walk"] == json!(true))
        && matches!(after_id, Some(Bson::Document(_)))
    {
        return Err(Fault::Disorder);
    }
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
    let mut source = match open_read {
        Some(o) => o.read,
        None => {
            let per_fetch = (insert_bytes as u64 / avg_bytes(unit)).clamp(100, limit.max(100));
            let (read, turn) = read::open_in_turn(
                store,
                Side::Source,
                unit,
                Query {
                    filter: keys::range_filter(after_id.as_ref(), upto_id.as_ref()),
                    limit: None,
                    batch: per_fetch,
                    projection: None,
                    snapshot: store.options.snapshot,
                },
            )
            .await?;
            let cuts = Cuts {
                insert_bytes: insert_bytes as u64,
                batch_docs: limit,
                batch_bytes: store.options.batch_bytes.saturating_mul(2),
            };
            ReadAhead::start(read, turn, &store.ahead, cuts, &unit.name)
        }
    };

    // Write what the read holds until its batch ends or the read does.
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut last: Option<RawBson> = None;
    let (mut waited, mut writing) = (Duration::ZERO, Duration::ZERO);
    let exhausted = loop {
        let asked = Instant::now();
        let next = source.next().await;
        waited += asked.elapsed();
        let chunk = match next {
            Next::Chunk(chunk) => chunk,
            Next::End => break true,
            Next::Stop(stop) => return Err(stop.into_fault(store, Side::Source, unit)),
            Next::Lost => return Err(Fault::Store(lost_read(store, unit))),
        };
        rows += chunk.docs.len() as u64;
        bytes += chunk.bytes;
        let started = Instant::now();
        insert(store, &target, unit, chunk.docs).await?;
        writing += started.elapsed();
        drop(chunk.share);
        last = Some(chunk.last);
        if chunk.ends_batch {
            break false;
        }
    };
    tracing::debug!(store = "mongodb", unit = %unit.name, rows, bytes, waited_ms = waited.as_millis() as u64, writing_ms = writing.as_millis() as u64, "batch written");
    let done = BatchOutcome {
        rows,
        bytes,
        next: None,
        ..BatchOutcome::default()
    };
    // A batch that ends holds at least one document; be safe.
    let (false, Some(id)) = (exhausted, last) else {
        return Ok(done);
    };
    let mut next = keys::encode(id.as_raw_bson_ref());
    if source.walk {
        next.0["walk"] = json!(true);
    }
    let next_position = keys::cursor_bytes(&next);
    store
        .clean
        .lock()
        .expect("clean map")
        .insert(slot.clone(), next_position.clone());
    store.reads.lock().await.insert(
        slot,
        OpenRead {
            position: next_position,
            read: source,
        },
    );
    Ok(BatchOutcome {
        next: Some(next),
        ..done
    })
}

/// A read that ended without saying how: retried, from the last checkpoint.
fn lost_read(store: &MongoStore, unit: &Unit) -> StoreError {
    StoreError::new(
        StoreKind::Mongodb,
        store.endpoint(Side::Source).address(),
        ErrorKind::Transient,
        format!(
            "{}.{}: the source read stopped unexpectedly",
            unit.container, unit.object
        ),
        "the batch is copied again from the last checkpoint; if this repeats, rerun with OFFLOAD_LOG=offload=debug and report it",
    )
    .in_unit(&unit.name)
}

/// Where a unit's open read and clean mark are kept: by name and end of range, so a part of a
/// unit (the delta pass copies one chunk at a time) never picks up a read meant for another end.
fn range_slot(unit: &Unit) -> String {
    let upto = unit.range.upto.as_ref().and_then(keys::cursor_bytes);
    format!(
        "{}|{}",
        unit.name,
        upto.map(hex::encode).unwrap_or_default()
    )
}

/// Insert documents in order. A unique-key clash with a target document outside the range being
/// written (the delta pass copies a range again while the target's unique indexes stay) removes
/// that stale document and goes on; its own range differs from the source then and is copied
/// again when the pass reaches it. Any other failure stops the batch.
async fn insert(
    store: &MongoStore,
    target: &Collection<RawDocumentBuf>,
    unit: &Unit,
    mut docs: Vec<RawDocumentBuf>,
) -> Result<(), StoreError> {
    let mut rounds = 0usize;
    loop {
        let e = match target
            .insert_many(&docs)
            .ordered(true)
            .bypass_document_validation(true)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let clash = unique::duplicate_at(&e).filter(|i| *i < docs.len());
        let (Some(at), true) = (clash, rounds < docs.len() + 8) else {
            return Err(store.err(Side::Target, e).in_unit(&unit.name));
        };
        let removed = unique::remove_holders(store, unit, &docs[at]).await?;
        if removed == 0 {
            return Err(store.err(Side::Target, e).in_unit(&unit.name));
        }
        tracing::info!(store = "mongodb", unit = %unit.name, removed, "removed target documents holding a unique key that a copied document now has; their range is compared and copied again by the delta pass");
        // An ordered insert wrote everything before the clash.
        docs.drain(..at);
        rounds += 1;
    }
}

/// Delete the target's documents of an `_id` range (after, upto], so the delta pass can copy the
/// range afresh; documents deleted on the source go with them. Safe to repeat.
pub async fn clear_range(
    store: &MongoStore,
    unit: &Unit,
    after: Option<&Cursor>,
    upto: Option<&Cursor>,
) -> Result<(), StoreError> {
    let part = Unit {
        range: KeyRange {
            after: after.cloned(),
            upto: upto.cloned(),
        },
        ..unit.clone()
    };
    let slot = range_slot(&part);
    store.clean.lock().expect("clean map").remove(&slot);
    store.reads.lock().await.remove(&slot);
    let filter = keys::range_filter(
        decode(store, Side::Target, after)?.as_ref(),
        decode(store, Side::Target, upto)?.as_ref(),
    );
    let removed = store
        .db(Side::Target, &unit.container)
        .await?
        .collection::<RawDocumentBuf>(&unit.object)
        .delete_many(filter)
        .await
        .map_err(|e| store.err(Side::Target, e).in_unit(&unit.name))?;
    tracing::debug!(store = "mongodb", unit = %unit.name, removed = removed.deleted_count, "cleared a range on the target");
    // The first batch of the range need not clear it again.
    let position = after
        .map(|c| keys::cursor_bytes(c).ok_or_else(|| bad_cursor(store, Side::Target, c)))
        .transpose()?;
    store
        .clean
        .lock()
        .expect("clean map")
        .insert(slot, position);
    Ok(())
}
