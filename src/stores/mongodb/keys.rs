//! `_id` keys: how a position in a collection is saved as a cursor (the exact BSON value, as hex
//! of its raw bytes, so a resume compares the same value), how `_id` ranges become query filters
//! that hold across BSON types, and how keys and documents are named and digested.

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
