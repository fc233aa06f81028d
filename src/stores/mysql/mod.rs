//! The MySQL store: copies every user database table by table, keyset-chunked by primary key from
//! a consistent snapshot of the source, streamed into `LOAD DATA LOCAL INFILE ... REPLACE` on the
//! target (multi-row `REPLACE` statements where the target refuses LOCAL INFILE), recreates schema
//! objects, and digests key ranges row by row for verification.
//!
//! Tested against MariaDB 10.11 on both sides. MySQL 8 specifics (JSON as a real type,
//! `caching_sha2_password`, `information_schema_stats_expiry`) are handled in code but untested here.

mod endpoint;
mod schema;
pub mod settings;
mod values;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use mysql_async::prelude::*;
use mysql_async::{Conn, Pool, Row, Value};
use serde_json::json;
use tokio::sync::mpsc;

pub use endpoint::{map_error, MysqlEndpoint, TlsMode};
use schema::{ident, quote, TableInfo, SYSTEM_DATABASES};
use values::{decode_cursor, encode_cursor, hash_value, push_field, push_literal};

use crate::core::store::{Check, ShapeDifference, Survey};
use crate::core::{
    BatchOutcome, ChunkDigest, Cursor, ErrorKind, IfExists, RowDigest, Side, Store, StoreError,
    StoreKind, Unit,
};
use crate::secret::Secret;

/// The application account to create on the target (`--create-users`).
#[derive(Debug, Clone)]
pub struct AppUser {
    pub name: String,
    pub password: Secret,
    pub database: String,
}

/// Choices for a MySQL migration.
#[derive(Debug, Clone)]
pub struct MysqlOptions {
    /// Databases to copy; empty means every non-system database.
    pub databases: Vec<String>,
    /// Databases never to copy.
    pub exclude: Vec<String>,
    pub create_users: Vec<AppUser>,
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
    source_pool: Pool,
    target_pool: Pool,
    /// Source connections inside one consistent snapshot, shared by this run's batches.
    snapshot: tokio::sync::Mutex<Vec<Conn>>,
    tables: Mutex<HashMap<(String, String), Arc<TableInfo>>>,
    /// Whether this process set the source read_only (and so must undo it).
    frozen: Mutex<bool>,
    /// Whether rows still go through `LOAD DATA LOCAL INFILE`: cleared, with the reason kept
    /// for the copy summary, when the target refuses it.
    load_data: AtomicBool,
    load_data_refused: Mutex<Option<String>>,
    /// Key ranges of each table copied completely in this run, to see when a table is whole.
    ranges_done: Mutex<HashMap<(String, String), Vec<KeyRange>>>,
    /// Concurrent index builds at the end of the copy (the run's --parallel).
    parallel: usize,
}

/// Bytes of `LOAD DATA` stream handed to the target connection at a time, and how many such
/// chunks may wait: per worker, at most about a megabyte of encoded rows is in memory.
const LOAD_CHUNK: usize = 256 * 1024;
const LOAD_QUEUE: usize = 3;

/// Server errors that mean "LOCAL INFILE is not allowed here": 1148 (command not allowed),
/// 3948 (MySQL 8: local_infile disabled), 4166 (MariaDB: local infile capability disabled).
const LOCAL_INFILE_REFUSED: [u16; 3] = [1148, 3948, 4166];

/// How one attempt at loading a batch ended badly.
enum LoadFailure {
    /// The target does not take LOCAL INFILE; nothing was written.
    Refused(String),
    Failed(StoreError),
}

impl From<StoreError> for LoadFailure {
    fn from(e: StoreError) -> Self {
        LoadFailure::Failed(e)
    }
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
            source_pool: Pool::new(source.opts(source_setup, conns)),
            target_pool: Pool::new(target.opts(target_setup, conns)),
            source,
            target,
            options,
            snapshot: tokio::sync::Mutex::new(Vec::new()),
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
        endpoint::map_error(&side.to_string(), &self.endpoint(side).address(), e)
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

    /// The range query of a table: rows after `after`, up to `upto`, in key order, at most `limit`.
    fn range_query(
        &self,
        side: Side,
        table: &TableInfo,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<(String, Vec<Value>), StoreError> {
        let after_v = after.map(|c| self.decode(c, side)).transpose()?;
        let upto_v = upto.map(|c| self.decode(c, side)).transpose()?;
        let (cond, params) = table.range_condition(after_v.as_deref(), upto_v.as_deref());
        let limit_sql = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let sql = format!(
            "SELECT {} FROM {}{cond}{}{limit_sql}",
            table.select_list,
            table.qualified,
            table.order_by()
        );
        Ok((sql, params))
    }

    fn no_result_set(&self, side: Side) -> StoreError {
        StoreError::new(
            StoreKind::Mysql,
            self.endpoint(side).address(),
            ErrorKind::Query,
            "the range query returned no result set",
            "report this as a bug",
        )
    }

    /// Run the unit's range query on one side and feed each row to `each`.
    #[allow(clippy::too_many_arguments)]
    async fn scan(
        &self,
        conn: &mut Conn,
        side: Side,
        table: &TableInfo,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
        mut each: impl FnMut(Vec<Value>),
    ) -> Result<(), StoreError> {
        let (sql, params) = self.range_query(side, table, after, upto, limit)?;
        let mut result = conn
            .exec_iter(sql, params)
            .await
            .map_err(|e| self.err(side, e))?;
        let mut stream = result
            .stream::<Row>()
            .await
            .map_err(|e| self.err(side, e))?
            .ok_or_else(|| self.no_result_set(side))?;
        while let Some(row) = stream.next().await {
            each(row.map_err(|e| self.err(side, e))?.unwrap());
        }
        Ok(())
    }

    fn decode(&self, c: &Cursor, side: Side) -> Result<Vec<Value>, StoreError> {
        decode_cursor(c).ok_or_else(|| {
            StoreError::new(
                StoreKind::Mysql,
                self.endpoint(side).address(),
                ErrorKind::Input,
                format!("unreadable cursor {}", c.0),
                "the job folder was written by another version; start over with --restart",
            )
        })
    }

    /// Take a snapshot connection when one is free, else an ordinary one.
    async fn source_conn_for_copy(&self) -> Result<(Conn, bool), StoreError> {
        if let Some(c) = self.snapshot.lock().await.pop() {
            return Ok((c, true));
        }
        Ok((self.conn(Side::Source).await?, false))
    }

    /// Copy the rows after `after` (at most `limit`) of a unit to the target; returns rows, bytes
    /// and the last key copied.
    async fn copy_rows(
        &self,
        unit: &Unit,
        table: &TableInfo,
        after: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<(u64, u64, Option<Vec<Value>>), StoreError> {
        if self.load_data.load(Ordering::Relaxed) {
            match self.load_rows(unit, table, after, limit).await {
                Ok(done) => return Ok(done),
                Err(LoadFailure::Failed(e)) => return Err(e),
                Err(LoadFailure::Refused(reason)) => {
                    if self.load_data.swap(false, Ordering::Relaxed) {
                        tracing::warn!(store = "mysql", host = %self.target.address(), %reason, "the target refuses LOAD DATA LOCAL INFILE; rows go as REPLACE statements (slower)");
                        *self.load_data_refused.lock().expect("refusal") = Some(reason);
                    }
                }
            }
        }
        self.replace_rows(unit, table, after, limit).await
    }

    /// [`copy_rows`](Self::copy_rows) through one `LOAD DATA LOCAL INFILE` per batch: rows are
    /// encoded as they stream from the source and handed to the target connection in small
    /// chunks, so reading, encoding and loading overlap and memory stays bounded. `REPLACE` makes
    /// a replayed batch harmless; keyless tables load into a table emptied first.
    async fn load_rows(
        &self,
        unit: &Unit,
        table: &TableInfo,
        after: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<(u64, u64, Option<Vec<Value>>), LoadFailure> {
        let (mut src, from_snapshot) = self.source_conn_for_copy().await?;
        let mut tgt = self.conn(Side::Target).await?;
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(LOAD_QUEUE);
        tgt.set_infile_handler(async move {
            let data = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            Ok(data.boxed())
        });
        let writable = table.writable();

        let reader = async {
            let mut rows = 0u64;
            let mut bytes = 0u64;
            let mut last: Option<Vec<Value>> = None;
            let read = async {
                let (sql, params) =
                    self.range_query(Side::Source, table, after, unit.range.upto.as_ref(), limit)?;
                let mut result = src
                    .exec_iter(sql, params)
                    .await
                    .map_err(|e| self.err(Side::Source, e))?;
                let mut stream = result
                    .stream::<Row>()
                    .await
                    .map_err(|e| self.err(Side::Source, e))?
                    .ok_or_else(|| self.no_result_set(Side::Source))?;
                let mut buf: Vec<u8> = Vec::with_capacity(LOAD_CHUNK + 64 * 1024);
                while let Some(row) = stream.next().await {
                    let row = row.map_err(|e| self.err(Side::Source, e))?.unwrap();
                    let before = buf.len();
                    for (n, (i, class)) in writable.iter().enumerate() {
                        if n > 0 {
                            buf.push(b'\t');
                        }
                        push_field(&mut buf, &row[*i], *class);
                    }
                    buf.push(b'\n');
                    bytes += (buf.len() - before) as u64;
                    rows += 1;
                    if let Some(key) = table.key_of(&row) {
                        last = Some(key);
                    }
                    if buf.len() >= LOAD_CHUNK {
                        let full =
                            std::mem::replace(&mut buf, Vec::with_capacity(LOAD_CHUNK + 64 * 1024));
                        if tx.send(Ok(Bytes::from(full))).await.is_err() {
                            return Ok(false); // the load ended early; the writer says why
                        }
                    }
                }
                if !buf.is_empty() && tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    return Ok(false);
                }
                Ok::<_, StoreError>(true)
            }
            .await;
            if let Err(e) = &read {
                // End the load with an error rather than a short file. What was already sent may
                // be committed: the batch is copied again, which REPLACE makes harmless.
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "source read failed: {e}"
                    ))))
                    .await;
            }
            drop(tx);
            read.map(|complete| (complete, rows, bytes, last))
        };
        let writer = async {
            let result = tgt.query_drop(table.load_sql.as_str()).await;
            // A load refused before it asked for data leaves the handler (and with it the
            // reader's channel) on the connection: drop it so the reader stops.
            tgt.set_infile_handler(async { Ok(futures_util::stream::empty().boxed()) });
            result
        };
        let (read, written) = tokio::join!(reader, writer);
        let keep_snapshot = read.as_ref().is_ok_and(|r| r.0) && written.is_ok();
        if from_snapshot && keep_snapshot {
            self.snapshot.lock().await.push(src);
        } else if from_snapshot {
            tracing::warn!(store = "mysql", unit = %unit.name, "a snapshot connection failed; later batches of this run read outside the snapshot");
        }
        match written {
            Err(mysql_async::Error::Server(s)) if LOCAL_INFILE_REFUSED.contains(&s.code) => {
                return Err(LoadFailure::Refused(format!(
                    "server error {}: {}",
                    s.code, s.message
                )));
            }
            Err(e) => {
                // A failed source read is the cause when there is one.
                read.map_err(|e| e.in_unit(&unit.name))?;
                return Err(self.err(Side::Target, e).in_unit(&unit.name).into());
            }
            Ok(()) => {}
        }
        let (complete, rows, bytes, last) = read.map_err(|e| e.in_unit(&unit.name))?;
        if !complete {
            return Err(self
                .load_problem(unit, "the target stopped reading the rows before the end")
                .into());
        }
        // With LOCAL, the server turns bad values into warnings instead of errors: any warning, or
        // a row count that differs from what was sent, means the rows did not arrive exactly.
        let info = tgt.info().into_owned();
        let warnings = tgt.get_warnings();
        let records = load_info_count(&info, "Records");
        if warnings > 0 || records != Some(rows) {
            let shown: Vec<(String, u32, String)> =
                tgt.query("SHOW WARNINGS LIMIT 3").await.unwrap_or_default();
            let shown: Vec<String> = shown
                .into_iter()
                .map(|(level, code, message)| format!("{level} {code}: {message}"))
                .collect();
            return Err(self
                .load_problem(
                    unit,
                    &format!(
                        "the target did not take the rows exactly ({rows} sent, server says `{info}`{}{})",
                        if shown.is_empty() { "" } else { "; " },
                        shown.join("; ")
                    ),
                )
                .into());
        }
        Ok((rows, bytes, last))
    }

    fn load_problem(&self, unit: &Unit, detail: &str) -> StoreError {
        StoreError::new(
            StoreKind::Mysql,
            self.target.address(),
            ErrorKind::Query,
            detail.to_string(),
            "check that source and target tables have the same definition (offload verify names the difference); to write with REPLACE statements instead, run with OFFLOAD_MYSQL_LOCAL_INFILE=off and --resume",
        )
        .in_unit(&unit.name)
    }

    /// [`copy_rows`](Self::copy_rows) as multi-row `REPLACE` statements (`INSERT` for keyless
    /// tables), for targets that refuse LOCAL INFILE.
    async fn replace_rows(
        &self,
        unit: &Unit,
        table: &TableInfo,
        after: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<(u64, u64, Option<Vec<Value>>), StoreError> {
        let (mut src, from_snapshot) = self.source_conn_for_copy().await?;
        let mut tgt = self.conn(Side::Target).await?;
        let (tx, mut rx) = mpsc::channel::<String>(2);
        // Statement buffers go back to the reader once written, so a batch reuses a handful of
        // buffers instead of allocating (and fragmenting the heap with) one per statement.
        let (recycle_tx, mut recycle_rx) = mpsc::channel::<String>(4);
        let statement_bytes = self.options.statement_bytes;
        let writable = table.writable();

        // Rows become statements as they stream in; a full statement goes to the writer at once,
        // so reading the source and writing the target overlap.
        let reader = async {
            let mut rows = 0u64;
            let mut bytes = 0u64;
            let mut last: Option<Vec<Value>> = None;
            let (sql, params) =
                self.range_query(Side::Source, table, after, unit.range.upto.as_ref(), limit)?;
            let mut result = src
                .exec_iter(sql, params)
                .await
                .map_err(|e| self.err(Side::Source, e))?;
            let mut stream = result
                .stream::<Row>()
                .await
                .map_err(|e| self.err(Side::Source, e))?
                .ok_or_else(|| self.no_result_set(Side::Source))?;
            let mut stmt = String::with_capacity(statement_bytes + 64 * 1024);
            while let Some(row) = stream.next().await {
                let row = row.map_err(|e| self.err(Side::Source, e))?.unwrap();
                if stmt.is_empty() {
                    stmt.push_str(&table.insert_prefix);
                } else {
                    stmt.push(',');
                }
                let before = stmt.len();
                stmt.push('(');
                for (n, (i, class)) in writable.iter().enumerate() {
                    if n > 0 {
                        stmt.push(',');
                    }
                    push_literal(&mut stmt, &row[*i], *class);
                }
                stmt.push(')');
                bytes += (stmt.len() - before) as u64;
                rows += 1;
                if let Some(key) = table.key_of(&row) {
                    last = Some(key);
                }
                if stmt.len() >= statement_bytes {
                    let fresh = recycle_rx
                        .try_recv()
                        .unwrap_or_else(|_| String::with_capacity(statement_bytes + 64 * 1024));
                    let full = std::mem::replace(&mut stmt, fresh);
                    if tx.send(full).await.is_err() {
                        break; // the writer failed; its error is reported
                    }
                }
            }
            drop(stream);
            if !stmt.is_empty() {
                let _ = tx.send(stmt).await;
            }
            drop(tx);
            Ok::<_, StoreError>((rows, bytes, last))
        };
        let writer = async {
            while let Some(mut stmt) = rx.recv().await {
                tgt.query_drop(stmt.as_str())
                    .await
                    .map_err(|e| self.err(Side::Target, e).in_unit(&unit.name))?;
                stmt.clear();
                let _ = recycle_tx.try_send(stmt);
            }
            Ok::<(), StoreError>(())
        };
        let (read, written) = tokio::join!(reader, writer);
        let read = read.map_err(|e| e.in_unit(&unit.name));
        if from_snapshot && read.is_ok() && written.is_ok() {
            self.snapshot.lock().await.push(src);
        } else if from_snapshot {
            tracing::warn!(store = "mysql", unit = %unit.name, "a snapshot connection failed; later batches of this run read outside the snapshot");
        }
        written?;
        read
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

    /// `SHOW CREATE ...` text of an object, from the named result column.
    async fn show_create(
        &self,
        side: Side,
        what: &str,
        db: &str,
        name: &str,
        column: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        let mut conn = self.conn(side).await?;
        let sql = format!("SHOW CREATE {what} {}.{}", ident(db), ident(name));
        let row: Option<Row> = match conn.query_first(sql).await {
            Ok(r) => r,
            Err(mysql_async::Error::Server(s))
                if [1146, 1305, 1539, 1360, 1347].contains(&s.code) =>
            {
                None
            }
            Err(e) => return Err(self.err(side, e)),
        };
        Ok(row.and_then(|r| {
            let text: Option<String> = r.get(column);
            let mode: Option<String> = r.get("sql_mode");
            text.map(|t| (t, mode))
        }))
    }

    /// Create (or replace) a schema object on the target from its source definition, in its
    /// database and with its own sql_mode; without the DEFINER clause when that account is missing.
    async fn replay_object(
        &self,
        db: &str,
        ddl: &str,
        sql_mode: Option<&str>,
        drop: Option<String>,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn(Side::Target).await?;
        let drop = drop.as_deref();
        match replay_once(&mut conn, db, ddl, sql_mode, drop).await {
            Ok(()) => Ok(None),
            Err(mysql_async::Error::Server(s)) if [1449, 1227, 1045, 1044].contains(&s.code) => {
                replay_once(&mut conn, db, &schema::strip_definer(ddl), sql_mode, drop)
                    .await
                    .map_err(|e| self.err(Side::Target, e))?;
                Ok(Some(format!(
                    "created without its DEFINER in {db} ({}); it now runs as the migrating user",
                    s.message
                )))
            }
            Err(e) => Err(self.err(Side::Target, e)),
        }
    }

    async fn objects(
        &self,
        side: Side,
        db: &str,
    ) -> Result<Vec<(&'static str, String)>, StoreError> {
        let mut out = Vec::new();
        let p = || vec![Value::from(db)];
        for v in self
            .query_strings(side, "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME", p())
            .await?
        {
            out.push(("VIEW", v));
        }
        let mut conn = self.conn(side).await?;
        let routines: Vec<(String, String)> = conn
            .exec(
                "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
                (db,),
            )
            .await
            .map_err(|e| self.err(side, e))?;
        drop(conn);
        for (kind, name) in routines {
            out.push((
                if kind == "FUNCTION" {
                    "FUNCTION"
                } else {
                    "PROCEDURE"
                },
                name,
            ));
        }
        for t in self
            .query_strings(side, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? ORDER BY TRIGGER_NAME", p())
            .await?
        {
            out.push(("TRIGGER", t));
        }
        for e in self
            .query_strings(side, "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY EVENT_NAME", p())
            .await?
        {
            out.push(("EVENT", e));
        }
        Ok(out)
    }

    fn create_column(kind: &str) -> &'static str {
        match kind {
            "VIEW" => "Create View",
            "FUNCTION" => "Create Function",
            "PROCEDURE" => "Create Procedure",
            "TRIGGER" => "SQL Original Statement",
            _ => "Create Event",
        }
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

    async fn grants(&self, side: Side) -> Result<String, StoreError> {
        let grants = self.query_strings(side, "SHOW GRANTS", vec![]).await?;
        Ok(grants.join("\n").to_ascii_uppercase())
    }

    async fn variable(&self, side: Side, name: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn(side).await?;
        // Variable names are offload's own constants, never user input.
        let value: Option<Option<String>> = conn
            .query_first(format!("SELECT @@{name}"))
            .await
            .map_err(|e| self.err(side, e))?;
        Ok(value.flatten())
    }

    /// What a target table lacks of the source's secondary indexes and foreign keys, as
    /// `ADD ...` clauses; `None` when the table is missing on either side or differs otherwise
    /// (left alone for verify to report).
    async fn missing_keys(
        &self,
        db: &str,
        table: &str,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, StoreError> {
        let Some((src, _)) = self
            .show_create(Side::Source, "TABLE", db, table, "Create Table")
            .await?
        else {
            return Ok(None);
        };
        let Some((tgt, _)) = self
            .show_create(Side::Target, "TABLE", db, table, "Create Table")
            .await?
        else {
            return Ok(None);
        };
        let (src, tgt) = (schema::split_secondary(&src), schema::split_secondary(&tgt));
        if schema::normalize_table_ddl(&src.create) != schema::normalize_table_ddl(&tgt.create) {
            return Ok(None);
        }
        let missing = |src: &[(String, String)], tgt: &[(String, String)]| -> Vec<String> {
            src.iter()
                .filter(|(n, _)| !tgt.iter().any(|(t, _)| t == n))
                .map(|(_, c)| format!("ADD {c}"))
                .collect()
        };
        Ok(Some((
            missing(&src.indexes, &tgt.indexes),
            missing(&src.foreign_keys, &tgt.foreign_keys),
        )))
    }

    /// Add what the target table lacks of its secondary indexes (`foreign_keys` false) or of its
    /// foreign keys, in one `ALTER TABLE`; returns how many were added. Idempotent: when another
    /// connection (say, a killed run's statement still finishing on the server) added one first,
    /// the plan is read again.
    async fn add_keys(
        &self,
        db: &str,
        table: &str,
        foreign_keys: bool,
    ) -> Result<usize, StoreError> {
        let mut attempt = 0;
        loop {
            let Some((indexes, fks)) = self.missing_keys(db, table).await? else {
                return Ok(0);
            };
            let clauses = if foreign_keys { fks } else { indexes };
            if clauses.is_empty() {
                return Ok(0);
            }
            let qualified = format!("{}.{}", ident(db), ident(table));
            tracing::debug!(store = "mysql", table = %qualified, count = clauses.len(), "building secondary keys");
            let mut conn = self.conn(Side::Target).await?;
            match conn
                .query_drop(format!("ALTER TABLE {qualified} {}", clauses.join(", ")))
                .await
            {
                Ok(()) => return Ok(clauses.len()),
                // Duplicate key name / foreign key name: it appeared meanwhile.
                Err(mysql_async::Error::Server(e))
                    if attempt == 0 && [1061, 1826, 1022].contains(&e.code) =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(self.err(Side::Target, e)),
            }
        }
    }

    /// Add the secondary indexes, then the foreign keys, that `prepare` left out, to every
    /// target table offload created. Indexes of several tables are built at once (each is one
    /// sorted pass on one core); foreign keys come after all indexes, since one needs the
    /// referenced table's index.
    async fn add_secondary_keys(&self, dbs: &[String]) -> Result<usize, StoreError> {
        let mut tables = Vec::new();
        for db in dbs {
            for table in self
                .query_strings(
                    Side::Source,
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                    vec![Value::from(db.as_str())],
                )
                .await?
            {
                tables.push((db.clone(), table));
            }
        }
        let built: Vec<Result<usize, StoreError>> = futures_util::stream::iter(tables.clone())
            .map(|(db, table)| async move { self.add_keys(&db, &table, false).await })
            .buffer_unordered(self.parallel.max(1))
            .collect()
            .await;
        let mut added = 0;
        for b in built {
            added += b?;
        }
        for (db, table) in &tables {
            added += self.add_keys(db, table, true).await?;
        }
        Ok(added)
    }

    /// Note that a unit's rows are all on the target; when that completes its table in this run,
    /// build the table's secondary indexes now, while other tables still copy, instead of in the
    /// single-threaded tail of the copy. A failure here is left for `finish_target` to retry.
    async fn unit_copied(&self, unit: &Unit) {
        let key = (unit.container.clone(), unit.object.clone());
        let complete = {
            let mut done = self.ranges_done.lock().expect("ranges");
            let ranges = done.entry(key).or_default();
            ranges.push(range_text(unit));
            covers_all(ranges)
        };
        if !complete {
            return;
        }
        if let Err(e) = self.add_keys(&unit.container, &unit.object, false).await {
            tracing::warn!(store = "mysql", unit = %unit.name, error = %e, "secondary indexes not built yet; the end of the copy tries again");
        }
    }

    fn split_ranges(min: &Value, max: &Value, parts: u64) -> Vec<Value> {
        let (lo, hi) = match (min, max) {
            (Value::Int(a), Value::Int(b)) => (*a as i128, *b as i128),
            (Value::UInt(a), Value::UInt(b)) => (*a as i128, *b as i128),
            (Value::Int(a), Value::UInt(b)) => (*a as i128, *b as i128),
            _ => return Vec::new(),
        };
        if hi <= lo || parts < 2 {
            return Vec::new();
        }
        let step = ((hi - lo) / parts as i128).max(1);
        (1..parts as i128)
            .map(|i| lo + step * i)
            .filter(|b| *b < hi)
            .map(|b| match min {
                Value::UInt(_) => Value::UInt(b as u64),
                _ => Value::Int(b as i64),
            })
            .collect()
    }
}

/// Run one DDL statement in `db` with the object's own sql_mode, after an optional DROP.
async fn replay_once(
    conn: &mut Conn,
    db: &str,
    ddl: &str,
    sql_mode: Option<&str>,
    drop: Option<&str>,
) -> mysql_async::Result<()> {
    conn.query_drop(format!("USE {}", ident(db))).await?;
    if let Some(mode) = sql_mode {
        conn.query_drop(format!("SET SESSION sql_mode = {}", quote(mode)))
            .await?;
    }
    if let Some(drop) = drop {
        conn.query_drop(drop).await?;
    }
    let result = conn.query_drop(ddl).await;
    conn.query_drop("SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'")
        .await?;
    result
}

/// A unit's key range as comparable text.
/// One range of a table's key as text: (after, up to), `None` for an open end.
type KeyRange = (Option<String>, Option<String>);

fn range_text(unit: &Unit) -> KeyRange {
    let text = |c: &Option<Cursor>| c.as_ref().map(|c| c.0.to_string());
    (text(&unit.range.after), text(&unit.range.upto))
}

/// Whether key ranges chain from the start of the key space to its end.
fn covers_all(ranges: &[KeyRange]) -> bool {
    let mut at: Option<&String> = None;
    for _ in 0..=ranges.len() {
        match ranges.iter().find(|(after, _)| after.as_ref() == at) {
            Some((_, None)) => return true,
            Some((_, Some(upto))) => at = Some(upto),
            None => return false,
        }
    }
    false
}

/// A count from a `LOAD DATA` info string such as `Records: 3  Deleted: 0  Skipped: 0  Warnings: 0`.
fn load_info_count(info: &str, name: &str) -> Option<u64> {
    let rest = &info[info.find(&format!("{name}:"))? + name.len() + 1..];
    rest.split_whitespace().next()?.parse().ok()
}

fn digest_hex(sum: u128) -> String {
    format!("{sum:032x}")
}

fn row_digest(row: &[Value]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    for v in row {
        hash_value(&mut h, v);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

#[async_trait]
impl Store for MysqlStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Mysql
    }

    fn identity(&self) -> serde_json::Value {
        json!({
            "source": {"address": self.source.address(), "user": self.source.user},
            "target": {"address": self.target.address(), "user": self.target.user},
            "databases": self.options.databases,
            "exclude": self.options.exclude,
        })
    }

    async fn survey(&self) -> Result<Survey, StoreError> {
        let mut survey = Survey::default();
        for side in [Side::Source, Side::Target] {
            let version = self
                .variable(side, "version")
                .await?
                .unwrap_or_else(|| "unknown".into());
            let comment = self
                .variable(side, "version_comment")
                .await?
                .unwrap_or_default();
            let shown = format!("{version} ({comment})");
            survey.checks.push(Check::new(
                format!("{side} reachable"),
                true,
                format!(
                    "{} as {}: {shown}",
                    self.endpoint(side).address(),
                    self.endpoint(side).user
                ),
            ));
            match side {
                Side::Source => survey.source_version = shown,
                Side::Target => survey.target_version = shown,
            }
        }

        let source_grants = self.grants(Side::Source).await?;
        let all = |g: &str| g.contains("ALL PRIVILEGES ON *.*");
        let can_read = all(&source_grants) || source_grants.contains("SELECT");
        survey.checks.push(Check::new(
            "source privileges",
            can_read,
            if can_read { "can read every table" } else { "the source user lacks SELECT: grant SELECT, SHOW VIEW, TRIGGER, EVENT on the databases" },
        ));
        let can_lock = all(&source_grants) || source_grants.contains("RELOAD");
        survey.checks.push(Check::new(
            "consistent snapshot",
            true,
            if can_lock {
                "RELOAD granted: all workers read one snapshot (FLUSH TABLES WITH READ LOCK held only while the snapshot opens)"
            } else {
                "RELOAD not granted: each worker reads its own snapshot; stop the platform's writers (LMS, CMS, workers) before copying"
            },
        ));

        let target_grants = self.grants(Side::Target).await?;
        let needed = [
            "CREATE",
            "INSERT",
            "DELETE",
            "DROP",
            "ALTER",
            "CREATE VIEW",
            "TRIGGER",
            "CREATE ROUTINE",
            "EVENT",
        ];
        let missing: Vec<&str> = if all(&target_grants) {
            Vec::new()
        } else {
            needed
                .iter()
                .filter(|p| !target_grants.contains(*p))
                .copied()
                .collect()
        };
        survey.checks.push(Check::new(
            "target privileges",
            missing.is_empty(),
            if missing.is_empty() {
                "can create databases, tables, views, routines, triggers and events".to_string()
            } else {
                format!(
                    "the target user may lack: {}; grant them (or ALL PRIVILEGES on the databases)",
                    missing.join(", ")
                )
            },
        ));
        let read_only = self
            .variable(Side::Target, "read_only")
            .await?
            .unwrap_or_default();
        let writable = !read_only.eq_ignore_ascii_case("ON") && read_only != "1";
        survey.checks.push(Check::new(
            "target writable",
            writable,
            if writable {
                "read_only is OFF".to_string()
            } else {
                "the target has read_only=ON: it may be a replica; point --to-mysql at the primary"
                    .to_string()
            },
        ));

        // Character sets and collations the source uses must exist on the target.
        let dbs = self.databases().await?;
        let mut used: BTreeSet<String> = BTreeSet::new();
        for db in &dbs {
            let mut conn = self.conn(Side::Source).await?;
            let cols: Vec<String> = conn
                .exec(
                    "SELECT DISTINCT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND COLLATION_NAME IS NOT NULL
                     UNION SELECT DISTINCT TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_COLLATION IS NOT NULL
                     UNION SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                    (db, db, db),
                )
                .await
                .map_err(|e| self.err(Side::Source, e))?;
            used.extend(cols);
        }
        let available: BTreeSet<String> = self
            .query_strings(
                Side::Target,
                "SELECT COLLATION_NAME FROM information_schema.COLLATIONS",
                vec![],
            )
            .await?
            .into_iter()
            .collect();
        let unknown: Vec<&String> = used.iter().filter(|c| !available.contains(*c)).collect();
        survey.checks.push(Check::new(
            "character sets",
            unknown.is_empty(),
            if unknown.is_empty() {
                format!("the target knows every collation in use ({})", used.iter().cloned().collect::<Vec<_>>().join(", "))
            } else {
                format!("the target lacks collations {}: use a target server of the same family and version (MySQL 8 collations like utf8mb4_0900_ai_ci do not exist on MariaDB)", unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            },
        ));
        let packet = self
            .variable(Side::Target, "max_allowed_packet")
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let packet_ok = packet >= (self.options.statement_bytes as u64) * 2;
        survey.checks.push(Check::new(
            "max_allowed_packet",
            packet_ok,
            if packet_ok {
                format!("target accepts statements up to {} MiB", packet / (1024 * 1024))
            } else {
                format!("target max_allowed_packet is {} KiB; raise it to at least 16M (rows larger than it cannot be copied)", packet / 1024)
            },
        ));
        let local_infile = if self.options.local_infile {
            // MySQL 8 and MariaDB both name it local_infile; an older server may not have it.
            self.variable(Side::Target, "local_infile")
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        survey.checks.push(Check::new(
            "local_infile",
            true,
            match local_infile.as_deref() {
                _ if !self.options.local_infile => "not used (OFFLOAD_MYSQL_LOCAL_INFILE=off): rows are sent as multi-row REPLACE statements, about half as fast".to_string(),
                Some("1") | Some("ON") => "ON: rows stream into LOAD DATA LOCAL INFILE (no file is written)".to_string(),
                Some(v) => format!("{v} on the target: rows are sent as multi-row REPLACE statements, about half as fast; SET GLOBAL local_infile = 1 on the target (a parameter on managed services) to stream them with LOAD DATA LOCAL INFILE"),
                None => "unknown on the target: offload tries LOAD DATA LOCAL INFILE and falls back to multi-row REPLACE statements if it is refused".to_string(),
            },
        ));
        survey.checks.push(Check::new(
            "free space",
            true,
            "cannot be read over SQL: make sure the target has room for the bytes below plus indexes",
        ));
        survey.notes.push(format!(
            "databases: {}",
            if dbs.is_empty() {
                "(none)".to_string()
            } else {
                dbs.join(", ")
            }
        ));
        Ok(survey)
    }

    async fn inventory(&self) -> Result<Vec<Unit>, StoreError> {
        let mut units = Vec::new();
        let mut conn = self.conn(Side::Source).await?;
        // MySQL 8 caches table statistics; ask for fresh ones. MariaDB has no such variable.
        let _ = conn
            .query_drop("SET SESSION information_schema_stats_expiry = 0")
            .await;
        for db in self.databases().await? {
            let tables: Vec<(String, Option<u64>, Option<u64>, Option<u64>)> = conn
                .exec(
                    "SELECT TABLE_NAME, TABLE_ROWS, DATA_LENGTH, AVG_ROW_LENGTH FROM information_schema.TABLES
                     WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                    (db.as_str(),),
                )
                .await
                .map_err(|e| self.err(Side::Source, e))?;
            for (table, rows, data, avg) in tables {
                let info = self.table(&db, &table).await?;
                let rows = rows.unwrap_or(0);
                let bytes = data.unwrap_or(0);
                let avg = avg.unwrap_or(0).max(64);
                let batch_rows = (self.options.batch_bytes / avg).clamp(200, 50_000);
                let spec = json!({"batch_rows": batch_rows, "keyless": info.keyless()});
                let mut boundaries = Vec::new();
                if info.key.len() == 1 && bytes > self.options.split_bytes {
                    let key = ident(&info.columns[info.key[0]].name);
                    let bounds: Option<(Value, Value)> = conn
                        .exec_first(
                            format!("SELECT MIN({key}), MAX({key}) FROM {}", info.qualified),
                            (),
                        )
                        .await
                        .map_err(|e| self.err(Side::Source, e))?;
                    if let Some((lo, hi)) = bounds {
                        let parts = bytes.div_ceil(self.options.split_bytes).min(32);
                        boundaries = Self::split_ranges(&lo, &hi, parts);
                    }
                }
                if boundaries.is_empty() {
                    units.push(Unit {
                        store: StoreKind::Mysql,
                        name: format!("{db}.{table}"),
                        container: db.clone(),
                        object: table.clone(),
                        range: Default::default(),
                        est_rows: rows,
                        est_bytes: bytes,
                        spec,
                    });
                    continue;
                }
                let parts = boundaries.len() as u64 + 1;
                let mut after: Option<Cursor> = None;
                for i in 0..=boundaries.len() {
                    let upto = boundaries
                        .get(i)
                        .map(|b| encode_cursor(std::slice::from_ref(b)));
                    units.push(Unit {
                        store: StoreKind::Mysql,
                        name: format!("{db}.{table}#{}", i + 1),
                        container: db.clone(),
                        object: table.clone(),
                        range: crate::core::KeyRange {
                            after: after.clone(),
                            upto: upto.clone(),
                        },
                        est_rows: rows / parts,
                        est_bytes: bytes / parts,
                        spec: spec.clone(),
                    });
                    after = upto;
                }
            }
        }
        Ok(units)
    }

    async fn occupied(&self, units: &[Unit]) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn(Side::Target).await?;
        let mut busy = BTreeSet::new();
        for (db, table) in Self::tables_of(units) {
            let sql = format!("SELECT 1 FROM {}.{} LIMIT 1", ident(&db), ident(&table));
            match conn.query_first::<i64, _>(sql).await {
                Ok(Some(_)) => {
                    busy.insert((db, table));
                }
                Ok(None) => {}
                Err(mysql_async::Error::Server(s)) if s.code == 1146 || s.code == 1049 => {}
                Err(e) => return Err(self.err(Side::Target, e)),
            }
        }
        Ok(Unit::names_within(units, &busy))
    }

    async fn prepare_target(
        &self,
        units: &[Unit],
        policy: IfExists,
        occupied: &[String],
    ) -> Result<(), StoreError> {
        let mut target = self.conn(Side::Target).await?;
        for db in Self::databases_of(units) {
            let mut src = self.conn(Side::Source).await?;
            let row: Option<(String, String)> = src
                .query_first(format!("SHOW CREATE DATABASE {}", ident(&db)))
                .await
                .map_err(|e| self.err(Side::Source, e))?;
            let create = row
                .map(|(_, c)| c)
                .unwrap_or_else(|| format!("CREATE DATABASE {}", ident(&db)));
            let create = create.replacen("CREATE DATABASE ", "CREATE DATABASE IF NOT EXISTS ", 1);
            let create = create.replacen(
                "IF NOT EXISTS /*!32312 IF NOT EXISTS*/ ",
                "IF NOT EXISTS ",
                1,
            );
            target
                .query_drop(create)
                .await
                .map_err(|e| self.err(Side::Target, e))?;
        }
        if policy == IfExists::Replace {
            let doomed: BTreeSet<(String, String)> = units
                .iter()
                .filter(|u| occupied.contains(&u.name))
                .map(|u| (u.container.clone(), u.object.clone()))
                .collect();
            for (db, table) in doomed {
                tracing::warn!(store = "mysql", database = %db, table = %table, "dropping the target table, as --if-exists replace asks");
                target
                    .query_drop(format!(
                        "DROP TABLE IF EXISTS {}.{}",
                        ident(&db),
                        ident(&table)
                    ))
                    .await
                    .map_err(|e| self.err(Side::Target, e))?;
            }
        }
        Ok(())
    }

    async fn begin_copy(&self, workers: usize) -> Result<String, StoreError> {
        let mut conns = Vec::new();
        for _ in 0..workers.max(1) {
            conns.push(self.conn(Side::Source).await?);
        }
        let locked = {
            let c = &mut conns[0];
            let _ = c.query_drop("SET SESSION lock_wait_timeout = 60").await;
            c.query_drop("FLUSH TABLES WITH READ LOCK").await.is_ok()
        };
        let started = std::time::Instant::now();
        let mut result = Ok(());
        for c in conns.iter_mut() {
            let r = async {
                c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .await?;
                c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await
            }
            .await;
            if let Err(e) = r {
                result = Err(self.err(Side::Source, e));
                break;
            }
        }
        if locked {
            let _ = conns[0].query_drop("UNLOCK TABLES").await;
        }
        result?;
        *self.snapshot.lock().await = conns;
        Ok(if locked {
            format!(
                "mysql: source read from one consistent snapshot (writes were held for {} ms while it opened); rows written after it are not in this copy",
                started.elapsed().as_millis()
            )
        } else {
            "mysql: no RELOAD privilege on the source, so each worker reads its own snapshot; stop writers (LMS, CMS, workers) for an exact copy".to_string()
        })
    }

    async fn prepare(&self, unit: &Unit) -> Result<(), StoreError> {
        let (db, table) = self.unit_table(unit);
        let (ddl, _) = self
            .show_create(Side::Source, "TABLE", db, table, "Create Table")
            .await?
            .ok_or_else(|| {
                StoreError::new(
                    StoreKind::Mysql,
                    self.source.address(),
                    ErrorKind::Input,
                    format!("table {db}.{table} is gone from the source"),
                    "the source changed since the plan; start the job again with --restart",
                )
                .in_unit(&unit.name)
            })?;
        // Secondary indexes and foreign keys are added by finish_target, after the data.
        let ddl = schema::split_secondary(&ddl).create.replacen(
            "CREATE TABLE ",
            "CREATE TABLE IF NOT EXISTS ",
            1,
        );
        let mut conn = self.conn(Side::Target).await?;
        conn.query_drop(format!("USE {}", ident(db)))
            .await
            .map_err(|e| self.err(Side::Target, e).in_unit(&unit.name))?;
        conn.query_drop(ddl)
            .await
            .map_err(|e| self.err(Side::Target, e).in_unit(&unit.name))?;
        Ok(())
    }

    async fn copy_batch(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
    ) -> Result<BatchOutcome, StoreError> {
        let (db, table) = self.unit_table(unit);
        let info = self.table(db, table).await?;
        if info.keyless() {
            // No key to resume from: the unit is copied in one pass, after clearing what an
            // interrupted earlier pass left.
            let mut tgt = self.conn(Side::Target).await?;
            tgt.query_drop(format!("DELETE FROM {}", info.qualified))
                .await
                .map_err(|e| self.err(Side::Target, e).in_unit(&unit.name))?;
            drop(tgt);
            let (rows, bytes, _) = self.copy_rows(unit, &info, None, None).await?;
            self.unit_copied(unit).await;
            return Ok(BatchOutcome {
                rows,
                bytes,
                next: None,
                ..BatchOutcome::default()
            });
        }
        let limit = self
            .options
            .batch_rows
            .or_else(|| unit.spec["batch_rows"].as_u64())
            .unwrap_or(5_000)
            .max(1);
        let after = after.or(unit.range.after.as_ref());
        let (rows, bytes, last) = self.copy_rows(unit, &info, after, Some(limit)).await?;
        let next = if rows < limit {
            None
        } else {
            last.map(|k| encode_cursor(&k))
        };
        if next.is_none() {
            self.unit_copied(unit).await;
        }
        Ok(BatchOutcome {
            rows,
            bytes,
            next,
            ..BatchOutcome::default()
        })
    }

    async fn finish_target(&self) -> Result<Vec<String>, StoreError> {
        let mut notes = Vec::new();
        if let Some(reason) = self.load_data_refused.lock().expect("refusal").clone() {
            notes.push(format!("mysql: the target refused LOAD DATA LOCAL INFILE ({reason}); rows were sent as REPLACE statements instead"));
        }
        let dbs = self.databases().await?;
        let added = self.add_secondary_keys(&dbs).await?;
        if added > 0 {
            notes.push(format!(
                "mysql: {added} secondary index(es) and foreign key(s) built after the data"
            ));
        }
        for db in &dbs {
            // Views may depend on views: create in passes until no progress.
            let objects = self.objects(Side::Source, db).await?;
            let mut pending: Vec<(&str, String)> = objects.clone();
            let mut last_error = None;
            for _pass in 0..8 {
                let mut still = Vec::new();
                for (kind, name) in pending {
                    let Some((ddl, mode)) = self
                        .show_create(Side::Source, kind, db, &name, Self::create_column(kind))
                        .await?
                    else {
                        continue;
                    };
                    let (ddl, drop) = if kind == "VIEW" {
                        (ddl.replacen("CREATE ", "CREATE OR REPLACE ", 1), None)
                    } else {
                        let drop = format!("DROP {kind} IF EXISTS {}.{}", ident(db), ident(&name));
                        (ddl, Some(drop))
                    };
                    match self.replay_object(db, &ddl, mode.as_deref(), drop).await {
                        Ok(Some(note)) => notes.push(format!("mysql: {kind} {db}.{name} {note}")),
                        Ok(None) => {}
                        Err(e) => {
                            last_error = Some(e);
                            still.push((kind, name));
                        }
                    }
                }
                if still.is_empty() {
                    last_error = None;
                    pending = still;
                    break;
                }
                pending = still;
            }
            if let Some(e) = last_error {
                return Err(e);
            }
            if !objects.is_empty() {
                notes.push(format!(
                    "mysql: {} view(s), routine(s), trigger(s) and event(s) created in {db}",
                    objects.len()
                ));
            }

            // AUTO_INCREMENT counters: carry the source's where it is ahead of the target's.
            let mut src = self.conn(Side::Source).await?;
            let _ = src
                .query_drop("SET SESSION information_schema_stats_expiry = 0")
                .await;
            let counters: Vec<(String, Option<u64>)> = src
                .exec(
                    "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND AUTO_INCREMENT IS NOT NULL",
                    (db.as_str(),),
                )
                .await
                .map_err(|e| self.err(Side::Source, e))?;
            drop(src);
            let mut tgt = self.conn(Side::Target).await?;
            for (table, counter) in counters {
                if let Some(counter) = counter {
                    tgt.query_drop(format!(
                        "ALTER TABLE {}.{} AUTO_INCREMENT = {counter}",
                        ident(db),
                        ident(&table)
                    ))
                    .await
                    .map_err(|e| self.err(Side::Target, e))?;
                }
            }
        }
        let mut tgt = self.conn(Side::Target).await?;
        for user in &self.options.create_users {
            let account = format!("{}@'%'", quote(&user.name));
            let password = quote(user.password.expose());
            let statements = [
                format!("CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}"),
                format!("ALTER USER {account} IDENTIFIED BY {password}"),
                format!(
                    "GRANT ALL PRIVILEGES ON {}.* TO {account}",
                    ident(&user.database)
                ),
            ];
            for s in statements {
                // The statement holds a password: never let it reach an error message.
                tgt.query_drop(s).await.map_err(|e| {
                    let mut err = self.err(Side::Target, e);
                    err.detail = format!(
                        "creating user `{}` failed: {}",
                        user.name,
                        err.detail.replace(user.password.expose(), "********")
                    );
                    err
                })?;
            }
            notes.push(format!(
                "mysql: user `{}` can use database `{}` on the target",
                user.name, user.database
            ));
        }
        Ok(notes)
    }

    async fn end_copy(&self) {
        let conns: Vec<Conn> = std::mem::take(&mut *self.snapshot.lock().await);
        for mut c in conns {
            let _ = c.query_drop("ROLLBACK").await;
        }
    }

    async fn digest_range(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<ChunkDigest, StoreError> {
        let (db, table) = self.unit_table(unit);
        let info = self.table(db, table).await?;
        let limit = if info.keyless() { None } else { limit };
        let mut conn = self.conn(side).await?;
        let (mut rows, mut bytes, mut sum) = (0u64, 0u64, 0u128);
        let mut last: Option<Vec<Value>> = None;
        let missing_ok = side == Side::Target;
        let scanned = self
            .scan(&mut conn, side, &info, after, upto, limit, |row| {
                let d = row_digest(&row);
                sum = sum.wrapping_add(u128::from_le_bytes(d));
                rows += 1;
                bytes += row
                    .iter()
                    .map(|v| match v {
                        Value::Bytes(b) => b.len() as u64,
                        _ => 8,
                    })
                    .sum::<u64>();
                if !info.keyless() {
                    last = Some(info.key.iter().map(|&k| row[k].clone()).collect());
                }
            })
            .await;
        match scanned {
            Ok(()) => {}
            // A table missing on the target holds no rows: reported as missing rows, not an error.
            Err(e) if missing_ok && e.detail.contains("error 1146") => {}
            Err(e) => return Err(e.in_unit(&unit.name)),
        }
        Ok(ChunkDigest {
            rows,
            bytes,
            digest: digest_hex(sum),
            last: last.map(|k| encode_cursor(&k)),
            ..ChunkDigest::default()
        })
    }

    async fn row_digests(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        cap: usize,
    ) -> Result<Vec<RowDigest>, StoreError> {
        let (db, table) = self.unit_table(unit);
        let info = self.table(db, table).await?;
        let mut conn = self.conn(side).await?;
        let mut out = Vec::new();
        let scanned = self
            .scan(
                &mut conn,
                side,
                &info,
                after,
                upto,
                Some(cap as u64),
                |row| {
                    let digest = row_digest(&row);
                    let key = if info.keyless() {
                        format!("row with digest {}", hex::encode(digest))
                    } else {
                        let k: Vec<Value> = info.key.iter().map(|&k| row[k].clone()).collect();
                        info.display_key(&k)
                    };
                    out.push(RowDigest { key, digest });
                },
            )
            .await;
        match scanned {
            Ok(()) => Ok(out),
            Err(e) if side == Side::Target && e.detail.contains("error 1146") => Ok(out),
            Err(e) => Err(e.in_unit(&unit.name)),
        }
    }

    async fn compare_shape(&self, units: &[Unit]) -> Result<Vec<ShapeDifference>, StoreError> {
        let mut out = Vec::new();
        for (db, table) in Self::tables_of(units) {
            let src = self
                .show_create(Side::Source, "TABLE", &db, &table, "Create Table")
                .await?;
            let tgt = self
                .show_create(Side::Target, "TABLE", &db, &table, "Create Table")
                .await?;
            match (src, tgt) {
                (Some((a, _)), Some((b, _))) => {
                    let (a, b) = (
                        schema::normalize_table_ddl(&a),
                        schema::normalize_table_ddl(&b),
                    );
                    if a != b {
                        let line = a
                            .lines()
                            .zip(b.lines())
                            .find(|(x, y)| x != y)
                            .map(|(x, y)| format!("source `{}`, target `{}`", x.trim(), y.trim()))
                            .unwrap_or_else(|| "definitions differ in length".into());
                        out.push(ShapeDifference {
                            container: db.clone(),
                            object: table.clone(),
                            detail: format!("table definition differs: {line}"),
                        });
                    }
                }
                (Some(_), None) => out.push(ShapeDifference {
                    container: db.clone(),
                    object: table.clone(),
                    detail: "table missing on the target".into(),
                }),
                _ => {}
            }
        }
        for db in Self::databases_of(units) {
            let src = self.objects(Side::Source, &db).await?;
            let tgt = self.objects(Side::Target, &db).await?;
            let tgt_set: BTreeMap<(&str, &str), ()> =
                tgt.iter().map(|(k, n)| ((*k, n.as_str()), ())).collect();
            for (kind, name) in &src {
                if !tgt_set.contains_key(&(*kind, name.as_str())) {
                    out.push(ShapeDifference {
                        container: db.clone(),
                        object: name.clone(),
                        detail: format!("{} missing on the target", kind.to_lowercase()),
                    });
                    continue;
                }
                let col = Self::create_column(kind);
                let a = self.show_create(Side::Source, kind, &db, name, col).await?;
                let b = self.show_create(Side::Target, kind, &db, name, col).await?;
                let norm =
                    |x: Option<(String, Option<String>)>| x.map(|(t, _)| schema::strip_definer(&t));
                if norm(a) != norm(b) {
                    out.push(ShapeDifference {
                        container: db.clone(),
                        object: name.clone(),
                        detail: format!("{} definition differs", kind.to_lowercase()),
                    });
                }
            }
            let src_set: BTreeSet<(&str, &str)> =
                src.iter().map(|(k, n)| (*k, n.as_str())).collect();
            for (kind, name) in &tgt {
                if !src_set.contains(&(*kind, name.as_str())) {
                    out.push(ShapeDifference {
                        container: db.clone(),
                        object: name.clone(),
                        detail: format!(
                            "{} on the target is not on the source",
                            kind.to_lowercase()
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn clear_range(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
    ) -> Result<(), StoreError> {
        let (db, table) = self.unit_table(unit);
        let info = self.table(db, table).await?;
        let (sql, params) = if info.keyless() {
            (format!("DELETE FROM {}", info.qualified), Vec::new())
        } else {
            let after = after.map(|c| self.decode(c, Side::Target)).transpose()?;
            let upto = upto.map(|c| self.decode(c, Side::Target)).transpose()?;
            let (cond, params) = info.range_condition(after.as_deref(), upto.as_deref());
            (format!("DELETE FROM {}{cond}", info.qualified), params)
        };
        let mut conn = self.conn(Side::Target).await?;
        conn.exec_drop(sql, params)
            .await
            .map_err(|e| self.err(Side::Target, e).in_unit(&unit.name))
    }

    async fn pause_target_side_effects(&self) -> Result<(), StoreError> {
        // Triggers on the target would fire on rows copied again; finish_target recreates them.
        let mut conn = self.conn(Side::Target).await?;
        for db in self.databases().await? {
            let triggers: Vec<String> = conn
                .exec(
                    "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?",
                    (db.as_str(),),
                )
                .await
                .map_err(|e| self.err(Side::Target, e))?;
            for t in triggers {
                conn.query_drop(format!(
                    "DROP TRIGGER IF EXISTS {}.{}",
                    ident(&db),
                    ident(&t)
                ))
                .await
                .map_err(|e| self.err(Side::Target, e))?;
            }
        }
        Ok(())
    }

    async fn freeze_source(&self, left_by_earlier_run: bool) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn(Side::Source).await?;
        let was: Option<Option<String>> = conn
            .query_first("SELECT @@GLOBAL.read_only")
            .await
            .map_err(|e| self.err(Side::Source, e))?;
        let was_on = matches!(was.flatten().as_deref(), Some("1") | Some("ON"));
        if was_on && left_by_earlier_run {
            *self.frozen.lock().expect("freeze flag") = true;
            return Ok(Some(format!(
                "mysql: source {} is still read_only from an earlier run of this job that was stopped; this run sets it back when it ends",
                self.source.address()
            )));
        }
        if was_on {
            return Ok(Some(
                "mysql: the source was already read_only before offload (left so at the end)"
                    .into(),
            ));
        }
        conn.query_drop("SET GLOBAL read_only = ON")
            .await
            .map_err(|e| self.err(Side::Source, e))?;
        // MySQL 8 also blocks SUPER users with super_read_only; MariaDB has no such variable.
        let _ = conn.query_drop("SET GLOBAL super_read_only = ON").await;
        *self.frozen.lock().expect("freeze flag") = true;
        tracing::warn!(store = "mysql", host = %self.source.address(), "source set read_only; offload sets it back when it ends (if offload is killed: SET GLOBAL read_only = OFF)");
        Ok(Some(format!(
            "mysql: source {} is read_only until offload ends",
            self.source.address()
        )))
    }

    async fn thaw_source(&self) -> Result<(), StoreError> {
        let frozen = std::mem::take(&mut *self.frozen.lock().expect("freeze flag"));
        if !frozen {
            return Ok(());
        }
        let mut conn = self.conn(Side::Source).await?;
        let _ = conn.query_drop("SET GLOBAL super_read_only = OFF").await;
        conn.query_drop("SET GLOBAL read_only = OFF")
            .await
            .map_err(|e| {
                let mut err = self.err(Side::Source, e);
                err.hint = format!(
                    "run SET GLOBAL read_only = OFF on the source ({}) as an administrator",
                    self.source.address()
                );
                err
            })?;
        tracing::info!(store = "mysql", host = %self.source.address(), "source writable again");
        Ok(())
    }

    fn render_range(&self, unit: &Unit, after: Option<&Cursor>, upto: Option<&Cursor>) -> String {
        let info = self
            .tables
            .lock()
            .expect("table cache")
            .get(&(unit.container.clone(), unit.object.clone()))
            .cloned();
        let Some(info) = info else {
            return format!("{}.{}", unit.container, unit.object);
        };
        if info.keyless() {
            return format!("{}.{} (whole table, no key)", unit.container, unit.object);
        }
        let show = |c: Option<&Cursor>| c.and_then(decode_cursor).map(|v| info.display_key(&v));
        let mut parts = Vec::new();
        if let Some(a) = show(after) {
            parts.push(format!("after ({a})"));
        }
        if let Some(u) = show(upto) {
            parts.push(format!("up to ({u})"));
        }
        let range = if parts.is_empty() {
            "all rows".to_string()
        } else {
            parts.join(" ")
        };
        format!("{}.{} {range}", unit.container, unit.object)
    }
}

#[cfg(test)]
mod tests {
    use super::{covers_all, load_info_count};

    #[test]
    fn a_table_is_whole_when_its_ranges_chain_from_start_to_end() {
        let r = |a: Option<&str>, u: Option<&str>| (a.map(String::from), u.map(String::from));
        assert!(covers_all(&[r(None, None)]));
        let parts = [
            r(Some("2"), None),
            r(None, Some("1")),
            r(Some("1"), Some("2")),
        ];
        assert!(covers_all(&parts));
        assert!(!covers_all(&parts[..2]));
        assert!(!covers_all(&[r(Some("1"), None)]));
        assert!(!covers_all(&[]));
    }

    #[test]
    fn load_data_info_is_read() {
        let info = "Records: 30000  Deleted: 12  Skipped: 0  Warnings: 1";
        assert_eq!(load_info_count(info, "Records"), Some(30000));
        assert_eq!(load_info_count(info, "Deleted"), Some(12));
        assert_eq!(load_info_count(info, "Warnings"), Some(1));
        assert_eq!(load_info_count("", "Records"), None);
    }
}
