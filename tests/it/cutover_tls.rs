//! Cutover to TLS targets and to MongoDB replica sets, against real Tutor: the settings Tutor has
//! no key for go into a settings-patch plugin in Tutor's plugins root, which Tutor loads, enables
//! and renders into the LMS and CMS settings; the rendered Python, run with the stack's Python,
//! turns Tutor's settings into ones that reach a TLS Redis and a TLS MongoDB (private CA, test
//! servers of their own); rollback removes the plugin. MongoDB host lists and `mongodb+srv://`
//! names are written as Tutor's templates read them.
//!
//! Tutor comes from `OFFLOAD_TUTOR_BIN`, else `<repo>/.stack/venv/bin/tutor`; Python (with
//! PyYAML, redis-py and pymongo) from `OFFLOAD_STACK_PYTHON`, else the same venv.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{repo_root, tutor_bin};
use crate::support::tls::{Certs, TlsServer};
use offload::tutor::settings_patch::{MongodbTls, MysqlSslMode, MysqlTls, RedisTls, TargetTls};
use offload::tutor::{
    apply_cutover, plan_cutover_with_tls, rollback, CutoverPlan, CutoverTarget, MongodbTarget,
    MysqlTarget, RedisTarget, TutorConfig,
};

fn python() -> PathBuf {
    std::env::var("OFFLOAD_STACK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack/venv/bin/python"))
}

fn fixture_text() -> String {
    std::fs::read_to_string(repo_root().join("fixtures/tutor/config.yml")).unwrap()
}

/// A Tutor root holding the fixture, and a plugins root of its own.
struct Root {
    root: tempfile::TempDir,
    plugins: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("config.yml"), fixture_text()).unwrap();
        Root {
            root,
            plugins: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Real Tutor on this root with this plugins root, no `TUTOR_*` of this process leaking in.
    fn tutor(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(tutor_bin());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TUTOR_") {
                cmd.env_remove(name);
            }
        }
        let out = cmd
            .args(args)
            .env("TUTOR_ROOT", self.path())
            .env("TUTOR_PLUGINS_ROOT", self.plugins.path())
            .output()
            .expect("run tutor");
        assert!(
            out.status.success(),
            "tutor {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn plan(&self, targets: &[CutoverTarget], tls: &TargetTls) -> CutoverPlan {
        let cfg = TutorConfig::load_with_env(self.path(), []).unwrap();
        plan_cutover_with_tls(&cfg, targets, tls, self.plugins.path()).unwrap()
    }

    fn cut_over(&self, targets: &[CutoverTarget], tls: &TargetTls) -> CutoverPlan {
        let plan = self.plan(targets, tls);
        let digest = TutorConfig::load_with_env(self.path(), [])
            .unwrap()
            .digest();
        apply_cutover(self.path(), &plan, &digest, "20261207T190000Z").unwrap();
        plan
    }
}

fn mysql() -> CutoverTarget {
    CutoverTarget::Mysql(MysqlTarget {
        host: "mysql.db.internal".into(),
        port: 3306,
        root_username: "admin".into(),
        root_password: Some("root-secret-1".into()),
        app: None,
        plugin_users: vec![],
    })
}

fn redis(port: u16) -> CutoverTarget {
    CutoverTarget::Redis(RedisTarget {
        host: "127.0.0.1".into(),
        port,
        username: String::new(),
        password: String::new(),
        databases: Vec::new(),
    })
}

fn mongodb(host: &str, port: u16, replica_set: &str) -> CutoverTarget {
    CutoverTarget::Mongodb(MongodbTarget {
        host: host.into(),
        port,
        username: String::new(),
        password: String::new(),
        use_ssl: true,
        auth_source: "admin".into(),
        auth_mechanism: String::new(),
        replica_set: replica_set.into(),
    })
}

/// Runs the offload block of the rendered LMS settings the way Open edX would reach it: Tutor's
/// `DATABASES` and Celery broker tokens from the rendered `lms.env.yml` (the broker URL built as
/// edx-platform's production settings build it), Tutor's `CACHES` and `mongodb_parameters` from
/// the rendered settings, a modulestore that copied the latter; then connects as django-redis,
/// the Celery broker (redis-py underneath) and edx-platform's `connect_to_mongodb` would.
const HARNESS: &str = r#"
import ast, json, sys, yaml, redis, pymongo

settings_path, env_path, begin, end = sys.argv[1:5]
text = open(settings_path).read()
tokens = yaml.safe_load(open(env_path))
namespace = {"DATABASES": tokens["DATABASES"]}
namespace["BROKER_URL"] = "%s://%s:%s@%s/%s" % tuple(
    tokens["CELERY_BROKER_" + k] for k in ("TRANSPORT", "USER", "PASSWORD", "HOSTNAME", "VHOST")
)
module = ast.parse(text)
wanted = {"CACHES", "mongodb_parameters"}
for node in module.body:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in wanted:
        wanted.discard(node.targets[0].id)
        exec(compile(ast.Module(body=[node], type_ignores=[]), settings_path, "exec"), namespace)
assert not wanted, wanted
namespace["MODULESTORE"] = {"default": {"OPTIONS": {"stores": [
    {"NAME": "split", "DOC_STORE_CONFIG": dict(namespace["mongodb_parameters"])},
]}}}

def ping(location, **kwargs):
    try:
        return redis.Redis(connection_pool=redis.ConnectionPool.from_url(location, **kwargs), socket_timeout=5).ping()
    except redis.exceptions.ConnectionError:
        return False

# Tutor's own settings cannot reach a TLS-only Redis.
before = ping(namespace["CACHES"]["default"]["LOCATION"], socket_connect_timeout=5, socket_timeout=5)
block = text[text.index(begin):text.index(end)]
exec(compile(block, settings_path, "exec"), namespace)

out = {"databases": namespace["DATABASES"], "broker_url": namespace["BROKER_URL"],
       "broker_use_ssl": {k: str(v) for k, v in namespace.get("BROKER_USE_SSL", {}).items()},
       "caches": {}, "mongodb": {}, "ping_without_patch": before}
for name, cache in namespace["CACHES"].items():
    kwargs = cache.get("OPTIONS", {}).get("CONNECTION_POOL_KWARGS", {})
    pool = redis.ConnectionPool.from_url(cache["LOCATION"], **kwargs)
    out["caches"][name] = {"location": cache["LOCATION"], "ping": redis.Redis(connection_pool=pool).ping(),
                           "ca": kwargs.get("ssl_ca_certs")}
broker = redis.Redis.from_url(namespace["BROKER_URL"], **namespace["BROKER_USE_SSL"])
out["broker_ping"] = broker.ping()
for label, params in [("common", namespace["mongodb_parameters"]),
                      ("modulestore", namespace["MODULESTORE"]["default"]["OPTIONS"]["stores"][0]["DOC_STORE_CONFIG"])]:
    kwargs = {k: v for k, v in params.items() if k not in ("db", "host", "port", "user", "password", "authsource")}
    client = pymongo.MongoClient(host=params["host"], port=params["port"], tz_aware=True,
                                 document_class=dict, serverSelectionTimeoutMS=20000, **kwargs)
    out["mongodb"][label] = {"ping": client.admin.command("ping")["ok"], "ca": params.get("tlsCAFile")}
    client.close()
cas = {out["databases"]["default"]["OPTIONS"]["ssl"]["ca"]}
cas |= {c["ca"] for c in out["caches"].values()} | {m["ca"] for m in out["mongodb"].values()}
out["ca_files"] = {path: open(path).read() for path in cas}
print(json.dumps(out))
"#;

#[test]
fn tls_targets_get_a_settings_patch_that_tutor_renders_and_that_connects() {
    let certs = Certs::new();
    let redis_server = TlsServer::redis(&certs);
    let mongo_server = TlsServer::secantus(&certs, &python());
    let ca = std::fs::read_to_string(certs.path("ca.pem")).unwrap();
    let root = Root::new();
    let targets = [
        mysql(),
        redis(redis_server.port),
        mongodb("127.0.0.1", mongo_server.port, ""),
    ];
    let tls = TargetTls {
        mysql: Some(MysqlTls {
            mode: MysqlSslMode::VerifyIdentity,
            ca_pem: Some(ca.clone()),
        }),
        redis: Some(RedisTls {
            verify: true,
            ca_pem: Some(ca.clone()),
        }),
        mongodb: Some(MongodbTls {
            ca_pem: Some(ca.clone()),
            allow_invalid_certificates: false,
        }),
    };
    let plan = root.cut_over(&targets, &tls);
    let plugin = plan.settings_patch().expect("a settings patch").clone();
    assert_eq!(plugin.stores, ["MySQL", "Redis", "MongoDB"]);
    assert_eq!(plugin.path.parent(), Some(root.plugins.path()));
    assert!(
        plan.masked_diff().contains(&plugin.name),
        "{}",
        plan.masked_diff()
    );
    assert!(plan.runbook().contains(&plugin.name), "{}", plan.runbook());

    // The file: Tutor's to read, holding no secret.
    let text = std::fs::read_to_string(&plugin.path).unwrap();
    assert_eq!(
        std::fs::metadata(&plugin.path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    assert!(!text.contains("root-secret-1"));
    assert!(text.contains("{{ MYSQL_HOST }}") && text.contains("{{ REDIS_HOST }}"));

    // Real Tutor lists it as enabled, and enabling it with Tutor gives the same config.yml.
    let listed = root.tutor(&["plugins", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&plugin.name) && l.contains("enabled")),
        "{listed}"
    );
    let theirs = Root {
        root: tempfile::tempdir().unwrap(),
        plugins: tempfile::tempdir().unwrap(),
    };
    std::fs::write(theirs.path().join("config.yml"), fixture_text()).unwrap();
    std::fs::copy(
        &plugin.path,
        theirs.plugins.path().join(plugin.path.file_name().unwrap()),
    )
    .unwrap();
    theirs.tutor(&["plugins", "enable", &plugin.name]);
    let mut save = vec!["config".to_owned(), "save".to_owned()];
    let args = plan.edits.tutor_save_args();
    let mut i = 0;
    while i < args.len() {
        if !args[i + 1].starts_with("PLUGINS=") {
            save.extend([args[i].clone(), args[i + 1].clone()]);
        }
        i += 2;
    }
    theirs.tutor(&save.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        root.read("config.yml"),
        theirs.read("config.yml"),
        "offload's config.yml differs from Tutor's after `plugins enable`"
    );

    // Tutor renders the patch into the LMS and CMS settings, and leaves config.yml alone.
    let before = root.read("config.yml");
    root.tutor(&["config", "save"]);
    assert_eq!(root.read("config.yml"), before);
    let begin = format!(
        "# ---- offload settings patch ({}): begin ----",
        plugin.name
    );
    let end = format!("# ---- offload settings patch ({}): end ----", plugin.name);
    let lms = root.read("env/apps/openedx/settings/lms/production.py");
    for settings in [
        &lms,
        &root.read("env/apps/openedx/settings/cms/production.py"),
    ] {
        assert!(settings.contains(&begin) && settings.contains(&end));
        assert!(settings.contains("str(_offload_database.get(\"HOST\")) == \"mysql.db.internal\""));
        assert!(settings.contains(&format!(
            "_offload_redis_at = \"@127.0.0.1:{}/\"",
            redis_server.port
        )));
        assert!(settings.contains("    mongodb_parameters.update(_offload_mongodb_tls)"));
    }

    // The rendered settings, run: TLS on, the CA written where the containers can read it, and
    // the TLS Redis and MongoDB answer through them.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .args(["-c", HARNESS])
        .arg(
            root.path()
                .join("env/apps/openedx/settings/lms/production.py"),
        )
        .arg(root.path().join("env/apps/openedx/config/lms.env.yml"))
        .args([&begin, &end])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the rendered settings did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let options = &got["databases"]["default"]["OPTIONS"];
    assert_eq!(options["ssl_mode"], "VERIFY_IDENTITY");
    assert_eq!(
        options["init_command"],
        "SET sql_mode='STRICT_TRANS_TABLES'"
    );
    assert_eq!(got["ping_without_patch"], false);
    let caches = got["caches"].as_object().unwrap();
    assert!(caches.len() >= 7, "{caches:?}");
    for (name, cache) in caches {
        let location = cache["location"].as_str().unwrap();
        assert!(
            location.starts_with(&format!("rediss://@127.0.0.1:{}/", redis_server.port)),
            "{name}: {location}"
        );
        assert_eq!(cache["ping"], true, "{name}");
    }
    assert!(got["broker_url"]
        .as_str()
        .unwrap()
        .starts_with(&format!("rediss://:@127.0.0.1:{}/0", redis_server.port)));
    // ssl.CERT_REQUIRED
    assert_eq!(got["broker_use_ssl"]["ssl_cert_reqs"], "2");
    assert_eq!(got["broker_ping"], true);
    for label in ["common", "modulestore"] {
        assert_eq!(got["mongodb"][label]["ping"], 1.0, "{label}");
    }
    let files = got["ca_files"].as_object().unwrap();
    assert_eq!(files.len(), 3, "a CA file per store: {files:?}");
    for (path, content) in files {
        assert!(
            path.starts_with(&tmp.path().display().to_string()),
            "{path}"
        );
        assert!(ca.contains(content.as_str().unwrap().trim()), "{path}");
    }

    // Rollback removes the plugin; Tutor then renders the settings without it.
    let rolled = rollback(root.path(), false, "20261207T200000Z").unwrap();
    assert_eq!(
        rolled.removed_plugin.as_deref(),
        Some(plugin.path.as_path())
    );
    assert!(!plugin.path.exists());
    assert_eq!(root.read("config.yml"), fixture_text());
    root.tutor(&["config", "save"]);
    let lms = root.read("env/apps/openedx/settings/lms/production.py");
    assert!(!lms.contains("offload settings patch"));
}

#[test]
fn without_tls_tutor_has_no_key_for_there_is_no_plugin() {
    let root = Root::new();
    // MONGODB_USE_SSL says all for TLS verified by the system's CAs, and `preferred` is MySQL's
    // client default.
    let tls = TargetTls {
        mongodb: Some(MongodbTls {
            ca_pem: None,
            allow_invalid_certificates: false,
        }),
        ..TargetTls::default()
    };
    let plan = root.cut_over(&[mysql(), mongodb("mongo.internal", 27017, "")], &tls);
    assert!(plan.settings_patch().is_none());
    assert!(plan.edits.get("PLUGINS").is_none());
    assert_eq!(std::fs::read_dir(root.plugins.path()).unwrap().count(), 0);
    let rolled = rollback(root.path(), false, "20261207T200000Z").unwrap();
    assert_eq!(rolled.removed_plugin, None);
}

/// Tutor's LMS init script (`jobs/init/lms.sh`) for a root, rendered by Tutor.
const RENDER_LMS_INIT: &str = r#"
import sys
from tutor import config, env, hooks
hooks.Actions.CORE_READY.do()
print(env.render_file(config.load(sys.argv[1]), "jobs", "init", "lms.sh"))
"#;

#[test]
fn mongodb_host_lists_and_srv_names_render_as_tutor_reads_them() {
    for (host, port, replica_set, wait) in [
        (
            "m1.db.internal,m2.db.internal,m3.db.internal",
            27018,
            "rs0",
            "dockerize -wait tcp://m2.db.internal:27018 -timeout 20s",
        ),
        (
            "mongodb+srv://cluster0.example.mongodb.net",
            27017,
            "",
            "MongoDB is using SRV records, so we cannot wait for it to be ready",
        ),
    ] {
        let root = Root::new();
        root.cut_over(&[mongodb(host, port, replica_set)], &TargetTls::default());
        assert_eq!(
            root.tutor(&["config", "printvalue", "MONGODB_HOST"])
                .trim_end(),
            host
        );
        root.tutor(&["config", "save"]);
        let lms = root.read("env/apps/openedx/settings/lms/production.py");
        assert!(lms.contains(&format!("\"host\": \"{host}\",")), "{host}");
        assert!(lms.contains("\"ssl\": True,"));
        // Tutor renders the init scripts when it runs them: render it with Tutor's own renderer.
        let out = Command::new(python())
            .args(["-c", RENDER_LMS_INIT])
            .arg(root.path())
            .env("TUTOR_PLUGINS_ROOT", root.plugins.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init = String::from_utf8(out.stdout).unwrap();
        assert!(
            init.contains(wait),
            "{host}: the LMS init job does not wait as expected"
        );

        // pymongo, as edx-platform calls it, takes the rendered host and port (no connection).
        let params = lms
            .split("mongodb_parameters = {")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .unwrap();
        let script = format!(
            "import pymongo\np = {{{params}\n}}\nc = pymongo.MongoClient(host=p['host'], port=p['port'], connect=False, ssl=p['ssl'], replicaSet=p['replicaSet'])\nprint('ok')"
        );
        // An SRV name is looked up when the client first connects, not here.
        let out = Command::new(python())
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `offload cutover` (no job, `--force`) from target URLs: the TLS options of each URL end up in
/// the settings patch, the MongoDB host list in `MONGODB_HOST`; rollback removes the plugin.
#[test]
fn cutover_from_target_urls_writes_the_patch_and_rollback_removes_it() {
    let certs = Certs::new();
    let root = Root::new();
    let offload = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_offload"))
            .args(args)
            .arg("--tutor-root")
            .arg(root.path())
            .env_remove("TUTOR_ROOT")
            .env("TUTOR_PLUGINS_ROOT", root.plugins.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{text}");
        text
    };
    let no_job = tempfile::tempdir().unwrap();
    let job = no_job.path().join("none");
    let ca = certs.query("ca.pem");
    let text = offload(&[
        "cutover",
        "--force",
        "--job",
        job.to_str().unwrap(),
        "--to-mysql",
        &format!("mysql://admin:pw-1@db.internal:3306?ssl-mode=verify_identity&ssl-ca={ca}"),
        "--to-redis",
        &format!("rediss://default:pw-2@cache.internal:6380?ca={ca}"),
        "--to-mongodb",
        &format!(
            "mongodb://u:pw-3@m1.internal:27018,m2.internal:27018/?replicaSet=rs0&tls=true&tlsCAFile={ca}"
        ),
    ]);
    let plugins: Vec<PathBuf> = std::fs::read_dir(root.plugins.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [plugin] = plugins.as_slice() else {
        panic!("one plugin expected: {plugins:?}")
    };
    let name = plugin.file_stem().unwrap().to_str().unwrap();
    assert!(text.contains(name), "the cutover names the plugin: {text}");
    let patch = std::fs::read_to_string(plugin).unwrap();
    for secret in ["pw-1", "pw-2", "pw-3"] {
        assert!(!patch.contains(secret) && !text.contains(secret));
    }
    let ca_text = std::fs::read_to_string(certs.path("ca.pem")).unwrap();
    let first_line = ca_text.lines().nth(1).unwrap();
    assert!(patch.contains(first_line), "the CA travels in the patch");
    for want in [
        "\"ssl_mode\": \"VERIFY_IDENTITY\"",
        "_offload_redis_tls",
        "\"tlsCAFile\"",
    ] {
        assert!(patch.contains(want), "{want}");
    }
    for (key, want) in [
        ("MONGODB_HOST", "m1.internal,m2.internal"),
        ("MONGODB_PORT", "27018"),
        ("MONGODB_USE_SSL", "true"),
        ("MONGODB_REPLICA_SET", "rs0"),
        ("REDIS_HOST", "cache.internal"),
    ] {
        assert_eq!(
            root.tutor(&["config", "printvalue", key]).trim_end(),
            want,
            "{key}"
        );
    }
    let plugins_value = root.tutor(&["config", "printvalue", "PLUGINS"]);
    assert!(plugins_value.contains(name), "{plugins_value}");
    root.tutor(&["config", "save"]);
    assert!(root
        .read("env/apps/openedx/settings/cms/production.py")
        .contains(&format!("offload settings patch ({name}): begin")));

    let text = offload(&["rollback"]);
    assert!(text.contains("Removed the settings-patch plugin"), "{text}");
    assert!(!plugin.exists());
    assert_eq!(root.read("config.yml"), fixture_text());
}
