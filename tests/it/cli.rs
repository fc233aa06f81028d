//! The binary's surface: help on every command and the exit codes of misuse.

use std::process::Command;

#[test]
fn every_command_has_help() {
    for cmd in [
        "plan", "copy", "verify", "status", "cutover", "rollback", "reindex",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_offload"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: offload"), "{cmd}: {text}");
    }
}

#[test]
fn status_without_a_job_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(["status", "--job"])
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("offload copy"));
}

#[test]
fn unknown_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args([
            "plan",
            "--stores",
            "cassandra",
            "--to-mysql",
            "mysql://root@127.0.0.1:1",
            "--tutor-root",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("choose from mysql"));
}
