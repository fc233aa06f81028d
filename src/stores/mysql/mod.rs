//! The MySQL store: copies every user database table by table, keyset-chunked by primary key from
//! a consistent snapshot of the source, streamed into `LOAD DATA LOCAL INFILE ... REPLACE` on the
//! target (multi-row `REPLACE` statements where the target refuses LOCAL INFILE), recreates schema
//! objects, and digests key ranges row by row for verification.
//!
//! Tested against MariaDB 10.11 on both sides. MySQL 8 specifics (JSON as a real type,
//! `caching_sha2_password`, `information_schema_stats_expiry`) are handled in code but untested here.

mod copy;
mod digest;
mod endpoint;
mod finish;
mod freeze;
mod inventory;
mod prepare;
mod read;
mod rows;
mod schema;
pub mod settings;
mod shape;
mod survey;
mod values;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mysql_async::prelude::*;
use mysql_async::{Conn, Value};
use serde_json::json;

pub use endpoint::{map_error, MysqlEndpoint, SettledPool, TlsMode, TlsSettled};
use schema::{TableInfo, SYSTEM_DATABASES};

use crate::core::epoch::TargetEpoch;
use crate::core::store::{ShapeDifference, Survey};
use crate::core::{
    BatchOutcome, ChunkDigest, Cursor, EndIdentity, ErrorKind, Identity, IfExists, RowDigest, Side,
    Store, StoreError, StoreKind, Unit,
};
use crate::secret::Secret;

/// The application account to create on the target (`--create-users`).
#[derive(Debug, Clone)]
pub struct AppUser {
    pub name: String,
    pub password: Secret,
    pub database: String,
}

/// An enabled Tutor plugin's own database and user (from config.yml), for the plan to check
/// that the copy takes the database along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDatabase {
    /// The plugin's name, as in `tutor local do init --limit=<plugin>`.
    pub plugin: String,
    pub database: String,
    pub user: String,
}

/// Choices for a MySQL migration.
#[derive(Debug, Clone)]
pub struct MysqlOptions {
    /// Databases to copy; empty means every non-system database.
    pub databases: Vec<String>,
    /// Databases never to copy.
    pub exclude: Vec<String>,
    pub create_users: Vec<AppUser>,
    /// The enabled plugins' databases (discovery, notes, ...), which the copy must include.
    pub plugins: Vec<PluginDatabase>,
    /// What the plan should say about other plugins (no database of their own, or unknown).
    pub plugin_notes: Vec<String>,
    /// Rough size of one batch read from the source.
    pub batch_bytes: u64,
    /// Tables larger than this with an integer key are split into key ranges copied in parallel.
    pub split_bytes: u64,
    /// Size of one multi-row statement sent to the target.
    pub statement_bytes: usize,
    /// Rows per batch, overriding the size-based choice.
    pub batch_rows: Option<u64>,
    /// Write rows with `LOAD DATA LOCAL INFILE` (falls back to REPLACE statements on its own when
    /// the target refuses). Off when the environment has `OFFLOAD_MYSQL_LOCAL_INFILE=off`.
    pub local_infile: bool,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        MysqlOptions {
            databases: Vec::new(),
            exclude: Vec::new(),
            create_users: Vec::new(),
            plugins: Vec::new(),
            plugin_notes: Vec::new(),
            batch_bytes: 8 * 1024 * 1024,
            split_bytes: 64 * 1024 * 1024,
            statement_bytes: 4 * 1024 * 1024,
            batch_rows: None,
            local_infile: !std::env::var("OFFLOAD_MYSQL_LOCAL_INFILE")
                .is_ok_and(|v| ["off", "0", "false"].contains(&v.to_ascii_lowercase().as_str())),
        }
    }
}

/// A MySQL source and target.
pub struct MysqlStore {
    source: MysqlEndpoint,
    target: MysqlEndpoint,
    options: MysqlOptions,
    source_pool: SettledPool,
    target_pool: SettledPool,
    /// Source connections inside one consistent snapshot, shared by this run's batches.
    snapshot: tokio::sync::Mutex<Vec<Conn>>,
    /// How many of this run's batches read inside that snapshot, for the copy's note.
    snapshot_record: Mutex<copy::SnapshotRecord>,
    tables: Mutex<HashMap<(String, String), Arc<TableInfo>>>,
    /// Whether this process set the source read_only (and so must undo it).
    frozen: Mutex<bool>,
    /// Whether rows still go through `LOAD DATA LOCAL INFILE`: cleared, with the reason kept
    /// for the copy summary, when the target refuses it.
    load_data: AtomicBool,
    load_data_refused: Mutex<Option<String>>,
    /// Key ranges of each table copied completely in this run, to see when a table is whole.
    ranges_done: Mutex<HashMap<(String, String), Vec<finish::KeyRange>>>,
    /// Concurrent index builds at the end of the copy (the run's --parallel).
    parallel: usize,
}

const SESSION_COMMON: [&str; 2] = ["SET NAMES utf8mb4", "SET time_zone = '+00:00'"];

impl MysqlStore {
    pub fn new(
        source: MysqlEndpoint,
        target: MysqlEndpoint,
        options: MysqlOptions,
        parallel: usize,
    ) -> MysqlStore {
        let source_setup: Vec<String> = SESSION_COMMON.iter().map(|s| s.to_string()).collect();
        let mut target_setup = source_setup.clone();
        target_setup.extend([
            "SET foreign_key_checks = 0".to_string(),
            "SET unique_checks = 0".to_string(),
            "SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'".to_string(),
        ]);
        let conns = parallel * 2 + 2;
        let load_data = AtomicBool::new(options.local_infile);
        MysqlStore {
            load_data,
            load_data_refused: Mutex::new(None),
            ranges_done: Mutex::new(HashMap::new()),
            parallel,
            source_pool: SettledPool::new(&source, source_setup, conns),
            target_pool: SettledPool::new(&target, target_setup, conns),
            source,
            target,
            options,
            snapshot: tokio::sync::Mutex::new(Vec::new()),
            snapshot_record: Mutex::new(copy::SnapshotRecord::default()),
            tables: Mutex::new(HashMap::new()),
            frozen: Mutex::new(false),
        }
    }

    fn endpoint(&self, side: Side) -> &MysqlEndpoint {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    fn err(&self, side: Side, e: mysql_async::Error) -> StoreError {
        endpoint::map_error(side, &self.endpoint(side).address(), e)
    }

    async fn conn(&self, side: Side) -> Result<Conn, StoreError> {
        let pool = match side {
            Side::Source => &self.source_pool,
            Side::Target => &self.target_pool,
        };
        pool.get_conn().await.map_err(|e| self.err(side, e))
    }

    /// The table's copy plan, read once from the source.
    async fn table(&self, db: &str, table: &str) -> Result<Arc<TableInfo>, StoreError> {
        let key = (db.to_string(), table.to_string());
        if let Some(t) = self.tables.lock().expect("table cache").get(&key) {
            return Ok(t.clone());
        }
        let mut conn = self.conn(Side::Source).await?;
        let info = TableInfo::load(&mut conn, db, table)
            .await
            .map_err(|e| self.err(Side::Source, e))?;
        if info.columns.is_empty() {
            return Err(StoreError::new(
                StoreKind::Mysql,
                self.source.address(),
                ErrorKind::Input,
                format!("table {db}.{table} is gone from the source"),
                "the source changed since the plan; start the job again with --restart",
            ));
        }
        let info = Arc::new(info);
        self.tables
            .lock()
            .expect("table cache")
            .insert(key, info.clone());
        Ok(info)
    }

    async fn databases(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn(Side::Source).await?;
        let all: Vec<String> = conn
            .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME")
            .await
            .map_err(|e| self.err(Side::Source, e))?;
        let chosen: Vec<String> = all
            .into_iter()
            .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
            .filter(|d| self.options.databases.is_empty() || self.options.databases.contains(d))
            .filter(|d| !self.options.exclude.contains(d))
            .collect();
        for wanted in &self.options.databases {
            if !chosen.contains(wanted) && !self.options.exclude.contains(wanted) {
                return Err(StoreError::new(
                    StoreKind::Mysql,
                    self.source.address(),
                    ErrorKind::Input,
                    format!("database `{wanted}` (from --databases) is not on the source"),
                    "check the name, or drop it from --databases",
                ));
            }
        }
        Ok(chosen)
    }

    fn unit_table<'a>(&self, unit: &'a Unit) -> (&'a str, &'a str) {
        (unit.container.as_str(), unit.object.as_str())
    }

    async fn query_strings(
        &self,
        side: Side,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn(side).await?;
        conn.exec(sql, params).await.map_err(|e| self.err(side, e))
    }

    /// The target server process: its host and port, when it started (now minus `Uptime`, read
    /// in one statement; MariaDB has no `server_uuid`, and no server names its process), and
    /// whether a restart keeps what it acknowledged (InnoDB flushes its log at every commit:
    /// `innodb_flush_log_at_trx_commit = 1`).
    async fn target_process(&self) -> Result<TargetEpoch, StoreError> {
        let mut conn = self.conn(Side::Target).await?;
        let err = |e| self.err(Side::Target, e);
        let row: Option<(String, u32, u32)> = conn
            .query_first("SELECT @@hostname, @@port, @@innodb_flush_log_at_trx_commit")
            .await
            .map_err(err)?;
        // MariaDB keeps the status in information_schema, MySQL 8 in performance_schema.
        let mut started_at = None;
        for table in [
            "information_schema.GLOBAL_STATUS",
            "performance_schema.global_status",
        ] {
            let sql = format!(
                "SELECT UNIX_TIMESTAMP() - CAST(VARIABLE_VALUE AS SIGNED) FROM {table} WHERE VARIABLE_NAME = 'Uptime'"
            );
            if let Ok(Some(at)) = conn.query_first::<i64, _>(sql).await {
                started_at = Some(at);
                break;
            }
        }
        let (Some((host, port, flush)), Some(started_at)) = (row, started_at) else {
            return Err(StoreError::new(
                StoreKind::Mysql,
                self.target.address(),
                ErrorKind::Query,
                "the target answered no start time (Uptime in information_schema.GLOBAL_STATUS or performance_schema.global_status)",
                "check that the target's user may read the server status",
            ));
        };
        let keeps_writes = flush == 1;
        Ok(TargetEpoch {
            process: format!("{host}:{port}"),
            started_at: Some(started_at),
            keeps_writes,
            durability: if keeps_writes {
                "InnoDB flushes every commit to disk (innodb_flush_log_at_trx_commit = 1)".into()
            } else {
                format!(
                    "innodb_flush_log_at_trx_commit = {flush}: a crash may lose the last commits"
                )
            },
        })
    }

    fn databases_of(units: &[Unit]) -> BTreeSet<String> {
        units.iter().map(|u| u.container.clone()).collect()
    }

    fn tables_of(units: &[Unit]) -> BTreeSet<(String, String)> {
        units
            .iter()
            .map(|u| (u.container.clone(), u.object.clone()))
            .collect()
    }
}

#[async_trait]
impl Store for MysqlStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Mysql
    }

    fn identity(&self) -> Identity {
        let end = |e: &MysqlEndpoint| EndIdentity::new(e.address()).with("user", json!(e.user));
        Identity::new(end(&self.source), end(&self.target))
            .with("databases", json!(self.options.databases))
            .with("exclude", json!(self.options.exclude))
    }

    async fn survey(&self) -> Result<Survey, StoreError> {
        survey::survey(self).await
    }

    async fn inventory(&self) -> Result<Vec<Unit>, StoreError> {
        inventory::inventory(self).await
    }

    async fn occupied(&self, units: &[Unit]) -> Result<Vec<String>, StoreError> {
        prepare::occupied(self, units).await
    }

    async fn prepare_target(
        &self,
        units: &[Unit],
        policy: IfExists,
        occupied: &[String],
    ) -> Result<(), StoreError> {
        prepare::prepare_target(self, units, policy, occupied).await
    }

    fn copied_by_earlier_runs(&self, units: usize) {
        MysqlStore::copied_by_earlier_runs(self, units)
    }

    async fn target_epoch(&self) -> Result<Option<TargetEpoch>, StoreError> {
        self.target_process().await.map(Some)
    }

    async fn begin_copy(&self, workers: usize) -> Result<String, StoreError> {
        copy::begin_copy(self, workers).await
    }

    async fn prepare(&self, unit: &Unit) -> Result<(), StoreError> {
        prepare::prepare_table(self, unit).await
    }

    async fn copy_batch(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
    ) -> Result<BatchOutcome, StoreError> {
        copy::copy_batch(self, unit, after).await
    }

    async fn finish_target(&self) -> Result<Vec<String>, StoreError> {
        finish::finish_target(self).await
    }

    async fn end_copy(&self) {
        copy::end_copy(self).await
    }

    async fn digest_range(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<ChunkDigest, StoreError> {
        digest::digest_range(self, side, unit, after, upto, limit).await
    }

    async fn row_digests(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        cap: usize,
    ) -> Result<Vec<RowDigest>, StoreError> {
        digest::row_digests(self, side, unit, after, upto, cap).await
    }

    async fn compare_shape(&self, units: &[Unit]) -> Result<Vec<ShapeDifference>, StoreError> {
        shape::compare_shape(self, units).await
    }

    async fn clear_range(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
    ) -> Result<(), StoreError> {
        copy::clear_range(self, unit, after, upto).await
    }

    async fn pause_target_side_effects(&self) -> Result<(), StoreError> {
        finish::pause_target_side_effects(self).await
    }

    async fn freeze_source(&self, left_by_earlier_run: bool) -> Result<Option<String>, StoreError> {
        freeze::freeze_source(self, left_by_earlier_run).await
    }

    async fn thaw_source(&self) -> Result<(), StoreError> {
        freeze::thaw_source(self).await
    }

    fn render_range(&self, unit: &Unit, after: Option<&Cursor>, upto: Option<&Cursor>) -> String {
        read::render_range(self, unit, after, upto)
    }
}
