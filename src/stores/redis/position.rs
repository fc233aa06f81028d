//! Where a Redis target stands in its source's replication stream, database by database: the
//! copy reads each database from a snapshot of its own, taken at its own replication offset,
//! and a follower must apply to each database only what came after that database's snapshot.
//! The same shape serves as the copy's stream start and as the follower's checkpoint, and a
//! marker key on the target records it atomically with every batch the follower applies, so a
//! follower killed between applying and checkpointing neither repeats nor misses a command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::replica::SnapshotAt;
use crate::core::follow::StreamPosition;

/// The key, in each target database the follower writes, that holds where that database
/// stands in the source's stream (see the module docs). Verification leaves it out, and a
/// follower that stops cleanly removes it.
pub const MARKER_KEY: &str = "__offload_follow_position__";

/// A point in the source's replication stream up to which a database's target holds every
/// change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbEntry {
    pub replid: String,
    /// Bytes of the stream applied (or held by the snapshot); reading goes on at `offset + 1`.
    pub offset: u64,
    /// The source database the stream has selected at `offset`; `None` when the stream selects
    /// one before its next command (right after a snapshot, the source forces a `SELECT`).
    #[serde(default)]
    pub db: Option<i64>,
}

impl DbEntry {
    pub fn of_snapshot(at: &SnapshotAt) -> DbEntry {
        DbEntry {
            replid: at.replid.clone(),
            offset: at.offset,
            db: None,
        }
    }
}

/// Per source database, where its target stands; `None`: no exact point (read live with SCAN,
/// keys read live beside a snapshot, or a load in progress), so following starts with a new
/// snapshot of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisPosition {
    pub dbs: BTreeMap<String, Option<DbEntry>>,
}

/// How a follower starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// `PSYNC <replid> <offset + 1>`; commands of a database at offsets up to its `skip` entry
    /// are already held by its target.
    Continue {
        replid: String,
        offset: u64,
        db: Option<i64>,
        skip: BTreeMap<i64, u64>,
    },
    /// Load a new snapshot of every database first.
    Resync,
}

impl RedisPosition {
    pub fn parse(p: &StreamPosition) -> Option<RedisPosition> {
        serde_json::from_value(p.0.clone()).ok()
    }

    pub fn to_stream(&self) -> StreamPosition {
        StreamPosition(serde_json::to_value(self).expect("position serializes"))
    }

    pub fn get(&self, db: i64) -> Option<&DbEntry> {
        self.dbs.get(&db.to_string()).and_then(Option::as_ref)
    }

    pub fn set(&mut self, db: i64, entry: Option<DbEntry>) {
        self.dbs.insert(db.to_string(), entry);
    }

    /// Where following the databases `dbs` starts: from the earliest entry, when every one of
    /// them has one and all are in the same replication history.
    pub fn start(&self, dbs: &[i64]) -> Start {
        let mut entries = Vec::with_capacity(dbs.len());
        for db in dbs {
            match self.get(*db) {
                Some(e) => entries.push((*db, e)),
                None => return Start::Resync,
            }
        }
        let Some((_, first)) = entries.iter().min_by_key(|(_, e)| e.offset) else {
            return Start::Resync;
        };
        if entries.iter().any(|(_, e)| e.replid != first.replid) {
            return Start::Resync;
        }
        Start::Continue {
            replid: first.replid.clone(),
            offset: first.offset,
            db: first.db,
            skip: entries.iter().map(|(db, e)| (*db, e.offset)).collect(),
        }
    }
}

/// What the marker key of a target database says.
#[derive(Debug, Clone, PartialEq)]
pub enum Marker {
    /// The follower was loading a new snapshot into it: no exact point.
    Loading,
    At(DbEntry),
}

impl Marker {
    pub fn encode(&self) -> String {
        match self {
            Marker::Loading => r#"{"loading":true}"#.to_string(),
            Marker::At(e) => serde_json::to_string(e).expect("entry serializes"),
        }
    }

    /// `None` for a value this version did not write (it is then ignored).
    pub fn decode(text: &[u8]) -> Option<Marker> {
        let v: serde_json::Value = serde_json::from_slice(text).ok()?;
        if v.get("loading").is_some() {
            return Some(Marker::Loading);
        }
        serde_json::from_value(v).ok().map(Marker::At)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(replid: &str, offset: u64, db: Option<i64>) -> Option<DbEntry> {
        Some(DbEntry {
            replid: replid.into(),
            offset,
            db,
        })
    }

    #[test]
    fn following_starts_at_the_earliest_database_and_skips_what_later_snapshots_hold() {
        let mut p = RedisPosition::default();
        p.set(0, entry("a", 500, None));
        p.set(1, entry("a", 300, Some(1)));
        let again = RedisPosition::parse(&p.to_stream()).unwrap();
        assert_eq!(again, p);
        assert_eq!(
            p.start(&[0, 1]),
            Start::Continue {
                replid: "a".into(),
                offset: 300,
                db: Some(1),
                skip: [(0, 500), (1, 300)].into_iter().collect(),
            }
        );
    }

    #[test]
    fn a_database_without_a_point_or_another_history_means_a_new_snapshot() {
        let mut p = RedisPosition::default();
        p.set(0, entry("a", 500, None));
        assert_eq!(p.start(&[0, 1]), Start::Resync, "database 1 has no entry");
        p.set(1, None);
        assert_eq!(p.start(&[0, 1]), Start::Resync, "database 1 was read live");
        p.set(1, entry("b", 10, None));
        assert_eq!(p.start(&[0, 1]), Start::Resync, "two histories");
        assert_eq!(p.start(&[]), Start::Resync);
    }

    #[test]
    fn markers_say_loading_or_where_a_database_stands() {
        for m in [Marker::Loading, Marker::At(entry("a", 7, Some(0)).unwrap())] {
            assert_eq!(Marker::decode(m.encode().as_bytes()), Some(m));
        }
        assert_eq!(Marker::decode(b"not json"), None);
    }
}
