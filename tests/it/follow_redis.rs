//! `offload follow` on Redis: after a copy read from the source's snapshots, the replication
//! stream is applied to the target while another client writes (strings, counters, lists,
//! hashes, sorted sets, deletes, short expiries, MULTI/EXEC), and the target ends exactly equal
//! (every INCR once), also across a `kill -9` of the follower (at a random moment, and right
//! after the target took a batch the job had not recorded yet), across a source backlog too
//! small to hold what was written while no follower ran (a new snapshot is loaded), and with
//! databases remapped (`--redis-dbs 0:3,1`). Each test runs its own pair of redis-servers.
//!
//! The tests wait for a sentinel key written last: the stream is applied in order, so once the
//! sentinel is on the target everything before it is too (a condition polled, not a sleep).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server of one test's own, without persistence.
struct OwnRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start(extra: &[&str]) -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            // Snapshots for replicas start at once, not after the default 5 s wait for more.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}. Run `scripts/stack up`"));
        let redis = OwnRedis {
            port,
            child,
            _dir: dir,
        };
        wait_until("the test's redis-server to answer", || {
            redis
                .try_conn(0)
                .is_some_and(|mut c| ::redis::cmd("PING").query::<String>(&mut c).is_ok())
        });
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_conn(&self, db: i64) -> Option<::redis::Connection> {
        ::redis::Client::open(format!("{}/{db}", self.url()))
            .ok()?
            .get_connection()
            .ok()
    }

    fn conn(&self, db: i64) -> ::redis::Connection {
        self.try_conn(db)
            .expect("connect to the test's redis-server")
    }

    fn get(&self, db: i64, key: &str) -> Option<String> {
        ::redis::cmd("GET")
            .arg(key)
            .query(&mut self.conn(db))
            .unwrap()
    }

    fn dbsize(&self, db: i64) -> u64 {
        ::redis::cmd("DBSIZE").query(&mut self.conn(db)).unwrap()
    }

    /// `keys` string keys, a few of them expiring within minutes.
    fn fill(&self, db: i64, keys: usize) {
        let mut c = self.conn(db);
        let mut pipe = ::redis::pipe();
        for i in 0..keys {
            pipe.cmd("SET")
                .arg(format!("seed:{i:05}"))
                .arg(format!("value {i} of database {db}"))
                .ignore();
            if i.is_multiple_of(50) {
                pipe.cmd("EXPIRE")
                    .arg(format!("seed:{i:05}"))
                    .arg(600)
                    .ignore();
            }
        }
        let _: () = pipe.query(&mut c).unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `ready` holds, at most 60 s.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `offload follow` running in the background, its stderr kept in a file.
struct Following {
    child: Child,
    log: std::fs::File,
}

impl Following {
    fn start(job: &Path, failpoint: Option<&str>) -> Following {
        let log_path = job.with_extension(format!("follow-{}.log", free_port()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
        cmd.args(["follow", "--no-progress", "--poll", "0.2"])
            .arg("--job")
            .arg(job)
            .arg("--tutor-root")
            .arg(job.join("no-tutor-here"))
            .env_remove("OFFLOAD_FAILPOINT")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap());
        if let Some(point) = failpoint {
            cmd.env("OFFLOAD_FAILPOINT", point);
        }
        Following {
            child: cmd.spawn().expect("run offload follow"),
            log: std::fs::File::open(&log_path).unwrap(),
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        self.log.read_to_string(&mut text).unwrap();
        text
    }

    /// Ctrl-C, as the operator stops it; returns how it exited and what it said.
    fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(rc, 0);
        let status = self.child.wait().unwrap();
        (status, self.stderr())
    }

    /// `kill -9`.
    fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.stderr()
    }

    /// Wait for it to end by itself (a failpoint).
    fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        (status, self.stderr())
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One round of the other client's writes in database `db` (round `i`): every kind of change a
/// platform makes, one counter increment per round, some in a MULTI/EXEC.
fn write_round(c: &mut ::redis::Connection, i: u64) {
    let mut pipe = ::redis::pipe();
    pipe.cmd("INCR").arg("counter").ignore();
    pipe.cmd("SET")
        .arg(format!("new:{i}"))
        .arg(format!("written {i}"))
        .ignore();
    pipe.cmd("LPUSH").arg("queue").arg(i).ignore();
    pipe.cmd("HSET")
        .arg("session")
        .arg(format!("f{}", i % 7))
        .arg(i)
        .ignore();
    pipe.cmd("ZADD")
        .arg("ranking")
        .arg(i)
        .arg(format!("m{}", i % 11))
        .ignore();
    pipe.cmd("DEL").arg(format!("seed:{:05}", i * 3)).ignore();
    // Expiries: a key that lives 150 ms, and an existing key given a short life.
    pipe.cmd("SET")
        .arg(format!("short:{i}"))
        .arg("x")
        .arg("PX")
        .arg(150)
        .ignore();
    pipe.cmd("PEXPIRE")
        .arg(format!("seed:{:05}", i * 3 + 1))
        .arg(100)
        .ignore();
    let _: () = pipe.query(c).unwrap();
    if i.is_multiple_of(5) {
        let _: () = ::redis::pipe()
            .atomic()
            .cmd("INCRBY")
            .arg("tx:counter")
            .arg(2)
            .ignore()
            .cmd("RPOPLPUSH")
            .arg("queue")
            .arg("done")
            .ignore()
            .cmd("SET")
            .arg(format!("tx:{i}"))
            .arg(i)
            .ignore()
            .query(c)
            .unwrap();
    }
}

/// Write the sentinel last and wait until the target (database `target_db`) has it.
fn settle(source: &OwnRedis, target: &OwnRedis, db: i64, target_db: i64, tag: &str) {
    let _: () = ::redis::cmd("SET")
        .arg("sentinel")
        .arg(tag)
        .query(&mut source.conn(db))
        .unwrap();
    wait_until("the follower to apply the sentinel", || {
        target.get(target_db, "sentinel").as_deref() == Some(tag)
    });
}

fn copy_flags(source: &OwnRedis, target: &OwnRedis, dbs: &str) -> Vec<String> {
    vec![
        "--from-redis".into(),
        source.url(),
        "--to-redis".into(),
        target.url(),
        "--redis-dbs".into(),
        dbs.into(),
    ]
}

fn copy(job: &Path, flags: &[String], extra: &[&str]) {
    let mut a: Vec<&str> = vec!["copy"];
    a.extend(flags.iter().map(String::as_str));
    a.extend_from_slice(extra);
    assert_exit(&offload(job, &a), 0);
}

/// A follower stopped with Ctrl-C exits 130 with its checkpoint saved, and leaves nothing of
/// its own on the target.
fn stopped_cleanly(run: Following, target: &OwnRedis, target_dbs: &[i64]) -> String {
    let (status, stderr) = run.stop();
    assert_eq!(status.code(), Some(130), "{stderr}");
    for db in target_dbs {
        let marker: bool = ::redis::cmd("EXISTS")
            .arg("__offload_follow_position__")
            .query(&mut target.conn(*db))
            .unwrap();
        assert!(!marker, "the follower's marker is removed from db {db}");
    }
    stderr
}

#[test]
fn redis_follow_applies_concurrent_writes_exactly_with_databases_remapped() {
    let source = OwnRedis::start(&[]);
    let target = OwnRedis::start(&[]);
    source.fill(0, 3_000);
    source.fill(1, 500);
    source.fill(2, 10);
    let job = tempfile::tempdir().unwrap();
    let flags = copy_flags(&source, &target, "0:3,1");
    copy(job.path(), &flags, &[]);
    assert_eq!(target.dbsize(3), 3_000);

    let run = Following::start(job.path(), None);
    let rounds = 400u64;
    let writer = {
        let (mut db0, mut db1, mut db2) = (source.conn(0), source.conn(1), source.conn(2));
        std::thread::spawn(move || {
            for i in 1..=rounds {
                write_round(&mut db0, i);
                if i.is_multiple_of(4) {
                    write_round(&mut db1, i / 4);
                    // A database the job does not copy.
                    write_round(&mut db2, i / 4);
                }
            }
            // A flushed database and a whole-database change.
            let _: () = ::redis::cmd("SET")
                .arg("gone")
                .arg(1)
                .query(&mut db1)
                .unwrap();
            let _: () = ::redis::cmd("FLUSHDB").query(&mut db1).unwrap();
            let _: () = ::redis::cmd("SET")
                .arg("after-flush")
                .arg(1)
                .query(&mut db1)
                .unwrap();
        })
    };
    writer.join().unwrap();
    settle(&source, &target, 0, 3, "remapped");
    let stderr = stopped_cleanly(run, &target, &[3, 1]);

    assert_eq!(
        target.get(3, "counter"),
        Some(rounds.to_string()),
        "{stderr}"
    );
    assert_eq!(
        target.get(3, "tx:counter"),
        Some((2 * (rounds / 5)).to_string())
    );
    assert_eq!(target.get(1, "after-flush").as_deref(), Some("1"));
    assert_eq!(target.dbsize(1), 1, "the flush of database 1 was applied");
    assert_eq!(
        target.dbsize(0),
        0,
        "source database 0 lands in target database 3"
    );
    assert_eq!(target.dbsize(2), 0, "database 2 is not part of the job");

    // The keys the follower touched, read before the full verify (which, clean, becomes the
    // baseline and leaves nothing touched).
    touched_keys_digest_as_verify_does(job.path(), &source, &target);
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
    let status = offload(job.path(), &["status"]);
    assert!(
        text(&status).contains("Following redis"),
        "{}",
        text(&status)
    );
}

/// What the follower recorded as touched: the keys it wrote in the remapped database, the
/// flushed database whole; and `row_digests_at` digests those keys exactly as `row_digests`
/// does, equal on both sides.
fn touched_keys_digest_as_verify_does(job: &Path, source: &OwnRedis, target: &OwnRedis) {
    use offload::core::catalog::Catalog;
    use offload::core::{RowDigest, Side, Store, StoreKind};
    use offload::stores::redis::{DbChoice, RedisEndpoint, RedisOptions, RedisStore};

    let catalog = Catalog::open(job).unwrap();
    let touched = catalog.touched(StoreKind::Redis).unwrap();
    let of = |unit: &str| {
        touched
            .iter()
            .find(|(u, _)| u == unit)
            .map(|(_, keys)| keys.clone())
            .unwrap_or_else(|| panic!("{unit} touched: {touched:?}"))
    };
    let keys = of("db0->db3").expect("keys of db0, not the whole unit");
    assert!(of("db1").is_none(), "the flushed database counts whole");
    let names: Vec<String> = keys
        .iter()
        .map(|k| k.0["key"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "counter",
        "queue",
        "session",
        "ranking",
        "tx:counter",
        "sentinel",
    ] {
        assert!(names.iter().any(|n| n == k), "{k} touched: {names:?}");
    }

    let store = RedisStore::new(
        RedisEndpoint::parse(&source.url()).unwrap(),
        RedisEndpoint::parse(&target.url()).unwrap(),
        RedisOptions {
            dbs: vec![
                DbChoice {
                    source: 0,
                    target: 3,
                },
                DbChoice {
                    source: 1,
                    target: 1,
                },
            ],
            ..RedisOptions::default()
        },
    );
    let digests = |rows: &[RowDigest]| {
        let mut v: Vec<(String, [u8; 16])> =
            rows.iter().map(|r| (r.key.clone(), r.digest)).collect();
        v.sort();
        v
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let units = store.inventory().await.unwrap();
        let unit = units.iter().find(|u| u.name == "db0->db3").unwrap();
        let at_source = store
            .row_digests_at(Side::Source, unit, &keys)
            .await
            .unwrap();
        let at_target = store
            .row_digests_at(Side::Target, unit, &keys)
            .await
            .unwrap();
        assert!(at_source.len() > 6, "{}", at_source.len());
        assert_eq!(digests(&at_source), digests(&at_target));
        let whole = store
            .row_digests(Side::Source, unit, None, None, usize::MAX)
            .await
            .unwrap();
        let wanted: std::collections::BTreeSet<String> =
            at_source.iter().map(|r| r.key.clone()).collect();
        let from_whole: Vec<RowDigest> = whole
            .into_iter()
            .filter(|r| wanted.contains(&r.key))
            .collect();
        assert_eq!(digests(&from_whole), digests(&at_source));
    });
}

#[test]
fn redis_follow_killed_mid_stream_resumes_without_losing_or_repeating_a_command() {
    let source = OwnRedis::start(&[]);
    let target = OwnRedis::start(&[]);
    source.fill(0, 2_000);
    let job = tempfile::tempdir().unwrap();
    let flags = copy_flags(&source, &target, "0");
    copy(job.path(), &flags, &[]);
    let mut src = source.conn(0);

    // Killed right after the target took a batch that the job had not recorded yet.
    for i in 1..=100 {
        write_round(&mut src, i);
    }
    let (status, stderr) = Following::start(job.path(), Some("redis-follow-applied")).wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{stderr}"
    );
    assert_eq!(target.get(0, "counter").as_deref(), Some("100"));

    // Killed at whatever moment, while the other client writes.
    let run = Following::start(job.path(), None);
    let writer = {
        let mut c = source.conn(0);
        std::thread::spawn(move || {
            for i in 101..=600 {
                write_round(&mut c, i);
            }
        })
    };
    wait_until("the follower to apply some of the writes", || {
        target
            .get(0, "counter")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 150)
    });
    run.kill();
    writer.join().unwrap();

    let run = Following::start(job.path(), None);
    settle(&source, &target, 0, 0, "resumed");
    let stderr = stopped_cleanly(run, &target, &[0]);
    assert!(
        !stderr.contains("new snapshot"),
        "the source's backlog held the point: no new snapshot\n{stderr}"
    );
    assert_eq!(target.get(0, "counter").as_deref(), Some("600"), "{stderr}");
    assert_eq!(target.get(0, "tx:counter").as_deref(), Some("240"));
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
}

#[test]
fn redis_follow_loads_a_new_snapshot_when_the_backlog_no_longer_holds_its_point() {
    let source = OwnRedis::start(&["--repl-backlog-size", "16kb"]);
    let target = OwnRedis::start(&[]);
    source.fill(0, 1_000);
    source.fill(1, 200);
    let job = tempfile::tempdir().unwrap();
    let flags = copy_flags(&source, &target, "0,1");
    copy(job.path(), &flags, &[]);

    let run = Following::start(job.path(), None);
    let mut src = source.conn(0);
    for i in 1..=20 {
        write_round(&mut src, i);
    }
    settle(&source, &target, 0, 0, "first");
    stopped_cleanly(run, &target, &[0, 1]);

    // While no follower runs: far more than 16 kB of writes, and keys deleted that the target
    // still holds.
    for i in 21..=1_000 {
        write_round(&mut src, i);
    }
    let _: () = ::redis::cmd("DEL")
        .arg("seed:00999")
        .query(&mut source.conn(1))
        .unwrap();
    let run = Following::start(job.path(), None);
    let writer = {
        let mut c = source.conn(0);
        std::thread::spawn(move || {
            for i in 1_001..=1_200 {
                write_round(&mut c, i);
            }
        })
    };
    writer.join().unwrap();
    settle(&source, &target, 0, 0, "after resync");
    let stderr = stopped_cleanly(run, &target, &[0, 1]);
    assert!(stderr.contains("new snapshot"), "{stderr}");
    assert_eq!(
        target.get(0, "counter").as_deref(),
        Some("1200"),
        "{stderr}"
    );
    assert_eq!(
        target.get(1, "seed:00999"),
        None,
        "a key gone from the source is gone"
    );
    assert_eq!(target.dbsize(1), source.dbsize(1));
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
}

#[test]
fn redis_follow_after_a_scan_copy_starts_from_a_snapshot_of_its_own() {
    let source = OwnRedis::start(&[]);
    let target = OwnRedis::start(&[]);
    source.fill(0, 500);
    let job = tempfile::tempdir().unwrap();
    let flags = copy_flags(&source, &target, "0");
    copy(job.path(), &flags, &["--redis-scan"]);
    let mut src = source.conn(0);
    for i in 1..=50 {
        write_round(&mut src, i);
    }
    let run = Following::start(job.path(), None);
    settle(&source, &target, 0, 0, "scan");
    let stderr = stopped_cleanly(run, &target, &[0]);
    assert!(stderr.contains("new snapshot"), "{stderr}");
    assert_eq!(target.get(0, "counter").as_deref(), Some("50"));
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
}
