//! Progress as log lines where there is no terminal: a copy whose standard error goes to a file or
//! a pipe says how far it is at each phase change and every `--progress-interval`, in words or as
//! JSON objects with the documented fields, and `status --json` carries the same fields. The run
//! is held mid-copy by the `hold-after-batch:N` failpoint until the test has seen an interval
//! line: no sleeps.

use crate::common::*;
use crate::stop::{seeded, Background, HELD};

/// The fields every JSON progress line carries (docs/progress.md).
const FIELDS: [&str; 15] = [
    "time",
    "event",
    "phase",
    "records_noun",
    "records_done",
    "records_total",
    "bytes_done",
    "bytes_total",
    "records_per_second",
    "bytes_per_second",
    "eta_seconds",
    "units_done",
    "units_running",
    "units_left",
    "elapsed_seconds",
];

#[tokio::test]
async fn a_copy_without_a_terminal_writes_progress_lines_at_each_phase_and_interval() {
    let db = seeded("lines_text", 3_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let extra = [
        "--batch-rows",
        "500",
        "--parallel",
        "1",
        "--progress-interval",
        "1",
    ];
    let mut run = Background::start(job.path(), &args("copy", &f, &extra), "hold-after-batch:2");
    run.wait_for("offload progress: copy started");
    run.wait_for(HELD);
    // Held after the second batch: the next interval line shows it, with the rate and what is left.
    let line = run.wait_for("offload progress: copy: ");
    assert!(
        line.contains("/3k rows")
            && line.contains("rows/s")
            && line.contains("units 0 done, 1 running, 0 left"),
        "an interval line in the bars' words: {line}"
    );
    run.release();
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("offload progress: copy done: 3k/3k rows"),
        "a line when the copy phase ends: {stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("progress") && l.contains('\u{1b}')),
        "no terminal escape codes in the lines: {stderr}"
    );
    db.drop_both().await;
}

#[tokio::test]
async fn json_progress_lines_and_status_carry_the_documented_fields() {
    let db = seeded("lines_json", 3_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let extra = [
        "--batch-rows",
        "500",
        "--parallel",
        "1",
        "--progress-interval",
        "1",
        "--log-format",
        "json",
    ];
    let mut run = Background::start(job.path(), &args("copy", &f, &extra), "hold-after-batch:2");
    run.wait_for(HELD);
    let line = run.wait_for(r#""event":"progress""#);
    let value: serde_json::Value = serde_json::from_str(&line).expect("a JSON object per line");
    for key in FIELDS {
        assert!(value.get(key).is_some(), "{key} in {value}");
    }
    assert_eq!(value.as_object().unwrap().len(), FIELDS.len(), "{value}");
    assert_eq!(value["phase"], "copy");
    assert_eq!(value["records_noun"], "rows");
    assert_eq!(value["records_total"], 3_000);
    // Held after the second batch is recorded; the reporter may count it only once let go.
    assert!(value["records_done"].as_u64().unwrap() >= 500, "{value}");

    // While it is held, status (from another process) says the same in the same fields.
    let status = offload(job.path(), &["status", "--json"]);
    assert_exit(&status, 0);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let progress = &status["progress"];
    for key in FIELDS.iter().filter(|k| **k != "time") {
        assert!(progress.get(*key).is_some(), "{key} in {progress}");
    }
    assert_eq!(progress["event"], "status");
    assert_eq!(progress["records_total"], 3_000);
    assert_eq!(progress["units_running"], 1, "{progress}");

    run.release();
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Every progress line of the run parses, and none carries anything but the fields.
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.contains(r#""records_noun""#))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "phase_done" && l["phase"] == "copy"),
        "{stderr}"
    );
    for l in &lines {
        assert_eq!(l.as_object().unwrap().len(), FIELDS.len(), "{l}");
    }
    db.drop_both().await;
}

#[tokio::test]
async fn an_interval_of_zero_turns_the_lines_off() {
    let db = seeded("lines_off", 1_000).await;
    let job = tempfile::tempdir().unwrap();
    let f = flags(&db.name);
    let out = offload(job.path(), &args("copy", &f, &["--progress-interval", "0"]));
    assert_exit(&out, 0);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("offload progress"),
        "{}",
        text(&out)
    );
    db.drop_both().await;
}
