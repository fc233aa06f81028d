//! Copying a unit batch by batch: the consistent snapshot of the source that a run's batches
//! share (and the note on how many of them really read inside it), keyless tables in one pass, batch sizes, and the clearing of a key range for the delta
//! pass.

use std::collections::BTreeSet;

use mysql_async::prelude::*;
use mysql_async::Conn;

use super::values::encode_cursor;
use super::MysqlStore;
use crate::core::{BatchOutcome, Cursor, Side, StoreError, Unit};

/// What this run's copy read from the source, for the note that says how consistent the copy is:
/// a shared snapshot is only as good as the batches that actually read inside it.
#[derive(Debug, Default)]
pub(super) struct SnapshotRecord {
    /// A copy is open: `begin_copy` ran and `end_copy` has not.
    open: bool,
    /// How long writes were held while the shared snapshot opened; `None` when each worker
    /// opened its own (no RELOAD privilege), which `begin_copy`'s note already says.
    held_ms: Option<u128>,
    batches_inside: u64,
    batches_outside: u64,
    /// Units with at least one batch read outside the snapshot.
    units_outside: BTreeSet<String>,
    /// Units earlier runs of the job copied, wholly or in part, from snapshots of their own.
    earlier_units: usize,
    /// The note, once the copy is closed, until `finish_target` hands it on.
    note: Option<String>,
}

impl SnapshotRecord {
    /// What the copy's summary says of the snapshot; `None` when there is nothing to say beyond
    /// `begin_copy`'s note (no shared snapshot, or no batch read).
    pub(super) fn note(&self) -> Option<String> {
        let held = self.held_ms?;
        let total = self.batches_inside + self.batches_outside;
        if total == 0 {
            return None;
        }
        let exact = "a final `offload copy --delta` pass (or verify, which names each difference) is what makes the copy exact";
        let earlier = match self.earlier_units {
            0 => String::new(),
            n => format!(
                "; {n} unit(s) copied, wholly or in part, by an earlier run came from another"
            ),
        };
        if self.batches_outside == 0 {
            return Some(if self.earlier_units == 0 {
                format!("mysql: source read from one consistent snapshot (writes were held for {held} ms while it opened); rows written after it are not in this copy")
            } else {
                format!("mysql: this run's rows were read from one consistent snapshot (writes were held for {held} ms while it opened){earlier}; {exact}")
            });
        }
        let units: Vec<&str> = self
            .units_outside
            .iter()
            .take(5)
            .map(|s| s.as_str())
            .collect();
        let more = self.units_outside.len().saturating_sub(units.len());
        Some(format!(
            "mysql: NOT one consistent snapshot: a source connection inside the snapshot was lost, so {} of {total} batch(es) of this run were read outside it, each at its own moment, in {} unit(s): {}{}{earlier}; {exact}",
            self.batches_outside,
            self.units_outside.len(),
            units.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
        ))
    }
}

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
    let mut record = store.snapshot_record.lock().expect("snapshot record");
    let earlier_units = record.earlier_units;
    *record = SnapshotRecord {
        open: true,
        held_ms: locked.then(|| started.elapsed().as_millis()),
        earlier_units,
        ..SnapshotRecord::default()
    };
    // With a shared snapshot, what it covered is only known at the end: finish_target says it.
    Ok(if locked {
        String::new()
    } else {
        "mysql: no RELOAD privilege on the source, so each worker reads its own snapshot; stop writers (LMS, CMS, workers) for an exact copy".to_string()
    })
}

pub(super) async fn end_copy(store: &MysqlStore) {
    let conns: Vec<Conn> = std::mem::take(&mut *store.snapshot.lock().await);
    for mut c in conns {
        let _ = c.query_drop("ROLLBACK").await;
    }
    let mut record = store.snapshot_record.lock().expect("snapshot record");
    if record.open {
        record.open = false;
        record.note = record.note();
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

    /// Note that a batch of `unit` was read completely, inside the snapshot or not.
    pub(super) fn batch_read(&self, unit: &Unit, inside_snapshot: bool) {
        let mut record = self.snapshot_record.lock().expect("snapshot record");
        if !record.open {
            return; // the delta pass, say: no snapshot was promised
        }
        if inside_snapshot {
            record.batches_inside += 1;
        } else {
            record.batches_outside += 1;
            record.units_outside.insert(unit.name.clone());
        }
    }

    /// A snapshot connection that failed (or whose batch did): closed, so that its transaction
    /// never comes back from the pool as an ordinary connection reading the past.
    pub(super) async fn discard_snapshot_conn(&self, unit: &Unit, conn: Conn) {
        tracing::warn!(store = "mysql", unit = %unit.name, "a snapshot connection failed; later batches of this run may read outside the snapshot");
        let _ = conn.disconnect().await;
    }

    /// How many units earlier runs copied, wholly or in part (the runner says so before the copy).
    pub(super) fn copied_by_earlier_runs(&self, units: usize) {
        self.snapshot_record
            .lock()
            .expect("snapshot record")
            .earlier_units = units;
    }

    /// The snapshot note of the copy just closed, once.
    pub(super) fn snapshot_note(&self) -> Option<String> {
        self.snapshot_record
            .lock()
            .expect("snapshot record")
            .note
            .clone()
    }

    pub(super) fn snapshot_note_given(&self) {
        self.snapshot_record.lock().expect("snapshot record").note = None;
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

#[cfg(test)]
mod tests {
    use super::SnapshotRecord;

    fn record(inside: u64, outside: &[&str], earlier: usize) -> SnapshotRecord {
        SnapshotRecord {
            held_ms: Some(12),
            batches_inside: inside,
            batches_outside: outside.len() as u64,
            units_outside: outside.iter().map(|s| s.to_string()).collect(),
            earlier_units: earlier,
            ..SnapshotRecord::default()
        }
    }

    #[test]
    fn one_snapshot_is_claimed_only_when_every_batch_of_every_run_read_inside_it() {
        let all_inside = record(7, &[], 0).note().unwrap();
        assert!(
            all_inside.starts_with(
                "mysql: source read from one consistent snapshot (writes were held for 12 ms"
            ),
            "{all_inside}"
        );

        let resumed = record(7, &[], 3).note().unwrap();
        assert!(
            resumed.starts_with("mysql: this run's rows were read from one consistent snapshot")
                && resumed.contains(
                    "3 unit(s) copied, wholly or in part, by an earlier run came from another"
                )
                && resumed.contains("--delta"),
            "{resumed}"
        );

        let lost = record(4, &["db.a", "db.b", "db.b"], 0).note().unwrap();
        assert!(
            lost.starts_with("mysql: NOT one consistent snapshot")
                && lost.contains("3 of 7 batch(es)")
                && lost.contains("in 2 unit(s): db.a, db.b;")
                && lost.contains("--delta")
                && !lost.contains("earlier run"),
            "{lost}"
        );
        let names: Vec<String> = (0..7).map(|i| format!("db.t{i}")).collect();
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let many = record(0, &names, 2).note().unwrap();
        assert!(
            many.contains("7 of 7 batch(es)")
                && many.contains("db.t4 and 2 more; 2 unit(s) copied"),
            "{many}"
        );
    }

    #[test]
    fn nothing_is_said_without_a_shared_snapshot_or_without_batches() {
        assert_eq!(record(0, &[], 0).note(), None);
        let own_snapshots = SnapshotRecord {
            held_ms: None,
            ..record(5, &[], 0)
        };
        assert_eq!(own_snapshots.note(), None);
    }
}
