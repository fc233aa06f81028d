//! Which life of a target server a copy's writes went into: a target that restarted mid-copy may
//! have lost what it acknowledged (Redis without persistence loses everything), so the runner
//! compares the target's epoch before it records a batch, after each round of units and at the
//! start of every run against the one the catalog holds, and copies again a store's units when
//! the life they were written into ended without keeping them.

use serde::{Deserialize, Serialize};

/// One life of a target server process, as its store reads it (`INFO server` run id, MySQL's
/// server uuid and start time, MongoDB's topology process id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetEpoch {
    /// What names this server process (equal for one process, different after a restart), or
    /// the server when `started_at` tells the processes apart.
    pub process: String,
    /// When the process started, in Unix seconds, for servers that name no process: read as
    /// "now minus uptime" (both whole seconds, in one statement), it may be one second off
    /// between two reads, so a restart within a second of the previous start goes unnoticed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// Whether this life keeps what it acknowledged when it ends (every commit flushed to disk
    /// before it is acknowledged). When it does not, every write into it is lost with it.
    pub keeps_writes: bool,
    /// How the store says why it keeps or loses writes (`no persistence`, `commits flushed`),
    /// for the messages that report a restart.
    #[serde(default)]
    pub durability: String,
}

/// Seconds two reads of one process's start time may differ by (each read is "now minus uptime",
/// both whole seconds).
const START_TIME_SLACK_S: i64 = 1;

impl TargetEpoch {
    /// Whether `other` is the same life of the same server as this one.
    pub fn same_life(&self, other: &TargetEpoch) -> bool {
        self.process == other.process
            && match (self.started_at, other.started_at) {
                (Some(a), Some(b)) => (a - b).abs() <= START_TIME_SLACK_S,
                (None, None) => true,
                _ => false,
            }
    }

    /// The epoch in words, for logs and messages.
    pub fn describe(&self) -> String {
        match self.started_at {
            Some(at) => format!("{} started at {at}", self.process),
            None => self.process.clone(),
        }
    }
}

/// What a comparison of the target's epoch against the one the writes went into finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochCheck {
    /// The same life: everything written is there as far as a restart goes.
    Same,
    /// The target restarted, and the life that ended kept what it acknowledged: go on.
    RestartedKept,
    /// The target restarted, and the life that ended may have taken writes with it: every unit
    /// written into it is to be copied again.
    RestartedLost,
}

/// Compare the epoch the writes went into (`written`) with the target's now (`now`).
pub fn compare(written: &TargetEpoch, now: &TargetEpoch) -> EpochCheck {
    if written.same_life(now) {
        EpochCheck::Same
    } else if written.keeps_writes {
        EpochCheck::RestartedKept
    } else {
        EpochCheck::RestartedLost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(process: &str, started_at: Option<i64>, keeps_writes: bool) -> TargetEpoch {
        TargetEpoch {
            process: process.into(),
            started_at,
            keeps_writes,
            durability: String::new(),
        }
    }

    #[test]
    fn a_new_process_is_a_restart_and_whether_it_lost_writes_is_the_old_life_s_say() {
        let old = epoch("a", None, false);
        assert_eq!(compare(&old, &epoch("a", None, true)), EpochCheck::Same);
        assert_eq!(
            compare(&old, &epoch("b", None, true)),
            EpochCheck::RestartedLost
        );
        let durable = epoch("a", None, true);
        assert_eq!(
            compare(&durable, &epoch("b", None, false)),
            EpochCheck::RestartedKept
        );
    }

    #[test]
    fn start_times_a_second_apart_are_one_process_and_later_ones_a_restart() {
        let old = epoch("uuid", Some(1_000), false);
        assert!(old.same_life(&epoch("uuid", Some(1_001), false)));
        assert!(old.same_life(&epoch("uuid", Some(999), false)));
        assert!(!old.same_life(&epoch("uuid", Some(1_002), false)));
        assert!(!old.same_life(&epoch("uuid", Some(1_010), false)));
        assert!(!old.same_life(&epoch("uuid", None, false)));
    }

    #[test]
    fn an_epoch_round_trips_through_json() {
        let e = epoch("run-1", Some(5), true);
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<TargetEpoch>(&text).unwrap(), e);
    }
}
