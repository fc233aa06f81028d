//! Copying a unit batch by batch: the consistent snapshot of the source that a run's batches
//! share, keyless tables in one pass, batch sizes, and the clearing of a key range for the delta
//! pass.

use mysql_async::prelude::*;
use mysql_async::Conn;

use super::values::encode_cursor;
use super::MysqlStore;
use crate::core::{BatchOutcome, Cursor, Side, StoreError, Unit};

pub(super) async fn begin_copy(store: &MysqlStore, workers: usize) -> Result<String, StoreError> {
    let mut conns = Vec::new();
    for _ in 0..workers.max(1) {
        conns.push(store.conn(Side::Source).await?);
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
            result = Err(store.err(Side::Source, e));
            break;
        }
    }
    if locked {
        let _ = conns[0].query_drop("UNLOCK TABLES").await;
    }
    result?;
    *store.snapshot.lock().await = conns;
    Ok(if locked {
        format!(
            "mysql: source read from one consistent snapshot (writes were held for {} ms while it opened); rows written after it are not in this copy",
            started.elapsed().as_millis()
        )
    } else {
        "mysql: no RELOAD privilege on the source, so each worker reads its own snapshot; stop writers (LMS, CMS, workers) for an exact copy".to_string()
    })
}

pub(super) async fn end_copy(store: &MysqlStore) {
    let conns: Vec<Conn> = std::mem::take(&mut *store.snapshot.lock().await);
    for mut c in conns {
        let _ = c.query_drop("ROLLBACK").await;
    }
}

impl MysqlStore {
    /// Take a snapshot connection when one is free, else an ordinary one.
    pub(super) async fn source_conn_for_copy(&self) -> Result<(Conn, bool), StoreError> {
        if let Some(c) = self.snapshot.lock().await.pop() {
            return Ok((c, true));
        }
        Ok((self.conn(Side::Source).await?, false))
    }
}

pub(super) async fn copy_batch(
    store: &MysqlStore,
    unit: &Unit,
    after: Option<&Cursor>,
) -> Result<BatchOutcome, StoreError> {
    let (db, table) = store.unit_table(unit);
    let info = store.table(db, table).await?;
    if info.keyless() {
        // No key to resume from: the unit is copied in one pass, after clearing what an
        // interrupted earlier pass left.
        let mut tgt = store.conn(Side::Target).await?;
        tgt.query_drop(format!("DELETE FROM {}", info.qualified))
            .await
            .map_err(|e| store.err(Side::Target, e).in_unit(&unit.name))?;
        drop(tgt);
        let (rows, bytes, _) = store.copy_rows(unit, &info, None, None).await?;
        store.unit_copied(unit).await;
        return Ok(BatchOutcome {
            rows,
            bytes,
            next: None,
            ..BatchOutcome::default()
        });
    }
    let limit = store
        .options
        .batch_rows
        .or_else(|| unit.spec["batch_rows"].as_u64())
        .unwrap_or(5_000)
        .max(1);
    let after = after.or(unit.range.after.as_ref());
    let (rows, bytes, last) = store.copy_rows(unit, &info, after, Some(limit)).await?;
    let next = if rows < limit {
        None
    } else {
        last.map(|k| encode_cursor(&k))
    };
    if next.is_none() {
        store.unit_copied(unit).await;
    }
    Ok(BatchOutcome {
        rows,
        bytes,
        next,
        ..BatchOutcome::default()
    })
}

pub(super) async fn clear_range(
    store: &MysqlStore,
    unit: &Unit,
    after: Option<&Cursor>,
    upto: Option<&Cursor>,
) -> Result<(), StoreError> {
    let (db, table) = store.unit_table(unit);
    let info = store.table(db, table).await?;
    let (sql, params) = if info.keyless() {
        (format!("DELETE FROM {}", info.qualified), Vec::new())
    } else {
        let after = after.map(|c| store.decode(c, Side::Target)).transpose()?;
        let upto = upto.map(|c| store.decode(c, Side::Target)).transpose()?;
        let (cond, params) = info.range_condition(after.as_deref(), upto.as_deref());
        (format!("DELETE FROM {}{cond}", info.qualified), params)
    };
    let mut conn = store.conn(Side::Target).await?;
    conn.exec_drop(sql, params)
        .await
        .map_err(|e| store.err(Side::Target, e).in_unit(&unit.name))
}
