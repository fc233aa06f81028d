//! Cutover and rollback: point Tutor's `config.yml` at the external servers, safely.
//!
//! [`plan_cutover`] turns the targets into config edits (per store, the keys Tutor's templates
//! read), a masked diff and a runbook of the Tutor commands to run next, without touching the
//! file. [`apply_cutover`] writes the plan only if `config.yml` is still the file that was
//! planned from: it backs the file up beside itself, records what it wrote (a cutover record
//! beside the backup), then replaces it atomically. [`rollback`] puts the newest backup back, but
//! only over the file cutover wrote: edits made since are shown and kept unless forced.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv6Addr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::elasticsearch::{self, ElasticsearchTarget};
use super::rewrite::{apply_edits_at, config_path, read_mapping, setting_blocks, ConfigEdits};
use super::s3_patches::{s3_settings_patches, S3_PLUGIN_RELEASE};
use super::settings_patch::{self, SettingsPatchPlugin, TargetTls};
use super::{
    is_secret_key, pyyaml, text_digest, Redacted, TutorConfig, TutorError, CONFIG_FILENAME,
    KNOWN_TUTOR_MAJORS,
};

/// The external MySQL server that replaces Tutor's `mysql` container.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlTarget {
    pub host: String,
    pub port: u16,
    pub root_username: String,
    /// `None` keeps `MYSQL_ROOT_PASSWORD` as it is.
    pub root_password: Option<String>,
    /// Open edX's own user (`OPENEDX_MYSQL_USERNAME`, `OPENEDX_MYSQL_PASSWORD`), written only
    /// where it differs from the current setting.
    pub app: Option<(String, String)>,
    /// The enabled plugins' databases and users (`<PREFIX>_MYSQL_DATABASE`, `_USERNAME`,
    /// `_PASSWORD`), kept, and written only where they differ from the current settings; the
    /// runbook names each plugin's init.
    pub plugin_users: Vec<MysqlPluginUser>,
}

/// A plugin's MySQL database and user, e.g. prefix `DISCOVERY` for `DISCOVERY_MYSQL_USERNAME`.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlPluginUser {
    /// The plugin's name, for `tutor local do init --limit=<plugin>`.
    pub plugin: String,
    pub prefix: String,
    pub database: String,
    pub username: String,
    /// `None` when config.yml has none yet (`tutor config save` generates it).
    pub password: Option<String>,
}

/// The external MongoDB server. Authentication goes in these fields, never inside `host`.
#[derive(Clone, PartialEq, Eq)]
pub struct MongodbTarget {
    /// `MONGODB_HOST` as Tutor's templates take it: one host, a comma-separated list of hosts
    /// that all listen on `port` (a replica set's members), or `mongodb+srv://name`.
    pub host: String,
    pub port: u16,
    /// Empty for no authentication.
    pub username: String,
    pub password: String,
    pub use_ssl: bool,
    pub auth_source: String,
    /// Empty lets the driver choose (e.g. `SCRAM-SHA-256`).
    pub auth_mechanism: String,
    /// Empty for a standalone server.
    pub replica_set: String,
}

/// The external Redis server.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    /// Empty for none (the `default` user).
    pub username: String,
    /// Empty for none.
    pub password: String,
    /// The databases copied, source number to target number, when they were chosen
    /// (`--redis-dbs SRC:DST`); empty when every database kept its number.
    pub databases: Vec<(i64, i64)>,
}

/// The external Meilisearch server.
#[derive(Clone, PartialEq, Eq)]
pub struct MeilisearchTarget {
    /// Reached by the Open edX backend, e.g. `https://search.internal:7700`.
    pub url: String,
    /// Reached by browsers.
    pub public_url: String,
    pub master_key: String,
    /// `MEILISEARCH_API_KEY`: the platform's key, derived from the master key and
    /// `MEILISEARCH_API_KEY_UID` (`search::api_key::derive`).
    pub api_key: String,
}

/// The external S3-compatible object storage that replaces the `minio` plugin, configured
/// through the tutor-contrib-s3 plugin (`s3`).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Target {
    /// Empty for AWS S3.
    pub host: String,
    /// `None` for AWS S3.
    pub port: Option<u16>,
    pub use_ssl: bool,
    pub region: String,
    pub storage_bucket: String,
    pub file_upload_bucket: String,
    pub grade_bucket: String,
    /// Empty keeps profile images on the filesystem (tutor-contrib-s3's default).
    pub profile_image_bucket: String,
    /// `auto`, `path` or `virtual`.
    pub addressing_style: String,
    pub access_key: String,
    pub secret_key: String,
    /// `S3_SIGNATURE_VERSION`, carried over from the source (MinIO signs with `s3v4`); `None`
    /// leaves the plugin's default (a filesystem source has none).
    pub signature_version: Option<String>,
    /// `S3_CUSTOM_DOMAIN`, carried over from the source (MinIO's storage has none: `''`); `None`
    /// leaves the plugin's default.
    pub custom_domain: Option<String>,
    /// Whether Open edX signs its file URLs (`AWS_QUERYSTRING_AUTH`, from MinIO's
    /// `MINIO_QUERYSTRING_AUTH`); tutor-contrib-s3 always writes `true`, so `Some(false)` needs a
    /// settings patch. `None` when the source had no such setting.
    pub querystring_auth: Option<bool>,
    /// The buckets tutor-contrib-s3 has no setting for, under their target names; empty when the
    /// platform does not use one. They go in settings patches ([`s3_settings_patches`]).
    pub video_upload_bucket: String,
    pub openedx_learning_bucket: String,
    pub discovery_bucket: String,
    /// Buckets the platform uses (`MINIO_*_BUCKET_NAME`, as named on the source) that the job did
    /// not copy: their settings still name the target bucket, and the plan warns.
    pub not_copied: Vec<String>,
}

/// One store to move off Tutor.
// At most one of each per cutover: the S3 variant's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutoverTarget {
    Mysql(MysqlTarget),
    Mongodb(MongodbTarget),
    Redis(RedisTarget),
    Meilisearch(MeilisearchTarget),
    S3(S3Target),
    /// Tutor 15 to 18 only (see `tutor::elasticsearch`).
    Elasticsearch(ElasticsearchTarget),
}

impl CutoverTarget {
    fn store(&self) -> &'static str {
        match self {
            CutoverTarget::Mysql(_) => "MySQL",
            CutoverTarget::Mongodb(_) => "MongoDB",
            CutoverTarget::Redis(_) => "Redis",
            CutoverTarget::Meilisearch(_) => "Meilisearch",
            CutoverTarget::S3(_) => "S3",
            CutoverTarget::Elasticsearch(_) => "Elasticsearch",
        }
    }
}

/// What a cutover will change, computed without touching the file.
///
/// Its `Debug` output masks secrets and leaves out the file texts.
#[derive(Clone)]
pub struct CutoverPlan {
    /// The settings to set or remove.
    pub edits: ConfigEdits,
    /// Things the user must know or do by hand (e.g. buckets the S3 plugin has no setting for).
    pub warnings: Vec<String>,
    root: PathBuf,
    /// The enabled plugins (`PLUGINS`) before cutover, for the runbook.
    plugins: Vec<String>,
    /// The Elasticsearch target, for the runbook's patch and reindex steps.
    elasticsearch: Option<ElasticsearchTarget>,
    stores: Vec<&'static str>,
    /// The plugins whose MySQL database and user moved with MySQL: (plugin, database, user).
    mysql_plugins: Vec<(String, String, String)>,
    original: String,
    updated: String,
    /// The Tutor plugin holding the settings Tutor has no key for, when a target needs one.
    plugin: Option<SettingsPatchPlugin>,
}

impl std::fmt::Debug for MysqlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("root_username", &self.root_username)
            .field(
                "root_password",
                &self.root_password.as_deref().map(Redacted),
            )
            .field("app", &self.app.as_ref().map(|(u, p)| (u, Redacted(p))))
            .field("plugin_users", &self.plugin_users)
            .finish()
    }
}

impl std::fmt::Debug for MysqlPluginUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlPluginUser")
            .field("plugin", &self.plugin)
            .field("prefix", &self.prefix)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_deref().map(Redacted))
            .finish()
    }
}

impl std::fmt::Debug for MongodbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongodbTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &Redacted(&self.password))
            .field("use_ssl", &self.use_ssl)
            .field("auth_source", &self.auth_source)
            .field("auth_mechanism", &self.auth_mechanism)
            .field("replica_set", &self.replica_set)
            .finish()
    }
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &Redacted(&self.password))
            .field("databases", &self.databases)
            .finish()
    }
}

impl std::fmt::Debug for MeilisearchTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeilisearchTarget")
            .field("url", &self.url)
            .field("public_url", &self.public_url)
            .field("master_key", &Redacted(&self.master_key))
            .field("api_key", &Redacted(&self.api_key))
            .finish()
    }
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("use_ssl", &self.use_ssl)
            .field("region", &self.region)
            .field("storage_bucket", &self.storage_bucket)
            .field("file_upload_bucket", &self.file_upload_bucket)
            .field("grade_bucket", &self.grade_bucket)
            .field("profile_image_bucket", &self.profile_image_bucket)
            .field("addressing_style", &self.addressing_style)
            .field("access_key", &Redacted(&self.access_key))
            .field("secret_key", &Redacted(&self.secret_key))
            .field("signature_version", &self.signature_version)
            .field("custom_domain", &self.custom_domain)
            .field("querystring_auth", &self.querystring_auth)
            .field("video_upload_bucket", &self.video_upload_bucket)
            .field("openedx_learning_bucket", &self.openedx_learning_bucket)
            .field("discovery_bucket", &self.discovery_bucket)
            .field("not_copied", &self.not_copied)
            .finish()
    }
}

impl std::fmt::Debug for CutoverPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CutoverPlan")
            .field("root", &self.root)
            .field("stores", &self.stores)
            .field("edits", &self.edits)
            .field("warnings", &self.warnings)
            .field("plugin", &self.plugin.as_ref().map(|p| &p.path))
            .finish_non_exhaustive()
    }
}

/// The result of [`apply_cutover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedCutover {
    /// The copy of the previous `config.yml`.
    pub backup_path: PathBuf,
    /// The rewritten `config.yml`.
    pub config_path: PathBuf,
}

/// The result of [`rollback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The backup that `config.yml` now equals.
    pub restored_from: PathBuf,
    /// Where the replaced `config.yml` was saved first (`--force` over edits made after cutover).
    pub saved_current: Option<PathBuf>,
    /// The settings-patch plugin file the cutover wrote, now removed.
    pub removed_plugin: Option<PathBuf>,
}

/// What rollback would discard: `config.yml` is not the file cutover wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditedAfterCutover {
    pub path: PathBuf,
    pub backup: PathBuf,
    /// Whether cutover's record says what it wrote (backups of older offload releases have none).
    pub known: bool,
    /// What rollback would change (current file to backup), by setting, secrets masked.
    pub diff: String,
}

const BACKUP_PREFIX: &str = "config.yml.offload-backup-";
/// Beside each backup, what that cutover wrote: `config.yml.offload-cutover-<now>`. Its own
/// prefix, so no rollback (of this release or an older one) takes it for a backup.
const RECORD_PREFIX: &str = "config.yml.offload-cutover-";
/// Where `rollback --force` saves the file it replaces; not a backup name, so a later rollback
/// still restores the file from before cutover.
const SAVED_PREFIX: &str = "config.yml.offload-before-rollback-";

/// What a cutover wrote, kept beside its backup: the written file's digest, and the mode the
/// file had before (the backup itself is 0600; it has the original owner).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CutoverRecord {
    written_digest: String,
    original_mode: u32,
    /// The settings-patch plugin file this cutover wrote and enabled, which rollback removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plugin_file: Option<PathBuf>,
}

/// The cutover record that belongs to `backup` (same timestamp, [`RECORD_PREFIX`]).
fn record_path(backup: &Path) -> Option<PathBuf> {
    let name = backup.file_name()?.to_str()?;
    let now = name.strip_prefix(BACKUP_PREFIX)?;
    Some(backup.with_file_name(format!("{RECORD_PREFIX}{now}")))
}

fn read_record(backup: &Path) -> Option<CutoverRecord> {
    let text = std::fs::read_to_string(record_path(backup)?).ok()?;
    serde_json::from_str(&text).ok()
}

/// The digest of the `config.yml` the cutover that made `backup` wrote, when it was recorded.
pub fn written_by_cutover(backup: &Path) -> Option<String> {
    read_record(backup).map(|r| r.written_digest)
}

/// The newest backup in `root` of a cutover that started from the file with digest `planned`
/// and wrote the file with digest `current`: config.yml is then that cutover's output. Found
/// without the job's catalog (a copy of the folder taken before the cutover has no record of it).
pub fn cut_over_from(root: &Path, planned: &str, current: &str) -> Option<PathBuf> {
    let mut backups = backups(root).ok()?;
    backups.sort();
    backups.into_iter().rev().find(|b| {
        written_by_cutover(b).as_deref() == Some(current)
            && std::fs::read_to_string(b).is_ok_and(|text| text_digest(&text) == planned)
    })
}

/// The cutover backups in `root` (`config.yml.offload-backup-*` files), in no order.
fn backups(root: &Path) -> Result<Vec<PathBuf>, TutorError> {
    let entries = std::fs::read_dir(root).map_err(|source| TutorError::Read {
        path: root.to_owned(),
        source,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(BACKUP_PREFIX))
                && e.file_type().is_ok_and(|t| t.is_file())
        })
        .map(|e| e.path())
        .collect())
}

/// A diff of two `config.yml` texts by setting (`-` old, `+` new), secret values masked.
fn masked_text_diff(path: &Path, old_text: &str, new_text: &str, new_label: &str) -> String {
    let mut out = format!("--- {0}\n+++ {0} ({new_label})\n", path.display());
    let old = setting_blocks(old_text);
    let new = setting_blocks(new_text);
    let keys: BTreeSet<&str> = old
        .iter()
        .chain(new.iter())
        .map(|(k, _)| k.as_str())
        .collect();
    for key in keys {
        let before = old.iter().find(|(k, _)| k == key).map(|(_, b)| *b);
        let after = new.iter().find(|(k, _)| k == key).map(|(_, b)| *b);
        if before == after {
            continue;
        }
        let _ = writeln!(out, "@@ {key} @@");
        for line in before.map(|b| masked_block(key, b)).unwrap_or_default() {
            let _ = writeln!(out, "-{line}");
        }
        for line in after.map(|b| masked_block(key, b)).unwrap_or_default() {
            let _ = writeln!(out, "+{line}");
        }
    }
    let shown_any = out.lines().any(|l| l.starts_with("@@ "));
    if old.is_empty() || new.is_empty() || (!shown_any && old_text != new_text) {
        let _ = writeln!(
            out,
            "(the files differ in a way offload cannot show setting by setting: compare them by hand)"
        );
    }
    out
}
const MASK: &str = "********";

pub(super) fn target_error(store: &'static str, reason: impl Into<String>) -> TutorError {
    TutorError::Target {
        store,
        reason: reason.into(),
    }
}

/// A host name or IP address, without scheme, credentials, port or path.
pub(super) fn check_host(store: &'static str, field: &str, host: &str) -> Result<(), TutorError> {
    let bad = host.is_empty()
        || host.contains(|c: char| c.is_whitespace() || "/@?#".contains(c))
        || (host.contains(':') && host.parse::<Ipv6Addr>().is_err());
    if bad {
        return Err(target_error(
            store,
            format!(
                "{field} must be a bare host name or IP address (no scheme, user, password, \
                 port or path: those have their own settings)"
            ),
        ));
    }
    Ok(())
}

/// `MONGODB_HOST` in a form Tutor 22 handles: its LMS init job waits for `mongodb+srv://` names
/// not at all, and for each host of a comma-separated list on `MONGODB_PORT`, while pymongo takes
/// the value as its `host`. So a list holds bare hosts (IPv6 ones in brackets), no ports.
fn check_mongodb_host(host: &str) -> Result<(), TutorError> {
    if let Some(name) = host.strip_prefix("mongodb+srv://") {
        if name.contains(',') || name.contains(':') {
            return Err(target_error(
                "MongoDB",
                "a mongodb+srv:// host names one DNS name, without a port",
            ));
        }
        return check_host("MongoDB", "the mongodb+srv:// name", name);
    }
    if !host.contains(',') {
        return check_host("MongoDB", "host", host);
    }
    for member in host.split(',') {
        let bare = member
            .strip_prefix('[')
            .and_then(|m| m.strip_suffix(']'))
            .filter(|m| m.parse::<Ipv6Addr>().is_ok())
            .unwrap_or(member);
        if bare != member || !bare.contains(':') {
            check_host("MongoDB", "each host of the list", bare)?;
        } else {
            return Err(target_error(
                "MongoDB",
                "each host of the list must be a bare host name or address (IPv6 in brackets), \
                 without a port: Tutor's init job waits on every host at MONGODB_PORT",
            ));
        }
    }
    Ok(())
}

pub(super) fn check_port(store: &'static str, port: u16) -> Result<(), TutorError> {
    if port == 0 {
        return Err(target_error(store, "port 0 is not a usable port"));
    }
    Ok(())
}

fn check_url(store: &'static str, field: &str, url: &str) -> Result<(), TutorError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !url.contains(char::is_whitespace) => Ok(()),
        _ => Err(target_error(
            store,
            format!("{field} must be an http:// or https:// URL"),
        )),
    }
}

/// S3 bucket naming rules: 3 to 63 lowercase letters, digits, dots and hyphens.
fn check_bucket(field: &str, bucket: &str) -> Result<(), TutorError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(target_error(
            "S3",
            format!("{field} must be a valid bucket name (3-63 lowercase letters, digits, dots, hyphens)"),
        ));
    }
    Ok(())
}

/// Sets `key` to `value` only when it differs from what Tutor currently uses.
fn set_if_changed(edits: &mut ConfigEdits, cfg: &TutorConfig, key: &str, value: &str) {
    if cfg.get_str(key).as_deref() != Some(value) {
        edits.set(key, value);
    }
}

/// Characters Tutor 22's templates copy unescaped into shell, SQL, Python and YAML strings.
const TEMPLATE_UNSAFE: &[char] = &['"', '\'', '\\', '`', '$'];
/// Characters that also break the `redis://user:password@host` URLs Tutor builds.
const URL_UNSAFE: &[char] = &['@', ':', '/', '%', '#', '?', ' '];

/// Warns (without showing the value) when Tutor's templates would mangle a credential.
fn warn_unescaped(warnings: &mut Vec<String>, key: &str, value: &str, in_url: bool) {
    if value.contains(TEMPLATE_UNSAFE) {
        warnings.push(format!(
            "{key} contains a quote, backslash, backtick or dollar sign, which Tutor 22 copies \
             unescaped into generated shell, SQL, Python and YAML files: connections may fail; \
             prefer letters, digits and - _ . ~"
        ));
    } else if in_url && value.contains(URL_UNSAFE) {
        warnings.push(format!(
            "{key} contains one of @ : / % # ? or a space, which Tutor 22 copies unescaped into \
             redis:// URLs: connections may fail; prefer letters, digits and - _ . ~"
        ));
    }
}

fn plan_mysql(
    cfg: &TutorConfig,
    t: &MysqlTarget,
    edits: &mut ConfigEdits,
    warnings: &mut Vec<String>,
) -> Result<(), TutorError> {
    check_host("MySQL", "host", &t.host)?;
    check_port("MySQL", t.port)?;
    if t.root_username.is_empty() {
        return Err(target_error("MySQL", "root_username must not be empty"));
    }
    edits
        .set("RUN_MYSQL", false)
        .set("MYSQL_HOST", t.host.as_str())
        .set("MYSQL_PORT", t.port)
        .set("MYSQL_ROOT_USERNAME", t.root_username.as_str());
    if let Some(password) = &t.root_password {
        edits.set("MYSQL_ROOT_PASSWORD", password.as_str());
        warn_unescaped(warnings, "MYSQL_ROOT_PASSWORD", password, false);
    }
    if let Some((username, password)) = &t.app {
        set_if_changed(edits, cfg, "OPENEDX_MYSQL_USERNAME", username);
        set_if_changed(edits, cfg, "OPENEDX_MYSQL_PASSWORD", password);
        warn_unescaped(warnings, "OPENEDX_MYSQL_PASSWORD", password, false);
    }
    for user in &t.plugin_users {
        let key = |what: &str| format!("{}_MYSQL_{what}", user.prefix);
        if !pyyaml::is_plain_key(&key("USERNAME")) || user.prefix.is_empty() {
            return Err(target_error(
                "MySQL",
                "a plugin prefix must be a setting-name prefix such as DISCOVERY",
            ));
        }
        if user.plugin.is_empty() || user.database.is_empty() || user.username.is_empty() {
            return Err(target_error(
                "MySQL",
                format!(
                    "{}: a plugin's name, database and username must not be empty",
                    user.prefix
                ),
            ));
        }
        // Kept as they are (the plugin's defaults stay defaults); written only if they differ.
        set_if_changed(edits, cfg, &key("DATABASE"), &user.database);
        set_if_changed(edits, cfg, &key("USERNAME"), &user.username);
        match &user.password {
            Some(password) => {
                set_if_changed(edits, cfg, &key("PASSWORD"), password);
                warn_unescaped(warnings, &key("PASSWORD"), password, false);
            }
            None => warnings.push(format!(
                "{} is not in config.yml yet: `tutor config save` generates it, and `tutor local \
                 do init --limit={}` then creates user `{}` with it on the new MySQL",
                key("PASSWORD"),
                user.plugin,
                user.username
            )),
        }
    }
    Ok(())
}

fn plan_mongodb(
    t: &MongodbTarget,
    edits: &mut ConfigEdits,
    warnings: &mut Vec<String>,
) -> Result<(), TutorError> {
    check_mongodb_host(&t.host)?;
    check_port("MongoDB", t.port)?;
    if t.username.is_empty() != t.password.is_empty() {
        return Err(target_error(
            "MongoDB",
            "give both a username and a password, or neither",
        ));
    }
    if t.auth_source.is_empty() {
        return Err(target_error(
            "MongoDB",
            "auth_source must not be empty (Tutor's default is admin)",
        ));
    }
    edits
        .set("RUN_MONGODB", false)
        .set("MONGODB_HOST", t.host.as_str())
        .set("MONGODB_PORT", t.port)
        .set("MONGODB_USERNAME", t.username.as_str())
        .set("MONGODB_PASSWORD", t.password.as_str())
        .set("MONGODB_USE_SSL", t.use_ssl)
        .set("MONGODB_AUTH_SOURCE", t.auth_source.as_str())
        .set("MONGODB_AUTH_MECHANISM", t.auth_mechanism.as_str())
        .set("MONGODB_REPLICA_SET", t.replica_set.as_str());
    warn_unescaped(warnings, "MONGODB_USERNAME", &t.username, false);
    warn_unescaped(warnings, "MONGODB_PASSWORD", &t.password, false);
    Ok(())
}

fn plan_redis(
    cfg: &TutorConfig,
    t: &RedisTarget,
    edits: &mut ConfigEdits,
    warnings: &mut Vec<String>,
) -> Result<(), TutorError> {
    check_host("Redis", "host", &t.host)?;
    check_port("Redis", t.port)?;
    if t.username.is_empty() && !t.password.is_empty() {
        return Err(target_error(
            "Redis",
            "Tutor 22 sends REDIS_PASSWORD only together with REDIS_USERNAME: for a server \
             with only a password (requirepass), use the username `default`",
        ));
    }
    edits
        .set("RUN_REDIS", false)
        .set("REDIS_HOST", t.host.as_str())
        .set("REDIS_PORT", t.port)
        .set("REDIS_USERNAME", t.username.as_str())
        .set("REDIS_PASSWORD", t.password.as_str());
    warn_unescaped(warnings, "REDIS_USERNAME", &t.username, true);
    warn_unescaped(warnings, "REDIS_PASSWORD", &t.password, true);
    plan_redis_databases(cfg, t, edits, warnings);
    Ok(())
}

/// The platform's Celery broker and Django cache databases follow the copy when it moved them
/// (`--redis-dbs 0:2`); a database left out whose number now holds another one is warned about.
fn plan_redis_databases(
    cfg: &TutorConfig,
    t: &RedisTarget,
    edits: &mut ConfigEdits,
    warnings: &mut Vec<String>,
) {
    for (key, default) in [
        ("OPENEDX_CELERY_REDIS_DB", 0),
        ("OPENEDX_CACHE_REDIS_DB", 1),
    ] {
        let db = cfg.get(key).and_then(|v| v.as_i64()).unwrap_or(default);
        match t.databases.iter().find(|(from, _)| *from == db) {
            Some(&(_, to)) if to != db => {
                edits.set(key, to);
            }
            Some(_) => {}
            None => {
                if let Some(&(from, _)) = t.databases.iter().find(|(_, to)| *to == db) {
                    warnings.push(format!(
                        "{key} is {db}, a database offload did not copy, but database {db} on the \
                         new Redis now holds source database {from}: the two would share it. Set \
                         {key} to a database nothing else uses (`tutor config save --set {key}=N`)"
                    ));
                }
            }
        }
    }
}

fn plan_meilisearch(
    cfg: &TutorConfig,
    t: &MeilisearchTarget,
    edits: &mut ConfigEdits,
    warnings: &mut Vec<String>,
) -> Result<(), TutorError> {
    check_url("Meilisearch", "url", &t.url)?;
    check_url("Meilisearch", "public_url", &t.public_url)?;
    if t.master_key.len() < 16 {
        return Err(target_error(
            "Meilisearch",
            "the master key must be at least 16 bytes long (Meilisearch refuses shorter ones)",
        ));
    }
    // The platform's key (`t.api_key`) is derived from this uid: it must be there.
    cfg.get_str("MEILISEARCH_API_KEY_UID")
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| TutorError::MissingSetting {
            key: "MEILISEARCH_API_KEY_UID".to_owned(),
            path: cfg.path(),
            hint: "run `tutor config save` once so Tutor generates it, then plan again",
        })?;
    edits
        .set("RUN_MEILISEARCH", false)
        .set("MEILISEARCH_URL", t.url.as_str())
        .set("MEILISEARCH_PUBLIC_URL", t.public_url.as_str())
        .set("MEILISEARCH_MASTER_KEY", t.master_key.as_str())
        .set("MEILISEARCH_API_KEY", t.api_key.as_str());
    warn_unescaped(warnings, "MEILISEARCH_MASTER_KEY", &t.master_key, false);
    Ok(())
}

fn plan_s3(
    cfg: &TutorConfig,
    t: &S3Target,
    edits: &mut ConfigEdits,
    warnings: &mut Vec<String>,
) -> Result<(), TutorError> {
    if !t.host.is_empty() {
        check_host("S3", "host", &t.host)?;
    }
    if let Some(port) = t.port {
        check_port("S3", port)?;
    }
    check_bucket("storage_bucket", &t.storage_bucket)?;
    check_bucket("file_upload_bucket", &t.file_upload_bucket)?;
    check_bucket("grade_bucket", &t.grade_bucket)?;
    for (field, bucket) in [
        ("profile_image_bucket", &t.profile_image_bucket),
        ("video_upload_bucket", &t.video_upload_bucket),
        ("openedx_learning_bucket", &t.openedx_learning_bucket),
        ("discovery_bucket", &t.discovery_bucket),
    ] {
        if !bucket.is_empty() {
            check_bucket(field, bucket)?;
        }
    }
    if !matches!(t.addressing_style.as_str(), "auto" | "path" | "virtual") {
        return Err(target_error(
            "S3",
            "addressing_style must be auto, path or virtual",
        ));
    }
    if t.access_key.is_empty() || t.secret_key.is_empty() {
        return Err(target_error(
            "S3",
            "both an access key and a secret key are needed",
        ));
    }

    let plugins = cfg.plugins();
    let mut new_plugins: BTreeSet<String> =
        plugins.iter().filter(|p| *p != "minio").cloned().collect();
    new_plugins.insert("s3".to_owned());
    let new_plugins: Vec<Value> = new_plugins.into_iter().map(Value::String).collect();
    edits
        .set("PLUGINS", Value::Sequence(new_plugins))
        .set("S3_HOST", t.host.as_str())
        .set(
            "S3_PORT",
            t.port.map_or(Value::String(String::new()), Value::from),
        )
        .set("S3_USE_SSL", t.use_ssl)
        .set("S3_REGION", t.region.as_str())
        .set("S3_STORAGE_BUCKET", t.storage_bucket.as_str())
        .set("S3_FILE_UPLOAD_BUCKET", t.file_upload_bucket.as_str())
        .set("S3_GRADE_BUCKET", t.grade_bucket.as_str())
        .set("S3_PROFILE_IMAGE_BUCKET", t.profile_image_bucket.as_str())
        .set("S3_ADDRESSING_STYLE", t.addressing_style.as_str())
        .set("OPENEDX_AWS_ACCESS_KEY", t.access_key.as_str())
        .set("OPENEDX_AWS_SECRET_ACCESS_KEY", t.secret_key.as_str());
    warn_unescaped(warnings, "OPENEDX_AWS_ACCESS_KEY", &t.access_key, false);
    warn_unescaped(
        warnings,
        "OPENEDX_AWS_SECRET_ACCESS_KEY",
        &t.secret_key,
        false,
    );

    plan_s3_carried_over(cfg, t, edits, warnings)?;
    Ok(())
}

/// The object-storage settings beyond tutor-contrib-s3's buckets: the source's signature
/// version and custom domain (plugin keys), the buckets and options the plugin has no key for
/// (settings patches, see [`s3_settings_patches`]), and what the operator must know.
fn plan_s3_carried_over(
    cfg: &TutorConfig,
    t: &S3Target,
    edits: &mut ConfigEdits,
    warnings: &mut Vec<String>,
) -> Result<(), TutorError> {
    if let Some(version) = &t.signature_version {
        edits.set("S3_SIGNATURE_VERSION", version.as_str());
    }
    if let Some(domain) = &t.custom_domain {
        edits.set("S3_CUSTOM_DOMAIN", domain.as_str());
    }
    for patch in s3_settings_patches(cfg, t)? {
        warnings.push(format!(
            "tutor-contrib-s3 {S3_PLUGIN_RELEASE} has no setting for {}: they need the Tutor \
             settings patch `{}` (docs/cutover.md)",
            patch.covers.join(", "),
            patch.name
        ));
    }
    for bucket in &t.not_copied {
        warnings.push(format!(
            "the platform uses MinIO bucket {bucket:?}, which this job did not copy (--buckets \
             left it out): its setting names the target bucket anyway; copy it (offload copy \
             --buckets ...) before starting the platform, or its files are missing"
        ));
    }
    if t.profile_image_bucket.is_empty() {
        warnings.push(
            "S3_PROFILE_IMAGE_BUCKET is empty: tutor-contrib-s3 then keeps profile images on the \
             filesystem"
                .to_owned(),
        );
    }
    if cfg.plugins().iter().any(|p| p == "minio") {
        warnings.push(
            "the MINIO_* settings stay in config.yml (as after `tutor plugins disable minio`); \
             they are unused once the minio plugin is disabled"
                .to_owned(),
        );
    }
    Ok(())
}

/// Refuse a root rendered by a Tutor whose settings offload does not know: before Olive (15) the
/// keys it writes were different, a release after the newest known one may have changed them,
/// and Meilisearch replaced Elasticsearch only in Sumac (19).
fn check_tutor_version(version: &str, targets: &[CutoverTarget]) -> Result<(), TutorError> {
    let unknown = |why: String| TutorError::UnknownVersion {
        version: version.to_string(),
        why,
    };
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .ok_or_else(|| unknown("that is not a version offload can read".into()))?;
    if !KNOWN_TUTOR_MAJORS.contains(&major) {
        return Err(unknown(format!(
            "offload writes the settings of Tutor {} to {} only",
            KNOWN_TUTOR_MAJORS.start(),
            KNOWN_TUTOR_MAJORS.end()
        )));
    }
    if major < 19
        && targets
            .iter()
            .any(|t| matches!(t, CutoverTarget::Meilisearch(_)))
    {
        return Err(unknown(
            "Tutor runs Meilisearch only from release 19 (Sumac) on; before it the search index is Elasticsearch".into(),
        ));
    }
    check_elasticsearch_era(major, targets).map_err(unknown)
}

/// An Elasticsearch target needs a Tutor that still runs Elasticsearch (18 or older).
fn check_elasticsearch_era(major: u32, targets: &[CutoverTarget]) -> Result<(), String> {
    let has_es = targets
        .iter()
        .any(|t| matches!(t, CutoverTarget::Elasticsearch(_)));
    if has_es && major > super::LAST_ELASTICSEARCH_MAJOR {
        return Err(format!(
            "Tutor {} and newer search with Meilisearch, not Elasticsearch: drop --to-elasticsearch \
             (move the search index with --to-meilisearch)",
            super::LAST_ELASTICSEARCH_MAJOR + 1
        ));
    }
    Ok(())
}

/// The warning for an Elasticsearch cutover on a root whose Tutor release is unknown.
fn elasticsearch_version_unknown(cfg: &TutorConfig) -> String {
    format!(
        "the Tutor release of {} is unknown (no env/version, no `tutor` on PATH): the \
         Elasticsearch settings written are those of Tutor 15 to 18; check `tutor --version` \
         says 18 or older",
        cfg.root().display()
    )
}

/// Works out the `config.yml` edits for moving `targets` off Tutor.
pub fn plan_cutover(
    cfg: &TutorConfig,
    targets: &[CutoverTarget],
) -> Result<CutoverPlan, TutorError> {
    plan_cutover_with_tls(cfg, targets, &TargetTls::default(), Path::new(""))
}

/// [`plan_cutover`], plus the settings Tutor has no key for (`tls`): when a target needs them,
/// a settings-patch plugin in `plugins_root` (Tutor's, [`settings_patch::plugins_root`]),
/// enabled in `PLUGINS`.
pub fn plan_cutover_with_tls(
    cfg: &TutorConfig,
    targets: &[CutoverTarget],
    tls: &TargetTls,
    plugins_root: &Path,
) -> Result<CutoverPlan, TutorError> {
    let release = cfg.tutor_release();
    if let Some(release) = &release {
        check_tutor_version(&release.version, targets)?;
    }
    let mut edits = ConfigEdits::new();
    let mut warnings = Vec::new();
    let mut stores = Vec::new();
    let mut mysql_plugins = Vec::new();
    let mut elasticsearch_target = None;
    if release.is_none()
        && targets
            .iter()
            .any(|t| matches!(t, CutoverTarget::Elasticsearch(_)))
    {
        warnings.push(elasticsearch_version_unknown(cfg));
    }
    for target in targets {
        let store = target.store();
        if stores.contains(&store) {
            return Err(target_error(store, "given more than once"));
        }
        stores.push(store);
        match target {
            CutoverTarget::Mysql(t) => {
                plan_mysql(cfg, t, &mut edits, &mut warnings)?;
                mysql_plugins.extend(
                    t.plugin_users
                        .iter()
                        .map(|u| (u.plugin.clone(), u.database.clone(), u.username.clone())),
                );
            }
            CutoverTarget::Mongodb(t) => plan_mongodb(t, &mut edits, &mut warnings)?,
            CutoverTarget::Redis(t) => plan_redis(cfg, t, &mut edits, &mut warnings)?,
            CutoverTarget::Meilisearch(t) => plan_meilisearch(cfg, t, &mut edits, &mut warnings)?,
            CutoverTarget::S3(t) => plan_s3(cfg, t, &mut edits, &mut warnings)?,
            CutoverTarget::Elasticsearch(t) => {
                elasticsearch::plan_elasticsearch(t, &mut edits, &mut warnings)?;
                elasticsearch_target = Some(t.clone());
            }
        }
    }
    let plugin = settings_patch::plan_plugin(cfg.root(), plugins_root, tls, &stores)?;
    if let Some(plugin) = &plugin {
        enable_plugin(cfg, &mut edits, &plugin.name);
    }
    let updated = apply_edits_at(cfg.raw(), &edits, &cfg.path())?;
    tracing::debug!(
        stores = ?stores,
        settings = edits.len(),
        warnings = warnings.len(),
        "planned Tutor cutover"
    );
    Ok(CutoverPlan {
        edits,
        warnings,
        root: cfg.root().to_owned(),
        plugins: cfg.plugins(),
        elasticsearch: elasticsearch_target,
        stores,
        mysql_plugins,
        original: cfg.raw().to_owned(),
        updated,
        plugin,
    })
}

/// Adds `name` to `PLUGINS` (as edited so far, else as the file has it), kept sorted as
/// `tutor plugins enable` writes it.
fn enable_plugin(cfg: &TutorConfig, edits: &mut ConfigEdits, name: &str) {
    let mut plugins: BTreeSet<String> = match edits.get("PLUGINS") {
        Some(Some(Value::Sequence(items))) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => cfg.plugins().into_iter().collect(),
    };
    plugins.insert(name.to_owned());
    let plugins: Vec<Value> = plugins.into_iter().map(Value::String).collect();
    edits.set("PLUGINS", Value::Sequence(plugins));
}

/// Lines of one setting's block as it reads in the file, with secret values masked.
fn masked_block(key: &str, block: &str) -> Vec<String> {
    if is_secret_key(key) {
        return vec![format!("{key}: {MASK}")];
    }
    block.lines().map(str::to_owned).collect()
}

impl CutoverPlan {
    /// The digest of the `config.yml` text this plan was computed from.
    pub fn base_digest(&self) -> String {
        text_digest(&self.original)
    }

    /// The full new text of `config.yml`. It holds secrets: never print or log it.
    pub fn updated_text(&self) -> &str {
        &self.updated
    }

    /// Whether applying the plan would change `config.yml` at all.
    pub fn changes_anything(&self) -> bool {
        self.updated != self.original
    }

    /// The settings-patch plugin this cutover writes and enables, if a target needs one.
    pub fn settings_patch(&self) -> Option<&SettingsPatchPlugin> {
        self.plugin.as_ref()
    }

    /// The lines the diff and the runbook give about the settings-patch plugin.
    fn plugin_note(&self) -> Option<String> {
        let p = self.plugin.as_ref()?;
        Some(format!(
            "Tutor has no setting for TLS to {}: the Tutor plugin {} ({}) patches the Open edX \
             settings (openedx-common-settings) and config.yml enables it (PLUGINS). It holds \
             no secret; `tutor plugins list` shows it; offload rollback removes it.",
            p.stores.join(", "),
            p.name,
            p.path.display()
        ))
    }

    /// A diff of `config.yml` by setting (`-` old, `+` new), secret values shown as `********`.
    pub fn masked_diff(&self) -> String {
        let path = self.root.join(CONFIG_FILENAME);
        let mut out = format!("--- {0}\n+++ {0} (after cutover)\n", path.display());
        let old = setting_blocks(&self.original);
        let new = setting_blocks(&self.updated);
        for (key, _) in self.edits.iter() {
            let before = old.iter().find(|(k, _)| k == key).map(|(_, b)| *b);
            let after = new.iter().find(|(k, _)| k == key).map(|(_, b)| *b);
            if before == after {
                continue;
            }
            let _ = writeln!(out, "@@ {key} @@");
            for line in before.map(|b| masked_block(key, b)).unwrap_or_default() {
                let _ = writeln!(out, "-{line}");
            }
            for line in after.map(|b| masked_block(key, b)).unwrap_or_default() {
                let _ = writeln!(out, "+{line}");
            }
        }
        if let Some(note) = self.plugin_note() {
            let _ = writeln!(out, "(new file) {note}");
        }
        out
    }

    /// The Tutor commands to run after the new `config.yml` is written, and how to roll back.
    pub fn runbook(&self) -> String {
        self.runbook_ending_with(&[])
    }

    /// [`Self::runbook`] with `closing` steps (text without a number; continuation lines indented
    /// by five spaces) after Tutor's own, before how to roll back.
    pub fn runbook_ending_with(&self, closing: &[String]) -> String {
        let root = shell_quote(&self.root.display().to_string());
        let has = |store: &str| self.stores.contains(&store);
        let mut services: Vec<&str> = Vec::new();
        for (store, service) in [
            ("MySQL", "mysql"),
            ("MongoDB", "mongodb"),
            ("Redis", "redis"),
            ("Meilisearch", "meilisearch"),
            ("S3", "minio"),
            ("Elasticsearch", "elasticsearch"),
        ] {
            if has(store) {
                services.push(service);
            }
        }
        let mut inits: Vec<(String, String)> = Vec::new();
        if has("MySQL") {
            inits.push((
                "mysql".into(),
                "creates the databases and the openedx user on the new MySQL".into(),
            ));
            for (plugin, database, user) in &self.mysql_plugins {
                inits.push((
                    plugin.clone(),
                    format!(
                        "creates user `{user}` (password from config.yml) with its grant on \
                         `{database}`, unless `offload copy --create-users` did; then the \
                         plugin's own init (migrations, OAuth2 clients, search index) on the \
                         copied data"
                    ),
                ));
            }
        }
        if has("Meilisearch") {
            inits.push((
                "meilisearch".into(),
                "creates the API key (uid MEILISEARCH_API_KEY_UID) on the new Meilisearch".into(),
            ));
        }
        let mut out = String::new();
        let _ = writeln!(out, "Next steps, for the Tutor project root {root}");
        let _ = writeln!(
            out,
            "(export TUTOR_ROOT={root}, and run them as the user that runs Tutor)\n"
        );
        let mut step = 0;
        let mut next = || {
            step += 1;
            step
        };
        let _ = writeln!(
            out,
            "{}. Stop the platform while the old containers are still listed:\n     tutor local stop\n     \
             (Kubernetes: tutor k8s stop)",
            next()
        );
        if has("S3") {
            let _ = writeln!(
                out,
                "{}. Install tutor-contrib-s3 {S3_PLUGIN_RELEASE} (not on PyPI; the release offload's \
                 settings were checked against) into Tutor's Python environment:\n     \
                 pip install --no-deps \"git+https://github.com/hastexo/tutor-contrib-s3@{S3_PLUGIN_RELEASE}\"\n     \
                 (it declares Tutor <21: without --no-deps pip would downgrade Tutor 22)\n     \
                 `tutor plugins list` must then show s3 as enabled",
                next()
            );
        }
        if let (Some(note), Some(plugin)) = (self.plugin_note(), &self.plugin) {
            let dir = plugin.path.parent().unwrap_or(Path::new("."));
            let _ = writeln!(
                out,
                "{}. Check the settings patch: `tutor plugins list` must show {} as enabled.\n     \
                 {note}\n     Tutor reads it from {}: run Tutor with \
                 TUTOR_PLUGINS_ROOT={} if that is not its plugins root (`tutor plugins printroot`).",
                next(),
                plugin.name,
                dir.display(),
                shell_quote(&dir.display().to_string()),
            );
        }
        if let Some(t) = &self.elasticsearch {
            if elasticsearch::settings_patch(t).is_some() {
                let text = elasticsearch::patch_step(t, next()).unwrap_or_default();
                out.push_str(&text);
            }
        }
        let _ = writeln!(
            out,
            "{}. Render the environment from the new config.yml:\n     tutor config save",
            next()
        );
        if !inits.is_empty() {
            let _ = writeln!(out, "{}. Create users and keys on the new servers:", next());
            for (limit, what) in &inits {
                let _ = writeln!(out, "     tutor local do init --limit={limit}    # {what}");
            }
            let limits: Vec<String> = inits
                .iter()
                .map(|(l, _)| format!("tutor k8s do init --limit={l}"))
                .collect();
            let _ = writeln!(out, "     (Kubernetes: {})", limits.join("; "));
        }
        let _ = writeln!(
            out,
            "{}. Start the platform on the new servers:\n     tutor local start -d\n     \
             (it recreates the containers from the new env/ and removes the old {} \
             containers, which `tutor local restart` does not)\n     \
             (Kubernetes: tutor k8s start; step 1 already deleted the old deployments, their \
             volumes are kept)",
            next(),
            services.join("/"),
        );
        if self.elasticsearch.is_some() {
            out.push_str(&elasticsearch::reindex_step(&self.plugins, next()));
        }
        let _ = writeln!(
            out,
            "{}. Check: tutor config printvalue {}",
            next(),
            self.check_keys().join(" ; tutor config printvalue ")
        );
        for step in closing {
            let _ = writeln!(out, "{}. {step}", next());
        }
        let _ = writeln!(
            out,
            "\nTo roll back: offload rollback --tutor-root {root}\n  (restores config.yml from the \
             newest {BACKUP_PREFIX}* file), then tutor config save and tutor local start -d \
             (Kubernetes: tutor k8s start). Data written to the new servers after cutover is not \
             copied back."
        );
        out
    }

    fn check_keys(&self) -> Vec<&str> {
        [
            "MYSQL_HOST",
            "MONGODB_HOST",
            "REDIS_HOST",
            "MEILISEARCH_URL",
            "S3_HOST",
            "ELASTICSEARCH_HOST",
        ]
        .into_iter()
        .filter(|k| self.edits.get(k).is_some())
        .collect()
    }
}

/// `text` as one shell word: unchanged when safe, else single-quoted.
fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(&b));
    if safe {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn write_error(path: &Path, source: std::io::Error) -> TutorError {
    TutorError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Permission bits and owner to give a file written in place of another.
#[derive(Debug, Clone, Copy)]
struct FileIdentity {
    mode: u32,
    owner: Option<(u32, u32)>,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            mode: meta.permissions().mode() & 0o7777,
            owner: Some((meta.uid(), meta.gid())),
        }
    }
}

/// Creates `path` (which must not exist) holding `bytes`, flushed to disk, with `identity`.
///
/// The owner is kept when the process may set it (root, or the same user); otherwise the
/// write fails rather than leave a file its owner cannot read.
fn create_file(path: &Path, bytes: &[u8], identity: FileIdentity) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    if let Some((uid, gid)) = identity.owner {
        let meta = file.metadata()?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
    }
    file.write_all(bytes)?;
    file.set_permissions(std::fs::Permissions::from_mode(identity.mode))?;
    file.sync_all()
}

/// Writes `bytes` over `path` through a temporary file in the same folder (fsync, rename, fsync
/// of the folder). A symbolic link is followed, as Tutor does. On error `path` is left as it was.
fn write_atomically(path: &Path, bytes: &[u8], identity: FileIdentity) -> Result<(), TutorError> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let target = if is_link {
        std::fs::canonicalize(path).map_err(|e| write_error(path, e))?
    } else {
        path.to_owned()
    };
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(CONFIG_FILENAME);
    let tmp = dir.join(format!(".{name}.offload-tmp-{}", std::process::id()));
    let result = create_file(&tmp, bytes, identity)
        .and_then(|()| std::fs::rename(&tmp, &target))
        .and_then(|()| std::fs::File::open(dir)?.sync_all());
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| write_error(path, e))
}

/// Whether a config text sets any secret-named setting to a non-empty value.
fn holds_secrets(text: &str) -> bool {
    let Ok(mapping) = read_mapping(text, Path::new(CONFIG_FILENAME)) else {
        return true;
    };
    mapping.iter().any(|(key, value)| {
        key.as_str().is_some_and(is_secret_key)
            && !matches!(value, Value::Null)
            && value.as_str() != Some("")
    })
}

/// Writes `plan` to `<root>/config.yml`, if the file still has the digest `expected_digest`.
///
/// The previous file is first copied to `config.yml.offload-backup-<now>` (mode 0600) beside it;
/// `now` should be a sortable UTC timestamp such as `20261123T151200Z`, since [`rollback`] takes
/// the backup whose name sorts last. The new file keeps the old one's permission bits, narrowed
/// to 0600 when it holds secrets.
pub fn apply_cutover(
    root: &Path,
    plan: &CutoverPlan,
    expected_digest: &str,
    now: &str,
) -> Result<AppliedCutover, TutorError> {
    let path = config_path(root);
    if now.is_empty()
        || !now
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+-".contains(&b))
    {
        return Err(TutorError::Value {
            key: "backup timestamp".to_owned(),
            reason: "use letters, digits and . _ : + - only, e.g. 20261123T151200Z".to_owned(),
        });
    }
    let current = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TutorError::NotFound {
                root: root.to_owned(),
            })
        }
        Err(source) => return Err(TutorError::Read { path, source }),
    };
    let digest = text_digest(&current);
    if digest != expected_digest || digest != plan.base_digest() {
        return Err(TutorError::Changed { path });
    }
    let identity = std::fs::metadata(&path)
        .map(|meta| FileIdentity::of(&meta))
        .map_err(|source| TutorError::Read {
            path: path.clone(),
            source,
        })?;

    let backup_path = root.join(format!("{BACKUP_PREFIX}{now}"));
    let private = FileIdentity {
        mode: 0o600,
        ..identity
    };
    if let Err(source) = create_file(&backup_path, current.as_bytes(), private) {
        if source.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(&backup_path);
        }
        return Err(write_error(&backup_path, source));
    }

    let original_mode = identity.mode;
    let identity = if holds_secrets(&plan.updated) {
        private
    } else {
        identity
    };
    // What is about to be written, recorded first: rollback restores only over this file.
    let record_path = root.join(format!("{RECORD_PREFIX}{now}"));
    // A plugin the file already enables belongs to an earlier cutover: rollback leaves it.
    let new_plugin = plan
        .plugin
        .as_ref()
        .filter(|p| !plan_enables(&plan.original, &p.name));
    let record = CutoverRecord {
        written_digest: text_digest(&plan.updated),
        original_mode,
        plugin_file: new_plugin.map(|p| p.path.clone()),
    };
    let record_text = serde_json::to_string(&record).expect("record serializes") + "\n";
    if let Err(source) = create_file(&record_path, record_text.as_bytes(), private) {
        if source.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(&record_path);
        }
        return Err(write_error(&record_path, source));
    }
    if let Some(plugin) = &plan.plugin {
        if let Err(e) = settings_patch::write_plugin(plugin) {
            let _ = std::fs::remove_file(&record_path);
            return Err(e);
        }
    }
    if let Err(e) = write_atomically(&path, plan.updated.as_bytes(), identity) {
        let _ = std::fs::remove_file(&record_path);
        if let Some(plugin) = new_plugin {
            let _ = settings_patch::remove_plugin(&plugin.path);
        }
        return Err(e);
    }
    tracing::info!(
        config = %path.display(),
        backup = %backup_path.display(),
        settings = plan.edits.len(),
        "rewrote Tutor config.yml for cutover"
    );
    Ok(AppliedCutover {
        backup_path,
        config_path: path,
    })
}

/// Whether the `config.yml` text `text` lists `name` in `PLUGINS`.
fn plan_enables(text: &str, name: &str) -> bool {
    read_mapping(text, Path::new(CONFIG_FILENAME)).is_ok_and(|m| {
        m.get("PLUGINS")
            .and_then(Value::as_sequence)
            .is_some_and(|items| items.iter().any(|v| v.as_str() == Some(name)))
    })
}

/// Removes the settings-patch plugin a cutover wrote (its record names it), once config.yml no
/// longer enables it.
fn remove_cutover_plugin(record: Option<&CutoverRecord>) -> Result<Option<PathBuf>, TutorError> {
    let Some(path) = record.and_then(|r| r.plugin_file.as_ref()) else {
        return Ok(None);
    };
    let removed = settings_patch::remove_plugin(path)?;
    if removed {
        tracing::info!(plugin = %path.display(), "removed the settings-patch plugin cutover wrote");
    }
    Ok(removed.then(|| path.clone()))
}

/// Restores `<root>/config.yml` from the newest offload backup, byte for byte, with the mode
/// it had before cutover and the backup's owner (cutover gave it the original's).
///
/// Refuses with [`TutorError::EditedAfterCutover`] when `config.yml` is not the file cutover
/// wrote (nor already the backup): rollback would discard those edits. With `force` it first
/// saves the current file as `config.yml.offload-before-rollback-<now>` (0600). A backup without
/// a cutover record (older releases) counts as edited. Backups are kept.
pub fn rollback(root: &Path, force: bool, now: &str) -> Result<RolledBack, TutorError> {
    let newest = backups(root)?
        .into_iter()
        .max()
        .ok_or_else(|| TutorError::NoBackup {
            root: root.to_owned(),
        })?;
    let bytes = std::fs::read(&newest).map_err(|source| TutorError::Read {
        path: newest.clone(),
        source,
    })?;
    let backup_meta = std::fs::metadata(&newest).map_err(|source| TutorError::Read {
        path: newest.clone(),
        source,
    })?;
    let record = read_record(&newest);
    let path = config_path(root);
    let current = match std::fs::read(&path) {
        Ok(current) => Some(current),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(TutorError::Read { path, source }),
    };
    let current_meta = std::fs::metadata(&path).ok();

    let mut saved_current = None;
    if let Some(current) = &current {
        let current_text = String::from_utf8_lossy(current);
        let as_written = record
            .as_ref()
            .is_some_and(|r| r.written_digest == text_digest(&current_text));
        if !as_written && *current != bytes {
            if !force {
                return Err(TutorError::EditedAfterCutover(Box::new(
                    EditedAfterCutover {
                        path,
                        backup: newest,
                        known: record.is_some(),
                        diff: masked_text_diff(
                            &config_path(root),
                            &current_text,
                            &String::from_utf8_lossy(&bytes),
                            "after rollback",
                        ),
                    },
                )));
            }
            let saved = root.join(format!("{SAVED_PREFIX}{now}"));
            let owner = current_meta.as_ref().map(|m| (m.uid(), m.gid()));
            let identity = FileIdentity { mode: 0o600, owner };
            create_file(&saved, current, identity).map_err(|source| {
                if source.kind() != std::io::ErrorKind::AlreadyExists {
                    let _ = std::fs::remove_file(&saved);
                }
                write_error(&saved, source)
            })?;
            tracing::warn!(config = %path.display(), saved = %saved.display(), "config.yml was edited after cutover; saved it before rolling back, as --force asks");
            saved_current = Some(saved);
        }
    }

    // The mode from before cutover when recorded (else the current file's), the backup's owner.
    let mode = record
        .as_ref()
        .map(|r| r.original_mode)
        .or_else(|| {
            current_meta
                .as_ref()
                .map(|m| m.permissions().mode() & 0o7777)
        })
        .unwrap_or(0o600);
    let identity = FileIdentity {
        mode,
        owner: Some((backup_meta.uid(), backup_meta.gid())),
    };
    write_atomically(&path, &bytes, identity)?;
    tracing::info!(
        config = %path.display(),
        backup = %newest.display(),
        "restored Tutor config.yml from backup"
    );
    let removed_plugin = remove_cutover_plugin(record.as_ref())?;
    Ok(RolledBack {
        restored_from: newest,
        saved_current,
        removed_plugin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_diff_shows_changed_settings_with_secrets_masked() {
        let path = Path::new("/t/config.yml");
        let old = "LMS_HOST: a.example.org\nMYSQL_ROOT_PASSWORD: s3cret-old\nZ: 1\n";
        let new = "LMS_HOST: b.example.org\nMYSQL_ROOT_PASSWORD: s3cret-new\nZ: 1\n";
        let diff = masked_text_diff(path, old, new, "after rollback");
        assert!(
            diff.contains("-LMS_HOST: a.example.org\n+LMS_HOST: b.example.org"),
            "{diff}"
        );
        assert!(diff.contains("-MYSQL_ROOT_PASSWORD: ********"), "{diff}");
        assert!(
            !diff.contains("s3cret") && !diff.contains("@@ Z @@"),
            "{diff}"
        );
        assert!(!diff.contains("compare them by hand"), "{diff}");

        // Files that differ where no setting shows it say so.
        let diff = masked_text_diff(path, "A: 1\nA: 2\n", "A: 1\nA: 3\n", "x");
        assert!(diff.contains("compare them by hand"), "{diff}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let target = CutoverTarget::Mysql(MysqlTarget {
            host: "db".into(),
            port: 3306,
            root_username: "root".into(),
            root_password: Some("hunter2".into()),
            app: Some(("openedx".into(), "swordfish".into())),
            plugin_users: vec![MysqlPluginUser {
                plugin: "discovery".into(),
                prefix: "DISCOVERY".into(),
                database: "discovery".into(),
                username: "d".into(),
                password: Some("letmein".into()),
            }],
        });
        let shown = format!("{target:?}");
        for secret in ["hunter2", "swordfish", "letmein"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("\"db\""), "{shown}");
    }

    #[test]
    fn secret_keys() {
        for key in [
            "MYSQL_ROOT_PASSWORD",
            "OPENEDX_AWS_SECRET_ACCESS_KEY",
            "MEILISEARCH_API_KEY",
            "OPENEDX_AWS_ACCESS_KEY",
            "GITHUB_TOKEN",
            "JWT_RSA_PRIVATE_KEY",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "MEILISEARCH_API_KEY_UID",
            "MYSQL_HOST",
            "S3_STORAGE_BUCKET",
            "PLUGINS",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn runbook_paths_are_shell_words() {
        assert_eq!(shell_quote("/srv/tutor"), "/srv/tutor");
        assert_eq!(shell_quote("/srv/my tutor"), "'/srv/my tutor'");
        assert_eq!(shell_quote("/srv/it's"), "'/srv/it'\\''s'");
    }

    #[test]
    fn redis_password_needs_a_username() {
        let target = RedisTarget {
            host: "redis.internal".into(),
            port: 6379,
            username: String::new(),
            password: "secret".into(),
            databases: Vec::new(),
        };
        let cfg = config_of("RUN_REDIS: true\n");
        let err =
            plan_redis(&cfg.1, &target, &mut ConfigEdits::new(), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("`default`"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    /// A Tutor root holding this `config.yml`, and the config read from it.
    fn config_of(text: &str) -> (tempfile::TempDir, TutorConfig) {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(CONFIG_FILENAME), text).unwrap();
        let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
        (root, cfg)
    }

    #[test]
    fn redis_databases_follow_the_copy_and_a_shared_one_is_warned_about() {
        let target = |databases: Vec<(i64, i64)>| RedisTarget {
            host: "redis.internal".into(),
            port: 6379,
            username: String::new(),
            password: String::new(),
            databases,
        };
        let (_root, cfg) = config_of("OPENEDX_CACHE_REDIS_DB: 4\n");
        let plan = |t: &RedisTarget| {
            let (mut edits, mut warnings) = (ConfigEdits::new(), Vec::new());
            plan_redis(&cfg, t, &mut edits, &mut warnings).unwrap();
            (edits, warnings)
        };

        let (edits, warnings) = plan(&target(Vec::new()));
        assert!(edits.get("OPENEDX_CELERY_REDIS_DB").is_none());
        assert!(edits.get("OPENEDX_CACHE_REDIS_DB").is_none());
        assert!(warnings.is_empty(), "{warnings:?}");

        let (edits, warnings) = plan(&target(vec![(0, 2), (4, 3)]));
        assert_eq!(
            edits.get("OPENEDX_CELERY_REDIS_DB"),
            Some(Some(&Value::from(2)))
        );
        assert_eq!(
            edits.get("OPENEDX_CACHE_REDIS_DB"),
            Some(Some(&Value::from(3)))
        );
        assert!(warnings.is_empty(), "{warnings:?}");

        // The cache is left out, and Celery's database lands on the cache's number.
        let (edits, warnings) = plan(&target(vec![(0, 4)]));
        assert_eq!(
            edits.get("OPENEDX_CELERY_REDIS_DB"),
            Some(Some(&Value::from(4)))
        );
        assert!(edits.get("OPENEDX_CACHE_REDIS_DB").is_none());
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("OPENEDX_CACHE_REDIS_DB is 4")
                    && w.contains("source database 0")),
            "{warnings:?}"
        );
    }

    #[test]
    fn plugin_users_are_kept_and_their_inits_named() {
        let (_root, cfg) =
            config_of("DISCOVERY_MYSQL_PASSWORD: d1sc\nPLUGINS:\n- discovery\n- notes\n");
        let user = |plugin: &str, prefix: &str, password: Option<&str>| MysqlPluginUser {
            plugin: plugin.into(),
            prefix: prefix.into(),
            database: plugin.into(),
            username: plugin.into(),
            password: password.map(String::from),
        };
        let target = CutoverTarget::Mysql(MysqlTarget {
            host: "db.internal".into(),
            port: 3306,
            root_username: "admin".into(),
            root_password: None,
            app: None,
            plugin_users: vec![
                user("discovery", "DISCOVERY", Some("d1sc")),
                user("notes", "NOTES", None),
            ],
        });
        let plan = plan_cutover(&cfg, &[target]).unwrap();
        assert!(
            plan.edits.iter().all(|(k, _)| !k.contains("_MYSQL_")),
            "the plugins' settings (defaults included) stay as they are: {:?}",
            plan.edits
        );
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.starts_with("NOTES_MYSQL_PASSWORD is not in config.yml")),
            "{:?}",
            plan.warnings
        );
        let runbook = plan.runbook();
        for plugin in ["discovery", "notes"] {
            assert!(
                runbook.contains(&format!(
                    "tutor local do init --limit={plugin}    # creates user `{plugin}`"
                )),
                "{runbook}"
            );
            assert!(
                runbook.contains(&format!("tutor k8s do init --limit={plugin}")),
                "{runbook}"
            );
        }
    }

    #[test]
    fn hosts_carry_no_credentials() {
        for bad in ["", "mongodb://h", "u:p@h", "h:27017", "h/db", "a b"] {
            assert!(check_host("MongoDB", "host", bad).is_err(), "{bad:?}");
        }
        for good in ["mongo.internal", "10.0.0.5", "::1", "fd00::5"] {
            assert!(check_host("MongoDB", "host", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn mongodb_host_may_be_a_list_or_an_srv_name_as_tutor_takes_them() {
        for good in [
            "mongo.internal",
            "m1.internal,m2.internal,m3.internal",
            "10.0.0.5,[fd00::5]",
            "mongodb+srv://cluster0.example.mongodb.net",
        ] {
            assert!(check_mongodb_host(good).is_ok(), "{good:?}");
        }
        for bad in [
            "m1:27017,m2:27017",
            "m1,,m2",
            "m1,fd00::5",
            "mongodb+srv://a,b",
            "mongodb+srv://a:27017",
            "mongodb+srv://",
            "mongodb://m1",
            "u:p@m1,m2",
        ] {
            assert!(check_mongodb_host(bad).is_err(), "{bad:?}");
        }
    }
}
