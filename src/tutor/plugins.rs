//! Tutor plugins that keep a MySQL database and user of their own on Tutor's MySQL server
//! (discovery, ecommerce, notes, credentials, xqueue, jupyter): which of them are enabled, and
//! their `<PREFIX>_MYSQL_DATABASE`, `_USERNAME` and `_PASSWORD` as Tutor would resolve them,
//! the plugin's own defaults included. A migration must copy those databases, give the new
//! server those users, and keep those settings; the runbook names each plugin's init.

use serde_yaml::Value;

use super::{Redacted, TutorConfig, TutorError};

/// A plugin whose MySQL settings offload knows from its released code.
#[derive(Debug, Clone, Copy)]
pub struct KnownMysqlPlugin {
    /// The name in `PLUGINS` and in `tutor local do init --limit=<name>`.
    pub plugin: &'static str,
    /// The settings' prefix, e.g. `DISCOVERY` for `DISCOVERY_MYSQL_DATABASE`.
    pub prefix: &'static str,
    /// The plugin's default for `<PREFIX>_MYSQL_DATABASE`.
    pub database: &'static str,
    /// The plugin's default for `<PREFIX>_MYSQL_USERNAME`.
    pub username: &'static str,
    /// The release whose `plugin.py` and `tasks/mysql/init` these were read from.
    pub checked_against: &'static str,
}

/// Every plugin with its own MySQL database, as its PyPI release defines it. Each generates
/// `<PREFIX>_MYSQL_PASSWORD` (`{{ 8|random_string }}`, jupyter 24) into config.yml at `tutor
/// config save`, and its `mysql` init task runs `CREATE DATABASE IF NOT EXISTS`, `CREATE USER IF
/// NOT EXISTS '<user>'`, `ALTER USER '<user>'@'%' IDENTIFIED BY '<password>'` and `GRANT ALL ON
/// <database>.* TO '<user>'@'%'`. (tutor-forum 22 has no database of its own: the forum keeps
/// its tables in Open edX's database, or in MongoDB on older platforms.)
pub const MYSQL_PLUGINS: &[KnownMysqlPlugin] = &[
    KnownMysqlPlugin {
        plugin: "credentials",
        prefix: "CREDENTIALS",
        database: "credentials",
        username: "credentials",
        checked_against: "tutor-credentials 22.0.0",
    },
    KnownMysqlPlugin {
        plugin: "discovery",
        prefix: "DISCOVERY",
        database: "discovery",
        username: "discovery",
        checked_against: "tutor-discovery 22.0.0",
    },
    KnownMysqlPlugin {
        plugin: "ecommerce",
        prefix: "ECOMMERCE",
        database: "ecommerce",
        username: "ecommerce",
        checked_against: "tutor-ecommerce 19.0.0 (its last release)",
    },
    KnownMysqlPlugin {
        plugin: "jupyter",
        prefix: "JUPYTER_HUB",
        database: "jupyterhub",
        username: "jupyterhub",
        checked_against: "tutor-jupyter 22.0.0",
    },
    KnownMysqlPlugin {
        plugin: "notes",
        prefix: "NOTES",
        database: "notes",
        username: "notes",
        checked_against: "tutor-notes 22.0.0",
    },
    KnownMysqlPlugin {
        plugin: "xqueue",
        prefix: "XQUEUE",
        database: "xqueue",
        username: "xqueue",
        checked_against: "tutor-xqueue 22.0.0",
    },
];

/// One enabled plugin's MySQL database and user.
///
/// Its `Debug` output masks the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PluginMysql {
    /// The plugin's name in `PLUGINS`.
    pub plugin: String,
    /// The settings' prefix (`DISCOVERY`).
    pub prefix: String,
    pub database: String,
    pub username: String,
    /// `<PREFIX>_MYSQL_PASSWORD`; `None` until `tutor config save` has generated it.
    pub password: Option<String>,
}

impl std::fmt::Debug for PluginMysql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginMysql")
            .field("plugin", &self.plugin)
            .field("prefix", &self.prefix)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_deref().map(Redacted))
            .finish()
    }
}

impl PluginMysql {
    /// `<PREFIX>_MYSQL_<what>`.
    pub fn key(&self, what: &str) -> String {
        format!("{}_MYSQL_{what}", self.prefix)
    }
}

/// The enabled plugins' MySQL databases, and what the operator should know about the others.
#[derive(Debug, Clone, Default)]
pub struct PluginMysqlFindings {
    pub plugins: Vec<PluginMysql>,
    /// Plugins that keep no database of their own, or whose database offload cannot name.
    pub notes: Vec<String>,
}

impl TutorConfig {
    /// The default of a known plugin's MySQL setting, while that plugin is enabled.
    pub(super) fn plugin_mysql_default(&self, key: &str) -> Option<Value> {
        let (prefix, what) = key.split_once("_MYSQL_")?;
        let known = MYSQL_PLUGINS.iter().find(|p| p.prefix == prefix)?;
        let value = match what {
            "DATABASE" => known.database,
            "USERNAME" => known.username,
            _ => return None,
        };
        self.plugin_enabled(known.plugin)
            .then(|| Value::String(value.to_owned()))
    }

    fn plugin_enabled(&self, plugin: &str) -> bool {
        match self.lookup("PLUGINS", false) {
            Some(Value::Sequence(items)) => items.iter().any(|v| v.as_str() == Some(plugin)),
            _ => false,
        }
    }

    /// Every enabled plugin's MySQL database and user, as Tutor resolves them (`TUTOR_*`
    /// overrides, then config.yml, then the plugin's default). A value that cannot be a MySQL
    /// database or user name, as Tutor's templates use them unquoted, is an error naming its key.
    ///
    /// An enabled plugin offload does not know counts when config.yml holds its
    /// `<PREFIX>_MYSQL_PASSWORD`, `_DATABASE` and `_USERNAME`; with the password only, a note says
    /// how to make the other two explicit.
    pub fn mysql_plugins(&self) -> Result<PluginMysqlFindings, TutorError> {
        let mut found = PluginMysqlFindings::default();
        for plugin in self.plugins() {
            if let Some(known) = MYSQL_PLUGINS.iter().find(|p| p.plugin == plugin) {
                found
                    .plugins
                    .push(self.plugin_mysql(&plugin, known.prefix)?);
                continue;
            }
            if plugin == "forum" {
                found.notes.push(
                    "plugin forum keeps its MySQL tables in Open edX's own database \
                     (OPENEDX_MYSQL_DATABASE), which is copied with it; it has no MySQL user of \
                     its own"
                        .to_owned(),
                );
                continue;
            }
            // A plugin offload does not know: settings named after it that config.yml holds.
            let stem = plugin.to_ascii_uppercase().replace('-', "_");
            let mut prefixes: Vec<String> = self
                .file
                .keys()
                .filter_map(|k| k.as_str())
                .filter_map(|k| k.strip_suffix("_MYSQL_PASSWORD"))
                .filter(|p| *p == stem || p.starts_with(&format!("{stem}_")))
                .map(str::to_owned)
                .collect();
            prefixes.sort();
            prefixes.dedup();
            for prefix in prefixes {
                let database = format!("{prefix}_MYSQL_DATABASE");
                let username = format!("{prefix}_MYSQL_USERNAME");
                if self.is_set_in_file(&database) && self.is_set_in_file(&username) {
                    found.plugins.push(self.plugin_mysql(&plugin, &prefix)?);
                } else {
                    found.notes.push(format!(
                        "plugin {plugin} sets {prefix}_MYSQL_PASSWORD, but offload does not know \
                         its default database and user: write them into config.yml with `tutor \
                         config save --set {database}=\"$(tutor config printvalue {database})\" \
                         --set {username}=\"$(tutor config printvalue {username})\"` and plan \
                         again, so that offload can check, copy and create them"
                    ));
                }
            }
        }
        Ok(found)
    }

    fn plugin_mysql(&self, plugin: &str, prefix: &str) -> Result<PluginMysql, TutorError> {
        let text = |what: &str| -> Result<String, TutorError> {
            let key = format!("{prefix}_MYSQL_{what}");
            let value = self.get_str(&key).ok_or_else(|| TutorError::Value {
                key: key.clone(),
                reason: format!(
                    "the {plugin} plugin is enabled but this setting is not text; set it with \
                     `tutor config save --set {key}=NAME`"
                ),
            })?;
            check_name(&key, &value, what == "DATABASE")?;
            Ok(value)
        };
        Ok(PluginMysql {
            plugin: plugin.to_owned(),
            prefix: prefix.to_owned(),
            database: text("DATABASE")?,
            username: text("USERNAME")?,
            password: self
                .get_str(&format!("{prefix}_MYSQL_PASSWORD"))
                .filter(|p| !p.is_empty()),
        })
    }
}

/// A database or user name as the plugins' init tasks use it: unquoted in SQL (databases) or in
/// single quotes inside a double-quoted shell word (users).
fn check_name(key: &str, value: &str, database: bool) -> Result<(), TutorError> {
    let invalid = |reason: &str| TutorError::Value {
        key: key.to_owned(),
        reason: format!("{reason}; fix it with `tutor config save --set {key}=NAME`"),
    };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if database {
        if value.len() > 64 {
            return Err(invalid("a MySQL database name has at most 64 characters"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        {
            return Err(invalid(
                "a database name here must be letters, digits, _ and $ (the plugin's init \
                 task writes it into SQL unquoted)",
            ));
        }
    } else {
        if value.chars().count() > 32 {
            return Err(invalid("a MySQL 8 user name has at most 32 characters"));
        }
        if value.contains(|c: char| "'\"\\`$".contains(c) || c.is_control()) {
            return Err(invalid(
                "a user name here must not hold quotes, backslashes, backticks, dollar signs \
                 or control characters (the plugin's init task writes it into shell and SQL \
                 unescaped)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str, env: &[(&str, &str)]) -> (tempfile::TempDir, TutorConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(super::super::CONFIG_FILENAME), text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = TutorConfig::load_with_env(dir.path(), env).unwrap();
        (dir, cfg)
    }

    #[test]
    fn enabled_plugins_take_their_defaults_and_overrides() {
        let (_d, cfg) = config(
            "PLUGINS:\n- discovery\n- jupyter\n- forum\nDISCOVERY_MYSQL_PASSWORD: d1sc\n\
             NOTES_MYSQL_PASSWORD: left-over\nJUPYTER_HUB_MYSQL_DATABASE: hub\n",
            &[("TUTOR_DISCOVERY_MYSQL_USERNAME", "disco")],
        );
        let found = cfg.mysql_plugins().unwrap();
        assert_eq!(
            found.plugins,
            vec![
                PluginMysql {
                    plugin: "discovery".into(),
                    prefix: "DISCOVERY".into(),
                    database: "discovery".into(),
                    username: "disco".into(),
                    password: Some("d1sc".into()),
                },
                PluginMysql {
                    plugin: "jupyter".into(),
                    prefix: "JUPYTER_HUB".into(),
                    database: "hub".into(),
                    username: "jupyterhub".into(),
                    password: None,
                },
            ],
            "notes is not enabled, so its left-over password does not count"
        );
        assert!(found.notes.iter().any(|n| n.contains("plugin forum")));
        assert_eq!(
            cfg.get_str("DISCOVERY_MYSQL_DATABASE").as_deref(),
            Some("discovery")
        );
        assert_eq!(cfg.get("NOTES_MYSQL_DATABASE"), None, "not enabled");
        assert!(!format!("{found:?}").contains("d1sc"));
    }

    #[test]
    fn an_unknown_plugin_counts_only_with_its_names_in_config_yml() {
        let (_d, cfg) = config(
            "PLUGINS:\n- my-lti\n- wiki\nMY_LTI_STORE_MYSQL_PASSWORD: p\n\
             MY_LTI_STORE_MYSQL_DATABASE: lti\nMY_LTI_STORE_MYSQL_USERNAME: lti_user\n\
             WIKI_MYSQL_PASSWORD: w\n",
            &[],
        );
        let found = cfg.mysql_plugins().unwrap();
        assert_eq!(found.plugins.len(), 1);
        assert_eq!(found.plugins[0].plugin, "my-lti");
        assert_eq!(found.plugins[0].prefix, "MY_LTI_STORE");
        assert_eq!(found.plugins[0].database, "lti");
        assert!(
            found.notes.iter().any(|n| n.contains("WIKI_MYSQL_DATABASE")
                && n.contains("tutor config printvalue")),
            "{:?}",
            found.notes
        );
    }

    #[test]
    fn a_name_the_init_task_would_break_is_refused_with_its_key() {
        for (text, key) in [
            (
                "PLUGINS: [notes]\nNOTES_MYSQL_DATABASE: 'no-tes'\n",
                "NOTES_MYSQL_DATABASE",
            ),
            (
                "PLUGINS: [notes]\nNOTES_MYSQL_USERNAME: \"it's\"\n",
                "NOTES_MYSQL_USERNAME",
            ),
            (
                "PLUGINS: [notes]\nNOTES_MYSQL_DATABASE: ''\n",
                "NOTES_MYSQL_DATABASE",
            ),
            (
                "PLUGINS: [notes]\nNOTES_MYSQL_USERNAME: [a]\n",
                "NOTES_MYSQL_USERNAME",
            ),
        ] {
            let (_d, cfg) = config(text, &[]);
            let err = cfg.mysql_plugins().map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(err.contains("tutor config save --set"), "{err}");
        }
        // A number is text to Tutor's templates: accepted.
        let (_d, cfg) = config("PLUGINS: [notes]\nNOTES_MYSQL_USERNAME: 123\n", &[]);
        assert_eq!(cfg.mysql_plugins().unwrap().plugins[0].username, "123");
    }
}
