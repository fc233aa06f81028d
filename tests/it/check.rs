//! `offload check` against a running platform's services: the LMS and CMS through the heartbeat
//! STAND-IN (tests/it/support/heartbeat_standin.rs: no LMS runs here), search through the
//! Meilisearch stand-in or a real server (OFFLOAD_TEST_MEILISEARCH_URL), a real Celery worker
//! (Celery from PyPI, in the stack's venv or OFFLOAD_TEST_CELERY_PYTHON) on a redis-server of the
//! test's own, and the stack's SeaweedFS S3 target. Also: the cutover's runbook ends with the
//! worker counts for this host and the `offload check` command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{repo_root, s3_client, s3_keys, s3_target_url};
use crate::meilisearch::{fresh_uuid, server, TestMeili};
use crate::support::heartbeat_standin::{HeartbeatConfig, HeartbeatStandin};

/// A redis-server of the test's own on a free loopback port (the Celery broker), stopped when
/// dropped; `password` makes it ask for one (the `default` user's).
struct OwnRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start(password: Option<&str>) -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}. Run `scripts/stack up`"));
        let server = OwnRedis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test's redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self, db: i64) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python with Celery: OFFLOAD_TEST_CELERY_PYTHON, else the stack's venv (scripts/stack installs
/// Celery there).
fn celery_python() -> PathBuf {
    let python = std::env::var_os("OFFLOAD_TEST_CELERY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".stack/venv/bin/python"));
    let has_celery = Command::new(&python)
        .args(["-c", "import celery"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_celery,
        "no Celery in {}: run scripts/stack up (it installs Celery into the venv), or set OFFLOAD_TEST_CELERY_PYTHON",
        python.display()
    );
    python
}

/// A real Celery worker of an app shaped like Open edX's LMS (its default queue is
/// `edx.lms.core.default`), consuming from `broker`; stopped when dropped.
struct CeleryWorker {
    child: Child,
    _dir: tempfile::TempDir,
}

impl CeleryWorker {
    fn start(broker: &str, redis: &OwnRedis, db: i64) -> CeleryWorker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("platform_tasks.py"),
            "import os\nfrom celery import Celery\n\napp = Celery('lms', broker=os.environ['BROKER'])\napp.conf.task_default_queue = 'edx.lms.core.default'\n\n\n@app.task\ndef sample_task():\n    return True\n",
        )
        .unwrap();
        let child = Command::new(celery_python())
            .args([
                "-m",
                "celery",
                "-A",
                "platform_tasks",
                "worker",
                "--pool=solo",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                "lms-worker@%h",
                "-l",
                "warning",
            ])
            .current_dir(dir.path())
            .env("BROKER", broker)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
            .spawn()
            .expect("start a Celery worker");
        let mut worker = CeleryWorker { child, _dir: dir };
        // Ready once it listens for control messages on the broker's database.
        let client = ::redis::Client::open(redis.url(db)).unwrap();
        let mut conn = client.get_connection().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let patterns: i64 = ::redis::cmd("PUBSUB")
                .arg("NUMPAT")
                .query(&mut conn)
                .unwrap();
            if patterns > 0 {
                break;
            }
            if let Ok(Some(status)) = worker.child.try_wait() {
                let log = std::fs::read_to_string(worker._dir.path().join("worker.log"));
                panic!(
                    "the Celery worker exited: {status}: {}",
                    log.unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the Celery worker did not subscribe to its control channel within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        worker
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Indexes under `prefix` as the platform builds them: documents in course_info and
/// courseware_content, the others empty. Returns the platform's search key (created with
/// `key_uid`, as Tutor's init does) unless `create_key` is false.
async fn search_indexes(meili: &TestMeili, prefix: &str, key_uid: &str, create_key: bool) {
    meili.owns_prefix(prefix);
    let client = meili.client();
    for (name, docs) in [
        ("course_info", 2),
        ("courseware_content", 3),
        ("studio_content", 0),
        ("comment_threads", 0),
        ("comments", 0),
    ] {
        let uid = format!("{prefix}{name}");
        let task = client.create_index(&uid, "id").await.unwrap();
        client.wait(task, "create").await.unwrap();
        if docs > 0 {
            let body: String = (0..docs)
                .map(|i| format!("{}\n", json!({"id": format!("doc-{i}"), "content": {"display_name": format!("Unit {i}")}})))
                .collect();
            let task = client
                .add_ndjson(&uid, "id", body.into_bytes())
                .await
                .unwrap();
            client.wait(task, "add").await.unwrap();
        }
    }
    if create_key {
        meili.owns_key(key_uid);
        client
            .create_key(&json!({"uid": key_uid, "actions": ["search"], "indexes": [format!("{prefix}*")], "expiresAt": null}))
            .await
            .unwrap();
    }
}

fn s3_host_port() -> (String, u16) {
    let url = url::Url::parse(&s3_target_url()).unwrap();
    (
        url.host_str().unwrap().to_string(),
        url.port().unwrap_or(80),
    )
}

/// A bucket on the stack's S3 target, holding `objects` (key, bytes).
async fn bucket(name: &str, objects: &[(&str, Vec<u8>)]) {
    let s3 = s3_client(&s3_target_url());
    let _ = s3.create_bucket().bucket(name).send().await;
    for (key, bytes) in objects {
        s3.put_object()
            .bucket(name)
            .key(*key)
            .body(bytes.clone().into())
            .send()
            .await
            .unwrap();
    }
}

/// config.yml of a platform cut over to these services.
fn platform_root(
    redis_port: u16,
    meili: &TestMeili,
    prefix: &str,
    key_uid: &str,
    buckets: (&str, &str),
    extra: &str,
) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let (s3_host, s3_port) = s3_host_port();
    let (access, secret) = s3_keys();
    let text = format!(
        "LMS_HOST: learn.example.org\nMEILISEARCH_API_KEY_UID: {key_uid}\nMEILISEARCH_INDEX_PREFIX: {prefix}\nMEILISEARCH_MASTER_KEY: {master}\nMEILISEARCH_PUBLIC_URL: {url}\nOPENEDX_AWS_ACCESS_KEY: {access}\nOPENEDX_AWS_SECRET_ACCESS_KEY: {secret}\nOPENEDX_CELERY_REDIS_DB: 0\nPLUGINS:\n- mfe\n- s3\nREDIS_HOST: 127.0.0.1\nREDIS_PORT: {redis_port}\nRUN_REDIS: false\nS3_ADDRESSING_STYLE: path\nS3_GRADE_BUCKET: {grades}\nS3_HOST: {s3_host}\nS3_PORT: {s3_port}\nS3_REGION: us-east-1\nS3_STORAGE_BUCKET: {storage}\nS3_USE_SSL: false\n{extra}",
        master = meili.key,
        url = meili.url,
        storage = buckets.0,
        grades = buckets.1,
    );
    std::fs::write(root.path().join("config.yml"), text).unwrap();
    root
}

fn offload_check(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offload"))
        .arg("check")
        .arg("--tutor-root")
        .arg(root)
        .args(args)
        .env_remove("TUTOR_ROOT")
        .env("NO_COLOR", "1")
        .output()
        .expect("run offload")
}

/// The results of a `--json` check, by `service name`.
fn results(out: &Output) -> Vec<(String, String, Value)> {
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!(
                    "{} {}",
                    r["service"].as_str().unwrap(),
                    r["name"].as_str().unwrap()
                ),
                r["status"].as_str().unwrap().to_string(),
                r.clone(),
            )
        })
        .collect()
}

fn find<'a>(results: &'a [(String, String, Value)], name: &str) -> &'a (String, String, Value) {
    results
        .iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no result {name:?} in {results:#?}"))
}

/// A platform whose every service works: exit 0, every answer named with what it proved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_platform_checks_clean() {
    let redis = OwnRedis::start(None);
    let _worker = CeleryWorker::start(&redis.url(0), &redis, 0);
    let meili = server();
    let prefix = format!("chk{}_", std::process::id());
    let key_uid = fresh_uuid();
    search_indexes(&meili, &prefix, &key_uid, true).await;
    let (storage, grades) = (
        format!("chk-{}-media", std::process::id()),
        format!("chk-{}-grades", std::process::id()),
    );
    bucket(&storage, &[("course/asset.png", vec![7u8; 100_000])]).await;
    bucket(&grades, &[]).await;
    let root = platform_root(
        redis.port,
        &meili,
        &prefix,
        &key_uid,
        (&storage, &grades),
        "",
    );
    let lms = HeartbeatStandin::start(HeartbeatConfig::default());
    let cms = HeartbeatStandin::start(HeartbeatConfig::default());
    let report = tempfile::tempdir().unwrap();
    let html = report.path().join("check.html");

    let out = offload_check(
        root.path(),
        &[
            "--json",
            "--lms-url",
            &lms.url,
            "--cms-url",
            &cms.url,
            "--report",
            html.to_str().unwrap(),
        ],
    );
    let all = results(&out);
    assert_eq!(out.status.code(), Some(0), "{all:#?}\n{}", meili.label);
    for (name, status, r) in &all {
        assert_eq!(status, "ok", "{name}: {r}\n{}", meili.label);
    }
    for check in ["modulestore", "sql", "celery"] {
        find(&all, &format!("LMS heartbeat {check}"));
        find(&all, &format!("CMS heartbeat {check}"));
    }
    let ping = &find(&all, "Celery workers (control ping)").2;
    assert!(
        ping["detail"].as_str().unwrap().contains("lms-worker@"),
        "the real worker answered by name: {ping}"
    );
    let queues = &find(&all, "Celery queues").2;
    assert!(
        queues["detail"]
            .as_str()
            .unwrap()
            .contains("edx.lms.core.default 0"),
        "{queues}"
    );
    let info = &find(&all, &format!("Meilisearch {prefix}course_info")).2;
    assert!(
        info["detail"]
            .as_str()
            .unwrap()
            .contains("finds 2 document(s)"),
        "{info}\n{}",
        meili.label
    );
    let studio = &find(&all, &format!("Meilisearch {prefix}studio_content")).2;
    assert!(
        studio["detail"].as_str().unwrap().contains("empty"),
        "{studio}"
    );
    let read = &find(&all, &format!("S3 {storage}")).2;
    assert!(
        read["detail"]
            .as_str()
            .unwrap()
            .contains("read 65536 of 100000 byte(s) of \"course/asset.png\""),
        "{read}"
    );
    let empty = &find(&all, &format!("S3 {grades}")).2;
    assert!(
        empty["detail"]
            .as_str()
            .unwrap()
            .contains("holds no object"),
        "{empty}"
    );
    // offload's reply queue and binding are gone.
    let mut conn = ::redis::Client::open(redis.url(0))
        .unwrap()
        .get_connection()
        .unwrap();
    let members: Vec<String> = ::redis::cmd("SMEMBERS")
        .arg("_kombu.binding.reply.celery.pidbox")
        .query(&mut conn)
        .unwrap();
    assert!(members.is_empty(), "{members:?}");

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("id=\"verdict\">The platform works"), "{page}");

    // The same for people.
    let out = offload_check(root.path(), &["--lms-url", &lms.url, "--cms-url", &cms.url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("The platform works on its servers"), "{text}");
    assert!(!text.contains(&meili.key), "no master key in the output");
}

/// Every kind of failure is named with what to do, and exits 1; no secret is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_does_not_work_is_named_with_what_to_do() {
    // A broker with a password and no worker.
    let redis = OwnRedis::start(Some("broker-s3cret"));
    let meili = server();
    let prefix = format!("chkbad{}_", std::process::id());
    let key_uid = fresh_uuid();
    // The search key was never created on the new server.
    search_indexes(&meili, &prefix, &key_uid, false).await;
    let missing = format!("chk-{}-missing", std::process::id());
    let grades = format!("chk-{}-grades2", std::process::id());
    bucket(&grades, &[]).await;
    let root = platform_root(
        redis.port,
        &meili,
        &prefix,
        &key_uid,
        (&missing, &grades),
        "REDIS_PASSWORD: broker-s3cret\nREDIS_USERNAME: default\n",
    );
    // The LMS's Celery check expired (no worker); the CMS raises.
    let lms = HeartbeatStandin::start(HeartbeatConfig::default().with("celery", false, "expired"));
    let cms = HeartbeatStandin::start(HeartbeatConfig {
        raises: Some("Error importing module openedx.core.djangoapps.heartbeat.default_checks: \"No module named x\"".into()),
        ..HeartbeatConfig::default()
    });

    let out = offload_check(
        root.path(),
        &[
            "--json",
            "--lms-url",
            &lms.url,
            "--cms-url",
            &cms.url,
            "--celery-timeout",
            "1",
        ],
    );
    let all = results(&out);
    assert_eq!(out.status.code(), Some(1), "{all:#?}");
    let failed = |name: &str, says: &str, fix: &str| {
        let (_, status, r) = find(&all, name);
        assert_eq!(status, "failed", "{name}: {r}");
        assert!(r["detail"].as_str().unwrap().contains(says), "{name}: {r}");
        assert!(r["fix"].as_str().unwrap().contains(fix), "{name}: {r}");
    };
    assert_eq!(find(&all, "LMS heartbeat sql").1, "ok");
    failed(
        "LMS heartbeat celery",
        "answered 503: celery failed: expired",
        "lms-worker",
    );
    failed(
        "CMS heartbeat",
        "the heartbeat itself failed: Error importing",
        "traceback",
    );
    failed(
        "Celery workers (control ping)",
        "no Celery worker listens",
        "tutor local start -d lms-worker cms-worker",
    );
    failed(
        &format!("Meilisearch {prefix}course_info"),
        "search key was refused (403",
        "init --limit=meilisearch",
    );
    failed(&format!("S3 {missing}"), "NoSuchBucket", "S3_HOST");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("broker-s3cret"),
        "the Redis password stays out of the output"
    );
    assert!(
        !text.contains(&s3_keys().1),
        "the S3 secret stays out of the output"
    );

    // Addresses that are not the LMS: a host Django does not allow, and a path with no heartbeat.
    let elsewhere = HeartbeatStandin::start(HeartbeatConfig {
        allowed_hosts: vec!["learn.example.org".into()],
        ..HeartbeatConfig::default()
    });
    let out = offload_check(
        root.path(),
        &[
            "--json",
            "--lms-url",
            &elsewhere.url,
            "--celery-timeout",
            "1",
        ],
    );
    let all = results(&out);
    let (_, status, r) = find(&all, "LMS heartbeat");
    assert_eq!(status, "failed", "{r}");
    assert!(
        r["detail"].as_str().unwrap().contains("answered 400"),
        "{r}"
    );
    assert!(r["fix"].as_str().unwrap().contains("ALLOWED_HOSTS"), "{r}");
    let out = offload_check(
        root.path(),
        &[
            "--json",
            "--lms-url",
            &format!("{}/lms/", lms.url),
            "--celery-timeout",
            "1",
        ],
    );
    let all = results(&out);
    let (_, status, r) = find(&all, "LMS heartbeat");
    assert_eq!(status, "failed", "{r}");
    assert!(
        r["detail"].as_str().unwrap().contains("answered 404"),
        "{r}"
    );
    assert!(r["fix"].as_str().unwrap().contains("base address"), "{r}");
    assert_eq!(find(&all, "CMS heartbeat").1, "skipped");

    // The human report says what to do under each failure.
    let out = offload_check(
        root.path(),
        &["--lms-url", &lms.url, "--celery-timeout", "1"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("NOT working") && text.contains("next: "),
        "{text}"
    );
}

/// Inputs it cannot use stop it with exit 2, naming the flag or the file.
#[test]
fn unusable_inputs_exit_2() {
    let root = tempfile::tempdir().unwrap();
    let out = offload_check(root.path(), &["--lms-url", "learn.example.org"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--lms-url") && stderr.contains("https://"),
        "{stderr}"
    );
    let out = offload_check(
        root.path(),
        &["--lms-url", "https://u:pw-secret@learn.example.org"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("pw-secret"), "{stderr}");
    // No config.yml.
    let out = offload_check(root.path(), &["--lms-url", "https://learn.example.org"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("config.yml"), "{stderr}");
}

/// The cutover's runbook ends with web worker counts for this host, in Tutor 22's keys and with
/// the reasoning, then the `offload check` command for the platform's own addresses.
#[test]
fn the_cutover_runbook_sizes_the_workers_and_ends_with_offload_check() {
    let root = tempfile::tempdir().unwrap();
    let fixture = std::fs::read_to_string(repo_root().join("fixtures/tutor/config.yml")).unwrap();
    std::fs::write(root.path().join("config.yml"), &fixture).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .arg("cutover")
        .arg("--tutor-root")
        .arg(root.path())
        .arg("--job")
        .arg(root.path().join("no-job"))
        .args(["--to-redis", "redis://10.20.0.7:6380", "--force"])
        .env_remove("TUTOR_ROOT")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What this host has, read here the same way.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let host = offload::tutor::workers::HostResources {
        cpus,
        memory_bytes: kib * 1024,
    };
    let (lms, cms, why) = offload::tutor::workers::suggest(host);
    assert!(
        text.contains(&format!(
            "Size the web workers for this host ({cpus} CPU(s)"
        )),
        "{text}"
    );
    let cfg = offload::tutor::TutorConfig::load_with_env(root.path(), []).unwrap();
    let current = |k: &str| cfg.get(k).and_then(|v| v.as_u64()).unwrap_or(2);
    if (lms, cms)
        != (
            current("OPENEDX_LMS_UWSGI_WORKERS"),
            current("OPENEDX_CMS_UWSGI_WORKERS"),
        )
    {
        assert!(
            text.contains(&format!(
                "tutor config save --set OPENEDX_LMS_UWSGI_WORKERS={lms} --set OPENEDX_CMS_UWSGI_WORKERS={cms}"
            )),
            "{text}"
        );
    }
    assert!(text.contains(&format!("why: {why}")), "{text}");
    // Tutor 22 defines exactly these keys.
    let defaults = std::fs::read_to_string(
        repo_root()
            .join(".stack/venv/lib/python3.11/site-packages/tutor/templates/config/defaults.yml"),
    );
    if let Ok(defaults) = defaults {
        assert!(
            defaults.contains("OPENEDX_LMS_UWSGI_WORKERS: 2")
                && defaults.contains("OPENEDX_CMS_UWSGI_WORKERS: 2")
        );
    }
    // The check comes last, before how to roll back, with the platform's own addresses.
    let lms_host = cfg.get_str("LMS_HOST").unwrap();
    let cms_host = cfg.get_str("CMS_HOST").unwrap();
    let scheme = if cfg.get_bool("ENABLE_HTTPS").unwrap_or(false) {
        "https"
    } else {
        "http"
    };
    let check_at = text
        .find(&format!(
            "--lms-url {scheme}://{lms_host} --cms-url {scheme}://{cms_host}"
        ))
        .unwrap_or_else(|| panic!("{text}"));
    let sizing_at = text.find("Size the web workers").unwrap();
    let rollback_at = text.find("To roll back").unwrap();
    assert!(sizing_at < check_at && check_at < rollback_at, "{text}");
    assert!(
        text[..check_at].contains("offload check --tutor-root"),
        "{text}"
    );
}
