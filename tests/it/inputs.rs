//! Inputs that must be read exactly or refused with a message naming them: invalid config.yml
//! values, password files that lose to nothing, URLs with raw reserved characters, unreadable
//! config files, and user names with reserved characters kept intact in a job's record.

use std::path::Path;
use std::process::{Command, Output};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::common::*;

/// The binary with only the given arguments and variables (no `--tutor-root` or `--job` added).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
    cmd.args(args)
        .env_remove("OFFLOAD_FROM_MYSQL_PASSWORD")
        .env_remove("OFFLOAD_TO_MYSQL_PASSWORD")
        .env_remove("TUTOR_ROOT")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run offload")
}

fn tutor_root_with(config: &[u8]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("config.yml"), config).unwrap();
    root
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn an_invalid_port_in_config_yml_is_an_error_naming_key_and_value() {
    let root = tutor_root_with(b"MYSQL_HOST: 127.0.0.1\nMYSQL_PORT: 433060\n");
    let job = tempfile::tempdir().unwrap();
    let out = run(
        &[
            "plan",
            "--tutor-root",
            &path(root.path()),
            "--job",
            &path(&job.path().join("job")),
            "--to-mysql",
            &mysql_target(),
        ],
        &[],
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("MYSQL_PORT") && said.contains("433060") && said.contains("--from-mysql"),
        "{said}"
    );
}

#[test]
fn a_named_password_file_wins_over_the_environment_and_must_exist() {
    let job = tempfile::tempdir().unwrap();
    let missing = job.path().join("no-such-password-file");
    let out = offload_env(
        &job.path().join("job"),
        &[
            "plan",
            "--to-mysql",
            &mysql_target(),
            "--to-mysql-password-file",
            &path(&missing),
            "--from-mysql",
            &mysql_source(),
        ],
        &[("OFFLOAD_TO_MYSQL_PASSWORD", "from-the-environment")],
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("no-such-password-file") && said.contains("--to-mysql-password-file"),
        "{said}"
    );
}

#[test]
fn a_raw_reserved_character_in_a_url_password_says_how_to_encode_it() {
    let job = tempfile::tempdir().unwrap();
    let out = offload(
        &job.path().join("job"),
        &[
            "plan",
            "--from-mysql",
            &mysql_source(),
            "--to-mysql",
            "mysql://root:hunter/two@127.0.0.1:23307",
        ],
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("percent-encode") && said.contains("/ as %2F"),
        "{said}"
    );
    assert!(!said.contains("hunter"), "the password leaked: {said}");
}

#[test]
fn a_binary_config_yml_is_not_a_text_file() {
    let root = tutor_root_with(&[0xff, 0xfe, 0x00, 0x9f, 0x92, 0x96]);
    let job = tempfile::tempdir().unwrap();
    let out = run(
        &[
            "plan",
            "--tutor-root",
            &path(root.path()),
            "--job",
            &path(&job.path().join("job")),
            "--to-mysql",
            &mysql_target(),
        ],
        &[],
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(said.contains("is not a text file"), "{said}");
}

#[tokio::test]
async fn a_user_with_reserved_characters_survives_the_job_record() {
    let db = TestDb::new("inputs_user").await;
    let pid = std::process::id();
    let user = format!("it:in@p/x%q{pid}");
    let password = format!("pw-{pid}");
    let target = url::Url::parse(&mysql_target()).unwrap();
    let (host, port) = (target.host_str().unwrap(), target.port().unwrap_or(3306));
    exec(
        &mysql_target(),
        &format!("DROP USER IF EXISTS '{user}'@'%'"),
    )
    .await;
    exec(
        &mysql_target(),
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
    )
    .await;
    exec(
        &mysql_target(),
        &format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION"),
    )
    .await;
    exec(&mysql_source(), &format!("CREATE DATABASE `{}`", db.name)).await;
    exec(
        &mysql_source(),
        &format!(
            "CREATE TABLE `{0}`.t (id INT PRIMARY KEY, v VARCHAR(20)); \
             INSERT INTO `{0}`.t VALUES (1, 'one'), (2, 'two'), (3, 'three')",
            db.name
        ),
    )
    .await;

    let to = format!(
        "mysql://{}@{host}:{port}",
        utf8_percent_encode(&user, NON_ALPHANUMERIC)
    );
    let job = tempfile::tempdir().unwrap();
    let dir = job.path().join("job");
    let dir_s = path(&dir);
    let env = [("OFFLOAD_TO_MYSQL_PASSWORD", password.as_str())];
    let copy = offload_env(
        &dir,
        &[
            "copy",
            "--from-mysql",
            &mysql_source(),
            "--to-mysql",
            &to,
            "--databases",
            &db.name,
        ],
        &env,
    );
    assert_exit(&copy, 0);
    assert_eq!(count(&mysql_target(), &format!("`{}`.t", db.name)).await, 3);

    // From the job folder alone: the recorded URL gives back the same user.
    let verify = run(&["verify", "--job", &dir_s], &env);
    assert_safe_to_switch(&verify);
    let resume = run(&["copy", "--resume", "--job", &dir_s], &env);
    assert_exit(&resume, 0);
    assert!(!text(&resume).contains(&password), "the password leaked");

    exec(
        &mysql_target(),
        &format!("DROP USER IF EXISTS '{user}'@'%'"),
    )
    .await;
    db.drop_both().await;
}

#[test]
fn an_explicit_s3_profile_wins_over_keys_in_the_environment() {
    let job = tempfile::tempdir().unwrap();
    let credentials = job.path().join("credentials");
    std::fs::write(
        &credentials,
        "[other]\naws_access_key_id = A\naws_secret_access_key = S\n",
    )
    .unwrap();
    let out = offload_env(
        &job.path().join("job"),
        &[
            "plan",
            "--to-s3",
            "http://127.0.0.1:1",
            "--s3-profile",
            "no-such-profile",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "from-env"),
            ("AWS_SECRET_ACCESS_KEY", "from-env-secret"),
            ("OFFLOAD_TO_S3_ACCESS_KEY", "from-env"),
            ("OFFLOAD_TO_S3_SECRET_KEY", "from-env-secret"),
            ("AWS_SHARED_CREDENTIALS_FILE", &path(&credentials)),
            ("AWS_CONFIG_FILE", &path(&job.path().join("no-config"))),
        ],
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("--to-s3-profile") && said.contains("no-such-profile"),
        "{said}"
    );
}
