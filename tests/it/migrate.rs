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
    let killed = |out: &Output, point: &str| {
        assert_eq!(
            out.status.signal(),
            Some(9),
            "expected SIGKILL at {point}; output:\n{}",
            text(out)
        );
    };
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
