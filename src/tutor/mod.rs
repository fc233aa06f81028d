//! Tutor's `config.yml`: where it lives, what it says (with Tutor's defaults and `TUTOR_*`
//! overrides), and how offload rewrites it at cutover.
//!
//! Reading follows Tutor 22 (`tutor/config.py`): the file's top-level mapping wins, keys it leaves
//! out take Tutor's defaults, and a `TUTOR_<KEY>` environment variable overrides a key the file or
//! the defaults know, its text parsed as YAML. Plain scalars are resolved with YAML 1.1 rules as
//! PyYAML does (`yes` is a boolean), not with `serde_yaml`'s YAML 1.2 rules.

pub mod cutover;
pub mod elasticsearch;
pub mod plugins;
pub(crate) mod pyyaml;
pub mod rewrite;
pub mod s3_patches;
pub mod settings_patch;
pub mod workers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

pub use cutover::{
    apply_cutover, cut_over_from, plan_cutover, plan_cutover_with_tls, rollback,
    written_by_cutover, AppliedCutover, CutoverPlan, CutoverTarget, EditedAfterCutover,
    MeilisearchTarget, MongodbTarget, MysqlPluginUser, MysqlTarget, RedisTarget, RolledBack,
    S3Target,
};
pub use elasticsearch::ElasticsearchTarget;
pub use plugins::{KnownMysqlPlugin, PluginMysql, PluginMysqlFindings, MYSQL_PLUGINS};
pub use rewrite::{apply_edits, ConfigEdits};
pub use s3_patches::{s3_settings_patches, SettingsPatch, S3_PLUGIN_RELEASE};

/// The file Tutor keeps its settings in, inside the project root.
pub const CONFIG_FILENAME: &str = "config.yml";

/// Tutor major releases whose settings offload reads and writes: Olive (15) to the newest it was
/// tested with (22). 22 and 18 are tested; the others have the same keys for what offload changes.
pub const KNOWN_TUTOR_MAJORS: std::ops::RangeInclusive<u32> = 15..=22;

/// The newest Tutor major that searches with Elasticsearch (Redwood, 18); Sumac (19) replaced it
/// with Meilisearch.
pub const LAST_ELASTICSEARCH_MAJOR: u32 = 18;

/// The Tutor release a root belongs to, and where offload learnt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TutorRelease {
    /// As Tutor writes it, e.g. `18.2.2`.
    pub version: String,
    /// The major number (`None` when the text does not start with one).
    pub major: Option<u32>,
    /// `env/version` (written by `tutor config save`) or `tutor --version`.
    pub from: &'static str,
}

impl TutorRelease {
    fn new(version: &str, from: &'static str) -> TutorRelease {
        let version = version.trim().to_owned();
        let major = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        TutorRelease {
            version,
            major,
            from,
        }
    }

    /// Whether this release searches with Elasticsearch (Tutor 18 and older).
    pub fn is_elasticsearch_era(&self) -> bool {
        self.major.is_some_and(|m| m <= LAST_ELASTICSEARCH_MAJOR)
    }
}

/// The version `tutor --version` prints (`tutor, version 18.2.2`) for `bin`, run for `root`;
/// `None` when it cannot be run or prints something else.
pub fn tutor_cli_version(bin: &Path, root: &Path) -> Option<TutorRelease> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .env("TUTOR_ROOT", root)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.trim().rsplit_once("version ")?.1.trim();
    let release = TutorRelease::new(version, "tutor --version");
    release.major.map(|_| release)
}

/// Everything that can go wrong reading or rewriting Tutor's configuration.
///
/// Messages name the file and say what to do; they never contain setting values.
#[derive(Debug, thiserror::Error)]
pub enum TutorError {
    #[error(
        "{CONFIG_FILENAME} not found in {}: pass --tutor-root or set TUTOR_ROOT to the Tutor \
         project root (the folder `tutor config printroot` prints)",
        root.display()
    )]
    NotFound { root: PathBuf },

    #[error(
        "the Tutor root {} exists but cannot be read ({source}): check its permissions, or pass \
         --tutor-root with the Tutor project root",
        root.display()
    )]
    RootUnreadable {
        root: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "{} is not a text file (it is not UTF-8): restore it from a backup or re-create it with \
         `tutor config save`, or pass --tutor-root with the Tutor project root",
        path.display()
    )]
    NotText { path: PathBuf },

    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "{} is not valid YAML (line {line}, column {column}: {problem}): fix it or restore a \
         backup, then run `tutor config save` to check it",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        problem: String,
    },

    #[error(
        "{} does not hold a mapping of settings (it holds {found}): restore a backup or \
         re-create it with `tutor config save`",
        path.display()
    )]
    NotMapping { path: PathBuf, found: &'static str },

    #[error(
        "line {line} of {} is laid out in a way offload cannot edit safely ({reason}): run \
         `tutor config save` once to normalise the file, then plan again",
        path.display()
    )]
    Layout {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("cannot set {key}: {reason}")]
    Value { key: String, reason: String },

    #[error("{key} is missing from {}: {hint}", path.display())]
    MissingSetting {
        key: String,
        path: PathBuf,
        hint: &'static str,
    },

    #[error("invalid {store} cutover target: {reason}")]
    Target { store: &'static str, reason: String },

    #[error(
        "{} changed since the cutover was planned: nothing was written; run the plan again to \
         see the new diff",
        path.display()
    )]
    Changed { path: PathBuf },

    #[error(
        "this Tutor root was last rendered by Tutor {version}, and {why}; nothing was written. \
         offload knows Tutor {}.x to {}.x: use a newer offload for a newer Tutor, upgrade an older \
         platform first, or make the change by hand",
        KNOWN_TUTOR_MAJORS.start(),
        KNOWN_TUTOR_MAJORS.end()
    )]
    UnknownVersion { version: String, why: String },

    #[error("cannot write {}: {source}; {CONFIG_FILENAME} was left as it was", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "no offload backup ({CONFIG_FILENAME}.offload-backup-*) found in {}: nothing to roll back",
        root.display()
    )]
    NoBackup { root: PathBuf },

    /// Rollback would discard changes made to config.yml after cutover. The diff (secrets
    /// masked) is for the command to show; the message holds no setting value.
    #[error(
        "{} {}: rolling back would discard those changes, so nothing was done. Make them again \
         after rollback, or run `offload rollback --force`, which first saves the current file \
         as {CONFIG_FILENAME}.offload-before-rollback-<time> beside it, then restores {}",
        .0.path.display(),
        if .0.known {
            "was changed after cutover wrote it"
        } else {
            "may have been changed after cutover (its backup has no record of what cutover \
             wrote)"
        },
        .0.backup.display()
    )]
    EditedAfterCutover(Box<EditedAfterCutover>),
}

impl TutorError {
    /// Whether trying the same thing again could succeed: never, every case needs the user.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Tutor's project root as Tutor finds it on Linux: `TUTOR_ROOT`, else `$XDG_DATA_HOME/tutor`,
/// else `$HOME/.local/share/tutor` (`appdirs.user_data_dir("tutor")`).
pub fn default_root() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(root) = var("TUTOR_ROOT") {
        return PathBuf::from(root);
    }
    let data = var("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let home = var("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".local").join("share")
    });
    data.join("tutor")
}

/// Whether a setting holds a secret (its name contains `PASSWORD`, `SECRET`, `KEY` other than in
/// `KEY_UID`, or `TOKEN`), which diffs, logs and `Debug` output must never show.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_uppercase().replace("KEY_UID", "");
    ["PASSWORD", "SECRET", "KEY", "TOKEN"]
        .iter()
        .any(|word| key.contains(word))
}

/// Shows a secret in `Debug` output as `********` (or `""` when empty).
pub(crate) struct Redacted<'a>(pub(crate) &'a str);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "********"
        })
    }
}

/// The defaults of Tutor 22.0.3 (`templates/config/defaults.yml`, and `PLUGINS` from
/// `base.yml`) for the settings offload reads. Values are unrendered, as in Tutor.
const CORE_DEFAULTS: &[(&str, Builtin)] = &[
    ("CMS_HOST", Builtin::Str("studio.{{ LMS_HOST }}")),
    ("ENABLE_HTTPS", Builtin::Bool(false)),
    ("K8S_NAMESPACE", Builtin::Str("openedx")),
    ("LMS_HOST", Builtin::Str("local.openedx.io")),
    (
        "MEILISEARCH_HOST",
        Builtin::Str("meilisearch.{{ LMS_HOST }}"),
    ),
    ("MEILISEARCH_INDEX_PREFIX", Builtin::Str("tutor_")),
    (
        "MEILISEARCH_PUBLIC_URL",
        Builtin::Str(
            "{% if ENABLE_HTTPS %}https{% else %}http{% endif %}://{{ MEILISEARCH_HOST }}",
        ),
    ),
    ("MEILISEARCH_URL", Builtin::Str("http://meilisearch:7700")),
    ("MONGODB_AUTH_MECHANISM", Builtin::Str("")),
    ("MONGODB_AUTH_SOURCE", Builtin::Str("admin")),
    ("MONGODB_DATABASE", Builtin::Str("openedx")),
    ("MONGODB_HOST", Builtin::Str("mongodb")),
    ("MONGODB_PASSWORD", Builtin::Str("")),
    ("MONGODB_PORT", Builtin::Int(27017)),
    ("MONGODB_REPLICA_SET", Builtin::Str("")),
    ("MONGODB_USERNAME", Builtin::Str("")),
    ("MONGODB_USE_SSL", Builtin::Bool(false)),
    ("MYSQL_HOST", Builtin::Str("mysql")),
    ("MYSQL_PORT", Builtin::Int(3306)),
    ("MYSQL_ROOT_USERNAME", Builtin::Str("root")),
    ("OPENEDX_AWS_ACCESS_KEY", Builtin::Str("")),
    ("OPENEDX_AWS_SECRET_ACCESS_KEY", Builtin::Str("")),
    ("OPENEDX_CACHE_REDIS_DB", Builtin::Int(1)),
    ("OPENEDX_CELERY_REDIS_DB", Builtin::Int(0)),
    ("OPENEDX_MYSQL_DATABASE", Builtin::Str("openedx")),
    ("OPENEDX_MYSQL_USERNAME", Builtin::Str("openedx")),
    ("PLUGINS", Builtin::List(&["mfe", "indigo"])),
    ("REDIS_HOST", Builtin::Str("redis")),
    ("REDIS_PASSWORD", Builtin::Str("")),
    ("REDIS_PORT", Builtin::Int(6379)),
    ("REDIS_USERNAME", Builtin::Str("")),
    ("RUN_MEILISEARCH", Builtin::Bool(true)),
    ("RUN_MONGODB", Builtin::Bool(true)),
    ("RUN_MYSQL", Builtin::Bool(true)),
    ("RUN_REDIS", Builtin::Bool(true)),
    ("RUN_SMTP", Builtin::Bool(true)),
];

/// The defaults of tutor-minio 22.0.0, which exist only while the `minio` plugin is enabled.
/// (`MINIO_DISCOVERY_BUCKET_NAME` is left out: its default is a Jinja condition on `PLUGINS`.)
const MINIO_DEFAULTS: &[(&str, Builtin)] = &[
    ("MINIO_BUCKET_NAME", Builtin::Str("openedx")),
    ("MINIO_CONSOLE_HOST", Builtin::Str("minio.{{ LMS_HOST }}")),
    (
        "MINIO_FILE_UPLOAD_BUCKET_NAME",
        Builtin::Str("openedxuploads"),
    ),
    ("MINIO_GRADES_BUCKET_NAME", Builtin::Str("openedxgrades")),
    ("MINIO_HOST", Builtin::Str("files.{{ LMS_HOST }}")),
    (
        "MINIO_OPENEDX_LEARNING_BUCKET_NAME",
        Builtin::Str("openedxlearning"),
    ),
    ("MINIO_QUERYSTRING_AUTH", Builtin::Bool(true)),
    (
        "MINIO_VIDEO_UPLOAD_BUCKET_NAME",
        Builtin::Str("openedxvideos"),
    ),
];

/// The Elasticsearch defaults of Tutor 15 to 18 (`templates/config/defaults.yml`, checked in
/// 15.0.0, 16.0.0, 17.0.0, 18.0.0 and 18.2.2): they exist only on a platform of that era.
const ELASTICSEARCH_DEFAULTS: &[(&str, Builtin)] = &[
    ("ELASTICSEARCH_HEAP_SIZE", Builtin::Str("1g")),
    ("ELASTICSEARCH_HOST", Builtin::Str("elasticsearch")),
    ("ELASTICSEARCH_PORT", Builtin::Int(9200)),
    ("ELASTICSEARCH_SCHEME", Builtin::Str("http")),
    ("RUN_ELASTICSEARCH", Builtin::Bool(true)),
];

#[derive(Debug, Clone, Copy)]
enum Builtin {
    Str(&'static str),
    Int(i64),
    Bool(bool),
    List(&'static [&'static str]),
}

impl Builtin {
    fn to_value(self) -> Value {
        match self {
            Builtin::Str(s) => Value::String(s.to_owned()),
            Builtin::Int(i) => Value::from(i),
            Builtin::Bool(b) => Value::Bool(b),
            Builtin::List(items) => Value::Sequence(
                items
                    .iter()
                    .map(|s| Value::String((*s).to_owned()))
                    .collect(),
            ),
        }
    }
}

/// A loaded `config.yml`, with Tutor's defaults and `TUTOR_*` overrides behind it.
///
/// Its `Debug` output shows the root, digest and number of settings, never their values.
#[derive(Clone)]
pub struct TutorConfig {
    root: PathBuf,
    raw: String,
    file: Mapping,
    env: BTreeMap<String, String>,
    /// The Tutor release, looked up once (`env/version`, else `tutor --version`).
    release: std::sync::OnceLock<Option<TutorRelease>>,
}

impl std::fmt::Debug for TutorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TutorConfig")
            .field("root", &self.root)
            .field("digest", &self.digest())
            .field("settings", &self.file.len())
            .finish_non_exhaustive()
    }
}

impl TutorConfig {
    /// Reads `<root>/config.yml`, taking `TUTOR_*` overrides from this process's environment.
    pub fn load(root: &Path) -> Result<TutorConfig, TutorError> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::load_with_env(root, env)
    }

    /// Reads `<root>/config.yml` when there is one; `None` when the root or the file does not
    /// exist. A root that exists but cannot be looked into is an error, not a missing file.
    pub fn load_if_present(root: &Path) -> Result<Option<TutorConfig>, TutorError> {
        match std::fs::metadata(root.join(CONFIG_FILENAME)) {
            Ok(meta) if meta.is_file() => Self::load(root).map(Some),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) if root.exists() => Err(TutorError::RootUnreadable {
                root: root.to_owned(),
                source,
            }),
            Err(_) => Ok(None),
        }
    }

    /// Reads `<root>/config.yml` with the given environment (only `TUTOR_*` names matter).
    pub fn load_with_env(
        root: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<TutorConfig, TutorError> {
        Self::load_file(root, &root.join(CONFIG_FILENAME), env)
    }

    /// Reads another file (such as a cutover backup) as if it were `<root>/config.yml`.
    pub fn load_file(
        root: &Path,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<TutorConfig, TutorError> {
        let path = path.to_owned();
        let raw = match std::fs::read_to_string(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TutorError::NotFound {
                    root: root.to_owned(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(TutorError::NotText { path })
            }
            Err(source) => return Err(TutorError::Read { path, source }),
        };
        let file = rewrite::read_mapping(&raw, &path)?;
        let env = env
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("TUTOR_")?.to_owned(), v)))
            .collect();
        tracing::debug!(path = %path.display(), settings = file.len(), "loaded Tutor configuration");
        Ok(TutorConfig {
            root: root.to_owned(),
            raw,
            file,
            env,
            release: std::sync::OnceLock::new(),
        })
    }

    /// The Tutor project root this was loaded from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/config.yml`.
    pub fn path(&self) -> PathBuf {
        self.root.join(CONFIG_FILENAME)
    }

    /// The file's text exactly as read. It holds secrets: never print or log it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// A digest of the file's bytes, to notice a change between plan and apply.
    pub fn digest(&self) -> String {
        text_digest(&self.raw)
    }

    /// Whether the file itself sets `key` (rather than leaving it to a default).
    pub fn is_set_in_file(&self, key: &str) -> bool {
        self.file.contains_key(key)
    }

    /// The value Tutor would use for `key`: a `TUTOR_<KEY>` override, else the file, else the
    /// default; strings made only of `{{ KEY }}` substitutions (and `{% if KEY %}a{% else %}b{%
    /// endif %}`) are rendered, other templates are returned as written.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.get_depth(key, 0)
    }

    fn get_depth(&self, key: &str, depth: usize) -> Option<Value> {
        let value = self.unrendered(key)?;
        match value {
            Value::String(s) if depth < 16 && (s.contains("{{") || s.contains("{%")) => Some(
                self.render(&s, depth)
                    .map(Value::String)
                    .unwrap_or(Value::String(s)),
            ),
            other => Some(other),
        }
    }

    /// The file's value, else a default (plugin defaults only when asked), then any override.
    fn lookup(&self, key: &str, plugin_defaults: bool) -> Option<Value> {
        let builtin = |table: &[(&str, Builtin)]| {
            table
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, d)| d.to_value())
        };
        let known = self
            .file
            .get(key)
            .cloned()
            .or_else(|| builtin(CORE_DEFAULTS))
            .or_else(|| {
                (plugin_defaults && self.minio_enabled()).then(|| builtin(MINIO_DEFAULTS))?
            })
            .or_else(|| plugin_defaults.then(|| self.plugin_mysql_default(key))?)
            .or_else(|| {
                let es_key = ELASTICSEARCH_DEFAULTS.iter().any(|(k, _)| *k == key);
                (es_key && self.is_elasticsearch_era()).then(|| builtin(ELASTICSEARCH_DEFAULTS))?
            })?;
        match self.env.get(key) {
            Some(text) => Some(parse_env_value(text)),
            None => Some(known),
        }
    }

    fn unrendered(&self, key: &str) -> Option<Value> {
        self.lookup(key, true)
    }

    fn minio_enabled(&self) -> bool {
        match self.lookup("PLUGINS", false) {
            Some(Value::Sequence(items)) => items.iter().any(|v| v.as_str() == Some("minio")),
            _ => false,
        }
    }

    /// Renders the tiny subset of Jinja that Tutor's defaults for offload's keys use.
    fn render(&self, template: &str, depth: usize) -> Option<String> {
        let mut out = String::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("{{") {
                let (inner, tail) = after.split_once("}}")?;
                out.push_str(&self.render_var(inner.trim(), depth)?);
                rest = tail;
            } else if let Some(after) = rest.strip_prefix("{%") {
                let (cond, tail) = after.split_once("%}")?;
                let var = cond.trim().strip_prefix("if ")?.trim();
                let (then, tail) = tail.split_once("{% else %}")?;
                let (otherwise, tail) = tail.split_once("{% endif %}")?;
                if [then, otherwise].iter().any(|t| t.contains('{')) {
                    return None;
                }
                out.push_str(if self.truthy(var, depth)? {
                    then
                } else {
                    otherwise
                });
                rest = tail;
            } else {
                let next = rest.find('{').map_or(rest.len(), |i| i.max(1));
                if rest[..next].contains("{#") {
                    return None;
                }
                out.push_str(&rest[..next]);
                rest = &rest[next..];
            }
        }
        Some(out)
    }

    fn render_var(&self, name: &str, depth: usize) -> Option<String> {
        if !pyyaml::is_plain_key(name) {
            return None;
        }
        match self.get_depth(name, depth + 1)? {
            Value::String(s) if !s.contains("{{") && !s.contains("{%") => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(if b { "True" } else { "False" }.to_owned()),
            _ => None,
        }
    }

    fn truthy(&self, name: &str, depth: usize) -> Option<bool> {
        if !pyyaml::is_plain_key(name) {
            return None;
        }
        Some(match self.get_depth(name, depth + 1)? {
            Value::Null => false,
            Value::Bool(b) => b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Sequence(s) => !s.is_empty(),
            Value::Mapping(m) => !m.is_empty(),
            Value::Tagged(_) => return None,
        })
    }

    /// `get` as a string; integers are given as their decimal text, as Tutor's templates do.
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    /// `get` as a port number (an integer, or a string holding one).
    pub fn get_u16(&self, key: &str) -> Option<u16> {
        match self.get(key)? {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// `get` as a boolean (only a real YAML boolean counts).
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// The enabled plugins (`PLUGINS`), in the file's order.
    pub fn plugins(&self) -> Vec<String> {
        match self.get("PLUGINS") {
            Some(Value::Sequence(items)) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The Tutor version that last rendered this root's `env/` (`env/version`), if any.
    ///
    /// `config.yml` itself does not record a version.
    pub fn tutor_version_hint(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.root.join("env").join("version")).ok()?;
        let version = text.trim();
        (!version.is_empty()).then(|| version.to_owned())
    }

    /// The Tutor release of this root: `env/version` (what last rendered it), else what the
    /// `tutor` on `PATH` says it is (`tutor --version`), else `None`. Looked up once.
    pub fn tutor_release(&self) -> Option<TutorRelease> {
        self.release
            .get_or_init(|| {
                self.tutor_version_hint()
                    .map(|v| TutorRelease::new(&v, "env/version"))
                    .or_else(|| tutor_cli_version(Path::new("tutor"), &self.root))
            })
            .clone()
    }

    /// Whether the platform searches with Elasticsearch (Tutor 18 and older): from its release
    /// when known, else from Elasticsearch keys written in `config.yml`.
    pub fn is_elasticsearch_era(&self) -> bool {
        match self.tutor_release().and_then(|r| r.major) {
            Some(major) => major <= LAST_ELASTICSEARCH_MAJOR,
            None => [
                "RUN_ELASTICSEARCH",
                "ELASTICSEARCH_HOST",
                "ELASTICSEARCH_PORT",
            ]
            .iter()
            .any(|k| self.file.contains_key(*k)),
        }
    }
}

/// Tutor's `serialize.parse`: the text as YAML, or the text itself when it is not valid YAML.
fn parse_env_value(text: &str) -> Value {
    let trimmed = text.trim();
    if rewrite::is_plain_scalar_text(trimmed) {
        return pyyaml::resolve_plain(trimmed);
    }
    serde_yaml::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// A digest of a config text (BLAKE3, hex).
pub(crate) fn text_digest(text: &str) -> String {
    format!("blake3:{}", blake3::hash(text.as_bytes()).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str, env: &[(&str, &str)]) -> TutorConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILENAME), text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        TutorConfig::load_with_env(dir.path(), env).unwrap()
    }

    #[test]
    fn defaults_fill_in_and_simple_templates_render() {
        let cfg = config(
            "LMS_HOST: learn.example.org\nMYSQL_ROOT_PASSWORD: '0123'\n",
            &[],
        );
        assert_eq!(cfg.get_str("MYSQL_HOST").as_deref(), Some("mysql"));
        assert_eq!(cfg.get_u16("MYSQL_PORT"), Some(3306));
        assert_eq!(cfg.get_str("MYSQL_ROOT_PASSWORD").as_deref(), Some("0123"));
        assert_eq!(
            cfg.get_str("CMS_HOST").as_deref(),
            Some("studio.learn.example.org")
        );
        assert_eq!(
            cfg.get_str("MEILISEARCH_PUBLIC_URL").as_deref(),
            Some("http://meilisearch.learn.example.org")
        );
        assert_eq!(cfg.get_bool("RUN_MYSQL"), Some(true));
        assert_eq!(cfg.plugins(), vec!["mfe".to_owned(), "indigo".to_owned()]);
        assert_eq!(
            cfg.get("MINIO_BUCKET_NAME"),
            None,
            "minio defaults need the plugin"
        );
        assert_eq!(cfg.get("NOT_A_SETTING"), None);
    }

    #[test]
    fn yaml11_plain_values_read_like_pyyaml() {
        let cfg = config("A: yes\nB: 0o17\nC: 1e3\nD: 0123\nPLUGINS:\n- minio\n", &[]);
        assert_eq!(cfg.get("A"), Some(Value::Bool(true)));
        assert_eq!(cfg.get_str("B").as_deref(), Some("0o17"));
        assert_eq!(cfg.get_str("C").as_deref(), Some("1e3"));
        assert_eq!(cfg.get("D"), Some(Value::from(83)));
        assert_eq!(
            cfg.get_str("MINIO_HOST").as_deref(),
            Some("files.local.openedx.io")
        );
    }

    #[test]
    fn environment_overrides_known_keys_as_yaml() {
        let cfg = config(
            "MYSQL_HOST: mysql\n",
            &[
                ("TUTOR_MYSQL_HOST", "db.example.org"),
                ("TUTOR_RUN_MYSQL", "no"),
                ("TUTOR_MYSQL_PORT", "3307"),
                ("TUTOR_UNKNOWN_KEY", "x"),
                ("TUTOR_REDIS_PASSWORD", "'0123'"),
            ],
        );
        assert_eq!(cfg.get_str("MYSQL_HOST").as_deref(), Some("db.example.org"));
        assert_eq!(cfg.get_bool("RUN_MYSQL"), Some(false));
        assert_eq!(cfg.get_u16("MYSQL_PORT"), Some(3307));
        assert_eq!(cfg.get("UNKNOWN_KEY"), None);
        assert_eq!(cfg.get_str("REDIS_PASSWORD").as_deref(), Some("0123"));
    }

    #[test]
    fn other_templates_are_returned_raw() {
        let cfg = config("X: \"{{ LMS_HOST|upper }}\"\nY: \"{{ MISSING }}\"\n", &[]);
        assert_eq!(cfg.get_str("X").as_deref(), Some("{{ LMS_HOST|upper }}"));
        assert_eq!(cfg.get_str("Y").as_deref(), Some("{{ MISSING }}"));
    }

    #[test]
    fn errors_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = TutorConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, TutorError::NotFound { .. }));
        assert!(err.to_string().contains("TUTOR_ROOT"), "{err}");
        assert!(!err.is_retryable());

        std::fs::write(dir.path().join(CONFIG_FILENAME), "A: 1\nB: [unclosed\n").unwrap();
        let err = TutorConfig::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, TutorError::Malformed { line: 2 | 3, .. }),
            "{err:?}"
        );

        std::fs::write(dir.path().join(CONFIG_FILENAME), "- a\n- b\n").unwrap();
        let err = TutorConfig::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                TutorError::NotMapping {
                    found: "a list",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_binary_file_or_an_unreadable_root_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILENAME), [0xff, 0xfe, 0x00, 0x41]).unwrap();
        let err = TutorConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, TutorError::NotText { .. }), "{err:?}");
        assert!(err.to_string().contains("is not a text file"), "{err}");

        // A missing root or file is no config.yml; a root that exists but cannot be looked into
        // (here a file, as a test run by root reads any folder) is an error saying so.
        assert!(TutorConfig::load_if_present(&dir.path().join("absent"))
            .unwrap()
            .is_none());
        let empty = tempfile::tempdir().unwrap();
        assert!(TutorConfig::load_if_present(empty.path())
            .unwrap()
            .is_none());
        let not_a_folder = dir.path().join("plain-file");
        std::fs::write(&not_a_folder, "x").unwrap();
        let err = TutorConfig::load_if_present(&not_a_folder).unwrap_err();
        assert!(matches!(err, TutorError::RootUnreadable { .. }), "{err:?}");
        assert!(
            err.to_string().contains("exists but cannot be read"),
            "{err}"
        );
        assert!(!err.to_string().contains("not found"), "{err}");
    }
}
