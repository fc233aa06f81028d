//! Writing a batch of rows to the target as they stream from the source: into one
//! `LOAD DATA LOCAL INFILE` per batch, or as multi-row `REPLACE` statements once the target
//! refuses LOCAL INFILE.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;
use mysql_async::prelude::*;
use mysql_async::{Row, Value};
use tokio::sync::mpsc;

use super::schema::TableInfo;
use super::values::{push_field, push_literal};
use super::MysqlStore;
use crate::core::{Cursor, ErrorKind, Side, StoreError, StoreKind, Unit};

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

impl MysqlStore {
    /// Copy the rows after `after` (at most `limit`) of a unit to the target; returns rows, bytes
    /// and the last key copied.
    pub(super) async fn copy_rows(
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
        // The target first: a snapshot connection taken is never dropped on an early return.
        let mut tgt = self.conn(Side::Target).await?;
        let (mut src, from_snapshot) = self.source_conn_for_copy().await?;
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
        if keep_snapshot {
            self.batch_read(unit, from_snapshot);
        }
        if from_snapshot && keep_snapshot {
            self.snapshot.lock().await.push(src);
        } else if from_snapshot {
            self.discard_snapshot_conn(unit, src).await;
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
        // The target first: a snapshot connection taken is never dropped on an early return.
        let mut tgt = self.conn(Side::Target).await?;
        let (mut src, from_snapshot) = self.source_conn_for_copy().await?;
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
        let complete = read.is_ok() && written.is_ok();
        if complete {
            self.batch_read(unit, from_snapshot);
        }
        if from_snapshot && complete {
            self.snapshot.lock().await.push(src);
        } else if from_snapshot {
            self.discard_snapshot_conn(unit, src).await;
        }
        written?;
        read
    }
}

/// A count from a `LOAD DATA` info string such as `Records: 3  Deleted: 0  Skipped: 0  Warnings: 0`.
fn load_info_count(info: &str, name: &str) -> Option<u64> {
    let rest = &info[info.find(&format!("{name}:"))? + name.len() + 1..];
    rest.split_whitespace().next()?.parse().ok()
}
#[cfg(test)]
mod tests {
    use super::load_info_count;

    #[test]
    fn load_data_info_is_read() {
        let info = "Records: 30000  Deleted: 12  Skipped: 0  Warnings: 1";
        assert_eq!(load_info_count(info, "Records"), Some(30000));
        assert_eq!(load_info_count(info, "Deleted"), Some(12));
        assert_eq!(load_info_count(info, "Warnings"), Some(1));
        assert_eq!(load_info_count("", "Records"), None);
    }
}
