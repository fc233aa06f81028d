//! The settings Tutor has no key for, as a Tutor plugin: TLS to an external MySQL (Django
//! `DATABASES` options), `rediss://` for the Django caches and the Celery broker, and a private CA
//! for MongoDB. Cutover writes a small YAML plugin of `openedx-common-settings` patches into
//! Tutor's plugins root and enables it in `config.yml`; rollback removes the file.
//!
//! The plugin holds no secret: the patch reads hosts, users and passwords from the settings Tutor
//! already renders (it only switches TLS on and names the CA), and the CA certificates travel
//! inside it, so no file has to be mounted into the containers (Compose or Kubernetes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::TutorError;

/// MySQL's `ssl-mode` values that need a setting (the client's default already tries TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlSslMode {
    /// TLS, certificate not verified.
    Required,
    /// TLS, certificate chain verified.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyIdentity,
}

impl MysqlSslMode {
    /// mysqlclient's `ssl_mode` value.
    fn as_mysqlclient(self) -> &'static str {
        match self {
            MysqlSslMode::Required => "REQUIRED",
            MysqlSslMode::VerifyCa => "VERIFY_CA",
            MysqlSslMode::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }
}

/// TLS to the new MySQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlTls {
    pub mode: MysqlSslMode,
    /// The CA certificates (PEM) that verify the server; `None` uses the image's system bundle.
    pub ca_pem: Option<String>,
}

/// TLS to the new Redis server (`rediss://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// Whether the certificate is verified (`false` for `insecure=true`).
    pub verify: bool,
    /// The CA certificates (PEM); `None` uses the system's.
    pub ca_pem: Option<String>,
}

/// What Tutor's `MONGODB_USE_SSL` cannot say about the new MongoDB's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongodbTls {
    /// The CA certificates (PEM) from `tlsCAFile`.
    pub ca_pem: Option<String>,
    /// `tlsAllowInvalidCertificates=true` (or `tlsInsecure=true`).
    pub allow_invalid_certificates: bool,
}

/// TLS settings of the targets that Tutor has no key for; each applies only when its store is
/// cut over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetTls {
    pub mysql: Option<MysqlTls>,
    pub redis: Option<RedisTls>,
    pub mongodb: Option<MongodbTls>,
}

/// The plugin a cutover writes and enables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsPatchPlugin {
    /// The plugin's name, as `PLUGINS` lists it.
    pub name: String,
    /// `<plugins root>/<name>.yml`.
    pub path: PathBuf,
    /// The stores it patches, e.g. `["MySQL", "Redis"]`.
    pub stores: Vec<&'static str>,
    /// The file's text (no secret in it).
    pub text: String,
}

/// The CA bundle of the Open edX image (Ubuntu's `ca-certificates`), for MySQL certificates
/// verified against public CAs: MySQL's client library needs a CA file to verify at all.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Tutor's plugins root, as Tutor 22 computes it (`tutor plugins printroot`): `TUTOR_PLUGINS_ROOT`
/// (with `~` expanded), else `$XDG_DATA_HOME/tutor-plugins`, else `~/.local/share/tutor-plugins`.
pub fn plugins_root() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let home = || var("HOME").map(PathBuf::from).unwrap_or_default();
    if let Some(root) = var("TUTOR_PLUGINS_ROOT") {
        let text = root.to_string_lossy();
        return match text.strip_prefix('~') {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                home().join(rest.trim_start_matches('/'))
            }
            _ => PathBuf::from(root),
        };
    }
    let data = var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local").join("share"));
    data.join("tutor-plugins")
}

/// The plugin's name: the plugins root is shared by every Tutor root of a user, and a later
/// cutover of the same root may patch other stores, so the name is a digest of the root's path
/// and the patch. A cutover never overwrites another root's or another cutover's plugin.
pub fn plugin_name(tutor_root: &Path, patch: &str) -> String {
    let root = std::fs::canonicalize(tutor_root).unwrap_or_else(|_| tutor_root.to_owned());
    let mut hasher = blake3::Hasher::new();
    hasher.update(root.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(patch.as_bytes());
    format!("offload-tls-{}", &hasher.finalize().to_hex()[..8])
}

fn target_error(store: &'static str, reason: impl Into<String>) -> TutorError {
    TutorError::Target {
        store,
        reason: reason.into(),
    }
}

/// PEM text holding certificates only: the markers and base64 lines, nothing a template or Python
/// string could misread, and no private key (which would make the plugin hold a secret).
fn check_pem(store: &'static str, pem: &str) -> Result<(), TutorError> {
    let mut certificates = 0;
    let mut inside = false;
    for line in pem.lines().map(str::trim_end) {
        match line {
            "-----BEGIN CERTIFICATE-----" if !inside => inside = true,
            "-----END CERTIFICATE-----" if inside => {
                inside = false;
                certificates += 1;
            }
            _ if inside => {
                let base64 = line
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                if !base64 {
                    return Err(target_error(
                        store,
                        "the CA file is not PEM certificates (a line inside a certificate is not \
                         base64): give the CA certificate in PEM form",
                    ));
                }
            }
            _ if line.contains("PRIVATE KEY") => {
                return Err(target_error(
                    store,
                    "the CA file holds a private key: give a file with the CA certificate only \
                     (the settings patch never holds a secret)",
                ));
            }
            // Text around the certificates (e.g. `subject=` lines) is left out of the patch.
            _ => {}
        }
    }
    if certificates == 0 || inside {
        return Err(target_error(
            store,
            "the CA file holds no complete PEM certificate (-----BEGIN CERTIFICATE----- ... \
             -----END CERTIFICATE-----): give the CA certificate in PEM form",
        ));
    }
    Ok(())
}

/// The certificates of `pem`, one block after another, without surrounding text.
fn certificates_only(pem: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in pem.lines().map(str::trim_end) {
        if line == "-----BEGIN CERTIFICATE-----" {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line == "-----END CERTIFICATE-----" {
            inside = false;
        }
    }
    out
}

/// A Python expression for the path of the CA file made from `pem` (in the container).
fn ca_file_expr(store: &str, pem: &str) -> String {
    format!(
        "_offload_ca_file(\"{store}\", \"\"\"\\\n{}\"\"\")",
        certificates_only(pem)
    )
}

/// The Python of the patch: what Tutor's settings leave out, applied to them in place.
fn patch_python(name: &str, tls: &TargetTls) -> String {
    let mut py = String::new();
    let _ = writeln!(py, "# ---- offload settings patch ({name}): begin ----");
    py.push_str(
        "# TLS to the external servers, which Tutor has no setting for. Written by `offload \
         cutover`,\n# removed by `offload rollback`. Hosts, users and passwords stay Tutor's own \
         settings.\n",
    );
    let needs_ca = tls.mysql.as_ref().is_some_and(|m| m.ca_pem.is_some())
        || tls.redis.as_ref().is_some_and(|r| r.ca_pem.is_some())
        || tls.mongodb.as_ref().is_some_and(|m| m.ca_pem.is_some());
    if needs_ca {
        py.push_str(
            r#"def _offload_ca_file(store, pem):
    """The CA certificates `pem` as a file in this container (written once, atomically)."""
    import hashlib
    import os
    import tempfile

    digest = hashlib.sha256(pem.encode("ascii")).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), "offload-ca-%s-%s.pem" % (store, digest))
    try:
        with open(path, encoding="ascii") as existing:
            if existing.read() == pem:
                return path
    except OSError:
        pass
    handle, temporary = tempfile.mkstemp(prefix=".offload-ca-", dir=os.path.dirname(path))
    with os.fdopen(handle, "w", encoding="ascii") as new:
        new.write(pem)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    return path
"#,
        );
    }
    if let Some(m) = &tls.mysql {
        let _ = writeln!(
            py,
            "\n# MySQL: ssl-mode={} for every database on MYSQL_HOST.",
            m.mode.as_mysqlclient().to_ascii_lowercase()
        );
        let _ = write!(
            py,
            "_offload_mysql_options = {{\"ssl_mode\": \"{}\"",
            m.mode.as_mysqlclient()
        );
        let ca = match (&m.ca_pem, m.mode) {
            (Some(pem), _) => Some(ca_file_expr("mysql", pem)),
            (None, MysqlSslMode::Required) => None,
            (None, _) => Some(format!("\"{SYSTEM_CA_BUNDLE}\"")),
        };
        if let Some(ca) = ca {
            let _ = write!(py, ", \"ssl\": {{\"ca\": {ca}}}");
        }
        py.push_str(
            "}\nfor _offload_database in DATABASES.values():\n    \
             if str(_offload_database.get(\"HOST\")) == \"{{ MYSQL_HOST }}\":\n        \
             _offload_database.setdefault(\"OPTIONS\", {}).update(_offload_mysql_options)\n",
        );
    }
    if let Some(r) = &tls.redis {
        py.push_str(
            "\n# Redis: rediss:// for the Django caches and the Celery broker on REDIS_HOST.\n\
             import ssl as _offload_ssl\n\n",
        );
        if r.verify {
            py.push_str(
                "_offload_redis_tls = {\"ssl_cert_reqs\": _offload_ssl.CERT_REQUIRED, \
                 \"ssl_check_hostname\": True",
            );
            if let Some(pem) = &r.ca_pem {
                let _ = write!(py, ", \"ssl_ca_certs\": {}", ca_file_expr("redis", pem));
            }
            py.push_str("}\n");
        } else {
            py.push_str(
                "_offload_redis_tls = {\"ssl_cert_reqs\": _offload_ssl.CERT_NONE, \
                 \"ssl_check_hostname\": False}\n",
            );
        }
        py.push_str(
            r#"_offload_redis_at = "@{{ REDIS_HOST }}:{{ REDIS_PORT }}/"
for _offload_cache in CACHES.values():
    _offload_location = _offload_cache.get("LOCATION")
    if isinstance(_offload_location, str) and _offload_location.startswith("redis://") and _offload_redis_at in _offload_location:
        _offload_cache["LOCATION"] = "rediss://" + _offload_location[len("redis://"):]
        _offload_cache.setdefault("OPTIONS", {}).setdefault("CONNECTION_POOL_KWARGS", {}).update(_offload_redis_tls)
_offload_broker = globals().get("BROKER_URL")
if isinstance(_offload_broker, str) and _offload_broker.startswith("redis://") and _offload_redis_at in _offload_broker:
    BROKER_URL = "rediss://" + _offload_broker[len("redis://"):]
    BROKER_USE_SSL = dict(_offload_redis_tls)
"#,
        );
    }
    if let Some(m) = &tls.mongodb {
        py.push_str(
            "\n# MongoDB: what MONGODB_USE_SSL does not say (the CA, or no certificate check).\n",
        );
        let mut items = Vec::new();
        if let Some(pem) = &m.ca_pem {
            items.push(format!("\"tlsCAFile\": {}", ca_file_expr("mongodb", pem)));
        }
        if m.allow_invalid_certificates {
            items.push("\"tlsAllowInvalidCertificates\": True".to_owned());
        }
        let _ = writeln!(py, "_offload_mongodb_tls = {{{}}}", items.join(", "));
        py.push_str(
            r#"if "mongodb_parameters" in globals():
    mongodb_parameters.update(_offload_mongodb_tls)
for _offload_store in MODULESTORE["default"]["OPTIONS"]["stores"]:
    if "DOC_STORE_CONFIG" in _offload_store:
        _offload_store["DOC_STORE_CONFIG"].update(_offload_mongodb_tls)
"#,
        );
    }
    let _ = writeln!(py, "# ---- offload settings patch ({name}): end ----");
    py
}

/// A path for a YAML comment: control characters shown as `?`.
fn comment_text(path: &Path) -> String {
    path.display()
        .to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The plugin file: a Tutor YAML plugin with one `openedx-common-settings` patch (included in the
/// LMS and CMS settings, production and development, after Tutor's own).
fn plugin_text(name: &str, tutor_root: &Path, tls: &TargetTls) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Written by `offload cutover` for the Tutor root {}.\n\
         # The settings Tutor has no key for: TLS to the external servers. `offload rollback` removes\n\
         # this file. It holds no secret: hosts, users and passwords come from config.yml.",
        comment_text(tutor_root)
    );
    let _ = writeln!(text, "name: {name}");
    text.push_str("version: \"1.0.0\"\npatches:\n  openedx-common-settings: |\n");
    for line in patch_python(name, tls).lines() {
        if line.is_empty() {
            text.push('\n');
        } else {
            let _ = writeln!(text, "    {line}");
        }
    }
    text
}

/// The plugin for the stores being cut over, if any of them needs one.
pub(super) fn plan_plugin(
    tutor_root: &Path,
    plugins_root: &Path,
    tls: &TargetTls,
    stores: &[&'static str],
) -> Result<Option<SettingsPatchPlugin>, TutorError> {
    let moved = |store: &str| stores.contains(&store);
    let tls = TargetTls {
        mysql: tls.mysql.clone().filter(|_| moved("MySQL")),
        redis: tls.redis.clone().filter(|_| moved("Redis")),
        mongodb: tls
            .mongodb
            .clone()
            .filter(|m| moved("MongoDB") && (m.ca_pem.is_some() || m.allow_invalid_certificates)),
    };
    let mut patched = Vec::new();
    for (store, pem) in [
        (
            "MySQL",
            tls.mysql.as_ref().and_then(|m| m.ca_pem.as_deref()),
        ),
        (
            "Redis",
            tls.redis.as_ref().and_then(|r| r.ca_pem.as_deref()),
        ),
        (
            "MongoDB",
            tls.mongodb.as_ref().and_then(|m| m.ca_pem.as_deref()),
        ),
    ] {
        if let Some(pem) = pem {
            check_pem(store, pem)?;
        }
    }
    if let Some(r) = &tls.redis {
        if !r.verify && r.ca_pem.is_some() {
            return Err(target_error(
                "Redis",
                "a CA verifies the certificate and insecure=true skips that: keep one of them",
            ));
        }
    }
    if tls.mysql.is_some() {
        patched.push("MySQL");
    }
    if tls.redis.is_some() {
        patched.push("Redis");
    }
    if tls.mongodb.is_some() {
        patched.push("MongoDB");
    }
    if patched.is_empty() {
        return Ok(None);
    }
    if plugins_root.as_os_str().is_empty() {
        return Err(target_error(
            patched[0],
            "Tutor's plugins root is unknown (no HOME, XDG_DATA_HOME or TUTOR_PLUGINS_ROOT): set \
             TUTOR_PLUGINS_ROOT to the folder `tutor plugins printroot` prints",
        ));
    }
    let name = plugin_name(tutor_root, &patch_python("", &tls));
    Ok(Some(SettingsPatchPlugin {
        path: plugins_root.join(format!("{name}.yml")),
        text: plugin_text(&name, tutor_root, &tls),
        name,
        stores: patched,
    }))
}

/// Writes the plugin file atomically (a temporary file beside it, fsync, rename, fsync of the
/// folder), mode 0644: it holds no secret, and Tutor must read it. Creates the plugins root.
pub(super) fn write_plugin(plugin: &SettingsPatchPlugin) -> Result<(), TutorError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;

    let write_error = |source| TutorError::Write {
        path: plugin.path.clone(),
        source,
    };
    let dir = plugin.path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let tmp = dir.join(format!(
        ".{}.offload-tmp-{}",
        plugin.name,
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(plugin.text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &plugin.path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_error)
}

/// Removes a plugin file cutover wrote; one already gone is fine.
pub(super) fn remove_plugin(path: &Path) -> Result<bool, TutorError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(TutorError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "subject=CN = test\n-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\nabc+/=\n-----END CERTIFICATE-----\n";

    fn all() -> TargetTls {
        TargetTls {
            mysql: Some(MysqlTls {
                mode: MysqlSslMode::VerifyIdentity,
                ca_pem: Some(PEM.into()),
            }),
            redis: Some(RedisTls {
                verify: true,
                ca_pem: Some(PEM.into()),
            }),
            mongodb: Some(MongodbTls {
                ca_pem: Some(PEM.into()),
                allow_invalid_certificates: false,
            }),
        }
    }

    #[test]
    fn pem_must_be_certificates_without_a_key() {
        assert!(check_pem("MySQL", PEM).is_ok());
        let err = check_pem("MySQL", "-----BEGIN PRIVATE KEY-----\nabc\n").unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        let err = check_pem("MySQL", "hello").unwrap_err();
        assert!(err.to_string().contains("no complete PEM"), "{err}");
        let err = check_pem(
            "MySQL",
            "-----BEGIN CERTIFICATE-----\n{{ x }}\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        assert_eq!(
            certificates_only(PEM),
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\nabc+/=\n-----END CERTIFICATE-----\n"
        );
    }

    #[test]
    fn the_plugin_is_yaml_whose_patch_is_the_python_and_uses_only_tutor_settings_in_jinja() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = plan_plugin(
            Path::new("/srv/tutor"),
            dir.path(),
            &all(),
            &["MySQL", "Redis", "MongoDB"],
        )
        .unwrap()
        .unwrap();
        assert_eq!(plugin.stores, ["MySQL", "Redis", "MongoDB"]);
        assert!(plugin.name.starts_with("offload-tls-"), "{}", plugin.name);
        assert_eq!(plugin.path, dir.path().join(format!("{}.yml", plugin.name)));
        let yaml: serde_yaml::Value = serde_yaml::from_str(&plugin.text).unwrap();
        assert_eq!(yaml["name"].as_str(), Some(plugin.name.as_str()));
        assert_eq!(yaml["version"].as_str(), Some("1.0.0"));
        let patch = yaml["patches"]["openedx-common-settings"].as_str().unwrap();
        assert_eq!(patch, patch_python(&plugin.name, &all()));
        // Jinja sees only Tutor's own settings; the certificate lines start at column 0.
        let jinja: Vec<&str> = patch
            .match_indices("{{")
            .map(|(i, _)| &patch[i..])
            .collect();
        for j in &jinja {
            assert!(
                ["{{ MYSQL_HOST }}", "{{ REDIS_HOST }}", "{{ REDIS_PORT }}"]
                    .iter()
                    .any(|k| j.starts_with(k)),
                "{j}"
            );
        }
        assert!(!patch.contains("{%") && !patch.contains("{#"));
        assert!(patch.contains("\n-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n"));
        assert!(!patch.contains("subject="));
    }

    #[test]
    fn only_the_stores_cut_over_that_need_it_get_a_patch() {
        let dir = tempfile::tempdir().unwrap();
        let plan = |tls: &TargetTls, stores: &[&'static str]| {
            plan_plugin(Path::new("/srv/tutor"), dir.path(), tls, stores).unwrap()
        };
        assert_eq!(plan(&all(), &["S3"]), None);
        assert_eq!(plan(&TargetTls::default(), &["MySQL", "Redis"]), None);
        // MONGODB_USE_SSL alone says it all: no plugin for TLS with the system's CAs.
        let tls = TargetTls {
            mongodb: Some(MongodbTls {
                ca_pem: None,
                allow_invalid_certificates: false,
            }),
            ..TargetTls::default()
        };
        assert_eq!(plan(&tls, &["MongoDB"]), None);
        let plugin = plan(&all(), &["Redis"]).unwrap();
        assert_eq!(plugin.stores, ["Redis"]);
        assert!(!plugin.text.contains("DATABASES") && !plugin.text.contains("mongodb_parameters"));
    }

    #[test]
    fn the_name_is_stable_per_root_and_patch() {
        let name = |root: &str, patch: &str| plugin_name(Path::new(root), patch);
        assert_eq!(name("/nonexistent/a", "x"), name("/nonexistent/a", "x"));
        assert_ne!(name("/nonexistent/a", "x"), name("/nonexistent/b", "x"));
        assert_ne!(name("/nonexistent/a", "x"), name("/nonexistent/a", "y"));
        assert_eq!(name("/a", "x").len(), "offload-tls-".len() + 8);
    }
}
