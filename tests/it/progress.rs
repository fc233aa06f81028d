//! Progress as a person sees it: the real `offload copy` and `offload verify` of MySQL and MongoDB
//! at once, run in a real terminal (tmux), whose screen shows rounded rates with their units, a
//! line per store, and no long fractions; and `--no-progress` keeps the terminal free of bars.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mongodb::bson::doc;

use crate::common::*;

const TABLE_ROWS: u64 = 3000;
const DOCUMENTS: u64 = 2500;
/// How long one command may take in the terminal before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(180);

fn mongodb_source() -> String {
    std::env::var("OFFLOAD_TEST_MONGODB_URL")
        .unwrap_or_else(|_| env_or("OFFLOAD_TEST_MONGODB_SOURCE", "mongodb://127.0.0.1:27117"))
}

fn mongodb_target() -> String {
    std::env::var("OFFLOAD_TEST_MONGODB_TARGET_URL")
        .unwrap_or_else(|_| env_or("OFFLOAD_TEST_MONGODB_TARGET", "mongodb://127.0.0.1:27118"))
}

async fn mongodb_client(uri: &str) -> mongodb::Client {
    let mut opts = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    let c = mongodb::Client::with_options(opts).unwrap();
    if let Err(e) = c.database("admin").run_command(doc! {"ping": 1}).await {
        panic!("cannot reach the test MongoDB at {uri}: {e}. Start the test servers with `scripts/stack up mongodb`");
    }
    c
}

async fn drop_mongodb(name: &str) {
    for uri in [mongodb_source(), mongodb_target()] {
        mongodb_client(&uri)
            .await
            .database(name)
            .drop()
            .await
            .unwrap();
    }
}

/// A tmux server of this test's own (its own socket), whose panes stay on screen after their
/// command exits; killed when dropped.
struct Terminal {
    dir: tempfile::TempDir,
}

impl Terminal {
    fn new() -> Terminal {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tmux.conf"),
            "set -g remain-on-exit on\nset -g history-limit 10000\n",
        )
        .unwrap();
        Terminal { dir }
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(self.dir.path().join("socket"))
            .arg("-f")
            .arg(self.dir.path().join("tmux.conf"))
            .args(args)
            .output()
            .expect("tmux (installed by scripts/stack install-terminal)")
    }

    /// Run `program args` in a new 200x50 window named `name`; wait until it exits (no longer than
    /// the deadline) and return its exit status and the whole screen, scrollback included.
    ///
    /// A shell around the program prints its exit status once it has exited: tmux shows that line
    /// only after everything the program wrote, so the screen is complete once the line is there.
    /// (Whether tmux marks the pane dead is no guide: Debian's tmux 3.3a now and then misses the
    /// SIGCHLD of a pane's program, leaving it a zombie and the pane alive.)
    fn run(&self, name: &str, program: &Path, args: &[String]) -> (i32, String) {
        let mut command: Vec<String> = [
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "200",
            "-y",
            "50",
            "sh",
            "-c",
            "\"$@\"; echo \"[exited with status $?]\"",
            "sh",
            // No password or failpoint of the caller's leaks in; no colour codes on screen.
            "env",
        ]
        .map(String::from)
        .to_vec();
        for var in [
            "OFFLOAD_FAILPOINT",
            "OFFLOAD_FROM_MYSQL_PASSWORD",
            "OFFLOAD_TO_MYSQL_PASSWORD",
            "OFFLOAD_FROM_MONGODB_PASSWORD",
            "OFFLOAD_TO_MONGODB_PASSWORD",
        ] {
            command.extend(["-u".into(), var.into()]);
        }
        command.push("NO_COLOR=1".into());
        command.push(program.display().to_string());
        command.extend(args.iter().cloned());
        let refs: Vec<&str> = command.iter().map(|s| s.as_str()).collect();
        let started = self.tmux(&refs);
        assert!(
            started.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let until = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen(name);
            let status = screen.lines().find_map(|l| {
                l.trim_end()
                    .strip_prefix("[exited with status ")
                    .and_then(|rest| rest.strip_suffix(']'))
            });
            if let Some(status) = status {
                let status = status.parse().unwrap_or(-1);
                return (status, screen);
            }
            assert!(
                Instant::now() < until,
                "`offload {}` still running after {DEADLINE:?}; screen:\n{screen}",
                args[0]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screen(&self, name: &str) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-S", "-", "-t", name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The first number with four or more decimals (`453.715311986569`), if the text holds one.
fn long_fraction(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && b.get(i + 1) == Some(&b'.') {
            let decimals = b[i + 2..].iter().take_while(|c| c.is_ascii_digit()).count();
            if decimals >= 4 {
                let start = text[..=i]
                    .rfind(|c: char| !c.is_ascii_digit())
                    .map_or(0, |p| p + 1);
                return Some(text[start..i + 2 + decimals].to_string());
            }
        }
        i += 1;
    }
    None
}

/// Whether `word` is a rounded number with an optional SI prefix: `0.999`, `119k`, `1.2M`, `1020`.
fn rounded(word: &str) -> bool {
    let number = word.trim_end_matches(['k', 'M', 'G', 'T']);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    !whole.is_empty()
        && whole.chars().all(|c| c.is_ascii_digit())
        && fraction.chars().all(|c| c.is_ascii_digit())
        && whole.len() <= 4
        && whole.len() + fraction.len() <= 4
        && (fraction.is_empty() || whole.len() + fraction.len() <= 3 || whole == "0")
}

/// The line of `screen` that starts (after spaces) with `start`.
fn line_starting<'a>(screen: &'a str, start: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} on screen:\n{screen}"))
}

/// The word right before `unit` in `line`, e.g. the `119k` of `119k rows/s`.
fn number_before<'a>(line: &'a str, unit: &str) -> &'a str {
    let at = line
        .find(unit)
        .unwrap_or_else(|| panic!("no {unit:?} in {line:?}"));
    line[..at].trim_end().rsplit(' ').next().unwrap()
}

/// A store's line: `  mysql [====] 3k/3k rows  280 KiB  9.86k rows/s  930 KiB/s  in <1s  1/1 tables`.
fn assert_store_line(screen: &str, store: &str, noun: &str, total: u64) {
    let line = line_starting(screen, &format!("{store} ["));
    let rate = number_before(line, &format!(" {noun}/s"));
    assert!(
        rounded(rate),
        "{store}: rate {rate:?} is not rounded: {line}"
    );
    let counted = number_before(line, &format!(" {noun} "));
    let (done, of) = counted
        .split_once('/')
        .unwrap_or_else(|| panic!("{store}: no done/total in {line:?}"));
    assert!(rounded(done) && rounded(of), "{store}: counts {counted:?}");
    assert_eq!(
        done,
        format!("{}k", total as f64 / 1000.0),
        "{store}: {line}"
    );
    let byte_rate = line
        .split("  ")
        .find(|part| part.ends_with("iB/s") || part.ends_with(" B/s"))
        .unwrap_or_else(|| panic!("{store}: no byte rate in {line:?}"));
    let (number, unit) = byte_rate.trim().split_once(' ').unwrap();
    assert!(rounded(number), "{store}: byte rate {byte_rate:?}");
    assert!(
        ["B/s", "KiB/s", "MiB/s", "GiB/s"].contains(&unit),
        "{byte_rate:?}"
    );
}

fn assert_readable(screen: &str) {
    if let Some(n) = long_fraction(screen) {
        panic!("a long fraction ({n}) on screen:\n{screen}");
    }
}

#[tokio::test]
async fn bars_in_a_terminal_show_rounded_rates_and_a_line_per_store() {
    let mysql = TestDb::new("progress").await;
    exec(
        &mysql_source(),
        &format!("CREATE DATABASE `{}`", mysql.name),
    )
    .await;
    exec(
        &mysql_source(),
        &format!(
            "CREATE TABLE `{}`.readings (id INT PRIMARY KEY, note VARCHAR(200))",
            mysql.name
        ),
    )
    .await;
    exec(
        &mysql_source(),
        &format!(
            // Pairs of 0..99, as the server limits a recursion to 1000 steps.
            "INSERT INTO `{}`.readings (id, note) WITH RECURSIVE seq(n) AS \
             (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < 99) \
             SELECT a.n * 100 + b.n + 1, REPEAT('progress ', 10) FROM seq a, seq b \
             WHERE a.n * 100 + b.n < {TABLE_ROWS}",
            mysql.name
        ),
    )
    .await;
    let mongo = format!("it_m_progress_{}", std::process::id());
    drop_mongodb(&mongo).await;
    mongodb_client(&mongodb_source())
        .await
        .database(&mongo)
        .collection("events")
        .insert_many((0..DOCUMENTS).map(|i| doc! {"_id": i as i64, "note": "progress ".repeat(10)}))
        .await
        .unwrap();

    let job = tempfile::tempdir().unwrap();
    let job_flags = |command: &str| -> Vec<String> {
        vec![
            command.to_string(),
            "--job".into(),
            job.path().display().to_string(),
            "--tutor-root".into(),
            job.path().join("no-tutor-here").display().to_string(),
        ]
    };
    let mut copy = job_flags("copy");
    copy.extend(flags(&mysql.name));
    copy.extend([
        "--from-mongodb".into(),
        mongodb_source(),
        "--to-mongodb".into(),
        mongodb_target(),
        "--mongodb-databases".into(),
        mongo.clone(),
        // Bars and progress lines never both on one terminal, whatever the interval.
        "--progress-interval".into(),
        "1".into(),
    ]);
    let offload = PathBuf::from(env!("CARGO_BIN_EXE_offload"));
    let terminal = Terminal::new();

    // The copy's bars stay on screen when it is done: the overall line, then one line per store.
    let (status, screen) = terminal.run("copy", &offload, &copy);
    assert_eq!(status, 0, "copy failed; screen:\n{screen}");
    assert_readable(&screen);
    assert!(
        !screen.contains("offload progress"),
        "progress lines beside the bars:\n{screen}"
    );
    let overall = line_starting(&screen, "copy [");
    assert!(
        overall.contains(" records/s") && overall.contains("copy done"),
        "two stores: the overall line counts records: {overall}"
    );
    assert_store_line(&screen, "mysql", "rows", TABLE_ROWS);
    assert_store_line(&screen, "mongodb", "documents", DOCUMENTS);
    assert!(
        line_starting(&screen, "mysql [").contains("1/1 tables"),
        "{screen}"
    );
    assert!(
        line_starting(&screen, "mongodb [").contains("1/1 collections"),
        "{screen}"
    );

    // Verify draws the same way.
    let (status, screen) = terminal.run("verify", &offload, &job_flags("verify"));
    assert_eq!(status, 0, "verify failed; screen:\n{screen}");
    assert_readable(&screen);
    assert!(line_starting(&screen, "verify [").contains("verify done"));
    assert_store_line(&screen, "mysql", "rows", TABLE_ROWS);
    assert_store_line(&screen, "mongodb", "documents", DOCUMENTS);

    // --no-progress: a terminal, and still no bars; progress comes as lines instead.
    let mut quiet = job_flags("verify");
    quiet.push("--no-progress".into());
    let (status, screen) = terminal.run("quiet", &offload, &quiet);
    assert_eq!(status, 0, "verify --no-progress failed; screen:\n{screen}");
    assert!(
        !screen.contains("verify ["),
        "--no-progress drew bars:\n{screen}"
    );
    assert!(
        screen.contains("offload progress: verify done"),
        "--no-progress: progress as lines:\n{screen}"
    );
    assert!(screen.contains("Safe to switch"), "{screen}");

    drop(terminal);
    mysql.drop_both().await;
    drop_mongodb(&mongo).await;
}

#[test]
fn the_screen_checks_tell_rounded_numbers_from_long_ones() {
    assert_eq!(
        long_fraction("  copy  34,453.715311986569/s"),
        Some("453.715311986569".into())
    );
    assert_eq!(long_fraction("119k rows/s  0.999 keys/s  1.5 KiB"), None);
    for ok in ["0", "0.999", "119k", "1.23k", "42.1", "1020", "3M"] {
        assert!(rounded(ok), "{ok}");
    }
    for bad in ["119,124", "119124", "1.2345", "42.15", "", "k"] {
        assert!(!rounded(bad), "{bad}");
    }
}
