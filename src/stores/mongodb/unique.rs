//! Unique-key clashes while a range is written again: the delta pass copies a changed `_id`
//! range into a target that already has its unique indexes, and a document of that range may
//! now hold a key that a stale target document of another range still holds (a GridFS file
//! stored again under the same `files_id`, a value moved from one document to another). The
//! stale holder is found through the index's own key fields and removed.

use mongodb::action::Action;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::error::{Error, ErrorKind};
use mongodb::options::Collation;
use mongodb::Database;

use super::{shape, MongoStore};
use crate::core::{Side, StoreError, Unit};

/// MongoDB's duplicate-key error.
pub const DUPLICATE_KEY: i32 = 11000;

/// The position in an insert of the document that clashed on a unique key, if that is the error.
pub fn duplicate_at(e: &Error) -> Option<usize> {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()?
            .iter()
            .find(|w| w.code == DUPLICATE_KEY)
            .map(|w| w.index),
        _ => None,
    }
}

/// Remove the target documents other than `doc` (by `_id`) that hold one of `doc`'s keys in a
/// unique index of the target. Returns how many went.
pub async fn remove_holders(
    store: &MongoStore,
    unit: &Unit,
    doc: &RawDocumentBuf,
) -> Result<u64, StoreError> {
    let db = store.db(Side::Target, &unit.container).await?;
    remove_holders_in(&db, &unit.object, doc)
        .await
        .map_err(|e| store.err(Side::Target, e).in_unit(&unit.name))
}

/// [`remove_holders`] in collection `coll` of the target database `db`, unworded.
pub async fn remove_holders_in(
    db: &Database,
    coll_name: &str,
    doc: &RawDocumentBuf,
) -> Result<u64, Error> {
    let Ok(doc) = doc.to_document() else {
        return Ok(0);
    };
    let Some(id) = doc.get("_id").cloned() else {
        return Ok(0);
    };
    let indexes = shape::list_indexes(db, coll_name).await?;
    let coll = db.collection::<Document>(coll_name);
    let mut removed = 0;
    for spec in indexes
        .iter()
        .filter(|s| s.get_bool("unique").unwrap_or(false) && s.get_str("name").ok() != Some("_id_"))
    {
        let Some(filter) = holders_filter(spec, &doc, &id) else {
            continue;
        };
        let collation = spec
            .get_document("collation")
            .ok()
            .and_then(|c| mongodb::bson::from_document::<Collation>(c.clone()).ok());
        let gone = coll
            .delete_many(filter)
            .optional(collation, |d, c| d.collation(c))
            .await?;
        removed += gone.deleted_count;
    }
    Ok(removed)
}

/// The filter for documents other than `_id` that hold `doc`'s key in the unique index `spec`;
/// `None` when the index does not apply to `doc` or its key cannot be put as a query (a path
/// through an array, a special index type).
fn holders_filter(spec: &Document, doc: &Document, id: &Bson) -> Option<Document> {
    let key = spec.get_document("key").ok()?;
    let sparse = spec.get_bool("sparse").unwrap_or(false);
    let mut parts = vec![doc! {"_id": {"$ne": id.clone()}}];
    let mut present = false;
    for (field, direction) in key {
        if !matches!(direction, Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)) {
            return None;
        }
        match lookup(doc, field)? {
            Some(Bson::Array(items)) => {
                present = true;
                parts.push(doc! {field: {"$in": items}});
            }
            Some(value) => {
                present = true;
                parts.push(doc! {field: {"$eq": value}});
            }
            // The index holds a missing field as null.
            None => parts.push(doc! {field: {"$eq": Bson::Null}}),
        }
    }
    if sparse && !present {
        return None;
    }
    if let Ok(partial) = spec.get_document("partialFilterExpression") {
        parts.push(partial.clone());
    }
    Some(doc! {"$and": parts})
}

/// The value at a dotted path: `Some(None)` when missing, `None` when the path crosses an array.
fn lookup(doc: &Document, path: &str) -> Option<Option<Bson>> {
    let mut here = doc;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let value = match here.get(segment) {
            None => return Some(None),
            Some(v) => v,
        };
        if segments.peek().is_none() {
            return Some(Some(value.clone()));
        }
        match value {
            Bson::Document(inner) => here = inner,
            Bson::Array(_) => return None,
            _ => return Some(None),
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_the_index_keys() {
        let spec = doc! {"name": "files_id_1_n_1", "key": {"files_id": 1, "n": 1}, "unique": true};
        let d = doc! {"_id": 5, "files_id": {"tag": "c4x", "name": "a.png"}, "n": 0, "data": "x"};
        assert_eq!(
            holders_filter(&spec, &d, &Bson::Int32(5)).unwrap(),
            doc! {"$and": [
                {"_id": {"$ne": 5}},
                {"files_id": {"$eq": {"tag": "c4x", "name": "a.png"}}},
                {"n": {"$eq": 0}},
            ]}
        );
        let nested = doc! {"key": {"a.b": 1}, "unique": true, "sparse": true};
        assert_eq!(
            holders_filter(&nested, &doc! {"_id": 1, "a": {"b": "x"}}, &Bson::Int32(1)).unwrap(),
            doc! {"$and": [{"_id": {"$ne": 1}}, {"a.b": {"$eq": "x"}}]}
        );
        assert!(
            holders_filter(&nested, &doc! {"_id": 1}, &Bson::Int32(1)).is_none(),
            "a sparse index does not hold a document without the field"
        );
        assert!(
            holders_filter(&nested, &doc! {"_id": 1, "a": [{"b": 1}]}, &Bson::Int32(1)).is_none(),
            "a path through an array is not followed"
        );
        let partial = doc! {"key": {"u": -1}, "unique": true, "partialFilterExpression": {"u": {"$exists": true}}};
        assert_eq!(
            holders_filter(&partial, &doc! {"_id": 1, "u": [1, 2]}, &Bson::Int32(1)).unwrap(),
            doc! {"$and": [{"_id": {"$ne": 1}}, {"u": {"$in": [1, 2]}}, {"u": {"$exists": true}}]}
        );
    }
}
