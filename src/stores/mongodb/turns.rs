//! Turns at opening a query, one server at a time: a read waits for its turn before it asks for
//! its first reply, and among waiting reads the smallest collection goes first.
//!
//! Why: a server such as SecantusDB computes a query's whole result before its first reply and
//! shares one core between the queries it works on, so reads opened together all wait for the
//! last of them (measured: three collections opened at once answered together after 31 s, where
//! the first alone answers in under a second). Taking turns lets each collection's documents
//! flow as soon as its own result is ready; smallest first, because the time such a server takes
//! grows with the collection, so the target gets documents soonest and the largest
//! collection's computation comes last, while the target works through what the others read
//! ahead (see `ahead`, which also says when a copy's read lets its turn go). On `mongod` a first
//! reply comes from the index at once, so a turn costs nothing there.

use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// One waiting read: the smaller collection (in bytes) first, then the earlier arrival.
struct Waiter {
    size: u64,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.size, self.seq) == (other.size, other.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // The heap pops its greatest: make that the smallest size, then the lowest `seq`.
        other
            .size
            .cmp(&self.size)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct State {
    busy: bool,
    seq: u64,
    waiting: BinaryHeap<Waiter>,
}

/// The turns of one server.
#[derive(Default)]
pub struct Turns {
    state: Mutex<State>,
}

/// Holding a turn; the next waiter goes when it is dropped. A read that reads ahead keeps it
/// until its documents are in hand (see `ahead`).
pub struct Turn {
    turns: Arc<Turns>,
}

impl Turns {
    /// Wait for a turn for a read of a collection of `size` bytes; among waiting reads the
    /// smallest goes first.
    pub async fn take(self: &Arc<Self>, size: u64) -> Turn {
        let wait = {
            let mut s = self.state.lock().expect("turns lock");
            if !s.busy {
                s.busy = true;
                None
            } else {
                let (wake, woken) = oneshot::channel();
                s.seq += 1;
                let seq = s.seq;
                s.waiting.push(Waiter { size, seq, wake });
                Some(woken)
            }
        };
        if let Some(woken) = wait {
            // The turn is handed over with `busy` still set; a dropped sender cannot happen
            // while `Turns` lives, since only `release` removes waiters.
            let _ = woken.await;
        }
        Turn {
            turns: self.clone(),
        }
    }

    fn release(&self) {
        let mut s = self.state.lock().expect("turns lock");
        while let Some(next) = s.waiting.pop() {
            if next.wake.send(()).is_ok() {
                return; // the turn passes to `next`; `busy` stays set
            }
            // That waiter gave up (its task was cancelled): offer the turn to the next one.
        }
        s.busy = false;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn waiting_reads_go_smallest_first_and_one_at_a_time() {
        let turns = Arc::new(Turns::default());
        let first = turns.take(1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let holding = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (arrival, size) in [50u64, 5, 70, 5].into_iter().enumerate() {
            let (mine, order, holding) = (turns.clone(), order.clone(), holding.clone());
            tasks.push(tokio::spawn(async move {
                let _t = mine.take(size).await;
                let others = holding.fetch_add(1, Ordering::SeqCst);
                order.lock().unwrap().push((size, arrival, others));
                tokio::task::yield_now().await;
                holding.fetch_sub(1, Ordering::SeqCst);
            }));
            // Let the task queue up before the next one arrives.
            while turns.state.lock().unwrap().waiting.len() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        // Smallest first, equal sizes in arrival order, and nobody held a turn alongside.
        assert_eq!(
            *order.lock().unwrap(),
            vec![(5, 1, 0), (5, 3, 0), (50, 0, 0), (70, 2, 0)]
        );
        assert!(!turns.state.lock().unwrap().busy);
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_does_not_keep_the_turn() {
        let turns = Arc::new(Turns::default());
        let held = turns.take(1).await;
        let quitter = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _t = turns.take(100).await;
            })
        };
        while turns.state.lock().unwrap().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        quitter.abort();
        let _ = quitter.await;
        drop(held);
        // The abandoned waiter was skipped, so a new read gets the turn at once.
        let _t = turns.take(1).await;
    }
}
