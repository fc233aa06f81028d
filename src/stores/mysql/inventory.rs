//! The units of work: every base table of the chosen databases, sized from the source's
//! statistics, and split into key ranges copied in parallel when it is large and has a
//! single integer key.

use mysql_async::prelude::*;
use mysql_async::Value;
use serde_json::json;

use super::schema::ident;
use super::values::encode_cursor;
use super::MysqlStore;
use crate::core::{Cursor, Side, StoreError, StoreKind, Unit};

/// A base table as `information_schema.TABLES` sizes it: name, rows, data length and average
/// row length.
type TableStats = (String, Option<u64>, Option<u64>, Option<u64>);

pub(super) async fn inventory(store: &MysqlStore) -> Result<Vec<Unit>, StoreError> {
    let mut units = Vec::new();
    let mut conn = store.conn(Side::Source).await?;
    // MySQL 8 caches table statistics; ask for fresh ones. MariaDB has no such variable.
    let _ = conn
        .query_drop("SET SESSION information_schema_stats_expiry = 0")
        .await;
    for db in store.databases().await? {
        let tables: Vec<TableStats> = conn
            .exec(
                "SELECT TABLE_NAME, TABLE_ROWS, DATA_LENGTH, AVG_ROW_LENGTH FROM information_schema.TABLES
                 WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (db.as_str(),),
            )
            .await
            .map_err(|e| store.err(Side::Source, e))?;
        for (table, rows, data, avg) in tables {
            let info = store.table(&db, &table).await?;
            let rows = rows.unwrap_or(0);
            let bytes = data.unwrap_or(0);
            let avg = avg.unwrap_or(0).max(64);
            let batch_rows = (store.options.batch_bytes / avg).clamp(200, 50_000);
            let spec = json!({"batch_rows": batch_rows, "keyless": info.keyless()});
            let mut boundaries = Vec::new();
            if info.key.len() == 1 && bytes > store.options.split_bytes {
                let key = ident(&info.columns[info.key[0]].name);
                let bounds: Option<(Value, Value)> = conn
                    .exec_first(
                        format!("SELECT MIN({key}), MAX({key}) FROM {}", info.qualified),
                        (),
                    )
                    .await
                    .map_err(|e| store.err(Side::Source, e))?;
                if let Some((lo, hi)) = bounds {
                    let parts = bytes.div_ceil(store.options.split_bytes).min(32);
                    boundaries = MysqlStore::split_ranges(&lo, &hi, parts);
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
                    size_known: true,
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
                    size_known: true,
                    spec: spec.clone(),
                });
                after = upto;
            }
        }
    }
    Ok(units)
}

impl MysqlStore {
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
