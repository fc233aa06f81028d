//! Tutor plugins with a MySQL database and user of their own, on a Tutor root where real Tutor
//! 22.0.3 enabled tutor-discovery 22.0.0 and tutor-notes 22.0.0 (from PyPI, installed by
//! `scripts/stack`): offload reads their settings as Tutor does, the plan checks that the copy
//! takes their databases along, `copy --create-users` gives the real MariaDB target their users
//! with Tutor's grants, verify is clean, and after cutover the settings Tutor renders for each
//! plugin reach its copied data on the new server.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use offload::tutor::TutorConfig;

/// Runs offload with this Tutor root and job folder, without `TUTOR_*` from the environment.
fn offload_root(root: &Path, job: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TUTOR_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .arg("--job")
        .arg(job)
        .arg("--tutor-root")
        .arg(root)
        .env_remove("OFFLOAD_FROM_MYSQL_PASSWORD")
        .env_remove("OFFLOAD_TO_MYSQL_PASSWORD")
        .env_remove("OFFLOAD_FAILPOINT")
        .env("NO_COLOR", "1")
        .output()
        .expect("run offload")
}

/// A Tutor root with the discovery and notes plugins enabled by real Tutor and `config save`
/// run, plus `--set` values.
fn root_with_plugins(set: &[String]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    tutor(root.path(), &["config", "save"]);
    let mut cmd = Command::new(tutor_bin());
    let enabled = cmd
        .args(["plugins", "enable", "discovery", "notes"])
        .env("TUTOR_ROOT", root.path())
        .env("TUTOR_PLUGINS_ROOT", root.path().join("no-plugins"))
        .output()
        .unwrap();
    assert!(
        enabled.status.success(),
        "tutor-discovery and tutor-notes must be installed beside Tutor ({}; scripts/stack \
         installs them): {}",
        tutor_bin().display(),
        String::from_utf8_lossy(&enabled.stderr)
    );
    let mut save = vec!["config", "save"];
    for s in set {
        save.extend(["--set", s.as_str()]);
    }
    tutor(root.path(), &save);
    root
}

fn printvalue(root: &Path, key: &str) -> String {
    tutor(root, &["config", "printvalue", key])
        .trim()
        .to_string()
}

/// offload's reading of the plugins' settings, defaults included, is Tutor's.
#[test]
fn plugin_settings_read_as_real_tutor_resolves_them() {
    let root = root_with_plugins(&["NOTES_MYSQL_USERNAME=notes_app".into()]);
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let found = cfg.mysql_plugins().unwrap();
    let names: Vec<&str> = found.plugins.iter().map(|p| p.plugin.as_str()).collect();
    assert_eq!(names, ["discovery", "notes"]);
    for p in &found.plugins {
        assert_eq!(p.database, printvalue(root.path(), &p.key("DATABASE")));
        assert_eq!(p.username, printvalue(root.path(), &p.key("USERNAME")));
        let password = p.password.clone().expect("config save generated it");
        assert_eq!(password, printvalue(root.path(), &p.key("PASSWORD")));
    }
    assert_eq!(
        found.plugins[0].database, "discovery",
        "the plugin's default"
    );
    assert_eq!(found.plugins[1].username, "notes_app");
}

/// `DATABASES["default"]` of a settings file Tutor rendered: host, port, name, user, password.
fn rendered_database(path: &Path) -> (String, u16, String, String, String) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let block = &text[text.find("DATABASES = {").expect("DATABASES")..];
    let field = |name: &str| -> String {
        let at = block
            .find(&format!("\"{name}\": "))
            .unwrap_or_else(|| panic!("{name}"));
        let rest = &block[at + name.len() + 4..];
        let end = rest.find(",\n").unwrap();
        rest[..end].trim_matches('"').to_string()
    };
    (
        field("HOST"),
        field("PORT").parse().unwrap(),
        field("NAME"),
        field("USER"),
        field("PASSWORD"),
    )
}

/// Rows the plugin's own account reads from its table, with the settings Tutor rendered for it.
async fn read_as_plugin(settings: &Path, table: &str) -> Result<i64, String> {
    let (host, port, name, user, password) = rendered_database(settings);
    let url = format!("mysql://{user}:{password}@{host}:{port}/{name}");
    let opts = mysql_async::Opts::from_url(&url).unwrap();
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| e.to_string())?;
    use mysql_async::prelude::Queryable;
    let n: Option<i64> = conn
        .query_first(format!("SELECT COUNT(*) FROM `{name}`.`{table}`"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(n.unwrap_or(0))
}

#[tokio::test]
async fn plugin_databases_and_users_move_with_mysql() {
    let pid = std::process::id();
    let edx = TestDb::new("pl_edx").await;
    let disc = TestDb::new("pl_disc").await;
    let notes = TestDb::new("pl_notes").await;
    let disc_user = format!("it_pl_disc_{pid}");
    let notes_user = format!("it_pl_notes_{pid}");
    let edx_user = format!("it_pl_edx_{pid}");
    let src = mysql_source();
    let tgt = mysql_target();
    let target = url::Url::parse(&tgt).unwrap();

    // The source: Open edX's database and each plugin's, as their migrations would leave them.
    edx.load_fixture();
    for (db, sql) in [
        (
            &disc.name,
            "CREATE TABLE course_metadata_course (id INT PRIMARY KEY, uuid CHAR(36) NOT NULL, \
             title VARCHAR(255)) ; INSERT INTO course_metadata_course SELECT seq, UUID(), \
             CONCAT('Course ', seq) FROM seq_1_to_250",
        ),
        (
            &notes.name,
            "CREATE TABLE api_note (id BIGINT AUTO_INCREMENT PRIMARY KEY, user_id VARCHAR(255), \
             text LONGTEXT) ; INSERT INTO api_note (user_id, text) SELECT CONCAT('u', seq), \
             REPEAT('note ', seq) FROM seq_1_to_120",
        ),
    ] {
        exec(&src, &format!("CREATE DATABASE `{db}`")).await;
        for statement in sql.split(" ; ") {
            exec(&format!("{src}/{db}"), statement).await;
        }
    }

    let root = root_with_plugins(&[
        format!("OPENEDX_MYSQL_DATABASE={}", edx.name),
        format!("OPENEDX_MYSQL_USERNAME={edx_user}"),
        format!("DISCOVERY_MYSQL_DATABASE={}", disc.name),
        format!("DISCOVERY_MYSQL_USERNAME={disc_user}"),
        format!("NOTES_MYSQL_DATABASE={}", notes.name),
        format!("NOTES_MYSQL_USERNAME={notes_user}"),
    ]);
    // The source is reached as Tutor's root user, with the password Tutor generated.
    let root_user = format!("it_pl_root_{pid}");
    let root_password = printvalue(root.path(), "MYSQL_ROOT_PASSWORD");
    exec(
        &src,
        &format!("CREATE USER IF NOT EXISTS '{root_user}'@'%' IDENTIFIED BY '{root_password}'"),
    )
    .await;
    exec(
        &src,
        &format!("GRANT ALL PRIVILEGES ON *.* TO '{root_user}'@'%' WITH GRANT OPTION"),
    )
    .await;
    let source = url::Url::parse(&src).unwrap();
    let from = format!(
        "mysql://{root_user}@{}:{}",
        source.host_str().unwrap(),
        source.port().unwrap()
    );
    let job = root.path().join("job");
    let flags = |databases: &[&String]| -> Vec<String> {
        let list: Vec<&str> = databases.iter().map(|d| d.as_str()).collect();
        vec![
            "--from-mysql".into(),
            from.clone(),
            "--to-mysql".into(),
            tgt.clone(),
            "--databases".into(),
            list.join(","),
        ]
    };
    let run = |cmd: &str, flags: &[String], extra: &[&str]| {
        let mut a = vec![cmd];
        a.extend(flags.iter().map(String::as_str));
        a.extend_from_slice(extra);
        offload_root(root.path(), &job, &a)
    };

    // A selection that leaves a plugin's database behind fails the plan, naming it.
    let narrow = flags(&[&edx.name, &disc.name]);
    let plan = run("plan", &narrow, &[]);
    assert_exit(&plan, 2);
    let shown = text(&plan);
    assert!(
        shown.contains("plugin notes")
            && shown.contains(&format!("database `{}` is on the source", notes.name))
            && shown.contains("--databases does not name it"),
        "{shown}"
    );

    // The whole selection: every plugin's database is listed as copied, users as created.
    let all = flags(&[&edx.name, &disc.name, &notes.name]);
    let plan = run("plan", &all, &["--json"]);
    assert_exit(&plan, 0);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let checks = plan["stores"][0]["survey"]["checks"].as_array().unwrap();
    for (plugin, db, user) in [
        ("discovery", &disc.name, &disc_user),
        ("notes", &notes.name, &notes_user),
    ] {
        let check = checks
            .iter()
            .find(|c| c["name"] == format!("plugin {plugin}"))
            .unwrap_or_else(|| panic!("no check for {plugin}: {checks:?}"));
        let detail = check["detail"].as_str().unwrap();
        assert_eq!(check["ok"], true, "{detail}");
        assert!(
            detail.contains(&format!("database `{db}` is copied")),
            "{detail}"
        );
        let users =
            format!("user `{user}` is created on the target by `offload copy --create-users`");
        assert!(
            detail.contains(&users) && detail.contains(&format!("--limit={plugin}")),
            "{detail}"
        );
    }

    // Copy with the users, then verify.
    let copy = run("copy", &all, &["--create-users", "--no-progress"]);
    assert_exit(&copy, 0);
    for user in [&disc_user, &notes_user, &edx_user] {
        assert!(
            text(&copy).contains(&format!("user `{user}`")),
            "{}",
            text(&copy)
        );
    }
    assert_safe_to_switch(&offload_root(root.path(), &job, &["verify"]));

    // Each plugin's user has exactly Tutor's grant: all on its own database, nothing else.
    for (user, db, other) in [
        (&disc_user, &disc.name, &notes.name),
        (&notes_user, &notes.name, &edx.name),
    ] {
        let grants: Vec<String> = rows(&tgt, &format!("SHOW GRANTS FOR '{user}'@'%'"))
            .await
            .into_iter()
            .map(|r| match &r[0] {
                mysql_async::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                v => format!("{v:?}"),
            })
            .collect();
        assert!(
            grants.iter().any(
                |g| g.starts_with(&format!("GRANT ALL PRIVILEGES ON `{db}`.* TO `{user}`@`%`"))
            ),
            "{grants:?}"
        );
        assert!(
            !grants.iter().any(|g| g.contains(other.as_str())),
            "{grants:?}"
        );
    }

    // Cutover: MYSQL_HOST moves, the plugins' settings stay, and the runbook names their inits.
    let before = TutorConfig::load_with_env(root.path(), []).unwrap();
    let cut = offload_root(root.path(), &job, &["cutover"]);
    assert_exit(&cut, 0);
    let shown = text(&cut);
    for plugin in ["discovery", "notes"] {
        assert!(
            shown.contains(&format!(
                "tutor local do init --limit={plugin}    # creates user"
            )),
            "{shown}"
        );
    }
    assert!(
        !shown.contains("DISCOVERY_MYSQL") && !shown.contains("NOTES_MYSQL"),
        "{shown}"
    );
    assert_eq!(
        printvalue(root.path(), "MYSQL_HOST"),
        target.host_str().unwrap()
    );
    for key in [
        "DISCOVERY_MYSQL_PASSWORD",
        "NOTES_MYSQL_PASSWORD",
        "DISCOVERY_MYSQL_DATABASE",
        "NOTES_MYSQL_USERNAME",
    ] {
        assert_eq!(
            printvalue(root.path(), key),
            before.get_str(key).unwrap(),
            "{key}"
        );
    }

    // What the plugins' containers would get after `tutor config save` reaches their data on
    // the new server with their own accounts.
    tutor(root.path(), &["config", "save"]);
    let env = root.path().join("env/plugins");
    let disc_settings = env.join("discovery/apps/settings/tutor/production.py");
    let notes_settings = env.join("notes/apps/settings/tutor.py");
    assert_eq!(
        rendered_database(&disc_settings).0,
        target.host_str().unwrap()
    );
    assert_eq!(
        read_as_plugin(&disc_settings, "course_metadata_course").await,
        Ok(250)
    );
    assert_eq!(read_as_plugin(&notes_settings, "api_note").await, Ok(120));

    for user in [&disc_user, &notes_user, &edx_user] {
        exec(&tgt, &format!("DROP USER IF EXISTS '{user}'@'%'")).await;
    }
    exec(&src, &format!("DROP USER IF EXISTS '{root_user}'@'%'")).await;
    for db in [edx, disc, notes] {
        db.drop_both().await;
    }
}
