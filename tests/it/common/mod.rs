//! Test support: server endpoints, unique database names, fixture loading, and running the real
//! `offload` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, Row, Value};

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The stack's S3 source (SeaweedFS).
pub fn s3_source_url() -> String {
    env_or("OFFLOAD_TEST_S3_SOURCE", "http://127.0.0.1:18333")
}

/// The stack's S3 target (SeaweedFS).
pub fn s3_target_url() -> String {
    env_or("OFFLOAD_TEST_S3_TARGET", "http://127.0.0.1:28333")
}

/// The stack's S3 keys (both servers, and the tests' own SeaweedFS servers, use them).
pub fn s3_keys() -> (String, String) {
    (
        env_or("OFFLOAD_TEST_S3_ACCESS_KEY", "offload-test-access"),
        env_or("OFFLOAD_TEST_S3_SECRET_KEY", "offload-test-secret"),
    )
}

/// A plain SDK client with the stack's keys, built here independently of offload's own, to set
/// up and check an S3 server.
pub fn s3_client(url: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    };
    let (a, s) = s3_keys();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .force_path_style(true)
        .credentials_provider(Credentials::new(a, s, None, None, "test"))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub fn mysql_source() -> String {
    env_or("OFFLOAD_TEST_MYSQL_SOURCE", "mysql://root@127.0.0.1:23306")
}

pub fn mysql_target() -> String {
    env_or("OFFLOAD_TEST_MYSQL_TARGET", "mysql://root@127.0.0.1:23307")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A connection, or a failure that says how to start the servers.
pub async fn connect(url: &str) -> Conn {
    let opts = Opts::from_url(url).expect("valid test URL");
    match Conn::new(opts).await {
        Ok(mut c) => {
            c.query_drop("SET NAMES utf8mb4").await.unwrap();
            c.query_drop("SET time_zone = '+00:00'").await.unwrap();
            c
        }
        Err(e) => panic!("cannot reach the test MySQL at {url}: {e}. Start the test servers with `scripts/stack up`"),
    }
}

pub async fn exec(url: &str, sql: &str) {
    let mut c = connect(url).await;
    c.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Rows of a query over the text protocol, as the server renders them.
pub async fn rows(url: &str, sql: &str) -> Vec<Vec<Value>> {
    let mut c = connect(url).await;
    let rows: Vec<Row> = c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|r| r.unwrap()).collect()
}

pub async fn count(url: &str, table: &str) -> i64 {
    let mut c = connect(url).await;
    c.query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap()
        .unwrap()
}

/// A database name unique to one test, dropped on both servers when created and when dropped.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn new(tag: &str) -> TestDb {
        let name = format!("it_{tag}_{}", std::process::id());
        let db = TestDb { name };
        db.drop_both().await;
        db
    }

    pub async fn drop_both(&self) {
        for url in [mysql_source(), mysql_target()] {
            exec(&url, &format!("DROP DATABASE IF EXISTS `{}`", self.name)).await;
        }
    }

    /// Load the Open edX fixture into this database on the source.
    pub fn load_fixture(&self) {
        let sql = std::fs::read_to_string(repo_root().join("fixtures/mysql/openedx.sql"))
            .expect("fixtures/mysql/openedx.sql");
        let sql = sql.replace("`openedx`", &format!("`{}`", self.name));
        mariadb_client(&mysql_source(), None, &sql);
    }
}

/// Run SQL through the `mariadb` command-line client (it understands DELIMITER).
pub fn mariadb_client(url: &str, db: Option<&str>, sql: &str) {
    use std::io::Write;
    let u = url::Url::parse(url).unwrap();
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "-h",
        u.host_str().unwrap(),
        "-P",
        &u.port().unwrap_or(3306).to_string(),
        "-u",
        if u.username().is_empty() {
            "root"
        } else {
            u.username()
        },
    ]);
    if let Some(p) = u.password() {
        cmd.arg(format!("-p{p}"));
    }
    if let Some(db) = db {
        cmd.arg(db);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("the mariadb client (installed by scripts/stack up)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "mariadb client failed loading SQL");
}

/// `mariadb-dump` of one database, for an independent comparison of both sides.
pub fn dump(url: &str, db: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    let out = Command::new("mariadb-dump")
        .args([
            "-h",
            u.host_str().unwrap(),
            "-P",
            &u.port().unwrap_or(3306).to_string(),
            "-u",
            "root",
            "--hex-blob",
            "--skip-dump-date",
            "--routines",
            "--events",
            "--triggers",
            "--order-by-primary",
            db,
        ])
        .output()
        .expect("mariadb-dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The real binary, with a Tutor root that has no config.yml (so only flags count) and the given
/// job folder.
pub fn offload(job: &Path, args: &[&str]) -> Output {
    offload_env(job, args, &[])
}

pub fn offload_env(job: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
    cmd.args(args)
        .arg("--job")
        .arg(job)
        .arg("--tutor-root")
        .arg(job.join("no-tutor-here"))
        .env_remove("OFFLOAD_FROM_MYSQL_PASSWORD")
        .env_remove("OFFLOAD_TO_MYSQL_PASSWORD")
        .env_remove("OFFLOAD_FROM_REDIS_PASSWORD")
        .env_remove("OFFLOAD_TO_REDIS_PASSWORD")
        .env_remove("OFFLOAD_FROM_MONGODB_PASSWORD")
        .env_remove("OFFLOAD_TO_MONGODB_PASSWORD")
        .env_remove("OFFLOAD_FAILPOINT")
        // No test may reach the EC2 instance metadata service through the AWS credential chain.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run offload")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Assert that a verify run found both sides equal and said it is safe to switch.
pub fn assert_safe_to_switch(verify: &Output) {
    assert_exit(verify, 0);
    assert!(
        text(verify).contains("Safe to switch"),
        "verify did not say it is safe to switch:\n{}",
        text(verify)
    );
}

/// Assert an exit code, showing the output when it is not.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "unexpected exit; output:\n{}",
        text(out)
    );
}

/// The usual copy flags for one test database.
pub fn flags(db: &str) -> Vec<String> {
    vec![
        "--from-mysql".into(),
        mysql_source(),
        "--to-mysql".into(),
        mysql_target(),
        "--databases".into(),
        db.to_string(),
    ]
}

/// The units a `plan --json` run lists for one table or collection (one per key range).
pub fn planned_units(plan: &Output, object: &str) -> Vec<serde_json::Value> {
    assert_exit(plan, 0);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    plan["stores"][0]["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["object"] == object)
        .cloned()
        .collect()
}

pub fn args<'a>(cmd: &'a str, flags: &'a [String], extra: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd];
    v.extend(flags.iter().map(|s| s.as_str()));
    v.extend_from_slice(extra);
    v
}

/// Real Tutor: `OFFLOAD_TUTOR_BIN`, else the stack's venv.
pub fn tutor_bin() -> PathBuf {
    let bin = std::env::var_os("OFFLOAD_TUTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".stack/venv/bin/tutor"));
    assert!(
        bin.is_file(),
        "tutor not found at {}: run scripts/stack up (or set OFFLOAD_TUTOR_BIN)",
        bin.display()
    );
    bin
}

/// Runs real Tutor on `root`, with no `TUTOR_*` override from this process leaking in.
pub fn tutor(root: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(tutor_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TUTOR_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .args(args)
        .env("TUTOR_ROOT", root)
        .env("TUTOR_PLUGINS_ROOT", root.join("no-plugins"))
        .output()
        .expect("run tutor");
    assert!(
        out.status.success(),
        "tutor {} failed: {}",
        args.first().copied().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from tutor")
}

/// Held by the tests that set the MySQL source's global `read_only` (`--freeze-source`), so one
/// such test never sees another's freeze.
pub async fn mysql_source_freeze_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The MySQL source's global `read_only`.
pub async fn mysql_source_read_only() -> bool {
    let v = rows(&mysql_source(), "SELECT @@GLOBAL.read_only").await;
    v[0][0] == Value::Int(1) || v[0][0] == Value::Bytes(b"1".to_vec())
}
