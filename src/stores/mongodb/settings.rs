//! The MongoDB store's settings: its flags, and its source and target resolved from them, Tutor's
//! config.yml (`MONGODB_*`, with Tutor's defaults), the environment, password files and a job's
//! record; the database selection and copy options; what the job records (never a password).

use std::path::PathBuf;

use serde_json::json;

use super::{MongoEndpoint, MongoOptions};
use crate::core::Side;
use crate::resolve::{
    check_host, config_port, config_text, invalid, resolve_side, EndpointRecord, ResolveContext,
    SettingsError, SideSpec, StoreEndpoint,
};
use crate::secret::{Secret, SecretSource};
use crate::tutor::TutorConfig;

/// The MongoDB flags.
#[derive(Debug, clap::Args, Clone)]
pub struct MongoArgs {
    /// Source MongoDB, overriding what config.yml says (MONGODB_HOST, MONGODB_PORT, MONGODB_USERNAME,
    /// MONGODB_AUTH_SOURCE, MONGODB_USE_SSL, MONGODB_REPLICA_SET...):
    /// mongodb://user[:password]@host:port/?authSource=admin, or mongodb+srv://user@name. The
    /// password may instead come from OFFLOAD_FROM_MONGODB_PASSWORD or --from-mongodb-password-file.
    #[arg(long, value_name = "URI")]
    pub from_mongodb: Option<String>,

    /// File whose first line is the source MongoDB password.
    #[arg(long, value_name = "FILE")]
    pub from_mongodb_password_file: Option<PathBuf>,

    /// Target MongoDB: mongodb://user[:password]@host:port/?authSource=admin[&tls=true], or
    /// mongodb+srv://user@name. The password may instead come from OFFLOAD_TO_MONGODB_PASSWORD or
    /// --to-mongodb-password-file.
    #[arg(long, value_name = "URI")]
    pub to_mongodb: Option<String>,

    /// File whose first line is the target MongoDB password.
    #[arg(long, value_name = "FILE")]
    pub to_mongodb_password_file: Option<PathBuf>,

    /// MongoDB databases to copy, comma-separated [default: MONGODB_DATABASE (openedx), plus the
    /// forum's cs_comments_service when the source has it].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub mongodb_databases: Vec<String>,

    /// MongoDB databases to leave out, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub mongodb_exclude: Vec<String>,

    /// Read the whole source MongoDB at one point in time (snapshot read concern at one cluster
    /// time). Needs a replica set (a one-node one will do) and a copy shorter than the source's
    /// minSnapshotHistoryWindowInSeconds. Without it, stop the platform's writers for an exact copy.
    #[arg(long)]
    pub mongodb_snapshot: bool,

    /// MongoDB collections larger than this many bytes are split into `_id` ranges that copy and
    /// verify in parallel (each range costs the source one query, and its bounds one pass over the
    /// `_id`s at plan time).
    #[arg(long, default_value_t = 1024 * 1024 * 1024, value_name = "BYTES")]
    pub mongodb_split_bytes: u64,

    /// How long the plan waits for a MongoDB source to size one collection (`collStats`, which
    /// `mongod` answers from metadata and some servers only by scanning the collection). A
    /// collection not sized in time is copied whole, never split, and counted as it copies.
    /// 0 waits as long as it takes.
    #[arg(long, default_value = "2", value_name = "SECONDS", value_parser = seconds)]
    pub mongodb_size_timeout: std::time::Duration,

    /// Bytes of documents the copy may hold ahead of the target MongoDB, shared by all the
    /// collections it reads at once: the target keeps inserting while the source is busy, for
    /// example computing the next collection's result. At least one insert's worth (4 MiB) is
    /// always held.
    #[arg(long, default_value_t = 128 * 1024 * 1024, value_name = "BYTES")]
    pub mongodb_read_ahead: u64,
}

impl Default for MongoArgs {
    fn default() -> Self {
        let options = MongoOptions::default();
        MongoArgs {
            from_mongodb: None,
            from_mongodb_password_file: None,
            to_mongodb: None,
            to_mongodb_password_file: None,
            mongodb_databases: Vec::new(),
            mongodb_exclude: Vec::new(),
            mongodb_snapshot: false,
            mongodb_split_bytes: options.split_bytes,
            mongodb_size_timeout: options.size_timeout,
            mongodb_read_ahead: options.read_ahead_bytes,
        }
    }
}

/// A number of seconds, fractions allowed (`2`, `0.5`), at most a day.
fn seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Ok(std::time::Duration::from_secs_f64(s)),
        _ => Err(format!(
            "`{text}` is not a number of seconds from 0 to 86400 (e.g. 2 or 0.5)"
        )),
    }
}

/// The MongoDB part of the settings.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub source: MongoEndpoint,
    pub source_secret: SecretSource,
    pub target: MongoEndpoint,
    pub target_secret: SecretSource,
    pub options: MongoOptions,
}

impl StoreEndpoint for MongoEndpoint {
    const STORE: &'static str = "MongoDB";
    const NAME: &'static str = "mongodb";
    fn parse_url(url: &str) -> Result<Self, String> {
        MongoEndpoint::parse(url)
    }
    fn password_slot(&mut self) -> Option<&mut Option<Secret>> {
        self.user.is_some().then_some(&mut self.password)
    }
}

/// The source MongoDB as Tutor's config.yml describes it (`MONGODB_*`, with Tutor's defaults).
/// A value that is set but invalid (a port out of range, an empty host) is an error naming the
/// key and the value.
pub fn from_tutor(cfg: &TutorConfig) -> Result<MongoEndpoint, SettingsError> {
    let text = |k: &str| config_text(cfg, k).filter(|v| !v.is_empty());
    let host = text("MONGODB_HOST").unwrap_or_else(|| "mongodb".into());
    // As Tutor's templates take it: one host, a list of hosts on MONGODB_PORT, or an SRV name.
    let (srv, list) = match host.strip_prefix("mongodb+srv://") {
        Some(name) => (true, name.to_string()),
        None => (false, host.clone()),
    };
    let bad = |d: String| {
        invalid(
            "config.yml MONGODB_HOST",
            format!("{d}; fix it in config.yml or pass --from-mongodb URI"),
        )
    };
    let unbracket = |h: &str| {
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::to_owned)
            .unwrap_or_else(|| h.to_owned())
    };
    for one in list.split(',') {
        check_host(&unbracket(one.trim())).map_err(bad)?;
    }
    if srv && list.contains(',') {
        return Err(bad(format!(
            "`{host}` names several hosts, and a mongodb+srv:// name is one DNS name"
        )));
    }
    let port = config_port(cfg, "MONGODB_PORT", 27017, "--from-mongodb")?;
    let hosts = if srv {
        list
    } else {
        list.split(',')
            .map(|h| {
                let h = unbracket(h.trim());
                if h.contains(':') {
                    format!("[{h}]:{port}")
                } else {
                    format!("{h}:{port}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut e = MongoEndpoint {
        srv,
        user: text("MONGODB_USERNAME"),
        password: None,
        hosts,
        path_db: None,
        options: Vec::new(),
    };
    if e.user.is_some() {
        let source = text("MONGODB_AUTH_SOURCE").unwrap_or_else(|| "admin".into());
        e.set_option("authSource", &source);
        if let Some(m) = text("MONGODB_AUTH_MECHANISM") {
            e.set_option("authMechanism", &m);
        }
    }
    if cfg.get_bool("MONGODB_USE_SSL") == Some(true) {
        e.set_option("tls", "true");
    }
    if let Some(rs) = text("MONGODB_REPLICA_SET") {
        e.set_option("replicaSet", &rs);
    }
    Ok(e)
}

/// The source: the flag, else the job's record, else config.yml with Tutor's defaults; with its
/// password.
pub fn resolve_source(
    args: &MongoArgs,
    ctx: &ResolveContext,
    recorded: Option<&serde_json::Value>,
) -> Result<(MongoEndpoint, SecretSource), SettingsError> {
    resolve_side(
        SideSpec {
            side: Side::Source,
            url: args.from_mongodb.clone(),
            password_file: args.from_mongodb_password_file.clone(),
            tutor_password: ctx.tutor.map(|t| (t, "MONGODB_PASSWORD")),
            from_config: ctx.tutor.map(from_tutor),
        },
        recorded,
        ctx.tutor,
    )
}

/// The target: the flag or the targets file, else the job's record; with its password.
pub fn resolve_target(
    args: &MongoArgs,
    ctx: &ResolveContext,
    recorded: Option<&serde_json::Value>,
) -> Result<(MongoEndpoint, SecretSource), SettingsError> {
    resolve_side::<MongoEndpoint>(
        SideSpec {
            side: Side::Target,
            url: args
                .to_mongodb
                .clone()
                .or_else(|| ctx.targets.mongodb.clone()),
            password_file: args
                .to_mongodb_password_file
                .clone()
                .or_else(|| ctx.targets.mongodb_password_file.clone()),
            tutor_password: None,
            from_config: None,
        },
        recorded,
        ctx.tutor,
    )
}

/// Resolve both ends, the databases and the options; `recorded` is the MongoDB part of a job's
/// record.
pub fn resolve(
    args: &MongoArgs,
    ctx: &ResolveContext,
    recorded: Option<&serde_json::Value>,
) -> Result<MongoSettings, SettingsError> {
    let tutor = ctx.tutor;
    let (source, source_secret) = resolve_source(args, ctx, recorded)?;
    let (target, target_secret) = resolve_target(args, ctx, recorded)?;

    let recorded_list = |key: &str| -> Option<Vec<String>> {
        recorded
            .and_then(|r| r.get(key))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    };
    let databases = if args.mongodb_databases.is_empty() {
        recorded_list("databases").unwrap_or_default()
    } else {
        args.mongodb_databases.clone()
    };
    let exclude = if args.mongodb_exclude.is_empty() {
        recorded_list("exclude").unwrap_or_default()
    } else {
        args.mongodb_exclude.clone()
    };
    let platform = tutor
        .and_then(|c| config_text(c, "MONGODB_DATABASE"))
        .filter(|d| !d.is_empty())
        .map(|d| vec![d])
        .or_else(|| recorded_list("platform_databases"))
        .unwrap_or_else(|| vec!["openedx".into()]);
    let forum = tutor
        .and_then(|c| config_text(c, "FORUM_MONGODB_DATABASE"))
        .filter(|d| !d.is_empty())
        .map(|d| vec![d])
        .or_else(|| recorded_list("optional_databases"))
        .unwrap_or_else(|| vec!["cs_comments_service".into()]);
    let snapshot = args.mongodb_snapshot
        || recorded
            .and_then(|r| r.get("snapshot"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
    Ok(MongoSettings {
        source,
        source_secret,
        target,
        target_secret,
        options: MongoOptions {
            databases,
            exclude,
            platform_databases: platform,
            optional_databases: forum,
            batch_docs: ctx.batch_rows,
            split_bytes: args.mongodb_split_bytes.max(1),
            size_timeout: args.mongodb_size_timeout,
            snapshot,
            read_ahead_bytes: args.mongodb_read_ahead,
            ..MongoOptions::default()
        },
    })
}

impl MongoSettings {
    /// The sides whose certificate `tlsAllowInvalidCertificates` / `tlsInsecure` leaves
    /// unverified.
    pub fn tls_warnings(&self) -> Vec<(Side, String)> {
        [(Side::Source, &self.source), (Side::Target, &self.target)]
            .into_iter()
            .filter_map(|(side, e)| e.tls_warning().map(|w| (side, w)))
            .collect()
    }

    /// What the job records to reconnect later: URIs without passwords, where each password
    /// comes from, and the selection.
    pub fn record(&self) -> serde_json::Value {
        json!({
            "source": EndpointRecord { url: self.source.public_url(), secret: self.source_secret.clone() },
            "target": EndpointRecord { url: self.target.public_url(), secret: self.target_secret.clone() },
            "databases": self.options.databases,
            "exclude": self.options.exclude,
            "platform_databases": self.options.platform_databases,
            "optional_databases": self.options.optional_databases,
            "snapshot": self.options.snapshot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_port_or_host_in_config_is_an_error_naming_it() {
        let tutor = |text: &str| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("config.yml"), text).unwrap();
            TutorConfig::load_with_env(dir.path(), std::iter::empty()).unwrap()
        };
        let err = from_tutor(&tutor("MONGODB_PORT: 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MONGODB_PORT") && err.contains('0'), "{err}");
        let err = from_tutor(&tutor("MONGODB_HOST: a/b\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MONGODB_HOST") && err.contains("a/b"), "{err}");
        let e = from_tutor(&tutor("MONGODB_HOST: m1\nMONGODB_PORT: 27018\n")).unwrap();
        assert_eq!(e.hosts, "m1:27018");
        assert_eq!(
            from_tutor(&tutor("PLUGINS: []\n")).unwrap().hosts,
            "mongodb:27017"
        );
        // The forms cutover writes for several hosts and SRV names read back as they were.
        let e = from_tutor(&tutor(
            "MONGODB_HOST: m1,m2,[fd00::5]\nMONGODB_PORT: 27018\n",
        ))
        .unwrap();
        assert_eq!(e.hosts, "m1:27018,m2:27018,[fd00::5]:27018");
        assert!(!e.srv);
        let e = from_tutor(&tutor(
            "MONGODB_HOST: mongodb+srv://cluster0.example.net\nMONGODB_USE_SSL: true\n",
        ))
        .unwrap();
        assert_eq!((e.srv, e.hosts.as_str()), (true, "cluster0.example.net"));
        assert!(e.tls());
    }
}
