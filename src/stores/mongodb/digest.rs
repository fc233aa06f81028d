//! Reading without writing: the digests verification and the delta pass compare (count and an
//! ordered hash of the raw bytes of an `_id` range, one hash per document to name differences),
//! and the `_id` split points of big collections.

use mongodb::bson::{doc, Bson, RawBson, RawDocument};
use serde_json::json;

use super::read::{self, decode, Fault, Query};
use super::{keys, MongoStore};
use crate::core::{ChunkDigest, Cursor, KeyRange, RowDigest, Side, StoreError, StoreKind, Unit};

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
    let unit = Unit {
        store: StoreKind::Mongodb,
        name: format!("{db}.{coll}"),
        container: db.to_string(),
        object: coll.to_string(),
        range: KeyRange::default(),
        est_rows: rows,
        est_bytes: 0,
        size_known: true,
        spec: json!({"clustered": clustered}),
    };
    let step = (rows / parts.max(1)).max(1);
    read::sorted_on_disorder(store, Side::Source, &unit, || async {
        let mut ids = read::open(
            store,
            Side::Source,
            &unit,
            Query {
                filter: doc! {},
                limit: None,
                batch: 50_000,
                projection: Some(doc! {"_id": 1}),
                snapshot: false,
            },
        )
        .await?;
        let mut out = Vec::new();
        let mut seen = 0u64;
        while ids.advance(store, Side::Source, &unit).await? {
            seen += 1;
            if seen.is_multiple_of(step) && (out.len() as u64) < parts - 1 && seen < rows {
                if let Ok(id) = keys::id_of(ids.current()) {
                    out.push(keys::encode(id));
                }
            }
        }
        Ok(out)
    })
    .await
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
    let (after, upto) = (decode(store, side, after)?, decode(store, side, upto)?);
    read::sorted_on_disorder(store, side, unit, || async {
        let mut docs = read::open(
            store,
            side,
            unit,
            Query {
                filter: keys::range_filter(after.as_ref(), upto.as_ref()),
                limit,
                batch: limit.unwrap_or(10_000).min(10_000),
                projection: None,
                snapshot: false,
            },
        )
        .await?;
        let mut hasher = blake3::Hasher::new();
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut last: Option<RawBson> = None;
        while docs.advance(store, side, unit).await? {
            let doc = docs.current();
            let raw = doc.as_bytes();
            hasher.update(&(raw.len() as u64).to_le_bytes());
            hasher.update(raw);
            rows += 1;
            bytes += raw.len() as u64;
            last = Some(
                keys::id_of(doc)
                    .map_err(|w| read::malformed(store, side, unit, w))?
                    .to_raw_bson(),
            );
        }
        if docs.cut_untrusted(limit.is_some_and(|l| rows >= l)) {
            return Err(Fault::Disorder);
        }
        Ok(ChunkDigest {
            rows,
            bytes,
            digest: hex::encode(&hasher.finalize().as_bytes()[..16]),
            last: last.map(|id| keys::encode(id.as_raw_bson_ref())),
            ..ChunkDigest::default()
        })
    })
    .await
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
    let (after, upto) = (decode(store, side, after)?, decode(store, side, upto)?);
    read::sorted_on_disorder(store, side, unit, || async {
        let mut docs = read::open(
            store,
            side,
            unit,
            Query {
                filter: keys::range_filter(after.as_ref(), upto.as_ref()),
                limit: Some(cap as u64),
                batch: 10_000,
                projection: None,
                snapshot: false,
            },
        )
        .await?;
        let mut out = Vec::new();
        while docs.advance(store, side, unit).await? {
            out.push(row_digest(store, side, unit, docs.current())?);
        }
        if docs.cut_untrusted(out.len() >= cap) {
            return Err(Fault::Disorder);
        }
        Ok(out)
    })
    .await
}

/// The digest of one document, named by its `_id`: what `row_digests` and the verify of
/// followed keys compare.
pub fn row_digest(
    store: &MongoStore,
    side: Side,
    unit: &Unit,
    doc: &RawDocument,
) -> Result<RowDigest, StoreError> {
    let id = keys::id_of(doc).map_err(|w| read::malformed(store, side, unit, w))?;
    let key = Bson::try_from(id)
        .map(|b| format!("_id={}", keys::show(&b)))
        .unwrap_or_else(|_| "_id=(unreadable)".into());
    Ok(RowDigest {
        key,
        digest: keys::doc_digest(doc),
        cursor: Some(keys::encode(id)),
    })
}
