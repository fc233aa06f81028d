//! Copying one batch of a database: SCAN pages from the checkpointed cursor, several in flight,
//! each read with the server-side script (or plain pipelines where scripts are refused),
//! restored on the target, and big keys rebuilt in pieces.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::copy::{self, OnSide, SideError};
use super::values::{self, display_key, text_of};
use super::{RedisStore, PAGES_IN_FLIGHT, SCAN_COUNT};
use crate::core::{Cursor, Side};

impl RedisStore {
    /// Copy one batch: SCAN pages from `cursor` until about `batch_keys` keys are seen, with
    /// several pages in flight at once (each read, then written); the batch ends when all are
    /// written, so the returned cursor is a safe checkpoint.
    pub(super) async fn copy_pages(
        &self,
        src: MultiplexedConnection,
        tgt: MultiplexedConnection,
        cursor: u64,
    ) -> Result<(u64, u64, u64), SideError> {
        let batch_keys = self.options.batch_keys.max(1);
        let end_cursor = std::sync::Arc::new(AtomicU64::new(cursor));
        let last_seen = end_cursor.clone();
        // SCAN may return a key twice (when the table shrinks between calls). Two pages in flight
        // must not rebuild the same key at once, so a batch drops the keys it already has.
        let in_batch = std::sync::Arc::new(std::sync::Mutex::new(HashSet::<Vec<u8>>::new()));
        let pages = futures_util::stream::try_unfold(
            (src.clone(), cursor, 0u64, false),
            move |(mut conn, cursor, seen, done)| {
                let end_cursor = last_seen.clone();
                let in_batch = in_batch.clone();
                async move {
                    if done {
                        return Ok(None);
                    }
                    let (next, mut keys) = scan(&mut conn, cursor).await.on(Side::Source)?;
                    end_cursor.store(next, Ordering::SeqCst);
                    let seen = seen + keys.len() as u64;
                    let done = next == 0 || seen >= batch_keys;
                    {
                        let mut known = in_batch.lock().expect("batch keys");
                        keys.retain(|k| known.insert(k.clone()));
                    }
                    Ok(Some((keys, (conn, next, seen, done))))
                }
            },
        );
        let copied = pages
            .map_ok(|keys| {
                let (src, tgt) = (src.clone(), tgt.clone());
                async move { self.copy_keys(src, tgt, keys).await }
            })
            .try_buffer_unordered(PAGES_IN_FLIGHT);
        let mut copied = std::pin::pin!(copied);
        let (mut rows, mut bytes) = (0u64, 0u64);
        while let Some((r, b)) = copied.try_next().await? {
            rows += r;
            bytes += b;
        }
        Ok((rows, bytes, end_cursor.load(Ordering::SeqCst)))
    }

    /// Copy the keys of one SCAN page: small ones dumped and restored in byte-bounded groups,
    /// big ones (and all in typed mode) rebuilt in pieces.
    async fn copy_keys(
        &self,
        mut src: MultiplexedConnection,
        mut tgt: MultiplexedConnection,
        keys: Vec<Vec<u8>>,
    ) -> Result<(u64, u64), SideError> {
        if keys.is_empty() {
            return Ok((0, 0));
        }
        if self.typed.load(Ordering::SeqCst) {
            let all = Written {
                big: keys,
                ..Written::default()
            };
            return self.rebuild_typed(&mut src, &mut tgt, all).await;
        }
        if self.scripts.load(Ordering::SeqCst) {
            match self
                .copy_keys_scripted(&mut src, &mut tgt, keys.clone())
                .await
            {
                Err(SideError(Side::Source, e)) if copy::scripts_refused(&e) => {
                    if self.scripts.swap(false, Ordering::SeqCst) {
                        tracing::info!(store = "redis", error = %e, "the source does not run scripts; reading with plain pipelines");
                    }
                }
                other => return other,
            }
        }
        let sizes = copy::probe_sizes(&mut src, &keys).await.on(Side::Source)?;
        let mut groups: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut group_bytes = 0u64;
        let mut w = Written::default();
        for (key, size) in keys.into_iter().zip(sizes) {
            let size = size.unwrap_or(0);
            if size > self.options.big_key_bytes {
                w.big.push(key);
                continue;
            }
            if group_bytes >= self.options.group_bytes {
                groups.push(Vec::new());
                group_bytes = 0;
            }
            group_bytes += size;
            groups.last_mut().expect("a group").push(key);
        }
        for group in groups.into_iter().filter(|g| !g.is_empty()) {
            let (dumped, read_at) = copy::dump_group(&mut src, group).await.on(Side::Source)?;
            let restored = copy::restore_group(&mut tgt, &dumped, read_at).await;
            self.settle_restore(&mut w, dumped, restored)?;
        }
        self.rebuild_typed(&mut src, &mut tgt, w).await
    }
}

/// What a batch has written so far, and the keys it leaves to the typed rebuild.
#[derive(Default)]
pub(super) struct Written {
    pub rows: u64,
    pub bytes: u64,
    pub big: Vec<Vec<u8>>,
}

impl RedisStore {
    /// Account for one RESTORE pipeline of `dumped`. Keys the target cannot restore (an older
    /// server) join the typed rebuild, which every later key then takes too.
    pub(super) fn settle_restore(
        &self,
        w: &mut Written,
        dumped: Vec<copy::Dumped>,
        restored: redis::RedisResult<(u64, u64)>,
    ) -> Result<(), SideError> {
        match restored {
            Ok((r, b)) => {
                w.rows += r;
                w.bytes += b;
                Ok(())
            }
            Err(e) if copy::payload_rejected(&e) => {
                if !self.typed.swap(true, Ordering::SeqCst) {
                    tracing::warn!(store = "redis", error = %e, "the target cannot restore the source's DUMP payloads (an older server?); rebuilding values with typed commands from now on");
                }
                w.big.extend(dumped.into_iter().map(|d| d.key));
                Ok(())
            }
            Err(e) => Err(SideError(Side::Target, e)),
        }
    }

    /// Rebuild `w.big` in pieces with typed commands; returns the batch's (rows, bytes).
    pub(super) async fn rebuild_typed(
        &self,
        src: &mut MultiplexedConnection,
        tgt: &mut MultiplexedConnection,
        w: Written,
    ) -> Result<(u64, u64), SideError> {
        let (mut rows, mut bytes) = (w.rows, w.bytes);
        for k in &w.big {
            tracing::debug!(store = "redis", key = %display_key(k), "copied in pieces with typed commands");
            if let Some(b) = copy::copy_key_typed(src, tgt, k).await? {
                rows += 1;
                bytes += b;
                self.typed_keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok((rows, bytes))
    }
}

impl RedisStore {
    /// [`RedisStore::copy_keys`] with the server-side read: one EVAL per group of keys.
    async fn copy_keys_scripted(
        &self,
        src: &mut MultiplexedConnection,
        tgt: &mut MultiplexedConnection,
        mut keys: Vec<Vec<u8>>,
    ) -> Result<(u64, u64), SideError> {
        let mut w = Written::default();
        while !keys.is_empty() {
            let read = copy::dump_scripted(
                src,
                std::mem::take(&mut keys),
                self.options.big_key_bytes,
                self.options.group_bytes,
            )
            .await
            .on(Side::Source)?;
            keys = read.unread;
            w.big.extend(read.big);
            let restored = copy::restore_group(tgt, &read.dumped, read.read_at).await;
            self.settle_restore(&mut w, read.dumped, restored)?;
        }
        self.rebuild_typed(src, tgt, w).await
    }
}

/// One SCAN call: the next cursor and the keys it returned.
pub(super) async fn scan(
    conn: &mut MultiplexedConnection,
    cursor: u64,
) -> redis::RedisResult<(u64, Vec<Vec<u8>>)> {
    let reply: Value = redis::cmd("SCAN")
        .arg(cursor)
        .arg("COUNT")
        .arg(SCAN_COUNT)
        .query_async(conn)
        .await?;
    let Value::Array(mut parts) = reply else {
        return Err(values::unexpected("a SCAN reply"));
    };
    if parts.len() != 2 {
        return Err(values::unexpected("a SCAN reply"));
    }
    let keys = parts.pop().expect("two parts");
    let next = text_of(parts.pop().expect("two parts"))?
        .parse::<u64>()
        .map_err(|_| values::unexpected("a SCAN cursor"))?;
    let keys = match keys {
        Value::Array(k) => k
            .into_iter()
            .map(values::bytes_of)
            .collect::<redis::RedisResult<Vec<_>>>()?,
        _ => return Err(values::unexpected("SCAN keys")),
    };
    Ok((next, keys))
}

pub(super) fn decode_cursor(c: &Cursor) -> Option<u64> {
    c.0.get("scan")?.as_str()?.parse().ok()
}
