//! Fault injection, for every store: offload's source or target points at a fault proxy
//! (`support::fault_proxy`) in front of the real server, which resets connections repeatedly,
//! stalls past `--stall-timeout`, or refuses connections. Each run ends either complete, or
//! stopped with exit 2 and an error naming the store and host and what to do; after a stop,
//! `--resume` completes. Then verify is clean, and at every end no unit is marked copied whose
//! part of the target differs from the source (checked here, independently of offload).
//!
//! Faults start at known places: a byte count through the proxy, or a run held by the
//! `hold-after-batch:N` failpoint while the test arms the proxy. No sleeps.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use mongodb::bson::{doc, Document};
use mongodb::Client as MongoClient;

use crate::common::*;
use crate::stop::{Background, HELD};
use crate::support::fault_proxy::FaultProxy;

/// Which end of a store the proxy stands in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Target,
}

/// One store's data for the fault tests: where its servers are, the copy flags, and an
/// independent check of what the target holds.
trait Fixture {
    /// The store's name as offload writes it in messages and the catalog.
    const STORE: &'static str;

    /// `host:port` of the real server at `end`.
    fn upstream(&self, end: End) -> String;

    /// The copy's flags, with the source and target at these `host:port`s.
    fn flags(&self, source: &str, target: &str) -> Vec<String>;

    /// Environment offload needs (credentials).
    fn env(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The objects copied (tables, collections, databases, buckets), as unit names contain them.
    fn objects(&self) -> Vec<String>;

    /// Whether the target's `object` equals the source's, read here without offload.
    async fn same(&self, object: &str) -> bool;

    async fn clean_up(&self);
}

fn run<F: Fixture>(f: &F, job: &Path, cmd: &str, flags: &[String], extra: &[&str]) -> Output {
    let env = f.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    offload_env(job, &args(cmd, flags, extra), &env)
}

/// A proxy in front of `end`, and the flags that send offload's `end` through it.
fn behind_proxy<F: Fixture>(f: &F, end: End) -> (FaultProxy, Vec<String>) {
    let proxy = FaultProxy::start(&f.upstream(end));
    let flags = match end {
        End::Source => f.flags(&proxy.address(), &f.upstream(End::Target)),
        End::Target => f.flags(&f.upstream(End::Source), &proxy.address()),
    };
    (proxy, flags)
}

/// `(unit name, state)` of every unit in the job's catalog.
fn unit_states(job: &Path) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open(job.join("catalog.sqlite")).expect("the job's catalog");
    let mut q = db.prepare("SELECT name, state FROM unit").unwrap();
    let rows = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

/// Every unit the catalog marks copied holds on the target what the source holds; gives how
/// many units are marked copied, of how many.
async fn copied_units_are_whole<F: Fixture>(f: &F, job: &Path) -> (usize, usize) {
    let units = unit_states(job);
    let objects = f.objects();
    let mut copied = 0;
    for (unit, state) in &units {
        if state != "copied" {
            continue;
        }
        copied += 1;
        let object = objects
            .iter()
            .filter(|o| unit.contains(o.as_str()))
            .max_by_key(|o| o.len())
            .unwrap_or_else(|| panic!("unit {unit} names none of {objects:?}"));
        assert!(
            f.same(object).await,
            "{}: unit {unit} is marked copied but the target's {object} differs from the source's",
            F::STORE
        );
    }
    (copied, units.len())
}

/// A clean verify of the job, and the target equal to the source, object by object.
async fn verified_whole<F: Fixture>(f: &F, job: &Path) {
    assert_safe_to_switch(&run(f, job, "verify", &[], &[]));
    for o in f.objects() {
        assert!(f.same(&o).await, "{}: {o} differs after the copy", F::STORE);
    }
    let (copied, total) = copied_units_are_whole(f, job).await;
    assert_eq!(copied, total, "every unit copied");
}

/// What a stop for a fault says: the store, the host, and what to do next.
fn assert_clear_stop(out: &str, store: &str, host: &str) {
    assert!(out.contains(store), "names the store {store}: {out}");
    assert!(out.contains(host), "names the host {host}: {out}");
    let lower = out.to_lowercase();
    assert!(
        lower.contains("--resume") || lower.contains("check"),
        "says what to do: {out}"
    );
    assert!(!out.contains("panicked"), "no panic: {out}");
}

/// Connections cut every `every` bytes, `times` times, through the whole copy: the retries carry
/// it to the end, each logged with its cause (every reset is an error a retry cures). Copied
/// units are whole; verify is clean.
async fn resets_repeatedly<F: Fixture>(f: &F, end: End, every: u64, times: u64, extra: &[&str]) {
    let job = tempfile::tempdir().unwrap();
    let (proxy, flags) = behind_proxy(f, end);
    proxy.cut_repeatedly(every, times);
    let mut opts = vec!["--parallel", "1", "--retries", "10"];
    opts.extend_from_slice(extra);
    let out = run(f, job.path(), "copy", &flags, &opts);
    let said = text(&out);
    let cut = proxy.counters().resets;
    assert!(
        cut >= 1,
        "the proxy cut connections: {:?}\n{said}",
        proxy.counters()
    );
    assert!(
        said.contains("retrying after a retryable error"),
        "each retry is logged with its cause:\n{said}"
    );
    copied_units_are_whole(f, job.path()).await;
    // Each cut costs at most one retry of one step, and `--retries` exceeds the cuts: a reset
    // that stops the run was taken for an error no retry could cure.
    assert!(times < 10);
    assert_exit(&out, 0);
    verified_whole(f, job.path()).await;
}

/// The proxy stops forwarding after the first batch: the stalled attempt is dropped within
/// `--stall-timeout`, logged as a retry with its cause, and once the link works again the copy
/// completes.
async fn stall_then_completes<F: Fixture>(f: &F, end: End, extra: &[&str]) {
    let job = tempfile::tempdir().unwrap();
    let (proxy, flags) = behind_proxy(f, end);
    let mut opts = vec!["--parallel", "1", "--stall-timeout", "2", "--retries", "10"];
    opts.extend_from_slice(extra);
    let env = f.env();
    let mut run_ = Background::start_env(
        job.path(),
        &args("copy", &flags, &opts),
        "hold-after-batch:1",
        &env,
    );
    run_.wait_for(HELD);
    proxy.stall();
    run_.release();
    let said = run_.wait_for("retrying after a retryable error");
    assert!(
        said.contains("did not complete within 2 s") && said.contains(F::STORE),
        "the stall becomes a retry naming its cause: {said}"
    );
    proxy.resume();
    let (status, stderr) = run_.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    verified_whole(f, job.path()).await;
}

/// The source refuses connections from the start: exit 2 naming the store and host and what to
/// do, no job left behind; once it listens again the same command completes.
async fn source_gone_at_start<F: Fixture>(f: &F) {
    let job = tempfile::tempdir().unwrap();
    let (proxy, flags) = behind_proxy(f, End::Source);
    proxy.refuse();
    let out = run(f, job.path(), "copy", &flags, &[]);
    assert_exit(&out, 2);
    assert_clear_stop(&text(&out), F::STORE, &proxy.address());
    assert!(
        !job.path().join("catalog.sqlite").exists(),
        "a refusal before any write leaves no job"
    );
    proxy.accept();
    assert_exit(&run(f, job.path(), "copy", &flags, &[]), 0);
    verified_whole(f, job.path()).await;
}

/// The source goes away mid-copy (open connections reset, new ones refused) with one retry
/// allowed: exit 2 naming store and host and `--resume`; the units marked copied are whole and
/// the rest are not marked; once the source is back, `--resume` completes to a clean verify.
async fn source_lost_mid_copy<F: Fixture>(f: &F, extra: &[&str]) {
    let job = tempfile::tempdir().unwrap();
    let (proxy, flags) = behind_proxy(f, End::Source);
    let mut opts = vec!["--parallel", "1", "--retries", "1"];
    opts.extend_from_slice(extra);
    let env = f.env();
    let mut run_ = Background::start_env(
        job.path(),
        &args("copy", &flags, &opts),
        "hold-after-batch:1",
        &env,
    );
    run_.wait_for(HELD);
    proxy.refuse();
    proxy.reset_all();
    run_.release();
    let (status, stderr) = run_.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_clear_stop(&stderr, F::STORE, &proxy.address());
    assert!(stderr.contains("--resume"), "{stderr}");
    let (copied, total) = copied_units_are_whole(f, job.path()).await;
    assert!(
        copied < total,
        "stopped part way: {copied} of {total} units"
    );
    proxy.accept();
    let mut resume = opts.clone();
    resume.push("--resume");
    assert_exit(&run(f, job.path(), "copy", &flags, &resume), 0);
    verified_whole(f, job.path()).await;
}

// ---------------------------------------------------------------------------------------------
// MySQL: two tables in a database of the test's own on the stack's servers.

struct Mysql {
    db: TestDb,
}

impl Mysql {
    async fn new(tag: &str) -> Mysql {
        let db = crate::stop::seeded(tag, 5_000).await;
        let src = mysql_source();
        exec(
            &src,
            &format!(
                "CREATE TABLE `{0}`.`other` (id INT PRIMARY KEY, body VARCHAR(200)) ENGINE=InnoDB",
                db.name
            ),
        )
        .await;
        exec(
            &src,
            &format!(
                "INSERT INTO `{0}`.`other` SELECT seq, REPEAT(CHAR(65 + seq % 26), 150) FROM `{0}`.seq_1_to_3000",
                db.name
            ),
        )
        .await;
        Mysql { db }
    }

    /// Every row of `table`, in key order.
    async fn digest(url: &str, table: &str) -> Vec<Vec<mysql_async::Value>> {
        rows(url, &format!("SELECT * FROM {table} ORDER BY id")).await
    }
}

fn host_port(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
}

impl Fixture for Mysql {
    const STORE: &'static str = "mysql";

    fn upstream(&self, end: End) -> String {
        host_port(&match end {
            End::Source => mysql_source(),
            End::Target => mysql_target(),
        })
    }

    fn flags(&self, source: &str, target: &str) -> Vec<String> {
        vec![
            "--from-mysql".into(),
            format!("mysql://root@{source}"),
            "--to-mysql".into(),
            format!("mysql://root@{target}"),
            "--databases".into(),
            self.db.name.clone(),
            "--batch-rows".into(),
            "500".into(),
        ]
    }

    fn objects(&self) -> Vec<String> {
        vec![
            format!("{}.bulk", self.db.name),
            format!("{}.other", self.db.name),
        ]
    }

    async fn same(&self, object: &str) -> bool {
        let (db, table) = object.split_once('.').unwrap();
        let table = format!("`{db}`.`{table}`");
        let exists = rows(
            &mysql_target(),
            &format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{db}' AND table_name = '{}'",
                object.split_once('.').unwrap().1
            ),
        )
        .await;
        if exists[0][0] == mysql_async::Value::Int(0) {
            return false;
        }
        Mysql::digest(&mysql_source(), &table).await == Mysql::digest(&mysql_target(), &table).await
    }

    async fn clean_up(&self) {
        self.db.drop_both().await;
    }
}

#[tokio::test]
async fn mysql_source_connections_reset_repeatedly() {
    let f = Mysql::new("fault_reset").await;
    resets_repeatedly(&f, End::Source, 40_000, 6, &[]).await;
    f.clean_up().await;
}

#[tokio::test]
async fn mysql_target_stall_is_retried_within_the_stall_timeout() {
    let f = Mysql::new("fault_stall").await;
    stall_then_completes(&f, End::Target, &[]).await;
    f.clean_up().await;
}

#[tokio::test]
async fn mysql_source_gone_at_start_is_refused_clearly() {
    let f = Mysql::new("fault_gone").await;
    source_gone_at_start(&f).await;
    f.clean_up().await;
}

#[tokio::test]
async fn mysql_source_lost_mid_copy_stops_then_resumes() {
    let f = Mysql::new("fault_lost").await;
    source_lost_mid_copy(&f, &[]).await;
    f.clean_up().await;
}

// ---------------------------------------------------------------------------------------------
// MongoDB: two collections in a database of the test's own on the stack's servers.

fn mongodb_source() -> String {
    env_or("OFFLOAD_TEST_MONGODB_SOURCE", "mongodb://127.0.0.1:27117")
}

fn mongodb_target() -> String {
    env_or("OFFLOAD_TEST_MONGODB_TARGET", "mongodb://127.0.0.1:27118")
}

async fn mongo(uri: &str) -> MongoClient {
    let mut opts = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    opts.server_selection_timeout = Some(std::time::Duration::from_secs(5));
    MongoClient::with_options(opts).unwrap()
}

struct Mongo {
    db: String,
}

impl Mongo {
    async fn new(tag: &str) -> Mongo {
        let f = Mongo {
            db: format!("it_f_{tag}_{}", std::process::id()),
        };
        f.clean_up().await;
        let c = mongo(&mongodb_source()).await;
        for (coll, n) in [("events", 3_000), ("notes", 1_200)] {
            let docs: Vec<Document> = (0..n)
                .map(|i| doc! {"_id": i, "kind": coll, "body": "x".repeat(100 + (i % 50) as usize)})
                .collect();
            c.database(&f.db)
                .collection::<Document>(coll)
                .insert_many(docs)
                .await
                .unwrap_or_else(|e| panic!("seeding {coll}: {e}. Start the test servers with `scripts/stack up mongodb`"));
        }
        f
    }

    async fn docs(uri: &str, db: &str, coll: &str) -> Vec<Document> {
        use futures_util::TryStreamExt;
        let c = mongo(uri).await;
        c.database(db)
            .collection::<Document>(coll)
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }
}

impl Fixture for Mongo {
    const STORE: &'static str = "mongodb";

    fn upstream(&self, end: End) -> String {
        let uri = match end {
            End::Source => mongodb_source(),
            End::Target => mongodb_target(),
        };
        uri.trim_start_matches("mongodb://")
            .trim_end_matches('/')
            .to_string()
    }

    fn flags(&self, source: &str, target: &str) -> Vec<String> {
        vec![
            "--from-mongodb".into(),
            format!("mongodb://{source}/?directConnection=true"),
            "--to-mongodb".into(),
            format!("mongodb://{target}/?directConnection=true"),
            "--mongodb-databases".into(),
            self.db.clone(),
            "--batch-rows".into(),
            "400".into(),
        ]
    }

    fn objects(&self) -> Vec<String> {
        vec![format!("{}.events", self.db), format!("{}.notes", self.db)]
    }

    async fn same(&self, object: &str) -> bool {
        let (db, coll) = object.split_once('.').unwrap();
        Mongo::docs(&mongodb_source(), db, coll).await
            == Mongo::docs(&mongodb_target(), db, coll).await
    }

    async fn clean_up(&self) {
        for uri in [mongodb_source(), mongodb_target()] {
            let _ = mongo(&uri).await.database(&self.db).drop().await;
        }
    }
}

#[tokio::test]
async fn mongodb_source_connections_reset_repeatedly() {
    let f = Mongo::new("reset").await;
    resets_repeatedly(&f, End::Source, 60_000, 6, &[]).await;
    f.clean_up().await;
}

#[tokio::test]
async fn mongodb_target_stall_is_retried_within_the_stall_timeout() {
    let f = Mongo::new("stall").await;
    stall_then_completes(&f, End::Target, &[]).await;
    f.clean_up().await;
}

#[tokio::test]
async fn mongodb_source_gone_at_start_is_refused_clearly() {
    let f = Mongo::new("gone").await;
    source_gone_at_start(&f).await;
    f.clean_up().await;
}

#[tokio::test]
async fn mongodb_source_lost_mid_copy_stops_then_resumes() {
    let f = Mongo::new("lost").await;
    source_lost_mid_copy(&f, &[]).await;
    f.clean_up().await;
}

// ---------------------------------------------------------------------------------------------
// Redis: a source and a target redis-server of the test's own (databases 0 and 1 whole).

struct OwnRedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnRedisServer {
    fn start() -> OwnRedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--repl-diskless-sync-delay",
                "0",
                "--port",
                &port.to_string(),
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/stack up)");
        let server = OwnRedisServer {
            child,
            port,
            _dir: dir,
        };
        let client = ::redis::Client::open(server.url(0)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Polls for the server's readiness (a condition, with a deadline), not a timed wait.
        while client.get_connection().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the test's redis-server did not start"
            );
            std::thread::yield_now();
        }
        server
    }

    fn url(&self, db: i64) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Every key of a database with its DUMP (type, value) and whether it has a TTL.
    fn contents(&self, db: i64) -> BTreeMap<Vec<u8>, (Vec<u8>, bool)> {
        let mut c = ::redis::Client::open(self.url(db))
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: Vec<Vec<u8>> = ::redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        keys.into_iter()
            .map(|k| {
                let dump: Vec<u8> = ::redis::cmd("DUMP").arg(&k).query(&mut c).unwrap();
                let ttl: i64 = ::redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
                (k, (dump, ttl > 0))
            })
            .collect()
    }
}

impl Drop for OwnRedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Redis {
    source: OwnRedisServer,
    target: OwnRedisServer,
}

impl Redis {
    fn new() -> Redis {
        let f = Redis {
            source: OwnRedisServer::start(),
            target: OwnRedisServer::start(),
        };
        for db in [0, 1] {
            let mut c = ::redis::Client::open(f.source.url(db))
                .unwrap()
                .get_connection()
                .unwrap();
            let mut pipe = ::redis::pipe();
            for i in 0..3_000 {
                pipe.cmd("SET")
                    .arg(format!("key:{db}:{i}"))
                    .arg("v".repeat(80 + i % 40))
                    .ignore();
                if i % 10 == 0 {
                    pipe.cmd("HSET")
                        .arg(format!("hash:{db}:{i}"))
                        .arg("f")
                        .arg(i)
                        .ignore();
                    pipe.cmd("EXPIRE")
                        .arg(format!("hash:{db}:{i}"))
                        .arg(86_400)
                        .ignore();
                }
            }
            let _: () = pipe.query(&mut c).unwrap();
        }
        f
    }
}

impl Fixture for Redis {
    const STORE: &'static str = "redis";

    fn upstream(&self, end: End) -> String {
        let port = match end {
            End::Source => self.source.port,
            End::Target => self.target.port,
        };
        format!("127.0.0.1:{port}")
    }

    fn flags(&self, source: &str, target: &str) -> Vec<String> {
        vec![
            "--from-redis".into(),
            format!("redis://{source}"),
            "--to-redis".into(),
            format!("redis://{target}"),
            "--redis-dbs".into(),
            "0,1".into(),
            "--batch-rows".into(),
            "500".into(),
        ]
    }

    fn objects(&self) -> Vec<String> {
        vec!["0".into(), "1".into()]
    }

    async fn same(&self, object: &str) -> bool {
        let db: i64 = object.parse().unwrap();
        self.source.contents(db) == self.target.contents(db)
    }

    async fn clean_up(&self) {}
}

#[tokio::test]
async fn redis_source_connections_reset_repeatedly() {
    let f = Redis::new();
    resets_repeatedly(&f, End::Source, 50_000, 6, &[]).await;
}

#[tokio::test]
async fn redis_scan_source_connections_reset_repeatedly() {
    let f = Redis::new();
    resets_repeatedly(&f, End::Source, 50_000, 6, &["--redis-scan"]).await;
}

#[tokio::test]
async fn redis_target_stall_is_retried_within_the_stall_timeout() {
    let f = Redis::new();
    stall_then_completes(&f, End::Target, &[]).await;
}

#[tokio::test]
async fn redis_source_gone_at_start_is_refused_clearly() {
    let f = Redis::new();
    source_gone_at_start(&f).await;
}

#[tokio::test]
async fn redis_source_lost_mid_copy_stops_then_resumes() {
    let f = Redis::new();
    source_lost_mid_copy(&f, &[]).await;
}

// ---------------------------------------------------------------------------------------------
// Object storage: two buckets of the test's own on the stack's SeaweedFS servers.

use crate::common::{s3_client, s3_keys, s3_source_url as s3_source, s3_target_url as s3_target};

struct Objects {
    buckets: Vec<String>,
}

impl Objects {
    async fn new(tag: &str) -> Objects {
        let f = Objects {
            buckets: ["a", "b"]
                .iter()
                .map(|x| format!("it-f{tag}{x}-{}", std::process::id()))
                .collect(),
        };
        f.clean_up().await;
        let c = s3_client(&s3_source());
        for (n, b) in f.buckets.iter().enumerate() {
            c.create_bucket()
                .bucket(b)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!("creating {b}: {e:?}. Start the test servers with `scripts/stack up s3`")
                });
            for i in 0..12 {
                let body: Vec<u8> = (0..40_000u32)
                    .map(|j| (j.wrapping_mul(31).wrapping_add(i * 7 + n as u32)) as u8)
                    .collect();
                c.put_object()
                    .bucket(b)
                    .key(format!("media/{i:03}.bin"))
                    .body(body.into())
                    .send()
                    .await
                    .unwrap();
            }
        }
        f
    }

    async fn contents(url: &str, bucket: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let c = s3_client(url);
        let page = c.list_objects_v2().bucket(bucket).send().await.ok()?;
        let mut out = BTreeMap::new();
        for o in page.contents() {
            let key = o.key().unwrap().to_string();
            let body = c
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap();
            out.insert(
                key,
                body.body.collect().await.unwrap().into_bytes().to_vec(),
            );
        }
        Some(out)
    }
}

impl Fixture for Objects {
    const STORE: &'static str = "objects";

    fn upstream(&self, end: End) -> String {
        host_port(&match end {
            End::Source => s3_source(),
            End::Target => s3_target(),
        })
    }

    fn flags(&self, source: &str, target: &str) -> Vec<String> {
        vec![
            "--from-s3".into(),
            format!("http://{source}"),
            "--to-s3".into(),
            format!("http://{target}"),
            "--buckets".into(),
            self.buckets.join(","),
            "--create-buckets".into(),
            "--object-transfers".into(),
            "1".into(),
        ]
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let (a, s) = s3_keys();
        vec![
            ("OFFLOAD_FROM_S3_ACCESS_KEY", a.clone()),
            ("OFFLOAD_FROM_S3_SECRET_KEY", s.clone()),
            ("OFFLOAD_TO_S3_ACCESS_KEY", a),
            ("OFFLOAD_TO_S3_SECRET_KEY", s),
            ("AWS_ACCESS_KEY_ID", String::new()),
            ("AWS_SECRET_ACCESS_KEY", String::new()),
        ]
    }

    fn objects(&self) -> Vec<String> {
        self.buckets.clone()
    }

    async fn same(&self, object: &str) -> bool {
        let source = Objects::contents(&s3_source(), object).await;
        source.is_some() && source == Objects::contents(&s3_target(), object).await
    }

    async fn clean_up(&self) {
        for url in [s3_source(), s3_target()] {
            let c = s3_client(&url);
            for b in &self.buckets {
                crate::objects::drop_bucket(&c, b).await;
            }
        }
    }
}

#[tokio::test]
async fn objects_source_connections_reset_repeatedly() {
    let f = Objects::new("r").await;
    resets_repeatedly(&f, End::Source, 150_000, 6, &[]).await;
    f.clean_up().await;
}

#[tokio::test]
async fn objects_target_stall_is_retried_within_the_stall_timeout() {
    let f = Objects::new("s").await;
    stall_then_completes(&f, End::Target, &[]).await;
    f.clean_up().await;
}

#[tokio::test]
async fn objects_source_gone_at_start_is_refused_clearly() {
    let f = Objects::new("g").await;
    source_gone_at_start(&f).await;
    f.clean_up().await;
}

#[tokio::test]
async fn objects_source_lost_mid_copy_stops_then_resumes() {
    let f = Objects::new("l").await;
    source_lost_mid_copy(&f, &[]).await;
    f.clean_up().await;
}

// ---------------------------------------------------------------------------------------------
// The job folder on a full disk: a small tmpfs of the test's own (`mount -t tmpfs`, as root).

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn job(&self) -> std::path::PathBuf {
        self.dir.path().join("job")
    }

    fn filler(&self) -> std::path::PathBuf {
        self.dir.path().join("filler")
    }

    /// Write zeros until the device says it is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// What offload says when the job folder fills up.
fn assert_says_folder_full(stderr: &str) {
    assert!(
        stderr.contains("the job folder is full") && stderr.contains("Free space"),
        "says the job folder is full and to free space: {stderr}"
    );
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The disk under the job folder fills up mid-copy: exit 2 saying the folder is full and to free
/// space then `--resume`; the units marked copied are whole; once space is freed, `--resume`
/// completes to a clean verify.
#[tokio::test]
async fn a_full_job_folder_stops_the_copy_clearly_and_resumes_once_freed() {
    let f = Mysql::new("fault_disk").await;
    let disk = SmallDisk::mount("4m");
    let job = disk.job();
    let flags = f.flags(&f.upstream(End::Source), &f.upstream(End::Target));
    let opts = ["--parallel", "1"];
    let mut copy = Background::start(&job, &args("copy", &flags, &opts), "hold-after-batch:2");
    copy.wait_for(HELD);
    disk.fill();
    copy.release();
    let (status, stderr) = copy.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_says_folder_full(&stderr);
    let (copied, total) = copied_units_are_whole(&f, &job).await;
    assert!(copied < total, "stopped part way: {copied} of {total}");

    disk.free();
    let mut resume = args("copy", &flags, &opts);
    resume.push("--resume");
    assert_exit(&offload(&job, &resume), 0);
    verified_whole(&f, &job).await;
    f.clean_up().await;
}

/// `--if-exists replace` with the job folder full before the target is prepared: nothing on the
/// target is dropped (the catalog could not record it), exit 2 says the folder is full; once
/// freed, the same command with `--resume` replaces and copies to a clean verify.
#[tokio::test]
async fn replace_drops_nothing_while_the_job_folder_cannot_record_it() {
    let f = Mysql::new("fault_diskrep").await;
    let occupied = format!("`{}`.`bulk`", f.db.name);
    exec(&mysql_target(), &format!("CREATE DATABASE `{}`", f.db.name)).await;
    exec(
        &mysql_target(),
        &format!("CREATE TABLE {occupied} (id BIGINT PRIMARY KEY, note VARCHAR(40))"),
    )
    .await;
    exec(
        &mysql_target(),
        &format!("INSERT INTO {occupied} VALUES (1, 'kept until recorded')"),
    )
    .await;
    let disk = SmallDisk::mount("4m");
    let job = disk.job();
    let flags = f.flags(&f.upstream(End::Source), &f.upstream(End::Target));
    let opts = ["--if-exists", "replace"];
    let mut copy = Background::start(&job, &args("copy", &flags, &opts), "hold:before-prepare");
    copy.wait_for(HELD);
    disk.fill();
    copy.release();
    let (status, stderr) = copy.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_says_folder_full(&stderr);
    assert_eq!(
        rows(&mysql_target(), &format!("SELECT note FROM {occupied}")).await,
        vec![vec![mysql_async::Value::Bytes(
            b"kept until recorded".to_vec()
        )]],
        "nothing dropped before the catalog recorded it"
    );

    disk.free();
    let mut resume = args("copy", &flags, &opts);
    resume.push("--resume");
    assert_exit(&offload(&job, &resume), 0);
    verified_whole(&f, &job).await;
    f.clean_up().await;
}
