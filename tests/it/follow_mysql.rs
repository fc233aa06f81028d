//! Following a MariaDB source's binary log after the copy (`offload follow`), against servers of
//! each test's own started with `--log-bin --binlog-format=ROW`: writes from another client of
//! every kind arrive on the target and verify is clean; a follower killed with SIGKILL resumes
//! from its checkpoint with nothing lost or doubled; a schema change stops it with the statement
//! named; a purged binary log stops it with the delta pass as the way on, and that way works;
//! the digests of single rows by key equal the range digests of the same rows.

use std::path::Path;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::Conn;

use crate::common::*;
use crate::stop::Background;
use crate::support::own_mariadb::OwnMariadb;

const DB: &str = "followed";

/// A source with a binary log and a plain target.
async fn pair() -> (OwnMariadb, OwnMariadb) {
    let source = OwnMariadb::with_binlog(1).await;
    let target = OwnMariadb::plain().await;
    (source, target)
}

/// Tables of every kind of column and key the follower must carry exactly: an unsigned integer
/// key with JSON, BLOB, DATETIME(6), DECIMAL, unsigned, TIMESTAMP, YEAR, ENUM, SET, BIT, FLOAT,
/// TIME and NULLs; a composite key; a table without a key; a latin1 table keyed by text.
async fn seed(url: &str) {
    let mut c = connect(url).await;
    for sql in [
        format!("CREATE DATABASE {DB}"),
        format!(
            "CREATE TABLE {DB}.items (
               id INT UNSIGNED PRIMARY KEY, name VARCHAR(100) NOT NULL, price DECIMAL(14,4),
               doc JSON, payload BLOB, at DATETIME(6), big BIGINT UNSIGNED, small TINYINT UNSIGNED,
               ts TIMESTAMP(3) NULL DEFAULT NULL, yr YEAR, kind ENUM('a','b','c'),
               tags SET('x','y','z'), flags BIT(5), f FLOAT, d DOUBLE, neg MEDIUMINT,
               day DATE, dur TIME(2), note TEXT) ENGINE=InnoDB"
        ),
        format!(
            "CREATE TABLE {DB}.pairs (a INT NOT NULL, b VARCHAR(20) NOT NULL, v TEXT,
               PRIMARY KEY (a, b)) ENGINE=InnoDB"
        ),
        format!("CREATE TABLE {DB}.keyless (x INT, y VARCHAR(10)) ENGINE=InnoDB"),
        format!(
            "CREATE TABLE {DB}.latin (k VARCHAR(10) CHARACTER SET latin1 PRIMARY KEY,
               v VARCHAR(50) CHARACTER SET latin1) ENGINE=InnoDB"
        ),
        format!(
            "INSERT INTO {DB}.items SELECT seq, CONCAT('item ', seq, ' 🎓'), seq * 1.5,
               JSON_OBJECT('n', seq, 's', 'ü'), UNHEX(MD5(seq)),
               TIMESTAMP('2024-01-01 00:00:00.123456') + INTERVAL seq SECOND,
               18446744073709551615 - seq, seq % 256, FROM_UNIXTIME(1700000000 + seq),
               2000 + seq % 100, ELT(1 + seq % 3, 'a', 'b', 'c'), 'x,z', b'10101', seq / 3,
               seq / 7, -seq * 1000, '2024-02-29', '-12:34:56.78',
               IF(seq % 10 = 0, NULL, 'note') FROM seq_1_to_300"
        ),
        format!("INSERT INTO {DB}.pairs SELECT seq % 20, CONCAT('b', seq), REPEAT('v', seq) FROM seq_1_to_100"),
        format!("INSERT INTO {DB}.keyless SELECT seq % 7, CONCAT('y', seq % 3) FROM seq_1_to_50"),
        format!("INSERT INTO {DB}.latin VALUES ('café', 'crème'), ('plain', 'brûlée')"),
    ] {
        c.query_drop(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// One round of writes from another client: an insert, updates of values (to YEAR 0, NULLs,
/// new JSON) and of a key, a delete, a multi-statement transaction, a rolled-back one, and, when
/// `keyless`, changes to the table without a key.
async fn write_round(c: &mut Conn, i: u32, keyless: bool) {
    let id = 10_000 + i;
    let mut sqls = vec![
        format!(
            "INSERT INTO {DB}.items (id, name, price, doc, payload, at, big, small, ts, yr, kind, tags, flags, f, d, neg, day, dur)
             VALUES ({id}, 'new {i} ✓', -{i}.0625, '{{\"i\": {i}}}', X'00FF{i:04X}', '2025-06-30 23:59:59.999999',
                     {big}, 255, '2038-01-19 03:14:07.5', 1901, 'c', 'x,y,z', b'11111', 0.1, 1e300, -8388608,
                     '1000-01-01', '838:59:59')",
            big = u64::MAX - u64::from(i)
        ),
        format!(
            "UPDATE {DB}.items SET name = CONCAT(name, '+'), price = price + 1, yr = 0, note = NULL,
               doc = JSON_SET(doc, '$.round', {i}), ts = NULL WHERE id = {}",
            i % 100 + 1
        ),
        format!("DELETE FROM {DB}.items WHERE id = {}", i % 100 + 101),
        "START TRANSACTION".to_string(),
        format!("INSERT INTO {DB}.pairs VALUES ({i} + 100, 'tx', 'in a transaction')"),
        format!("UPDATE {DB}.pairs SET b = CONCAT(b, 'k{i}') WHERE a = {} AND LENGTH(b) < 12 LIMIT 1", i % 20),
        format!("DELETE FROM {DB}.pairs WHERE a = {} LIMIT 1", (i + 7) % 20),
        format!("UPDATE {DB}.items SET id = {} WHERE id = {}", 50_000 + i, i % 50 + 201),
        "COMMIT".to_string(),
        "START TRANSACTION".to_string(),
        format!("INSERT INTO {DB}.items (id, name) VALUES ({}, 'never')", 90_000 + i),
        format!("DELETE FROM {DB}.pairs WHERE a < 5"),
        "ROLLBACK".to_string(),
        format!("UPDATE {DB}.latin SET v = CONCAT('é', {i}) WHERE k = 'café'"),
    ];
    if keyless {
        sqls.push(format!("INSERT INTO {DB}.keyless VALUES ({i}, 'new')"));
        sqls.push(format!(
            "DELETE FROM {DB}.keyless WHERE x = {} LIMIT 1",
            i % 7
        ));
        sqls.push(format!(
            "UPDATE {DB}.keyless SET y = 'upd' WHERE x = {} LIMIT 1",
            (i + 3) % 7
        ));
    }
    for sql in sqls {
        c.query_drop(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

fn copy_args<'a>(source: &'a str, target: &'a str) -> Vec<&'a str> {
    vec![
        "copy",
        "--from-mysql",
        source,
        "--to-mysql",
        target,
        "--databases",
        DB,
    ]
}

/// The follow checkpoint as `offload status --json` shows it.
fn checkpoint(job: &Path) -> Option<serde_json::Value> {
    let out = offload(job, &["status", "--json"]);
    assert_exit(&out, 0);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["follow"]
        .as_array()?
        .iter()
        .find(|f| f["store"] == "mysql")
        .map(|f| f["checkpoint"].clone())
}

/// The end of the source's binary log now.
async fn head(url: &str) -> (String, u64) {
    let mut c = connect(url).await;
    let row: mysql_async::Row = c.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
    (row.get(0).unwrap(), row.get(1).unwrap())
}

/// Poll (no sleeping in the hope) until the follower's checkpoint reaches `head`.
async fn wait_caught_up(job: &Path, head: &(String, u64)) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(c) = checkpoint(job) {
            let at = &c["position"]["binlog"];
            if at["file"] == head.0.as_str() && at["pos"].as_u64() >= Some(head.1) {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not reach {head:?}: {:?}",
            checkpoint(job)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ask the running follower to hand the job over, and wait for it to end cleanly.
fn hand_over(job: &Path, run: Background) -> String {
    offload::job::request_handover(job).unwrap();
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    stderr
}

fn follow(job: &Path) -> Background {
    Background::start(job, &["follow", "--poll", "1"], "none")
}

/// The rows of a table on both sides, in key order, as the server prints them.
async fn same_rows(source: &str, target: &str, table: &str, order: &str) {
    let sql = format!("SELECT * FROM {DB}.{table} ORDER BY {order}");
    let (a, b) = (rows(source, &sql).await, rows(target, &sql).await);
    assert_eq!(a.len(), b.len(), "{table}: row counts differ");
    assert!(a == b, "{table}: rows differ");
}

#[tokio::test]
async fn follow_keeps_the_target_in_step_under_concurrent_writes_and_verify_is_clean() {
    let (source, target) = pair().await;
    let (src, tgt) = (source.url(), target.url());
    seed(&src).await;
    let job = tempfile::tempdir().unwrap();
    let copied = offload(job.path(), &copy_args(&src, &tgt));
    assert_exit(&copied, 0);

    // Changes between the copy and the follower's start are applied too.
    let mut writer = connect(&src).await;
    write_round(&mut writer, 0, true).await;
    let run = follow(job.path());
    for i in 1..=40 {
        write_round(&mut writer, i, true).await;
    }
    let at = head(&src).await;
    let reached = wait_caught_up(job.path(), &at).await;
    hand_over(job.path(), run);

    assert!(reached["transactions"].as_u64().unwrap() >= 40, "{reached}");
    assert_eq!(reached["lag"]["behind"], 0, "{reached}");
    assert_eq!(reached["lag"]["behind_unit"], "bytes");
    for (table, order) in [
        ("items", "id"),
        ("pairs", "a, b"),
        ("latin", "k"),
        ("keyless", "x, y"),
    ] {
        same_rows(&src, &tgt, table, order).await;
    }
    assert_safe_to_switch(&offload(job.path(), &["verify"]));

    // The rows the follower touched are named by key as the copy's cursors name them: the
    // digests of those rows by key equal the range digests of the same rows, on both sides.
    let catalog = offload::core::catalog::Catalog::open(job.path()).unwrap();
    let touched = catalog.touched(offload::core::StoreKind::Mysql).unwrap();
    let store = store_for(&src, &tgt);
    let units = catalog
        .units(Some(offload::core::StoreKind::Mysql))
        .unwrap();
    let mut checked = 0;
    for (name, keys) in &touched {
        let unit = &units.iter().find(|u| u.unit.name == *name).unwrap().unit;
        let Some(keys) = keys else {
            assert!(
                ["followed.keyless", "followed.latin"].contains(&name.as_str()),
                "{name}"
            );
            continue;
        };
        checked += same_digests_by_key_and_range(&store, unit, keys).await;
    }
    assert!(checked > 40, "rows checked by key: {checked}");
}

/// A MySQL store of the library over the test's servers.
fn store_for(src: &str, tgt: &str) -> offload::stores::mysql::MysqlStore {
    use offload::stores::mysql::{MysqlEndpoint, MysqlOptions, MysqlStore};
    MysqlStore::new(
        MysqlEndpoint::parse(src).unwrap(),
        MysqlEndpoint::parse(tgt).unwrap(),
        MysqlOptions {
            databases: vec![DB.into()],
            ..MysqlOptions::default()
        },
        1,
    )
}

/// `row_digests_at` of `keys` equals `row_digests` of the same rows, on both sides; returns the
/// rows compared.
async fn same_digests_by_key_and_range(
    store: &offload::stores::mysql::MysqlStore,
    unit: &offload::core::Unit,
    keys: &[offload::core::Cursor],
) -> usize {
    use offload::core::{Side, Store};
    let mut compared = 0;
    for side in [Side::Source, Side::Target] {
        let by_key = store.row_digests_at(side, unit, keys).await.unwrap();
        let all = store
            .row_digests(side, unit, None, None, 1_000_000)
            .await
            .unwrap();
        for row in &by_key {
            let same = all.iter().find(|r| r.cursor == row.cursor);
            assert_eq!(same, Some(row), "{side} {}: {}", unit.name, row.key);
        }
        // A key without a row (deleted) is left out; every key with a row is there.
        let wanted: Vec<_> = all
            .iter()
            .filter(|r| r.cursor.as_ref().is_some_and(|c| keys.contains(c)))
            .collect();
        assert_eq!(wanted.len(), by_key.len(), "{side} {}", unit.name);
        compared += by_key.len();
    }
    compared
}

#[tokio::test]
async fn a_follower_killed_mid_stream_resumes_with_nothing_lost_or_doubled() {
    let (source, target) = pair().await;
    let (src, tgt) = (source.url(), target.url());
    seed(&src).await;
    let job = tempfile::tempdir().unwrap();
    assert_exit(&offload(job.path(), &copy_args(&src, &tgt)), 0);

    // A writer that keeps writing while the follower is killed and started again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c = connect(&src).await;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 30 {
                i += 1;
                write_round(&mut c, i, false).await;
            }
            i
        })
    };
    let run = follow(job.path());
    // Killed once it has applied some transactions, while the writer goes on.
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint(job.path()).is_none_or(|c| c["transactions"].as_u64() < Some(5)) {
        assert!(Instant::now() < deadline, "the follower applied nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(run); // SIGKILL, as kill -9
    let before = checkpoint(job.path()).unwrap();
    let run = follow(job.path());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    let at = head(&src).await;
    let after = wait_caught_up(job.path(), &at).await;
    hand_over(job.path(), run);

    assert!(
        after["events"].as_u64() > before["events"].as_u64(),
        "{before} then {after}"
    );
    for (table, order) in [("items", "id"), ("pairs", "a, b"), ("latin", "k")] {
        same_rows(&src, &tgt, table, order).await;
    }
    let inserted = count(&tgt, &format!("{DB}.items WHERE id > 10000 AND id < 50000")).await;
    assert_eq!(inserted, i64::from(rounds), "each round's insert once");
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
}

#[tokio::test]
async fn a_schema_change_during_follow_stops_it_with_the_statement_named() {
    let (source, target) = pair().await;
    let (src, tgt) = (source.url(), target.url());
    seed(&src).await;
    let job = tempfile::tempdir().unwrap();
    assert_exit(&offload(job.path(), &copy_args(&src, &tgt)), 0);

    let run = follow(job.path());
    let mut c = connect(&src).await;
    write_round(&mut c, 1, false).await;
    // Applied before the statement comes (a follower reading rows of a table whose definition
    // already changed stops on the column count instead, with the same advice).
    wait_caught_up(job.path(), &head(&src).await).await;
    c.query_drop(format!("ALTER TABLE {DB}.pairs ADD COLUMN extra INT"))
        .await
        .unwrap();
    c.query_drop(format!(
        "INSERT INTO {DB}.pairs VALUES (999, 'after', 'x', 1)"
    ))
    .await
    .unwrap();
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ALTER TABLE followed.pairs ADD COLUMN extra INT")
            && stderr.contains("offload copy --resume --delta"),
        "the statement and the way on are named: {stderr}"
    );
    // What came before the statement is applied; nothing after it.
    let before_ddl = count(&tgt, &format!("{DB}.items WHERE id = 10001")).await;
    assert_eq!(before_ddl, 1);
    let after_ddl = count(&tgt, &format!("{DB}.pairs WHERE a = 999")).await;
    assert_eq!(after_ddl, 0);
    // The checkpoint stays before it: following again stops there again.
    let again = offload(job.path(), &["follow", "--poll", "1"]);
    assert_exit(&again, 2);
    assert!(text(&again).contains("ALTER TABLE"), "{}", text(&again));
}

#[tokio::test]
async fn a_purged_binary_log_stops_following_and_the_delta_pass_takes_over() {
    let (source, target) = pair().await;
    let (src, tgt) = (source.url(), target.url());
    seed(&src).await;
    let job = tempfile::tempdir().unwrap();
    assert_exit(&offload(job.path(), &copy_args(&src, &tgt)), 0);

    let mut c = connect(&src).await;
    for i in 1..=5 {
        write_round(&mut c, i, true).await;
    }
    c.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let (newest, _) = head(&src).await;
    c.query_drop(format!("PURGE BINARY LOGS TO '{newest}'"))
        .await
        .unwrap();

    let out = offload(job.path(), &["follow", "--poll", "1"]);
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("no longer holds binary log")
            && said.contains("offload copy --resume --delta"),
        "{said}"
    );
    // The way on it names works: the delta pass brings the target level with the source.
    assert_exit(&offload(job.path(), &["copy", "--resume", "--delta"]), 0);
    assert_safe_to_switch(&offload(job.path(), &["verify"]));
}

#[tokio::test]
async fn the_plan_says_whether_the_source_can_be_followed() {
    let (source, target) = pair().await;
    let plain = OwnMariadb::plain().await;
    seed(&source.url()).await;
    seed(&plain.url()).await;
    let job = tempfile::tempdir().unwrap();
    let check = |from: &str| {
        let out = offload(
            job.path(),
            &[
                "plan",
                "--json",
                "--from-mysql",
                from,
                "--to-mysql",
                &target.url(),
                "--databases",
                DB,
            ],
        );
        assert_exit(&out, 0);
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        plan.to_string()
    };
    let ready = check(&source.url());
    assert!(
        ready.contains("ready to follow: binlog_format=ROW"),
        "{ready}"
    );
    let not = check(&plain.url());
    assert!(
        not.contains("the source writes no binary log")
            && not.contains("--log-bin --binlog-format=ROW"),
        "{not}"
    );
}
