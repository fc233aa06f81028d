//! A whole job on a Tutor root: the source comes from config.yml, then copy, verify, cutover
//! (refused until verify passes), checked with real Tutor, and rollback.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(args)
        .env_remove("OFFLOAD_FROM_MYSQL_PASSWORD")
        .env_remove("OFFLOAD_TO_MYSQL_PASSWORD")
        .env_remove("TUTOR_ROOT")
        .output()
        .expect("run offload")
}

#[tokio::test]
async fn tutor_platform_copy_verify_cutover_rollback() {
    let db = TestDb::new("job").await;
    db.load_fixture();
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().display().to_string();
    std::fs::copy(
        repo_root().join("fixtures/tutor/config.yml"),
        root.path().join("config.yml"),
    )
    .unwrap();

    // The platform's MySQL root account is a per-test user on the source server, with the
    // password Tutor generated into the fixture.
    let password = tutor(
        root.path(),
        &["config", "printvalue", "MYSQL_ROOT_PASSWORD"],
    );
    let password = password.trim();
    let user = format!("it_root_{}", std::process::id());
    let src = url::Url::parse(&mysql_source()).unwrap();
    let tgt = url::Url::parse(&mysql_target()).unwrap();
    exec(
        &mysql_source(),
        &format!("CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}'"),
    )
    .await;
    exec(
        &mysql_source(),
        &format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION"),
    )
    .await;
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
    let before = std::fs::read(root.path().join("config.yml")).unwrap();
    let to = mysql_target();
    let common = ["--tutor-root", &root_s, "--databases", &db.name];

    // plan derives the source from config.yml alone.
    let mut plan = vec!["plan", "--json", "--to-mysql", &to];
    plan.extend(common);
    let out = run(&plan);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["stores"][0]["source"],
        format!("{}:{}", src.host_str().unwrap(), src.port().unwrap())
    );
    assert!(!text(&out).contains(password), "the Tutor password leaked");

    let mut copy = vec!["copy", "--to-mysql", &to];
    copy.extend(common);
    assert_exit(&run(&copy), 0);

    // Not verified yet: cutover refuses and leaves config.yml alone.
    let cut = ["cutover", "--tutor-root", &root_s];
    let out = run(&cut);
    assert_exit(&out, 2);
    assert!(text(&out).contains("not safe to switch"), "{}", text(&out));
    assert_eq!(
        std::fs::read(root.path().join("config.yml")).unwrap(),
        before
    );

    let verify = ["verify", "--tutor-root", &root_s];
    assert_exit(&run(&verify), 0);
    // A copy of the job folder taken now, as the Tutor plugin takes one from a Kubernetes
    // claim before each cutover: it never learns of the cutover below.
    let job_dir = offload::settings::default_job_dir(root.path());
    let earlier = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&job_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, earlier.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let earlier_s = earlier.path().to_str().unwrap().to_string();

    let out = run(&["cutover", "--dry-run", "--tutor-root", &root_s]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("RUN_MYSQL"), "{}", text(&out));
    assert_eq!(
        std::fs::read(root.path().join("config.yml")).unwrap(),
        before,
        "dry run wrote nothing"
    );

    let out = run(&cut);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("tutor"),
        "prints the runbook: {}",
        text(&out)
    );
    let value = |k: &str| {
        tutor(root.path(), &["config", "printvalue", k])
            .trim()
            .to_string()
    };
    assert_eq!(value("RUN_MYSQL"), "false");
    assert_eq!(value("MYSQL_HOST"), tgt.host_str().unwrap());
    assert_eq!(value("MYSQL_PORT"), tgt.port().unwrap().to_string());
    assert_eq!(value("MYSQL_ROOT_USERNAME"), "root");
    assert_eq!(
        value("MYSQL_ROOT_PASSWORD"),
        "",
        "the target's (empty) password, not the old server's"
    );

    // Run again, it says the job already cut over, and how to go back; so does the copy of
    // the job folder taken before the cutover, from the backup and its record beside config.yml.
    for job in [None, Some(earlier_s.as_str())] {
        let mut again = cut.to_vec();
        again.extend(job.map(|j| ["--job", j]).into_iter().flatten());
        let out = run(&again);
        assert_exit(&out, 2);
        assert!(
            text(&out).contains("already cut over") && text(&out).contains("offload rollback"),
            "{job:?}: {}",
            text(&out)
        );
    }

    let out = run(&["rollback", "--tutor-root", &root_s]);
    assert_exit(&out, 0);
    assert_eq!(
        std::fs::read(root.path().join("config.yml")).unwrap(),
        before,
        "rollback restores the file byte for byte"
    );

    exec(
        &mysql_source(),
        &format!("DROP USER IF EXISTS '{user}'@'%'"),
    )
    .await;
    db.drop_both().await;
}

/// A job path that is a file is named as such, before any server is reached.
#[test]
fn a_job_path_that_is_a_file_is_named_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job");
    std::fs::write(&file, "mine").unwrap();
    let flags = [
        "--from-mysql",
        "mysql://root@127.0.0.1:1",
        "--to-mysql",
        "mysql://root@127.0.0.1:2",
    ];
    for cmd in ["copy", "verify"] {
        let out = offload(&file, &args(cmd, &[], &flags));
        assert_exit(&out, 2);
        let said = text(&out);
        assert!(
            said.contains("is a file, not a folder") && !said.contains("damaged"),
            "{cmd}: {said}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
}

/// A read-only job folder, new or holding a job, is named as such and not as a damaged job.
#[test]
fn a_read_only_job_folder_is_named_as_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    let held = dir.path().join("held");
    std::fs::create_dir(&empty).unwrap();
    let setup = offload::core::catalog::Setup {
        tool_version: "test".into(),
        guard: serde_json::json!({}),
        endpoints: serde_json::json!({}),
    };
    drop(offload::core::catalog::Catalog::create(&held, &setup).unwrap());
    let flags = [
        "--from-mysql",
        "mysql://root@127.0.0.1:1",
        "--to-mysql",
        "mysql://root@127.0.0.1:2",
    ];
    let resume = [&flags[..], &["--resume"]].concat();
    let runs: [(&Path, Vec<&str>); 4] = [
        (&empty, args("copy", &[], &flags)),
        (&held, args("copy", &[], &resume)),
        (&held, args("verify", &[], &[])),
        (&held, args("cutover", &[], &[])),
    ];
    let _empty = crate::cutover::ReadOnly::new(&empty);
    let _held = crate::cutover::ReadOnly::new(&held);
    for (job, command) in runs {
        let out = offload(job, &command);
        assert_exit(&out, 2);
        let said = text(&out);
        assert!(
            said.contains("is not writable")
                && said.contains("chattr -i")
                && !said.contains("damaged"),
            "{command:?}: {said}"
        );
    }
}

/// A `--report` path that cannot be written is refused before any work (no server is reached:
/// the endpoints here answer nothing).
#[test]
fn a_bad_report_path_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let locked = dir.path().join("read-only");
    std::fs::create_dir(&locked).unwrap();
    let missing = dir.path().join("no-such-folder/report.html");
    let unwritable = locked.join("report.html");
    let flags = [
        "--from-mysql",
        "mysql://root@127.0.0.1:1",
        "--to-mysql",
        "mysql://root@127.0.0.1:2",
    ];
    let _guard = crate::cutover::ReadOnly::new(&locked);
    for (path, says) in [
        (&missing, "does not exist"),
        (&unwritable, "cannot be written"),
        (&dir.path().to_path_buf(), "is a folder"),
    ] {
        for cmd in ["verify", "migrate"] {
            let report = path.display().to_string();
            let out = offload(
                &job,
                &args(cmd, &[], &[&flags[..], &["--report", &report]].concat()),
            );
            assert_exit(&out, 2);
            let said = text(&out);
            assert!(
                said.contains(says) && said.contains("--report"),
                "{cmd} {report}: {said}"
            );
            assert!(
                !said.contains("127.0.0.1:1"),
                "a server was reached first: {said}"
            );
        }
    }
    assert!(!job.exists(), "no job was started");
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);
}
