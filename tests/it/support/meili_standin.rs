//! A Meilisearch STAND-IN for the tests: no Meilisearch server can be installed from a registry on
//! these machines, so this in-process HTTP server keeps Meilisearch's rules for the endpoints
//! offload uses (asynchronous tasks with enqueued/processing/succeeded/failed statuses, settings
//! returned as the real server returns them, NDJSON and JSON documents with primary-key
//! validation, index uid validation, the payload limit, index swap, placeholder search, keys whose
//! uid must be a UUID with Meilisearch's key derivation, a master key of at least 16 bytes, bearer
//! authentication).
//! It is not Meilisearch: results against it are stand-in results. What it keeps was compared with
//! a real server (docs/meilisearch.md). Set OFFLOAD_TEST_MEILISEARCH_URL and
//! OFFLOAD_TEST_MEILISEARCH_KEY to run the same tests against a real server.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

/// How the stand-in behaves.
#[derive(Clone)]
pub struct StandinConfig {
    pub master_key: Option<String>,
    /// Largest request body accepted (Meilisearch's `--http-payload-size-limit`).
    pub payload_limit: usize,
    /// What `/version` reports. A `0.x` version also has no `/swap-indexes` route, like servers
    /// before 1.0.
    pub version: String,
}

impl Default for StandinConfig {
    fn default() -> Self {
        StandinConfig {
            master_key: Some("standin-master-key-0123456789".into()),
            payload_limit: 100 * 1024 * 1024,
            version: "1.50.0-standin".into(),
        }
    }
}

struct Index {
    primary_key: Option<String>,
    docs: BTreeMap<String, Value>,
    settings: Map<String, Value>,
}

struct Task {
    uid: u64,
    index_uid: Option<String>,
    kind: &'static str,
    status: &'static str,
    error: Option<Value>,
    op: Option<Op>,
}

enum Op {
    CreateIndex {
        uid: String,
        primary_key: Option<String>,
    },
    DeleteIndex {
        uid: String,
    },
    Settings {
        uid: String,
        patch: Map<String, Value>,
    },
    AddDocuments {
        uid: String,
        primary_key: Option<String>,
        docs: Vec<Value>,
    },
    Swap {
        a: String,
        b: String,
    },
}

#[derive(Default)]
struct State {
    indexes: BTreeMap<String, Index>,
    tasks: Vec<Task>,
    queue: VecDeque<u64>,
    keys: BTreeMap<String, Value>,
}

/// A running stand-in; stops when dropped.
pub struct MeiliStandin {
    pub url: String,
    pub master_key: Option<String>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The settings of a new index, as Meilisearch 1.50 gives them.
fn default_settings() -> Map<String, Value> {
    json!({
        "displayedAttributes": ["*"],
        "searchableAttributes": ["*"],
        "filterableAttributes": [],
        "sortableAttributes": [],
        "rankingRules": ["words", "typo", "proximity", "attributeRank", "sort", "wordPosition", "exactness"],
        "stopWords": [],
        "nonSeparatorTokens": [],
        "separatorTokens": [],
        "dictionary": [],
        "synonyms": {},
        "distinctAttribute": null,
        "proximityPrecision": "byWord",
        "typoTolerance": {"enabled": true, "minWordSizeForTypos": {"oneTypo": 5, "twoTypos": 9}, "disableOnWords": [], "disableOnAttributes": [], "disableOnNumbers": false},
        "faceting": {"maxValuesPerFacet": 100, "sortFacetValuesBy": {"*": "alpha"}},
        "pagination": {"maxTotalHits": 1000},
        "embedders": {},
        "searchCutoffMs": null,
        "localizedAttributes": null,
        "facetSearch": true,
        "prefixSearch": "indexingTime",
    })
    .as_object()
    .cloned()
    .expect("object")
}

/// The shortest master key Meilisearch starts with in production.
pub const MASTER_KEY_MIN_BYTES: usize = 16;

impl MeiliStandin {
    /// Start a stand-in on a random loopback port, on its own thread and runtime (so a test may
    /// block on the `offload` binary while it serves). Like Meilisearch in production, it refuses
    /// to start with a master key shorter than 16 bytes.
    pub fn start(config: StandinConfig) -> MeiliStandin {
        if let Some(key) = &config.master_key {
            assert!(
                key.len() >= MASTER_KEY_MIN_BYTES,
                "the stand-in, like Meilisearch in production, needs a master key of at least {MASTER_KEY_MIN_BYTES} bytes"
            );
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let master_key = config.master_key.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, config, stop_rx));
        });
        MeiliStandin {
            url,
            master_key,
            _stop: stop_tx,
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    config: StandinConfig,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    let notify = Arc::new(tokio::sync::Notify::new());
    let config = Arc::new(config);
    // The task worker: processes enqueued tasks one at a time, in order, like Meilisearch.
    {
        let state = state.clone();
        let notify = notify.clone();
        let config = config.clone();
        tokio::spawn(async move {
            loop {
                let next = { state.lock().unwrap().queue.pop_front() };
                match next {
                    Some(uid) => {
                        {
                            let mut s = state.lock().unwrap();
                            s.tasks[uid as usize].status = "processing";
                        }
                        tokio::task::yield_now().await;
                        let mut s = state.lock().unwrap();
                        process(&mut s, uid, &config);
                    }
                    None => notify.notified().await,
                }
            }
        });
    }
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let notify = notify.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (state, notify, config) = (state.clone(), notify.clone(), config.clone());
                        async move { Ok::<_, Infallible>(handle(req, &state, &notify, &config).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let kind = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "auth",
        StatusCode::INTERNAL_SERVER_ERROR => "internal",
        _ => "invalid_request",
    };
    reply(
        status,
        json!({"message": message, "code": code, "type": kind, "link": format!("https://docs.meilisearch.com/errors#{code}")}),
    )
}

fn enqueue(
    state: &Mutex<State>,
    notify: &tokio::sync::Notify,
    kind: &'static str,
    index_uid: Option<String>,
    op: Op,
) -> Response<Full<Bytes>> {
    let mut s = state.lock().unwrap();
    let uid = s.tasks.len() as u64;
    s.tasks.push(Task {
        uid,
        index_uid: index_uid.clone(),
        kind,
        status: "enqueued",
        error: None,
        op: Some(op),
    });
    s.queue.push_back(uid);
    drop(s);
    notify.notify_one();
    reply(
        StatusCode::ACCEPTED,
        json!({"taskUid": uid, "indexUid": index_uid, "status": "enqueued", "type": kind, "enqueuedAt": "2024-01-01T00:00:00Z"}),
    )
}

fn key_value(master: &str, uid: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(master.as_bytes()).unwrap();
    mac.update(uid.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A key uid as Meilisearch reads one (the `uuid` crate's forms: hyphenated, simple, braced,
/// URN; any case), in the lowercase hyphenated form the key's value is derived from; or why not,
/// in the words of Meilisearch's `invalid_api_key_uid` message.
fn parse_key_uid(text: &str) -> Result<String, String> {
    let braced = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .filter(|t| t.len() == 36);
    let (inner, offset) = match (text.strip_prefix("urn:uuid:"), braced) {
        (Some(rest), _) => (rest, 9),
        (None, Some(inner)) => (inner, 1),
        (None, None) => (text, 0),
    };
    let hex: String = match inner.len() {
        32 => inner.to_string(),
        36 if [8, 13, 18, 23].iter().all(|&i| inner.as_bytes()[i] == b'-') => {
            inner.replace('-', "")
        }
        _ => String::new(),
    };
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let h = hex.to_ascii_lowercase();
        return Ok(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ));
    }
    if let Some((i, c)) = inner
        .char_indices()
        .find(|(_, c)| !c.is_ascii_hexdigit() && *c != '-')
    {
        return Err(format!("invalid character: found `{c}` at {}", i + offset));
    }
    let groups: Vec<&str> = inner.split('-').collect();
    if groups.len() == 1 {
        return Err(format!("invalid length: found {}", text.len()));
    }
    if groups.len() != 5 {
        return Err(format!(
            "invalid group count: expected 5, found {}",
            groups.len()
        ));
    }
    let (group, (g, expected)) = groups
        .iter()
        .zip([8, 4, 4, 4, 12])
        .enumerate()
        .find(|(_, (g, n))| g.len() != *n)
        .expect("a malformed hyphenated uuid has a group of the wrong length");
    Err(format!(
        "invalid group length in group {group}: expected {expected}, found {}",
        g.len()
    ))
}

/// Whether Meilisearch accepts `uid` as an index uid.
fn valid_index_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 400
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid_index_uid(uid: &str) -> Response<Full<Bytes>> {
    api_error(
        StatusCode::BAD_REQUEST,
        "invalid_index_uid",
        &format!("`{uid}` is not a valid index uid. Index uid can be an integer or a string containing only alphanumeric characters, hyphens (-) and underscores (_), and can not be more than 512 bytes."),
    )
}

/// Whether Meilisearch accepts `pattern` in a key's `indexes`.
fn valid_index_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => valid_index_uid(prefix),
        None => valid_index_uid(pattern),
    }
}

/// The action Meilisearch requires of an API key for a route offload uses, and the index the
/// route is about.
fn route_action<'a>(method: &Method, segs: &[&'a str]) -> (&'static str, Option<&'a str>) {
    let read = *method == Method::GET;
    match segs {
        ["version"] => ("version", None),
        ["indexes"] if read => ("indexes.get", None),
        ["indexes"] => ("indexes.create", None),
        ["indexes", uid] if read => ("indexes.get", Some(uid)),
        ["indexes", uid] if *method == Method::DELETE => ("indexes.delete", Some(uid)),
        ["indexes", uid] => ("indexes.update", Some(uid)),
        ["indexes", uid, "settings", ..] if read => ("settings.get", Some(uid)),
        ["indexes", uid, "settings", ..] => ("settings.update", Some(uid)),
        ["indexes", uid, "documents", ..] if read => ("documents.get", Some(uid)),
        ["indexes", uid, "documents", ..] if *method == Method::DELETE => {
            ("documents.delete", Some(uid))
        }
        ["indexes", uid, "documents", ..] => ("documents.add", Some(uid)),
        ["indexes", uid, "stats"] => ("stats.get", Some(uid)),
        ["indexes", uid, "search"] => ("search", Some(uid)),
        ["swap-indexes"] => ("indexes.swap", None),
        ["tasks", ..] => ("tasks.get", None),
        ["keys", ..] if read => ("keys.get", None),
        ["keys", ..] if *method == Method::DELETE => ("keys.delete", None),
        ["keys", ..] if *method == Method::POST => ("keys.create", None),
        ["keys", ..] => ("keys.update", None),
        _ => ("*", None),
    }
}

/// Whether an API key may call a route: one of its actions is `*`, the route's action, or
/// `<group>.*` of it, and one of its index patterns covers the route's index.
fn key_allows(key: &Value, method: &Method, segs: &[&str]) -> bool {
    let (action, index) = route_action(method, segs);
    let strings = |field: &str| -> Vec<String> {
        key[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let action_ok = strings("actions").iter().any(|a| {
        a == "*"
            || a == action
            || a.strip_suffix(".*")
                .is_some_and(|group| action.split('.').next() == Some(group))
    });
    let index_ok = index.is_none_or(|uid| {
        strings("indexes")
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => uid.starts_with(prefix),
                None => p == uid,
            })
    });
    action_ok && index_ok
}

/// The key a `/keys/{uid_or_key}` path names: by uid when the segment reads as a UUID, else by
/// its value.
fn find_key<'a>(keys: &'a BTreeMap<String, Value>, id: &str) -> Option<&'a Value> {
    match parse_key_uid(id) {
        Ok(uid) => keys.get(&uid),
        Err(_) => keys.values().find(|k| k["key"] == *id),
    }
}

fn valid_document_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s)
            if !s.is_empty()
                && s.len() <= 511
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Some(s.clone())
        }
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn process(s: &mut State, uid: u64, _config: &StandinConfig) {
    let op = s.tasks[uid as usize].op.take();
    let failure: Option<(&str, String)> = match op {
        None => None,
        Some(Op::CreateIndex {
            uid: name,
            primary_key,
        }) => match s.indexes.entry(name) {
            std::collections::btree_map::Entry::Occupied(e) => Some((
                "index_already_exists",
                format!("Index `{}` already exists.", e.key()),
            )),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Index {
                    primary_key,
                    docs: BTreeMap::new(),
                    settings: default_settings(),
                });
                None
            }
        },
        Some(Op::DeleteIndex { uid: name }) => match s.indexes.remove(&name) {
            Some(_) => None,
            None => Some(("index_not_found", format!("Index `{name}` not found."))),
        },
        Some(Op::Settings { uid: name, patch }) => {
            let index = s.indexes.entry(name).or_insert_with(|| Index {
                primary_key: None,
                docs: BTreeMap::new(),
                settings: default_settings(),
            });
            let defaults = default_settings();
            for (k, v) in patch {
                let value = if v.is_null() {
                    defaults.get(&k).cloned().unwrap_or(Value::Null)
                } else {
                    v
                };
                // Meilisearch keeps filterable attributes (a list of rules) and searchable
                // attributes in the order set; sortable attributes are a set, returned sorted.
                let value = match (k.as_str(), value) {
                    ("sortableAttributes", Value::Array(mut a)) => {
                        a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
                        a.dedup();
                        Value::Array(a)
                    }
                    (_, v) => v,
                };
                index.settings.insert(k, value);
            }
            None
        }
        Some(Op::AddDocuments {
            uid: name,
            primary_key,
            docs,
        }) => {
            let existing_pk = s.indexes.get(&name).and_then(|i| i.primary_key.clone());
            let pk = existing_pk.clone().or(primary_key.clone()).or_else(|| {
                docs.first()
                    .and_then(|d| d.as_object())
                    .and_then(|o| o.keys().find(|k| k.to_lowercase().contains("id")).cloned())
            });
            match (&existing_pk, &primary_key) {
                (Some(e), Some(p)) if e != p => Some((
                    "index_primary_key_already_exists",
                    format!("Index `{name}`: Index already has a primary key: `{e}`."),
                )),
                _ => match pk {
                    None => Some((
                        "index_primary_key_no_candidate_found",
                        "The primary key inference failed".to_string(),
                    )),
                    Some(pk) => {
                        let mut staged = Vec::new();
                        let mut bad = None;
                        for d in docs {
                            match d.get(&pk) {
                                None => {
                                    bad = Some((
                                        "missing_document_id",
                                        format!("Document doesn't have a `{pk}` attribute: `{d}`."),
                                    ));
                                    break;
                                }
                                Some(v) => match valid_document_id(v) {
                                    Some(id) => staged.push((id, d)),
                                    None => {
                                        bad = Some(("invalid_document_id", format!("Document identifier `{v}` is invalid. A document identifier can be of type integer or string, only composed of alphanumeric characters (a-z A-Z 0-9), hyphens (-) and underscores (_), and can not be more than 511 bytes.")));
                                        break;
                                    }
                                },
                            }
                        }
                        match bad {
                            Some(b) => Some(b),
                            None => {
                                let index = s.indexes.entry(name).or_insert_with(|| Index {
                                    primary_key: None,
                                    docs: BTreeMap::new(),
                                    settings: default_settings(),
                                });
                                index.primary_key.get_or_insert(pk);
                                for (id, d) in staged {
                                    index.docs.insert(id, d);
                                }
                                None
                            }
                        }
                    }
                },
            }
        }
        Some(Op::Swap { a, b }) => {
            if !s.indexes.contains_key(&a) {
                Some(("index_not_found", format!("Indexes `{a}` not found.")))
            } else if !s.indexes.contains_key(&b) {
                Some(("index_not_found", format!("Indexes `{b}` not found.")))
            } else {
                let ia = s.indexes.remove(&a).unwrap();
                let ib = s.indexes.remove(&b).unwrap();
                s.indexes.insert(a, ib);
                s.indexes.insert(b, ia);
                None
            }
        }
    };
    let task = &mut s.tasks[uid as usize];
    match failure {
        None => task.status = "succeeded",
        Some((code, message)) => {
            task.status = "failed";
            task.error = Some(
                json!({"message": message, "code": code, "type": "invalid_request", "link": format!("https://docs.meilisearch.com/errors#{code}")}),
            );
        }
    }
}

/// How Meilisearch's error messages name a JSON value's type.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn index_json(uid: &str, i: &Index) -> Value {
    json!({"uid": uid, "primaryKey": i.primary_key, "createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00Z"})
}

async fn handle(
    req: Request<Incoming>,
    state: &Mutex<State>,
    notify: &tokio::sync::Notify,
    config: &StandinConfig,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    if segs == ["health"] && method == Method::GET {
        return reply(StatusCode::OK, json!({"status": "available"}));
    }
    // Authentication: the master key, or a key created on this server.
    if let Some(master) = &config.master_key {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(token) = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) else {
            return api_error(
                StatusCode::UNAUTHORIZED,
                "missing_authorization_header",
                "The Authorization header is missing. It must use the bearer authorization method.",
            );
        };
        let is_master = token == master;
        let allowed = is_master
            || state
                .lock()
                .unwrap()
                .keys
                .values()
                .any(|k| k["key"] == token && key_allows(k, &method, &segs));
        if !allowed {
            return api_error(
                StatusCode::FORBIDDEN,
                "invalid_api_key",
                "The provided API key is invalid.",
            );
        }
    }
    let old_server = config.version.starts_with("0.");
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let primary_key_param = query_param(&req, "primaryKey");
    let offset: usize = query_param(&req, "offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = query_param(&req, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "malformed_payload",
                "could not read the body",
            )
        }
    };
    if body.len() > config.payload_limit {
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("The provided payload reached the size limit. The maximum accepted payload size is {}.", config.payload_limit),
        );
    }
    let json_body = || serde_json::from_slice::<Value>(&body);
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["version"]) => reply(
            StatusCode::OK,
            json!({"pkgVersion": config.version, "commitSha": "standin", "commitDate": "2024-01-01"}),
        ),
        (Method::GET, ["indexes"]) => {
            let s = state.lock().unwrap();
            let all: Vec<Value> = s.indexes.iter().map(|(u, i)| index_json(u, i)).collect();
            let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
            reply(
                StatusCode::OK,
                json!({"results": page, "offset": offset, "limit": limit, "total": all.len()}),
            )
        }
        (Method::POST, ["indexes"]) => {
            let Ok(v) = json_body() else {
                return api_error(StatusCode::BAD_REQUEST, "bad_request", "invalid JSON");
            };
            let Some(uid) = v["uid"].as_str() else {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "missing_index_uid",
                    "Missing field `uid`",
                );
            };
            if !valid_index_uid(uid) {
                return invalid_index_uid(uid);
            }
            let pk = v["primaryKey"].as_str().map(str::to_string);
            enqueue(
                state,
                notify,
                "indexCreation",
                Some(uid.into()),
                Op::CreateIndex {
                    uid: uid.into(),
                    primary_key: pk,
                },
            )
        }
        (Method::GET, ["indexes", uid]) => match state.lock().unwrap().indexes.get(*uid) {
            Some(i) => reply(StatusCode::OK, index_json(uid, i)),
            None => api_error(
                StatusCode::NOT_FOUND,
                "index_not_found",
                &format!("Index `{uid}` not found."),
            ),
        },
        (Method::DELETE, ["indexes", uid]) => enqueue(
            state,
            notify,
            "indexDeletion",
            Some(uid.to_string()),
            Op::DeleteIndex {
                uid: uid.to_string(),
            },
        ),
        (Method::GET, ["indexes", uid, "settings"]) => {
            match state.lock().unwrap().indexes.get(*uid) {
                Some(i) => reply(StatusCode::OK, Value::Object(i.settings.clone())),
                None => api_error(
                    StatusCode::NOT_FOUND,
                    "index_not_found",
                    &format!("Index `{uid}` not found."),
                ),
            }
        }
        (Method::PATCH, ["indexes", uid, "settings"]) if !valid_index_uid(uid) => {
            invalid_index_uid(uid)
        }
        (Method::POST | Method::PUT, ["indexes", uid, "documents"]) if !valid_index_uid(uid) => {
            invalid_index_uid(uid)
        }
        (Method::PATCH, ["indexes", uid, "settings"]) => {
            let Ok(Value::Object(patch)) = json_body() else {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "expected a JSON object",
                );
            };
            let known = default_settings();
            if let Some(k) = patch.keys().find(|k| !known.contains_key(*k)) {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("Unknown field `{k}`"),
                );
            }
            enqueue(
                state,
                notify,
                "settingsUpdate",
                Some(uid.to_string()),
                Op::Settings {
                    uid: uid.to_string(),
                    patch,
                },
            )
        }
        (Method::POST | Method::PUT, ["indexes", uid, "documents"]) => {
            let docs: Vec<Value> = if content_type.starts_with("application/x-ndjson") {
                let mut out = Vec::new();
                for line in body
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                {
                    match serde_json::from_slice::<Value>(line) {
                        Ok(v @ Value::Object(_)) => out.push(v),
                        _ => {
                            return api_error(
                                StatusCode::BAD_REQUEST,
                                "malformed_payload",
                                "The `ndjson` payload provided is malformed.",
                            )
                        }
                    }
                }
                out
            } else if content_type.starts_with("application/json") {
                match json_body() {
                    Ok(Value::Array(a)) => a,
                    Ok(v @ Value::Object(_)) => vec![v],
                    _ => {
                        return api_error(
                            StatusCode::BAD_REQUEST,
                            "malformed_payload",
                            "The `json` payload provided is malformed.",
                        )
                    }
                }
            } else {
                return api_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_content_type",
                    "The Content-Type is not supported.",
                );
            };
            enqueue(
                state,
                notify,
                "documentAdditionOrUpdate",
                Some(uid.to_string()),
                Op::AddDocuments {
                    uid: uid.to_string(),
                    primary_key: primary_key_param,
                    docs,
                },
            )
        }
        (Method::GET, ["indexes", uid, "documents"]) => {
            match state.lock().unwrap().indexes.get(*uid) {
                Some(i) => {
                    let page: Vec<Value> =
                        i.docs.values().skip(offset).take(limit).cloned().collect();
                    reply(
                        StatusCode::OK,
                        json!({"results": page, "offset": offset, "limit": limit, "total": i.docs.len()}),
                    )
                }
                None => api_error(
                    StatusCode::NOT_FOUND,
                    "index_not_found",
                    &format!("Index `{uid}` not found."),
                ),
            }
        }
        (Method::GET, ["indexes", uid, "documents", id]) => {
            match state.lock().unwrap().indexes.get(*uid) {
                Some(i) => match i.docs.get(*id) {
                    Some(d) => reply(StatusCode::OK, d.clone()),
                    None => api_error(
                        StatusCode::NOT_FOUND,
                        "document_not_found",
                        &format!("Document `{id}` not found."),
                    ),
                },
                None => api_error(
                    StatusCode::NOT_FOUND,
                    "index_not_found",
                    &format!("Index `{uid}` not found."),
                ),
            }
        }
        // A placeholder search (`q` empty) finds every document; otherwise documents whose JSON
        // holds `q`, without case (the stand-in has no ranking: hits come in id order).
        (Method::POST, ["indexes", uid, "search"]) => {
            let Ok(v) = json_body() else {
                return api_error(StatusCode::BAD_REQUEST, "bad_request", "invalid JSON");
            };
            let q = v["q"].as_str().unwrap_or("").to_lowercase();
            let limit = v["limit"].as_u64().unwrap_or(20) as usize;
            let offset = v["offset"].as_u64().unwrap_or(0) as usize;
            match state.lock().unwrap().indexes.get(*uid) {
                Some(i) => {
                    let found: Vec<&Value> = i
                        .docs
                        .values()
                        .filter(|d| q.is_empty() || d.to_string().to_lowercase().contains(&q))
                        .collect();
                    let hits: Vec<Value> = found
                        .iter()
                        .skip(offset)
                        .take(limit)
                        .map(|d| (*d).clone())
                        .collect();
                    reply(
                        StatusCode::OK,
                        json!({"hits": hits, "query": q, "processingTimeMs": 0, "limit": limit, "offset": offset, "estimatedTotalHits": found.len()}),
                    )
                }
                None => api_error(
                    StatusCode::NOT_FOUND,
                    "index_not_found",
                    &format!("Index `{uid}` not found."),
                ),
            }
        }
        (Method::GET, ["indexes", uid, "stats"]) => match state.lock().unwrap().indexes.get(*uid) {
            Some(i) => reply(
                StatusCode::OK,
                json!({"numberOfDocuments": i.docs.len(), "isIndexing": false, "fieldDistribution": {}}),
            ),
            None => api_error(
                StatusCode::NOT_FOUND,
                "index_not_found",
                &format!("Index `{uid}` not found."),
            ),
        },
        (Method::POST, ["swap-indexes"]) if !old_server => {
            let Ok(Value::Array(pairs)) = json_body() else {
                return api_error(StatusCode::BAD_REQUEST, "bad_request", "expected an array");
            };
            let Some(pair) = pairs
                .first()
                .and_then(|p| p["indexes"].as_array())
                .filter(|p| p.len() == 2)
            else {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_swap_indexes",
                    "Two indexes must be given.",
                );
            };
            let (a, b) = (
                pair[0].as_str().unwrap_or("").to_string(),
                pair[1].as_str().unwrap_or("").to_string(),
            );
            enqueue(state, notify, "indexSwap", None, Op::Swap { a, b })
        }
        (Method::GET, ["tasks", uid]) => {
            let s = state.lock().unwrap();
            match uid.parse::<usize>().ok().and_then(|u| s.tasks.get(u)) {
                Some(t) => reply(
                    StatusCode::OK,
                    json!({"uid": t.uid, "indexUid": t.index_uid, "status": t.status, "type": t.kind, "error": t.error, "enqueuedAt": "2024-01-01T00:00:00Z"}),
                ),
                None => api_error(
                    StatusCode::NOT_FOUND,
                    "task_not_found",
                    &format!("Task `{uid}` not found."),
                ),
            }
        }
        (Method::GET, ["keys", id]) => {
            let s = state.lock().unwrap();
            match find_key(&s.keys, id) {
                Some(k) => reply(StatusCode::OK, k.clone()),
                None => api_error(
                    StatusCode::NOT_FOUND,
                    "api_key_not_found",
                    &format!("API key `{id}` not found."),
                ),
            }
        }
        (Method::DELETE, ["keys", id]) => {
            let mut s = state.lock().unwrap();
            let uid = find_key(&s.keys, id).map(|k| k["uid"].as_str().unwrap_or("").to_string());
            match uid {
                Some(uid) => {
                    s.keys.remove(&uid);
                    Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                }
                None => api_error(
                    StatusCode::NOT_FOUND,
                    "api_key_not_found",
                    &format!("API key `{id}` not found."),
                ),
            }
        }
        (Method::POST, ["keys"]) => {
            let Ok(v) = json_body() else {
                return api_error(StatusCode::BAD_REQUEST, "bad_request", "invalid JSON");
            };
            // Meilisearch's checks, in its order: the uid (a UUID; a fresh one when absent), then
            // the required fields.
            let uid = match &v["uid"] {
                Value::Null => {
                    let n = state.lock().unwrap().keys.len() as u64;
                    Ok(format!("00000000-0000-4000-8000-{n:012x}"))
                }
                Value::String(text) => {
                    parse_key_uid(text).map_err(|why| format!("Invalid value at `.uid`: {why}"))
                }
                other => Err(format!(
                    "Invalid value type at `.uid`: expected a string, but found {}: `{other}`",
                    json_kind(other)
                )),
            };
            let uid = match uid {
                Ok(uid) => uid,
                Err(message) => {
                    return api_error(StatusCode::BAD_REQUEST, "invalid_api_key_uid", &message)
                }
            };
            for (field, code) in [
                ("actions", "missing_api_key_actions"),
                ("indexes", "missing_api_key_indexes"),
                ("expiresAt", "missing_api_key_expires_at"),
            ] {
                if v.get(field).is_none() {
                    return api_error(
                        StatusCode::BAD_REQUEST,
                        code,
                        &format!("Missing field `{field}`"),
                    );
                }
            }
            if let Some(bad) = v["indexes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| !p.as_str().is_some_and(valid_index_pattern))
            {
                let shown = bad.as_str().map(str::to_string).unwrap_or(bad.to_string());
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_api_key_indexes",
                    &format!("Invalid value at `.indexes[0]`: `{shown}` is not a valid index uid pattern. Index uid patterns can be an integer or a string containing only alphanumeric characters, hyphens (-), underscores (_), and optionally end with a star (*)."),
                );
            }
            let mut s = state.lock().unwrap();
            if s.keys.contains_key(&uid) {
                return api_error(
                    StatusCode::CONFLICT,
                    "api_key_already_exists",
                    &format!("`uid` field value `{uid}` is already an existing API key."),
                );
            }
            let key = json!({
                "name": v["name"], "description": v["description"],
                "key": key_value(config.master_key.as_deref().unwrap_or(""), &uid),
                "uid": uid,
                "actions": v["actions"], "indexes": v["indexes"], "expiresAt": v["expiresAt"],
                "createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00Z",
            });
            s.keys.insert(uid, key.clone());
            reply(StatusCode::CREATED, key)
        }
        _ => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("stand-in: no route {method} {path}"),
        ),
    }
}
