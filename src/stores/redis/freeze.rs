//! Holding the source's writers off for the final pass: `CLIENT PAUSE ... WRITE` (Redis 6.2+),
//! renewed while offload runs and lifted with `CLIENT UNPAUSE`, so a killed offload releases the
//! source by itself within [`PAUSE_MS`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::RedisResult;
use tokio_util::sync::CancellationToken;

use super::survey;
use super::RedisStore;
use crate::core::{Side, StoreError};

/// How long one pause lasts if offload stops renewing it (killed, host lost).
pub const PAUSE_MS: u64 = 120_000;
/// How often the pause is renewed; well inside [`PAUSE_MS`] so a slow round trip cannot let
/// writers in.
const RENEW_EVERY: Duration = Duration::from_secs(30);

/// The renewal task of a pause this process holds.
pub struct HeldPause {
    stop: CancellationToken,
}

async fn pause(conn: &mut MultiplexedConnection) -> RedisResult<()> {
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE_MS)
        .arg("WRITE")
        .query_async::<()>(conn)
        .await
}

/// Why a server cannot be paused by offload, when the reason is the server or the account
/// rather than a fault: too old for `WRITE` pauses, or the command is not allowed.
fn refusal(e: &redis::RedisError) -> Option<&'static str> {
    let text = e.to_string().to_ascii_lowercase();
    if text.contains("noperm") || text.contains("no permission") {
        Some("the source account may not run CLIENT PAUSE")
    } else if text.contains("unknown") || text.contains("syntax") {
        Some("the source server does not know CLIENT PAUSE WRITE (it needs Redis 6.2 or later)")
    } else {
        None
    }
}

impl RedisStore {
    /// Pause the source's writers; `Ok(None)` when this server cannot be paused by offload.
    pub(super) async fn freeze(&self) -> Result<Option<String>, StoreError> {
        let mut src = self
            .source
            .connect(0)
            .await
            .map_err(|e| self.err(Side::Source, &e))?;
        let version = survey::server_version(&mut src)
            .await
            .map_err(|e| self.err(Side::Source, &e))?;
        if !survey::version_at_least(&version, 6, 2) {
            tracing::warn!(store = "redis", host = %self.source.address(), %version, "the source cannot pause only writers (Redis 6.2 or later can); stop the platform's writers yourself");
            return Ok(None);
        }
        // Pausing writes on a server that is also the target would hold offload's own writes.
        let mut tgt = self.conn(Side::Target, 0).await?;
        let target_id = survey::info(&mut tgt, "server")
            .await
            .map_err(|e| self.err(Side::Target, &e))?;
        let source_id = self.source_run_id().await?;
        if survey::info_field(&target_id, "run_id") == Some(source_id.as_str()) {
            tracing::warn!(store = "redis", host = %self.source.address(), "source and target are the same Redis server; its writers cannot be paused without pausing the copy");
            return Ok(None);
        }
        if let Err(e) = pause(&mut src).await {
            if let Some(why) = refusal(&e) {
                tracing::warn!(store = "redis", host = %self.source.address(), error = %e, "{why}; stop the platform's writers yourself");
                return Ok(None);
            }
            return Err(self.err(Side::Source, &e));
        }
        // Scripts count as writes while writers are paused (EVAL would wait out the pause):
        // read the source with plain pipelines from now on.
        self.scripts.store(false, Ordering::SeqCst);
        self.digest_scripts[0].store(false, Ordering::SeqCst);

        let stop = CancellationToken::new();
        let renew_stop = stop.clone();
        let address = self.source.address();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = renew_stop.cancelled() => return,
                    _ = tokio::time::sleep(RENEW_EVERY) => {}
                }
                if let Err(e) = pause(&mut src).await {
                    // The running pause still holds for the rest of PAUSE_MS; the next renewal
                    // tries again.
                    tracing::error!(store = "redis", host = %address, error = %e, "could not renew the pause of the source's writers; writes may reach the source once the current pause ends");
                }
            }
        });
        *self.pause.lock().expect("pause") = Some(HeldPause { stop });
        tracing::warn!(store = "redis", host = %self.source.address(), pause_ms = PAUSE_MS, "source writers paused (CLIENT PAUSE WRITE); offload lifts the pause when it ends, and a killed offload's pause ends by itself");
        Ok(Some(format!(
            "redis: writes to source {} are paused until offload ends (CLIENT PAUSE WRITE, renewed every {} s; it lapses by itself {} s after offload stops)",
            self.source.address(),
            RENEW_EVERY.as_secs(),
            PAUSE_MS / 1000
        )))
    }

    /// Lift a pause this process holds.
    pub(super) async fn thaw(&self) -> Result<(), StoreError> {
        let Some(held) = self.pause.lock().expect("pause").take() else {
            return Ok(());
        };
        held.stop.cancel();
        let unpause = async {
            let mut c = self.source.connect(0).await?;
            redis::cmd("CLIENT")
                .arg("UNPAUSE")
                .query_async::<()>(&mut c)
                .await
        };
        unpause.await.map_err(|e| {
            let mut err = self.err(Side::Source, &e);
            err.hint = format!(
                "run CLIENT UNPAUSE on the source ({}, e.g. with redis-cli), or wait: the pause ends by itself within {} s",
                self.source.address(),
                PAUSE_MS / 1000
            );
            err
        })?;
        tracing::info!(store = "redis", host = %self.source.address(), "source writers let in again (CLIENT UNPAUSE)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_from_faults() {
        let noperm = redis::RedisError::from((
            redis::ErrorKind::ExtensionError,
            "NOPERM",
            "this user has no permissions to run the 'client|pause' command".to_string(),
        ));
        assert!(refusal(&noperm).is_some());
        let io = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(refusal(&io).is_none());
    }
}
