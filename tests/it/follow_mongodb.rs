//! Following a MongoDB source's change stream after the copy, against real SecantusDB servers
//! each test starts for itself: a replica-set source (SecantusDB without `--standalone`
//! advertises a one-node replica set with change streams) and a standalone target. Writes from
//! another client while the copy runs and while `offload follow` runs (inserts, updates,
//! replaces, deletes, a multi-document transaction) all arrive, and verify is clean; a follower
//! killed with SIGKILL mid-stream resumes from its resume token with nothing lost; a dropped
//! collection stops following with a message naming it; a standalone source is not followed and
//! the plan says the final pass uses the delta pass.

use std::io::Read as _;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::{Client, IndexModel};

use offload::core::follow::StreamPosition;
use offload::core::{Cursor, KeyRange, Side, Store, StoreKind, Unit};
use offload::stores::mongodb::{MongoEndpoint, MongoOptions, MongoStore};

use crate::common::*;
use crate::stop::{Background, HELD};

fn python() -> std::path::PathBuf {
    let p = std::env::var("OFFLOAD_STACK_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack/venv/bin/python"));
    assert!(
        p.exists(),
        "no Python with SecantusDB at {}: run scripts/stack up (or set OFFLOAD_STACK_PYTHON)",
        p.display()
    );
    p
}

/// A SecantusDB of one test's own on a free loopback port, stopped when dropped.
struct OwnSecantus {
    child: Child,
    port: u16,
    replica_set: bool,
    _dir: tempfile::TempDir,
}

impl OwnSecantus {
    /// A one-node replica set (with change streams) or, with `standalone`, a server without.
    fn start(standalone: bool) -> OwnSecantus {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("secantusd.toml");
        std::fs::write(&config, "").unwrap();
        let mut cmd = Command::new(python());
        cmd.args(["-m", "secantus", "--config"])
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--storage-path")
            .arg(dir.path().join("data"));
        if standalone {
            cmd.arg("--standalone");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .expect("start SecantusDB (scripts/stack up installs it)");
        let mut s = OwnSecantus {
            child,
            port,
            replica_set: !standalone,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("the test's SecantusDB exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "SecantusDB did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn url(&self) -> String {
        if self.replica_set {
            format!("mongodb://127.0.0.1:{}/?replicaSet=secantus", self.port)
        } else {
            format!("mongodb://127.0.0.1:{}", self.port)
        }
    }

    async fn client(&self) -> Client {
        let mut opts = mongodb::options::ClientOptions::parse(self.url())
            .await
            .unwrap();
        opts.server_selection_timeout = Some(Duration::from_secs(20));
        Client::with_options(opts).unwrap()
    }
}

impl Drop for OwnSecantus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pair a test copies between: a replica-set (or standalone) source and a standalone target.
struct Pair {
    source: OwnSecantus,
    target: OwnSecantus,
    db: String,
}

impl Pair {
    fn start(standalone_source: bool) -> Pair {
        Pair {
            source: OwnSecantus::start(standalone_source),
            target: OwnSecantus::start(true),
            db: "courseware".into(),
        }
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--from-mongodb".into(),
            self.source.url(),
            "--to-mongodb".into(),
            self.target.url(),
            "--mongodb-databases".into(),
            self.db.clone(),
        ]
    }

    /// The library's store over the pair, for what the command line does not reach.
    fn store(&self) -> MongoStore {
        MongoStore::new(
            MongoEndpoint::parse(&self.source.url()).unwrap(),
            MongoEndpoint::parse(&self.target.url()).unwrap(),
            MongoOptions {
                databases: vec![self.db.clone()],
                ..MongoOptions::default()
            },
            1,
        )
    }
}

/// Every document of a collection as raw bytes, in `_id` order.
async fn raw_docs(c: &Client, db: &str, coll: &str) -> Vec<Vec<u8>> {
    let docs: Vec<RawDocumentBuf> = c
        .database(db)
        .collection::<RawDocumentBuf>(coll)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.into_iter().map(|d| d.into_bytes()).collect()
}

/// Wait (at most two minutes) until the target holds exactly the source's documents of these
/// collections: a condition polled, not a sleep that hopes.
async fn wait_until_in_step(pair: &Pair, colls: &[&str], follower: &mut Follow) {
    let (source, target) = (pair.source.client().await, pair.target.client().await);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut same = true;
        for coll in colls {
            if raw_docs(&source, &pair.db, coll).await != raw_docs(&target, &pair.db, coll).await {
                same = false;
                break;
            }
        }
        if same {
            return;
        }
        if let Some(status) = follower.child.try_wait().unwrap() {
            panic!(
                "offload follow ended ({status}) before the target was in step:\n{}",
                follower.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the target was not in step with the source within two minutes:\n{}",
            follower.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `offload follow` running in the background, its output in a file.
struct Follow {
    child: Child,
    log: std::path::PathBuf,
}

impl Follow {
    fn start(job: &Path, env: &[(&str, &str)]) -> Follow {
        let log = job.with_extension("follow.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
        cmd.args(["follow", "--poll", "0.05", "--no-progress", "--job"])
            .arg(job)
            .arg("--tutor-root")
            .arg(job.join("no-tutor-here"))
            .env_remove("OFFLOAD_FAILPOINT")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Follow {
            child: cmd.spawn().expect("run offload follow"),
            log,
        }
    }

    fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// SIGTERM, as an operator's service manager stops it; how it exited, and what it said.
    fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        (status, self.output())
    }

    /// Wait for it to end on its own (at most two minutes).
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "offload follow did not end:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The job's MongoDB follow checkpoint, as `offload status --json` shows it.
fn checkpoint(job: &Path) -> Option<serde_json::Value> {
    let out = offload(job, &["status", "--json"]);
    assert_exit(&out, 0);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["follow"]
        .as_array()?
        .iter()
        .find(|f| f["store"] == "mongodb")
        .map(|f| f["checkpoint"].clone())
}

/// The keys the catalog records as touched by following, per unit (`*`: the unit whole).
fn touched(job: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(job.join("catalog.sqlite")).unwrap();
    let mut q = conn
        .prepare("SELECT unit, key FROM touched WHERE store = 'mongodb' ORDER BY unit, key")
        .unwrap();
    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn key_of(text: &str) -> Cursor {
    Cursor(serde_json::from_str(text).unwrap())
}

#[tokio::test]
async fn follow_applies_writes_made_during_and_after_the_copy_and_verify_is_clean() {
    let pair = Pair::start(false);
    let src = pair.source.client().await;
    let db = src.database(&pair.db);
    let docs = db.collection::<Document>("docs");
    docs.insert_many((0..300).map(|i| doc! {"_id": i, "v": i, "note": format!("doc {i}")}))
        .await
        .unwrap();
    let users = db.collection::<Document>("users");
    users
        .create_index(
            IndexModel::builder()
                .keys(doc! {"email": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    users
        .insert_many(
            (0..20).map(|i| doc! {"_id": format!("u{i}"), "email": format!("{i}@example.org")}),
        )
        .await
        .unwrap();

    let job = tempfile::tempdir().unwrap();
    let f = pair.flags();
    let plan = offload(job.path(), &args("plan", &f, &[]));
    assert_exit(&plan, 0);
    assert!(
        text(&plan).contains("the source has change streams"),
        "{}",
        text(&plan)
    );

    // The copy is held after its first batch; meanwhile another client changes documents
    // the copy has already read and some it has not read yet.
    let copy_args = args("copy", &f, &["--batch-rows", "100", "--parallel", "1"]);
    let mut copy = Background::start(job.path(), &copy_args, "hold-after-batch:1");
    copy.wait_for(HELD);
    docs.update_one(doc! {"_id": 5}, doc! {"$set": {"v": -5}})
        .await
        .unwrap();
    docs.delete_one(doc! {"_id": 6}).await.unwrap();
    docs.update_one(doc! {"_id": 250}, doc! {"$set": {"v": -250}})
        .await
        .unwrap();
    docs.insert_one(doc! {"_id": 1000, "v": 1000})
        .await
        .unwrap();
    copy.release();
    let (status, stderr) = copy.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");

    // Writes between the copy and the follower, then while it runs.
    docs.replace_one(doc! {"_id": 7}, doc! {"replaced": true})
        .await
        .unwrap();
    let follower = Follow::start(job.path(), &[]);
    let writer = {
        let (docs, users, client) = (docs.clone(), users.clone(), src.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                docs.insert_one(doc! {"_id": 2000 + i, "v": i})
                    .await
                    .unwrap();
                docs.update_one(doc! {"_id": 10 + i}, doc! {"$inc": {"v": 100}})
                    .await
                    .unwrap();
                if i % 4 == 0 {
                    docs.delete_one(doc! {"_id": 100 + i}).await.unwrap();
                }
            }
            // A value moves from one document to another under a unique index.
            users
                .update_one(
                    doc! {"_id": "u1"},
                    doc! {"$set": {"email": "moved@example.org"}},
                )
                .await
                .unwrap();
            users
                .update_one(
                    doc! {"_id": "u2"},
                    doc! {"$set": {"email": "1@example.org"}},
                )
                .await
                .unwrap();
            // A transaction: its writes arrive together.
            let mut session = client.start_session().await.unwrap();
            session.start_transaction().await.unwrap();
            docs.insert_one(doc! {"_id": 3000, "in": "txn"})
                .session(&mut session)
                .await
                .unwrap();
            docs.update_one(doc! {"_id": 20}, doc! {"$set": {"in": "txn"}})
                .session(&mut session)
                .await
                .unwrap();
            users
                .delete_one(doc! {"_id": "u3"})
                .session(&mut session)
                .await
                .unwrap();
            session.commit_transaction().await.unwrap();
        })
    };
    writer.await.unwrap();
    let mut follower = follower;
    wait_until_in_step(&pair, &["docs", "users"], &mut follower).await;
    let (status, said) = follower.stop();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("mongodb"), "{said}");
    assert!(said.contains("started from the copy"), "{said}");

    let check = checkpoint(job.path()).expect("a checkpoint is recorded");
    assert!(check["position"]["token"].is_object(), "{check}");
    assert!(check["events"].as_u64().unwrap() >= 100, "{check}");
    assert_eq!(check["lag"]["behind"], 0, "in step when stopped: {check}");
    // The keys it touched are named in their units, and digest the same on both sides and as
    // `row_digests` digests them. Read before the full verify, which (clean) becomes the
    // baseline and leaves nothing touched.
    let touched = touched(job.path());
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
    let docs_keys: Vec<Cursor> = touched
        .iter()
        .filter(|(u, k)| u == &format!("{}.docs", pair.db) && k != "*")
        .map(|(_, k)| key_of(k))
        .collect();
    assert!(docs_keys.len() >= 40, "{touched:?}");
    assert!(
        touched
            .iter()
            .any(|(u, _)| u == &format!("{}.users", pair.db)),
        "{touched:?}"
    );
    let store = pair.store();
    let unit = Unit {
        store: StoreKind::Mongodb,
        name: format!("{}.docs", pair.db),
        container: pair.db.clone(),
        object: "docs".into(),
        range: KeyRange::default(),
        est_rows: 0,
        est_bytes: 0,
        size_known: true,
        spec: serde_json::json!({}),
    };
    let on_source = store
        .row_digests_at(Side::Source, &unit, &docs_keys)
        .await
        .unwrap();
    let on_target = store
        .row_digests_at(Side::Target, &unit, &docs_keys)
        .await
        .unwrap();
    assert_eq!(on_source, on_target);
    assert!(
        on_source.len() < docs_keys.len(),
        "deleted documents are left out"
    );
    let whole = store
        .row_digests(Side::Target, &unit, None, None, 10_000)
        .await
        .unwrap();
    for d in &on_target {
        assert!(whole.contains(d), "{d:?} is digested as row_digests does");
    }
}

#[tokio::test]
async fn a_follower_killed_mid_stream_resumes_from_its_token_with_nothing_lost() {
    let pair = Pair::start(false);
    let src = pair.source.client().await;
    let docs = src.database(&pair.db).collection::<Document>("docs");
    docs.insert_many((0..50).map(|i| doc! {"_id": i, "v": i}))
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let f = pair.flags();
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);

    // 1,500 changes waiting; the follower dies by SIGKILL after applying the 1,000th, which
    // its checkpoint may not hold yet.
    docs.insert_many((1000..2500).map(|i| doc! {"_id": i, "v": i}))
        .await
        .unwrap();
    let (status, said) = Follow::start(
        job.path(),
        &[("OFFLOAD_FAILPOINT", "mongodb-followed:1000")],
    )
    .finish();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{said}");
    let first = checkpoint(job.path()).expect("checkpoints before the kill");
    let applied = first["events"].as_u64().unwrap();
    assert!(
        (1..1000).contains(&applied),
        "checkpointed part of the way: {first}"
    );
    assert!(first["position"]["token"].is_object(), "{first}");

    // More changes while it is down, of documents it applied and of new ones.
    docs.update_many(doc! {"_id": {"$lt": 1100}}, doc! {"$set": {"later": true}})
        .await
        .unwrap();
    docs.delete_many(doc! {"_id": {"$gte": 2400}})
        .await
        .unwrap();
    let mut again = Follow::start(job.path(), &[]);
    wait_until_in_step(&pair, &["docs"], &mut again).await;
    let (status, said) = again.stop();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("started from the checkpoint"), "{said}");
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
}

#[tokio::test]
async fn a_collection_dropped_during_follow_stops_it_with_a_message_naming_it() {
    let pair = Pair::start(false);
    let src = pair.source.client().await;
    let db = src.database(&pair.db);
    db.collection::<Document>("kept")
        .insert_many((0..20).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    db.collection::<Document>("scratch")
        .insert_many((0..20).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    assert_exit(&offload(job.path(), &args("copy", &pair.flags(), &[])), 0);

    db.collection::<Document>("kept")
        .insert_one(doc! {"_id": "before the drop"})
        .await
        .unwrap();
    db.collection::<Document>("scratch").drop().await.unwrap();
    let (status, said) = Follow::start(job.path(), &[]).finish();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!(
            "collection {}.scratch was dropped on the source",
            pair.db
        )),
        "{said}"
    );
    assert!(said.contains("--delta"), "says what to do: {said}");
    // What came before the drop is applied and checkpointed.
    let target = pair.target.client().await;
    assert_eq!(
        target
            .database(&pair.db)
            .collection::<Document>("kept")
            .count_documents(doc! {"_id": "before the drop"})
            .await
            .unwrap(),
        1
    );
    let check = checkpoint(job.path()).expect("checkpointed before the drop");
    assert!(check["events"].as_u64().unwrap() >= 1, "{check}");
}

#[tokio::test]
async fn a_standalone_source_is_not_followed_and_the_plan_says_the_delta_pass_is_used() {
    let pair = Pair::start(true);
    pair.source
        .client()
        .await
        .database(&pair.db)
        .collection::<Document>("docs")
        .insert_many((0..10).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let f = pair.flags();
    let plan = offload(job.path(), &args("plan", &f, &[]));
    assert_exit(&plan, 0);
    assert!(
        text(&plan).contains("standalone: no change stream; the final pass uses the delta pass"),
        "{}",
        text(&plan)
    );
    assert!(
        text(&plan).contains("one-node replica set"),
        "{}",
        text(&plan)
    );
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    let follow = offload(job.path(), &["follow"]);
    assert_exit(&follow, 0);
    let said = text(&follow);
    assert!(said.contains("nothing to follow"), "{said}");
    assert!(said.contains("mongodb  not followed"), "{said}");
    assert!(checkpoint(job.path()).is_none());
}

/// The final pass's wait: with the source's writers done, a follower opened where the copy
/// started reads the source's head and applies until it is caught up with it, and then the
/// target holds every change made before the head was read.
#[tokio::test]
async fn a_follower_catches_up_with_the_head_read_after_the_writes() {
    let pair = Pair::start(false);
    let src = pair.source.client().await;
    let docs = src.database(&pair.db).collection::<Document>("docs");
    docs.insert_many((0..30).map(|i| doc! {"_id": i, "v": i}))
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    assert_exit(&offload(job.path(), &args("copy", &pair.flags(), &[])), 0);
    let start: String = rusqlite::Connection::open(job.path().join("catalog.sqlite"))
        .unwrap()
        .query_row(
            "SELECT value FROM setup WHERE key = 'stream_start:mongodb'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let start: StreamPosition = serde_json::from_str(&start).unwrap();

    docs.insert_many((100..400).map(|i| doc! {"_id": i, "v": i}))
        .await
        .unwrap();
    docs.delete_many(doc! {"_id": {"$lt": 10}}).await.unwrap();
    let store = pair.store();
    let units = store.inventory().await.unwrap();
    let mut follower = store.follower(&start, &units).await.unwrap();
    let head = follower.source_head().await.unwrap();
    assert!(
        !follower.caught_up(&head),
        "300 changes are not applied yet"
    );
    let mut applies = 0;
    while !follower.caught_up(&head) {
        applies += 1;
        assert!(applies < 500, "not caught up after 500 applies");
        follower.apply(Duration::from_millis(100)).await.unwrap();
    }
    follower.close().await;
    let target = pair.target.client().await;
    assert_eq!(
        raw_docs(&src, &pair.db, "docs").await,
        raw_docs(&target, &pair.db, "docs").await,
        "caught up means every change before the head is on the target"
    );
}
