//! `offload migrate` on a Tutor platform: one shot, delta pass after source writes, crashes across
//! phases, a dry run that writes nothing, and the HTML report in a real browser.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

/// A Tutor root whose MySQL is the test source, reached with the root password Tutor generated.
struct Platform {
    root: tempfile::TempDir,
    user: String,
    db: TestDb,
}

impl Platform {
    async fn new(tag: &str) -> Platform {
        let db = TestDb::new(tag).await;
        db.load_fixture();
        let root = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_root().join("fixtures/tutor/config.yml"),
            root.path().join("config.yml"),
        )
        .unwrap();
        let password = tutor(
            root.path(),
            &["config", "printvalue", "MYSQL_ROOT_PASSWORD"],
        );
        let user = format!("it_{tag}_{}", std::process::id());
        exec(
            &mysql_source(),
            &format!(
                "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{}'",
                password.trim()
            ),
        )
        .await;
        exec(
            &mysql_source(),
            &format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION"),
        )
        .await;
        let src = url::Url::parse(&mysql_source()).unwrap();
        tutor(
            root.path(),
            &[
                "config",
                "save",
                "--set",
                &format!("MYSQL_HOST={}", src.host_str().unwrap()),
                "--set",
                &format!("MYSQL_PORT={}", src.port().unwrap()),
                "--set",
                &format!("MYSQL_ROOT_USERNAME={user}"),
            ],
        );
        Platform { root, user, db }
    }

    fn config(&self) -> Vec<u8> {
        std::fs::read(self.root.path().join("config.yml")).unwrap()
    }

    fn job(&self) -> std::path::PathBuf {
        self.root.path().join("job")
    }

    fn migrate(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let root = self.root.path().display().to_string();
        let job = self.job().display().to_string();
        let to = mysql_target();
        let mut args = vec![
            "migrate",
            "--tutor-root",
            &root,
            "--job",
            &job,
            "--to-mysql",
            &to,
            "--databases",
            &self.db.name,
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
        cmd.args(&args)
            .env_remove("OFFLOAD_FAILPOINT")
            .env_remove("TUTOR_ROOT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn verify(&self) -> Output {
        offload_at(&self.job(), &["verify"])
    }

    async fn done(self) {
        exec(
            &mysql_source(),
            &format!("DROP USER IF EXISTS '{}'@'%'", self.user),
        )
        .await;
        self.db.drop_both().await;
    }
}

fn killed(out: &Output, point: &str) {
    assert_eq!(
        out.status.signal(),
        Some(9),
        "expected SIGKILL at {point}; output:\n{}",
        text(out)
    );
}

fn offload_at(job: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(args)
        .arg("--job")
        .arg(job)
        .output()
        .unwrap()
}

#[tokio::test]
async fn one_shot_then_delta_fixes_source_writes_and_cuts_over() {
    let _freeze = mysql_source_freeze_lock().await;
    let p = Platform::new("mig").await;
    let before = p.config();
    let out = p.migrate(&["--no-cutover"], &[]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("Cutover skipped"), "{}", text(&out));
    assert_eq!(p.config(), before, "--no-cutover leaves config.yml alone");

    // The platform keeps writing after the copy: verify catches every kind of change.
    let t = |name: &str| format!("`{}`.`{name}`", p.db.name);
    let src = mysql_source();
    exec(
        &src,
        &format!(
            "UPDATE {} SET email = 'changed@example.org' WHERE id = 12",
            t("auth_user")
        ),
    )
    .await;
    exec(
        &src,
        &format!("DELETE FROM {} WHERE id = 7", t("student_courseenrollment")),
    )
    .await;
    exec(
        &src,
        &format!(
            "INSERT INTO {} (app, name, applied) VALUES ('late', 'x', NOW())",
            t("django_migrations")
        ),
    )
    .await;
    exec(
        &src,
        &format!(
            "INSERT INTO {} SELECT * FROM {} LIMIT 1",
            t("offload_event_log"),
            t("offload_event_log")
        ),
    )
    .await;
    let out = p.verify();
    assert_exit(&out, 1);
    assert!(
        text(&out).contains("id=12") && text(&out).contains("id=7"),
        "{}",
        text(&out)
    );

    // The final pass: only what changed is copied again, writers are held off meanwhile and
    // let in again afterwards, then cutover.
    let out = p.migrate(&["--resume", "--delta", "--freeze-source"], &[]);
    assert_exit(&out, 0);
    let report = text(&out);
    assert!(report.contains("Delta pass: 4 of"), "{report}");
    assert!(report.contains("Safe to switch"), "{report}");
    assert!(report.contains("Rewrote"), "{report}");
    let ro = rows(&src, "SELECT @@GLOBAL.read_only").await;
    assert_eq!(
        ro[0][0],
        mysql_async::Value::Bytes(b"0".to_vec()),
        "the source is writable again"
    );
    assert_exit(&p.verify(), 0);
    assert_ne!(p.config(), before);
    let host = tutor(p.root.path(), &["config", "printvalue", "RUN_MYSQL"]);
    assert_eq!(host.trim(), "false");
    p.done().await;
}

#[tokio::test]
async fn kill_nine_at_five_points_across_phases_then_resume() {
    let p = Platform::new("mig5").await;
    let before = p.config();
    let first = p.migrate(
        &["--batch-rows", "50", "--parallel", "2"],
        &[("OFFLOAD_FAILPOINT", "after-prepare")],
    );
    killed(&first, "after-prepare");
    for point in [
        "after-batch:4",
        "before-finish",
        "before-verify",
        "before-cutover",
    ] {
        let out = p.migrate(
            &["--resume", "--batch-rows", "50", "--parallel", "2"],
            &[("OFFLOAD_FAILPOINT", point)],
        );
        killed(&out, point);
        assert_eq!(
            p.config(),
            before,
            "config.yml untouched before cutover ({point})"
        );
    }
    let out = p.migrate(&["--resume"], &[]);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("already copied and skipped"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("Safe to switch") && text(&out).contains("Rewrote"),
        "{}",
        text(&out)
    );
    assert_eq!(
        tutor(p.root.path(), &["config", "printvalue", "RUN_MYSQL"]).trim(),
        "false"
    );
    assert_eq!(
        dump(&mysql_source(), &p.db.name),
        dump(&mysql_target(), &p.db.name)
    );
    p.done().await;
}

#[tokio::test]
async fn dry_run_writes_nothing_anywhere() {
    let p = Platform::new("dry").await;
    let before = p.config();
    let out = p.migrate(&["--dry-run"], &[]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("Maintenance window"), "{}", text(&out));
    assert!(!p.job().exists(), "no job folder");
    assert_eq!(p.config(), before, "config.yml untouched");
    let dbs = rows(
        &mysql_target(),
        &format!("SHOW DATABASES LIKE '{}'", p.db.name),
    )
    .await;
    assert!(dbs.is_empty(), "nothing created on the target");
    let backups = std::fs::read_dir(p.root.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("backup")
        })
        .count();
    assert_eq!(backups, 0);
    p.done().await;
}

#[tokio::test]
async fn html_report_shows_the_failing_unit_in_a_browser() {
    let p = Platform::new("html").await;
    assert_exit(&p.migrate(&["--no-cutover"], &[]), 0);
    exec(
        &mysql_target(),
        &format!(
            "UPDATE `{}`.`course_modes_coursemode` SET min_price = min_price + 1 WHERE id = 2",
            p.db.name
        ),
    )
    .await;
    let html = p.root.path().join("report.html");
    let out = p.migrate(&["--resume", "--report", html.to_str().unwrap()], &[]);
    assert_exit(&out, 1);
    assert!(
        text(&out).contains("Stopped before cutover"),
        "{}",
        text(&out)
    );

    let profile = tempfile::tempdir().unwrap();
    let browser = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium (scripts/stack install-browser installs it)");
    assert!(
        browser.status.success(),
        "{}",
        String::from_utf8_lossy(&browser.stderr)
    );
    let dom = String::from_utf8_lossy(&browser.stdout);
    assert!(dom.contains("NOT safe to switch"), "{dom}");
    let row = dom
        .split("<tr")
        .find(|r| r.contains("course_modes_coursemode"))
        .expect("the unit's row");
    assert!(
        row.contains("class=\"bad\"") && row.contains("id=2"),
        "{row}"
    );
    p.done().await;
}

// ---------------------------------------------------------------------------------------------
// The whole platform: MySQL, MongoDB, Redis, MinIO and the search indexes in one job.

use mongodb::bson::{doc, oid::ObjectId, Document};

use crate::meilisearch::{fresh_uuid, server as meilisearch_server, TestMeili};

const S3_SOURCE: (&str, &str) = ("OFFLOAD_TEST_S3_SOURCE", "http://127.0.0.1:18333");
const S3_TARGET: (&str, &str) = ("OFFLOAD_TEST_S3_TARGET", "http://127.0.0.1:28333");
/// The Redis database of the whole-platform tests. The Redis tests use all sixteen, so these
/// tests take the Redis tests' lock exclusively while they run.
const REDIS_DB: i64 = 13;
const MINIO_KEYS: [&str; 5] = [
    "MINIO_BUCKET_NAME",
    "MINIO_FILE_UPLOAD_BUCKET_NAME",
    "MINIO_VIDEO_UPLOAD_BUCKET_NAME",
    "MINIO_GRADES_BUCKET_NAME",
    "MINIO_OPENEDX_LEARNING_BUCKET_NAME",
];

fn mongo(side: &str) -> String {
    let (var, default) = if side == "source" {
        ("OFFLOAD_TEST_MONGODB_SOURCE", "mongodb://127.0.0.1:27117")
    } else {
        ("OFFLOAD_TEST_MONGODB_TARGET", "mongodb://127.0.0.1:27118")
    };
    format!("{}/?directConnection=true", env_or(var, default))
}

fn redis_url(side: &str) -> String {
    let (var, default) = if side == "source" {
        ("OFFLOAD_TEST_REDIS_SOURCE", "redis://127.0.0.1:26379")
    } else {
        ("OFFLOAD_TEST_REDIS_TARGET", "redis://127.0.0.1:26380")
    };
    env_or(var, default)
}

fn redis_conn(side: &str) -> ::redis::Connection {
    ::redis::Client::open(format!("{}/{REDIS_DB}", redis_url(side)))
        .unwrap()
        .get_connection()
        .unwrap_or_else(|e| {
            panic!("the test Redis ({side}): {e}; start it with `scripts/stack up`")
        })
}

fn s3(side: (&str, &str)) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(env_or(side.0, side.1))
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            env_or("OFFLOAD_TEST_S3_ACCESS_KEY", "offload-test-access"),
            env_or("OFFLOAD_TEST_S3_SECRET_KEY", "offload-test-secret"),
            None,
            None,
            "test",
        ))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

use crate::objects::drop_bucket;

async fn put_object(b: &str, key: &str, body: &[u8]) {
    s3(S3_SOURCE)
        .put_object()
        .bucket(b)
        .key(key)
        .content_type("text/plain")
        .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap();
}

/// The Tutor platform with every store on the test servers: the MySQL fixture, a modulestore
/// whose `active_versions` agree with the MySQL course index, Redis keys, MinIO buckets with
/// objects, and a Meilisearch target (real when configured, else the stand-in).
struct WholePlatform {
    p: Platform,
    mongo_db: String,
    buckets: Vec<String>,
    meili: TestMeili,
    prefix: String,
    _redis: std::sync::RwLockWriteGuard<'static, ()>,
    _freeze: tokio::sync::MutexGuard<'static, ()>,
}

/// `modulestore.active_versions` documents for every entry of the MySQL course index.
async fn active_versions_from_index(db: &str) -> Vec<Document> {
    let rows = rows(
        &mysql_source(),
        &format!("SELECT course_id, draft_version, published_version, library_version FROM `{db}`.split_modulestore_django_splitmodulestorecourseindex"),
    )
    .await;
    let text = |v: &mysql_async::Value| match v {
        mysql_async::Value::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("{other:?}"),
    };
    rows.iter()
        .map(|r| {
            let id = text(&r[0]);
            let (org, course, run) = if let Some(rest) = id.strip_prefix("course-v1:") {
                let p: Vec<&str> = rest.splitn(3, '+').collect();
                (p[0].to_string(), p[1].to_string(), p[2].to_string())
            } else {
                let rest = id.strip_prefix("library-v1:").unwrap();
                let (o, l) = rest.split_once('+').unwrap();
                (o.to_string(), l.to_string(), "library".to_string())
            };
            let mut versions = Document::new();
            for (i, branch) in ["draft-branch", "published-branch", "library"]
                .iter()
                .enumerate()
            {
                let v = text(&r[i + 1]);
                if !v.is_empty() {
                    versions.insert(*branch, ObjectId::parse_str(&v).unwrap());
                }
            }
            doc! {"org": org, "course": course, "run": run, "versions": versions, "schema_version": 1}
        })
        .collect()
}

impl WholePlatform {
    // The Redis tests are synchronous and share a std lock; holding it across this test's
    // awaits only keeps them (and the other whole-platform test) waiting meanwhile.
    #[allow(clippy::await_holding_lock)]
    async fn new(tag: &str) -> WholePlatform {
        let freeze_lock = mysql_source_freeze_lock().await;
        let redis_lock = crate::redis::exclusive();
        let p = Platform::new(tag).await;
        let pid = std::process::id();
        let mongo_db = format!("it_{tag}_{pid}");
        let prefix = format!("it{pid}_{tag}_");
        let buckets: Vec<String> = (0..MINIO_KEYS.len())
            .map(|i| format!("it-{tag}-{pid}-b{i}"))
            .collect();

        // MongoDB: the modulestore fixture plus the course index's active versions.
        crate::meilisearch::load_modulestore(&mongo_db).await;
        let client = mongodb::Client::with_uri_str(mongo("source"))
            .await
            .unwrap();
        let db = client.database(&mongo_db);
        db.collection::<Document>("modulestore.active_versions")
            .insert_many(active_versions_from_index(&p.db.name).await)
            .await
            .unwrap();
        let target = mongodb::Client::with_uri_str(mongo("target"))
            .await
            .unwrap();
        target.database(&mongo_db).drop().await.unwrap();

        // Redis: a Celery queue and cache entries with a TTL.
        let mut r = redis_conn("source");
        let _: () = ::redis::cmd("FLUSHDB").query(&mut r).unwrap();
        let _: () = ::redis::cmd("RPUSH")
            .arg("edx.lms.core.default")
            .arg("task-1")
            .arg("task-2")
            .query(&mut r)
            .unwrap();
        let _: () = ::redis::cmd("SET")
            .arg(":1:course_structure")
            .arg("cached")
            .arg("PX")
            .arg(3_600_000)
            .query(&mut r)
            .unwrap();
        let _: () = ::redis::cmd("FLUSHDB")
            .query(&mut redis_conn("target"))
            .unwrap();

        // MinIO: the platform's buckets, with objects in the storage and grades buckets.
        for b in &buckets {
            drop_bucket(&s3(S3_SOURCE), b).await;
            drop_bucket(&s3(S3_TARGET), b).await;
            s3(S3_SOURCE)
                .create_bucket()
                .bucket(b)
                .send()
                .await
                .unwrap();
        }
        put_object(&buckets[0], "course-assets/logo.png", b"png bytes").await;
        put_object(&buckets[3], "grades/report.csv", b"id,grade\n1,0.9\n").await;

        // The search indexes' prefix and API key uid are this test's own: a real Meilisearch is
        // shared by every test and run, and keeps keys and indexes (the fixture's fixed key uid
        // would be created by one test with its prefix and refused to the next).
        let meili = meilisearch_server();
        meili.owns_prefix(&prefix);
        let api_key_uid = fresh_uuid();
        meili.owns_key(&api_key_uid);

        // config.yml names the source servers and the names above.
        let mongo_src = url::Url::parse(&env_or(
            "OFFLOAD_TEST_MONGODB_SOURCE",
            "mongodb://127.0.0.1:27117",
        ))
        .unwrap();
        let redis_src = url::Url::parse(&redis_url("source")).unwrap();
        let mut sets = vec![
            format!("OPENEDX_MYSQL_DATABASE={}", p.db.name),
            format!("MONGODB_HOST={}", mongo_src.host_str().unwrap()),
            format!("MONGODB_PORT={}", mongo_src.port().unwrap()),
            format!("MONGODB_DATABASE={mongo_db}"),
            format!("REDIS_HOST={}", redis_src.host_str().unwrap()),
            format!("REDIS_PORT={}", redis_src.port().unwrap()),
            format!("MEILISEARCH_INDEX_PREFIX={prefix}"),
            format!("MEILISEARCH_API_KEY_UID={api_key_uid}"),
        ];
        for (key, b) in MINIO_KEYS.iter().zip(&buckets) {
            sets.push(format!("{key}={b}"));
        }
        let mut args = vec!["config", "save"];
        for s in &sets {
            args.extend(["--set", s.as_str()]);
        }
        tutor(p.root.path(), &args);
        WholePlatform {
            p,
            mongo_db,
            buckets,
            meili,
            prefix,
            _redis: redis_lock,
            _freeze: freeze_lock,
        }
    }

    fn flags(&self) -> Vec<String> {
        [
            "--to-mongodb",
            &mongo("target"),
            "--mongodb-databases",
            &self.mongo_db,
            "--to-redis",
            &redis_url("target"),
            "--redis-dbs",
            &REDIS_DB.to_string(),
            "--from-s3",
            &env_or(S3_SOURCE.0, S3_SOURCE.1),
            "--to-s3",
            &env_or(S3_TARGET.0, S3_TARGET.1),
            "--create-buckets",
            "--to-meilisearch",
            &self.meili.url,
            "--meilisearch-public-url",
            "https://search.example.org",
            "--no-progress",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let access = env_or("OFFLOAD_TEST_S3_ACCESS_KEY", "offload-test-access");
        let secret = env_or("OFFLOAD_TEST_S3_SECRET_KEY", "offload-test-secret");
        vec![
            ("OFFLOAD_FROM_S3_ACCESS_KEY", access.clone()),
            ("OFFLOAD_FROM_S3_SECRET_KEY", secret.clone()),
            ("OFFLOAD_TO_S3_ACCESS_KEY", access),
            ("OFFLOAD_TO_S3_SECRET_KEY", secret),
            ("OFFLOAD_TO_MEILISEARCH_KEY", self.meili.key.clone()),
        ]
    }

    fn migrate(&self, extra: &[&str]) -> Output {
        self.migrate_env(extra, &[])
    }

    fn migrate_env(&self, extra: &[&str], more_env: &[(&str, &str)]) -> Output {
        let flags = self.flags();
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        let env = self.env();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(more_env);
        self.p.migrate(&all, &env)
    }

    fn verify(&self) -> Output {
        let env = self.env();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
        cmd.args(["verify", "--no-progress", "--job"])
            .arg(self.p.job());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Point one of the fixture's `edX/<course>/Demo_Course` courses at another published
    /// structure in the source's `active_versions`.
    async fn set_published_version(&self, course: &str, version: ObjectId) {
        let changed = mongodb::Client::with_uri_str(mongo("source"))
            .await
            .unwrap()
            .database(&self.mongo_db)
            .collection::<Document>("modulestore.active_versions")
            .update_one(
                doc! {"org": "edX", "course": course, "run": "Demo_Course"},
                doc! {"$set": {"versions.published-branch": version}},
            )
            .await
            .unwrap();
        assert_eq!(
            changed.matched_count, 1,
            "the fixture has edX/{course}/Demo_Course"
        );
    }

    async fn done(self) {
        for side in ["source", "target"] {
            let c = mongodb::Client::with_uri_str(mongo(side)).await.unwrap();
            let _ = c.database(&self.mongo_db).drop().await;
            let _: Result<(), _> = ::redis::cmd("FLUSHDB").query(&mut redis_conn(side));
        }
        for b in &self.buckets {
            drop_bucket(&s3(S3_SOURCE), b).await;
            drop_bucket(&s3(S3_TARGET), b).await;
        }
        self.p.done().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_migrates_with_cross_checks_delta_and_one_cutover() {
    let w = WholePlatform::new("all").await;
    let before = w.p.config();
    let label = w.meili.label.clone();

    // A dry run plans every store and writes nowhere.
    let out = w.migrate(&["--dry-run"]);
    assert_exit(&out, 0);
    let plan = text(&out);
    for store in ["MySQL", "MongoDB", "Redis", "Meilisearch"] {
        assert!(plan.contains(store), "{store} in the plan: {plan}");
    }
    assert!(
        plan.contains("browsers will reach it at https://search.example.org"),
        "the plan names the public search address: {plan}"
    );
    assert!(!w.p.job().exists(), "no job folder");
    assert_eq!(w.p.config(), before, "config.yml untouched");
    assert!(
        rows(
            &mysql_target(),
            &format!("SHOW DATABASES LIKE '{}'", w.p.db.name)
        )
        .await
        .is_empty(),
        "nothing on the MySQL target"
    );
    let target_mongo = mongodb::Client::with_uri_str(mongo("target"))
        .await
        .unwrap();
    assert!(
        !target_mongo
            .list_database_names()
            .await
            .unwrap()
            .contains(&w.mongo_db),
        "nothing on the MongoDB target"
    );
    let keys: i64 = ::redis::cmd("DBSIZE")
        .query(&mut redis_conn("target"))
        .unwrap();
    assert_eq!(keys, 0, "nothing on the Redis target");
    for b in &w.buckets {
        assert!(
            s3(S3_TARGET).head_bucket().bucket(b).send().await.is_err(),
            "bucket {b} not created on the target"
        );
    }
    assert!(
        w.meili
            .client()
            .list_indexes(&w.prefix)
            .await
            .unwrap()
            .is_empty(),
        "no index on the {label}"
    );

    // The platform's course index and modulestore disagree on one course: the data copies and
    // verifies, but the cross-store check stops the job before cutover and names the course.
    w.set_published_version("DemoX", ObjectId::new()).await;
    let out = w.migrate(&[]);
    let report = text(&out);
    assert_exit(&out, 1);
    assert!(
        report.contains("course-v1:edX+DemoX+Demo_Course: published-branch"),
        "{report}"
    );
    assert!(report.contains("Stopped before cutover"), "{report}");
    assert_eq!(w.p.config(), before, "config.yml untouched");
    // The search indexes were rebuilt on the target from the migrated data ({label}).
    let courses = w
        .meili
        .client()
        .document_count(&format!("{}course_info", w.prefix))
        .await
        .unwrap();
    assert!(
        courses > 0,
        "course_info has documents on the {label}: {report}"
    );

    // The platform keeps writing: the course index is put right and every store changes.
    let fixed = active_versions_from_index(&w.p.db.name)
        .await
        .into_iter()
        .find(|d| d.get_str("course") == Ok("DemoX") && d.get_str("org") == Ok("edX"))
        .unwrap();
    let published = fixed
        .get_document("versions")
        .unwrap()
        .get_object_id("published-branch")
        .unwrap();
    w.set_published_version("DemoX", published).await;
    exec(
        &mysql_source(),
        &format!(
            "UPDATE `{}`.auth_user SET email = 'late@example.org' WHERE id = 12",
            w.p.db.name
        ),
    )
    .await;
    let _: () = ::redis::cmd("RPUSH")
        .arg("edx.lms.core.default")
        .arg("task-3")
        .query(&mut redis_conn("source"))
        .unwrap();
    put_object(&w.buckets[0], "course-assets/logo.png", b"new png bytes").await;
    let out = w.verify();
    let found = text(&out);
    assert_exit(&out, 1);
    for named in [
        "id=12",
        "edx.lms.core.default",
        "course-assets/logo.png",
        "modulestore.active_versions",
    ] {
        assert!(found.contains(named), "verify names {named}: {found}");
    }

    // The final pass copies what changed, verifies, rebuilds the indexes, and cuts over once.
    let out = w.migrate(&["--resume", "--delta", "--freeze-source"]);
    let report = text(&out);
    assert_exit(&out, 0);
    assert!(report.contains("Safe to switch"), "{report}");
    assert!(report.contains("all 28 course index entr"), "{report}");
    assert!(report.contains("Rewrote"), "{report}");
    assert_exit(&w.verify(), 0);
    let value = |key: &str| {
        tutor(w.p.root.path(), &["config", "printvalue", key])
            .trim()
            .to_string()
    };
    for key in ["RUN_MYSQL", "RUN_MONGODB", "RUN_REDIS", "RUN_MEILISEARCH"] {
        assert_eq!(value(key), "false", "{key}");
    }
    assert_eq!(value("S3_STORAGE_BUCKET"), w.buckets[0]);
    assert_eq!(value("S3_GRADE_BUCKET"), w.buckets[3]);
    assert_eq!(value("MEILISEARCH_URL"), w.meili.url);
    assert_eq!(
        value("MEILISEARCH_PUBLIC_URL"),
        "https://search.example.org"
    );
    let plugins = value("PLUGINS");
    assert!(
        plugins.contains("s3") && !plugins.contains("minio"),
        "{plugins}"
    );
    let mongo_tgt = url::Url::parse(&env_or(
        "OFFLOAD_TEST_MONGODB_TARGET",
        "mongodb://127.0.0.1:27118",
    ))
    .unwrap();
    assert_eq!(value("MONGODB_PORT"), mongo_tgt.port().unwrap().to_string());
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_survives_kill_nine_across_phases_then_resumes_clean() {
    let w = WholePlatform::new("all9").await;
    let before = w.p.config();
    let small = ["--batch-rows", "50", "--parallel", "2"];
    killed(
        &w.migrate_env(&small, &[("OFFLOAD_FAILPOINT", "after-prepare")]),
        "after-prepare",
    );
    for point in [
        "after-batch:5",
        "before-finish",
        "before-verify",
        "before-reindex",
        "before-cutover",
    ] {
        let resume: Vec<&str> = ["--resume"].iter().chain(small.iter()).copied().collect();
        let out = w.migrate_env(&resume, &[("OFFLOAD_FAILPOINT", point)]);
        killed(&out, point);
        assert_eq!(
            w.p.config(),
            before,
            "config.yml untouched before cutover ({point})"
        );
    }
    let out = w.migrate(&["--resume"]);
    let report = text(&out);
    assert_exit(&out, 0);
    assert!(report.contains("already copied and skipped"), "{report}");
    assert!(
        report.contains("Safe to switch") && report.contains("Rewrote"),
        "{report}"
    );
    assert_exit(&w.verify(), 0);
    for key in ["RUN_MYSQL", "RUN_MONGODB", "RUN_REDIS", "RUN_MEILISEARCH"] {
        assert_eq!(
            tutor(w.p.root.path(), &["config", "printvalue", key]).trim(),
            "false",
            "{key}"
        );
    }
    w.done().await;
}
