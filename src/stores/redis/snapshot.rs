//! Copying one batch of a database from its snapshot ([`super::replica`]): keys restored in
//! pipelined groups, several in flight, big ones rebuilt in pieces from the live source. A
//! batch ends when all its keys are written; the snapshot stays open for the next batch, and a
//! new process (a resume) reads the database again from a new snapshot.

use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use serde_json::json;

use super::batch::Written;
use super::copy::{self, Dumped, SideError};
use super::position::DbEntry;
use super::replica::{FeedError, SnapshotFeed};
use super::RedisStore;
use crate::core::{BatchOutcome, Cursor, ErrorKind, Side, StoreError, StoreKind, Unit};

/// RESTORE pipelines in flight at once per database.
const RESTORES_IN_FLIGHT: usize = 4;

/// Why a batch from a snapshot stopped.
enum Stop {
    Feed(FeedError),
    Side(SideError),
}

/// (keys restored, payload bytes, whether the database is finished, whether keys were read
/// live beside the snapshot)
type Copied = (u64, u64, bool, bool);

impl RedisStore {
    /// Copy the next batch of `unit` from its snapshot, opening one when this process has
    /// none. `Ok(None)` when the source gives no usable snapshot: the caller reads the database
    /// with SCAN from its start.
    pub(super) async fn copy_snapshot_batch(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
        run_id: &str,
    ) -> Result<Option<BatchOutcome>, StoreError> {
        let dbs = Self::dbs_of(unit);
        let open = self.feeds.lock().await.remove(&unit.name);
        // An open snapshot goes on only where the checkpoint left it: a unit started over (its
        // target lost what it wrote, say) reads a new one from its start.
        let handed = after
            .and_then(|c| c.0.get("snapshot"))
            .and_then(|v| v.as_u64());
        let open = open.filter(|f| Some(f.handed) == handed);
        let mut feed = match open {
            Some(f) => f,
            None => {
                if after.is_some() {
                    tracing::info!(store = "redis", unit = %unit.name, "the snapshot this database was being read from belonged to an earlier run; reading the database again from a new one");
                }
                let opened = SnapshotFeed::open(
                    &self.source,
                    dbs.source,
                    usize::try_from(self.options.big_key_bytes).unwrap_or(usize::MAX),
                    usize::try_from(self.options.group_bytes).unwrap_or(usize::MAX),
                )
                .await;
                match opened {
                    Ok(f) => {
                        self.begin_db_read(unit, Some(DbEntry::of_snapshot(&f.at)))
                            .await;
                        f
                    }
                    Err(e) => return self.without_snapshot(unit, e).map(|()| None),
                }
            }
        };
        let src = self.conn(Side::Source, dbs.source).await?;
        let tgt = self.conn(Side::Target, dbs.target).await?;
        match self.restore_from_feed(&mut feed, src, tgt).await {
            Ok((rows, bytes, done, live)) => {
                if live {
                    self.db_read_live(unit);
                }
                let next = if done {
                    None
                } else {
                    let c = Cursor(json!({"snapshot": feed.handed, "run_id": run_id}));
                    self.feeds.lock().await.insert(unit.name.clone(), feed);
                    Some(c)
                };
                Ok(Some(BatchOutcome {
                    rows,
                    bytes,
                    next,
                    ..BatchOutcome::default()
                }))
            }
            Err(Stop::Feed(e)) => self.without_snapshot(unit, e).map(|()| None),
            Err(Stop::Side(e)) => Err(self.batch_failed(unit, dbs, e).await),
        }
    }

    /// A snapshot could not be opened or read on: read with SCAN from now on. When the
    /// connection broke, the batch also fails, and the runner's retry reads the database with
    /// SCAN from its start (a source that drops its replica once, for an output buffer limit or
    /// a timeout, may well do it again).
    fn without_snapshot(&self, unit: &Unit, e: FeedError) -> Result<(), StoreError> {
        let reason = match &e {
            FeedError::Refused(r) | FeedError::Corrupt(r) => r.clone(),
            FeedError::Io(io) => format!("the snapshot stream broke off: {io}"),
        };
        self.no_snapshot
            .lock()
            .expect("no snapshot")
            .get_or_insert(reason);
        match e {
            FeedError::Refused(reason) => {
                if self.snapshot.swap(false, Ordering::SeqCst) {
                    tracing::info!(store = "redis", unit = %unit.name, %reason, "no snapshot from the source; reading keys live with SCAN");
                }
                Ok(())
            }
            FeedError::Corrupt(reason) => {
                if self.snapshot.swap(false, Ordering::SeqCst) {
                    tracing::warn!(store = "redis", unit = %unit.name, %reason, "the source's snapshot could not be read; reading keys live with SCAN from the start of the database");
                }
                Ok(())
            }
            FeedError::Io(io) => {
                if self.snapshot.swap(false, Ordering::SeqCst) {
                    tracing::warn!(store = "redis", unit = %unit.name, error = %io, "the snapshot stream broke off; reading keys live with SCAN from the start of the database");
                }
                Err(StoreError::new(
                    StoreKind::Redis,
                    self.source.address(),
                    ErrorKind::Transient,
                    format!("the snapshot stream from the source broke off: {io}"),
                    "offload retries, reading keys live with SCAN; if the source is unreachable, check it and run the copy again with --resume",
                )
                .in_unit(&unit.name))
            }
        }
    }

    /// Restore keys from the feed until a batch's worth are written or the database ends.
    async fn restore_from_feed(
        &self,
        feed: &mut SnapshotFeed,
        mut src: MultiplexedConnection,
        mut tgt: MultiplexedConnection,
    ) -> Result<Copied, Stop> {
        let batch_keys = self.options.batch_keys.max(1);
        let mut seen = 0u64;
        let mut w = Written::default();
        let mut done = false;
        let mut in_flight = FuturesUnordered::new();
        while seen < batch_keys {
            let Some(chunk) = feed.next().await else {
                done = true;
                break;
            };
            let chunk = chunk.map_err(Stop::Feed)?;
            seen += chunk.len() as u64;
            let read_at = Instant::now();
            let typed = self.typed.load(Ordering::SeqCst);
            let mut group = Vec::with_capacity(chunk.len());
            for k in chunk {
                match k.payload {
                    Some(payload) if !typed => group.push(Dumped {
                        pttl: feed.pttl(k.expire_at_ms),
                        key: k.key,
                        payload: Some(payload),
                    }),
                    _ => w.big.push(k.key),
                }
            }
            if group.is_empty() {
                continue;
            }
            if in_flight.len() >= RESTORES_IN_FLIGHT {
                if let Some((group, restored)) = in_flight.next().await {
                    self.settle_restore(&mut w, group, restored)
                        .map_err(Stop::Side)?;
                }
            }
            let mut t = tgt.clone();
            in_flight.push(async move {
                let r = copy::restore_group(&mut t, &group, read_at).await;
                (group, r)
            });
        }
        while let Some((group, restored)) = in_flight.next().await {
            self.settle_restore(&mut w, group, restored)
                .map_err(Stop::Side)?;
        }
        let live = !w.big.is_empty();
        let (rows, bytes) = self
            .rebuild_typed(&mut src, &mut tgt, w)
            .await
            .map_err(Stop::Side)?;
        Ok((rows, bytes, done, live))
    }
}
