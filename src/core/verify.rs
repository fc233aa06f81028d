//! Verification owned by the core: walk each unit's key space in chunks, digest the same key
//! range on both sides, and where a chunk differs, narrow it to named rows (missing, extra,
//! different). Reads only; the two sides are never written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::error::{CoreError, StoreError};
use super::progress::{Phase, Reporter, StoreTotals, UnitOutcome};
use super::runner::with_retries;
use super::store::{Cursor, RowDigest, ShapeDifference, Side, Store, StoreKind, Unit};

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub parallel: usize,
    pub retries: u32,
    /// Rows per compared chunk.
    pub chunk_rows: u64,
    /// Most differences named per unit; the rest are counted.
    pub max_named: usize,
    /// Units to compare only at these keys (the verify in the window, after a clean full
    /// verify: what followers touched since); every other unit given is compared whole.
    pub keys: Arc<HashMap<(StoreKind, String), Vec<Cursor>>>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            parallel: 4,
            retries: 3,
            chunk_rows: 20_000,
            max_named: 50,
            keys: Arc::default(),
        }
    }
}

/// What kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// On the source, not on the target.
    Missing,
    /// On the target, not on the source.
    Extra,
    /// On both, with different content.
    Differ,
}

/// One named difference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Difference {
    pub kind: DiffKind,
    /// The key range of the chunk it was found in.
    pub range: String,
    /// The row's key, when narrowed to one.
    pub key: Option<String>,
}

/// A check that spans stores (e.g. the course index against the modulestore), run after the
/// units are verified.
#[derive(Debug, Clone, Serialize)]
pub struct CrossCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The verification of one unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitVerify {
    pub store: StoreKind,
    pub unit: String,
    pub container: String,
    pub object: String,
    pub source_rows: u64,
    pub target_rows: u64,
    pub chunks: u64,
    pub chunks_differ: u64,
    /// Differences found beyond those named.
    pub unnamed: u64,
    pub differences: Vec<Difference>,
    pub error: Option<String>,
    /// Records by kind on both sides (Redis: keys per type), for stores that count them so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<KindCount>,
}

/// How many records of one kind each side holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCount {
    pub kind: String,
    pub source: u64,
    pub target: u64,
}

/// Per-kind counts of both sides, every kind either side has, in name order.
fn kind_counts(source: &BTreeMap<String, u64>, target: &BTreeMap<String, u64>) -> Vec<KindCount> {
    let names: std::collections::BTreeSet<&String> = source.keys().chain(target.keys()).collect();
    names
        .into_iter()
        .map(|k| KindCount {
            kind: k.clone(),
            source: source.get(k).copied().unwrap_or(0),
            target: target.get(k).copied().unwrap_or(0),
        })
        .collect()
}

impl UnitVerify {
    /// A unit's verification before anything is compared.
    fn of(unit: &Unit) -> UnitVerify {
        UnitVerify {
            store: unit.store,
            unit: unit.name.clone(),
            container: unit.container.clone(),
            object: unit.object.clone(),
            source_rows: 0,
            target_rows: 0,
            chunks: 0,
            chunks_differ: 0,
            unnamed: 0,
            differences: Vec::new(),
            error: None,
            kinds: Vec::new(),
        }
    }

    pub fn matched(&self) -> bool {
        self.error.is_none() && self.chunks_differ == 0 && self.source_rows == self.target_rows
    }
}

/// The verification of a whole job.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    pub units: Vec<UnitVerify>,
    pub shape: Vec<(StoreKind, ShapeDifference)>,
    /// Set when this was a verify in the window (only what changed since the last clean full
    /// verify); `None` for a full verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowScope>,
}

/// What a verify in the window covered, and what it relies on.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WindowScope {
    /// When the last clean full verify finished (RFC 3339): units not checked now are as they
    /// were then, since nothing but followers and delta passes (which record what they touch)
    /// wrote to the targets after it.
    pub last_full_verify: String,
    /// Units compared at the keys followers touched.
    pub units_by_key: usize,
    /// Keys compared in them.
    pub keys: u64,
    /// Units compared whole (touched whole, or by a store that cannot address single rows).
    pub units_whole: usize,
    /// Units nothing touched since the last full verify, not compared again.
    pub units_untouched: usize,
}

impl VerifyReport {
    /// Whether source and target hold the same data and shape.
    pub fn clean(&self) -> bool {
        self.shape.is_empty() && self.units.iter().all(|u| u.matched())
    }

    pub fn units_differing(&self) -> usize {
        self.units.iter().filter(|u| !u.matched()).count()
    }

    /// Whether a check could not run at all (as opposed to finding differences).
    pub fn had_errors(&self) -> bool {
        self.units.iter().any(|u| u.error.is_some())
    }
}

/// Verify every given unit of the stores, reporting progress, and record outcomes in the catalog
/// when one is given.
pub async fn verify(
    stores: &[Arc<dyn Store>],
    units: Vec<Unit>,
    options: &VerifyOptions,
    reporter: Arc<dyn Reporter>,
    catalog: Option<Arc<Catalog>>,
    cancel: &CancellationToken,
) -> Result<VerifyReport, CoreError> {
    let by_kind: HashMap<StoreKind, Arc<dyn Store>> =
        stores.iter().map(|s| (s.kind(), s.clone())).collect();
    let mut report = VerifyReport::default();
    for store in stores {
        let mine: Vec<Unit> = units
            .iter()
            .filter(|u| u.store == store.kind())
            .cloned()
            .collect();
        for d in store.compare_shape(&mine).await? {
            report.shape.push((store.kind(), d));
        }
    }

    reporter.on_phase_start(
        Phase::Verify,
        units.len() as u64,
        units.iter().map(|u| u.est_rows).sum(),
        0,
    );
    for (kind, totals) in StoreTotals::of_units(&units) {
        reporter.on_store_totals(Phase::Verify, kind, &totals);
    }
    let permits = Arc::new(Semaphore::new(options.parallel.max(1)));
    let mut tasks = JoinSet::new();
    for (index, unit) in units.into_iter().enumerate() {
        let Some(store) = by_kind.get(&unit.store).cloned() else {
            continue;
        };
        let (permits, reporter, options, cancel) = (
            permits.clone(),
            reporter.clone(),
            options.clone(),
            cancel.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            if cancel.is_cancelled() {
                return (index, None);
            }
            reporter.on_unit_start(Phase::Verify, &unit);
            let result = match options.keys.get(&(unit.store, unit.name.clone())) {
                Some(keys) => match verify_keys(&*store, &unit, keys, &options, &*reporter).await {
                    Err(e) if e.kind == super::error::ErrorKind::Unsupported => {
                        verify_unit(&*store, &unit, &options, &*reporter, &cancel).await
                    }
                    other => other,
                },
                None => verify_unit(&*store, &unit, &options, &*reporter, &cancel).await,
            };
            let uv = match result {
                Ok(uv) => uv,
                Err(e) => UnitVerify {
                    error: Some(e.to_string()),
                    ..UnitVerify::of(&unit)
                },
            };
            let outcome = if uv.matched() {
                UnitOutcome::Done
            } else if let Some(e) = &uv.error {
                UnitOutcome::Failed(e.clone())
            } else {
                UnitOutcome::Differs(format!("{} chunk(s) differ", uv.chunks_differ))
            };
            reporter.on_unit_done(Phase::Verify, &unit, &outcome);
            (index, Some((unit, uv)))
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Some((unit, uv)))) => {
                if let Some(catalog) = &catalog {
                    let state = if uv.matched() { "matched" } else { "differs" };
                    let detail = serde_json::to_string(&uv).unwrap_or_default();
                    catalog.set_verified(&unit, state, &detail)?;
                }
                results.push((index, uv));
            }
            Ok((_, None)) => {}
            Err(e) => return Err(CoreError::Invalid(format!("a verify worker crashed: {e}"))),
        }
    }
    if cancel.is_cancelled() {
        return Err(CoreError::Interrupted);
    }
    results.sort_by_key(|(i, _)| *i);
    report.units = results.into_iter().map(|(_, uv)| uv).collect();
    reporter.on_phase_done(Phase::Verify);
    Ok(report)
}

async fn verify_unit(
    store: &dyn Store,
    unit: &Unit,
    options: &VerifyOptions,
    reporter: &dyn Reporter,
    cancel: &CancellationToken,
) -> Result<UnitVerify, StoreError> {
    let mut uv = UnitVerify::of(unit);
    let (mut source_kinds, mut target_kinds) = (BTreeMap::new(), BTreeMap::new());
    let retries = options.retries;
    let limit = options.chunk_rows.max(1);
    let digest = |side: Side, after: Option<Cursor>, upto: Option<Cursor>, limit: Option<u64>| async move {
        with_retries(
            retries,
            cancel,
            |_, _| {},
            || store.digest_range(side, unit, after.as_ref(), upto.as_ref(), limit),
        )
        .await
    };

    let mut after = unit.range.after.clone();
    let mut source = digest(
        Side::Source,
        after.clone(),
        unit.range.upto.clone(),
        Some(limit),
    )
    .await?;
    loop {
        if cancel.is_cancelled() {
            return Ok(uv);
        }
        let last_chunk = source.rows < limit || source.last.is_none();
        let upto = if last_chunk {
            unit.range.upto.clone()
        } else {
            source.last.clone()
        };
        // Digest this chunk on the target while reading the next chunk of the source.
        let next_source = async {
            if last_chunk {
                Ok(None)
            } else {
                digest(
                    Side::Source,
                    source.last.clone(),
                    unit.range.upto.clone(),
                    Some(limit),
                )
                .await
                .map(Some)
            }
        };
        let (target, next) = tokio::join!(
            digest(Side::Target, after.clone(), upto.clone(), None),
            next_source
        );
        let (target, next) = (target?, next?);
        uv.chunks += 1;
        uv.source_rows += source.rows;
        uv.target_rows += target.rows;
        for (kinds, chunk) in [(&mut source_kinds, &source), (&mut target_kinds, &target)] {
            for (k, n) in &chunk.kinds {
                *kinds.entry(k.clone()).or_insert(0u64) += n;
            }
        }
        reporter.on_batch(Phase::Verify, unit, source.rows, source.bytes);
        if source.rows != target.rows || source.digest != target.digest {
            uv.chunks_differ += 1;
            let range = store.render_range(unit, after.as_ref(), upto.as_ref());
            tracing::warn!(store = %unit.store, unit = %unit.name, range = %range, source_rows = source.rows, target_rows = target.rows, "chunk differs");
            name_differences(
                store,
                unit,
                after.as_ref(),
                upto.as_ref(),
                &range,
                options,
                &mut uv,
            )
            .await?;
        }
        match next {
            Some(n) => {
                after = source.last.clone();
                source = n;
            }
            None => break,
        }
    }
    uv.kinds = kind_counts(&source_kinds, &target_kinds);
    Ok(uv)
}

async fn name_differences(
    store: &dyn Store,
    unit: &Unit,
    after: Option<&Cursor>,
    upto: Option<&Cursor>,
    range: &str,
    options: &VerifyOptions,
    uv: &mut UnitVerify,
) -> Result<(), StoreError> {
    let cap = (options.chunk_rows as usize).saturating_mul(4).max(1000);
    let (src, tgt) = tokio::join!(
        store.row_digests(Side::Source, unit, after, upto, cap),
        store.row_digests(Side::Target, unit, after, upto, cap)
    );
    let (src, tgt) = (src?, tgt?);
    if src.len() >= cap || tgt.len() >= cap {
        // Too many rows to name one by one: report the range.
        uv.differences.push(Difference {
            kind: DiffKind::Differ,
            range: range.to_string(),
            key: None,
        });
        return Ok(());
    }
    let mut found = compare_rows(&src, &tgt);
    if found.is_empty() {
        // Same rows, different digest: only possible if the store digests more than rows.
        found.push((DiffKind::Differ, String::new()));
    }
    for (kind, key) in found {
        if uv.differences.len() < options.max_named {
            uv.differences.push(Difference {
                kind,
                range: range.to_string(),
                key: (!key.is_empty()).then_some(key),
            });
        } else {
            uv.unnamed += 1;
        }
    }
    Ok(())
}

/// The rows that differ between two sides' per-row digests, as (kind, key). Keys may repeat for
/// keyless units (the key is then the row's content), so the sides compare as multisets.
fn compare_rows(src: &[RowDigest], tgt: &[RowDigest]) -> Vec<(DiffKind, String)> {
    let mut target: HashMap<&str, Vec<[u8; 16]>> = HashMap::new();
    for r in tgt {
        target.entry(r.key.as_str()).or_default().push(r.digest);
    }
    let mut found = Vec::new();
    for r in src {
        match target.get_mut(r.key.as_str()) {
            Some(list) if !list.is_empty() => {
                if let Some(pos) = list.iter().position(|d| *d == r.digest) {
                    list.swap_remove(pos);
                } else {
                    list.pop();
                    found.push((DiffKind::Differ, r.key.clone()));
                }
            }
            _ => found.push((DiffKind::Missing, r.key.clone())),
        }
    }
    for r in tgt {
        if let Some(list) = target.get_mut(r.key.as_str()) {
            if !list.is_empty() {
                list.pop();
                found.push((DiffKind::Extra, r.key.clone()));
            }
        }
    }
    found
}

/// Keys compared per request in the verify in the window.
const KEYS_PER_REQUEST: usize = 1000;

/// Compare a unit only at the given keys (what followers touched), on both sides.
async fn verify_keys(
    store: &dyn Store,
    unit: &Unit,
    keys: &[Cursor],
    options: &VerifyOptions,
    reporter: &dyn Reporter,
) -> Result<UnitVerify, StoreError> {
    let mut uv = UnitVerify::of(unit);
    for part in keys.chunks(KEYS_PER_REQUEST) {
        let (src, tgt) = tokio::join!(
            store.row_digests_at(Side::Source, unit, part),
            store.row_digests_at(Side::Target, unit, part)
        );
        let (src, tgt) = (src?, tgt?);
        uv.chunks += 1;
        uv.source_rows += src.len() as u64;
        uv.target_rows += tgt.len() as u64;
        reporter.on_batch(Phase::Verify, unit, part.len() as u64, 0);
        let found = compare_rows(&src, &tgt);
        if found.is_empty() {
            continue;
        }
        uv.chunks_differ += 1;
        for (kind, key) in found {
            if uv.differences.len() < options.max_named {
                uv.differences.push(Difference {
                    kind,
                    range: "keys changed since the last full verify".into(),
                    key: Some(key),
                });
            } else {
                uv.unnamed += 1;
            }
        }
    }
    Ok(uv)
}
