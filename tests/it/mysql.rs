//! MySQL store against real MariaDB servers: full copy and verify, type fidelity, named
//! differences, crash and resume, and the inputs that must stop a job before it writes.

use std::os::unix::process::ExitStatusExt;

use mysql_async::Value;

use crate::common::*;

#[tokio::test]
async fn fixture_copies_and_verifies_clean() {
    let db = TestDb::new("fixture").await;
    db.load_fixture();
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);

    let plan = offload(job.path(), &args("plan", &f, &["--json"]));
    assert_exit(&plan, 0);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let units = plan["stores"][0]["units"].as_array().unwrap();
    assert!(
        units.iter().any(|u| u["object"] == "auth_user"),
        "plan lists the tables"
    );

    let copy = offload(job.path(), &args("copy", &f, &["--no-progress"]));
    assert_exit(&copy, 0);
    let verify = offload(job.path(), &args("verify", &[], &[]));
    assert_safe_to_switch(&verify);

    // An independent witness: mariadb-dump of both sides (data, AUTO_INCREMENT counters, views,
    // routines, triggers, events) is identical.
    let (a, b) = (
        dump(&mysql_source(), &db.name),
        dump(&mysql_target(), &db.name),
    );
    assert!(
        a.contains("offload_enrollment_audit"),
        "the fixture has a trigger"
    );
    assert!(a == b, "source and target dumps differ");
    db.drop_both().await;
}

/// Every awkward type, written by the test, read back from the target as the server renders it;
/// rows stream through LOAD DATA LOCAL INFILE.
#[tokio::test]
async fn every_type_round_trips() {
    every_type_round_trips_with("types", &[]).await;
}

/// The same through multi-row REPLACE statements, the path for targets without LOCAL INFILE.
#[tokio::test]
async fn every_type_round_trips_through_replace_statements() {
    every_type_round_trips_with("typesrep", &[("OFFLOAD_MYSQL_LOCAL_INFILE", "off")]).await;
}

async fn every_type_round_trips_with(tag: &str, env: &[(&str, &str)]) {
    let db = TestDb::new(tag).await;
    let src = mysql_source();
    exec(
        &src,
        &format!(
            "CREATE DATABASE `{}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            db.name
        ),
    )
    .await;
    let table = format!("`{}`.`t`", db.name);
    exec(
        &src,
        &format!(
            "CREATE TABLE {table} (
            id INT PRIMARY KEY,
            ti TINYINT, tu TINYINT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
            de DECIMAL(65,30), fl FLOAT, do DOUBLE,
            b1 BIT(1), b64 BIT(64),
            d DATE, dt DATETIME, dt6 DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME(6), yr YEAR,
            vc VARCHAR(100), tx TEXT, l1 VARCHAR(20) CHARACTER SET latin1,
            bn BINARY(4), vb VARBINARY(300), bl LONGBLOB,
            en ENUM('a','b','c d'), st SET('x','y','z'),
            js JSON, g GEOMETRY NULL,
            gen_v INT AS (ti + 1) VIRTUAL, gen_s VARCHAR(120) AS (CONCAT(vc, '!')) STORED,
            hidden_col INT INVISIBLE DEFAULT 7
        ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC"
        ),
    )
    .await;
    let all_bytes: String = (0..=255u8).map(|b| format!("{b:02X}")).collect();
    exec(&src, "SET SESSION sql_mode = ''").await;
    let mut c = connect(&src).await;
    use mysql_async::prelude::Queryable;
    c.query_drop("SET SESSION sql_mode = ''").await.unwrap();
    c.query_drop(format!(
        "INSERT INTO {table} (id, ti, tu, bi, bu, de, fl, do, b1, b64, d, dt, dt6, ts, tm, yr, vc, tx, l1, bn, vb, bl, en, st, js, g, hidden_col) VALUES
        (1, -128, 255, -9223372036854775808, 18446744073709551615,
         '-12345678901234567890123456789012345.123456789012345678901234567891', 3.4028234e38, 2.2250738585072014e-308,
         b'1', b'1111111111111111111111111111111111111111111111111111111111111111',
         '0000-00-00', '0000-00-00 00:00:00', '2024-02-29 23:59:59.999999', '2038-01-19 03:14:07.999', '-838:59:59.000000', 2155,
         'Zoë 🎓 李 \\'quoted\\' back\\\\slash', 'line1\\nline2\\r\\n\\0nul\\Z', 'caf\\xE9',
         X'00010203', X'{all_bytes}', X'{all_bytes}{all_bytes}',
         'c d', 'x,z', '{{\"a\": [1, 2.5, null, \"\\\\u00e9\"]}}', ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))'), 42),
        (2, 0, 0, 0, 0, 0.1, 0.1, 0.1, b'0', b'0', '1000-01-01', '1970-01-01 00:00:00', '1969-12-31 23:59:59.000001', NULL, '00:00:00.000001', 1901,
         '', '', '', X'', X'', X'', 'a', '', '[]', ST_GeomFromText('POINT(1.5 -2.25)'), 0),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (4, 1, 1, 1, 1, 1e-30, 1.17549435e-38, 4.9e-324, b'1', b'1000000000000000000000000000000000000000000000000000000000000001',
         '9999-12-31', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01.000', '838:59:59.999999', 0,
         REPEAT('🎓', 100), REPEAT('x', 60000), 'ÿ', X'FFFFFFFF', X'00', REPEAT(X'00FF', 40000),
         'b', 'x,y,z', '\"just a string\"', NULL, -1)"
    )).await.unwrap();
    // Text that looks like the LOAD DATA format's own markers: the word NULL, \N, tabs, line
    // ends and backslashes, in text, binary and JSON columns.
    c.query_drop(format!(
        r#"INSERT INTO {table} (id, yr, vc, tx, l1, bn, vb, bl, st, js, hidden_col) VALUES
        (5, 2000, 'NULL', '\\N', 'tab\there\\', X'5C000A09', X'5C4E', X'090A0D5C005C4E0D0A', 'y',
         '["\\\\N", "a\\tb", "NULL"]', 5)"#
    ))
    .await
    .unwrap();
    drop(c);

    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    assert_exit(&offload_env(job.path(), &args("copy", &f, &[]), env), 0);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);

    // Read both sides as the server renders them, with every float widened to DOUBLE (which
    // the server prints exactly) and binary columns in hex.
    let q = format!(
        "SELECT id, ti, tu, bi, bu, de, CAST(fl AS DOUBLE), do, HEX(b1), HEX(b64), d, dt, dt6, ts, tm, yr,
                HEX(vc), HEX(tx), HEX(l1), HEX(bn), HEX(vb), HEX(bl), en, st, js, ST_AsText(g), HEX(g),
                gen_v, gen_s, hidden_col, vc IS NULL, vc = ''
         FROM {table} ORDER BY id"
    );
    let (a, b) = (rows(&src, &q).await, rows(&mysql_target(), &q).await);
    assert_eq!(a.len(), 5);
    assert_eq!(a, b, "a value changed on the way");
    // And the values are what the test wrote, not just equal on both sides.
    let row1 = &a[0];
    let s = |v: &Value| match v {
        Value::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    };
    assert_eq!(s(&row1[4]), "18446744073709551615");
    assert_eq!(
        s(&row1[5]),
        "-12345678901234567890123456789012345.123456789012345678901234567891"
    );
    assert_eq!(s(&row1[11]), "0000-00-00 00:00:00");
    assert_eq!(s(&row1[14]), "-838:59:59.000000");
    assert_eq!(s(&row1[20]), all_bytes);
    assert_eq!(s(&row1[29]), "42", "invisible column carried");
    let vc = hex::decode(s(&row1[16])).unwrap();
    assert_eq!(
        String::from_utf8(vc).unwrap(),
        "Zoë 🎓 李 'quoted' back\\slash"
    );
    assert_eq!(
        s(&row1[25]),
        "POLYGON((0 0,10 0,10 10,0 10,0 0))",
        "spatial value carried"
    );
    let row3 = &b[2];
    assert!(
        row3[1..26].iter().all(|v| *v == Value::NULL),
        "NULLs stay NULL: {row3:?}"
    );
    assert_eq!(s(&b[1][31]), "1", "empty string stays empty, not NULL");
    let row5 = &b[4];
    let unhex = |v: &Value| hex::decode(s(v)).unwrap();
    assert_eq!(unhex(&row5[16]), b"NULL", "the word NULL stays a string");
    assert_eq!(unhex(&row5[17]), b"\\N", "\\N stays a string");
    assert_eq!(unhex(&row5[18]), b"tab\there\\");
    assert_eq!(s(&row5[19]), "5C000A09");
    assert_eq!(s(&row5[20]), "5C4E");
    assert_eq!(s(&row5[21]), "090A0D5C005C4E0D0A");
    assert_eq!(s(&row5[24]), r#"["\\N", "a\tb", "NULL"]"#);
    assert_eq!(s(&row5[15]), "2000", "YEAR 2000 is not YEAR 0");
    assert_eq!(s(&b[3][15]), "0000", "YEAR 0 is not YEAR 2000");

    let (ddl_a, ddl_b) = (
        rows(&src, &format!("SHOW CREATE TABLE {table}")).await,
        rows(&mysql_target(), &format!("SHOW CREATE TABLE {table}")).await,
    );
    assert_eq!(
        ddl_a, ddl_b,
        "schema (charset, generated and invisible columns, row format) carried"
    );
    db.drop_both().await;
}

#[tokio::test]
async fn a_changed_byte_is_named() {
    let db = TestDb::new("diff").await;
    db.load_fixture();
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);

    let tgt = mysql_target();
    let t = |name: &str| format!("`{}`.`{name}`", db.name);
    // One byte of one row; one row gone; one row added; one row of a keyless table changed.
    exec(&tgt, &format!("UPDATE {} SET first_name = CONCAT(LEFT(first_name, CHAR_LENGTH(first_name) - 1), 'Q') WHERE id = 57", t("auth_user"))).await;
    exec(
        &tgt,
        &format!("DELETE FROM {} WHERE id = 3", t("student_courseenrollment")),
    )
    .await;
    exec(
        &tgt,
        &format!(
            "INSERT INTO {} (app, name, applied) VALUES ('extra', 'x', NOW())",
            t("django_migrations")
        ),
    )
    .await;

    let out = offload(job.path(), &args("verify", &[], &["--chunk-rows", "25"]));
    assert_exit(&out, 1);
    let report = text(&out);
    assert!(report.contains("NOT safe to switch"), "{report}");
    assert!(
        report.contains(&format!("{}.auth_user", db.name)) && report.contains("differs: id=57"),
        "{report}"
    );
    assert!(report.contains("missing on target: id=3"), "{report}");
    assert!(
        report.contains(&format!("{}.django_migrations", db.name))
            && report.contains("extra on target"),
        "{report}"
    );
    assert_eq!(
        report.matches("DIFFERS").count(),
        3,
        "only the changed tables differ: {report}"
    );

    let json = offload(job.path(), &args("verify", &[], &["--json"]));
    assert_exit(&json, 1);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let bad: Vec<&str> = v["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["differences"].as_array().is_some_and(|d| !d.is_empty()))
        .map(|u| u["object"].as_str().unwrap())
        .collect();
    assert_eq!(
        bad,
        ["auth_user", "django_migrations", "student_courseenrollment"]
    );
    let status = offload(job.path(), &["status"]);
    assert_exit(&status, 0);
    assert!(
        text(&status).contains("differs"),
        "status shows the verify outcome"
    );
    db.drop_both().await;
}

/// A table big enough for many batches, plus a keyless one, on top of the fixture.
async fn seed_bulk(db: &TestDb, rows: u32) {
    let src = mysql_source();
    exec(&src, &format!(
        "CREATE TABLE `{0}`.`bulk` (id BIGINT PRIMARY KEY, user_id INT NOT NULL, state TEXT, KEY (user_id)) ENGINE=InnoDB", db.name)).await;
    exec(&src, &format!(
        "INSERT INTO `{0}`.`bulk` SELECT seq, seq % 97, CONCAT('{{\"position\": ', seq, ', \"done\": true}}') FROM `{0}`.seq_1_to_{rows}", db.name)).await;
    exec(
        &src,
        &format!(
            "CREATE TABLE `{0}`.`keyless_log` (at DATETIME, msg VARCHAR(40)) ENGINE=InnoDB",
            db.name
        ),
    )
    .await;
    exec(&src, &format!(
        "INSERT INTO `{0}`.`keyless_log` SELECT '2024-01-01 00:00:00', CONCAT('m', seq % 10) FROM `{0}`.seq_1_to_500", db.name)).await;
    // Fresh statistics, as the plan sizes tables from them.
    exec(
        &src,
        &format!("ANALYZE TABLE `{0}`.`bulk`, `{0}`.`keyless_log`", db.name),
    )
    .await;
}

#[tokio::test]
async fn kill_nine_at_three_points_then_resume() {
    let db = TestDb::new("resume").await;
    db.load_fixture();
    seed_bulk(&db, 30_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let copy = |resume: bool, point: Option<&str>| {
        let mut a = args("copy", &f, &["--batch-rows", "1000", "--parallel", "2"]);
        if resume {
            a.push("--resume");
        }
        let env: Vec<(&str, &str)> = point
            .map(|p| vec![("OFFLOAD_FAILPOINT", p)])
            .unwrap_or_default();
        offload_env(job.path(), &a, &env)
    };
    let killed = |out: &std::process::Output| {
        assert_eq!(
            out.status.signal(),
            Some(9),
            "expected SIGKILL; output:\n{}",
            text(out)
        );
    };
    killed(&copy(false, Some("after-prepare")));
    // Stopped inside the bulk table (the only one bigger than a batch), whatever order the units
    // run in.
    killed(&copy(true, Some("after-partial-batch:7")));
    // Some of the bulk table is in, and the catalog knows how far.
    let status = offload(job.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let bulk = status["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["unit"]["object"] == "bulk")
        .unwrap();
    assert!(
        bulk["cursor"].is_array(),
        "the bulk table has a saved cursor: {bulk}"
    );
    killed(&copy(true, Some("before-finish")));
    let last = copy(true, None);
    assert_exit(&last, 0);
    assert!(
        text(&last).contains("already done earlier"),
        "{}",
        text(&last)
    );

    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    let (src, tgt) = (mysql_source(), mysql_target());
    for table in ["bulk", "keyless_log", "auth_user"] {
        let name = format!("`{}`.`{table}`", db.name);
        assert_eq!(
            count(&src, &name).await,
            count(&tgt, &name).await,
            "no duplicate or lost rows in {table}"
        );
    }
    assert_eq!(
        dump(&src, &db.name),
        dump(&tgt, &db.name),
        "triggers, views and routines created after the last resume"
    );
    db.drop_both().await;
}

#[tokio::test]
async fn big_tables_split_into_key_ranges() {
    let db = TestDb::new("split").await;
    exec(&mysql_source(), &format!("CREATE DATABASE `{}`", db.name)).await;
    seed_bulk(&db, 40_000).await;
    let job = tempfile::tempdir().unwrap();
    // A tiny split size forces the bulk table into ranges that copy and verify separately.
    let f = flags(&db.name);
    let ranges = planned_units(
        &offload(
            job.path(),
            &args("plan", &f, &["--json", "--split-bytes", "262144"]),
        ),
        "bulk",
    )
    .len();
    assert!(ranges > 1, "the bulk table is split: {ranges} unit(s)");
    assert_exit(
        &offload(
            job.path(),
            &args("copy", &f, &["--parallel", "3", "--split-bytes", "262144"]),
        ),
        0,
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    let name = format!("`{}`.`bulk`", db.name);
    assert_eq!(count(&mysql_target(), &name).await, 40_000);
    db.drop_both().await;
}

/// The delta pass copies again only the rows around each change, not the whole chunks holding
/// them: updated rows, a row deleted on the source and rows inserted in the middle and at the end.
#[tokio::test]
async fn delta_copies_only_the_rows_that_changed_not_their_chunks() {
    let db = crate::stop::seeded("rowdelta", 10_000).await;
    let src = mysql_source();
    let table = format!("`{}`.`bulk`", db.name);
    exec(&src, &format!("DELETE FROM {table} WHERE id = 7000")).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);

    exec(
        &src,
        &format!("UPDATE {table} SET note = 'edited' WHERE id IN (150, 4321, 4322, 9000)"),
    )
    .await;
    exec(&src, &format!("DELETE FROM {table} WHERE id = 2500")).await;
    exec(
        &src,
        &format!("INSERT INTO {table} VALUES (7000, 'back'), (10001, 'new')"),
    )
    .await;
    let out = offload(
        job.path(),
        &args(
            "copy",
            &[],
            &["--resume", "--delta", "--chunk-rows", "1000"],
        ),
    );
    assert_exit(&out, 0);
    // Ranges: 150; 4321-4322; 9000; 7000; 10001; and 2500, whose range ends at 2501, the next
    // source row, so 2501 is written again too: seven records in six ranges.
    assert!(
        text(&out).contains(
            "1 of 1 unit(s) had changed; 6 key range(s) in 6 chunk(s), 7 record(s) copied again"
        ),
        "{}",
        text(&out)
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    assert_eq!(count(&mysql_target(), &table).await, 10_000);
    db.drop_both().await;
}

#[tokio::test]
async fn occupied_target_is_refused_untouched_then_skip_and_replace() {
    let db = TestDb::new("occupied").await;
    db.load_fixture();
    let tgt = mysql_target();
    exec(&tgt, &format!("CREATE DATABASE `{}`", db.name)).await;
    exec(
        &tgt,
        &format!(
            "CREATE TABLE `{}`.`auth_user` (id INT PRIMARY KEY, note TEXT)",
            db.name
        ),
    )
    .await;
    exec(
        &tgt,
        &format!(
            "INSERT INTO `{}`.`auth_user` VALUES (1, 'keep me')",
            db.name
        ),
    )
    .await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);

    let out = offload(job.path(), &args("copy", &f, &[]));
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("already holds data") && text(&out).contains("--if-exists"),
        "{}",
        text(&out)
    );
    let tables = rows(
        &tgt,
        &format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}'",
            db.name
        ),
    )
    .await;
    assert_eq!(tables.len(), 1, "nothing else was created on the target");
    assert_eq!(count(&tgt, &format!("`{}`.`auth_user`", db.name)).await, 1);
    // Refused before anything was written: no job, and the folder (which was there) as it was.
    assert_eq!(
        std::fs::read_dir(job.path()).unwrap().count(),
        0,
        "the job folder is left empty, as it was"
    );
    // A folder that was not there is not left behind either.
    let missing = job.path().join("not-there");
    let out = offload(&missing, &args("copy", &f, &[]));
    assert_exit(&out, 2);
    assert!(text(&out).contains("already holds data"), "{}", text(&out));
    assert!(!missing.exists(), "no folder made for a refused job");

    // skip, as the refusal suggests (the same command, no --resume): the occupied table is left
    // alone, the rest is copied, and verify says auth_user differs.
    assert_exit(
        &offload(job.path(), &args("copy", &f, &["--if-exists", "skip"])),
        0,
    );
    assert_eq!(count(&tgt, &format!("`{}`.`auth_user`", db.name)).await, 1);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 1);

    // replace: a fresh job drops and copies it again.
    assert_exit(
        &offload(
            job.path(),
            &args("copy", &f, &["--restart", "--if-exists", "replace"]),
        ),
        0,
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    db.drop_both().await;
}

#[tokio::test]
async fn bad_inputs_stop_with_exit_2_and_nothing_written() {
    let db = TestDb::new("badin").await;
    db.load_fixture();
    let tgt = mysql_target();
    let job = tempfile::tempdir().unwrap();
    let secret = format!("Wr0ng-{}-pw", std::process::id());
    let user = format!("it_pw_{}", std::process::id());
    exec(
        &tgt,
        &format!("CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'right-one'"),
    )
    .await;
    let target_host = url::Url::parse(&tgt).unwrap();
    let port = target_host.port().unwrap();

    // Wrong password, given through the environment: named as such, never printed.
    let wrong = [
        "copy".to_string(),
        "--from-mysql".into(),
        mysql_source(),
        "--to-mysql".into(),
        format!("mysql://{user}@127.0.0.1:{port}"),
        "--databases".into(),
        db.name.clone(),
    ];
    let wrong: Vec<&str> = wrong.iter().map(|s| s.as_str()).collect();
    let out = offload_env(
        job.path(),
        &wrong,
        &[("OFFLOAD_TO_MYSQL_PASSWORD", &secret)],
    );
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("1045") && text(&out).contains("password"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains(&secret),
        "the password leaked into the output"
    );

    // Unreachable host.
    let unreachable = vec![
        "copy",
        "--from-mysql",
        "mysql://root@127.0.0.1:1",
        "--to-mysql",
        "mysql://root@127.0.0.1:2",
    ];
    let out = offload(job.path(), &unreachable);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("cannot reach mysql source 127.0.0.1:1")
            && text(&out).contains("mysql target 127.0.0.1:2"),
        "{}",
        text(&out)
    );

    // Neither run wrote a job or a table.
    assert!(!job.path().join("catalog.sqlite").exists());
    let dbs = rows(&tgt, &format!("SHOW DATABASES LIKE '{}'", db.name)).await;
    assert!(dbs.is_empty(), "nothing was created on the target");

    // A resume against another target is refused, and says how to go on.
    let f = flags(&db.name);
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    let other = [
        "copy".to_string(),
        "--resume".into(),
        "--from-mysql".into(),
        mysql_source(),
        "--to-mysql".into(),
        format!("mysql://root@localhost:{port}"),
        "--databases".into(),
        db.name.clone(),
    ];
    let other: Vec<&str> = other.iter().map(|s| s.as_str()).collect();
    let out = offload(job.path(), &other);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("different setup") && text(&out).contains("--restart"),
        "{}",
        text(&out)
    );

    // Starting over on a job folder that holds a job needs --resume or --restart.
    let out = offload(job.path(), &args("copy", &f, &[]));
    assert_exit(&out, 2);
    assert!(text(&out).contains("--resume"), "{}", text(&out));
    exec(&tgt, &format!("DROP USER IF EXISTS '{user}'@'%'")).await;
    db.drop_both().await;
}

#[tokio::test]
async fn passwords_stay_out_of_output_and_catalog() {
    let db = TestDb::new("secret").await;
    db.load_fixture();
    let tgt = mysql_target();
    let user = format!("it_sec_{}", std::process::id());
    let secret = format!("Pw-{}-x9", std::process::id());
    exec(
        &tgt,
        &format!("CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{secret}'"),
    )
    .await;
    exec(
        &tgt,
        &format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'"),
    )
    .await;
    let port = url::Url::parse(&tgt).unwrap().port().unwrap();
    let job = tempfile::tempdir().unwrap();
    let pw_file = job.path().join("target-password");
    std::fs::write(&pw_file, format!("{secret}\n")).unwrap();
    let copy = vec![
        "copy".to_string(),
        "--json".into(),
        "-vv".into(),
        "--from-mysql".into(),
        mysql_source(),
        "--to-mysql".into(),
        format!("mysql://{user}@127.0.0.1:{port}"),
        "--to-mysql-password-file".into(),
        pw_file.display().to_string(),
        "--databases".into(),
        db.name.clone(),
    ];
    let copy: Vec<&str> = copy.iter().map(|s| s.as_str()).collect();
    let out = offload(job.path(), &copy);
    assert_exit(&out, 0);
    assert!(!text(&out).contains(&secret));
    // verify and status work from the job folder alone, finding the password file again.
    let out = offload(job.path(), &["verify", "--json"]);
    assert_exit(&out, 0);
    assert!(!text(&out).contains(&secret));
    let out = offload(job.path(), &["status", "--json"]);
    assert!(!text(&out).contains(&secret));
    for file in std::fs::read_dir(job.path()).unwrap() {
        let path = file.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("catalog")
        {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the password",
                path.display()
            );
        }
    }
    exec(&tgt, &format!("DROP USER IF EXISTS '{user}'@'%'")).await;
    db.drop_both().await;
}

#[tokio::test]
async fn create_users_from_tutor_config() {
    let db = TestDb::new("users").await;
    db.load_fixture();
    let root = tempfile::tempdir().unwrap();
    let user = format!("it_app_{}", std::process::id());
    std::fs::write(
        root.path().join("config.yml"),
        format!("OPENEDX_MYSQL_DATABASE: {0}\nOPENEDX_MYSQL_PASSWORD: app-pw-123\nOPENEDX_MYSQL_USERNAME: {user}\n", db.name),
    ).unwrap();
    let job = root.path().join("job");
    let f = flags(&db.name);
    let mut a = args("copy", &f, &["--create-users", "--job"]);
    let job_s = job.display().to_string();
    a.push(&job_s);
    let root_s = root.path().display().to_string();
    a.extend(["--tutor-root", &root_s]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(&a)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let port = url::Url::parse(&mysql_target()).unwrap().port().unwrap();
    let n = count(
        &format!("mysql://{user}:app-pw-123@127.0.0.1:{port}"),
        &format!("`{}`.`auth_user`", db.name),
    )
    .await;
    assert!(
        n > 0,
        "the application user can read its database on the target"
    );
    exec(
        &mysql_target(),
        &format!("DROP USER IF EXISTS '{user}'@'%'"),
    )
    .await;
    db.drop_both().await;
}

#[tokio::test]
async fn ctrl_c_saves_the_checkpoint_and_exits_130() {
    let db = TestDb::new("sigint").await;
    exec(&mysql_source(), &format!("CREATE DATABASE `{}`", db.name)).await;
    seed_bulk(&db, 20_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let batches = ["--batch-rows", "1000", "--parallel", "1"];
    let out = offload_env(
        job.path(),
        &args("copy", &f, &batches),
        &[("OFFLOAD_FAILPOINT", "sigint-after-batch:3")],
    );
    assert_exit(&out, 130);
    assert!(text(&out).contains("--resume"), "{}", text(&out));
    let name = format!("`{}`.`bulk`", db.name);
    let partial = count(&mysql_target(), &name).await;
    assert!(
        partial > 0 && partial < 20_000,
        "stopped part way: {partial} rows"
    );
    let mut resume = args("copy", &f, &batches);
    resume.push("--resume");
    assert_exit(&offload(job.path(), &resume), 0);
    assert_eq!(count(&mysql_target(), &name).await, 20_000);
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    db.drop_both().await;
}

/// A private MariaDB started with `--local-infile=0`, as some managed MySQL services run: the
/// shared target cannot be switched without disturbing other tests. Killed when dropped.
struct NoInfileServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NoInfileServer {
    async fn start() -> NoInfileServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // Its own tmpdir: a starting server deletes every `#sql*` file in its tmpdir, which in
        // /tmp would include the shared servers' temporary tables.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let tmpdir = format!("--tmpdir={}", tmp.display());
        let install = std::process::Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=8M",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(&tmpdir)
            .output()
            .expect("mariadb-install-db (installed by scripts/stack up)");
        assert!(install.status.success(), "{}", text(&install));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = ["/usr/sbin/mariadbd", "mariadbd"]
            .into_iter()
            .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
            .unwrap();
        let child = std::process::Command::new(server)
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                "--innodb-buffer-pool-size=32M",
                "--local-infile=0",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(&tmpdir)
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-error={}",
                dir.path().join("server.log").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mariadbd");
        let mut server = NoInfileServer {
            child,
            url: format!("mysql://root@127.0.0.1:{port}"),
            _dir: dir,
        };
        // Ready when it accepts a connection; bounded, and a server that exits fails at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let opts = mysql_async::Opts::from_url(&server.url).unwrap();
            if let Ok(c) = mysql_async::Conn::new(opts).await {
                let _ = c.disconnect().await;
                break;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the private MariaDB exited early: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the private MariaDB did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        server
    }
}

impl Drop for NoInfileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A target that refuses LOCAL INFILE gets the rows as REPLACE statements, on its own: the plan
/// says so beforehand, the copy summary afterwards, and the copy is exact.
#[tokio::test]
async fn target_without_local_infile_gets_replace_statements() {
    let db = TestDb::new("noinfile").await;
    db.load_fixture();
    seed_bulk(&db, 3_000).await;
    let target = NoInfileServer::start().await;
    let job = tempfile::tempdir().unwrap();
    let f = vec![
        "--from-mysql".to_string(),
        mysql_source(),
        "--to-mysql".into(),
        target.url.clone(),
        "--databases".into(),
        db.name.clone(),
    ];
    let plan = offload(job.path(), &args("plan", &f, &[]));
    assert_exit(&plan, 0);
    assert!(
        text(&plan).contains("REPLACE statements") && text(&plan).contains("local_infile"),
        "the plan names the slower path: {}",
        text(&plan)
    );
    let copy = offload(
        job.path(),
        &args("copy", &f, &["--no-progress", "--batch-rows", "700"]),
    );
    assert_exit(&copy, 0);
    assert!(
        text(&copy).contains("refused LOAD DATA LOCAL INFILE"),
        "the summary says rows went as statements: {}",
        text(&copy)
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    assert_eq!(
        dump(&mysql_source(), &db.name),
        dump(&target.url, &db.name),
        "source and target dumps differ"
    );
    let replaces = rows(&target.url, "SHOW GLOBAL STATUS LIKE 'Com_replace'").await;
    let replaces: u64 = String::from_utf8(match &replaces[0][1] {
        Value::Bytes(b) => b.clone(),
        other => panic!("{other:?}"),
    })
    .unwrap()
    .parse()
    .unwrap();
    assert!(replaces >= 5, "rows went as REPLACE statements: {replaces}");
    db.drop_both().await;
}

/// `--freeze-source` sets the source read_only for the run and sets it back on Ctrl-C and at the
/// end; after a kill the source stays read_only, the next run without the flag says so, and the
/// next run with it knows the freeze is this job's and releases it.
#[tokio::test]
async fn freeze_source_is_released_on_ctrl_c_and_after_a_killed_run() {
    let _freeze = mysql_source_freeze_lock().await;
    let _writable = WritableAtEnd;
    let db = TestDb::new("freeze").await;
    db.load_fixture();
    seed_bulk(&db, 5_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let copy = |extra: &[&str], point: Option<&str>| {
        let mut a = args("copy", &f, &["--batch-rows", "500", "--freeze-source"]);
        a.extend_from_slice(extra);
        let env: Vec<(&str, &str)> = point
            .map(|p| vec![("OFFLOAD_FAILPOINT", p)])
            .unwrap_or_default();
        offload_env(job.path(), &a, &env)
    };
    assert!(!mysql_source_read_only().await, "the test starts writable");

    let out = copy(&[], Some("sigint-after-batch:1"));
    assert_exit(&out, 130);
    assert!(
        !mysql_source_read_only().await,
        "Ctrl-C lets the writers in again"
    );

    let out = copy(&["--resume"], Some("after-batch:1"));
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert!(
        mysql_source_read_only().await,
        "a killed run leaves the source read_only"
    );

    let plain = offload(
        job.path(),
        &args("copy", &f, &["--resume", "--batch-rows", "500"]),
    );
    let said = text(&plain);
    assert!(
        said.contains("was stopped before letting them in") && said.contains("read_only = OFF"),
        "a run without --freeze-source says the source may still be held: {said}"
    );
    assert!(mysql_source_read_only().await, "and leaves it as it is");

    let out = copy(&["--resume"], None);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("earlier run of this job"),
        "{}",
        text(&out)
    );
    assert!(
        !mysql_source_read_only().await,
        "the run that found its own job's freeze released it"
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 0);
    db.drop_both().await;
}

/// Sets the shared source writable again however the test ends, so a failure here cannot leave
/// it read_only for the tests that follow.
struct WritableAtEnd;

impl Drop for WritableAtEnd {
    fn drop(&mut self) {
        mariadb_client(&mysql_source(), None, "SET GLOBAL read_only = OFF;");
    }
}

/// The client character set, connection collation and database collation each of a view,
/// routine and trigger was created under, as `information_schema` records them on one side.
async fn object_charsets(url: &str, db: &str) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for sql in [
        format!("SELECT 'view', TABLE_NAME, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, '' FROM information_schema.VIEWS WHERE TABLE_SCHEMA = '{db}' ORDER BY TABLE_NAME"),
        format!("SELECT ROUTINE_TYPE, ROUTINE_NAME, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, DATABASE_COLLATION FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{db}' ORDER BY ROUTINE_TYPE, ROUTINE_NAME"),
        format!("SELECT 'trigger', TRIGGER_NAME, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, DATABASE_COLLATION FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{db}' ORDER BY TRIGGER_NAME"),
    ] {
        all.extend(rows(url, &sql).await);
    }
    all
}

/// Views, routines and triggers created under `SET NAMES utf8mb3` keep that client character set
/// and collation on the target (routines and triggers their database collation too, though the
/// database's default changed since), their non-ASCII text intact; verify is clean, and names
/// an object recreated on the target under another client character set.
#[tokio::test]
async fn objects_keep_the_client_character_set_they_were_created_under() {
    let db = TestDb::new("charset").await;
    let (src, tgt) = (mysql_source(), mysql_target());
    let n = &db.name;
    mariadb_client(
        &src,
        None,
        &format!(
            "CREATE DATABASE `{n}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
USE `{n}`;
SET NAMES utf8mb4;
CREATE TABLE t (id INT PRIMARY KEY, label VARCHAR(20));
INSERT INTO t VALUES (1, 'one'), (2, 'two');
SET NAMES utf8mb3;
CREATE VIEW v AS SELECT id, CONCAT(label, 'é') AS l FROM t;
DELIMITER ;;
CREATE PROCEDURE p() BEGIN SELECT 'é' AS e; END;;
CREATE FUNCTION f(x INT) RETURNS VARCHAR(10) DETERMINISTIC RETURN CONCAT('é', x);;
CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.label = LOWER(NEW.label);;
DELIMITER ;
SET NAMES utf8mb4;
ALTER DATABASE `{n}` COLLATE utf8mb4_unicode_ci;
"
        ),
    );
    let source = object_charsets(&src, n).await;
    assert_eq!(source.len(), 4, "{source:?}");
    for row in &source {
        assert_eq!(row[2], Value::from("utf8mb3"), "{row:?}");
        assert_eq!(row[3], Value::from("utf8mb3_general_ci"), "{row:?}");
    }

    let job = tempfile::tempdir().unwrap();
    let f = flags(n);
    assert_exit(&offload(job.path(), &args("copy", &f, &[])), 0);
    assert_eq!(object_charsets(&tgt, n).await, source);
    let default = format!(
        "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{n}'"
    );
    assert_eq!(
        rows(&tgt, &default).await,
        vec![vec![Value::from("utf8mb4_unicode_ci")]],
        "the database's own collation is put back after each routine"
    );
    let query = format!("SELECT l, `{n}`.f(7) FROM `{n}`.v WHERE id = 1");
    assert_eq!(rows(&tgt, &query).await, rows(&src, &query).await);
    assert_eq!(
        rows(&tgt, &query).await,
        vec![vec![Value::from("oneé"), Value::from("é7")]]
    );
    assert_safe_to_switch(&offload(job.path(), &args("verify", &[], &[])));

    // The same trigger, created again on the target under another client character set.
    mariadb_client(
        &tgt,
        Some(n),
        "SET NAMES latin1;
DROP TRIGGER tr;
CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.label = LOWER(NEW.label);",
    );
    let out = offload(job.path(), &args("verify", &[], &[]));
    assert_exit(&out, 1);
    let report = text(&out);
    assert!(
        report.contains("tr")
            && report.contains(
                "trigger character_set_client differs: source `utf8mb3`, target `latin1`"
            )
            && report.contains("trigger collation_connection differs: source `utf8mb3_general_ci`, target `latin1_swedish_ci`"),
        "{report}"
    );
    assert!(
        !report.contains("definition differs"),
        "only the character set differs: {report}"
    );
    db.drop_both().await;
}

/// A copy whose only snapshot connection is killed mid-way (held after its second batch) goes on
/// outside the snapshot, and its summary says so instead of claiming one consistent snapshot.
#[tokio::test]
async fn a_lost_snapshot_connection_is_not_reported_as_one_snapshot() {
    use crate::stop::{seeded, Background, HELD};
    let db = seeded("snaplost", 5_000).await;
    // A source account of this test's own, so that only this copy's connections are killed.
    let user = format!("it_snap_{}", std::process::id());
    let src = mysql_source();
    exec(&src, &format!("DROP USER IF EXISTS '{user}'@'%'")).await;
    exec(
        &src,
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'snap-pw'"),
    )
    .await;
    exec(
        &src,
        &format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'"),
    )
    .await;
    let mut source_url = url::Url::parse(&src).unwrap();
    source_url.set_username(&user).unwrap();
    source_url.set_password(Some("snap-pw")).unwrap();
    let f: Vec<String> = vec![
        "--from-mysql".into(),
        source_url.to_string(),
        "--to-mysql".into(),
        mysql_target(),
        "--databases".into(),
        db.name.clone(),
    ];
    let job = tempfile::tempdir().unwrap();
    let batches = ["--batch-rows", "500", "--parallel", "1"];
    let mut run = Background::start(
        job.path(),
        &args("copy", &f, &batches),
        "hold-after-batch:2",
    );
    run.wait_for(HELD);
    let in_snapshot = rows(
        &src,
        &format!(
            "SELECT p.ID FROM information_schema.PROCESSLIST p JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID WHERE p.USER = '{user}'"
        ),
    )
    .await;
    assert_eq!(
        in_snapshot.len(),
        1,
        "one snapshot connection: {in_snapshot:?}"
    );
    let id = match &in_snapshot[0][0] {
        Value::Int(i) => *i as u64,
        Value::UInt(u) => *u,
        Value::Bytes(b) => String::from_utf8_lossy(b).parse().unwrap(),
        other => panic!("a connection id: {other:?}"),
    };
    exec(&src, &format!("KILL {id}")).await;
    run.release();
    let (status, stderr) = run.finish();
    exec(&src, &format!("DROP USER IF EXISTS '{user}'@'%'")).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let table = format!("`{}`.`bulk`", db.name);
    assert_eq!(count(&mysql_target(), &table).await, 5_000);

    let notes = mysql_notes(job.path());
    assert!(
        !notes.contains("one consistent snapshot (")
            && notes.contains("NOT one consistent snapshot")
            && notes.contains(&format!("{}.bulk", db.name))
            && notes.contains("--delta"),
        "the summary says batches were read outside the snapshot: {notes}"
    );
    db.drop_both().await;
}

/// The notes the MySQL store left in a job's history (its copy summary among them).
fn mysql_notes(job: &std::path::Path) -> String {
    let catalog = rusqlite::Connection::open(job.join("catalog.sqlite")).unwrap();
    let notes: Vec<String> = catalog
        .prepare("SELECT message FROM event WHERE store = 'mysql' AND level = 'info'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    notes.join("\n")
}

/// A run killed part-way through a table and resumed says that only its own rows came from its
/// snapshot, and that the unit begun by the earlier run came from another.
#[tokio::test]
async fn a_resumed_copy_claims_only_its_own_rows_for_its_snapshot() {
    let db = crate::stop::seeded("snapresume", 5_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let batches = ["--batch-rows", "500", "--parallel", "1"];
    let killed = offload_env(
        job.path(),
        &args("copy", &f, &batches),
        &[("OFFLOAD_FAILPOINT", "after-batch:2")],
    );
    assert_eq!(killed.status.signal(), Some(9), "{}", text(&killed));
    let mut resume = args("copy", &f, &batches);
    resume.push("--resume");
    let out = offload(job.path(), &resume);
    assert_exit(&out, 0);
    let said = text(&out);
    assert!(
        said.contains("this run's rows were read from one consistent snapshot")
            && said.contains(
                "1 unit(s) copied, wholly or in part, by an earlier run came from another"
            )
            && !said.contains("source read from one consistent snapshot"),
        "{said}"
    );
    assert!(mysql_notes(job.path()).contains("this run's rows"));
    db.drop_both().await;
}
