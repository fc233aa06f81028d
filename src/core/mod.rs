//! The engine every store plugs into: units, the job catalog, the copy runner, verification and progress.
//!
//! Nothing in here knows about clap, indicatif or a store's driver; stores own mechanics, this module
//! owns policy (ordering, concurrency, retries, checkpoints, cancellation, comparison).

pub mod catalog;
pub mod delta;
pub mod epoch;
pub mod error;
pub mod failpoint;
pub mod follow;
pub mod plan;
pub mod progress;
pub mod runner;
pub mod store;
pub mod verify;

pub use error::{CoreError, ErrorKind, StoreError};
pub use store::{
    BatchOutcome, ChunkDigest, Cursor, EndIdentity, Identity, IfExists, KeyRange, RowDigest, Side,
    Store, StoreKind, Unit,
};
