//! Cutover and rollback against real Tutor: offload's rewritten `config.yml` must be byte for
//! byte what `tutor config save --set ...` writes, Tutor must read the new values back and render
//! an environment without the offloaded services, and rollback must restore the original.
//!
//! Tutor comes from `OFFLOAD_TUTOR_BIN`, else `<repo>/.stack/venv/bin/tutor` (`scripts/stack up`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::tutor;
use offload::tutor::{
    apply_cutover, apply_edits, plan_cutover, rollback, ConfigEdits, CutoverPlan, CutoverTarget,
    MeilisearchTarget, MongodbTarget, MysqlTarget, RedisTarget, S3Target, TutorConfig, TutorError,
};

// ---- helpers -----------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn fixture_text() -> String {
    std::fs::read_to_string(repo().join("fixtures/tutor/config.yml")).expect("fixture config.yml")
}

/// A fresh Tutor root holding a copy of the fixture.
pub(crate) fn fixture_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yml"), fixture_text()).unwrap();
    dir
}

pub(crate) fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn mysql() -> CutoverTarget {
    CutoverTarget::Mysql(MysqlTarget {
        host: "mysql.db.internal".into(),
        port: 3307,
        root_username: "admin".into(),
        root_password: Some("0123".into()),
        app: Some((
            "openedx_app".into(),
            "a long pass phrase with spaces, commas, and 'quotes' that goes past eighty columns"
                .into(),
        )),
        plugin_users: vec![],
    })
}

fn mongodb() -> CutoverTarget {
    CutoverTarget::Mongodb(MongodbTarget {
        host: "mongo.db.internal".into(),
        port: 27018,
        username: "openedx".into(),
        password: "yes".into(),
        use_ssl: true,
        auth_source: "admin".into(),
        auth_mechanism: "SCRAM-SHA-256".into(),
        replica_set: "rs0".into(),
    })
}

fn redis() -> CutoverTarget {
    CutoverTarget::Redis(RedisTarget {
        host: "10.20.0.7".into(),
        port: 6380,
        username: "default".into(),
        password: "pässwörd-ü #1".into(),
        databases: Vec::new(),
    })
}

fn meilisearch() -> CutoverTarget {
    CutoverTarget::Meilisearch(MeilisearchTarget {
        url: "https://search.internal:7700".into(),
        public_url: "https://search.learn.example.org".into(),
        master_key: "Mk-0123456789abcdefghijklmnop".into(),
        // The fixture's MEILISEARCH_API_KEY_UID, as Tutor derives the key from it.
        api_key: offload::search::api_key::derive(
            "Mk-0123456789abcdefghijklmnop",
            "1b060280-7358-4220-83a1-b904da72a3d4",
        ),
    })
}

pub(crate) fn s3() -> CutoverTarget {
    CutoverTarget::S3(S3Target {
        host: "s3.eu-central-1.example.net".into(),
        port: Some(443),
        use_ssl: true,
        region: "eu-central-1".into(),
        storage_bucket: "learn-storage".into(),
        file_upload_bucket: "learn-uploads".into(),
        grade_bucket: "learn-grades".into(),
        profile_image_bucket: "learn-profiles".into(),
        addressing_style: "path".into(),
        access_key: "AKIAEXAMPLE0123".into(),
        secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY+0".into(),
        signature_version: Some("s3v4".into()),
        custom_domain: Some(String::new()),
        querystring_auth: Some(true),
        video_upload_bucket: "learn-videos".into(),
        openedx_learning_bucket: "learn-learning".into(),
        discovery_bucket: String::new(),
        not_copied: Vec::new(),
    })
}

fn all_targets() -> Vec<CutoverTarget> {
    vec![mysql(), mongodb(), redis(), meilisearch(), s3()]
}

/// Applies the cutover with offload in one copy of the fixture and with real Tutor in another,
/// and checks the two `config.yml` files are the same bytes. Returns offload's root and plan.
pub(crate) fn cutover_matches_tutor(targets: &[CutoverTarget]) -> (tempfile::TempDir, CutoverPlan) {
    let ours = fixture_root();
    let cfg = TutorConfig::load_with_env(ours.path(), []).unwrap();
    let plan = plan_cutover(&cfg, targets).unwrap();
    let applied = apply_cutover(ours.path(), &plan, &cfg.digest(), "20261123T151200Z").unwrap();
    assert_eq!(
        read(ours.path(), "config.yml.offload-backup-20261123T151200Z"),
        fixture_text()
    );
    assert_eq!(applied.config_path, ours.path().join("config.yml"));

    let theirs = fixture_root();
    if plan.edits.get("PLUGINS").is_some() {
        tutor(theirs.path(), &["plugins", "disable", "minio"]);
    }
    let args = plan.edits.tutor_save_args();
    let mut save = vec!["config", "save"];
    save.extend(args.iter().map(String::as_str));
    tutor(theirs.path(), &save);

    let got = read(ours.path(), "config.yml");
    let want = read(theirs.path(), "config.yml");
    assert!(
        got == want,
        "offload's config.yml differs from Tutor's:\n--- offload\n{got}\n--- tutor\n{want}"
    );
    assert_ne!(got, fixture_text(), "the cutover changed nothing");
    (ours, plan)
}

/// `tutor config printvalue KEY` for each pair.
pub(crate) fn assert_printvalues(root: &Path, pairs: &[(&str, &str)]) {
    for (key, want) in pairs {
        let got = tutor(root, &["config", "printvalue", key]);
        assert_eq!(got.trim_end_matches('\n'), *want, "printvalue {key}");
    }
}

/// Renders the environment from offload's `config.yml` with `tutor config save`, checks Tutor
/// left the file as offload wrote it, and returns (docker-compose.yml, LMS settings, LMS env).
pub(crate) fn render(root: &Path) -> (String, String, String) {
    let before = read(root, "config.yml");
    tutor(root, &["config", "save"]);
    assert_eq!(
        read(root, "config.yml"),
        before,
        "tutor config save rewrote offload's file"
    );
    (
        read(root, "env/local/docker-compose.yml"),
        read(root, "env/apps/openedx/settings/lms/production.py"),
        read(root, "env/apps/openedx/config/lms.env.yml"),
    )
}

pub(crate) fn has_service(compose: &str, name: &str) -> bool {
    compose.contains(&format!("\n  {name}:\n"))
}

// ---- tests -------------------------------------------------------------------------------

#[test]
fn fixture_is_stable_under_tutor_config_save_and_runs_every_service() {
    let root = fixture_root();
    let (compose, lms, _) = render(root.path());
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
    for service in ["mysql", "mongodb", "redis", "meilisearch", "minio"] {
        assert!(
            has_service(&compose, service),
            "{service} missing before cutover"
        );
    }
    assert!(lms.contains("\"host\": \"mongodb\""));
}

#[test]
fn mysql_cutover_matches_tutor() {
    let (root, plan) = cutover_matches_tutor(&[mysql()]);
    assert_printvalues(
        root.path(),
        &[
            ("RUN_MYSQL", "false"),
            ("MYSQL_HOST", "mysql.db.internal"),
            ("MYSQL_PORT", "3307"),
            ("MYSQL_ROOT_USERNAME", "admin"),
            ("MYSQL_ROOT_PASSWORD", "0123"),
            ("OPENEDX_MYSQL_USERNAME", "openedx_app"),
        ],
    );
    let (compose, _, lms_env) = render(root.path());
    assert!(!has_service(&compose, "mysql"));
    assert!(has_service(&compose, "mongodb"));
    assert!(
        lms_env.contains("HOST: \"mysql.db.internal\"\n    PORT: 3307\n"),
        "{lms_env}"
    );
    assert!(plan.runbook().contains("tutor local do init --limit=mysql"));
}

#[test]
fn mongodb_cutover_matches_tutor() {
    let (root, _) = cutover_matches_tutor(&[mongodb()]);
    assert_printvalues(
        root.path(),
        &[
            ("RUN_MONGODB", "false"),
            ("MONGODB_HOST", "mongo.db.internal"),
            ("MONGODB_PASSWORD", "yes"),
            ("MONGODB_USE_SSL", "true"),
            ("MONGODB_REPLICA_SET", "rs0"),
        ],
    );
    let (compose, lms, _) = render(root.path());
    assert!(!has_service(&compose, "mongodb"));
    for want in [
        "\"host\": \"mongo.db.internal\",",
        "\"port\": 27018,",
        "\"user\": \"openedx\",",
        "\"ssl\": True,",
        "\"replicaSet\": \"rs0\",",
        "\"authMechanism\": \"SCRAM-SHA-256\",",
    ] {
        assert!(lms.contains(want), "LMS settings lack {want}");
    }
}

#[test]
fn redis_cutover_matches_tutor() {
    let (root, _) = cutover_matches_tutor(&[redis()]);
    assert_printvalues(
        root.path(),
        &[
            ("RUN_REDIS", "false"),
            ("REDIS_HOST", "10.20.0.7"),
            ("REDIS_PORT", "6380"),
        ],
    );
    let (compose, lms, lms_env) = render(root.path());
    assert!(!has_service(&compose, "redis"));
    assert!(
        lms.contains("@10.20.0.7:6380/1\""),
        "cache LOCATION not on the new host"
    );
    assert!(lms_env.contains("CELERY_BROKER_HOSTNAME: \"10.20.0.7:6380\""));
}

/// Databases moved by the copy (`--redis-dbs 0:2,1:3`) move in the platform's settings too.
#[test]
fn redis_cutover_follows_databases_the_copy_moved() {
    let moved = CutoverTarget::Redis(RedisTarget {
        host: "10.20.0.7".into(),
        port: 6380,
        username: String::new(),
        password: String::new(),
        databases: vec![(0, 2), (1, 3)],
    });
    let (root, _) = cutover_matches_tutor(&[moved]);
    assert_printvalues(
        root.path(),
        &[
            ("OPENEDX_CELERY_REDIS_DB", "2"),
            ("OPENEDX_CACHE_REDIS_DB", "3"),
        ],
    );
    let (_, lms, lms_env) = render(root.path());
    assert!(lms.contains("@10.20.0.7:6380/3\""), "cache LOCATION");
    assert!(lms_env.contains("CELERY_BROKER_VHOST: \"2\""), "{lms_env}");
}

#[test]
fn meilisearch_cutover_matches_tutor_and_recomputes_the_api_key() {
    let (root, plan) = cutover_matches_tutor(&[meilisearch()]);
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let key = cfg.get_str("MEILISEARCH_API_KEY").unwrap();
    // Tutor derives the same key from the same master key and uid (base.yml's uid_master_hash)
    // once the stored key is removed. It takes two saves: a save renders base.yml's defaults
    // before applying --set, so setting the master key alone leaves the old API key in place.
    let probe = fixture_root();
    let master = "MEILISEARCH_MASTER_KEY=Mk-0123456789abcdefghijklmnop";
    tutor(probe.path(), &["config", "save", "--set", master]);
    tutor(
        probe.path(),
        &["config", "save", "--unset", "MEILISEARCH_API_KEY"],
    );
    assert_eq!(
        tutor(
            probe.path(),
            &["config", "printvalue", "MEILISEARCH_API_KEY"]
        )
        .trim(),
        key
    );
    assert_printvalues(
        root.path(),
        &[
            ("RUN_MEILISEARCH", "false"),
            ("MEILISEARCH_URL", "https://search.internal:7700"),
            ("MEILISEARCH_PUBLIC_URL", "https://search.learn.example.org"),
        ],
    );
    let (compose, lms, _) = render(root.path());
    assert!(!has_service(&compose, "meilisearch"));
    assert!(lms.contains("MEILISEARCH_URL = \"https://search.internal:7700\""));
    assert!(plan.runbook().contains("--limit=meilisearch"));
}

#[test]
fn s3_cutover_matches_tutor_with_minio_disabled() {
    let (root, plan) = cutover_matches_tutor(&[s3()]);
    assert_printvalues(
        root.path(),
        &[
            ("PLUGINS", "['s3']"),
            ("S3_HOST", "s3.eu-central-1.example.net"),
            ("S3_PORT", "443"),
            ("S3_STORAGE_BUCKET", "learn-storage"),
            ("OPENEDX_AWS_ACCESS_KEY", "AKIAEXAMPLE0123"),
        ],
    );
    let (compose, _, lms_env) = render(root.path());
    assert!(!has_service(&compose, "minio"));
    assert!(lms_env.contains("AWS_ACCESS_KEY_ID: \"AKIAEXAMPLE0123\""));
    let warnings = plan.warnings.join("\n");
    assert!(
        warnings.contains("learn-videos") && warnings.contains("learn-learning"),
        "{warnings}"
    );
    assert!(plan.runbook().contains("tutor-contrib-s3@v2.3.1"));
}

#[test]
fn s3_cutover_keeps_other_plugins_sorted() {
    // PLUGINS as a real platform has it; Tutor keeps a --set list as given.
    let base = fixture_root();
    tutor(
        base.path(),
        &[
            "config",
            "save",
            "--set",
            "PLUGINS=[\"indigo\",\"mfe\",\"minio\"]",
        ],
    );
    let text = read(base.path(), "config.yml");
    let cfg = TutorConfig::load_with_env(base.path(), []).unwrap();
    let plan = plan_cutover(&cfg, &[s3()]).unwrap();
    apply_cutover(base.path(), &plan, &cfg.digest(), "1").unwrap();

    let theirs = tempfile::tempdir().unwrap();
    std::fs::write(theirs.path().join("config.yml"), &text).unwrap();
    let args = plan.edits.tutor_save_args();
    let mut save = vec!["config", "save"];
    save.extend(args.iter().map(String::as_str));
    tutor(theirs.path(), &save);
    assert_eq!(
        read(base.path(), "config.yml"),
        read(theirs.path(), "config.yml")
    );
    assert!(read(base.path(), "config.yml").contains("PLUGINS:\n- indigo\n- mfe\n- s3\n"));
}

#[test]
fn all_stores_cutover_matches_tutor_then_rollback_restores_the_original() {
    let (root, plan) = cutover_matches_tutor(&all_targets());
    let config = root.path().join("config.yml");
    assert_eq!(mode(&config), 0o600, "config.yml holds secrets");
    let (compose, lms, lms_env) = render(root.path());
    for service in ["mysql", "mongodb", "redis", "meilisearch", "minio"] {
        assert!(
            !has_service(&compose, service),
            "{service} still in docker-compose.yml"
        );
    }
    assert!(has_service(&compose, "lms"));
    assert!(lms.contains("\"host\": \"mongo.db.internal\""));
    assert!(lms_env.contains("HOST: \"mysql.db.internal\""));

    let diff = plan.masked_diff();
    for secret in [
        "0123",
        "pässwörd",
        "Mk-0123456789",
        "wJalrXUtnFEMI",
        "AKIAEXAMPLE0123",
    ] {
        assert!(!diff.contains(secret), "diff shows a secret");
    }
    assert!(diff.contains("+MYSQL_HOST: mysql.db.internal"), "{diff}");
    assert!(
        diff.contains("-OPENEDX_AWS_SECRET_ACCESS_KEY: ********"),
        "{diff}"
    );
    assert!(diff.contains("+RUN_MYSQL: false"), "{diff}");
    let warnings = plan.warnings.join("\n");
    assert!(
        warnings.contains("OPENEDX_MYSQL_PASSWORD contains a quote"),
        "{warnings}"
    );
    assert!(
        warnings.contains("REDIS_PASSWORD contains one of"),
        "{warnings}"
    );
    for secret in ["pass phrase", "pässwörd", "wJalrXUtnFEMI"] {
        assert!(!warnings.contains(secret), "warnings show a secret");
    }

    let back = rollback(root.path(), false, "20261124T000000Z").unwrap();
    assert_eq!(
        back.restored_from,
        root.path()
            .join("config.yml.offload-backup-20261123T151200Z")
    );
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
    assert_eq!(
        mode(&config),
        mode(&fixture_root().path().join("config.yml")),
        "rollback restores the mode from before cutover"
    );
    // Tutor renders the original platform again.
    let (compose, _, _) = render(root.path());
    assert!(has_service(&compose, "mysql") && has_service(&compose, "minio"));
}

#[test]
fn tricky_values_match_tutor_byte_for_byte() {
    let long = "word ".repeat(30);
    let values: Vec<(&str, serde_yaml::Value)> = vec![
        ("AAA_FIRST", "0123".into()),
        ("ANSWER_YES", "yes".into()),
        ("CONTACT_EMAIL", "".into()),
        ("ID", "multi\nline id".into()),
        ("KEY_COLON", "a: b".into()),
        ("KEY_DASH", "- x".into()),
        ("KEY_HASH", "#hash".into()),
        ("KEY_QUOTES", "it's \"quoted\"".into()),
        ("KEY_UNICODE", "ünïcödé 密码 😀".into()),
        ("KEY_LINES", "line one\n\nline three".into()),
        ("KEY_TAB", "tab\there".into()),
        ("KEY_BELL", "\u{7} bell".into()),
        ("KEY_FLOAT_LIKE", "1e3".into()),
        ("KEY_NULL_LIKE", "~".into()),
        ("KEY_LONG", long.trim_end().into()),
        ("KEY_LONG_QUOTED", format!("'{long}'").into()),
        ("KEY_INT", 42.into()),
        ("KEY_BOOL", true.into()),
        (
            "KEY_LIST",
            serde_yaml::Value::Sequence(vec!["yes".into(), "b c".into()]),
        ),
        ("PLATFORM_NAME", format!("École {long}").into()),
        ("ZZZ_LAST", "last".into()),
    ];
    let mut edits = ConfigEdits::new();
    for (key, value) in &values {
        edits.set(*key, value.clone());
    }
    edits.unset("CMS_OAUTH2_SECRET");
    let ours = apply_edits(&fixture_text(), &edits).unwrap();

    let theirs = fixture_root();
    let args = edits.tutor_save_args();
    let mut save = vec!["config", "save"];
    save.extend(args.iter().map(String::as_str));
    tutor(theirs.path(), &save);
    let want = read(theirs.path(), "config.yml");
    assert!(ours == want, "--- offload\n{ours}\n--- tutor\n{want}");
}

#[test]
fn rollback_picks_the_newest_backup_and_needs_one() {
    let root = fixture_root();
    let err = rollback(root.path(), false, "20261124T000000Z").unwrap_err();
    assert!(matches!(err, TutorError::NoBackup { .. }), "{err}");

    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let plan = plan_cutover(&cfg, &[redis()]).unwrap();
    apply_cutover(root.path(), &plan, &cfg.digest(), "20261123T100000Z").unwrap();
    let after_redis = read(root.path(), "config.yml");
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let plan = plan_cutover(&cfg, &[mysql()]).unwrap();
    apply_cutover(root.path(), &plan, &cfg.digest(), "20261123T110000Z").unwrap();

    let back = rollback(root.path(), false, "20261124T000000Z").unwrap();
    assert!(back
        .restored_from
        .ends_with("config.yml.offload-backup-20261123T110000Z"));
    assert_eq!(read(root.path(), "config.yml"), after_redis);
}

/// `offload rollback` on a Tutor root.
fn offload_rollback(root: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_offload"))
        .arg("rollback")
        .arg("--tutor-root")
        .arg(root)
        .args(extra)
        .env_remove("TUTOR_ROOT")
        .env("NO_COLOR", "1")
        .output()
        .expect("run offload")
}

/// Without a job, `offload cutover` with target flags refuses unless `--force`, then rewrites
/// config.yml for the named stores as Tutor would, warns that nothing was verified, and rolls back.
#[test]
fn cutover_without_a_job_needs_force_then_rewrites_the_named_stores() {
    let root = fixture_root();
    let no_job = tempfile::tempdir().unwrap();
    let job = no_job.path().join("none");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_offload"))
            .arg("cutover")
            .arg("--tutor-root")
            .arg(root.path())
            .arg("--job")
            .arg(&job)
            .args(["--to-redis", "redis://default:s3cret@10.20.0.7:6380"])
            .args(extra)
            .env_remove("TUTOR_ROOT")
            .env("NO_COLOR", "1")
            .output()
            .expect("run offload")
    };
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no job") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(read(root.path(), "config.yml"), fixture_text());

    let dry = run(&["--dry-run"]);
    assert_eq!(dry.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("REDIS_HOST"));
    assert_eq!(read(root.path(), "config.yml"), fixture_text());

    let forced = run(&["--force"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&forced.stdout),
        String::from_utf8_lossy(&forced.stderr),
    );
    assert_eq!(forced.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("WARNING") && stderr.contains("nothing was verified"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("s3cret") && !stderr.contains("s3cret"),
        "the password stays out of the output"
    );
    assert!(!job.exists(), "no job folder is made");
    assert_printvalues(
        root.path(),
        &[
            ("RUN_REDIS", "false"),
            ("REDIS_HOST", "10.20.0.7"),
            ("REDIS_PORT", "6380"),
            ("RUN_MYSQL", "true"),
        ],
    );
    assert_eq!(offload_rollback(root.path(), &[]).status.code(), Some(0));
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
}

/// A cut-over fixture root whose config.yml had mode 0640 before cutover.
fn cut_over_root() -> tempfile::TempDir {
    let root = fixture_root();
    let config = root.path().join("config.yml");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let plan = plan_cutover(&cfg, &all_targets()).unwrap();
    apply_cutover(root.path(), &plan, &cfg.digest(), "20261123T151200Z").unwrap();
    assert_eq!(mode(&config), 0o600);
    root
}

#[test]
fn rollback_restores_the_bytes_and_the_mode_from_before_cutover() {
    let root = cut_over_root();
    let config = root.path().join("config.yml");
    let out = offload_rollback(root.path(), &[]);
    crate::common::assert_exit(&out, 0);
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
    assert_eq!(mode(&config), 0o640, "the mode from before cutover");
    // Twice restores the same file.
    crate::common::assert_exit(&offload_rollback(root.path(), &[]), 0);
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
}

#[test]
fn rollback_over_edits_made_after_cutover_refuses_then_force_saves_them() {
    let root = cut_over_root();
    let config = root.path().join("config.yml");
    let edited = format!(
        "{}ZZ_EXTRA_PASSWORD: hunter2-after-cutover\nZZ_EXTRA_HOST: edited.example.org\n",
        read(root.path(), "config.yml")
    );
    std::fs::write(&config, &edited).unwrap();

    let out = offload_rollback(root.path(), &[]);
    crate::common::assert_exit(&out, 2);
    let said = crate::common::text(&out);
    assert!(
        said.contains("changed after cutover") && said.contains("--force"),
        "{said}"
    );
    assert!(
        said.contains("-ZZ_EXTRA_HOST: edited.example.org"),
        "{said}"
    );
    assert!(said.contains("-ZZ_EXTRA_PASSWORD: ********"), "{said}");
    assert!(said.contains("-RUN_MYSQL: false"), "{said}");
    for secret in ["hunter2-after-cutover", "pass phrase", "wJalrXUtnFEMI"] {
        assert!(!said.contains(secret), "the output shows a secret: {said}");
    }
    assert_eq!(read(root.path(), "config.yml"), edited, "left untouched");

    let out = offload_rollback(root.path(), &["--force"]);
    crate::common::assert_exit(&out, 0);
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
    assert_eq!(mode(&config), 0o640);
    let saved: Vec<PathBuf> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("config.yml.offload-before-rollback-")
        })
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(std::fs::read_to_string(&saved[0]).unwrap(), edited);
    assert_eq!(mode(&saved[0]), 0o600);
    assert!(
        crate::common::text(&out).contains(&saved[0].display().to_string()),
        "{}",
        crate::common::text(&out)
    );
    // The saved file is no backup: rolling back again still restores the original.
    crate::common::assert_exit(&offload_rollback(root.path(), &[]), 0);
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
}

#[test]
fn malformed_config_is_refused_and_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let text = "LMS_HOST: learn.example.org\nMYSQL_ROOT_PASSWORD: [unclosed\nZ: 1\n";
    std::fs::write(root.path().join("config.yml"), text).unwrap();
    let err = TutorConfig::load_with_env(root.path(), []).unwrap_err();
    match &err {
        TutorError::Malformed { line, .. } => assert!(*line >= 2, "{err}"),
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(!err.to_string().contains("unclosed"), "{err}");
    assert_eq!(read(root.path(), "config.yml"), text);
}

#[test]
fn missing_config_says_where_to_look() {
    let root = tempfile::tempdir().unwrap();
    let err = TutorConfig::load_with_env(root.path(), []).unwrap_err();
    assert!(matches!(err, TutorError::NotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("--tutor-root") && message.contains("TUTOR_ROOT"),
        "{message}"
    );
    assert!(!root.path().join("config.yml").exists());
}

#[test]
fn a_config_changed_since_the_plan_is_not_overwritten() {
    let root = fixture_root();
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let plan = plan_cutover(&cfg, &[mysql()]).unwrap();
    let edited = format!("{}SMTP_HOST: smtp.example.org\n", fixture_text());
    std::fs::write(root.path().join("config.yml"), &edited).unwrap();
    let err = apply_cutover(root.path(), &plan, &cfg.digest(), "1").unwrap_err();
    assert!(matches!(err, TutorError::Changed { .. }), "{err:?}");
    assert!(err.to_string().contains("plan again"), "{err}");
    assert_eq!(read(root.path(), "config.yml"), edited);
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        1,
        "no backup, no temp file"
    );
}

#[test]
fn apply_keeps_the_owner_and_follows_a_symlinked_config() {
    let root = tempfile::tempdir().unwrap();
    let real = root.path().join("kept-elsewhere.yml");
    std::fs::write(&real, fixture_text()).unwrap();
    std::os::unix::fs::symlink(&real, root.path().join("config.yml")).unwrap();
    // As root, hand the file to another user: the rewrite must keep that owner.
    let running_as_root = std::fs::metadata(&real).unwrap().uid() == 0;
    if running_as_root {
        std::os::unix::fs::chown(&real, Some(4321), Some(4321)).unwrap();
    }
    let owner = std::fs::metadata(&real).unwrap().uid();

    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let plan = plan_cutover(&cfg, &[redis()]).unwrap();
    let applied = apply_cutover(root.path(), &plan, &cfg.digest(), "20261123T151200Z").unwrap();
    let link = std::fs::symlink_metadata(root.path().join("config.yml")).unwrap();
    assert!(link.file_type().is_symlink(), "the symlink was replaced");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), plan.updated_text());
    assert_eq!(std::fs::metadata(&real).unwrap().uid(), owner);
    assert_eq!(
        std::fs::metadata(&applied.backup_path).unwrap().uid(),
        owner
    );
    assert_eq!(mode(&applied.backup_path), 0o600);

    rollback(root.path(), false, "20261124T000000Z").unwrap();
    assert_eq!(std::fs::read_to_string(&real).unwrap(), fixture_text());
    assert_eq!(std::fs::metadata(&real).unwrap().uid(), owner);
}

/// Makes a folder unwritable even for root: read-only bits, then the immutable attribute when
/// root ignores the bits. Undone on drop.
pub(crate) struct ReadOnly(PathBuf);

impl ReadOnly {
    pub(crate) fn new(dir: &Path) -> ReadOnly {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let guard = ReadOnly(dir.to_owned());
        let probe = dir.join(".probe");
        if std::fs::write(&probe, b"").is_ok() {
            std::fs::remove_file(&probe).unwrap();
            let status = Command::new("chattr").arg("+i").arg(dir).status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "running as root and `chattr +i` failed: cannot make a read-only folder here"
            );
            assert!(
                std::fs::write(&probe, b"").is_err(),
                "folder still writable"
            );
        }
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn a_read_only_root_gives_a_clear_error_and_keeps_the_original() {
    let root = fixture_root();
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let plan = plan_cutover(&cfg, &all_targets()).unwrap();
    let err = {
        let _guard = ReadOnly::new(root.path());
        apply_cutover(root.path(), &plan, &cfg.digest(), "20261123T151200Z").unwrap_err()
    };
    assert!(matches!(err, TutorError::Write { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("left as it was"), "{message}");
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        1,
        "no backup, no temp file"
    );
}

#[test]
fn a_root_under_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    let err = TutorConfig::load_with_env(&file.join("root"), []).unwrap_err();
    assert!(matches!(err, TutorError::Read { .. }), "{err:?}");
    let err = rollback(&file.join("root"), false, "20261124T000000Z").unwrap_err();
    assert!(matches!(err, TutorError::Read { .. }), "{err:?}");
    assert_eq!(read(dir.path(), "not-a-folder"), "x");
}

/// A root last rendered by a Tutor release offload does not know, or one without Meilisearch when
/// Meilisearch is to be cut over, is refused before anything is written; a known one is accepted.
#[test]
fn an_unknown_tutor_version_is_refused_and_the_file_left_alone() {
    let root = fixture_root();
    std::fs::create_dir_all(root.path().join("env")).unwrap();
    let cases: [(&str, Vec<CutoverTarget>, bool); 5] = [
        ("12.2.0", vec![mysql()], false),
        ("23.0.0", vec![mysql()], false),
        ("nightly", vec![mysql()], false),
        ("18.1.4", vec![meilisearch()], false),
        ("18.1.4", vec![mysql()], true),
    ];
    for (version, targets, accepted) in cases {
        std::fs::write(root.path().join("env/version"), format!("{version}\n")).unwrap();
        let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
        match plan_cutover(&cfg, &targets) {
            Ok(_) => assert!(accepted, "Tutor {version} was accepted"),
            Err(err) => {
                assert!(!accepted, "Tutor {version}: {err}");
                assert!(matches!(err, TutorError::UnknownVersion { .. }), "{err:?}");
                let message = err.to_string();
                assert!(message.contains(version), "{message}");
                assert!(message.contains("nothing was written"), "{message}");
            }
        }
        assert_eq!(read(root.path(), "config.yml"), fixture_text());
    }
}
