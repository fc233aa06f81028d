//! The stores offload can copy, one folder each, and the one registry from a store kind to its
//! implementation. A store implements [`crate::core::Store`] (it lists units, prepares the target,
//! copies one batch after a cursor and digests key ranges) and resolves its own settings (its
//! `settings` module: flags, config.yml, environment, a job's record).
//!
//! To add a store: a folder with its `Store` implementation and `settings.rs`, a [`StoreKind`],
//! a variant here and a line in each match below, and its flags flattened into `cli::JobArgs`.

pub mod mongodb;
pub mod mysql;
pub mod objects;
pub mod redis;

use std::sync::Arc;

use crate::core::plan::TlsWarning;
use crate::core::{Store, StoreKind};
use crate::resolve::{ResolveContext, SettingsError, TargetsFile};

/// Every copy store's flags, as the command line gives them.
#[derive(Debug, Clone, Default)]
pub struct StoreArgs {
    pub mysql: mysql::settings::MysqlArgs,
    pub mongodb: mongodb::settings::MongoArgs,
    pub redis: redis::settings::RedisArgs,
    pub objects: objects::ObjectsArgs,
}

/// One copy store's resolved settings.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    Mysql(mysql::settings::MysqlSettings),
    Mongodb(mongodb::settings::MongoSettings),
    Redis(redis::settings::RedisSettings),
    Objects(objects::ObjectsSettings),
}

/// The stores that copy data (Meilisearch is rebuilt, not copied), in the order a job opens,
/// plans and records them.
pub const COPY_STORES: [StoreKind; 4] = [
    StoreKind::Mysql,
    StoreKind::Redis,
    StoreKind::Mongodb,
    StoreKind::Objects,
];

impl StoreArgs {
    /// The URLs this store's flags give for its source and its target (`--from-*`, `--to-*`).
    fn urls(&self, kind: StoreKind) -> (Option<&str>, Option<&str>) {
        match kind {
            StoreKind::Mysql => (
                self.mysql.from_mysql.as_deref(),
                self.mysql.to_mysql.as_deref(),
            ),
            StoreKind::Mongodb => (
                self.mongodb.from_mongodb.as_deref(),
                self.mongodb.to_mongodb.as_deref(),
            ),
            StoreKind::Redis => (
                self.redis.from_redis.as_deref(),
                self.redis.to_redis.as_deref(),
            ),
            StoreKind::Objects => (
                self.objects.from_s3.as_deref(),
                self.objects.to_s3.as_deref(),
            ),
            StoreKind::Meilisearch => (None, None),
        }
    }

    /// Whether the flags name an endpoint of this store.
    pub fn names_endpoint(&self, kind: StoreKind) -> bool {
        let (from, to) = self.urls(kind);
        from.is_some() || to.is_some()
    }

    /// Whether the flags or the targets file name a target for this store.
    pub fn has_target(&self, kind: StoreKind, targets: &TargetsFile) -> bool {
        self.urls(kind).1.is_some() || targets.target(kind).is_some()
    }
}

impl StoreSettings {
    /// Resolve one copy store's settings; `recorded` is its part of a job's record.
    pub fn resolve(
        kind: StoreKind,
        args: &StoreArgs,
        ctx: &ResolveContext,
        recorded: Option<&serde_json::Value>,
    ) -> Result<StoreSettings, SettingsError> {
        Ok(match kind {
            StoreKind::Mysql => {
                StoreSettings::Mysql(mysql::settings::resolve(&args.mysql, ctx, recorded)?)
            }
            StoreKind::Mongodb => {
                StoreSettings::Mongodb(mongodb::settings::resolve(&args.mongodb, ctx, recorded)?)
            }
            StoreKind::Redis => {
                StoreSettings::Redis(redis::settings::resolve(&args.redis, ctx, recorded)?)
            }
            StoreKind::Objects => {
                StoreSettings::Objects(objects::settings::resolve(&args.objects, ctx, recorded)?)
            }
            StoreKind::Meilisearch => {
                return Err(SettingsError::NotAvailable {
                    store: kind.to_string(),
                })
            }
        })
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            StoreSettings::Mysql(_) => StoreKind::Mysql,
            StoreSettings::Mongodb(_) => StoreKind::Mongodb,
            StoreSettings::Redis(_) => StoreKind::Redis,
            StoreSettings::Objects(_) => StoreKind::Objects,
        }
    }

    /// The store these settings describe, ready to work; `parallel` is the job's concurrency.
    pub fn open(&self, parallel: usize) -> Arc<dyn Store> {
        match self {
            StoreSettings::Mysql(m) => Arc::new(mysql::MysqlStore::new(
                m.source.clone(),
                m.target.clone(),
                m.options.clone(),
                parallel,
            )),
            StoreSettings::Mongodb(m) => Arc::new(mongodb::MongoStore::new(
                m.source.clone(),
                m.target.clone(),
                m.options.clone(),
                parallel,
            )),
            StoreSettings::Redis(r) => Arc::new(redis::RedisStore::new(
                r.source.clone(),
                r.target.clone(),
                r.options.clone(),
            )),
            StoreSettings::Objects(o) => Arc::new(objects::ObjectsStore::new(
                o.source.clone(),
                o.target.clone(),
                o.options.clone(),
            )),
        }
    }

    /// The sides whose server certificate goes unverified or partly verified by an explicit
    /// option (ssl-mode, insecure=, tlsAllowInvalidCertificates=), for the plan's warnings.
    pub fn tls_warnings(&self) -> Vec<TlsWarning> {
        let sides = match self {
            StoreSettings::Mysql(m) => m.tls_warnings(),
            StoreSettings::Mongodb(m) => m.tls_warnings(),
            StoreSettings::Redis(r) => r.tls_warnings(),
            StoreSettings::Objects(_) => Vec::new(),
        };
        sides
            .into_iter()
            .map(|(side, detail)| TlsWarning {
                store: self.kind(),
                side,
                detail,
            })
            .collect()
    }

    /// What the job records to reconnect later (URLs without secrets, where secrets come from).
    pub fn record(&self) -> serde_json::Value {
        match self {
            StoreSettings::Mysql(m) => m.record(),
            StoreSettings::Mongodb(m) => m.record(),
            StoreSettings::Redis(r) => r.record(),
            StoreSettings::Objects(o) => o.record(),
        }
    }
}
