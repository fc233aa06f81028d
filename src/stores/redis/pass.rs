//! Verification passes of one database: SCAN one side, several pages in flight, digest every
//! key (see `digest.rs`), with the unit's expiry cutoff fixed at its first digest.

use futures_util::TryStreamExt;

use super::batch::scan;
use super::digest::{local_ms, Cutoff, DigestPass, KeyDigest};
use super::{survey, RedisStore, PAGES_IN_FLIGHT};
use crate::core::{Side, StoreError, Unit};

impl RedisStore {
    /// Whether the source knows PEXPIRETIME (Redis 7.0+), read once.
    pub(super) async fn source_has_expiretime(&self) -> Result<bool, StoreError> {
        if let Some(v) = *self.source_has_expiretime.lock().expect("flag") {
            return Ok(v);
        }
        let mut c = self.conn(Side::Source, 0).await?;
        let version = survey::server_version(&mut c)
            .await
            .map_err(|e| self.err(Side::Source, &e))?;
        let has = survey::version_at_least(&version, 7, 0);
        *self.source_has_expiretime.lock().expect("flag") = Some(has);
        Ok(has)
    }

    /// The unit's verification cutoff, fixed at its first digest: now plus a horizon long enough
    /// for both sides to be read.
    async fn cutoff(&self, unit: &Unit) -> Result<Cutoff, StoreError> {
        if let Some(c) = self.cutoffs.lock().expect("cutoffs").get(&unit.name) {
            return Ok(*c);
        }
        let horizon_ms = 60_000 + (unit.est_rows / 10) as i64;
        let db = Self::dbs_of(unit).source;
        let mut c = self.conn(Side::Source, db).await?;
        let time: Vec<String> = redis::cmd("TIME")
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(Side::Source, &e))?;
        let server_ms = match (time.first(), time.get(1)) {
            (Some(s), Some(us)) => s.parse::<i64>().ok().zip(us.parse::<i64>().ok()),
            _ => None,
        }
        .map(|(s, us)| s * 1000 + us / 1000);
        let cutoff = Cutoff {
            source_ms: server_ms.map(|m| m + horizon_ms),
            local_ms: local_ms() + horizon_ms,
        };
        let mut map = self.cutoffs.lock().expect("cutoffs");
        Ok(*map.entry(unit.name.clone()).or_insert(cutoff))
    }

    /// The digests of these keys of one side's database, as [`Self::digest_side`] computes them
    /// (keys that do not exist, or expire before the cutoff, are left out).
    pub(super) async fn digest_keys(
        &self,
        side: Side,
        unit: &Unit,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<KeyDigest>, StoreError> {
        let pass = self.digest_pass(side, unit).await?;
        pass.page(keys)
            .await
            .map_err(|e| self.side_err(e).in_unit(&unit.name))
    }

    /// What one side's digest pass over `unit` needs.
    async fn digest_pass(&self, side: Side, unit: &Unit) -> Result<DigestPass, StoreError> {
        let dbs = Self::dbs_of(unit);
        let db = if side == Side::Source {
            dbs.source
        } else {
            dbs.target
        };
        let cutoff = self.cutoff(unit).await?;
        let expiretime = self.source_has_expiretime().await?;
        let conn = self.conn(side, db).await?;
        let source = if side == Side::Target {
            Some(self.conn(Side::Source, dbs.source).await?)
        } else {
            None
        };
        Ok(DigestPass {
            side,
            conn,
            source,
            expiretime,
            cutoff,
            tolerance_ms: self.options.ttl_tolerance_ms,
            scripts: self.digest_scripts[usize::from(side == Side::Target)].clone(),
        })
    }

    /// Walk one side's database with SCAN and digest every key; `each` sees every key digest and
    /// returns false to stop early.
    pub(super) async fn digest_side(
        &self,
        side: Side,
        unit: &Unit,
        mut each: impl FnMut(KeyDigest) -> bool,
    ) -> Result<(), StoreError> {
        let pass = self.digest_pass(side, unit).await?;
        let conn = pass.conn.clone();
        let pages = futures_util::stream::try_unfold(
            (conn, 0u64, false),
            |(mut c, cursor, done)| async move {
                if done {
                    return Ok(None);
                }
                let (next, keys) = scan(&mut c, cursor).await?;
                Ok(Some((keys, (c, next, next == 0))))
            },
        )
        .map_err(|e| self.err(side, &e).in_unit(&unit.name));
        let pass = &pass;
        let digests = pages
            .map_ok(|keys| async move {
                pass.page(keys)
                    .await
                    .map_err(|e| self.side_err(e).in_unit(&unit.name))
            })
            .try_buffer_unordered(PAGES_IN_FLIGHT);
        let mut digests = std::pin::pin!(digests);
        while let Some(page) = digests.try_next().await? {
            for d in page {
                if !each(d) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
