//! Following the source's binary log after the copy: row events of the job's tables are applied
//! to the target in the source's transaction order, one target transaction per source
//! transaction, idempotently by key (the after-image with `REPLACE`, a delete by key), so that a
//! resume from the checkpoint (file and offset after the last applied commit) converges however
//! often a transaction is applied again. Values go through the copy's literals, so followed rows
//! digest equal to copied ones.
//!
//! Tables without a key cannot be written idempotently: an insert is an `INSERT`, a delete
//! removes one row equal in every column (`LIMIT 1`), and such a table is always verified whole.
//! A schema change (any statement other than a transaction's own on the job's databases) stops
//! following with the statement named; a log file the server no longer holds stops it too; both
//! point to the delta pass. Tested with MariaDB 10.11; MySQL 8's GTID events, JSON values and
//! `SHOW BINARY LOG STATUS` are handled but untested here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, EventData, GtidEvent, RowsEventData};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::*;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Value};

use super::binlog::{self, BinlogPosition};
use super::endpoint::{map_error, SettledPool};
use super::schema::{ident, TableInfo};
use super::values::{decode_cursor, encode_cursor, push_literal, ColumnClass};
use super::{MysqlStore, SESSION_COMMON};
use crate::core::follow::{Applied, Follower, Lag, StreamPosition, Touched};
use crate::core::{ErrorKind, Side, StoreError, StoreKind, Unit};

/// MariaDB event types mysql_common does not know: GTID (begins a transaction, or a standalone
/// statement), and the compressed and encrypted forms, which the follower cannot read.
const MARIADB_GTID_EVENT: u8 = 162;
const MARIADB_START_ENCRYPTION_EVENT: u8 = 164;
const MARIADB_COMPRESSED_EVENTS: std::ops::RangeInclusive<u8> = 165..=171;
/// MariaDB GTID flag: a statement without BEGIN/COMMIT around it (DDL, non-transactional).
const MARIADB_FL_STANDALONE: u8 = 1;
/// `@mariadb_slave_capability` of a replica that understands GTID events
/// (MARIA_SLAVE_CAPABILITY_GTID); without it MariaDB rewrites its own events into dummies.
const MARIADB_CAPABILITY_GTID: u8 = 4;

/// Longest wait for the rest of a transaction whose first events arrived.
const MID_TRANSACTION_STALL: Duration = Duration::from_secs(120);
/// How often the files the source holds are listed again for the lag.
const HEAD_REFRESH: Duration = Duration::from_secs(1);
/// Rows in one `DELETE ... WHERE (key) OR (key)` statement.
const DELETES_PER_STATEMENT: usize = 500;

/// How one column's values come out of the log and go into a statement.
#[derive(Debug, Clone)]
struct ColumnKind {
    class: ColumnClass,
    /// `information_schema.COLUMNS.DATA_TYPE`, lower case.
    data_type: String,
    unsigned: bool,
    /// The character set of a text column whose bytes are not utf8mb4's: the log carries them
    /// as stored, so they are written with that character set's introducer.
    charset: Option<String>,
}

/// A followed table: the copy's plan of it, its columns, and the job's units of it.
struct Followed {
    info: TableInfo,
    columns: Vec<ColumnKind>,
    /// More than one when the copy split the table into key ranges.
    units: Vec<Unit>,
    /// Whether the key's values from the log name rows as the copy's cursors do (not when a key
    /// column's bytes are in another character set than utf8mb4): else the unit is touched whole.
    keys_nameable: bool,
}

impl Followed {
    /// The unit a key belongs to (units of a split table cover integer key ranges).
    fn unit_for(&self, key: &[Value]) -> &Unit {
        if self.units.len() > 1 {
            if let Some(k) = key.first().and_then(as_i128) {
                let bound = |c: Option<&crate::core::Cursor>| {
                    c.and_then(decode_cursor)
                        .and_then(|v| v.first().and_then(as_i128))
                };
                if let Some(u) = self.units.iter().find(|u| {
                    bound(u.range.after.as_ref()).is_none_or(|a| k > a)
                        && bound(u.range.upto.as_ref()).is_none_or(|b| k <= b)
                }) {
                    return u;
                }
            }
        }
        &self.units[0]
    }

    fn touched(&self, key: Option<&[Value]>) -> Touched {
        match key.filter(|_| self.keys_nameable) {
            Some(k) => Touched {
                unit: self.unit_for(k).name.clone(),
                key: Some(encode_cursor(k)),
            },
            None => Touched {
                unit: self.units[0].name.clone(),
                key: None,
            },
        }
    }

    /// `(a, b, c)` of a row's writable columns as literals.
    fn row_literal(&self, out: &mut String, row: &[Value]) {
        out.push('(');
        for (n, (i, _)) in self.info.writable().iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            push_value(out, &row[*i], &self.columns[*i]);
        }
        out.push(')');
    }

    /// `(k1 = x AND k2 = y)` for a keyed table.
    fn key_condition(&self, out: &mut String, row: &[Value]) {
        out.push('(');
        for (n, &k) in self.info.key.iter().enumerate() {
            if n > 0 {
                out.push_str(" AND ");
            }
            out.push_str(&ident(&self.info.columns[k].name));
            out.push_str(" = ");
            push_value(out, &row[k], &self.columns[k]);
        }
        out.push(')');
    }

    /// Every writable column equal (NULL-safe), for a keyless table's delete.
    fn full_row_condition(&self, out: &mut String, row: &[Value]) {
        for (n, (i, _)) in self.info.writable().iter().enumerate() {
            if n > 0 {
                out.push_str(" AND ");
            }
            out.push_str(&ident(&self.info.columns[*i].name));
            out.push_str(" <=> ");
            push_value(out, &row[*i], &self.columns[*i]);
        }
    }
}

fn as_i128(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some(*i as i128),
        Value::UInt(u) => Some(*u as i128),
        _ => None,
    }
}

/// A value as a literal: the copy's literals, with text in a non-utf8mb4 character set as
/// `_charset X'..'` (the log holds the stored bytes).
fn push_value(out: &mut String, v: &Value, col: &ColumnKind) {
    match (v, &col.charset) {
        (Value::Bytes(b), Some(cs)) => {
            out.push('_');
            out.push_str(cs);
            push_literal(out, &Value::Bytes(b.clone()), ColumnClass::Binary);
        }
        _ => push_literal(out, v, col.class),
    }
}

/// Character sets whose stored bytes are what a utf8mb4 session reads (as the copy decides).
fn same_bytes_as_utf8mb4(charset: &str) -> bool {
    matches!(
        charset.to_ascii_lowercase().as_str(),
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" | "binary"
    )
}

/// A value from the log as the copy would have read it: unsigned integers unsigned (the log
/// carries no signedness unless `binlog_row_metadata` says so), SET as its bit mask, TIMESTAMP
/// as its UTC date and time (the follower's session is in UTC), YEAR as its number, JSON
/// (MySQL 8) as its text.
fn value_of(v: BinlogValue<'static>, col: &ColumnKind) -> Result<Value, String> {
    let v = match v {
        BinlogValue::Value(v) => v,
        j @ BinlogValue::Jsonb(_) => {
            Value::try_from(j).map_err(|e| format!("a JSON value could not be read: {e}"))?
        }
        BinlogValue::JsonDiff(_) => return Err(
            "a partial JSON update (binlog_row_value_options=PARTIAL_JSON) carries no full row; set binlog_row_value_options='' on the source".into(),
        ),
    };
    let bits = match col.data_type.as_str() {
        "tinyint" => 8,
        "smallint" => 16,
        "mediumint" => 24,
        "int" | "integer" => 32,
        "bigint" => 64,
        _ => 0,
    };
    Ok(match (col.data_type.as_str(), v) {
        (_, Value::Int(i)) if bits > 0 && col.unsigned => {
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            Value::UInt((i as u64) & mask)
        }
        ("set", Value::Bytes(b)) => {
            let mut mask = 0u64;
            for (n, byte) in b.iter().take(8).enumerate() {
                mask |= u64::from(*byte) << (8 * n);
            }
            Value::UInt(mask)
        }
        ("timestamp", Value::Bytes(b)) => timestamp_value(&b)?,
        ("timestamp", Value::Int(s)) => utc_datetime(s, 0),
        ("year", Value::Bytes(b)) => {
            let y: i64 = std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("unreadable YEAR value {b:?}"))?;
            // The log stores YEAR as years after 1900; 0 (1900) is the zero year 0000.
            Value::Int(if y == 1900 { 0 } else { y })
        }
        (_, v) => v,
    })
}

/// `seconds[.micros]` since the epoch, as mysql_common reads TIMESTAMP(N).
fn timestamp_value(text: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(text).map_err(|_| "unreadable TIMESTAMP value".to_string())?;
    let (secs, micros) = match text.split_once('.') {
        Some((s, f)) => (s, format!("{f:0<6}")[..6].parse::<u32>().unwrap_or(0)),
        None => (text, 0),
    };
    let secs: i64 = secs
        .parse()
        .map_err(|_| format!("unreadable TIMESTAMP value {text}"))?;
    Ok(utc_datetime(secs, micros))
}

/// The UTC date and time of a Unix time; 0 is MySQL's zero timestamp.
fn utc_datetime(secs: i64, micros: u32) -> Value {
    if secs == 0 && micros == 0 {
        return Value::Date(0, 0, 0, 0, 0, 0, 0);
    }
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Value::Date(
        y as u16,
        m as u8,
        d as u8,
        (rest / 3600) as u8,
        ((rest % 3600) / 60) as u8,
        (rest % 60) as u8,
        micros,
    )
}

/// What a statement logged as SQL means for following.
#[derive(Debug, PartialEq)]
enum Statement {
    Begin,
    Commit,
    Rollback,
    /// Changes no table's rows or shape (grants, users, FLUSH, ANALYZE, temporary tables,
    /// savepoints, the dummies MariaDB sends for events older replicas do not know).
    Harmless,
    /// A schema change or a statement logged as SQL instead of rows.
    Other,
}

fn classify(query: &str) -> Statement {
    let q = strip_leading_comments(query);
    let words: Vec<String> = q
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty())
        .take(3)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match (w(0), w(1)) {
        ("", _) => Statement::Harmless,
        ("BEGIN", _) | ("START", "TRANSACTION") | ("XA", "START") | ("XA", "BEGIN") => {
            Statement::Begin
        }
        ("COMMIT", _) | ("XA", "COMMIT") => Statement::Commit,
        ("ROLLBACK", "TO") => Statement::Harmless,
        ("ROLLBACK", _) | ("XA", "ROLLBACK") => Statement::Rollback,
        ("SAVEPOINT", _) | ("RELEASE", _) | ("XA", _) => Statement::Harmless,
        ("GRANT", _)
        | ("REVOKE", _)
        | ("FLUSH", _)
        | ("ANALYZE", _)
        | ("OPTIMIZE", _)
        | ("REPAIR", _)
        | ("CHECK", _)
        | ("SET", _) => Statement::Harmless,
        ("CREATE" | "DROP" | "ALTER" | "RENAME", "USER" | "ROLE") => Statement::Harmless,
        ("CREATE" | "DROP", "TEMPORARY") => Statement::Harmless,
        _ => Statement::Other,
    }
}

/// The statement without leading whitespace and `/* */` or `#` comments (MariaDB's dummy
/// events are such comments).
fn strip_leading_comments(query: &str) -> &str {
    let mut q = query.trim_start();
    loop {
        if let Some(rest) = q.strip_prefix("/*") {
            // Executable comments (`/*!40101 ...*/`) are statements.
            if rest.starts_with('!') {
                return q;
            }
            q = rest
                .split_once("*/")
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else if q.starts_with('#') || q.starts_with("-- ") {
            q = q
                .split_once('\n')
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else {
            return q;
        }
    }
}

/// Whether `query` names database `db` as a qualifier or object (`db.t`, `` `db`.t ``,
/// `DATABASE db`).
fn mentions(query: &str, db: &str) -> bool {
    let candidates = [format!("`{}`", db.replace('`', "``")), db.to_string()];
    for needle in &candidates {
        let mut from = 0;
        while let Some(at) = query[from..].find(needle.as_str()) {
            let start = from + at;
            let end = start + needle.len();
            let before = query[..start].chars().next_back();
            let after = query[end..].chars().next();
            let ident_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
            if !before.is_some_and(ident_char)
                && before != Some('`')
                && !after.is_some_and(ident_char)
                && after != Some('`')
            {
                return true;
            }
            from = end;
        }
    }
    false
}

/// Statements waiting to be sent: consecutive changes of one kind to one table share one.
enum Pending {
    Nothing,
    Upsert {
        table: (String, String),
        sql: String,
    },
    Delete {
        table: (String, String),
        sql: String,
        rows: usize,
    },
}

/// Progress of one `apply` call.
#[derive(Default)]
struct Progress {
    events: u64,
    transactions: u64,
    touched: Vec<Touched>,
    touched_seen: BTreeSet<String>,
}

impl Progress {
    fn touch(&mut self, t: Touched) {
        let id = format!(
            "{}\u{0}{}",
            t.unit,
            t.key.as_ref().map(|k| k.0.to_string()).unwrap_or_default()
        );
        if self.touched_seen.insert(id) {
            self.touched.push(t);
        }
    }
}

/// The MySQL source's binary log, applied to the target.
pub(super) struct MysqlFollower {
    source_address: String,
    target_address: String,
    stream: BinlogStream,
    /// Source connections for table definitions and the log's end (not the stream's).
    source_pool: SettledPool,
    /// The target connection, from a pool of one with the follower's session.
    target: Conn,
    /// The job's units by (database, table).
    units: HashMap<(String, String), Vec<Unit>>,
    databases: BTreeSet<String>,
    tables: HashMap<(String, String), Arc<Followed>>,
    statement_bytes: usize,
    /// Where the next event would be read from after the last transaction boundary: the
    /// checkpoint.
    position: BinlogPosition,
    /// The file and offset of the event being read (inside a transaction, ahead of `position`).
    reading: BinlogPosition,
    /// GTID of the transaction being read.
    gtid: Option<String>,
    in_transaction: bool,
    /// A MariaDB standalone statement (no BEGIN/COMMIT) comes next.
    standalone: bool,
    /// A target transaction is open for the source transaction being read.
    target_open: bool,
    pending: Pending,
    /// Seconds between the source's commit of the last applied transaction and its apply.
    last_lag: Option<f64>,
    /// The source's files and sizes, and when they were listed.
    files: Option<(Instant, Vec<(String, u64)>)>,
}

/// A random-enough replica id for the stream, so that two followers never share one (the
/// source would drop the older) and none is the source's own.
fn replica_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0x4f00_0000 | ((std::process::id() ^ nanos.rotate_left(7)) & 0x00ff_ffff)
}

/// A source log file the server no longer holds: the changes since the checkpoint are gone
/// from the log, and only the delta pass can find them.
fn log_gone(address: &str, at: &BinlogPosition, detail: &str) -> StoreError {
    StoreError::new(
        StoreKind::Mysql,
        address,
        ErrorKind::Query,
        format!(
            "the source no longer holds binary log {} where following must continue ({detail})",
            at.show()
        ),
        "the changes since then cannot be followed; copy what changed with the delta pass instead: `offload copy --resume --delta` (and keep binary logs longer, binlog_expire_logs_seconds, before following again)",
    )
}

pub(super) async fn open(
    store: &MysqlStore,
    from: &StreamPosition,
    units: &[Unit],
) -> Result<MysqlFollower, StoreError> {
    let source_address = store.source.address();
    let start = BinlogPosition::from_stream(from).ok_or_else(|| {
        StoreError::new(
            StoreKind::Mysql,
            &source_address,
            ErrorKind::Input,
            format!("{} is not a binary log position", from.0),
            "the job folder was written by another version; copy what changed with `offload copy --resume --delta`",
        )
    })?;
    let mut aux = store.conn(Side::Source).await?;
    if !binlog::log_bin(&mut aux)
        .await
        .map_err(|e| store.err(Side::Source, e))?
    {
        return Err(StoreError::new(
            StoreKind::Mysql,
            &source_address,
            ErrorKind::Unsupported,
            "the source writes no binary log (log_bin is OFF)",
            "start the source with --log-bin --binlog-format=ROW to follow it; the final pass copies what changed with the delta pass (offload copy --resume --delta)",
        ));
    }
    // A purged file is said before anything else; without the privilege to list the files,
    // the stream itself says it.
    let files = binlog::files(&mut aux).await.ok();
    if let Some(files) = &files {
        if !files.iter().any(|(f, _)| *f == start.file) {
            return Err(log_gone(
                &source_address,
                &start,
                "it was purged or expired",
            ));
        }
    }
    let mariadb = binlog::is_mariadb(&mut aux)
        .await
        .map_err(|e| store.err(Side::Source, e))?;
    drop(aux);
    // Triggers on the target would fire on applied rows whose effects the log carries too.
    super::finish::pause_target_side_effects(store).await?;

    let mut by_table: HashMap<(String, String), Vec<Unit>> = HashMap::new();
    for u in units {
        by_table
            .entry((u.container.clone(), u.object.clone()))
            .or_default()
            .push(u.clone());
    }
    let databases = units.iter().map(|u| u.container.clone()).collect();

    let source_setup: Vec<String> = SESSION_COMMON.iter().map(|s| s.to_string()).collect();
    let mut target_setup = source_setup.clone();
    target_setup.extend([
        "SET foreign_key_checks = 0".to_string(),
        "SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'".to_string(),
    ]);
    let source_pool = SettledPool::new(&store.source, source_setup, 2);
    let target_pool = SettledPool::new(&store.target, target_setup, 1);
    let target = target_pool
        .get_conn()
        .await
        .map_err(|e| store.err(Side::Target, e))?;

    let mut conn = source_pool
        .dedicated_conn()
        .await
        .map_err(|e| store.err(Side::Source, e))?;
    if mariadb {
        conn.query_drop(format!(
            "SET @mariadb_slave_capability = {MARIADB_CAPABILITY_GTID}"
        ))
        .await
        .map_err(|e| store.err(Side::Source, e))?;
    }
    let request = BinlogStreamRequest::new(replica_id())
        .with_filename(start.file.as_bytes())
        .with_pos(start.pos);
    let stream = conn
        .get_binlog_stream(request)
        .await
        .map_err(|e| stream_error(&source_address, &start, e))?;
    tracing::info!(store = "mysql", host = %source_address, from = %start.show(), "following the source's binary log");
    Ok(MysqlFollower {
        target_address: store.target.address(),
        source_address,
        stream,
        source_pool,
        target,
        units: by_table,
        databases,
        tables: HashMap::new(),
        statement_bytes: store.options.statement_bytes,
        reading: start.clone(),
        position: start,
        gtid: None,
        in_transaction: false,
        standalone: false,
        target_open: false,
        pending: Pending::Nothing,
        last_lag: None,
        files: files.map(|f| (Instant::now(), f)),
    })
}

/// An error of the stream, in words that say what to do.
fn stream_error(address: &str, at: &BinlogPosition, e: mysql_async::Error) -> StoreError {
    match &e {
        // ER_MASTER_FATAL_ERROR_READING_BINLOG: the file is gone or the position is not in it.
        mysql_async::Error::Server(s) if s.code == 1236 => log_gone(address, at, &s.message),
        mysql_async::Error::Server(s) if [1227, 1045, 1044].contains(&s.code) => StoreError::new(
            StoreKind::Mysql,
            address,
            ErrorKind::Auth,
            format!("the source refused to send its binary log: {}", s.message),
            "grant the source user REPLICATION SLAVE and REPLICATION CLIENT (MariaDB: REPLICATION SLAVE and BINLOG MONITOR), then run `offload follow` again",
        ),
        _ => {
            let mut err = map_error(Side::Source, address, e);
            err.detail = format!("reading the binary log at {}: {}", at.show(), err.detail);
            err.hint = "run `offload follow` again: it continues from its checkpoint".into();
            err
        }
    }
}

impl MysqlFollower {
    fn target_err(&self, e: mysql_async::Error) -> StoreError {
        map_error(Side::Target, &self.target_address, e)
    }

    fn source_err(&self, e: mysql_async::Error) -> StoreError {
        map_error(Side::Source, &self.source_address, e)
    }

    /// The followed table of a row event, loaded from the source on first use; `None` for
    /// tables outside the job.
    async fn followed(
        &mut self,
        db: &str,
        table: &str,
        log_columns: u64,
    ) -> Result<Option<Arc<Followed>>, StoreError> {
        let key = (db.to_string(), table.to_string());
        let Some(units) = self.units.get(&key) else {
            return Ok(None);
        };
        let followed = match self.tables.get(&key) {
            Some(f) => f.clone(),
            None => {
                let mut conn = self
                    .source_pool
                    .get_conn()
                    .await
                    .map_err(|e| self.source_err(e))?;
                let info = TableInfo::load(&mut conn, db, table)
                    .await
                    .map_err(|e| self.source_err(e))?;
                let cols: Vec<(String, String, Option<String>)> = conn
                    .exec(
                        "SELECT DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS
                         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                        (db, table),
                    )
                    .await
                    .map_err(|e| self.source_err(e))?;
                let columns: Vec<ColumnKind> = cols
                    .into_iter()
                    .map(|(data_type, column_type, charset)| {
                        let data_type = data_type.to_ascii_lowercase();
                        let class = ColumnClass::from_data_type(&data_type);
                        let charset = charset.filter(|cs| {
                            class == ColumnClass::Text
                                && data_type != "json"
                                && !same_bytes_as_utf8mb4(cs)
                                && cs.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        });
                        ColumnKind {
                            class,
                            unsigned: column_type.to_ascii_lowercase().contains("unsigned"),
                            data_type,
                            charset,
                        }
                    })
                    .collect();
                let keys_nameable = info.key.iter().all(|&k| columns[k].charset.is_none());
                let f = Arc::new(Followed {
                    info,
                    columns,
                    units: units.clone(),
                    keys_nameable,
                });
                self.tables.insert(key, f.clone());
                f
            }
        };
        if followed.columns.len() as u64 != log_columns || followed.info.columns.is_empty() {
            return Err(StoreError::new(
                StoreKind::Mysql,
                &self.source_address,
                ErrorKind::Unsupported,
                format!(
                    "{db}.{table} has {} column(s) on the source now but {log_columns} in the binary log at {}: its definition changed after these changes were written",
                    followed.columns.len(),
                    self.reading.show()
                ),
                "following cannot apply rows across a schema change: make the target's table match the source's, then copy what changed with `offload copy --resume --delta`",
            ));
        }
        Ok(Some(followed))
    }

    /// Send what is pending.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let sql = match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => return Ok(()),
            Pending::Upsert { sql, .. } | Pending::Delete { sql, .. } => sql,
        };
        self.begin_target().await?;
        self.target
            .query_drop(sql)
            .await
            .map_err(|e| map_error(Side::Target, &self.target_address, e))
    }

    async fn begin_target(&mut self) -> Result<(), StoreError> {
        if !self.target_open {
            self.target
                .query_drop("START TRANSACTION")
                .await
                .map_err(|e| map_error(Side::Target, &self.target_address, e))?;
            self.target_open = true;
        }
        Ok(())
    }

    /// Queue the after-image of a row (insert, or the new row of an update).
    async fn upsert(&mut self, t: &Followed, row: &[Value]) -> Result<(), StoreError> {
        let table = (t.units[0].container.clone(), t.units[0].object.clone());
        let same = matches!(&self.pending, Pending::Upsert { table: p, sql } if *p == table && sql.len() < self.statement_bytes);
        if !same {
            self.flush().await?;
            self.pending = Pending::Upsert {
                table,
                sql: t.info.insert_prefix.clone(),
            };
        }
        if let Pending::Upsert { sql, .. } = &mut self.pending {
            if same {
                sql.push(',');
            }
            t.row_literal(sql, row);
        }
        Ok(())
    }

    /// Queue the removal of a row: by key, or (keyless) one row equal in every column.
    async fn delete(&mut self, t: &Followed, row: &[Value]) -> Result<(), StoreError> {
        if t.info.keyless() {
            self.flush().await?;
            let mut sql = format!("DELETE FROM {} WHERE ", t.info.qualified);
            t.full_row_condition(&mut sql, row);
            sql.push_str(" LIMIT 1");
            self.pending = Pending::Delete {
                table: (String::new(), String::new()),
                sql,
                rows: DELETES_PER_STATEMENT,
            };
            return self.flush().await;
        }
        let table = (t.units[0].container.clone(), t.units[0].object.clone());
        let same = matches!(&self.pending, Pending::Delete { table: p, rows, .. } if *p == table && *rows < DELETES_PER_STATEMENT);
        if !same {
            self.flush().await?;
            self.pending = Pending::Delete {
                table,
                sql: format!("DELETE FROM {} WHERE ", t.info.qualified),
                rows: 0,
            };
        }
        if let Pending::Delete { sql, rows, .. } = &mut self.pending {
            if *rows > 0 {
                sql.push_str(" OR ");
            }
            t.key_condition(sql, row);
            *rows += 1;
        }
        Ok(())
    }

    /// Apply one row event of a followed table.
    async fn rows_event(
        &mut self,
        data: RowsEventData<'_>,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        let table_id = data.table_id();
        let Some(tme) = self.stream.get_tme(table_id).cloned() else {
            return Err(self.unreadable(format!(
                "a row event for table id {table_id} came without its table map"
            )));
        };
        let db = tme.database_name().into_owned();
        let table = tme.table_name().into_owned();
        let Some(t) = self.followed(&db, &table, data.num_columns()).await? else {
            return Ok(());
        };
        let columns = data.num_columns() as usize;
        let before_full = data
            .columns_before_image()
            .is_none_or(|b| b.count_ones() == columns);
        let after_full = data
            .columns_after_image()
            .is_none_or(|b| b.count_ones() == columns);
        if !before_full || !after_full {
            return Err(StoreError::new(
                StoreKind::Mysql,
                &self.source_address,
                ErrorKind::Unsupported,
                format!(
                    "the binary log holds partial rows of {db}.{table} at {} (binlog_row_image is not FULL)",
                    self.reading.show()
                ),
                "set binlog_row_image=FULL on the source (SET GLOBAL, and in its configuration), then copy what changed with `offload copy --resume --delta` and follow again",
            ));
        }
        let mut images = Vec::new();
        for pair in data.rows(&tme) {
            let (before, after) = pair.map_err(|e| {
                self.unreadable(format!("a row of {db}.{table} could not be read: {e}"))
            })?;
            let convert = |row: Option<BinlogRow>| -> Result<Option<Vec<Value>>, String> {
                let Some(row) = row else { return Ok(None) };
                row.unwrap()
                    .into_iter()
                    .zip(&t.columns)
                    .map(|(v, c)| value_of(v, c))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            };
            let before =
                convert(before).map_err(|e| self.unreadable(format!("{db}.{table}: {e}")))?;
            let after =
                convert(after).map_err(|e| self.unreadable(format!("{db}.{table}: {e}")))?;
            images.push((before, after));
        }
        for (before, after) in images {
            progress.events += 1;
            let key_of = |row: &Vec<Value>| t.info.key_of(row);
            match (before, after) {
                (None, Some(after)) => {
                    self.upsert(&t, &after).await?;
                    progress.touch(t.touched(key_of(&after).as_deref()));
                }
                (Some(before), None) => {
                    self.delete(&t, &before).await?;
                    progress.touch(t.touched(key_of(&before).as_deref()));
                }
                (Some(before), Some(after)) => {
                    let (old, new) = (key_of(&before), key_of(&after));
                    // A keyless row, or a row whose key changed: the old one goes first.
                    if t.info.keyless() || old != new {
                        self.delete(&t, &before).await?;
                        progress.touch(t.touched(old.as_deref()));
                    }
                    self.upsert(&t, &after).await?;
                    progress.touch(t.touched(new.as_deref()));
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    fn unreadable(&self, detail: String) -> StoreError {
        StoreError::new(
            StoreKind::Mysql,
            &self.source_address,
            ErrorKind::Unsupported,
            format!("{detail} (binary log at {})", self.reading.show()),
            "report this with the source's server version; copy what changed with `offload copy --resume --delta` meanwhile",
        )
    }

    /// The source transaction ended: its target transaction commits, and the checkpoint
    /// moves past it.
    async fn commit(&mut self, timestamp: u32, progress: &mut Progress) -> Result<(), StoreError> {
        self.flush().await?;
        if self.target_open {
            self.target
                .query_drop("COMMIT")
                .await
                .map_err(|e| self.target_err(e))?;
            self.target_open = false;
            progress.transactions += 1;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.last_lag = Some((now - f64::from(timestamp)).max(0.0));
        }
        self.in_transaction = false;
        self.boundary();
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), StoreError> {
        self.pending = Pending::Nothing;
        if self.target_open {
            self.target
                .query_drop("ROLLBACK")
                .await
                .map_err(|e| self.target_err(e))?;
            self.target_open = false;
        }
        self.in_transaction = false;
        self.boundary();
        Ok(())
    }

    /// Between transactions: the checkpoint is where reading is (never back: an event the
    /// server sends again, such as the format description at the start, has no later place).
    fn boundary(&mut self) {
        if self.reading.order(&self.position) == std::cmp::Ordering::Less {
            return;
        }
        self.position = BinlogPosition {
            gtid: self.gtid.clone().or_else(|| self.position.gtid.clone()),
            ..self.reading.clone()
        };
    }

    /// A statement logged as SQL.
    async fn query(
        &mut self,
        schema: &str,
        query: &str,
        timestamp: u32,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        match classify(query) {
            Statement::Begin => {
                self.in_transaction = true;
                Ok(())
            }
            Statement::Commit => self.commit(timestamp, progress).await,
            Statement::Rollback => self.rollback().await,
            Statement::Harmless => {
                self.after_statement();
                Ok(())
            }
            Statement::Other => {
                let ours = self.databases.contains(schema)
                    || self.databases.iter().any(|db| mentions(query, db));
                if !ours {
                    self.after_statement();
                    return Ok(());
                }
                let shown: String = query.chars().take(300).collect();
                let more = if query.chars().count() > 300 {
                    " ..."
                } else {
                    ""
                };
                Err(StoreError::new(
                    StoreKind::Mysql,
                    &self.source_address,
                    ErrorKind::Unsupported,
                    format!(
                        "the source ran `{shown}{more}`{} at binary log {} while offload followed it: a schema change (or a statement logged as SQL instead of rows) on the job's databases, which following cannot apply",
                        if schema.is_empty() { String::new() } else { format!(" in database `{schema}`") },
                        self.reading.show()
                    ),
                    "following stopped before it, at its checkpoint. Make the same change on the target, then copy what changed with the delta pass: `offload copy --resume --delta` (following cannot continue past the statement; for statements logged as SQL, set binlog_format=ROW on the source)",
                ))
            }
        }
    }

    /// After a statement outside a transaction (standalone), the position moves past it.
    fn after_statement(&mut self) {
        if self.standalone || !self.in_transaction {
            self.standalone = false;
            self.in_transaction = false;
            self.boundary();
        }
    }

    /// Handle one event of the stream.
    async fn event(&mut self, event: Event, progress: &mut Progress) -> Result<(), StoreError> {
        let header = event.header();
        let kind = header.event_type_raw();
        if header.log_pos() > 0 {
            self.reading.pos = u64::from(header.log_pos());
        }
        match kind {
            MARIADB_GTID_EVENT => {
                let d = event.data();
                if d.len() >= 13 {
                    let seq = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
                    let domain = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
                    self.gtid = Some(format!("{domain}-{}-{seq}", header.server_id()));
                    self.standalone = d[12] & MARIADB_FL_STANDALONE != 0;
                    self.in_transaction = !self.standalone;
                }
                return Ok(());
            }
            MARIADB_START_ENCRYPTION_EVENT => {
                return Err(self.unreadable(
                    "the source encrypts its binary log (encrypt_binlog=ON), which offload cannot read"
                        .into(),
                ))
            }
            k if MARIADB_COMPRESSED_EVENTS.contains(&k) => {
                return Err(self.unreadable(
                    "the source compresses its binary log events (log_bin_compress=ON), which offload cannot read; set log_bin_compress=OFF"
                        .into(),
                ))
            }
            _ => {}
        }
        let data = match event.read_data() {
            Ok(Some(d)) => d,
            // MariaDB's own events (annotations, checkpoints, GTID lists) and others that carry
            // no row: the position moves past them between transactions.
            Ok(None) => {
                if !self.in_transaction {
                    self.boundary();
                }
                return Ok(());
            }
            Err(e) => {
                return Err(
                    self.unreadable(format!("an event of type {kind} could not be read: {e}"))
                )
            }
        };
        match data {
            EventData::RotateEvent(r) => {
                let name = r.name().into_owned();
                if name != self.reading.file {
                    self.reading = BinlogPosition {
                        file: name,
                        pos: r.position(),
                        gtid: None,
                    };
                }
                if !self.in_transaction {
                    self.boundary();
                }
            }
            EventData::GtidEvent(g) => {
                self.gtid = Some(mysql_gtid(&g));
            }
            EventData::QueryEvent(q) => {
                let schema = q.schema().into_owned();
                let query = q.query().into_owned();
                self.query(&schema, &query, header.timestamp(), progress)
                    .await?;
            }
            EventData::XidEvent(_) => self.commit(header.timestamp(), progress).await?,
            EventData::RowsEvent(rows) => {
                if !self.in_transaction {
                    // Rows outside BEGIN (a non-transactional table under MariaDB's
                    // standalone GTID): they form their own transaction.
                    self.in_transaction = true;
                }
                self.rows_event(rows, progress).await?;
            }
            EventData::TransactionPayloadEvent(_) => {
                // MySQL's compressed transactions: the stream hands their events on one by one.
            }
            _ => {
                if !self.in_transaction {
                    self.boundary();
                }
            }
        }
        Ok(())
    }

    /// The source's files and sizes, listed at most once a second.
    async fn source_files(&mut self) -> Option<Vec<(String, u64)>> {
        if let Some((at, files)) = &self.files {
            if at.elapsed() < HEAD_REFRESH {
                return Some(files.clone());
            }
        }
        let mut conn = self.source_pool.get_conn().await.ok()?;
        let files = binlog::files(&mut conn).await.ok()?;
        self.files = Some((Instant::now(), files.clone()));
        Some(files)
    }
}

/// `uuid:number` of a MySQL GTID event.
fn mysql_gtid(g: &GtidEvent) -> String {
    let s = g.sid();
    let hex = hex::encode(s);
    format!(
        "{}-{}-{}-{}-{}:{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32],
        g.gno()
    )
}

#[async_trait]
impl Follower for MysqlFollower {
    async fn apply(&mut self, wait: Duration) -> Result<Applied, StoreError> {
        let deadline = Instant::now() + wait;
        let mut progress = Progress::default();
        let mut idle = false;
        loop {
            // One checkpoint per applied transaction: return at the first commit that wrote
            // to the target, or at a boundary once `wait` is over.
            if !self.in_transaction && (progress.transactions > 0 || Instant::now() >= deadline) {
                break;
            }
            let left = if self.in_transaction {
                MID_TRANSACTION_STALL
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let next = tokio::time::timeout(left, self.stream.next()).await;
            let event = match next {
                Err(_) if !self.in_transaction => {
                    idle = true;
                    break;
                }
                Err(_) => {
                    return Err(StoreError::new(
                        StoreKind::Mysql,
                        &self.source_address,
                        ErrorKind::Transient,
                        format!(
                            "the source sent nothing for {} s in the middle of a transaction (binary log at {})",
                            MID_TRANSACTION_STALL.as_secs(),
                            self.reading.show()
                        ),
                        "run `offload follow` again: it continues from its checkpoint before that transaction",
                    ))
                }
                Ok(None) => {
                    return Err(StoreError::new(
                        StoreKind::Mysql,
                        &self.source_address,
                        ErrorKind::Transient,
                        format!(
                            "the source ended the binary log stream at {}",
                            self.reading.show()
                        ),
                        "run `offload follow` again: it continues from its checkpoint",
                    ))
                }
                Ok(Some(Err(e))) => {
                    return Err(stream_error(&self.source_address, &self.position, e))
                }
                Ok(Some(Ok(event))) => event,
            };
            self.event(event, &mut progress).await?;
        }
        let behind = match self.source_files().await {
            Some(files) => binlog::bytes_behind(&self.position, &files),
            None => None,
        };
        let seconds = if idle || behind == Some(0) {
            Some(0.0)
        } else {
            self.last_lag
        };
        Ok(Applied {
            position: self.position.to_stream(),
            events: progress.events,
            transactions: progress.transactions,
            lag: Lag {
                seconds,
                behind,
                behind_unit: "bytes".into(),
            },
            touched: progress.touched,
        })
    }

    async fn source_head(&mut self) -> Result<StreamPosition, StoreError> {
        let mut conn = self
            .source_pool
            .get_conn()
            .await
            .map_err(|e| self.source_err(e))?;
        match binlog::head(&mut conn).await {
            Ok(Some(head)) => Ok(head.to_stream()),
            Ok(None) => Err(StoreError::new(
                StoreKind::Mysql,
                &self.source_address,
                ErrorKind::Unsupported,
                "the source no longer writes a binary log",
                "copy what changed with `offload copy --resume --delta`",
            )),
            Err(e) => {
                let mut err = self.source_err(e);
                err.hint = "grant the source user REPLICATION CLIENT (MariaDB: BINLOG MONITOR) so the end of its binary log can be read".into();
                Err(err)
            }
        }
    }

    fn caught_up(&self, head: &StreamPosition) -> bool {
        let Some(head) = BinlogPosition::from_stream(head) else {
            return false;
        };
        !self.in_transaction && self.position.order(&head) != std::cmp::Ordering::Less
    }

    async fn close(self: Box<Self>) {
        let this = *self;
        let _ = this.stream.close().await;
        let mut target = this.target;
        if this.target_open {
            let _ = target.query_drop("ROLLBACK").await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(data_type: &str, unsigned: bool) -> ColumnKind {
        ColumnKind {
            class: ColumnClass::from_data_type(data_type),
            data_type: data_type.into(),
            unsigned,
            charset: None,
        }
    }

    fn v(x: Value) -> BinlogValue<'static> {
        BinlogValue::Value(x)
    }

    #[test]
    fn log_values_become_what_the_copy_reads() {
        assert_eq!(
            value_of(v(Value::Int(-1)), &col("tinyint", true)).unwrap(),
            Value::UInt(255)
        );
        assert_eq!(
            value_of(v(Value::Int(-1)), &col("mediumint", true)).unwrap(),
            Value::UInt(16_777_215)
        );
        assert_eq!(
            value_of(v(Value::Int(-1)), &col("bigint", true)).unwrap(),
            Value::UInt(u64::MAX)
        );
        assert_eq!(
            value_of(v(Value::Int(-1)), &col("int", false)).unwrap(),
            Value::Int(-1)
        );
        assert_eq!(
            value_of(v(Value::Bytes(vec![5, 1])), &col("set", false)).unwrap(),
            Value::UInt(261)
        );
        assert_eq!(
            value_of(v(Value::Bytes(b"1900".to_vec())), &col("year", true)).unwrap(),
            Value::Int(0)
        );
        assert_eq!(
            value_of(v(Value::Bytes(b"2024".to_vec())), &col("year", true)).unwrap(),
            Value::Int(2024)
        );
        assert_eq!(
            value_of(
                v(Value::Bytes(b"1709251199.5".to_vec())),
                &col("timestamp", false)
            )
            .unwrap(),
            Value::Date(2024, 2, 29, 23, 59, 59, 500_000)
        );
        assert_eq!(
            value_of(v(Value::Bytes(b"0".to_vec())), &col("timestamp", false)).unwrap(),
            Value::Date(0, 0, 0, 0, 0, 0, 0)
        );
        assert_eq!(utc_datetime(1, 0), Value::Date(1970, 1, 1, 0, 0, 1, 0));
        assert_eq!(
            utc_datetime(2_147_483_647, 0),
            Value::Date(2038, 1, 19, 3, 14, 7, 0)
        );
    }

    #[test]
    fn text_in_another_character_set_keeps_its_bytes() {
        let latin1 = ColumnKind {
            charset: Some("latin1".into()),
            ..col("varchar", false)
        };
        let mut out = String::new();
        push_value(&mut out, &Value::Bytes(vec![0xe9, b'\'']), &latin1);
        assert_eq!(out, "_latin1X'E927'");
        let mut out = String::new();
        push_value(
            &mut out,
            &Value::Bytes("é'".as_bytes().to_vec()),
            &col("varchar", false),
        );
        assert_eq!(out, "'é\\''");
    }

    #[test]
    fn statements_are_told_apart() {
        assert_eq!(classify("BEGIN"), Statement::Begin);
        assert_eq!(classify("COMMIT"), Statement::Commit);
        assert_eq!(classify("ROLLBACK"), Statement::Rollback);
        assert_eq!(classify("ROLLBACK TO SAVEPOINT a"), Statement::Harmless);
        assert_eq!(
            classify("# Dummy event replacing event type 160 that slave cannot handle."),
            Statement::Harmless
        );
        assert_eq!(classify("GRANT SELECT ON *.* TO x"), Statement::Harmless);
        assert_eq!(classify("CREATE USER 'a'@'%'"), Statement::Harmless);
        assert_eq!(
            classify("DROP TEMPORARY TABLE IF EXISTS `t`"),
            Statement::Harmless
        );
        assert_eq!(
            classify("/* generated */ ALTER TABLE t ADD c INT"),
            Statement::Other
        );
        assert_eq!(classify("TRUNCATE TABLE t"), Statement::Other);
        assert_eq!(classify("INSERT INTO t VALUES (1)"), Statement::Other);
        assert_eq!(
            classify("/*!40000 ALTER TABLE t DISABLE KEYS */"),
            Statement::Other
        );
    }

    #[test]
    fn a_database_is_mentioned_only_as_a_name() {
        assert!(mentions("ALTER TABLE `openedx`.`t` ADD c INT", "openedx"));
        assert!(mentions("DROP DATABASE openedx", "openedx"));
        assert!(mentions("alter table openedx.t add c int", "openedx"));
        assert!(!mentions("ALTER TABLE openedx_old.t ADD c INT", "openedx"));
        assert!(!mentions("ALTER TABLE `my_openedx`.t ADD c INT", "openedx"));
        assert!(!mentions(
            "CREATE TABLE other.t (openedx_id INT)",
            "openedx"
        ));
    }
}
