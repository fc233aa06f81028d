//! The plan's reachability check: a default Tutor `config.yml` names the sources `mysql`,
//! `mongodb` and `redis`, hosts that exist only inside Tutor's Docker network or Kubernetes
//! namespace. From here they do not resolve, so `plan` (and `copy`) stops within seconds, names
//! each store and side, prints the Tutor commands that run it where they are, and writes nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn hosts_inside_tutors_network_are_named_with_the_tutor_command_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tutor");
    std::fs::create_dir_all(&root).unwrap();
    // Tutor's defaults: MYSQL_HOST mysql, MONGODB_HOST mongodb, REDIS_HOST redis.
    std::fs::write(root.join("config.yml"), "PLATFORM_NAME: Reach test\n").unwrap();
    let job = dir.path().join("job");
    let env = |name: &str, default: &str| env_or(name, default);
    for command in ["plan", "copy"] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_offload"))
            .args([
                command,
                "--tutor-root",
                root.to_str().unwrap(),
                "--job",
                job.to_str().unwrap(),
                "--to-mysql",
                &mysql_target(),
                "--to-redis",
                &env("OFFLOAD_TEST_REDIS_TARGET", "redis://127.0.0.1:26380"),
                "--to-mongodb",
                &env("OFFLOAD_TEST_MONGODB_TARGET", "mongodb://127.0.0.1:27118"),
            ])
            .env("NO_COLOR", "1")
            .output()
            .expect("run offload");
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {said}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{command} took {:?}",
            started.elapsed()
        );
        for source in [
            "mysql source mysql:3306",
            "mongodb source mongodb:27017",
            "redis source redis:6379",
        ] {
            assert!(said.contains(source), "{command} names {source}: {said}");
        }
        assert!(
            !said.contains("target 127.0.0.1"),
            "the stack's targets answer, so they are not named: {said}"
        );
        let to_mysql = format!(
            "tutor local do offload -- {command} --to-mysql {}",
            mysql_target()
        );
        assert!(said.contains(&to_mysql), "{command}: {said}");
        assert!(
            said.contains("tutor k8s do offload -- ") && !said.contains("--tutor-root"),
            "the plugin mounts the root and the job folder itself: {said}"
        );
        assert!(
            !job.join("catalog.sqlite").exists(),
            "{command} wrote a job"
        );
    }
}
