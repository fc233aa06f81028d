//! Keeping a target in step with its source after the copy: each store that has a change stream
//! (MySQL's binary log, Redis' replication stream, MongoDB's change streams) opens a
//! [`Follower`] from the position its copy read at, and the job applies what it yields, records
//! its checkpoint after every applied transaction and the keys it touched, so the final pass
//! only catches up the last seconds and verifies only what changed.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::store::Cursor;

/// A point in a store's change stream, opaque to the engine: the store writes it, the catalog
/// keeps it, and the store opens a follower from it (a binlog file and offset or GTID set, a
/// replication id and offset per database, a resume token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamPosition(pub serde_json::Value);

/// A key a follower changed on the target, so the verify in the window checks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Touched {
    /// The unit (as named by the store's inventory) the key belongs to.
    pub unit: String,
    /// The key, as the store's cursors name rows; `None` when the change touched the unit as a
    /// whole (a keyless table, a flushed database), so all of it is verified.
    pub key: Option<Cursor>,
}

/// How far a follower is behind its source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// Seconds between the source's commit of the last change applied and the moment it was
    /// applied, when the stream carries commit times (the binary log does; Redis' does not).
    pub seconds: Option<f64>,
    /// What the source has written that is not applied yet, in the store's unit (`behind_unit`).
    pub behind: Option<u64>,
    /// What `behind` counts: `events`, `bytes`.
    pub behind_unit: String,
}

/// What one call of [`Follower::apply`] did. The target holds every change up to `position`,
/// which ends at a transaction boundary: resuming from it neither misses nor repeats a
/// transaction that matters (row images applied again converge to the same rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub position: StreamPosition,
    /// Changes applied (rows, commands, documents).
    pub events: u64,
    /// Transactions (or commands outside one) applied.
    pub transactions: u64,
    pub lag: Lag,
    pub touched: Vec<Touched>,
}

/// One store's change stream, opened at a recorded position and applied to the target.
///
/// Errors that end following (a DDL statement in the stream, the source's log no longer holding
/// the position) say what happened and, in their hint, what to do next (usually the delta pass:
/// `offload copy --resume --delta`).
#[async_trait]
pub trait Follower: Send {
    /// Read what the source writes within about `wait` and apply it to the target, ending at a
    /// transaction boundary; returns with nothing applied when nothing arrived.
    async fn apply(&mut self, wait: Duration) -> Result<Applied, StoreError>;

    /// Where the source's stream ends now. Read after the source's writers are held off, it is
    /// the point the follower must reach before the target holds everything.
    async fn source_head(&mut self) -> Result<StreamPosition, StoreError>;

    /// Whether every change up to `head` is applied.
    fn caught_up(&self, head: &StreamPosition) -> bool;

    /// Release the stream's connections.
    async fn close(self: Box<Self>);
}

/// A store's follow state as the catalog keeps it between runs and shows it in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowCheckpoint {
    pub position: StreamPosition,
    /// Changes applied since following started, over all runs.
    pub events: u64,
    pub transactions: u64,
    pub lag: Lag,
    /// When the checkpoint was written (RFC 3339).
    pub at: String,
}
