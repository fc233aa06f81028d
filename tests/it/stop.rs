//! Stopping a job from outside: SIGTERM and SIGHUP do what Ctrl-C does (save the checkpoint, let
//! the source's writers in again, exit 130), and a job that is running is worked on by its own
//! process only: a second one is refused, `status` says who holds it, and after a `kill -9` the
//! job is stopped and resumes.
//!
//! The first run is held mid-copy by the `hold-after-batch:N` failpoint, which says so on stderr
//! and waits for a line on stdin: the test acts on a running job at a known place, no sleeps.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use crate::common::*;

/// What the failpoint logs once the run is held.
pub const HELD: &str = "holding here until a line arrives";

/// An `offload` run in the background, its stderr read line by line as it comes.
pub struct Background {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    /// `offload ARGS --job JOB` with `OFFLOAD_FAILPOINT=failpoint`, flags only (as `offload_env`).
    pub fn start(job: &Path, args: &[&str], failpoint: &str) -> Background {
        Background::start_env(job, args, failpoint, &[])
    }

    /// As [`Background::start`], with these environment variables set too.
    pub fn start_env(
        job: &Path,
        args: &[&str],
        failpoint: &str,
        env: &[(&str, String)],
    ) -> Background {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
        cmd.args(args)
            .arg("--job")
            .arg(job)
            .arg("--tutor-root")
            .arg(job.join("no-tutor-here"))
            .arg("--no-progress")
            .env_remove("OFFLOAD_FROM_MYSQL_PASSWORD")
            .env_remove("OFFLOAD_TO_MYSQL_PASSWORD")
            .env("OFFLOAD_FAILPOINT", failpoint)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run offload");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stderr line (from here on) that contains `needle`; fails after two minutes.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {needle:?} on stderr ({e}); so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Let the held run go on.
    pub fn release(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin).unwrap();
        stdin.flush().unwrap();
    }

    /// Wait for the end: how it exited, and all it wrote on stderr.
    pub fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }
}

impl Drop for Background {
    /// A test that fails midway leaves no held process behind (a no-op once it was waited for).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the shared source writable again however the test ends.
struct WritableAtEnd;

impl Drop for WritableAtEnd {
    fn drop(&mut self) {
        mariadb_client(&mysql_source(), None, "SET GLOBAL read_only = OFF;");
    }
}

/// A database with one table of `rows` rows (ten batches of `--batch-rows 500` at 5,000).
pub async fn seeded(tag: &str, rows: u32) -> TestDb {
    let db = TestDb::new(tag).await;
    let src = mysql_source();
    exec(&src, &format!("CREATE DATABASE `{}`", db.name)).await;
    exec(
        &src,
        &format!(
            "CREATE TABLE `{0}`.`bulk` (id BIGINT PRIMARY KEY, note VARCHAR(40)) ENGINE=InnoDB",
            db.name
        ),
    )
    .await;
    exec(
        &src,
        &format!(
            "INSERT INTO `{0}`.`bulk` SELECT seq, CONCAT('row ', seq) FROM `{0}`.seq_1_to_{rows}",
            db.name
        ),
    )
    .await;
    exec(&src, &format!("ANALYZE TABLE `{}`.`bulk`", db.name)).await;
    db
}

/// A `copy --freeze-source` stopped mid-copy by `signal` exits 130 with the checkpoint saved and
/// the source writable again; `copy --resume` then completes and verify is clean.
async fn freeze_released_when_stopped_by(signal: i32, name: &str, tag: &str) {
    let _freeze = mysql_source_freeze_lock().await;
    let _writable = WritableAtEnd;
    let db = seeded(tag, 5_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let batches = ["--batch-rows", "500", "--parallel", "1", "--freeze-source"];
    assert!(!mysql_source_read_only().await, "the test starts writable");

    let mut run = Background::start(
        job.path(),
        &args("copy", &f, &batches),
        "hold-after-batch:2",
    );
    run.wait_for(HELD);
    assert!(
        mysql_source_read_only().await,
        "the source is read_only while the copy runs"
    );
    run.signal(signal);
    let said = run.wait_for("received: finishing");
    assert!(said.contains(name), "the message names the signal: {said}");
    run.release();
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(130), "{name}: {stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(
        !mysql_source_read_only().await,
        "{name} lets the source's writers in again"
    );
    let table = format!("`{}`.`bulk`", db.name);
    let partial = count(&mysql_target(), &table).await;
    assert!(
        partial > 0 && partial < 5_000,
        "stopped part way: {partial} rows"
    );

    let mut resume = args("copy", &f, &batches);
    resume.push("--resume");
    let out = offload(job.path(), &resume);
    assert_exit(&out, 0);
    assert!(!mysql_source_read_only().await, "released at the end");
    assert_eq!(count(&mysql_target(), &table).await, 5_000);
    assert_safe_to_switch(&offload(job.path(), &args("verify", &[], &[])));
    db.drop_both().await;
}

#[tokio::test]
async fn sigterm_saves_the_checkpoint_releases_the_freeze_and_exits_130() {
    freeze_released_when_stopped_by(libc::SIGTERM, "SIGTERM", "stopterm").await;
}

#[tokio::test]
async fn sighup_saves_the_checkpoint_releases_the_freeze_and_exits_130() {
    freeze_released_when_stopped_by(libc::SIGHUP, "SIGHUP", "stophup").await;
}

/// While a copy runs, a second `copy --resume` (and a verify) on its job is refused naming the
/// first process, and `status` says who holds it; after a `kill -9` of the first, `status` says
/// the job is stopped and a `copy --resume` takes it and completes.
#[tokio::test]
async fn a_running_job_is_refused_to_a_second_process_until_its_holder_is_killed() {
    let db = seeded("joblock", 5_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let batches = ["--batch-rows", "500", "--parallel", "1"];
    let mut first = Background::start(
        job.path(),
        &args("copy", &f, &batches),
        "hold-after-batch:1",
    );
    first.wait_for(HELD);
    let pid = first.pid();

    let mut resume = args("copy", &f, &batches);
    resume.push("--resume");
    let second = offload(job.path(), &resume);
    assert_exit(&second, 2);
    let said = text(&second);
    assert!(
        said.contains(&format!("process {pid}"))
            && said.contains(&format!("kill {pid}"))
            && said.contains("offload status"),
        "the refusal names the running process and what to do: {said}"
    );
    assert_exit(&offload(job.path(), &args("verify", &[], &[])), 2);

    let status = offload(job.path(), &["status", "--json"]);
    assert_exit(&status, 0);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["running"], true, "{v}");
    assert_eq!(v["holder"]["pid"], pid, "{v}");
    assert!(v["holder"]["host"].as_str().is_some_and(|h| !h.is_empty()));
    let status = offload(job.path(), &["status"]);
    assert!(
        text(&status).contains(&format!("Running: offload process {pid}")),
        "{}",
        text(&status)
    );

    first.child.kill().unwrap();
    let (end, _) = first.finish();
    assert_eq!(end.signal(), Some(9));
    let status = offload(job.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["running"], false, "{v}");
    assert!(v["holder"].is_null(), "{v}");
    let status = offload(job.path(), &["status"]);
    let said = text(&status);
    assert!(
        said.contains("Stopped") && said.contains("--resume"),
        "status says the job is stopped and how to go on: {said}"
    );

    assert_exit(&offload(job.path(), &resume), 0);
    let table = format!("`{}`.`bulk`", db.name);
    assert_eq!(count(&mysql_target(), &table).await, 5_000);
    assert_safe_to_switch(&offload(job.path(), &args("verify", &[], &[])));
    db.drop_both().await;
}
