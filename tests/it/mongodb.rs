//! MongoDB store against real servers (SecantusDB from `scripts/stack`, or a real `mongod` when
//! `OFFLOAD_TEST_MONGODB_URL` and `OFFLOAD_TEST_MONGODB_TARGET_URL` are set): the Open edX fixture
//! copied and verified, every BSON type byte-identical, options and indexes carried, GridFS files
//! readable, a changed document named, kill -9 and resume, and the inputs that must stop a job.

use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, JavaScriptCodeWithScope,
    RawDocumentBuf, Regex, Timestamp,
};
use mongodb::Client;

use crate::common::*;

fn source_uri() -> String {
    std::env::var("OFFLOAD_TEST_MONGODB_URL")
        .unwrap_or_else(|_| env_or("OFFLOAD_TEST_MONGODB_SOURCE", "mongodb://127.0.0.1:27117"))
}

fn target_uri() -> String {
    std::env::var("OFFLOAD_TEST_MONGODB_TARGET_URL")
        .unwrap_or_else(|_| env_or("OFFLOAD_TEST_MONGODB_TARGET", "mongodb://127.0.0.1:27118"))
}

/// The stack's Python (with pymongo), for the fixture script and the GridFS witness.
fn python() -> PathBuf {
    let p = std::env::var("OFFLOAD_STACK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack/venv/bin/python"));
    assert!(
        p.exists(),
        "no Python with pymongo at {}: run scripts/stack up (or set OFFLOAD_STACK_PYTHON)",
        p.display()
    );
    p
}

/// A client that has answered a ping, or a failure that says how to start the servers.
async fn client(uri: &str) -> Client {
    let mut opts = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    let c = Client::with_options(opts).unwrap();
    if let Err(e) = c.database("admin").run_command(doc! {"ping": 1}).await {
        panic!("cannot reach the test MongoDB at {uri}: {e}. Start the test servers with `scripts/stack up mongodb`");
    }
    c
}

/// Database names unique to one test, dropped on both servers at the start and the end.
struct TestDbs {
    names: Vec<String>,
}

impl TestDbs {
    async fn new(tags: &[&str]) -> TestDbs {
        let names = tags
            .iter()
            .map(|t| format!("it_m_{t}_{}", std::process::id()))
            .collect();
        let dbs = TestDbs { names };
        dbs.drop_both().await;
        dbs
    }

    fn list(&self) -> String {
        self.names.join(",")
    }

    async fn drop_both(&self) {
        for uri in [source_uri(), target_uri()] {
            let c = client(&uri).await;
            for n in &self.names {
                c.database(n).drop().await.unwrap();
            }
        }
    }
}

/// Seed the Open edX fixture; returns what the script reports (counts, assets with their MD5).
fn seed(platform: &str, forum: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(repo_root().join("fixtures/mongodb/seed.py"))
        .args([&source_uri(), platform, forum])
        .output()
        .expect("run fixtures/mongodb/seed.py");
    assert!(
        out.status.success(),
        "seeding failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mflags(dbs: &TestDbs) -> Vec<String> {
    vec![
        "--from-mongodb".into(),
        source_uri(),
        "--to-mongodb".into(),
        target_uri(),
        "--mongodb-databases".into(),
        dbs.list(),
    ]
}

/// Every document of a collection as raw bytes, in `_id` order.
async fn raw_docs(uri: &str, db: &str, coll: &str) -> Vec<Vec<u8>> {
    let c = client(uri).await;
    let mut cursor = c
        .database(db)
        .collection::<RawDocumentBuf>(coll)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(d) = cursor.try_next().await.unwrap() {
        out.push(d.as_bytes().to_vec());
    }
    out
}

/// The target's `db.coll` holds `n` documents, each once, byte-identical to the source's.
async fn assert_copied_whole(db: &str, coll: &str, n: usize) {
    let (a, b) = (
        raw_docs(&source_uri(), db, coll).await,
        raw_docs(&target_uri(), db, coll).await,
    );
    assert_eq!(b.len(), n, "{coll}: every document, once");
    assert!(a == b, "{coll}: identical, byte for byte");
}

async fn collection_names(uri: &str, db: &str) -> Vec<String> {
    let mut names = client(uri)
        .await
        .database(db)
        .list_collection_names()
        .await
        .unwrap();
    names.sort();
    names
}

/// `listIndexes` of a collection, by name, without the fields a server chooses itself.
async fn index_specs(uri: &str, db: &str, coll: &str) -> Vec<Document> {
    let c = client(uri).await;
    let mut cursor = c
        .database(db)
        .run_cursor_command(doc! {"listIndexes": coll})
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(mut d) = cursor.try_next().await.unwrap() {
        d.remove("v");
        d.remove("ns");
        out.push(d);
    }
    out.sort_by_key(|d| d.get_str("name").unwrap().to_string());
    out
}

async fn collection_options(uri: &str, db: &str, coll: &str) -> Document {
    let c = client(uri).await;
    let mut cursor = c
        .database(db)
        .run_cursor_command(doc! {"listCollections": 1, "filter": {"name": coll}})
        .await
        .unwrap();
    let spec = cursor.try_next().await.unwrap().expect("collection exists");
    spec.get_document("options").cloned().unwrap_or_default()
}

#[tokio::test]
async fn fixture_copies_and_verifies_clean_with_gridfs_readable() {
    let dbs = TestDbs::new(&["fix", "fixforum"]).await;
    let (platform, forum) = (&dbs.names[0], &dbs.names[1]);
    let seeded = seed(platform, forum);
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);

    let plan = offload(job.path(), &args("plan", &f, &["--json"]));
    assert_exit(&plan, 0);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let objects: Vec<&str> = plan["stores"][0]["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["object"].as_str().unwrap())
        .collect();
    for wanted in [
        "modulestore.structures",
        "modulestore.definitions",
        "modulestore.active_versions",
        "fs.files",
        "fs.chunks",
        "contents",
        "users",
        "subscriptions",
    ] {
        assert!(
            objects.contains(&wanted),
            "plan lists {wanted}: {objects:?}"
        );
    }

    assert_exit(
        &offload(job.path(), &args("copy", &f, &["--no-progress"])),
        0,
    );
    let verify = offload(job.path(), &args("verify", &[], &[]));
    assert_safe_to_switch(&verify);

    // Independent witness: the driver reads both sides; every document's bytes are equal and the
    // counts are what the fixture script wrote.
    let (src, tgt) = (source_uri(), target_uri());
    let counts = &seeded["counts"];
    for (db, coll, count_key) in [
        (
            platform,
            "modulestore.active_versions",
            Some("active_versions"),
        ),
        (platform, "modulestore.structures", Some("structures")),
        (platform, "modulestore.definitions", Some("definitions")),
        (platform, "fs.files", None),
        (platform, "fs.chunks", None),
        (forum, "contents", Some("contents")),
        (forum, "users", Some("users")),
        (forum, "subscriptions", Some("subscriptions")),
    ] {
        let (a, b) = (
            raw_docs(&src, db, coll).await,
            raw_docs(&tgt, db, coll).await,
        );
        if let Some(k) = count_key {
            assert_eq!(a.len() as u64, counts[k].as_u64().unwrap(), "{coll} count");
        }
        assert!(!a.is_empty(), "{coll} has documents");
        assert!(a == b, "{db}.{coll}: documents differ byte-wise");
        assert_eq!(
            index_specs(&src, db, coll).await,
            index_specs(&tgt, db, coll).await,
            "{coll} indexes"
        );
    }
    assert_eq!(
        collection_names(&src, platform).await,
        collection_names(&tgt, platform).await
    );

    // GridFS: pymongo's gridfs reads every asset from the target by its ordered _id; the MD5
    // of what it reads is the one the fixture computed from the bytes it stored.
    let script = r#"
import sys, json, hashlib, gridfs, pymongo
from bson import SON
c = pymongo.MongoClient(sys.argv[1])
fs = gridfs.GridFS(c[sys.argv[2]], collection="fs")
out = []
for a in json.loads(sys.argv[3]):
    f = fs.get(SON([(k, a["id"][k]) for k in ("tag", "org", "course", "category", "name", "revision")]))
    data = f.read()
    out.append({"md5": hashlib.md5(data).hexdigest(), "length": len(data), "contentType": f.content_type})
print(json.dumps(out))
"#;
    let assets = seeded["assets"].as_array().unwrap();
    assert_eq!(assets.len(), 4);
    let out = Command::new(python())
        .args(["-c", script, &tgt, platform])
        .arg(serde_json::to_string(assets).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (a, r) in assets.iter().zip(&read) {
        assert_eq!(
            a["md5"], r["md5"],
            "asset {} reads back whole",
            a["id"]["name"]
        );
        assert_eq!(a["length"], r["length"]);
    }
    assert_eq!(read[0]["contentType"], "image/png");
    dbs.drop_both().await;
}

/// One document per awkward BSON type, plus `_id`s of many types so ranges cross type brackets.
fn awkward_documents() -> Vec<Document> {
    let bin = |subtype, bytes: &[u8]| {
        Bson::Binary(Binary {
            subtype,
            bytes: bytes.to_vec(),
        })
    };
    let mut one = [0u8; 16];
    one[0] = 1;
    one[14] = 0x40;
    one[15] = 0x30; // Decimal128 1 (exponent 0)
    let mut big = [0xffu8; 16];
    big[15] = 0x2f;
    big[14] = 0xff; // a large negative-exponent decimal
    let every_type = doc! {
        "_id": ObjectId::parse_str("5f1e2d3c4b5a697887766554").unwrap(),
        "zeta": "field order is not alphabetical",
        "decimal": Bson::Decimal128(Decimal128::from_bytes(one)),
        "decimal_big": Bson::Decimal128(Decimal128::from_bytes(big)),
        "ts": Timestamp { time: 1_700_000_000, increment: 7 },
        "ts_zero": Timestamp { time: 0, increment: 0 },
        "min": Bson::MinKey,
        "max": Bson::MaxKey,
        "bin_generic": bin(BinarySubtype::Generic, &[0, 1, 2, 255]),
        "bin_function": bin(BinarySubtype::Function, b"fn"),
        "bin_uuid_old": bin(BinarySubtype::UuidOld, &[7u8; 16]),
        "bin_uuid": bin(BinarySubtype::Uuid, &[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]),
        "bin_md5": bin(BinarySubtype::Md5, &[9u8; 16]),
        "bin_user": bin(BinarySubtype::UserDefined(0x80), b"custom"),
        "bin_empty": bin(BinarySubtype::Generic, &[]),
        "regex": Regex { pattern: "^a.*b$".into(), options: "imsx".into() },
        "code": Bson::JavaScriptCode("function () { return 1; }".into()),
        "code_scope": Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope { code: "x + 1".into(), scope: doc! {"x": 41} }),
        "int64_min": i64::MIN,
        "int64_small": Bson::Int64(1),
        "int32": -1i32,
        "double_neg_zero": -0.0f64,
        "double_inf": f64::INFINITY,
        "double_nan": f64::NAN,
        "date_1920": DateTime::from_millis(-1_577_923_200_000),
        "date_before_epoch": DateTime::from_millis(-1),
        "date_9999": DateTime::from_millis(253_402_300_799_999),
        "null": Bson::Null,
        "string_nul": "a\u{0}b é 课程 🎓",
        "nested": {"z": 1, "a": {"m": [1, "two", 3.0, {"k": Bson::Null}], "b": true}},
        "empty_doc": {},
        "empty_array": [],
        "a": "last",
    };
    // Deprecated types: a real mongod keeps them; SecantusDB itself stores Symbol as String and
    // Undefined as Null on insert, so for them the test checks source against target only.
    let deprecated = doc! {
        "_id": "deprecated types",
        "symbol": Bson::Symbol("sym".into()),
        "undefined": Bson::Undefined,
    };
    let mut docs = vec![every_type, deprecated];
    let ids: Vec<Bson> = vec![
        Bson::MinKey,
        Bson::Null,
        Bson::Int32(-3),
        Bson::Int64(2),
        Bson::Double(2.5),
        Bson::Decimal128(Decimal128::from_bytes(one)).clone(),
        Bson::String("a".into()),
        Bson::String("b".into()),
        Bson::Document(doc! {"tag": "c4x", "org": "edX"}),
        Bson::Document(doc! {"org": "edX", "tag": "c4x"}),
        bin(BinarySubtype::Uuid, &[1u8; 16]),
        Bson::ObjectId(ObjectId::parse_str("000000000000000000000001").unwrap()),
        Bson::Boolean(false),
        Bson::Boolean(true),
        Bson::DateTime(DateTime::from_millis(-5)),
        Bson::Timestamp(Timestamp {
            time: 5,
            increment: 1,
        }),
        Bson::MaxKey,
    ];
    for (i, id) in ids.into_iter().enumerate() {
        docs.push(doc! {"_id": id, "n": i as i32, "pad": "x".repeat(i * 10)});
    }
    docs
}

#[tokio::test]
async fn every_bson_type_is_byte_identical_across_a_resume() {
    let dbs = TestDbs::new(&["types"]).await;
    let db = &dbs.names[0];
    let docs = awkward_documents();
    let expected: Vec<RawDocumentBuf> = docs
        .iter()
        .map(|d| RawDocumentBuf::from_document(d).unwrap())
        .collect();
    let src = client(&source_uri()).await;
    src.database(db)
        .collection::<RawDocumentBuf>("types")
        .insert_many(&expected)
        .await
        .unwrap();

    // Small batches, a crash after three of them, and a resume: the resumed run opens its
    // range with a filter after an `_id` whose type differs from what follows.
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    copy_killed_at(job.path(), &f, "2", "after-batch:3");
    assert_exit(&copy_resumed(job.path(), &f, "2"), 0);
    // Chunks of three documents, each range bounded by `_id`s of different types.
    let v = offload(job.path(), &args("verify", &[], &["--chunk-rows", "3"]));
    assert_exit(&v, 0);

    let target_bytes = raw_docs(&target_uri(), db, "types").await;
    let source_bytes = raw_docs(&source_uri(), db, "types").await;
    assert_eq!(
        target_bytes.len(),
        expected.len(),
        "no document lost or doubled"
    );
    assert!(
        source_bytes == target_bytes,
        "target bytes equal source bytes"
    );
    // And they are the bytes this test built (the server kept them; so did offload).
    let mut built: Vec<Vec<u8>> = expected
        .iter()
        .filter(|d| d.get_str("_id").ok() != Some("deprecated types"))
        .map(|d| d.as_bytes().to_vec())
        .collect();
    built.sort();
    let mut got = target_bytes.clone();
    got.retain(|g| {
        RawDocumentBuf::from_bytes(g.clone())
            .unwrap()
            .get_str("_id")
            .ok()
            != Some("deprecated types")
    });
    got.sort();
    let changed: Vec<String> = built
        .iter()
        .filter(|b| !got.contains(b))
        .map(|b| {
            // Name the fields whose bytes differ from the stored document with the same _id.
            let mine = RawDocumentBuf::from_bytes(b.clone()).unwrap();
            let id = mine.get("_id").unwrap().unwrap();
            let stored = got
                .iter()
                .map(|g| RawDocumentBuf::from_bytes(g.clone()).unwrap())
                .find(|g| g.get("_id").unwrap().unwrap() == id);
            let Some(stored) = stored else {
                return format!("{:?} is missing", mine.to_document());
            };
            let fields: Vec<String> = mine
                .iter()
                .map(|e| e.unwrap())
                .filter(|(k, v)| stored.get(k).unwrap() != Some(*v))
                .map(|(k, v)| format!("{k}: wrote {v:?}, stored {:?}", stored.get(k).unwrap()))
                .collect();
            format!("{id:?}: {fields:?}")
        })
        .collect();
    assert!(
        changed.is_empty(),
        "documents the servers changed on the way: {changed:?}"
    );
    dbs.drop_both().await;
}

#[tokio::test]
async fn options_indexes_and_views_carry_over_and_differences_are_named() {
    let dbs = TestDbs::new(&["shape"]).await;
    let db = &dbs.names[0];
    let src = client(&source_uri()).await;
    let d = src.database(db);
    for cmd in [
        doc! {"create": "capped_log", "capped": true, "size": 1_048_576, "max": 100},
        doc! {"create": "validated", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["name"]}}, "validationLevel": "strict", "validationAction": "error"},
        doc! {"create": "french", "collation": {"locale": "fr", "strength": 2}},
        doc! {"createIndexes": "validated", "indexes": [
            {"key": {"a": 1, "b": -1}, "name": "a_up_b_down", "unique": true},
            {"key": {"t": 1}, "name": "t_ttl", "expireAfterSeconds": 3600, "sparse": true},
            {"key": {"c": 1}, "name": "c_partial", "partialFilterExpression": {"c": {"$gt": 5}}},
        ]},
        doc! {"createIndexes": "french", "indexes": [
            {"key": {"name": -1}, "name": "name_en", "collation": {"locale": "en", "strength": 1}},
        ]},
        doc! {"create": "big_a", "viewOn": "validated", "pipeline": [{"$match": {"a": {"$gt": 1}}}, {"$project": {"a": 1}}]},
    ] {
        d.run_command(cmd).await.unwrap();
    }
    d.collection::<Document>("capped_log")
        .insert_many((0..10).map(|i| doc! {"_id": i, "line": format!("log {i}")}))
        .await
        .unwrap();
    // One document that breaks the validator (written around it): the copy must carry it too.
    d.collection::<Document>("validated")
        .insert_many([
            doc! {"_id": 1, "name": "ok", "a": 1, "b": 1},
            doc! {"_id": 2, "name": "ok", "a": 2, "b": 1, "c": 9},
        ])
        .await
        .unwrap();
    d.collection::<Document>("validated")
        .insert_one(doc! {"_id": 3, "a": 3, "b": 1})
        .bypass_document_validation(true)
        .await
        .unwrap();
    d.collection::<Document>("french")
        .insert_many([
            doc! {"_id": "é", "name": "Élodie"},
            doc! {"_id": "e", "name": "eve"},
        ])
        .await
        .unwrap();

    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    let v = offload(job.path(), &args("verify", &[], &[]));
    assert_exit(&v, 0);

    let (s, t) = (source_uri(), target_uri());
    for coll in ["capped_log", "validated", "french"] {
        assert_eq!(
            collection_options(&s, db, coll).await,
            collection_options(&t, db, coll).await,
            "{coll} options"
        );
        assert_eq!(
            index_specs(&s, db, coll).await,
            index_specs(&t, db, coll).await,
            "{coll} indexes"
        );
    }
    // The values the test asked for, read from the target.
    let capped = collection_options(&t, db, "capped_log").await;
    assert_eq!(capped.get_bool("capped"), Ok(true));
    assert_eq!(
        capped
            .get("max")
            .and_then(Bson::as_i64)
            .or_else(|| capped.get_i32("max").ok().map(i64::from)),
        Some(100)
    );
    let french = collection_options(&t, db, "french").await;
    assert_eq!(
        french.get_document("collation").unwrap().get_str("locale"),
        Ok("fr")
    );
    let idx = index_specs(&t, db, "validated").await;
    let ab = idx
        .iter()
        .find(|i| i.get_str("name") == Ok("a_up_b_down"))
        .unwrap();
    let key: Vec<(String, i32)> = ab
        .get_document("key")
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_i32().or_else(|| v.as_f64().map(|f| f as i32)).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        key,
        vec![("a".to_string(), 1), ("b".to_string(), -1)],
        "key order and direction"
    );
    assert_eq!(ab.get_bool("unique"), Ok(true));
    let ttl = idx
        .iter()
        .find(|i| i.get_str("name") == Ok("t_ttl"))
        .unwrap();
    assert!(ttl.get("expireAfterSeconds").is_some() && ttl.get_bool("sparse") == Ok(true));
    assert!(
        idx.iter()
            .any(|i| i.get_str("name") == Ok("c_partial")
                && i.contains_key("partialFilterExpression"))
    );
    assert_eq!(
        raw_docs(&t, db, "validated").await.len(),
        3,
        "the invalid document came too"
    );
    // The view exists on the target and answers from the copied data.
    let view: Vec<Document> = client(&t)
        .await
        .database(db)
        .collection::<Document>("big_a")
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(view, vec![doc! {"_id": 2, "a": 2}, doc! {"_id": 3, "a": 3}]);

    // A dropped index and a changed option on the target are named.
    let tc = client(&t).await;
    tc.database(db)
        .run_command(doc! {"dropIndexes": "validated", "index": "a_up_b_down"})
        .await
        .unwrap();
    tc.database(db)
        .run_command(doc! {"collMod": "validated", "validationAction": "warn"})
        .await
        .unwrap();
    let v = offload(job.path(), &args("verify", &[], &[]));
    assert_exit(&v, 1);
    let report = text(&v);
    assert!(
        report.contains(&format!(
            "{db}.validated: index `a_up_b_down` is missing on the target"
        )),
        "{report}"
    );
    assert!(
        report.contains("`validationAction` is \"error\" on the source, \"warn\" on the target"),
        "{report}"
    );
    dbs.drop_both().await;
}

#[tokio::test]
async fn a_changed_document_is_named_with_its_range() {
    let dbs = TestDbs::new(&["diff", "diffforum"]).await;
    let (platform, forum) = (&dbs.names[0], &dbs.names[1]);
    seed(platform, forum);
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);

    // One field of one definition changed; one user gone; one subscription added.
    let tc = client(&target_uri()).await;
    let victim_id = edit_definition(&tc, platform, 77, "<p>changed by hand</p>").await;
    tc.database(forum)
        .collection::<Document>("users")
        .delete_one(doc! {"_id": "17"})
        .await
        .unwrap();
    tc.database(forum)
        .collection::<Document>("subscriptions")
        .insert_one(doc! {"subscriber_id": "999", "source_id": "x", "source_type": "CommentThread"})
        .await
        .unwrap();

    let out = offload(job.path(), &args("verify", &[], &["--chunk-rows", "50"]));
    assert_exit(&out, 1);
    let report = text(&out);
    assert!(report.contains("NOT safe to switch"), "{report}");
    let oid = format!("_id={{\"$oid\":\"{}\"}}", victim_id.to_hex());
    assert!(
        report.contains(&format!(
            "DIFFERS mongodb {platform}.modulestore.definitions"
        )) && report.contains(&format!("differs: {oid}")),
        "{report}"
    );
    // The chunk it sits in is named by its `_id` bounds.
    let line = report.lines().find(|l| l.contains(&oid)).unwrap();
    assert!(
        line.contains(&format!(
            "(in {platform}.modulestore.definitions _id after "
        )),
        "{line}"
    );
    assert!(report.contains("missing on target: _id=\"17\""), "{report}");
    assert!(
        report.contains(&format!("{forum}.subscriptions")) && report.contains("extra on target"),
        "{report}"
    );
    assert_eq!(
        report.matches("DIFFERS").count(),
        3,
        "only the changed collections differ: {report}"
    );
    dbs.drop_both().await;
}

/// A collection big enough for many batches and several `_id` ranges.
async fn seed_bulk(db: &str, n: i32) {
    let c = client(&source_uri()).await;
    let docs: Vec<Document> = (0..n)
        .map(|i| {
            doc! {"_id": ObjectId::from_bytes({let mut b = [0u8; 12]; b[8..].copy_from_slice(&i.to_be_bytes()); b}),
            "block_type": "html", "fields": {"data": format!("<p>{}</p>", "y".repeat((i % 50) as usize)), "n": i}}
        })
        .collect();
    c.database(db)
        .collection::<Document>("modulestore.definitions_bulk")
        .insert_many(docs)
        .await
        .unwrap();
    c.database(db)
        .collection::<Document>("modulestore.definitions_bulk")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"block_type": 1, "fields.n": -1})
                .build(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn kill_nine_at_three_points_then_resume() {
    let dbs = TestDbs::new(&["resume", "resumeforum"]).await;
    let (platform, forum) = (&dbs.names[0], &dbs.names[1]);
    seed(platform, forum);
    seed_bulk(platform, 3000).await;
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    let copy = |resume: bool, point: Option<&str>| {
        let mut a = args(
            "copy",
            &f,
            &[
                "--batch-rows",
                "150",
                "--parallel",
                "2",
                "--mongodb-split-bytes",
                "60000",
                // Sized however long it takes, so the split never depends on the machine's speed.
                "--mongodb-size-timeout",
                "0",
            ],
        );
        if resume {
            a.push("--resume");
        }
        let env: Vec<(&str, &str)> = point
            .map(|p| vec![("OFFLOAD_FAILPOINT", p)])
            .unwrap_or_default();
        offload_env(job.path(), &a, &env)
    };
    let killed = |out: &std::process::Output| {
        assert_eq!(
            out.status.signal(),
            Some(9),
            "expected SIGKILL; output:\n{}",
            text(out)
        );
    };
    killed(&copy(false, Some("after-prepare")));
    // Bulk ranges of 500 documents take 4 batches of 150 (3 or 4 of them leave the range
    // part-way), every other unit one: at the 13th batch that leaves a range part-way, one range is
    // stopped mid-way and at least two of the four or more touched (two at a time) are complete.
    killed(&copy(true, Some("after-partial-batch:13")));
    let status = offload(job.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let bulk: Vec<&serde_json::Value> = status["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["unit"]["object"] == "modulestore.definitions_bulk")
        .collect();
    assert!(
        bulk.len() > 1,
        "the bulk collection is split into _id ranges: {}",
        bulk.len()
    );
    let units = status["units"].as_array().unwrap();
    assert!(
        units.iter().any(|u| u["cursor"]["id"].is_string()),
        "a range stopped mid-way has a saved cursor: {units:?}"
    );
    assert!(
        units.iter().any(|u| u["state"] == "copied")
            && units.iter().any(|u| u["state"] != "copied"),
        "the crash came mid-copy"
    );
    killed(&copy(true, Some("before-finish")));
    let last = copy(true, None);
    assert_exit(&last, 0);
    assert!(
        text(&last).contains("already done earlier"),
        "{}",
        text(&last)
    );

    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    let (s, t) = (source_uri(), target_uri());
    for (db, coll) in [
        (platform, "modulestore.definitions_bulk"),
        (platform, "modulestore.structures"),
        (platform, "fs.chunks"),
        (forum, "contents"),
    ] {
        let (a, b) = (raw_docs(&s, db, coll).await, raw_docs(&t, db, coll).await);
        assert_eq!(a.len(), b.len(), "no duplicate or lost documents in {coll}");
        assert!(a == b, "{coll} identical");
    }
    assert_eq!(
        raw_docs(&t, platform, "modulestore.definitions_bulk")
            .await
            .len(),
        3000
    );
    assert_eq!(
        index_specs(&s, platform, "modulestore.definitions_bulk").await,
        index_specs(&t, platform, "modulestore.definitions_bulk").await,
        "indexes built after the last resume"
    );
    dbs.drop_both().await;
}

#[tokio::test]
async fn a_collection_not_sized_in_time_is_named_in_the_plan_and_copied_whole() {
    if std::env::var("OFFLOAD_TEST_MONGODB_URL").is_ok() {
        // mongod answers collStats from metadata, within any limit: nothing to provoke.
        eprintln!("skipped: a real mongod sizes a collection at once");
        return;
    }
    let dbs = TestDbs::new(&["notsized"]).await;
    let db = &dbs.names[0];
    // SecantusDB scans a collection to size it: 3,000 documents take it about 100 ms, far over
    // the 1 ms allowed here.
    seed_bulk(db, 3000).await;
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    let tight = [
        "--mongodb-size-timeout",
        "0.001",
        "--mongodb-split-bytes",
        "60000",
    ];

    let plan = offload(job.path(), &args("plan", &f, &tight));
    assert_exit(&plan, 0);
    let shown = text(&plan);
    assert!(
        shown.contains("not sized")
            && shown.contains(&format!("{db}.modulestore.definitions_bulk"))
            && shown.contains("--mongodb-size-timeout"),
        "the plan names the collection it could not size and the flag to size it: {shown}"
    );
    let bulk = planned_units(
        &offload(
            job.path(),
            &args("plan", &f, &[&tight[..], &["--json"]].concat()),
        ),
        "modulestore.definitions_bulk",
    );
    assert_eq!(
        bulk.len(),
        1,
        "not split into ranges without a size, whatever --mongodb-split-bytes says: {bulk:?}"
    );
    assert_eq!(bulk[0]["size_known"], false);
    assert_eq!(bulk[0]["est_bytes"], 0, "no size is made up");

    // Given time, the same collection is sized and split: the limit is what made the difference.
    let ranges = planned_units(
        &offload(
            job.path(),
            &args(
                "plan",
                &f,
                &[
                    "--mongodb-size-timeout",
                    "0",
                    "--mongodb-split-bytes",
                    "60000",
                    "--json",
                ],
            ),
        ),
        "modulestore.definitions_bulk",
    )
    .len();
    assert!(ranges > 1, "sized without a limit, it splits: {ranges}");

    let copy = offload(job.path(), &args("copy", &f, &tight));
    assert_exit(&copy, 0);
    assert_safe_to_switch(&offload(job.path(), &args("verify", &[], &[])));
    assert_copied_whole(db, "modulestore.definitions_bulk", 3000).await;
    dbs.drop_both().await;
}

#[tokio::test]
async fn collections_read_at_once_through_a_full_read_ahead_budget_arrive_whole() {
    // Three collections of about 5 MiB each, copied at once with the smallest read-ahead budget
    // (one insert, 4 MiB) and batches of 600 documents: the budget fills, reads hand their turn
    // on and wait, and reads parked between batches hold part of it. A Ctrl-C after the third
    // batch stops the copy part way, with reads left open; after the resume every document must
    // be there, once, byte for byte. (That a read never waits for a budget only parked reads
    // hold is proven in `ahead`'s unit test, where the timing is not left to chance.)
    let dbs = TestDbs::new(&["readahead"]).await;
    let db = &dbs.names[0];
    let c = client(&source_uri()).await;
    let names = ["ahead_a", "ahead_b", "ahead_c"];
    for (k, name) in names.iter().enumerate() {
        let docs: Vec<Document> = (0..2500)
            .map(|i| doc! {"_id": i, "k": k as i32, "body": format!("{i:06}").repeat(340)})
            .collect();
        c.database(db)
            .collection::<Document>(name)
            .insert_many(docs)
            .await
            .unwrap();
    }
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    let tight = [
        "--mongodb-read-ahead",
        "0",
        "--batch-rows",
        "600",
        "--parallel",
        "3",
    ];
    let debug = ("OFFLOAD_LOG", "offload=debug");
    let stopped = offload_env(
        job.path(),
        &args("copy", &f, &tight),
        &[debug, ("OFFLOAD_FAILPOINT", "sigint-after-batch:3")],
    );
    assert_exit(&stopped, 130);
    let mut partial = 0;
    for name in names {
        partial += raw_docs(&target_uri(), db, name).await.len();
    }
    assert!(
        partial > 0 && partial < 7500,
        "stopped part way: {partial} documents"
    );
    let mut resume = args("copy", &f, &tight);
    resume.push("--resume");
    let resumed = offload_env(job.path(), &resume, &[debug]);
    assert_exit(&resumed, 0);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&stopped.stderr),
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        log.contains("read-ahead budget full"),
        "the budget filled, so the test exercised a full budget: {log}"
    );
    assert_safe_to_switch(&offload(job.path(), &args("verify", &[], &[])));
    for name in names {
        assert_copied_whole(db, name, 2500).await;
    }
    dbs.drop_both().await;
}

#[tokio::test]
async fn a_replayed_batch_replaces_what_a_crash_left() {
    // A crash after the target took documents whose batch was never recorded: the next run
    // clears that part of the range and copies it again, so a document changed on the source in
    // between arrives in its new version, once.
    let dbs = TestDbs::new(&["replay"]).await;
    let db = &dbs.names[0];
    let sc = client(&source_uri()).await;
    let coll = sc.database(db).collection::<Document>("c");
    coll.insert_many((0..40).map(|i| doc! {"_id": i, "v": "old"}))
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    copy_killed_at(job.path(), &f, "10", "after-batch:2");
    // Leftovers of an unrecorded batch past the cursor (as a crash between write and checkpoint
    // leaves them), and a source change inside that range.
    let tc = client(&target_uri()).await;
    tc.database(db)
        .collection::<Document>("c")
        .insert_many((20..25).map(|i| doc! {"_id": i, "v": "old"}))
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 22}, doc! {"$set": {"v": "new"}})
        .await
        .unwrap();
    assert_exit(&copy_resumed(job.path(), &f, "10"), 0);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    let target = tc.database(db).collection::<Document>("c");
    assert_eq!(target.count_documents(doc! {}).await.unwrap(), 40);
    let d22 = target.find_one(doc! {"_id": 22}).await.unwrap().unwrap();
    assert_eq!(d22.get_str("v"), Ok("new"));
    dbs.drop_both().await;
}

#[tokio::test]
async fn occupied_target_is_refused_untouched_then_skip_and_replace() {
    let dbs = TestDbs::new(&["occ", "occforum"]).await;
    let (platform, forum) = (&dbs.names[0], &dbs.names[1]);
    seed(platform, forum);
    let tc = client(&target_uri()).await;
    tc.database(forum)
        .collection::<Document>("users")
        .insert_one(doc! {"_id": "keep-me"})
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    let out = offload(job.path(), &args("copy", &f, &[]));
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("already holds data") && text(&out).contains("--if-exists"),
        "{}",
        text(&out)
    );
    assert!(
        collection_names(&target_uri(), platform).await.is_empty(),
        "nothing else was written"
    );
    assert_eq!(raw_docs(&target_uri(), forum, "users").await.len(), 1);
    assert!(
        !job.path().join("catalog.sqlite").exists(),
        "a refusal before any write leaves no job behind"
    );

    // The rerun the refusal suggests: the same command with --if-exists skip.
    assert_exit(
        &offload(job.path(), &args("copy", &f, &["--if-exists", "skip"])),
        0,
    );
    assert_eq!(
        raw_docs(&target_uri(), forum, "users").await.len(),
        1,
        "skipped"
    );
    assert_eq!(
        index_specs(&target_uri(), forum, "users").await.len(),
        1,
        "no indexes are built on a skipped collection"
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 1);

    assert_exit(
        &offload(
            job.path(),
            &args("copy", &f, &["--restart", "--if-exists", "replace"]),
        ),
        0,
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    dbs.drop_both().await;
}

/// A throw-away SecantusDB on a free loopback port, stopped when dropped.
struct Spawned {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Spawned {
    fn start(extra: &[&str]) -> Spawned {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Spawned {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("secantusd.toml");
        std::fs::write(&config, "").unwrap();
        let child = Command::new(python())
            .args(["-m", "secantus", "--config"])
            .arg(&config)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--storage-path",
            ])
            .arg(dir.path().join("data"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .expect("start SecantusDB (scripts/stack up installs it)");
        let mut s = Spawned { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!(
                    "SecantusDB exited ({status}): {}",
                    std::fs::read_to_string(s.dir.path().join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "SecantusDB did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Stop it (SIGTERM, then wait) and hand back its folder.
    fn stop(mut self) -> tempfile::TempDir {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy flags from a given source to the stack's target.
fn from(source: &str, db: &str) -> Vec<String> {
    vec![
        "--from-mongodb".into(),
        source.into(),
        "--to-mongodb".into(),
        target_uri(),
        "--mongodb-databases".into(),
        db.into(),
    ]
}

#[tokio::test]
async fn bad_inputs_stop_with_exit_2_and_nothing_written() {
    let dbs = TestDbs::new(&["badin"]).await;
    let db = &dbs.names[0];
    let job = tempfile::tempdir().unwrap();
    let nothing_written = |job: &std::path::Path| {
        assert!(!job.join("catalog.sqlite").exists(), "no job was created");
    };

    // An authenticating source: a user made before auth is switched on.
    let plain = Spawned::start(&["--standalone"]);
    let c = client(&format!("mongodb://127.0.0.1:{}", plain.port)).await;
    c.database("admin")
        .run_command(doc! {"createUser": "platform", "pwd": "right-pw", "roles": [{"role": "root", "db": "admin"}]})
        .await
        .unwrap();
    c.database(db)
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    drop(c);
    let auth = Spawned::start_in(plain.stop(), &["--standalone", "--auth"]);
    let auth_uri = |user: &str, source: &str| {
        format!(
            "mongodb://{user}@127.0.0.1:{}/?authSource={source}",
            auth.port
        )
    };

    // The right password from a file: plan works (positive control for what follows).
    let pw = job.path().join("pw");
    std::fs::write(&pw, "right-pw\n").unwrap();
    let mut ok = from(&auth_uri("platform", "admin"), db);
    ok.extend([
        "--from-mongodb-password-file".into(),
        pw.display().to_string(),
    ]);
    assert_exit(&offload(job.path(), &args("plan", &ok, &[])), 0);

    // Wrong password, from the environment: named as an authentication failure, never printed.
    let secret = format!("Wr0ng-{}-pw", std::process::id());
    let out = offload_env(
        job.path(),
        &args("copy", &from(&auth_uri("platform", "admin"), db), &[]),
        &[("OFFLOAD_FROM_MONGODB_PASSWORD", &secret)],
    );
    assert_exit(&out, 2);
    let t = text(&out);
    assert!(
        t.contains("authentication failed") && t.contains("password"),
        "{t}"
    );
    assert!(!t.contains(&secret), "the password leaked: {t}");
    nothing_written(job.path());

    // Right password, wrong auth source: the message says which database it tried.
    let out = offload_env(
        job.path(),
        &args("copy", &from(&auth_uri("platform", db), db), &[]),
        &[("OFFLOAD_FROM_MONGODB_PASSWORD", "right-pw")],
    );
    assert_exit(&out, 2);
    let t = text(&out);
    assert!(
        t.contains("authentication failed")
            && t.contains(&format!("against database `{db}`"))
            && t.contains("authSource"),
        "{t}"
    );
    nothing_written(job.path());
    drop(auth);

    // Unreachable host.
    let out = offload(
        job.path(),
        &args(
            "copy",
            &from("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1500", db),
            &[],
        ),
    );
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("cannot reach mongodb source 127.0.0.1:1"),
        "{}",
        text(&out)
    );
    nothing_written(job.path());

    // TLS required by the server, off in the URI; then on (self-signed certificate accepted).
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl) makes the test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls = Spawned::start(&[
        "--standalone",
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ]);
    let out = offload(
        job.path(),
        &args(
            "copy",
            &from(
                &format!(
                    "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=3000",
                    tls.port
                ),
                db,
            ),
            &[],
        ),
    );
    assert_exit(&out, 2);
    assert!(text(&out).contains("tls=true"), "{}", text(&out));
    nothing_written(job.path());
    let on = format!(
        "mongodb://127.0.0.1:{}/?tls=true&tlsAllowInvalidCertificates=true&serverSelectionTimeoutMS=3000",
        tls.port
    );
    let out = offload(job.path(), &args("plan", &from(&on, "admin_x"), &[]));
    // The TLS handshake succeeds: the plan now fails only because that database is empty.
    assert!(
        text(&out).contains("has no collections on the source"),
        "{}",
        text(&out)
    );
    drop(tls);

    // A point-in-time copy asked of a standalone server: refused, saying what the copy would be
    // without it and how to stop writers.
    let sc = client(&source_uri()).await;
    sc.database(db)
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let standalone = sc
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap()
        .get_str("setName")
        .is_err();
    if standalone {
        let out = offload(
            job.path(),
            &args("copy", &mflags(&dbs), &["--mongodb-snapshot"]),
        );
        assert_exit(&out, 2);
        let t = text(&out);
        assert!(
            t.contains("standalone")
                && t.contains("tutor local stop")
                && t.contains("no point in time"),
            "{t}"
        );
        nothing_written(job.path());
    }
    assert!(
        collection_names(&target_uri(), db).await.is_empty(),
        "nothing reached the target"
    );
    dbs.drop_both().await;
}

#[tokio::test]
async fn snapshot_copy_from_a_replica_set() {
    // SecantusDB without --standalone advertises a one-node replica set.
    let rs = Spawned::start(&[]);
    let uri = format!("mongodb://127.0.0.1:{}/?replicaSet=secantus", rs.port);
    let dbs = TestDbs::new(&["snap"]).await;
    let db = &dbs.names[0];
    let c = client(&uri).await;
    c.database(db)
        .collection::<Document>("c")
        .insert_many((0..50).map(|i| doc! {"_id": i, "v": i * 2}))
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let f = from(&uri, db);
    let plan = offload(job.path(), &args("plan", &f, &["--mongodb-snapshot"]));
    assert_exit(&plan, 0);
    assert!(
        text(&plan).contains("replica set `secantus`"),
        "{}",
        text(&plan)
    );
    let out = offload(
        job.path(),
        &args("copy", &f, &["--mongodb-snapshot", "--batch-rows", "20"]),
    );
    assert_exit(&out, 0);
    assert!(text(&out).contains("at cluster time"), "{}", text(&out));
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    assert_eq!(
        raw_docs(&target_uri(), db, "c").await,
        raw_docs(&uri, db, "c").await
    );
    dbs.drop_both().await;
}

#[tokio::test]
async fn delta_pass_brings_over_source_writes_with_unique_indexes_in_place() {
    let dbs = TestDbs::new(&["delta", "deltaforum"]).await;
    let (platform, forum) = (&dbs.names[0], &dbs.names[1]);
    let seeded = seed(platform, forum);
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    let (src, tgt) = (source_uri(), target_uri());
    let sc = client(&src).await;

    // The platform keeps writing: a definition edited, a forum user gone, a subscription added.
    let edited_id = edit_definition(&sc, platform, 40, "<p>edited after the copy</p>").await;
    let users = sc.database(forum).collection::<Document>("users");
    users.delete_one(doc! {"_id": "17"}).await.unwrap();
    let added = ObjectId::new();
    sc.database(forum)
        .collection::<Document>("subscriptions")
        .insert_one(doc! {"_id": added, "subscriber_id": "3", "source_id": "late-thread", "source_type": "CommentThread"})
        .await
        .unwrap();
    // Two users swap their unique external_id: the first one copied again clashes with the
    // other's stale copy on the target, whose unique index is in place.
    for (id, ext) in [("12", "tmp"), ("35", "12"), ("12", "35")] {
        users
            .update_one(doc! {"_id": id}, doc! {"$set": {"external_id": ext}})
            .await
            .unwrap();
    }
    // An asset stored again under the same files_id, its chunks with `_id`s that sort before
    // the old chunks: they clash on fs.chunks' unique (files_id, n) with the old ones, which a
    // later range still holds on the target.
    let script = r#"
import sys, json, hashlib, pymongo, datetime
from bson import SON, ObjectId, Binary
c = pymongo.MongoClient(sys.argv[1])
db = c[sys.argv[2]]
a = json.loads(sys.argv[3])
fid = SON([(k, a["id"][k]) for k in ("tag", "org", "course", "category", "name", "revision")])
data = bytes((i * 7) % 251 for i in range(300_000))
db["fs.chunks"].delete_many({"files_id": fid})
size = 261_120
chunks = [{"_id": ObjectId(bytes(11) + bytes([n + 1])), "files_id": fid, "n": n, "data": Binary(data[o:o + size])}
          for n, o in enumerate(range(0, len(data), size))]
db["fs.chunks"].insert_many(chunks)
md5 = hashlib.md5(data).hexdigest()
db["fs.files"].update_one({"_id": fid}, {"$set": {"length": len(data), "md5": md5,
    "uploadDate": datetime.datetime(2030, 1, 1)}})
print(json.dumps({"md5": md5, "chunks": len(chunks)}))
"#;
    // The last asset stored: its old chunks have the highest `_id`s, in the last range.
    let asset = &seeded["assets"][3];
    assert_eq!(asset["id"]["name"], "lecture-1.mp4");
    let out = Command::new(python())
        .args(["-c", script, &src, platform])
        .arg(asset.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // Verify names each change.
    let out = offload(job.path(), &args("verify", &[], &["--chunk-rows", "4"]));
    assert_exit(&out, 1);
    let report = text(&out);
    for wanted in [
        format!("differs: _id={{\"$oid\":\"{}\"}}", edited_id.to_hex()),
        "extra on target: _id=\"17\"".to_string(),
        format!("missing on target: _id={{\"$oid\":\"{}\"}}", added.to_hex()),
        format!("DIFFERS mongodb {platform}.fs.chunks"),
        format!("DIFFERS mongodb {platform}.fs.files"),
    ] {
        assert!(report.contains(&wanted), "{wanted} in:\n{report}");
    }

    // The delta pass, in chunks of four documents so the clashing ranges are copied separately
    // and in `_id` order, with every index of the target left in place.
    let indexes_before = index_specs(&tgt, forum, "users").await;
    assert!(
        indexes_before
            .iter()
            .any(|i| i.get_bool("unique").unwrap_or(false)),
        "the copy built users' unique index"
    );
    let out = offload(
        job.path(),
        &args(
            "migrate",
            &f,
            &[
                "--resume",
                "--delta",
                "--no-cutover",
                "--chunk-rows",
                "4",
                "-v",
            ],
        ),
    );
    assert_exit(&out, 0);
    let report = text(&out);
    assert!(
        report.contains("Delta pass: 5 of") && report.contains("Safe to switch"),
        "{report}"
    );
    // Both clashes happened and were resolved by removing the stale holder.
    for unit in [format!("{forum}.users"), format!("{platform}.fs.chunks")] {
        assert!(
            report
                .lines()
                .any(|l| l.contains("holding a unique key") && l.contains(&unit)),
            "a unique-key clash in {unit}: {report}"
        );
    }
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);

    for (db, coll) in [
        (platform, "modulestore.definitions"),
        (platform, "modulestore.structures"),
        (platform, "fs.files"),
        (platform, "fs.chunks"),
        (forum, "users"),
        (forum, "subscriptions"),
        (forum, "contents"),
    ] {
        let (a, b) = (
            raw_docs(&src, db, coll).await,
            raw_docs(&tgt, db, coll).await,
        );
        assert_eq!(a.len(), b.len(), "{coll}: no document lost or doubled");
        assert!(a == b, "{db}.{coll}: byte-identical after the delta");
        assert_eq!(
            index_specs(&src, db, coll).await,
            index_specs(&tgt, db, coll).await,
            "{coll}: indexes intact"
        );
    }
    let tc = client(&tgt).await;
    assert!(tc
        .database(forum)
        .collection::<Document>("users")
        .find_one(doc! {"_id": "17"})
        .await
        .unwrap()
        .is_none());

    // The asset stored again reads back whole from the target through GridFS.
    let read = r#"
import sys, json, hashlib, gridfs, pymongo
from bson import SON
a = json.loads(sys.argv[3])
fs = gridfs.GridFS(pymongo.MongoClient(sys.argv[1])[sys.argv[2]], collection="fs")
data = fs.get(SON([(k, a["id"][k]) for k in ("tag", "org", "course", "category", "name", "revision")])).read()
print(hashlib.md5(data).hexdigest())
"#;
    let out = Command::new(python())
        .args(["-c", read, &tgt, platform])
        .arg(asset.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        stored["md5"].as_str().unwrap()
    );
    dbs.drop_both().await;
}

#[tokio::test]
async fn sub_document_ids_stay_complete_across_a_resume() {
    // SecantusDB walks its `_id` index in its own key order for sub-documents (shorter strings
    // first: {x: "c"} before {x: "bb"}), not in the sort order `_id` range filters use; the
    // contentstore's fs.files has such `_id`s. A crash after a first batch that was in order by
    // itself must not lose what the walk had not reached yet.
    let dbs = TestDbs::new(&["subid"]).await;
    let db = &dbs.names[0];
    let src = client(&source_uri()).await;
    let docs: Vec<Document> = ["a", "c", "e", "bb", "dd", "fff", "gggg"]
        .iter()
        .map(|x| doc! {"_id": {"tag": "c4x", "x": *x}, "v": *x})
        .collect();
    src.database(db)
        .collection::<Document>("fs.files")
        .insert_many(docs)
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let f = mflags(&dbs);
    copy_killed_at(job.path(), &f, "2", "after-batch:1");
    assert_exit(&copy_resumed(job.path(), &f, "2"), 0);
    let v = offload(job.path(), &args("verify", &[], &["--chunk-rows", "2"]));
    assert_exit(&v, 0);
    assert_copied_whole(db, "fs.files", 7).await;
    dbs.drop_both().await;
}

/// `offload copy` in batches of `batch` documents, killed (SIGKILL) at failpoint `point`.
fn copy_killed_at(job: &Path, f: &[String], batch: &str, point: &str) {
    let out = offload_env(
        job,
        &args("copy", f, &["--batch-rows", batch]),
        &[("OFFLOAD_FAILPOINT", point)],
    );
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
}

/// `offload copy --resume` in batches of `batch` documents.
fn copy_resumed(job: &Path, f: &[String], batch: &str) -> Output {
    offload(job, &args("copy", f, &["--resume", "--batch-rows", batch]))
}

/// Set `fields.data` of the definition at position `nth` in `_id` order; returns its `_id`.
async fn edit_definition(c: &Client, db: &str, nth: u64, data: &str) -> ObjectId {
    let defs = c
        .database(db)
        .collection::<Document>("modulestore.definitions");
    let found: Document = defs
        .find_one(doc! {})
        .sort(doc! {"_id": 1})
        .skip(nth)
        .await
        .unwrap()
        .unwrap();
    let id = found.get_object_id("_id").unwrap();
    defs.update_one(doc! {"_id": id}, doc! {"$set": {"fields.data": data}})
        .await
        .unwrap();
    id
}
