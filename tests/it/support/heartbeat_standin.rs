//! An Open edX heartbeat STAND-IN for the tests: no LMS or CMS can run on these machines, so this
//! in-process HTTP server answers `/heartbeat` as edx-platform's `openedx.core.djangoapps.heartbeat`
//! does behind Django, keeping its rules:
//!
//! - the route is `heartbeat` exactly (`path('heartbeat', include(...))` with `path('', ...)`):
//!   `/heartbeat/` and other paths are Django's 404 page;
//! - a Host header outside ALLOWED_HOSTS (compared without its port) gets Django's plain
//!   `Bad Request (400)` page before any view runs (DisallowedHost);
//! - the checks of HEARTBEAT_CHECKS run always, those of HEARTBEAT_EXTENDED_CHECKS only when the
//!   query has `extended` (`'extended' in request.GET`, so `?extended` and `?extended=1` alike);
//! - the answer is a JSON object `{name: {"status": bool, "message": text}}` in the order the
//!   checks ran, 200 when every status is true, else 503; a check that raises makes the answer
//!   503 `{"error": text}` alone.
//!
//! What each check answers is set by the test (the real ones ask MySQL, MongoDB and a Celery
//! worker). It is not an LMS: results against it are stand-in results.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};

/// One check and what it answers, as `(name, passed, message)` from edx-platform's check functions.
pub type Check = (String, bool, String);

/// What the stand-in's platform is like.
#[derive(Clone)]
pub struct HeartbeatConfig {
    /// Django's ALLOWED_HOSTS (exact names; no wildcards needed here).
    pub allowed_hosts: Vec<String>,
    /// HEARTBEAT_CHECKS' answers, in order.
    pub checks: Vec<Check>,
    /// HEARTBEAT_EXTENDED_CHECKS' answers, in order.
    pub extended: Vec<Check>,
    /// A check raises this instead of answering.
    pub raises: Option<String>,
}

fn check(name: &str, passed: bool, message: &str) -> Check {
    (name.to_string(), passed, message.to_string())
}

impl Default for HeartbeatConfig {
    /// A working platform with edx-platform's default checks: modulestore and sql, and celery
    /// in the extended set.
    fn default() -> Self {
        HeartbeatConfig {
            allowed_hosts: vec!["127.0.0.1".into(), "localhost".into()],
            checks: vec![check("modulestore", true, "OK"), check("sql", true, "OK")],
            extended: vec![check("celery", true, "{'time': '0.5078'}")],
            raises: None,
        }
    }
}

impl HeartbeatConfig {
    /// The same platform with one check answering `passed` and `message` instead.
    pub fn with(mut self, name: &str, passed: bool, message: &str) -> Self {
        for c in self.checks.iter_mut().chain(self.extended.iter_mut()) {
            if c.0 == name {
                *c = check(name, passed, message);
            }
        }
        self
    }
}

/// A running stand-in; stops when dropped.
pub struct HeartbeatStandin {
    pub url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl HeartbeatStandin {
    /// Start on a random loopback port, on its own thread and runtime (a test may block on the
    /// `offload` binary while it serves).
    pub fn start(config: HeartbeatConfig) -> HeartbeatStandin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config = Arc::new(Mutex::new(config));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let config = config.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let config = config.lock().unwrap().clone();
                                    async move { Ok::<_, Infallible>(answer(&req, &config)) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        HeartbeatStandin {
            url,
            _stop: stop_tx,
        }
    }
}

fn page(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn answer<B>(req: &Request<B>, config: &HeartbeatConfig) -> Response<Full<Bytes>> {
    // Django checks the host first (request.get_host() in CommonMiddleware), port stripped.
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if !config.allowed_hosts.iter().any(|a| a == name) {
        return page(
            StatusCode::BAD_REQUEST,
            "text/html",
            "<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Bad Request (400)</title>\n</head>\n<body>\n  <h1>Bad Request (400)</h1><p></p>\n</body>\n</html>\n".into(),
        );
    }
    if req.uri().path() != "/heartbeat" {
        return page(
            StatusCode::NOT_FOUND,
            "text/html",
            "<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n".into(),
        );
    }
    let extended = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("extended"))
    });
    if let Some(e) = &config.raises {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            serde_json::json!({ "error": e }).to_string(),
        );
    }
    let ran: Vec<&Check> = config
        .checks
        .iter()
        .chain(config.extended.iter().filter(|_| extended))
        .collect();
    // Written out in the order the checks ran, as Django's JsonResponse keeps a dict's order.
    let fields: Vec<String> = ran
        .iter()
        .map(|(name, passed, message)| {
            format!(
                "{}: {}",
                serde_json::Value::from(name.as_str()),
                serde_json::json!({"status": passed, "message": message})
            )
        })
        .collect();
    let status = if ran.iter().all(|(_, passed, _)| *passed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    page(
        status,
        "application/json",
        format!("{{{}}}", fields.join(", ")),
    )
}
