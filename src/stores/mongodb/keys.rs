//! `_id` keys: how a position in a collection is saved as a cursor (the exact BSON value, as hex
//! of its raw bytes, so a resume compares the same value), how `_id` ranges become query filters
//! that hold across BSON types, and how keys and documents are named and digested.

use std::cmp::Ordering;

use mongodb::bson::spec::ElementType;
use mongodb::bson::{doc, Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf};
use serde_json::json;

use crate::core::Cursor;

/// The cursor for a position just after this `_id`.
pub fn encode(id: RawBsonRef<'_>) -> Cursor {
    let mut buf = RawDocumentBuf::new();
    buf.append("_id", id.to_raw_bson());
    let shown = Bson::try_from(id)
        .map(|b| show(&b))
        .unwrap_or_else(|_| "(unreadable _id)".into());
    Cursor(json!({"id": hex::encode(buf.as_bytes()), "key": shown}))
}

/// The raw bytes of a cursor's one-field `{_id: value}` document.
pub fn cursor_bytes(c: &Cursor) -> Option<Vec<u8>> {
    hex::decode(c.0.get("id")?.as_str()?).ok()
}

/// The `_id` value a cursor holds.
pub fn decode(c: &Cursor) -> Option<Bson> {
    let bytes = cursor_bytes(c)?;
    let raw = RawDocumentBuf::from_bytes(bytes).ok()?;
    let value = raw.get("_id").ok()??;
    Bson::try_from(value).ok()
}

/// A key as people read it: relaxed extended JSON (`{"$oid": "..."}`, `"slug"`, `42`).
pub fn show(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

/// Where a BSON type sorts among the others, as the server orders mixed types: every number
/// together, strings with symbols, then objects, binary, ObjectId, booleans, dates, timestamps...
pub fn bracket(t: ElementType) -> u8 {
    use ElementType as T;
    match t {
        T::MinKey => 0,
        T::Undefined => 1,
        T::Null => 2,
        T::Double | T::Int32 | T::Int64 | T::Decimal128 => 3,
        T::String | T::Symbol => 4,
        T::EmbeddedDocument => 5,
        T::Array => 6,
        T::Binary => 7,
        T::ObjectId => 8,
        T::Boolean => 9,
        T::DateTime => 10,
        T::Timestamp => 11,
        T::RegularExpression => 12,
        T::DbPointer => 13,
        T::JavaScriptCode => 14,
        T::JavaScriptCodeWithScope => 15,
        T::MaxKey => 16,
    }
}

/// `$type` codes of each bracket, in bracket order.
const TYPE_CODES: [&[i32]; 17] = [
    &[-1],
    &[6],
    &[10],
    &[1, 16, 18, 19],
    &[2, 14],
    &[3],
    &[4],
    &[5],
    &[7],
    &[8],
    &[9],
    &[17],
    &[11],
    &[12],
    &[13],
    &[15],
    &[127],
];

fn codes(brackets: impl Iterator<Item = usize>) -> Vec<Bson> {
    brackets
        .flat_map(|b| TYPE_CODES[b].iter().map(|c| Bson::Int32(*c)))
        .collect()
}

/// The filter for `_id` strictly after `after` and up to and including `upto`, in the server's
/// order across types. `$gt`/`$lte` alone compare within one type bracket only (`$gt: 5` never
/// matches a string), so each bound also admits every later (or earlier) bracket by `$type`.
pub fn range_filter(after: Option<&Bson>, upto: Option<&Bson>) -> Document {
    let mut parts: Vec<Document> = Vec::new();
    if let Some(a) = after {
        let b = bracket(a.element_type()) as usize;
        let later = codes(b + 1..TYPE_CODES.len());
        parts.push(if later.is_empty() {
            doc! {"_id": {"$gt": a.clone()}}
        } else {
            doc! {"$or": [{"_id": {"$gt": a.clone()}}, {"_id": {"$type": later}}]}
        });
    }
    if let Some(u) = upto {
        let b = bracket(u.element_type()) as usize;
        let earlier = codes(0..b);
        parts.push(if earlier.is_empty() {
            doc! {"_id": {"$lte": u.clone()}}
        } else {
            doc! {"$or": [{"_id": {"$lte": u.clone()}}, {"_id": {"$type": earlier}}]}
        });
    }
    match parts.len() {
        0 => Document::new(),
        1 => parts.pop().expect("one part"),
        _ => doc! {"$and": parts},
    }
}

/// Whether `cur` fails to sort strictly after `prev` in the server's `_id` order, as far as a
/// walk of the `_id` index needs checking: across type brackets, and between sub-documents
/// (SecantusDB's index walk orders sub-documents by its own key encoding, e.g. `{x: "b"}` before
/// `{x: "aa"}`; scalars it orders right, as does every mongod). A pair of sub-documents this
/// cannot rank counts as out of order, which only costs a sorted read.
pub fn out_of_order(prev: RawBsonRef<'_>, cur: RawBsonRef<'_>) -> bool {
    let (a, b) = (bracket(prev.element_type()), bracket(cur.element_type()));
    if a != b {
        return a > b;
    }
    match (prev, cur) {
        (RawBsonRef::Document(p), RawBsonRef::Document(c)) => {
            compare_documents(p, c) != Some(Ordering::Less)
        }
        _ => false,
    }
}

/// The server's order of two `_id` values: type bracket first, then value; `None` where a value
/// is of a kind this does not rank.
pub fn compare(a: &Bson, b: &Bson) -> Option<Ordering> {
    let (ra, rb) = (
        mongodb::bson::RawBson::try_from(a.clone()).ok()?,
        mongodb::bson::RawBson::try_from(b.clone()).ok()?,
    );
    let (ra, rb) = (ra.as_raw_bson_ref(), rb.as_raw_bson_ref());
    match bracket(ra.element_type()).cmp(&bracket(rb.element_type())) {
        Ordering::Equal => compare_values(ra, rb),
        other => Some(other),
    }
}

/// The server's order of two documents: element by element, type bracket, then field name,
/// then value; a prefix sorts first. `None` where a value is of a kind this does not rank.
fn compare_documents(a: &RawDocument, b: &RawDocument) -> Option<Ordering> {
    let (mut a, mut b) = (a.iter(), b.iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Some(Ordering::Equal),
            (None, Some(_)) => return Some(Ordering::Less),
            (Some(_), None) => return Some(Ordering::Greater),
            (Some(x), Some(y)) => {
                let ((kx, vx), (ky, vy)) = (x.ok()?, y.ok()?);
                let by_type = bracket(vx.element_type()).cmp(&bracket(vy.element_type()));
                let mut order = by_type.then_with(|| kx.as_bytes().cmp(ky.as_bytes()));
                if order == Ordering::Equal {
                    order = compare_values(vx, vy)?;
                }
                if order != Ordering::Equal {
                    return Some(order);
                }
            }
        }
    }
}

/// The server's order of two values of one type bracket, for the kinds an `_id` is made of.
fn compare_values(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> Option<Ordering> {
    use RawBsonRef as R;
    let exact = |v: RawBsonRef<'_>| -> Option<f64> {
        match v {
            R::Int32(n) => Some(n as f64),
            R::Int64(n) if n.unsigned_abs() <= 1 << 53 => Some(n as f64),
            R::Double(d) if !d.is_nan() => Some(d),
            _ => None,
        }
    };
    Some(match (a, b) {
        (R::Int32(x), R::Int32(y)) => x.cmp(&y),
        (R::Int64(x), R::Int64(y)) => x.cmp(&y),
        (R::Int32(x), R::Int64(y)) => i64::from(x).cmp(&y),
        (R::Int64(x), R::Int32(y)) => x.cmp(&i64::from(y)),
        (x, y) if exact(x).is_some() && exact(y).is_some() => exact(x)?.partial_cmp(&exact(y)?)?,
        (R::String(x), R::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (R::Document(x), R::Document(y)) => compare_documents(x, y)?,
        (R::Binary(x), R::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(y.bytes)),
        (R::ObjectId(x), R::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (R::Boolean(x), R::Boolean(y)) => x.cmp(&y),
        (R::DateTime(x), R::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (R::Timestamp(x), R::Timestamp(y)) => (x.time, x.increment).cmp(&(y.time, y.increment)),
        (R::Null, R::Null) | (R::MinKey, R::MinKey) | (R::MaxKey, R::MaxKey) => Ordering::Equal,
        _ => return None,
    })
}

/// 16 bytes of BLAKE3 over a document's raw bytes.
pub fn doc_digest(d: &RawDocument) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(d.as_bytes()).as_bytes()[..16]);
    out
}

/// The `_id` of a raw document, or an error text naming the trouble.
pub fn id_of(d: &RawDocument) -> Result<RawBsonRef<'_>, String> {
    match d.get("_id") {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err("a document has no _id".into()),
        Err(e) => Err(format!("a document is not valid BSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn cursors_keep_the_exact_value() {
        for v in [
            Bson::ObjectId(ObjectId::parse_str("5f1e2d3c4b5a697887766554").unwrap()),
            Bson::Int64(7),
            Bson::Double(7.0),
            Bson::String("block-v1:edX+DemoX".into()),
            Bson::Document(doc! {"tag": "c4x", "org": "edX", "name": "a.png"}),
        ] {
            let mut d = RawDocumentBuf::new();
            d.append("_id", mongodb::bson::RawBson::try_from(v.clone()).unwrap());
            let c = encode(d.get("_id").unwrap().unwrap());
            let back = decode(&c).unwrap();
            assert_eq!(back, v);
            assert_eq!(back.element_type(), v.element_type(), "the type survives");
        }
    }

    #[test]
    fn sub_documents_are_ranked_as_the_server_sorts_them() {
        let id = |v: Bson| {
            let mut d = RawDocumentBuf::new();
            d.append("_id", mongodb::bson::RawBson::try_from(v).unwrap());
            d
        };
        let ordered = |a: Bson, b: Bson| {
            let (a, b) = (id(a), id(b));
            !out_of_order(
                a.get("_id").unwrap().unwrap(),
                b.get("_id").unwrap().unwrap(),
            )
        };
        // What SecantusDB's index walk gets wrong: the shorter string inside is not first.
        assert!(ordered(
            Bson::Document(doc! {"x": "aa"}),
            Bson::Document(doc! {"x": "b"})
        ));
        assert!(!ordered(
            Bson::Document(doc! {"x": "b"}),
            Bson::Document(doc! {"x": "aa"})
        ));
        // Field names before values, a prefix first, numbers across their types.
        assert!(ordered(
            Bson::Document(doc! {"a": 9}),
            Bson::Document(doc! {"b": 1})
        ));
        assert!(ordered(
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1, "b": 0})
        ));
        assert!(ordered(
            Bson::Document(doc! {"a": 1.5}),
            Bson::Document(doc! {"a": 2i64})
        ));
        assert!(ordered(
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": "1"})
        ));
        // The contentstore's asset keys.
        assert!(ordered(
            Bson::Document(doc! {"tag": "c4x", "name": "handout é.txt", "revision": Bson::Null}),
            Bson::Document(doc! {"tag": "c4x", "name": "logo.png", "revision": Bson::Null})
        ));
        // Across brackets: strings before documents before ObjectIds; equal is out of order.
        assert!(ordered(Bson::String("z".into()), Bson::Document(doc! {})));
        assert!(!ordered(Bson::Document(doc! {}), Bson::String("z".into())));
        assert!(!ordered(
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1})
        ));
        // Unranked kinds inside a sub-document count as out of order.
        assert!(!ordered(
            Bson::Document(
                doc! {"a": Bson::Decimal128(mongodb::bson::Decimal128::from_bytes([0; 16]))}
            ),
            Bson::Document(
                doc! {"a": Bson::Decimal128(mongodb::bson::Decimal128::from_bytes([1; 16]))}
            )
        ));
    }

    #[test]
    fn ranges_admit_later_and_earlier_types() {
        let f = range_filter(Some(&Bson::Int32(5)), Some(&Bson::String("m".into())));
        let text = f.to_string();
        assert!(text.contains("$and"), "{text}");
        // After a number come strings (2), objects (3), ...; before a string come numbers.
        assert!(text.contains("\"$gt\": 5"), "{text}");
        let later = &f.get_array("$and").unwrap()[0];
        let later = later.as_document().unwrap().get_array("$or").unwrap()[1]
            .as_document()
            .unwrap()
            .get_document("_id")
            .unwrap()
            .get_array("$type")
            .unwrap()
            .clone();
        assert!(later.contains(&Bson::Int32(2)) && later.contains(&Bson::Int32(7)));
        assert!(
            !later.contains(&Bson::Int32(16)),
            "numbers are not after a number"
        );
        assert_eq!(
            range_filter(Some(&Bson::MaxKey), None),
            doc! {"_id": {"$gt": Bson::MaxKey}}
        );
        assert_eq!(range_filter(None, None), Document::new());
    }
}
