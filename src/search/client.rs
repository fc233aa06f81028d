//! A small Meilisearch HTTP client: the endpoints a rebuild needs (indexes, settings, NDJSON
//! documents, tasks, swap, keys), every asynchronous task awaited to its end, and server errors
//! mapped to [`StoreError`]s that say what to do. The key is sent as a bearer token, never logged.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::core::{ErrorKind, StoreError, StoreKind};
use crate::secret::Secret;

/// `url` with everything between `://` and its last `@` replaced by `***`, for messages about a
/// URL that may carry a password (a password may hold `/` or `?` unencoded, so the last `@`
/// ends the user part; hiding too much is safe). Found by fuzzing: refusals showed it.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// One Meilisearch server.
#[derive(Clone)]
pub struct MeilisearchClient {
    base: url::Url,
    key: Option<Secret>,
    http: reqwest::Client,
    /// How long one task may take before offload gives up waiting.
    pub task_timeout: Duration,
    /// `target` or `old`, for messages.
    role: &'static str,
}

impl std::fmt::Debug for MeilisearchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeilisearchClient")
            .field("url", &self.base.as_str())
            .field("role", &self.role)
            .finish()
    }
}

/// A finished (or still running) task.
#[derive(Debug, Clone)]
pub struct Task {
    pub uid: u64,
    pub status: String,
    pub kind: String,
    /// `code: message` of a failed task.
    pub error: Option<String>,
}

/// An index as `GET /indexes/{uid}` shows it.
#[derive(Debug, Clone)]
pub struct IndexInfo {
    pub uid: String,
    pub primary_key: Option<String>,
}

impl MeilisearchClient {
    /// A client for `url` (`http://host:7700`), authenticating with `key` when given.
    pub fn new(url: &str, key: Option<Secret>, role: &'static str) -> Result<Self, StoreError> {
        let shown = without_userinfo(url);
        let base = url::Url::parse(url).map_err(|e| {
            StoreError::new(
                StoreKind::Meilisearch,
                &shown,
                ErrorKind::Input,
                format!("not a Meilisearch URL ({e})"),
                "expected http://host:7700 or https://host",
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(StoreError::new(
                StoreKind::Meilisearch,
                &shown,
                ErrorKind::Input,
                "the Meilisearch URL must be http:// or https:// with a host",
                "expected http://host:7700 or https://host",
            ));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(StoreError::new(
                StoreKind::Meilisearch,
                base.host_str().unwrap_or("?"),
                ErrorKind::Input,
                "the Meilisearch URL carries credentials",
                "Meilisearch takes a key, not a user: remove them from the URL and pass the key with --to-meilisearch-key-file or OFFLOAD_TO_MEILISEARCH_KEY",
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| {
                StoreError::new(
                    StoreKind::Meilisearch,
                    &shown,
                    ErrorKind::Input,
                    format!("cannot build an HTTP client: {e}"),
                    "",
                )
            })?;
        Ok(MeilisearchClient {
            base,
            key,
            http,
            task_timeout: Duration::from_secs(3600),
            role,
        })
    }

    /// `host:port` for messages.
    pub fn address(&self) -> String {
        let host = self.base.host_str().unwrap_or("?");
        match self.base.port_or_known_default() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }

    /// The URL as given (no credentials can be in it).
    pub fn url(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    fn error(
        &self,
        kind: ErrorKind,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> StoreError {
        StoreError::new(StoreKind::Meilisearch, self.address(), kind, detail, hint)
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    /// Send a request; a JSON answer on success, a mapped error otherwise.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, Value), StoreError> {
        let mut req = self.http.request(method.clone(), self.endpoint(path));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key.expose());
        }
        if let Some((content_type, bytes)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                json!({"message": String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).to_string()})
            })
        };
        if status.is_success() {
            return Ok((status, value));
        }
        Err(self.api_error(status, &method, path, &value))
    }

    fn transport_error(&self, e: &reqwest::Error) -> StoreError {
        let mut detail = format!("cannot reach the {} Meilisearch: {e}", self.role);
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail.push_str(&format!(": {s}"));
            source = s.source();
        }
        self.error(
            if e.is_timeout() { ErrorKind::Transient } else { ErrorKind::Connect },
            detail,
            "check that the server is running and the URL is right (scheme, host and port); nothing was changed",
        )
    }

    fn api_error(
        &self,
        status: StatusCode,
        method: &Method,
        path: &str,
        value: &Value,
    ) -> StoreError {
        let code = value["code"].as_str().unwrap_or("");
        let message = value["message"].as_str().unwrap_or("").to_string();
        let detail = format!(
            "{method} {path} answered {status}: {code}{}{message}",
            if code.is_empty() { "" } else { ": " }
        );
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => self.error(
                ErrorKind::Auth,
                detail,
                if self.role == "target" {
                    "the master key was refused: check --to-meilisearch-key-file or OFFLOAD_TO_MEILISEARCH_KEY (the server's MEILI_MASTER_KEY); nothing was changed"
                } else {
                    "the old server's key was refused: check MEILISEARCH_MASTER_KEY in config.yml, --from-meilisearch-key-file or OFFLOAD_FROM_MEILISEARCH_KEY"
                },
            ),
            StatusCode::PAYLOAD_TOO_LARGE => self.error(
                ErrorKind::Query,
                detail,
                "the server's payload limit (--http-payload-size-limit) is lower than the batch: pass a smaller --meilisearch-batch-bytes",
            ),
            _ => self.error(ErrorKind::Query, detail, "fix the cause the server names and run again; the live index is untouched until the swap"),
        }
    }

    /// `GET /health`: whether the server answers as available.
    pub async fn health(&self) -> Result<(), StoreError> {
        let (_, v) = self.send(Method::GET, "/health", None).await?;
        if v["status"].as_str() == Some("available") {
            Ok(())
        } else {
            Err(self.error(
                ErrorKind::Connect,
                format!("/health answered {v}"),
                "the server is not available; check its logs",
            ))
        }
    }

    /// `GET /version`: the server's version (needs a valid key).
    pub async fn version(&self) -> Result<String, StoreError> {
        let (_, v) = self.send(Method::GET, "/version", None).await?;
        Ok(v["pkgVersion"].as_str().unwrap_or("unknown").to_string())
    }

    pub async fn get_index(&self, uid: &str) -> Result<Option<IndexInfo>, StoreError> {
        match self
            .send(Method::GET, &format!("/indexes/{uid}"), None)
            .await
        {
            Ok((_, v)) => Ok(Some(IndexInfo {
                uid: v["uid"].as_str().unwrap_or(uid).to_string(),
                primary_key: v["primaryKey"].as_str().map(str::to_string),
            })),
            Err(e) if e.detail.contains("index_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The uids of every index whose name starts with `prefix`.
    pub async fn list_indexes(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let (_, v) = self
                .send(
                    Method::GET,
                    &format!("/indexes?offset={offset}&limit=100"),
                    None,
                )
                .await?;
            let results = v["results"].as_array().cloned().unwrap_or_default();
            for r in &results {
                if let Some(uid) = r["uid"].as_str().filter(|u| u.starts_with(prefix)) {
                    out.push(uid.to_string());
                }
            }
            offset += results.len();
            if results.is_empty() || offset as u64 >= v["total"].as_u64().unwrap_or(0) {
                return Ok(out);
            }
        }
    }

    fn task_uid(&self, v: &Value) -> Result<u64, StoreError> {
        v["taskUid"].as_u64().ok_or_else(|| {
            self.error(
                ErrorKind::Query,
                format!("expected a task, got {v}"),
                "is this a Meilisearch server?",
            )
        })
    }

    pub async fn create_index(&self, uid: &str, primary_key: &str) -> Result<u64, StoreError> {
        let body =
            serde_json::to_vec(&json!({"uid": uid, "primaryKey": primary_key})).expect("json");
        let (_, v) = self
            .send(Method::POST, "/indexes", Some(("application/json", body)))
            .await?;
        self.task_uid(&v)
    }

    pub async fn delete_index(&self, uid: &str) -> Result<u64, StoreError> {
        let (_, v) = self
            .send(Method::DELETE, &format!("/indexes/{uid}"), None)
            .await?;
        self.task_uid(&v)
    }

    pub async fn update_settings(&self, uid: &str, settings: &Value) -> Result<u64, StoreError> {
        let body = serde_json::to_vec(settings).expect("json");
        let (_, v) = self
            .send(
                Method::PATCH,
                &format!("/indexes/{uid}/settings"),
                Some(("application/json", body)),
            )
            .await?;
        self.task_uid(&v)
    }

    pub async fn get_settings(&self, uid: &str) -> Result<Value, StoreError> {
        Ok(self
            .send(Method::GET, &format!("/indexes/{uid}/settings"), None)
            .await?
            .1)
    }

    /// `POST /indexes/{uid}/documents` with an NDJSON body (add or replace).
    pub async fn add_ndjson(
        &self,
        uid: &str,
        primary_key: &str,
        body: Vec<u8>,
    ) -> Result<u64, StoreError> {
        match self.try_add_ndjson(uid, primary_key, body).await? {
            Some(task) => Ok(task),
            None => Err(self.error(
                ErrorKind::Query,
                format!("POST /indexes/{uid}/documents answered 413: payload_too_large"),
                "the server's payload limit (--http-payload-size-limit) is lower than the batch: pass a smaller --meilisearch-batch-bytes",
            )),
        }
    }

    /// [`MeilisearchClient::add_ndjson`], with `None` when the server refuses the body as larger
    /// than its payload limit (413 `payload_too_large`), so the caller can send it in parts.
    pub async fn try_add_ndjson(
        &self,
        uid: &str,
        primary_key: &str,
        body: Vec<u8>,
    ) -> Result<Option<u64>, StoreError> {
        let path = format!("/indexes/{uid}/documents?primaryKey={primary_key}");
        let mut req = self.http.request(Method::POST, self.endpoint(&path));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key.expose());
        }
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.api_error(status, &Method::POST, &path, &value));
        }
        self.task_uid(&value).map(Some)
    }

    /// The number of documents in an index.
    pub async fn document_count(&self, uid: &str) -> Result<u64, StoreError> {
        let (_, v) = self
            .send(Method::GET, &format!("/indexes/{uid}/stats"), None)
            .await?;
        Ok(v["numberOfDocuments"].as_u64().unwrap_or(0))
    }

    /// One page of documents, in the server's internal order: `(documents, total)`.
    pub async fn documents_page(
        &self,
        uid: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        let (_, v) = self
            .send(
                Method::GET,
                &format!("/indexes/{uid}/documents?offset={offset}&limit={limit}"),
                None,
            )
            .await?;
        Ok((
            v["results"].as_array().cloned().unwrap_or_default(),
            v["total"].as_u64().unwrap_or(0),
        ))
    }

    /// One document by primary key, `None` when absent.
    pub async fn get_document(&self, uid: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let encoded = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        match self
            .send(
                Method::GET,
                &format!("/indexes/{uid}/documents/{encoded}"),
                None,
            )
            .await
        {
            Ok((_, v)) => Ok(Some(v)),
            Err(e) if e.detail.contains("document_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /swap-indexes` for one pair. A server without the route (before v1.0) is reported as
    /// unable to swap.
    pub async fn swap(&self, a: &str, b: &str) -> Result<u64, StoreError> {
        let body = serde_json::to_vec(&json!([{"indexes": [a, b]}])).expect("json");
        match self.send(Method::POST, "/swap-indexes", Some(("application/json", body))).await {
            Ok((_, v)) => self.task_uid(&v),
            Err(e) if e.detail.contains("404") && !e.detail.contains("index_not_found") => Err(self.error(
                ErrorKind::Unsupported,
                format!("this server has no index swap ({})", e.detail),
                "Meilisearch 1.0 or newer is needed (Tutor runs 1.8); the live index is untouched",
            )),
            Err(e) => Err(e),
        }
    }

    /// Wait for a task to end. `Ok` only when it succeeded; a failed or canceled task is an error
    /// naming the server's reason.
    pub async fn wait(&self, task_uid: u64, what: &str) -> Result<Task, StoreError> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let (_, v) = self
                .send(Method::GET, &format!("/tasks/{task_uid}"), None)
                .await?;
            let task = Task {
                uid: task_uid,
                status: v["status"].as_str().unwrap_or("").to_string(),
                kind: v["type"].as_str().unwrap_or("").to_string(),
                error: v["error"].is_object().then(|| {
                    format!(
                        "{}: {}",
                        v["error"]["code"].as_str().unwrap_or("?"),
                        v["error"]["message"].as_str().unwrap_or("")
                    )
                }),
            };
            match task.status.as_str() {
                "succeeded" => return Ok(task),
                "failed" | "canceled" => {
                    return Err(self.error(
                        ErrorKind::Query,
                        format!(
                            "task {task_uid} ({what}, {}) {}: {}",
                            task.kind,
                            task.status,
                            task.error.clone().unwrap_or_else(|| "no reason given".into())
                        ),
                        "the rebuild stopped before the swap, so the live index is untouched; fix the cause and run again",
                    ))
                }
                _ => {}
            }
            if started.elapsed() > self.task_timeout {
                return Err(self.error(
                    ErrorKind::Transient,
                    format!(
                        "task {task_uid} ({what}) still {} after {:?}",
                        task.status, self.task_timeout
                    ),
                    "the server is busy or stuck; check GET /tasks and run again",
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// `GET /keys/{uid}`, `None` when no key has that uid.
    pub async fn get_key(&self, uid: &str) -> Result<Option<Value>, StoreError> {
        match self.send(Method::GET, &format!("/keys/{uid}"), None).await {
            Ok((_, v)) => Ok(Some(v)),
            Err(e) if e.detail.contains("api_key_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /keys`.
    pub async fn create_key(&self, body: &Value) -> Result<Value, StoreError> {
        let bytes = serde_json::to_vec(body).expect("json");
        Ok(self
            .send(Method::POST, "/keys", Some(("application/json", bytes)))
            .await?
            .1)
    }
}
