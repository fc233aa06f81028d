//! Digests for verification: the rows of a key range read in key order on either side, each
//! row hashed, and the hashes summed so that equal sums mean equal content.

use mysql_async::Value;

use super::values::{encode_cursor, hash_value};
use super::MysqlStore;
use crate::core::{ChunkDigest, Cursor, RowDigest, Side, StoreError, Unit};

pub(super) async fn digest_range(
    store: &MysqlStore,
    side: Side,
    unit: &Unit,
    after: Option<&Cursor>,
    upto: Option<&Cursor>,
    limit: Option<u64>,
) -> Result<ChunkDigest, StoreError> {
    let (db, table) = store.unit_table(unit);
    let info = store.table(db, table).await?;
    let limit = if info.keyless() { None } else { limit };
    let mut conn = store.conn(side).await?;
    let (mut rows, mut bytes, mut sum) = (0u64, 0u64, 0u128);
    let mut last: Option<Vec<Value>> = None;
    let missing_ok = side == Side::Target;
    let scanned = store
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

pub(super) async fn row_digests(
    store: &MysqlStore,
    side: Side,
    unit: &Unit,
    after: Option<&Cursor>,
    upto: Option<&Cursor>,
    cap: usize,
) -> Result<Vec<RowDigest>, StoreError> {
    let (db, table) = store.unit_table(unit);
    let info = store.table(db, table).await?;
    let mut conn = store.conn(side).await?;
    let mut out = Vec::new();
    let scanned = store
        .scan(
            &mut conn,
            side,
            &info,
            after,
            upto,
            Some(cap as u64),
            |row| {
                let digest = row_digest(&row);
                let (key, cursor) = if info.keyless() {
                    (format!("row with digest {}", hex::encode(digest)), None)
                } else {
                    let k: Vec<Value> = info.key.iter().map(|&k| row[k].clone()).collect();
                    (info.display_key(&k), Some(encode_cursor(&k)))
                };
                out.push(RowDigest {
                    key,
                    digest,
                    cursor,
                });
            },
        )
        .await;
    match scanned {
        Ok(()) => Ok(out),
        Err(e) if side == Side::Target && e.detail.contains("error 1146") => Ok(out),
        Err(e) => Err(e.in_unit(&unit.name)),
    }
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
