//! The Meilisearch reindex. Every test runs against a real Meilisearch when
//! OFFLOAD_TEST_MEILISEARCH_URL and OFFLOAD_TEST_MEILISEARCH_KEY are set, else against the
//! in-process Meilisearch STAND-IN (tests/it/support/meili_standin.rs); assertion messages name
//! which one. Tests whose name contains `standin` need a server behaviour only the stand-in can be
//! configured for (an old version, a small payload limit) and always use it.
//!
//! A real server is shared by every test and every run: each test names its own index prefix and
//! API key uids (fresh UUIDs) through [`TestMeili::owns_prefix`] and [`TestMeili::owns_key`], and
//! what it owns is removed when its `TestMeili` is dropped, also when the test fails.
//!
//! The source of truth is the MySQL fixture (fixtures/mysql/openedx.sql) and the modulestore
//! fixture (fixtures/meilisearch/modulestore.json) on the stack's source servers; expected
//! documents are written out by hand from those fixtures.

use mongodb::bson::{Bson, Document};
use serde_json::{json, Value};

use offload::search::client::MeilisearchClient;
use offload::search::rebuild::{rebuild_index, DocSink, RebuildOptions};
use offload::search::specs::IndexKind;
use offload::secret::Secret;

use crate::common::*;
use crate::support::meili_standin::{MeiliStandin, StandinConfig};

/// The server the tests use: a real one when configured, else a stand-in.
pub(crate) struct TestMeili {
    pub(crate) url: String,
    pub(crate) key: String,
    pub(crate) label: String,
    /// Index prefixes and key uids this test created on a shared (real) server.
    owned: std::sync::Mutex<(Vec<String>, Vec<String>)>,
    _standin: Option<MeiliStandin>,
}

pub(crate) fn server() -> TestMeili {
    match (
        std::env::var("OFFLOAD_TEST_MEILISEARCH_URL"),
        std::env::var("OFFLOAD_TEST_MEILISEARCH_KEY"),
    ) {
        (Ok(url), Ok(key)) => TestMeili {
            label: format!("real Meilisearch at {url}"),
            url,
            key,
            owned: Default::default(),
            _standin: None,
        },
        _ => standin(StandinConfig::default()),
    }
}

fn standin(config: StandinConfig) -> TestMeili {
    let s = MeiliStandin::start(config);
    TestMeili {
        url: s.url.clone(),
        key: s.master_key.clone().unwrap_or_default(),
        label: format!("Meilisearch STAND-IN at {}", s.url),
        owned: Default::default(),
        _standin: Some(s),
    }
}

impl TestMeili {
    pub(crate) fn client(&self) -> MeilisearchClient {
        MeilisearchClient::new(&self.url, Some(Secret::new(self.key.clone())), "target").unwrap()
    }

    /// Claim an index prefix for this test: indexes under it left by an earlier run are removed
    /// now, and those this test creates when the server is dropped.
    pub(crate) fn owns_prefix(&self, prefix: &str) {
        self.owned.lock().unwrap().0.push(prefix.to_string());
        self.remove(&[prefix.to_string()], &[]);
    }

    /// Claim an API key uid created by this test; it is deleted when the server is dropped.
    pub(crate) fn owns_key(&self, uid: &str) {
        self.owned.lock().unwrap().1.push(uid.to_string());
    }

    /// Delete the indexes under `prefixes` and the keys `key_uids` on a real server (a stand-in
    /// dies with its test). Runs on its own thread and runtime, so it works from `Drop` inside
    /// an async test.
    fn remove(&self, prefixes: &[String], key_uids: &[String]) {
        if self._standin.is_some() || (prefixes.is_empty() && key_uids.is_empty()) {
            return;
        }
        let (client, url, key) = (self.client(), self.url.clone(), self.key.clone());
        let (prefixes, key_uids) = (prefixes.to_vec(), key_uids.to_vec());
        let label = self.label.clone();
        let outcome = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                for prefix in &prefixes {
                    for uid in client
                        .list_indexes(prefix)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        let task = client.delete_index(&uid).await.map_err(|e| e.to_string())?;
                        client
                            .wait(task, "test cleanup")
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                let http = reqwest::Client::new();
                for uid in &key_uids {
                    let status = http
                        .delete(format!("{url}/keys/{uid}"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .status();
                    if !(status.is_success() || status == reqwest::StatusCode::NOT_FOUND) {
                        return Err(format!("DELETE /keys/{uid} answered {status}"));
                    }
                }
                Ok::<(), String>(())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test cleanup on the {label}: {e}"),
            Err(_) => eprintln!("test cleanup on the {label} panicked"),
        }
    }
}

impl Drop for TestMeili {
    fn drop(&mut self) {
        let (prefixes, keys) = std::mem::take(&mut *self.owned.lock().unwrap());
        self.remove(&prefixes, &keys);
    }
}

/// A prefix unique to one test run.
fn prefix(tag: &str) -> String {
    format!("it{}_{tag}_", std::process::id())
}

/// A fresh random UUID (version 4) in the form Tutor writes with `{{ 4|uuid }}`: a key uid no
/// other test or run uses.
pub(crate) fn fresh_uuid() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("random bytes from /dev/urandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn mongo_source() -> String {
    env_or("OFFLOAD_TEST_MONGODB_SOURCE", "mongodb://127.0.0.1:27117")
}

/// Load the modulestore fixture into a fresh database on the source MongoDB.
pub(crate) async fn load_modulestore(db: &str) {
    let url = format!("{}/?directConnection=true", mongo_source());
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    let database = client.database(db);
    database.drop().await.unwrap_or_else(|e| panic!("cannot reach the test MongoDB at {url}: {e}. Start the test servers with `scripts/stack up`"));
    let text =
        std::fs::read_to_string(repo_root().join("fixtures/meilisearch/modulestore.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    for (collection, docs) in fixture.as_object().unwrap() {
        let docs: Vec<Document> = docs
            .as_array()
            .unwrap()
            .iter()
            .map(|d| match Bson::try_from(d.clone()).unwrap() {
                Bson::Document(doc) => doc,
                other => panic!("not a document: {other:?}"),
            })
            .collect();
        database
            .collection::<Document>(collection)
            .insert_many(docs)
            .await
            .unwrap();
    }
}

async fn drop_mongo(db: &str) {
    let client =
        mongodb::Client::with_uri_str(format!("{}/?directConnection=true", mongo_source()))
            .await
            .unwrap();
    let _ = client.database(db).drop().await;
}

/// The reindex flags reading the fixture from the source servers.
fn reindex_args(meili: &TestMeili, db: &str, prefix: &str) -> Vec<String> {
    vec![
        "reindex".into(),
        "--to-meilisearch".into(),
        meili.url.clone(),
        "--meilisearch-source".into(),
        "source".into(),
        "--from-mysql".into(),
        mysql_source(),
        "--mysql-database".into(),
        db.into(),
        "--from-mongodb".into(),
        format!("{}/?directConnection=true", mongo_source()),
        "--mongodb-database".into(),
        db.into(),
        "--meilisearch-index-prefix".into(),
        prefix.into(),
        "--no-progress".into(),
    ]
}

fn run_reindex(job: &std::path::Path, args: &[String], key: &str) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    offload_env(job, &args, &[("OFFLOAD_TO_MEILISEARCH_KEY", key)])
}

async fn count(client: &MeilisearchClient, uid: &str) -> u64 {
    client.document_count(uid).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_the_fixture_indexes_as_the_platform_would() {
    let meili = server();
    let db = TestDb::new("meili").await;
    db.load_fixture();
    load_modulestore(&db.name).await;
    let job = tempfile::tempdir().unwrap();
    let p = prefix("fixture");
    meili.owns_prefix(&p);
    // The key uid is a UUID, as Tutor makes one; a fresh one, so runs on one server never meet.
    let key_uid = fresh_uuid();
    meili.owns_key(&key_uid);
    let mut args = reindex_args(&meili, &db.name, &p);
    args.extend([
        "--meilisearch-api-key-uid".into(),
        key_uid.clone(),
        "--json".into(),
    ]);

    let out = run_reindex(job.path(), &args, &meili.key);
    assert_exit(&out, 0);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let client = meili.client();
    let label = &meili.label;

    // Counts, by hand from the fixtures: 3 courses have structures in the modulestore fixture
    // (the other course index rows point at structures it does not hold); courseware search
    // indexes chapters, sequentials, verticals, html, problem and video blocks of the published
    // branch (9 + 4 + 1); Studio every block of the draft branch (11 + 4 + 1); 40 threads, 120 comments.
    for (index, expected) in [
        ("course_info", 3),
        ("courseware_content", 14),
        ("studio_content", 16),
        ("comment_threads", 40),
        ("comments", 120),
    ] {
        assert_eq!(
            count(&client, &format!("{p}{index}")).await,
            expected,
            "{index} on the {label}"
        );
    }
    for i in report["indexes"].as_array().unwrap() {
        assert_eq!(i["settings_differences"], json!([]), "{label}: {i}");
        assert_eq!(i["document_differences"], json!([]), "{label}: {i}");
    }

    let doc = |index: &str, id: &str| {
        let client = client.clone();
        let uid = format!("{p}{index}");
        let id = id.to_string();
        async move {
            client
                .get_document(&uid, &id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{uid}: no document {id}"))
        }
    };
    // course_info: `printf %s course-v1:OpenedX+DemoX+Demo_Course | sha1sum`.
    let course = doc("course_info", "dafe43f317156f2d7ebd156f4a0baded29cfee04").await;
    assert_eq!(
        course,
        json!({
            "id": "course-v1:OpenedX+DemoX+Demo_Course",
            "course": "course-v1:OpenedX+DemoX+Demo_Course",
            "_pk": "dafe43f317156f2d7ebd156f4a0baded29cfee04",
            "image_url": "/asset-v1:OpenedX+DemoX+Demo_Course+type@asset+block@images_course_image.jpg",
            "org_image_url": "",
            "advertised_start": "Spring 2024",
            "start": 1693555200.197531,
            "start__utcoffset": 0,
            "end": 1703923200.214778,
            "end__utcoffset": 0,
            "enrollment_start": 1690963200.41865,
            "enrollment_start__utcoffset": 0,
            "enrollment_end": 1695283200.360441,
            "enrollment_end__utcoffset": 0,
            "number": "DemoX",
            "org": "OpenedX",
            "modes": ["audit", "honor", "professional", "verified"],
            "language": "en",
            "catalog_visibility": "both",
            "content": {
                "display_name": "Open edX Demo Course",
                // HTMLParser joins the text of adjacent elements without a space.
                "overview": "About This CourseLearn Open edX & more.",
                "number": "DemoX",
            },
        }),
        "{label}"
    );
    // courseware_content: the html block, `printf %s block-v1:...+type@html+block@intro_text | sha1sum`.
    let html = doc(
        "courseware_content",
        "838a547bd1baed8967272d90be7aae0af68aebf7",
    )
    .await;
    assert_eq!(
        html,
        json!({
            "id": "block-v1:OpenedX+DemoX+Demo_Course+type@html+block@intro_text",
            "_pk": "838a547bd1baed8967272d90be7aae0af68aebf7",
            "course": "course-v1:OpenedX+DemoX+Demo_Course",
            "org": "OpenedX",
            "content": {"html_content": "Welcome to the demo course!", "display_name": "Text"},
            "content_type": "Text",
            "start_date": 1693872000.0,
            "start_date__utcoffset": 0,
            "course_name": "Open edX Demo Course",
            "location": ["Introduction", "Welcome", "Welcome Unit"],
        }),
        "{label}"
    );
    // studio_content: the draft-only block (not in the published branch, so not in courseware).
    // Id: Django slugify plus Python's hashlib.blake2b(key, digest_size=4).
    let draft = doc(
        "studio_content",
        "block-v1openedxdemoxdemo_coursetypehtmlblockdraft_note-4f34367a",
    )
    .await;
    assert_eq!(
        draft,
        json!({
            "id": "block-v1openedxdemoxdemo_coursetypehtmlblockdraft_note-4f34367a",
            "type": "course_block",
            "usage_key": "block-v1:OpenedX+DemoX+Demo_Course+type@html+block@draft_note",
            "block_id": "draft_note",
            "display_name": "Draft note",
            "block_type": "html",
            "context_key": "course-v1:OpenedX+DemoX+Demo_Course",
            "org": "OpenedX",
            "breadcrumbs": [
                {"display_name": "Open edX Demo Course"},
                {"display_name": "Week 1: Zoë 🎓", "usage_key": "block-v1:OpenedX+DemoX+Demo_Course+type@chapter+block@week1"},
                {"display_name": "Homework", "usage_key": "block-v1:OpenedX+DemoX+Demo_Course+type@sequential+block@homework"},
                {"display_name": "Problems", "usage_key": "block-v1:OpenedX+DemoX+Demo_Course+type@vertical+block@hw_unit"},
            ],
            "modified": 1693650600.25,
            "content": {"html_content": "Not yet published"},
            "description": "Not yet published",
            "tags": {},
        }),
        "{label}"
    );
    // Forum: thread 1 and comment 1 (`printf %s 1 | sha1sum`).
    let thread = doc(
        "comment_threads",
        "356a192b7913b04c54574d18c28d46e6395428ab",
    )
    .await;
    assert_eq!(
        thread,
        json!({
            "id": "1",
            "_pk": "356a192b7913b04c54574d18c28d46e6395428ab",
            "context": "course",
            "course_id": "course-v1:edX+DemoX+Demo_Course",
            "commentable_id": "c218bddcf80f724a250398ea9e165886",
            "body": "Path on Windows is C:\\Users\\learner\\course\\data.csv — backslashes everywhere \\\\",
            "title": "Thread #1: Problem 3 help",
        }),
        "{label}"
    );
    let comment = doc("comments", "356a192b7913b04c54574d18c28d46e6395428ab").await;
    assert_eq!(
        comment,
        json!({
            "id": "1",
            "_pk": "356a192b7913b04c54574d18c28d46e6395428ab",
            "context": "course",
            "course_id": "course-v1:edX+DemoX+Demo_Course",
            "commentable_id": null,
            "body": "HTML body with & entities <script>alert(1)</script> (response 1)",
            "title": null,
            "comment_thread_id": 1,
        }),
        "{label}"
    );
    // Settings as the platform's index_config.py gives them.
    let settings = client
        .get_settings(&format!("{p}studio_content"))
        .await
        .unwrap();
    assert_eq!(settings["distinctAttribute"], json!("usage_key"), "{label}");
    assert_eq!(
        settings["rankingRules"],
        json!([
            "sort",
            "words",
            "typo",
            "proximity",
            "attribute",
            "exactness"
        ]),
        "{label}"
    );
    let forum = client.get_settings(&format!("{p}comments")).await.unwrap();
    // Meilisearch gives filterable attributes back in the order they were set.
    assert_eq!(
        forum["filterableAttributes"],
        json!(["_pk", "context", "course_id", "commentable_id"]),
        "{label}"
    );

    // The API key Tutor expects exists, with the value Tutor computes.
    let key = client
        .get_key(&key_uid)
        .await
        .unwrap()
        .expect("the API key was created");
    assert_eq!(key["uid"], json!(key_uid), "{label}");
    assert_eq!(key["actions"], json!(["*"]), "{label}");
    assert_eq!(key["indexes"], json!([format!("{p}*")]), "{label}");
    assert_eq!(
        key["key"].as_str().unwrap(),
        offload::search::api_key::derive(&meili.key, &key_uid),
        "{label}"
    );

    // A second run is idempotent: same counts, same documents, no shadow index left over.
    let again = run_reindex(job.path(), &args, &meili.key);
    assert_exit(&again, 0);
    assert_eq!(
        count(&client, &format!("{p}comments")).await,
        120,
        "{label}"
    );
    assert_eq!(
        doc("comments", "356a192b7913b04c54574d18c28d46e6395428ab").await,
        comment,
        "{label}"
    );
    let leftovers: Vec<String> = client
        .list_indexes(&p)
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.ends_with("__offload_shadow"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{label}: shadow indexes left: {leftovers:?}"
    );
    let mut built = client.list_indexes(&p).await.unwrap();
    built.sort();
    let mut expected: Vec<String> = IndexKind::ALL
        .iter()
        .map(|k| format!("{p}{}", k.name()))
        .collect();
    expected.sort();
    assert_eq!(built, expected, "{label}");

    drop_mongo(&db.name).await;
    db.drop_both().await;
}

/// Documents `{"id": "d<n>", "n": n, "pad": ...}` for library-level tests.
async fn numbered(sink: DocSink, count: usize, tag: &str) -> Result<(), offload::core::StoreError> {
    for n in 0..count {
        if !sink
            .send(json!({"id": format!("d{n}"), "n": n, "tag": tag, "pad": "x".repeat(200)}))
            .await
        {
            break;
        }
    }
    Ok(())
}

fn simple_settings() -> offload::search::specs::IndexSettings {
    let mut s = IndexKind::Comments.settings();
    s.primary_key = "id".into();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_leaves_no_window_without_an_index() {
    let meili = server();
    let client = meili.client();
    meili.owns_prefix(&prefix("swap"));
    let uid = format!("{}live", prefix("swap"));
    let settings = simple_settings();
    let small = RebuildOptions {
        batch_bytes: 20_000,
        ..RebuildOptions::default()
    };
    rebuild_index(&client, &uid, &settings, &small, &|_, _| {}, |sink| {
        numbered(sink, 3, "old")
    })
    .await
    .unwrap();
    assert_eq!(count(&client, &uid).await, 3, "{}", meili.label);

    // While the rebuild runs, watch the live index: every look must find it, with the old or the
    // new documents, never missing and never half-built.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (client, uid, done) = (client.clone(), uid.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..100_000 {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                seen.push(client.document_count(&uid).await.map_err(|e| e.to_string()));
            }
            seen
        })
    };
    rebuild_index(&client, &uid, &settings, &small, &|_, _| {}, |sink| {
        numbered(sink, 1500, "new")
    })
    .await
    .unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = watcher.await.unwrap();
    assert!(!seen.is_empty());
    for s in &seen {
        assert!(
            matches!(s, Ok(3) | Ok(1500)),
            "{}: the live index was seen as {s:?}",
            meili.label
        );
    }
    assert_eq!(count(&client, &uid).await, 1500);
    let doc = client.get_document(&uid, "d7").await.unwrap().unwrap();
    assert_eq!(doc["tag"], "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_stops_the_rebuild_and_leaves_the_live_index() {
    let meili = server();
    let client = meili.client();
    meili.owns_prefix(&prefix("failed"));
    let uid = format!("{}live", prefix("failed"));
    let settings = simple_settings();
    let options = RebuildOptions::default();
    rebuild_index(&client, &uid, &settings, &options, &|_, _| {}, |sink| {
        numbered(sink, 5, "old")
    })
    .await
    .unwrap();

    // An identifier Meilisearch refuses: the documents task fails.
    let err = rebuild_index(
        &client,
        &uid,
        &settings,
        &options,
        &|_, _| {},
        |sink| async move {
            sink.send(json!({"id": "fine"})).await;
            sink.send(json!({"id": "not valid!"})).await;
            Ok(())
        },
    )
    .await
    .expect_err("a failed task must stop the rebuild");
    let text = err.to_string();
    assert!(
        text.contains("invalid_document_id"),
        "{}: {text}",
        meili.label
    );
    assert!(text.contains("failed"), "{text}");
    assert_eq!(
        count(&client, &uid).await,
        5,
        "{}: the live index is untouched",
        meili.label
    );
    assert_eq!(
        client.get_document(&uid, "d0").await.unwrap().unwrap()["tag"],
        "old"
    );
    assert!(
        client
            .get_index(&format!("{uid}__offload_shadow"))
            .await
            .unwrap()
            .is_none(),
        "the shadow is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_or_unreachable_server_exits_2_without_touching_the_live_index() {
    let meili = server();
    let client = meili.client();
    let p = prefix("badkey");
    meili.owns_prefix(&p);
    let uid = format!("{p}comments");
    rebuild_index(
        &client,
        &uid,
        &simple_settings(),
        &RebuildOptions::default(),
        &|_, _| {},
        |sink| numbered(sink, 4, "old"),
    )
    .await
    .unwrap();
    let job = tempfile::tempdir().unwrap();
    let mut args = reindex_args(&meili, "no_such_db", &p);
    args.extend(["--indexes".into(), "comments".into()]);

    let out = run_reindex(job.path(), &args, "not-the-master-key-at-all");
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("master key was refused"),
        "{}: {}",
        meili.label,
        text(&out)
    );
    assert_eq!(
        count(&client, &uid).await,
        4,
        "{}: live index untouched",
        meili.label
    );

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut args = reindex_args(&meili, "no_such_db", &p);
    args[2] = dead;
    let out = run_reindex(job.path(), &args, &meili.key);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("cannot reach the target Meilisearch"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_old_server_without_index_swap_exits_2() {
    // Only the stand-in can play a Meilisearch older than 1.0 (no /swap-indexes).
    let old = standin(StandinConfig {
        version: "0.30.5".into(),
        ..StandinConfig::default()
    });
    let job = tempfile::tempdir().unwrap();
    let args = reindex_args(&old, "no_such_db", &prefix("old"));
    let out = run_reindex(job.path(), &args, &old.key);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("no index swap"),
        "{}: {}",
        old.label,
        text(&out)
    );
    assert!(
        old.client().list_indexes("").await.unwrap().is_empty(),
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_payload_limit_splits_batches() {
    // A stand-in with a 300 kB payload limit: batches of at most 150 kB must all be accepted.
    let meili = standin(StandinConfig {
        payload_limit: 300_000,
        ..StandinConfig::default()
    });
    let db = TestDb::new("meilipl").await;
    db.load_fixture();
    let job = tempfile::tempdir().unwrap();
    let p = prefix("payload");
    let mut args = reindex_args(&meili, &db.name, &p);
    args.extend([
        "--indexes".into(),
        "comment_threads,comments".into(),
        "--meilisearch-batch-bytes".into(),
        "150000".into(),
        "--json".into(),
    ]);
    let out = run_reindex(job.path(), &args, &meili.key);
    assert_exit(&out, 0);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for i in report["indexes"].as_array().unwrap() {
        let (bytes, batches) = (i["bytes"].as_u64().unwrap(), i["batches"].as_u64().unwrap());
        assert!(batches >= bytes.div_ceil(150_000), "{}: {i}", meili.label);
    }
    assert_eq!(
        count(&meili.client(), &format!("{p}comment_threads")).await,
        40
    );
    db.drop_both().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_payload_limit_below_the_batch_is_met_by_halving() {
    // A server whose payload limit (30 kB) is far below the batch size asked for (200 kB): every
    // refused body (413) is sent again in halves, and every document arrives.
    let meili = standin(StandinConfig {
        payload_limit: 30_000,
        ..StandinConfig::default()
    });
    let client = meili.client();
    let uid = format!("{}live", prefix("halve"));
    let big = RebuildOptions {
        batch_bytes: 200_000,
        ..RebuildOptions::default()
    };
    let outcome = rebuild_index(
        &client,
        &uid,
        &simple_settings(),
        &big,
        &|_, _| {},
        |sink| numbered(sink, 1500, "halved"),
    )
    .await
    .unwrap();
    assert_eq!(outcome.documents, 1500, "{}", meili.label);
    assert!(
        outcome.batches >= outcome.bytes.div_ceil(30_000),
        "{}: {} batches for {} bytes under a 30 kB limit",
        meili.label,
        outcome.batches,
        outcome.bytes
    );
    assert_eq!(count(&client, &uid).await, 1500, "{}", meili.label);

    // One document larger than the limit cannot be split: the error names the server setting.
    let err = rebuild_index(
        &client,
        &uid,
        &simple_settings(),
        &big,
        &|_, _| {},
        |sink| async move {
            sink.send(json!({"id": "huge", "pad": "x".repeat(40_000)}))
                .await;
            Ok(())
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("--http-payload-size-limit"),
        "{}: {err}",
        meili.label
    );
    assert_eq!(
        count(&client, &uid).await,
        1500,
        "{}: the live index is untouched",
        meili.label
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_mode_reads_settings_and_documents_from_the_old_server() {
    // The old server is always a stand-in (a test has at most one real server); the target is
    // the configured server.
    let old = standin(StandinConfig::default());
    let target = server();
    let p = prefix("copy");
    target.owns_prefix(&p);
    let uid = format!("{p}comments");
    let mut settings = simple_settings();
    settings.filterable = vec!["context".into(), "course_id".into()];
    rebuild_index(
        &old.client(),
        &uid,
        &settings,
        &RebuildOptions::default(),
        &|_, _| {},
        |sink| numbered(sink, 30, "from-old"),
    )
    .await
    .unwrap();
    let job = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "reindex".into(),
        "--to-meilisearch".into(),
        target.url.clone(),
        "--from-meilisearch".into(),
        old.url.clone(),
        "--meilisearch-mode".into(),
        "copy".into(),
        "--meilisearch-index-prefix".into(),
        p.clone(),
        "--indexes".into(),
        "comments".into(),
        "--no-progress".into(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = offload_env(
        job.path(),
        &argv,
        &[
            ("OFFLOAD_TO_MEILISEARCH_KEY", &target.key),
            ("OFFLOAD_FROM_MEILISEARCH_KEY", &old.key),
        ],
    );
    assert_exit(&out, 0);
    assert!(text(&out).contains("copied"), "{}", text(&out));
    let client = target.client();
    assert_eq!(count(&client, &uid).await, 30, "{}", target.label);
    assert_eq!(
        client.get_document(&uid, "d29").await.unwrap().unwrap()["tag"],
        "from-old"
    );
    let s = client.get_settings(&uid).await.unwrap();
    assert_eq!(
        s["filterableAttributes"],
        json!(["context", "course_id"]),
        "{}",
        target.label
    );
}

/// A request with the master key, answered as `(status, JSON body)`.
async fn raw(meili: &TestMeili, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", meili.url))
        .bearer_auth(&meili.key);
    if !body.is_null() {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The rules of the real server that offload depends on, checked on whichever server the tests
/// use, so the stand-in is held to them: key uids are UUIDs (refused with Meilisearch's error
/// body otherwise; the key derived from the lowercase hyphenated form), index uids are checked,
/// settings come back as the real server gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_rules_for_keys_index_uids_and_settings() {
    use reqwest::Method;
    let meili = server();
    let label = meili.label.clone();
    let p = prefix("rules");
    meili.owns_prefix(&p);
    let key_body = |uid: Value| json!({"uid": uid, "actions": ["search"], "indexes": [format!("{p}*")], "expiresAt": null});

    let (status, body) = raw(
        &meili,
        Method::POST,
        "/keys",
        key_body(json!("tutor-api-key")),
    )
    .await;
    assert_eq!(status, 400, "{label}: {body}");
    assert_eq!(
        body,
        json!({
            "message": "Invalid value at `.uid`: invalid character: found `t` at 0",
            "code": "invalid_api_key_uid",
            "type": "invalid_request",
            "link": "https://docs.meilisearch.com/errors#invalid_api_key_uid",
        }),
        "{label}"
    );
    let (status, body) = raw(&meili, Method::POST, "/keys", key_body(json!("0123abcd"))).await;
    assert_eq!(
        (status, body["message"].clone()),
        (
            400,
            json!("Invalid value at `.uid`: invalid length: found 8")
        ),
        "{label}"
    );

    // Any case is accepted; the uid is kept, and the key derived, in lowercase.
    let uid = fresh_uuid();
    meili.owns_key(&uid);
    let (status, key) = raw(
        &meili,
        Method::POST,
        "/keys",
        key_body(json!(uid.to_ascii_uppercase())),
    )
    .await;
    assert_eq!(status, 201, "{label}: {key}");
    assert_eq!(key["uid"], json!(uid), "{label}");
    assert_eq!(
        key["key"],
        json!(offload::search::api_key::derive(&meili.key, &uid)),
        "{label}"
    );
    let (status, again) = raw(&meili, Method::POST, "/keys", key_body(json!(uid))).await;
    assert_eq!(
        (status, again["code"].clone()),
        (409, json!("api_key_already_exists")),
        "{label}: {again}"
    );
    let (status, found) = raw(&meili, Method::GET, &format!("/keys/{uid}"), Value::Null).await;
    assert_eq!((status, &found["uid"]), (200, &json!(uid)), "{label}");
    let (status, _) = raw(&meili, Method::DELETE, &format!("/keys/{uid}"), Value::Null).await;
    assert_eq!(status, 204, "{label}");
    let (status, gone) = raw(&meili, Method::GET, &format!("/keys/{uid}"), Value::Null).await;
    assert_eq!(
        (status, gone["code"].clone()),
        (404, json!("api_key_not_found")),
        "{label}"
    );

    let (status, body) = raw(
        &meili,
        Method::POST,
        "/indexes",
        json!({"uid": format!("{p}not valid!"), "primaryKey": "id"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("invalid_index_uid")),
        "{label}: {body}"
    );

    // Filterable and searchable attributes come back in the order set, sortable ones sorted.
    let client = meili.client();
    let uid = format!("{p}order");
    let task = client
        .update_settings(
            &uid,
            &json!({
                "filterableAttributes": ["zeta", "alpha", "mid"],
                "sortableAttributes": ["zeta", "alpha", "mid"],
                "searchableAttributes": ["zeta", "alpha", "mid"],
            }),
        )
        .await
        .unwrap();
    client.wait(task, "settings").await.unwrap();
    let settings = client.get_settings(&uid).await.unwrap();
    assert_eq!(
        settings["filterableAttributes"],
        json!(["zeta", "alpha", "mid"]),
        "{label}"
    );
    assert_eq!(
        settings["searchableAttributes"],
        json!(["zeta", "alpha", "mid"]),
        "{label}"
    );
    assert_eq!(
        settings["sortableAttributes"],
        json!(["alpha", "mid", "zeta"]),
        "{label}"
    );

    // A key as Tutor's (every action on `<prefix>*`) reaches the prefix's indexes only; a key
    // with one action, only that action.
    for (actions, path, allowed) in [
        (json!(["*"]), format!("/indexes/{uid}/settings"), true),
        (
            json!(["*"]),
            "/indexes/other_index/settings".to_string(),
            false,
        ),
        (json!(["search"]), format!("/indexes/{uid}/settings"), false),
        (
            json!(["settings.*"]),
            format!("/indexes/{uid}/settings"),
            true,
        ),
    ] {
        let key_uid = fresh_uuid();
        meili.owns_key(&key_uid);
        let (status, key) = raw(
            &meili,
            Method::POST,
            "/keys",
            json!({"uid": key_uid, "actions": actions, "indexes": [format!("{p}*")], "expiresAt": null}),
        )
        .await;
        assert_eq!(status, 201, "{label}: {key}");
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", meili.url))
            .bearer_auth(key["key"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if allowed {
            assert_eq!(status, 200, "{label}: {actions} on {path}: {body}");
        } else {
            assert_eq!(
                (status, body["code"].clone()),
                (403, json!("invalid_api_key")),
                "{label}: {actions} on {path}"
            );
        }
    }
}

#[test]
fn standin_refuses_a_master_key_shorter_than_16_bytes() {
    // Meilisearch in production does not start with one; neither does the stand-in.
    let short = std::panic::catch_unwind(|| {
        MeiliStandin::start(StandinConfig {
            master_key: Some("fifteen-bytes15".into()),
            ..StandinConfig::default()
        })
    });
    assert!(short.is_err());
}

/// `offload` with a Tutor root holding `config`, and no key or password from the caller's
/// environment.
fn offload_with_config(
    config: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Output, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("config.yml"), config).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_offload"));
    cmd.args(args)
        .arg("--tutor-root")
        .arg(root.path())
        .arg("--job")
        .arg(root.path().join("job"))
        .env_remove("OFFLOAD_TO_MEILISEARCH_KEY")
        .env_remove("OFFLOAD_FROM_MEILISEARCH_KEY")
        .env_remove("TUTOR_ROOT")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.output().expect("run offload"), root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_uid_or_master_key_meilisearch_refuses_stops_before_anything_is_written() {
    let meili = server();
    let label = meili.label.clone();
    let p = prefix("badinput");
    meili.owns_prefix(&p);
    let config = |uid: &str| {
        format!("MEILISEARCH_API_KEY_UID: {uid}\nMEILISEARCH_INDEX_PREFIX: {p}\nMEILISEARCH_MASTER_KEY: old-master-key-0123456789\n")
    };
    let good = fresh_uuid();

    // plan, migrate and reindex refuse a uid that is not a UUID, naming the config.yml key.
    for command in [
        vec!["plan"],
        vec!["migrate", "--no-progress"],
        vec!["reindex", "--no-progress"],
    ] {
        let mut args = command.clone();
        args.extend(["--to-meilisearch", meili.url.as_str()]);
        let (out, root) = offload_with_config(
            &config("tutor-api-key"),
            &args,
            &[("OFFLOAD_TO_MEILISEARCH_KEY", &meili.key)],
        );
        assert_exit(&out, 2);
        let said = text(&out);
        assert!(
            said.contains("config.yml MEILISEARCH_API_KEY_UID: `tutor-api-key` is not a UUID")
                && said.contains("tutor config save --set MEILISEARCH_API_KEY_UID="),
            "{command:?}: {said}"
        );
        assert!(
            !root.path().join("job").exists(),
            "{command:?}: no job folder"
        );
    }

    // The flag is named when it is the one at fault; a capitalised UUID is refused with the reason.
    let (out, _root) = offload_with_config(
        &config(&good),
        &[
            "reindex",
            "--to-meilisearch",
            &meili.url,
            "--meilisearch-api-key-uid",
            &good.to_ascii_uppercase(),
        ],
        &[("OFFLOAD_TO_MEILISEARCH_KEY", &meili.key)],
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("--meilisearch-api-key-uid: ") && said.contains("write it in lowercase"),
        "{said}"
    );

    // A master key shorter than 16 bytes, from the environment or a file: named, never shown.
    let short = "fifteen-bytes15";
    let (out, root) = offload_with_config(
        &config(&good),
        &["plan", "--to-meilisearch", &meili.url],
        &[("OFFLOAD_TO_MEILISEARCH_KEY", short)],
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("OFFLOAD_TO_MEILISEARCH_KEY: ") && said.contains("at least 16 bytes"),
        "{said}"
    );
    assert!(!said.contains(short), "the key is not shown: {said}");
    let key_file = root.path().join("meili-key");
    std::fs::write(&key_file, format!("{short}\n")).unwrap();
    let key_file = key_file.display().to_string();
    for command in ["migrate", "reindex"] {
        let (out, root) = offload_with_config(
            &config(&good),
            &[
                command,
                "--to-meilisearch",
                &meili.url,
                "--to-meilisearch-key-file",
                &key_file,
                "--no-progress",
            ],
            &[],
        );
        assert_exit(&out, 2);
        let said = text(&out);
        assert!(
            said.contains("--to-meilisearch-key-file: ") && said.contains("at least 16 bytes"),
            "{command}: {said}"
        );
        assert!(!said.contains(short), "{command}: {said}");
        assert!(
            !root.path().join("job").exists(),
            "{command}: no job folder"
        );
    }
    assert!(
        meili.client().list_indexes(&p).await.unwrap().is_empty(),
        "nothing was created on the {label}"
    );
}
