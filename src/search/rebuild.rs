//! The zero-downtime rebuild of one index: a shadow index `<uid>__offload_shadow` gets the
//! settings first, then the documents in NDJSON batches under the payload limit (every task
//! awaited; a failed task stops the rebuild), then the shadow is swapped with the live index in
//! one atomic task and the old content deleted. Until the swap the live index is not touched.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;

use serde_json::Value;
use tokio::sync::mpsc;

use super::client::MeilisearchClient;
use super::specs::IndexSettings;
use crate::core::{ErrorKind, StoreError, StoreKind};

/// The suffix of the shadow index a rebuild fills before the swap.
pub const SHADOW_SUFFIX: &str = "__offload_shadow";

/// Where a producer sends the documents of one index.
pub struct DocSink {
    tx: mpsc::Sender<Value>,
}

impl DocSink {
    /// Send one document; `false` when the rebuild has stopped (the producer should stop too).
    pub async fn send(&self, doc: Value) -> bool {
        self.tx.send(doc).await.is_ok()
    }
}

/// What a rebuild did to one index.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IndexOutcome {
    pub index: String,
    pub documents: u64,
    pub bytes: u64,
    pub batches: u64,
    /// A deterministic sample of the documents sent (those whose primary key hashes lowest), for
    /// verification.
    #[serde(skip)]
    pub sample: Vec<Value>,
}

/// Rebuild settings shared by every index.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Largest NDJSON body sent at once; keep it under the server's payload limit (100 MB by default).
    pub batch_bytes: usize,
    /// Document batches in flight before the oldest is awaited.
    pub in_flight: usize,
    /// Documents kept for the field-by-field sample check.
    pub sample: usize,
}

/// The default largest NDJSON body (`--meilisearch-batch-bytes`): 64 MiB, under the server's
/// 100 MB default payload limit. Measured on Meilisearch 1.50 (docs/benchmarks-meilisearch.md),
/// 200,000 comments took 1.72x a single upload in 8 MiB bodies, 1.30x in 32 MiB and 1.03x in
/// 64 MiB: the server indexes few large payloads much faster than many small ones. One body at
/// a time is held in memory: it is built, then sent, before the next one starts.
pub const DEFAULT_BATCH_BYTES: usize = 64 * 1024 * 1024;

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            batch_bytes: DEFAULT_BATCH_BYTES,
            in_flight: 2,
            sample: 25,
        }
    }
}

/// Progress callback: documents and bytes of one acknowledged batch.
pub type OnBatch<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Rebuild `uid` on `client` from the documents `produce` sends, with `settings` applied first.
pub async fn rebuild_index<P, Fut>(
    client: &MeilisearchClient,
    uid: &str,
    settings: &IndexSettings,
    options: &RebuildOptions,
    on_batch: OnBatch<'_>,
    produce: P,
) -> Result<IndexOutcome, StoreError>
where
    P: FnOnce(DocSink) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let shadow = format!("{uid}{SHADOW_SUFFIX}");
    // A shadow left by a stopped run is discarded: its content is unknown.
    if client.get_index(&shadow).await?.is_some() {
        tracing::info!(index = %shadow, "deleting the shadow index a previous run left");
        let t = client.delete_index(&shadow).await?;
        client.wait(t, "delete the old shadow index").await?;
    }
    let t = client.create_index(&shadow, &settings.primary_key).await?;
    client.wait(t, "create the shadow index").await?;
    let t = client
        .update_settings(&shadow, &settings.patch_body())
        .await?;
    client.wait(t, "apply the index settings").await?;

    let filled = fill(
        client,
        &shadow,
        &settings.primary_key,
        options,
        on_batch,
        produce,
    )
    .await;
    let mut outcome = match filled {
        Ok(o) => o,
        Err(e) => {
            discard_shadow(client, &shadow).await;
            return Err(e.in_unit(uid));
        }
    };
    outcome.index = uid.to_string();
    if let Err(e) = swap_in(client, uid, &shadow, &settings.primary_key).await {
        discard_shadow(client, &shadow).await;
        return Err(e.in_unit(uid));
    }
    Ok(outcome)
}

/// Stream the documents into `shadow` in NDJSON batches, awaiting every task.
async fn fill<P, Fut>(
    client: &MeilisearchClient,
    shadow: &str,
    primary_key: &str,
    options: &RebuildOptions,
    on_batch: OnBatch<'_>,
    produce: P,
) -> Result<IndexOutcome, StoreError>
where
    P: FnOnce(DocSink) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let (tx, mut rx) = mpsc::channel::<Value>(256);
    let producer = produce(DocSink { tx });
    let consumer = async {
        let mut outcome = IndexOutcome::default();
        let mut sample: BTreeMap<[u8; 16], Value> = BTreeMap::new();
        let mut body: Vec<u8> = Vec::with_capacity(options.batch_bytes.min(64 << 20));
        let mut pending: VecDeque<(u64, u64, u64)> = VecDeque::new();
        // The body size that fits the server's payload limit, halved on every 413.
        let mut limit = options.batch_bytes;
        while let Some(doc) = rx.recv().await {
            let line = serde_json::to_vec(&doc).expect("a JSON value serializes");
            if !body.is_empty() && body.len() + line.len() + 1 > limit {
                let sent = send_fitting(
                    client,
                    shadow,
                    primary_key,
                    std::mem::take(&mut body),
                    &mut limit,
                )
                .await?;
                outcome.batches += sent.len() as u64;
                pending.extend(sent);
                while pending.len() > options.in_flight.max(1) {
                    let (t, n, b) = pending.pop_front().expect("non-empty");
                    client.wait(t, "add a batch of documents").await?;
                    on_batch(n, b);
                }
            }
            body.extend_from_slice(&line);
            body.push(b'\n');
            outcome.documents += 1;
            outcome.bytes += line.len() as u64 + 1;
            keep_sample(&mut sample, options.sample, doc, primary_key);
        }
        if !body.is_empty() {
            let sent = send_fitting(client, shadow, primary_key, body, &mut limit).await?;
            outcome.batches += sent.len() as u64;
            pending.extend(sent);
        }
        while let Some((t, n, b)) = pending.pop_front() {
            client.wait(t, "add a batch of documents").await?;
            on_batch(n, b);
        }
        outcome.sample = sample.into_values().collect();
        Ok::<_, StoreError>(outcome)
    };
    // If the consumer fails it drops the receiver, so the producer's next send fails and it stops.
    let (produced, consumed) = tokio::join!(producer, consumer);
    let outcome = consumed?;
    produced?;
    Ok(outcome)
}

/// Send one NDJSON body; when the server refuses it as larger than its payload limit (a server
/// started with a lower `--http-payload-size-limit`), split it at the line nearest its middle
/// and send the halves, and halve `limit` so later bodies fit at once. Gives each task sent, in
/// order, with its document count and bytes. A single document larger than the limit is an
/// error naming the limit.
async fn send_fitting(
    client: &MeilisearchClient,
    shadow: &str,
    primary_key: &str,
    body: Vec<u8>,
    limit: &mut usize,
) -> Result<Vec<(u64, u64, u64)>, StoreError> {
    let mut sent = Vec::new();
    // Parts still to send, the next one last.
    let mut parts = vec![body];
    while let Some(part) = parts.pop() {
        let docs = part.iter().filter(|&&b| b == b'\n').count() as u64;
        let size = part.len() as u64;
        // The body is moved into the request; keep a copy only while it may need splitting.
        let retry = (docs > 1).then(|| part.clone());
        match client.try_add_ndjson(shadow, primary_key, part).await? {
            Some(task) => sent.push((task, docs, size)),
            None => {
                let Some(part) = retry else {
                    return Err(StoreError::new(
                        StoreKind::Meilisearch,
                        "-",
                        ErrorKind::Input,
                        format!("one document of {size} bytes is larger than the server's payload limit"),
                        "raise the server's --http-payload-size-limit (MEILI_HTTP_PAYLOAD_SIZE_LIMIT) above it",
                    ));
                };
                let middle = part.len() / 2;
                let cut = part[..middle]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .or_else(|| {
                        part[middle..]
                            .iter()
                            .position(|&b| b == b'\n')
                            .map(|i| middle + i)
                    })
                    .map(|i| i + 1)
                    .filter(|&i| i < part.len())
                    .unwrap_or(part.len());
                let (first, second) = part.split_at(cut);
                *limit = (*limit / 2).max(first.len().max(second.len()) / 2).max(1);
                tracing::info!(index = shadow, bytes = size, now = *limit, "the server refused a batch as larger than its payload limit; sending it in halves");
                parts.push(second.to_vec());
                parts.push(first.to_vec());
            }
        }
    }
    Ok(sent)
}

/// Bottom-k sampling by a hash of the primary key: deterministic, bounded.
fn keep_sample(sample: &mut BTreeMap<[u8; 16], Value>, cap: usize, doc: Value, primary_key: &str) {
    if cap == 0 {
        return;
    }
    let key = match &doc[primary_key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut h = [0u8; 16];
    h.copy_from_slice(&blake3::hash(key.as_bytes()).as_bytes()[..16]);
    if sample.len() < cap {
        sample.insert(h, doc);
    } else if let Some((&largest, _)) = sample.iter().next_back() {
        if h < largest {
            sample.remove(&largest);
            sample.insert(h, doc);
        }
    }
}

/// Make the shadow live: create the live index when it does not exist yet (swap needs both),
/// swap atomically, then delete the shadow, which now holds the old content.
async fn swap_in(
    client: &MeilisearchClient,
    uid: &str,
    shadow: &str,
    primary_key: &str,
) -> Result<(), StoreError> {
    if client.get_index(uid).await?.is_none() {
        let t = client.create_index(uid, primary_key).await?;
        client
            .wait(t, "create the live index for the first swap")
            .await?;
    }
    let t = client.swap(shadow, uid).await?;
    client.wait(t, "swap the shadow index in").await?;
    tracing::info!(index = %uid, "swapped the rebuilt index in");
    let t = client.delete_index(shadow).await?;
    client.wait(t, "delete the previous content").await?;
    Ok(())
}

async fn discard_shadow(client: &MeilisearchClient, shadow: &str) {
    let result = async {
        if client.get_index(shadow).await?.is_some() {
            let t = client.delete_index(shadow).await?;
            client.wait(t, "delete the unfinished shadow index").await?;
        }
        Ok::<(), StoreError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(index = %shadow, error = %e, "could not delete the unfinished shadow index; the next run deletes it");
    }
}
