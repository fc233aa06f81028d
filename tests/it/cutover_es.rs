//! The Elasticsearch era against real Tutor 18 (and tutor-forum 18) from PyPI: offload reads the
//! platform's release from `env/version` or `tutor --version`, its `config.yml` for an external
//! Elasticsearch is byte for byte what `tutor config save --set ...` writes, Tutor renders the new
//! server into the LMS, CMS and forum settings and drops its own `elasticsearch` service, the
//! runbook's settings patch for a user and CA renders too, and the plan lists the indexes (from an
//! Elasticsearch stand-in playing the source server, and without one).
//!
//! Tutor 18 comes from `OFFLOAD_TUTOR18_BIN`, else `<repo>/.stack/venv18/bin/tutor`
//! (`scripts/stack up` or `scripts/stack venv` installs it).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::repo_root;
use offload::tutor::{
    apply_cutover, plan_cutover, tutor_cli_version, CutoverTarget, ElasticsearchTarget,
    MeilisearchTarget, MongodbTarget, MysqlTarget, RedisTarget, TutorConfig, TutorError,
};

// ---- helpers -----------------------------------------------------------------------------

fn tutor18_bin() -> PathBuf {
    let bin = std::env::var_os("OFFLOAD_TUTOR18_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".stack/venv18/bin/tutor"));
    assert!(
        bin.is_file(),
        "Tutor 18 not found at {}: run scripts/stack venv (or set OFFLOAD_TUTOR18_BIN)",
        bin.display()
    );
    bin
}

/// Runs real Tutor 18 on `root` (YAML plugins from `<root>/plugins`), no `TUTOR_*` leaking in.
fn tutor18(root: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(tutor18_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TUTOR_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .args(args)
        .env("TUTOR_ROOT", root)
        .env("TUTOR_PLUGINS_ROOT", root.join("plugins"))
        .output()
        .expect("run tutor 18");
    assert!(
        out.status.success(),
        "tutor {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from tutor")
}

fn fixture_text() -> String {
    std::fs::read_to_string(repo_root().join("fixtures/tutor/config-v18.yml"))
        .expect("fixture config-v18.yml")
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A Tutor 18 root holding the fixture, rendered once by Tutor 18 (so `env/version` says 18).
fn rendered_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yml"), fixture_text()).unwrap();
    tutor18(dir.path(), &["config", "save"]);
    assert_eq!(
        read(dir.path(), "config.yml"),
        fixture_text(),
        "the fixture is not stable under Tutor 18's config save"
    );
    dir
}

fn has_service(compose: &str, name: &str) -> bool {
    compose.contains(&format!("\n  {name}:\n"))
}

fn elasticsearch(username: &str, ca: &str) -> CutoverTarget {
    CutoverTarget::Elasticsearch(ElasticsearchTarget {
        scheme: "https".into(),
        host: "search.db.internal".into(),
        port: 9243,
        username: username.into(),
        ca_certs: ca.into(),
    })
}

/// Cut over with offload in one rendered root and with Tutor 18's `config save --set` in another;
/// the two `config.yml` files must be the same bytes. Returns offload's root.
fn cutover_matches_tutor18(targets: &[CutoverTarget]) -> tempfile::TempDir {
    let ours = rendered_root();
    let cfg = TutorConfig::load_with_env(ours.path(), []).unwrap();
    let release = cfg.tutor_release().expect("env/version read");
    assert_eq!((release.major, release.from), (Some(18), "env/version"));
    let plan = plan_cutover(&cfg, targets).unwrap();
    apply_cutover(ours.path(), &plan, &cfg.digest(), "20261207T120000Z").unwrap();

    let theirs = rendered_root();
    let args = plan.edits.tutor_save_args();
    let mut save = vec!["config", "save"];
    save.extend(args.iter().map(String::as_str));
    tutor18(theirs.path(), &save);

    let got = read(ours.path(), "config.yml");
    let want = read(theirs.path(), "config.yml");
    assert!(
        got == want,
        "offload's config.yml differs from Tutor 18's:\n--- offload\n{got}\n--- tutor\n{want}"
    );
    assert_ne!(got, fixture_text(), "the cutover changed nothing");
    ours
}

// ---- tests -------------------------------------------------------------------------------

#[test]
fn the_release_comes_from_env_version_or_tutor_version() {
    let root = rendered_root();
    let version = read(root.path(), "env/version");
    assert!(version.trim().starts_with("18."), "{version}");
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    assert!(cfg.is_elasticsearch_era());
    // Tutor 18's defaults for the Elasticsearch keys, which the file leaves out.
    assert_eq!(
        cfg.get_str("ELASTICSEARCH_HOST").as_deref(),
        Some("elasticsearch")
    );
    assert_eq!(cfg.get_u16("ELASTICSEARCH_PORT"), Some(9200));
    assert_eq!(cfg.get_bool("RUN_ELASTICSEARCH"), Some(true));

    // A root never rendered: `tutor --version` of the installed Tutor.
    let bare = tempfile::tempdir().unwrap();
    let release = tutor_cli_version(&tutor18_bin(), bare.path()).expect("tutor --version");
    assert_eq!(release.version, version.trim());
    assert_eq!((release.major, release.from), (Some(18), "tutor --version"));
    assert!(release.is_elasticsearch_era());
    assert_eq!(
        tutor_cli_version(Path::new("/nonexistent/tutor"), bare.path()),
        None
    );
}

#[test]
fn elasticsearch_cutover_matches_tutor_18_and_renders_the_new_server() {
    let root = cutover_matches_tutor18(&[elasticsearch("", "")]);
    for (key, want) in [
        ("RUN_ELASTICSEARCH", "false"),
        ("ELASTICSEARCH_SCHEME", "https"),
        ("ELASTICSEARCH_HOST", "search.db.internal"),
        ("ELASTICSEARCH_PORT", "9243"),
    ] {
        let got = tutor18(root.path(), &["config", "printvalue", key]);
        assert_eq!(got.trim_end(), want, "printvalue {key}");
    }
    let before = read(root.path(), "config.yml");
    tutor18(root.path(), &["config", "save"]);
    assert_eq!(
        read(root.path(), "config.yml"),
        before,
        "config save rewrote offload's file"
    );
    let compose = read(root.path(), "env/local/docker-compose.yml");
    assert!(!has_service(&compose, "elasticsearch"), "{compose}");
    assert!(has_service(&compose, "forum") && has_service(&compose, "mysql"));
    assert!(
        compose.contains("SEARCH_SERVER: \"https://search.db.internal:9243\""),
        "the forum's SEARCH_SERVER"
    );
    for app in ["lms", "cms"] {
        let settings = read(
            root.path(),
            &format!("env/apps/openedx/settings/{app}/production.py"),
        );
        let compact: String = settings.split_whitespace().collect();
        assert!(
            compact.contains(
                "ELASTIC_SEARCH_CONFIG=[{\"use_ssl\":True,\"host\":\"search.db.internal\",\"port\":9243,}]"
            ),
            "{app} settings"
        );
    }
}

#[test]
fn every_store_at_once_on_tutor_18_matches_tutor() {
    let targets = [
        CutoverTarget::Mysql(MysqlTarget {
            host: "mysql.db.internal".into(),
            port: 3307,
            root_username: "admin".into(),
            root_password: Some("0123".into()),
            app: None,
            plugin_users: vec![],
        }),
        CutoverTarget::Mongodb(MongodbTarget {
            host: "mongo.db.internal".into(),
            port: 27018,
            username: "openedx".into(),
            password: "yes".into(),
            use_ssl: true,
            auth_source: "admin".into(),
            auth_mechanism: "SCRAM-SHA-256".into(),
            replica_set: "rs0".into(),
        }),
        CutoverTarget::Redis(RedisTarget {
            host: "10.20.0.7".into(),
            port: 6380,
            username: "default".into(),
            password: "pässwörd".into(),
            databases: Vec::new(),
        }),
        elasticsearch("openedx", "/openedx/config/es-ca.pem"),
    ];
    let root = cutover_matches_tutor18(&targets);
    tutor18(root.path(), &["config", "save"]);
    let compose = read(root.path(), "env/local/docker-compose.yml");
    for gone in ["mysql", "mongodb", "redis", "elasticsearch"] {
        assert!(
            !has_service(&compose, gone),
            "{gone} still in docker-compose.yml"
        );
    }
}

#[test]
fn the_runbook_settings_patch_renders_with_tutor_18() {
    let root = rendered_root();
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let plan = plan_cutover(
        &cfg,
        &[elasticsearch("openedx", "/openedx/config/es-ca.pem")],
    )
    .unwrap();
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("no setting for an Elasticsearch user")),
        "{:?}",
        plan.warnings
    );
    let runbook = plan.runbook();
    assert!(!runbook.contains("s3cret"), "{runbook}");
    for line in [
        "tutor local run cms ./manage.py cms reindex_course --all --setup    # courseware_content, course_info",
        "tutor local run cms ./manage.py cms reindex_library --all    # library_index",
        "tutor local do init --limit=forum    # comments, comment_threads",
        "tutor plugins enable offload_elasticsearch",
    ] {
        assert!(runbook.contains(line), "runbook lacks {line:?}:\n{runbook}");
    }
    apply_cutover(root.path(), &plan, &cfg.digest(), "20261207T120000Z").unwrap();

    // The plugin the runbook describes, as an operator writes it: the YAML lines between
    // `holding` and `then:`, unindented, with the password in place of the placeholder.
    let start = runbook.find("holding\n").expect("plugin text") + "holding\n".len();
    let end = runbook[start..]
        .find("     then:")
        .expect("end of plugin text")
        + start;
    let plugin: String = runbook[start..end]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("       ").unwrap_or(l)))
        .collect::<String>()
        .replace("<password>", "s3cret");
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("offload_elasticsearch.yml"), plugin).unwrap();
    tutor18(root.path(), &["plugins", "enable", "offload_elasticsearch"]);
    tutor18(root.path(), &["config", "save"]);
    let lms = read(root.path(), "env/apps/openedx/settings/lms/production.py");
    let patched = "ELASTIC_SEARCH_CONFIG = [{\"use_ssl\": True, \"host\": \"search.db.internal\", \"port\": 9243, \"http_auth\": \"openedx:s3cret\", \"verify_certs\": True, \"ca_certs\": \"/openedx/config/es-ca.pem\"}]";
    // The patch comes after Tutor's own assignment, so it is the value Django keeps.
    let tutors = lms
        .find("ELASTIC_SEARCH_CONFIG = [{")
        .expect("Tutor's own setting");
    let ours = lms.find(patched).expect("the patch in the LMS settings");
    assert!(ours > tutors, "the patch must come last");
    let check = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import ast; ast.parse(open({:?}).read())",
            root.path()
                .join("env/apps/openedx/settings/lms/production.py")
        ))
        .output()
        .expect("python3");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn search_targets_of_the_wrong_era_are_refused_and_nothing_is_written() {
    // Meilisearch on Tutor 18.
    let root = rendered_root();
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let meili = CutoverTarget::Meilisearch(MeilisearchTarget {
        url: "https://search.internal:7700".into(),
        public_url: "https://search.example.org".into(),
        master_key: "Mk-0123456789abcdefghijklmnop".into(),
        api_key: "k".into(),
    });
    let err = plan_cutover(&cfg, &[meili]).unwrap_err();
    assert!(matches!(err, TutorError::UnknownVersion { .. }), "{err}");
    assert!(err.to_string().contains("Elasticsearch"), "{err}");

    // Elasticsearch on a root rendered by Tutor 22.
    let v22 = tempfile::tempdir().unwrap();
    let fixture22 = std::fs::read_to_string(repo_root().join("fixtures/tutor/config.yml")).unwrap();
    std::fs::write(v22.path().join("config.yml"), &fixture22).unwrap();
    std::fs::create_dir_all(v22.path().join("env")).unwrap();
    std::fs::write(v22.path().join("env/version"), "22.0.3\n").unwrap();
    let cfg = TutorConfig::load_with_env(v22.path(), []).unwrap();
    assert!(!cfg.is_elasticsearch_era());
    assert_eq!(
        cfg.get("ELASTICSEARCH_HOST"),
        None,
        "no Elasticsearch defaults on 22"
    );
    let err = plan_cutover(&cfg, &[elasticsearch("", "")]).unwrap_err();
    assert!(err.to_string().contains("--to-elasticsearch"), "{err}");
    assert_eq!(read(v22.path(), "config.yml"), fixture22);
}

// ---- the command line --------------------------------------------------------------------

/// The offload binary on `root` (the job folder beside it), without a `tutor` on PATH.
fn offload(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(args)
        .arg("--tutor-root")
        .arg(root)
        .env("PATH", "/usr/bin:/bin")
        .env("NO_COLOR", "1")
        .output()
        .expect("run offload")
}

/// An Elasticsearch STAND-IN playing the platform's source server for `offload plan`: it answers
/// `GET /_cat/indices?format=json&h=index,docs.count` as Elasticsearch 7 does (an array of
/// objects whose values are strings, hidden `.`-indexes included, the forum's indexes under
/// their timestamped names), and 404 with Elasticsearch's error body to anything else.
struct EsStandin {
    port: u16,
}

impl EsStandin {
    fn start() -> EsStandin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if header == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if target == "/_cat/indices?format=json&h=index,docs.count" {
                    (
                        "200 OK",
                        r#"[{"index":"courseware_content","docs.count":"1520"},{"index":".geoip_databases","docs.count":"40"},{"index":"course_info","docs.count":"12"},{"index":"comments_20240612101010","docs.count":"311"},{"index":"comment_threads_20240612101010","docs.count":"97"},{"index":"library_index","docs.count":"0"}]"#,
                    )
                } else {
                    (
                        "404 Not Found",
                        r#"{"error":{"root_cause":[{"type":"index_not_found_exception"}]},"status":404}"#,
                    )
                };
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        EsStandin { port }
    }
}

#[test]
fn plan_lists_the_indexes_from_the_source_or_from_the_release() {
    let root = rendered_root();
    // No source server reachable (Tutor's `elasticsearch` host): the release's list.
    let out = offload(root.path(), &["plan", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let es = &plan["elasticsearch"];
    assert_eq!(es["tutor_version"].as_str().map(|v| &v[..3]), Some("18."));
    let names: Vec<&str> = es["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "courseware_content",
            "course_info",
            "library_index",
            "comments",
            "comment_threads"
        ]
    );
    assert!(es["indexes_from"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
    assert!(es["what_offload_does"]
        .as_str()
        .unwrap()
        .contains("rebuilt, not copied"));

    // The source answers (the stand-in, named by config.yml as Tutor would): its indexes.
    let standin = EsStandin::start();
    let cfg_path = root.path().join("config.yml");
    let text = read(root.path(), "config.yml");
    std::fs::write(
        &cfg_path,
        format!(
            "ELASTICSEARCH_HOST: 127.0.0.1\nELASTICSEARCH_PORT: {}\n{text}",
            standin.port
        ),
    )
    .unwrap();
    let out = offload(
        root.path(),
        &[
            "plan",
            "--json",
            "--to-elasticsearch",
            "https://openedx@search.db.internal:9243",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let es = &plan["elasticsearch"];
    assert!(es["indexes_from"]
        .as_str()
        .unwrap()
        .contains("read from the source"));
    let rows: Vec<(String, Option<u64>, Option<String>)> = es["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["index"].as_str().unwrap().to_string(),
                i["documents"].as_u64(),
                i["platform_index"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert!(rows.contains(&(
        "comments_20240612101010".into(),
        Some(311),
        Some("comments".into())
    )));
    assert!(rows.contains(&(
        "courseware_content".into(),
        Some(1520),
        Some("courseware_content".into())
    )));
    assert!(
        !rows.iter().any(|r| r.0.starts_with('.')),
        "hidden indexes are not listed"
    );
    assert_eq!(es["target"], "https://openedx@search.db.internal:9243");

    // People get the same as text.
    let out = offload(root.path(), &["plan"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Elasticsearch (rebuilt, not copied)"),
        "{text}"
    );
    assert!(text.contains("comments_20240612101010"), "{text}");
}

#[test]
fn cutover_without_a_job_rewrites_the_elasticsearch_settings() {
    let root = rendered_root();
    // A password in the URL is refused before anything is read or written, and not shown.
    let out = offload(
        root.path(),
        &[
            "cutover",
            "--force",
            "--to-elasticsearch",
            "https://openedx:s3cret@search.db.internal:9243",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("--to-elasticsearch") && !text.contains("s3cret"),
        "{text}"
    );
    assert_eq!(read(root.path(), "config.yml"), fixture_text());

    let out = offload(
        root.path(),
        &[
            "cutover",
            "--force",
            "--to-elasticsearch",
            "https://search.db.internal:9243",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("+RUN_ELASTICSEARCH: false"), "{text}");
    assert!(text.contains("reindex_course --all --setup"), "{text}");
    assert_eq!(
        tutor18(root.path(), &["config", "printvalue", "ELASTICSEARCH_HOST"]).trim_end(),
        "search.db.internal"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(["rollback", "--tutor-root"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(root.path(), "config.yml"), fixture_text());
}
