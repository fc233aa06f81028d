//! The MySQL store's settings: its flags, and its source and target resolved from them, Tutor's
//! config.yml (`MYSQL_*`, with Tutor's defaults), the environment, password files and a job's
//! record; the enabled Tutor plugins' own databases and users; plus what the job records to find
//! them again (never a password).

use std::path::PathBuf;

use serde_json::json;

use super::{AppUser, MysqlEndpoint, MysqlOptions, PluginDatabase, TlsMode};
use crate::core::Side;
use crate::resolve::{
    config_host, config_port, config_text, invalid, resolve_side, EndpointRecord, ResolveContext,
    SettingsError, SideSpec, StoreEndpoint,
};
use crate::secret::{Secret, SecretSource};
use crate::tutor::{TutorConfig, TutorError};

/// The MySQL flags.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct MysqlArgs {
    /// Source MySQL, overriding what config.yml says:
    /// mysql://user[:password]@host:port[?ssl-mode=MODE&ssl-ca=FILE].
    /// The password may instead come from OFFLOAD_FROM_MYSQL_PASSWORD or --from-mysql-password-file.
    #[arg(long, value_name = "URL")]
    pub from_mysql: Option<String>,

    /// File whose first line is the source MySQL password.
    #[arg(long, value_name = "FILE")]
    pub from_mysql_password_file: Option<PathBuf>,

    /// Target MySQL: mysql://user[:password]@host:port[?ssl-mode=MODE&ssl-ca=FILE] (MODE as MySQL
    /// defines it: disabled, preferred, required, verify_ca, verify_identity). The password may
    /// instead come from OFFLOAD_TO_MYSQL_PASSWORD or --to-mysql-password-file.
    #[arg(long, value_name = "URL")]
    pub to_mysql: Option<String>,

    /// File whose first line is the target MySQL password.
    #[arg(long, value_name = "FILE")]
    pub to_mysql_password_file: Option<PathBuf>,

    /// MySQL databases to copy, comma-separated [default: every non-system database].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub databases: Vec<String>,

    /// MySQL databases to leave out, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub exclude: Vec<String>,

    /// Tables larger than this many bytes (with an integer key) are split into key ranges that
    /// copy and verify in parallel.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub split_bytes: u64,
}

/// The MySQL part of the settings.
#[derive(Debug, Clone)]
pub struct MysqlSettings {
    pub source: MysqlEndpoint,
    pub source_secret: SecretSource,
    pub target: MysqlEndpoint,
    pub target_secret: SecretSource,
    pub options: MysqlOptions,
}

impl StoreEndpoint for MysqlEndpoint {
    const STORE: &'static str = "MySQL";
    const NAME: &'static str = "mysql";
    fn parse_url(url: &str) -> Result<Self, String> {
        MysqlEndpoint::parse(url)
    }
    fn password_slot(&mut self) -> Option<&mut Option<Secret>> {
        Some(&mut self.password)
    }
}

/// The source MySQL as Tutor's config.yml describes it (`MYSQL_*`, with Tutor's defaults), without
/// its password. A value that is set but invalid (a port out of range, an empty host) is an error
/// naming the key and the value.
pub fn from_tutor(cfg: &TutorConfig) -> Result<MysqlEndpoint, SettingsError> {
    let user = config_text(cfg, "MYSQL_ROOT_USERNAME").unwrap_or_else(|| "root".into());
    if user.is_empty() {
        return Err(invalid(
            "config.yml MYSQL_ROOT_USERNAME",
            "is empty; fix it in config.yml or pass --from-mysql URL",
        ));
    }
    let host = config_host(cfg, "MYSQL_HOST", "mysql", "--from-mysql")?;
    Ok(MysqlEndpoint {
        tls: TlsMode::default_for(&host),
        host,
        port: config_port(cfg, "MYSQL_PORT", 3306, "--from-mysql")?,
        user,
        password: None,
        ca_file: None,
    })
}

/// The source: the flag, else the job's record, else config.yml; with its password.
pub fn resolve_source(
    args: &MysqlArgs,
    ctx: &ResolveContext,
    recorded: Option<&serde_json::Value>,
) -> Result<(MysqlEndpoint, SecretSource), SettingsError> {
    resolve_side(
        SideSpec {
            side: Side::Source,
            url: args.from_mysql.clone(),
            password_file: args.from_mysql_password_file.clone(),
            tutor_password: ctx.tutor.map(|t| (t, "MYSQL_ROOT_PASSWORD")),
            from_config: ctx.tutor.map(from_tutor),
        },
        recorded,
        ctx.tutor,
    )
}

/// The target: the flag or the targets file, else the job's record; with its password.
pub fn resolve_target(
    args: &MysqlArgs,
    ctx: &ResolveContext,
    recorded: Option<&serde_json::Value>,
) -> Result<(MysqlEndpoint, SecretSource), SettingsError> {
    resolve_side::<MysqlEndpoint>(
        SideSpec {
            side: Side::Target,
            url: args.to_mysql.clone().or_else(|| ctx.targets.mysql.clone()),
            password_file: args
                .to_mysql_password_file
                .clone()
                .or_else(|| ctx.targets.mysql_password_file.clone()),
            tutor_password: None,
            from_config: None,
        },
        recorded,
        ctx.tutor,
    )
}

/// Resolve both ends and the options; `recorded` is the MySQL part of a job's record.
pub fn resolve(
    args: &MysqlArgs,
    ctx: &ResolveContext,
    recorded: Option<&serde_json::Value>,
) -> Result<MysqlSettings, SettingsError> {
    let (source, source_secret) = resolve_source(args, ctx, recorded)?;
    let (target, target_secret) = resolve_target(args, ctx, recorded)?;

    let recorded_list = |key: &str| -> Vec<String> {
        recorded
            .and_then(|r| r.get(key))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    let databases = if args.databases.is_empty() {
        recorded_list("databases")
    } else {
        args.databases.clone()
    };
    let exclude = if args.exclude.is_empty() {
        recorded_list("exclude")
    } else {
        args.exclude.clone()
    };

    let plugins = match ctx.tutor {
        Some(cfg) => tutor_plugins(cfg, ctx.create_users)?,
        None => TutorPlugins::default(),
    };
    let mut create_users = Vec::new();
    if ctx.create_users {
        let cfg = ctx.tutor.ok_or_else(|| invalid("--create-users", "needs Tutor's config.yml for OPENEDX_MYSQL_USERNAME and its password; pass --tutor-root"))?;
        let name = config_text(cfg, "OPENEDX_MYSQL_USERNAME").unwrap_or_else(|| "openedx".into());
        let password = config_text(cfg, "OPENEDX_MYSQL_PASSWORD").ok_or_else(|| {
            invalid(
                "--create-users",
                "config.yml has no OPENEDX_MYSQL_PASSWORD; run `tutor config save` first",
            )
        })?;
        let database =
            config_text(cfg, "OPENEDX_MYSQL_DATABASE").unwrap_or_else(|| "openedx".into());
        create_users.push(AppUser {
            name,
            password: Secret::new(password),
            database,
        });
        create_users.extend(plugins.users);
    }
    Ok(MysqlSettings {
        source,
        source_secret,
        target,
        target_secret,
        options: MysqlOptions {
            databases,
            exclude,
            create_users,
            plugins: plugins.databases,
            plugin_notes: plugins.notes,
            batch_rows: ctx.batch_rows,
            split_bytes: args.split_bytes.max(1),
            ..MysqlOptions::default()
        },
    })
}

/// What config.yml says of the enabled Tutor plugins with a MySQL database of their own.
#[derive(Default)]
struct TutorPlugins {
    databases: Vec<PluginDatabase>,
    /// On the other plugins (no database of their own, or one offload cannot name).
    notes: Vec<String>,
    /// Their users to create on the target (`--create-users`).
    users: Vec<AppUser>,
}

/// The enabled Tutor plugins' own databases, notes on the other plugins, and (when `with_users`)
/// the plugins' users to create on the target, from config.yml.
fn tutor_plugins(cfg: &TutorConfig, with_users: bool) -> Result<TutorPlugins, SettingsError> {
    let found = cfg.mysql_plugins().map_err(|e| match e {
        TutorError::Value { key, reason } => invalid(format!("config.yml {key}"), reason),
        other => invalid("config.yml", other.to_string()),
    })?;
    let databases = found
        .plugins
        .iter()
        .map(|p| PluginDatabase {
            plugin: p.plugin.clone(),
            database: p.database.clone(),
            user: p.username.clone(),
        })
        .collect();
    let mut users = Vec::new();
    if with_users {
        for p in &found.plugins {
            let password = p.password.as_ref().ok_or_else(|| {
                invalid(
                    "--create-users",
                    format!(
                        "config.yml has no {} for the enabled {} plugin; run `tutor config \
                         save` first",
                        p.key("PASSWORD"),
                        p.plugin
                    ),
                )
            })?;
            users.push(AppUser {
                name: p.username.clone(),
                password: Secret::new(password.clone()),
                database: p.database.clone(),
            });
        }
    }
    Ok(TutorPlugins {
        databases,
        notes: found.notes,
        users,
    })
}

impl MysqlSettings {
    /// The sides whose certificate the ssl-mode leaves unverified or partly verified.
    pub fn tls_warnings(&self) -> Vec<(Side, String)> {
        [(Side::Source, &self.source), (Side::Target, &self.target)]
            .into_iter()
            .filter_map(|(side, e)| e.tls_warning().map(|w| (side, w)))
            .collect()
    }

    /// What the job records to reconnect later: URLs without passwords, where each password
    /// comes from, and the selection.
    pub fn record(&self) -> serde_json::Value {
        json!({
            "source": EndpointRecord { url: self.source.public_url(), secret: self.source_secret.clone() },
            "target": EndpointRecord { url: self.target.public_url(), secret: self.target_secret.clone() },
            "databases": self.options.databases,
            "exclude": self.options.exclude,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::TargetsFile;

    use crate::resolve::test_support::config as tutor;

    fn context<'a>(cfg: &'a TutorConfig, targets: &'a TargetsFile) -> ResolveContext<'a> {
        ResolveContext {
            tutor: Some(cfg),
            tutor_root: cfg.root(),
            tutor_root_flag: true,
            targets,
            batch_rows: None,
            create_users: false,
            deep: false,
        }
    }

    #[test]
    fn an_invalid_config_value_is_an_error_only_when_the_source_comes_from_it() {
        let (_d, cfg) = tutor("MYSQL_HOST: db\nMYSQL_PORT: 433060\n");
        let targets = TargetsFile::default();
        let ctx = context(&cfg, &targets);
        let args = MysqlArgs {
            to_mysql: Some("mysql://root@t:3306".into()),
            ..MysqlArgs::default()
        };
        let err = resolve(&args, &ctx, None).unwrap_err().to_string();
        assert!(
            err.contains("MYSQL_PORT") && err.contains("433060"),
            "{err}"
        );
        let args = MysqlArgs {
            from_mysql: Some("mysql://root@s:3306".into()),
            ..args
        };
        assert_eq!(resolve(&args, &ctx, None).unwrap().source.host, "s");

        let (_d, cfg) = tutor("MYSQL_HOST: ''\n");
        let err = from_tutor(&cfg).unwrap_err().to_string();
        assert!(err.contains("MYSQL_HOST"), "{err}");
        let (_d, cfg) = tutor("PLUGINS: []\n");
        let e = from_tutor(&cfg).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("mysql", 3306));
    }

    #[test]
    fn a_recorded_user_with_reserved_characters_comes_back() {
        let (_d, cfg) = tutor("MYSQL_HOST: db\n");
        let targets = TargetsFile::default();
        let ctx = context(&cfg, &targets);
        let args = MysqlArgs {
            from_mysql: Some("mysql://src%3Aadm@s:3306".into()),
            to_mysql: Some("mysql://tgt%3Aadm%40x%2Fy%25z@t:3307".into()),
            ..MysqlArgs::default()
        };
        let settings = resolve(&args, &ctx, None).unwrap();
        assert_eq!(settings.target.user, "tgt:adm@x/y%z");
        let record = settings.record();
        let again = resolve(&MysqlArgs::default(), &ctx, Some(&record)).unwrap();
        assert_eq!(again.source, settings.source);
        assert_eq!(again.target, settings.target);
    }
}
