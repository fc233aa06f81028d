//! Reading ahead: a copy's source read runs in a task of its own and keeps documents ready for
//! the target, within a budget of bytes shared by every read of the source, so the target goes
//! on inserting while the source is busy elsewhere.
//!
//! Why: SecantusDB computes a query's whole result before its first reply and serves nothing
//! else meanwhile, so a copy that holds no documents leaves the target idle for every such
//! computation (see `docs/benchmarks-mongodb.md`). A read therefore keeps its turn at the source
//! (see `turns`) until it holds its share: the budget is full, it has read a budget's worth since
//! its turn began, or the collection is read. Only then does the next collection's query start,
//! and the target inserts from what is in hand while it computes. On `mongod`, whose first
//! replies come at once, the read-ahead only evens out source and target speeds.
//!
//! The task cuts documents into chunks of about one insert and marks where a batch (one
//! checkpoint) ends, by the same counts a batch read in place would use. A read whose copy has
//! taken everything it held does not wait for the budget: a read parked between batches (an
//! interrupted unit's, say) can hold the budget, never stop another copy. Memory is bounded by
//! the budget plus about four inserts per read (one written, one ready, one being cut, and the
//! driver's current reply), as `docs/mongodb.md` says.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mongodb::bson::{RawBson, RawDocumentBuf};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::keys;
use super::read::{Read, ReadStop};
use super::turns::Turn;

/// Where chunks and batches end.
#[derive(Clone, Copy, Debug)]
pub struct Cuts {
    /// A chunk ends once it holds this many bytes (one insert on the target).
    pub insert_bytes: u64,
    /// A batch ends after this many documents ...
    pub batch_docs: u64,
    /// ... or this many bytes, whichever comes first.
    pub batch_bytes: u64,
}

/// Documents read ahead, in `_id` order, with their share of the budget.
pub struct Chunk {
    pub docs: Vec<RawDocumentBuf>,
    pub bytes: u64,
    /// The `_id` of the last document.
    pub last: RawBson,
    /// Whether a batch ends with this chunk.
    pub ends_batch: bool,
    /// Held until the documents are written; dropping it lets the reads take more. `None` for
    /// a chunk read while the copy held nothing of this read.
    pub share: Option<OwnedSemaphorePermit>,
}

/// What the read has next.
pub enum Next {
    Chunk(Chunk),
    /// The read is complete.
    End,
    /// The read failed.
    Stop(ReadStop),
    /// The read's task ended without saying why (it panicked): nothing after the last chunk
    /// can be trusted to be read.
    Lost,
}

/// The budget of bytes all reads of one source may hold ahead.
pub struct Budget {
    permits: Arc<Semaphore>,
    /// The budget in bytes; also the most one chunk takes of it.
    bytes: u32,
}

impl Budget {
    /// A budget of `bytes` (at most 4 GiB), never less than `floor`: at least one insert's
    /// worth is always read ahead.
    pub fn new(bytes: u64, floor: u64) -> Budget {
        let bytes = bytes.max(floor).clamp(1, u64::from(u32::MAX)) as u32;
        Budget {
            permits: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
        }
    }

    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// A source read running ahead of its batches. Dropping it stops the read.
pub struct ReadAhead {
    items: mpsc::UnboundedReceiver<Next>,
    held: Arc<Held>,
    /// Whether the read walks the `_id` index (see `read`).
    pub walk: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReadAhead {
    /// Start reading `read` ahead; `turn` is let go once the read holds its share.
    pub fn start(read: Read, turn: Turn, budget: &Budget, cuts: Cuts, unit: &str) -> ReadAhead {
        let (tx, items) = mpsc::unbounded_channel();
        let held = Arc::new(Held::default());
        let walk = read.walk;
        let task = tokio::spawn(pump(
            read,
            turn,
            budget.permits.clone(),
            budget.bytes,
            cuts,
            unit.to_string(),
            Sender {
                tx,
                held: held.clone(),
            },
        ));
        ReadAhead {
            items,
            held,
            walk,
            task,
        }
    }

    /// The next chunk, the end, or why there is neither.
    pub async fn next(&mut self) -> Next {
        let Some(next) = self.items.recv().await else {
            return Next::Lost;
        };
        if self.held.chunks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.held.taken.notify_one();
        }
        next
    }
}

/// How many items a read holds that its copy has not taken yet.
#[derive(Default)]
struct Held {
    chunks: AtomicUsize,
    /// Told when the copy took the last of them.
    taken: Notify,
}

/// The task's end of a read: what it sends is counted as held.
struct Sender {
    tx: mpsc::UnboundedSender<Next>,
    held: Arc<Held>,
}

impl Sender {
    fn send(&self, next: Next) -> bool {
        self.held.chunks.fetch_add(1, Ordering::SeqCst);
        self.tx.send(next).is_ok()
    }

    /// A share of `want` bytes of the budget for the next chunk, or none when the copy holds
    /// nothing of this read (it need not wait then). `on_full` runs if the budget is full.
    async fn share(
        &self,
        permits: &Arc<Semaphore>,
        want: u32,
        mut on_full: impl FnMut(),
    ) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(share) = permits.clone().try_acquire_many_owned(want) {
                return Some(share);
            }
            on_full();
            if self.held.chunks.load(Ordering::SeqCst) == 0 {
                return None;
            }
            tokio::select! {
                share = permits.clone().acquire_many_owned(want) => return share.ok(),
                _ = self.held.taken.notified() => {}
            }
        }
    }
}

/// The read's task. The channel itself is unbounded; what bounds it is that every chunk takes
/// its bytes from the budget before it is sent.
async fn pump(
    mut read: Read,
    turn: Turn,
    permits: Arc<Semaphore>,
    cap: u32,
    cuts: Cuts,
    unit: String,
    tx: Sender,
) {
    let mut turn = Some(turn);
    let mut since_turn = 0u64;
    let (mut docs_read, mut bytes_read) = (0u64, 0u64);
    let (mut batch_docs, mut batch_bytes) = (0u64, 0u64);
    loop {
        let mut docs = Vec::new();
        let (mut bytes, mut last, mut ends_batch, mut end) = (0u64, None, false, false);
        loop {
            match read.next().await {
                Ok(true) => {}
                Ok(false) => {
                    end = true;
                    break;
                }
                Err(stop) => {
                    let _ = tx.send(Next::Stop(stop));
                    return;
                }
            }
            let doc = read.current();
            match keys::id_of(doc) {
                Ok(id) => last = Some(id.to_raw_bson()),
                Err(why) => {
                    let _ = tx.send(Next::Stop(ReadStop::Malformed(why)));
                    return;
                }
            }
            let n = doc.as_bytes().len() as u64;
            docs.push(doc.to_raw_document_buf());
            bytes += n;
            batch_docs += 1;
            batch_bytes += n;
            if batch_docs >= cuts.batch_docs || batch_bytes >= cuts.batch_bytes {
                ends_batch = true;
                (batch_docs, batch_bytes) = (0, 0);
                break;
            }
            if bytes >= cuts.insert_bytes {
                break;
            }
        }
        if let Some(last) = last {
            let want = bytes.clamp(1, u64::from(cap)) as u32;
            // A full budget hands the turn on: the next collection's query may start while
            // the target works through what is in hand.
            let share = tx
                .share(&permits, want, || {
                    if turn.take().is_some() {
                        tracing::debug!(store = "mongodb", %unit, docs_read, bytes_read, "read-ahead budget full; the source's next read may start");
                    }
                })
                .await;
            since_turn += bytes;
            docs_read += docs.len() as u64;
            bytes_read += bytes;
            if since_turn >= u64::from(cap) && turn.take().is_some() {
                // A source faster than the target never fills the budget; a budget's worth read
                // is still enough to hand the turn on.
                tracing::debug!(store = "mongodb", %unit, docs_read, bytes_read, "a read-ahead budget's worth read; the source's next read may start");
            }
            let chunk = Chunk {
                docs,
                bytes,
                last,
                ends_batch,
                share,
            };
            if !tx.send(Next::Chunk(chunk)) {
                return; // the copy no longer wants this read
            }
        }
        if end {
            tracing::debug!(store = "mongodb", %unit, docs_read, bytes_read, "source read complete");
            let _ = tx.send(Next::End);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_holds_at_least_one_insert_and_at_most_four_gib() {
        assert_eq!(Budget::new(0, 4096).available(), 4096);
        assert_eq!(Budget::new(1 << 20, 4096).available(), 1 << 20);
        assert_eq!(Budget::new(u64::MAX, 4096).bytes, u32::MAX);
    }

    #[tokio::test]
    async fn a_read_whose_copy_holds_nothing_goes_on_when_another_read_fills_the_budget() {
        use std::future::Future;
        use std::task::Poll;

        let budget = Budget::new(100, 1);
        // Another read, parked between batches, holds the whole budget.
        let parked = budget
            .permits
            .clone()
            .acquire_many_owned(100)
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let held = Arc::new(Held::default());
        let tx = Sender {
            tx,
            held: held.clone(),
        };
        let mut copy = ReadAhead {
            items: rx,
            held,
            walk: false,
            task: tokio::spawn(async {}),
        };

        // The copy holds nothing of this read: no wait, no share, and the turn is handed on.
        let mut handed_on = 0;
        assert!(tx
            .share(&budget.permits, 10, || handed_on += 1)
            .await
            .is_none());
        assert_eq!(handed_on, 1);

        // It holds one chunk: the read waits until the copy takes it, then goes on unshared.
        assert!(tx.send(Next::End));
        let share = tx.share(&budget.permits, 10, || {});
        tokio::pin!(share);
        let first = std::future::poll_fn(|cx| Poll::Ready(share.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "went on while the copy held a chunk");
        assert!(matches!(copy.next().await, Next::End));
        assert!(share.await.is_none());

        // Room in the budget: a share is taken.
        drop(parked);
        assert!(tx.share(&budget.permits, 10, || {}).await.is_some());
    }
}
