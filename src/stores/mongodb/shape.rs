//! What a collection is besides its documents: its creation options (capped size, validator,
//! collation, clustered index), its indexes and the views of a database. Read from the source,
//! recreated on the target, and compared between the two.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;

/// One entry of `listCollections`.
#[derive(Debug, Clone)]
pub struct CollectionSpec {
    pub name: String,
    /// `collection`, `view` or `timeseries`.
    pub kind: String,
    pub options: Document,
}

impl CollectionSpec {
    pub fn capped(&self) -> bool {
        self.options.get_bool("capped").unwrap_or(false)
    }

    pub fn clustered(&self) -> bool {
        self.options.contains_key("clusteredIndex")
    }

    /// Whether offload copies its documents: ordinary collections, not the server's own.
    pub fn is_data(&self) -> bool {
        self.kind == "collection" && (!self.name.starts_with("system.") || self.name == "system.js")
    }

    /// The `create` command that makes this collection (or view) with the same options.
    pub fn create_command(&self) -> Document {
        let mut cmd = doc! {"create": self.name.clone()};
        for (k, v) in &self.options {
            match k.as_str() {
                // Gone from current servers; an `_id` index is always built.
                "autoIndexId" => {}
                "clusteredIndex" => {
                    let mut v = v.clone();
                    if let Bson::Document(d) = &mut v {
                        d.remove("v");
                    }
                    cmd.insert(k.clone(), v);
                }
                _ => {
                    cmd.insert(k.clone(), v.clone());
                }
            }
        }
        cmd
    }
}

/// Every collection and view of a database, in name order, with options as the server reports them.
pub async fn list_collections(
    db: &Database,
    name: Option<&str>,
) -> mongodb::error::Result<Vec<CollectionSpec>> {
    let mut cmd = doc! {"listCollections": 1};
    if let Some(n) = name {
        cmd.insert("filter", doc! {"name": n});
    }
    let mut cursor = db.run_cursor_command(cmd).await?;
    let mut out = Vec::new();
    while let Some(d) = cursor.try_next().await? {
        out.push(CollectionSpec {
            name: d.get_str("name").unwrap_or_default().to_string(),
            kind: d.get_str("type").unwrap_or("collection").to_string(),
            options: d.get_document("options").cloned().unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The index specifications of a collection as `listIndexes` gives them, without `ns` (a
/// leftover of old servers); empty when the collection does not exist.
pub async fn list_indexes(db: &Database, coll: &str) -> mongodb::error::Result<Vec<Document>> {
    let mut cursor = match db.run_cursor_command(doc! {"listIndexes": coll}).await {
        Ok(c) => c,
        Err(e) if is_code(&e, 26) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    while let Some(mut d) = cursor.try_next().await? {
        d.remove("ns");
        out.push(d);
    }
    Ok(out)
}

/// The indexes to build on the target: every index but `_id_`, without the index version
/// (the target picks its own current one).
pub fn indexes_to_create(specs: &[Document]) -> Vec<Document> {
    specs
        .iter()
        .filter(|d| d.get_str("name").ok() != Some("_id_"))
        .map(|d| {
            let mut d = d.clone();
            d.remove("v");
            d
        })
        .collect()
}

/// Whether a driver error is a server error with this code.
pub fn is_code(e: &mongodb::error::Error, code: i32) -> bool {
    match &*e.kind {
        mongodb::error::ErrorKind::Command(c) => c.code == code,
        _ => false,
    }
}

/// A value as canonical extended JSON, for exact comparison (types and nested order included).
fn canonical(v: &Bson) -> String {
    v.clone().into_canonical_extjson().to_string()
}

/// Top-level fields of a document as comparable text, ignoring the given keys.
fn fields(d: &Document, ignore: &[&str]) -> BTreeMap<String, String> {
    d.iter()
        .filter(|(k, _)| !ignore.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), canonical(v)))
        .collect()
}

/// Differences between two option documents, in words; empty when they agree.
pub fn diff_fields(
    what: &str,
    source: &Document,
    target: &Document,
    ignore: &[&str],
) -> Vec<String> {
    let (a, b) = (fields(source, ignore), fields(target, ignore));
    let mut out = Vec::new();
    for (k, va) in &a {
        match b.get(k) {
            None => out.push(format!(
                "{what}: `{k}` is {va} on the source, absent on the target"
            )),
            Some(vb) if vb != va => out.push(format!(
                "{what}: `{k}` is {va} on the source, {vb} on the target"
            )),
            _ => {}
        }
    }
    for (k, vb) in &b {
        if !a.contains_key(k) {
            out.push(format!(
                "{what}: `{k}` is {vb} on the target, absent on the source"
            ));
        }
    }
    out
}

/// Differences between the index lists of the two sides, by index name.
pub fn diff_indexes(source: &[Document], target: &[Document]) -> Vec<String> {
    let by_name = |list: &[Document]| -> BTreeMap<String, Document> {
        list.iter()
            .map(|d| (d.get_str("name").unwrap_or("?").to_string(), d.clone()))
            .collect()
    };
    let (a, b) = (by_name(source), by_name(target));
    let mut out = Vec::new();
    for (name, da) in &a {
        match b.get(name) {
            None => out.push(format!("index `{name}` is missing on the target")),
            Some(db) => out.extend(diff_fields(
                &format!("index `{name}`"),
                da,
                db,
                &["v", "ns"],
            )),
        }
    }
    for name in b.keys() {
        if !a.contains_key(name) {
            out.push(format!("index `{name}` on the target is not on the source"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_key_order_and_options_are_compared() {
        let src = vec![
            doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            doc! {"v": 2, "key": {"a": 1, "b": -1}, "name": "ab", "unique": true},
        ];
        let same = vec![
            doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            doc! {"v": 1, "unique": true, "key": {"a": 1, "b": -1}, "name": "ab"},
        ];
        assert!(
            diff_indexes(&src, &same).is_empty(),
            "v and option order do not matter"
        );
        let swapped = vec![
            doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            doc! {"v": 2, "key": {"b": -1, "a": 1}, "name": "ab", "unique": true},
        ];
        let d = diff_indexes(&src, &swapped);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("`key`"), "{d:?}");
        let d = diff_indexes(&src, &src[..1]);
        assert_eq!(d, vec!["index `ab` is missing on the target".to_string()]);
        assert_eq!(
            indexes_to_create(&src),
            vec![doc! {"key": {"a": 1, "b": -1}, "name": "ab", "unique": true}]
        );
    }

    #[test]
    fn create_command_carries_options() {
        let spec = CollectionSpec {
            name: "log".into(),
            kind: "collection".into(),
            options: doc! {"capped": true, "size": 4096, "autoIndexId": true, "validator": {"a": {"$exists": true}}},
        };
        assert_eq!(
            spec.create_command(),
            doc! {"create": "log", "capped": true, "size": 4096, "validator": {"a": {"$exists": true}}}
        );
    }
}
