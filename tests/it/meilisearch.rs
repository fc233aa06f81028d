//! The Meilisearch reindex. Every test runs against a real Meilisearch when
//! OFFLOAD_TEST_MEILISEARCH_URL and OFFLOAD_TEST_MEILISEARCH_KEY are set, else against the
//! in-process Meilisearch STAND-IN (tests/it/support/meili_standin.rs); assertion messages name
//! which one. Tests whose name contains `standin` need a server behaviour only the stand-in can be
//! configured for (an old version, a small payload limit) and always use it.
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
        _standin: Some(s),
    }
}

impl TestMeili {
    pub(crate) fn client(&self) -> MeilisearchClient {
        MeilisearchClient::new(&self.url, Some(Secret::new(self.key.clone())), "target").unwrap()
    }
}

/// A prefix unique to one test run.
fn prefix(tag: &str) -> String {
    format!("it{}_{tag}_", std::process::id())
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
    let mut args = reindex_args(&meili, &db.name, &p);
    args.extend([
        "--meilisearch-api-key-uid".into(),
        format!("{p}uid-1"),
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
    assert_eq!(
        forum["filterableAttributes"],
        json!(["_pk", "commentable_id", "context", "course_id"]),
        "{label}"
    );

    // The API key Tutor expects exists, with the value Tutor computes.
    let key = client
        .get_key(&format!("{p}uid-1"))
        .await
        .unwrap()
        .expect("the API key was created");
    assert_eq!(key["actions"], json!(["*"]));
    assert_eq!(key["indexes"], json!([format!("{p}*")]));
    assert_eq!(
        key["key"].as_str().unwrap(),
        offload::search::api_key::derive(&meili.key, &format!("{p}uid-1"))
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

    for k in IndexKind::ALL {
        let t = client
            .delete_index(&format!("{p}{}", k.name()))
            .await
            .unwrap();
        client.wait(t, "cleanup").await.unwrap();
    }
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
    let t = client.delete_index(&uid).await.unwrap();
    client.wait(t, "cleanup").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_stops_the_rebuild_and_leaves_the_live_index() {
    let meili = server();
    let client = meili.client();
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
    let t = client.delete_index(&uid).await.unwrap();
    client.wait(t, "cleanup").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_or_unreachable_server_exits_2_without_touching_the_live_index() {
    let meili = server();
    let client = meili.client();
    let p = prefix("badkey");
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
    let t = client.delete_index(&uid).await.unwrap();
    client.wait(t, "cleanup").await.unwrap();
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
async fn copy_mode_reads_settings_and_documents_from_the_old_server() {
    // The old server is always a stand-in (a test has at most one real server); the target is
    // the configured server.
    let old = standin(StandinConfig::default());
    let target = server();
    let p = prefix("copy");
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
    let t = client.delete_index(&uid).await.unwrap();
    client.wait(t, "cleanup").await.unwrap();
}
