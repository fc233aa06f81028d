//! The LMS's and CMS's own health check, as edx-platform serves it
//! (`openedx/core/djangoapps/heartbeat`): `GET /heartbeat?extended` runs the checks named by
//! HEARTBEAT_CHECKS (by default `modulestore` and `sql`) and HEARTBEAT_EXTENDED_CHECKS (by default
//! `celery`: a sample task sent through the broker must be run by a worker within
//! HEARTBEAT_CELERY_TIMEOUT seconds). It answers a JSON object of `{check: {"status": bool,
//! "message": text}}`, with 200 when every status is true and 503 when one is not; when a check
//! raises, the answer is 503 with `{"error": text}` alone.

use super::{CheckResult, CheckStatus};

/// What a heartbeat answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatAnswer {
    /// The checks, in the answer's order: name, passed, message.
    Checks(Vec<(String, bool, String)>),
    /// The heartbeat itself failed (`{"error": ...}`, status 503).
    Error(String),
    /// Not a heartbeat's answer: status and a short excerpt of the body.
    Other(u16, String),
}

/// Read a heartbeat's status code and body.
pub fn parse_heartbeat(status: u16, body: &[u8]) -> HeartbeatAnswer {
    let excerpt = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    if status != 200 && status != 503 {
        return HeartbeatAnswer::Other(status, excerpt());
    }
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return HeartbeatAnswer::Other(status, excerpt());
    };
    if status == 503 && map.len() == 1 {
        if let Some(e) = map.get("error").and_then(|e| e.as_str()) {
            return HeartbeatAnswer::Error(e.to_string());
        }
    }
    let mut checks = Vec::new();
    for (name, v) in &map {
        let (Some(passed), message) = (v.get("status").and_then(|s| s.as_bool()), v.get("message"))
        else {
            return HeartbeatAnswer::Other(status, excerpt());
        };
        let message = match message {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        checks.push((name.clone(), passed, message));
    }
    HeartbeatAnswer::Checks(checks)
}

/// What a heartbeat check proves, for people.
fn what(check: &str) -> &'static str {
    match check {
        "sql" => "MySQL answered SELECT 1 through the platform's database settings",
        "modulestore" => "MongoDB answered the modulestore's heartbeat",
        "celery" => "a task sent through the Redis broker was run by a Celery worker",
        "cache_set" | "cache_get" => "the Django cache (Redis) stored and returned a value",
        _ => "a check the platform's HEARTBEAT_CHECKS names",
    }
}

/// What to do when a heartbeat check fails.
fn fix(check: &str, service: &str) -> String {
    let container = service.to_ascii_lowercase();
    match check {
        "sql" => format!("the {service} cannot use MySQL: check MYSQL_HOST, MYSQL_PORT and the platform's user on the new server (tutor local do init --limit=mysql), then tutor config save && tutor local start -d; tutor local logs {container} shows the error"),
        "modulestore" => format!("the {service} cannot use MongoDB: check MONGODB_HOST, MONGODB_PORT and the credentials in config.yml against the new server, then tutor config save && tutor local start -d; tutor local logs {container} shows the error"),
        "celery" => "no Celery worker ran the heartbeat's task in time: start the workers (tutor local start -d lms-worker cms-worker) and check that they reach the new Redis (tutor local logs lms-worker); the Celery check below says whether any worker listens".to_string(),
        "cache_set" | "cache_get" => format!("the {service} cannot use its cache: check REDIS_HOST, REDIS_PORT and the credentials in config.yml against the new Redis, then tutor config save && tutor local start -d"),
        _ => format!("see tutor local logs {container} for why this check fails"),
    }
}

/// What an answer other than a heartbeat's means.
fn other_fix(status: u16, service: &str, flag: &str) -> String {
    let container = service.to_ascii_lowercase();
    match status {
        400 => format!("Django refused the request: the host of {flag} is usually not in the platform's ALLOWED_HOSTS; use the name browsers use ({}_HOST in config.yml)", if service == "CMS" { "CMS" } else { "LMS" }),
        404 => format!("there is no heartbeat at this address: {flag} must be the {service}'s base address, e.g. https://{}", if service == "CMS" { "studio.example.org" } else { "learn.example.org" }),
        502..=504 => format!("the web server in front answered, the {service} behind it did not: is it running? (tutor local status; tutor local logs {container})"),
        _ => format!("this is not the {service}'s heartbeat: check {flag}, and tutor local logs {container}"),
    }
}

/// `GET <base>/heartbeat?extended`, one result per check the platform ran.
pub async fn check(http: &reqwest::Client, service: &str, base: &url::Url) -> Vec<CheckResult> {
    let flag = if service == "CMS" {
        "--cms-url"
    } else {
        "--lms-url"
    };
    let mut url = base.clone();
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let mut url = url.join("heartbeat").expect("a relative path joins");
    url.set_query(Some("extended"));
    let name = "heartbeat";
    let response = match http.get(url.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
            let mut detail = format!("GET {url}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail.push_str(&format!(": {s}"));
                source = s.source();
            }
            let fix = if e.is_timeout() {
                format!("the {service} did not answer in time: it may still be starting (tutor local logs {}); run offload check again, or give it longer with --timeout", service.to_ascii_lowercase())
            } else {
                format!("nothing answered at {flag}: check the address, and that the platform runs (tutor local start -d; tutor local status)")
            };
            return vec![CheckResult::failed(service, name, detail, fix)];
        }
    };
    let status = response.status().as_u16();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return vec![CheckResult::failed(
                service,
                name,
                format!("GET {url} answered {status}, then the body could not be read: {e}"),
                format!(
                    "run offload check again; tutor local logs {} may say why",
                    service.to_ascii_lowercase()
                ),
            )]
        }
    };
    match parse_heartbeat(status, &body) {
        HeartbeatAnswer::Checks(checks) => {
            let mut out: Vec<CheckResult> = checks
                .iter()
                .map(|(check, passed, message)| {
                    let name = format!("{name} {check}");
                    if *passed {
                        CheckResult::ok(service, name, format!("{}: {message}", what(check)))
                    } else {
                        CheckResult::failed(
                            service,
                            name,
                            format!("answered {status}: {check} failed: {message}"),
                            fix(check, service),
                        )
                    }
                })
                .collect();
            if !checks.iter().any(|(c, _, _)| c == "celery") {
                out.push(CheckResult::new(
                    service,
                    format!("{name} celery"),
                    CheckStatus::Warning,
                    "the extended heartbeat ran no Celery check (HEARTBEAT_EXTENDED_CHECKS was changed on this platform); the Celery check below still asks the workers",
                ));
            }
            if out.is_empty() {
                out.push(CheckResult::new(
                    service,
                    name,
                    CheckStatus::Warning,
                    format!("answered {status} with no checks (HEARTBEAT_CHECKS is empty on this platform)"),
                ));
            }
            out
        }
        HeartbeatAnswer::Error(e) => vec![CheckResult::failed(
            service,
            name,
            format!("answered {status}: the heartbeat itself failed: {e}"),
            format!(
                "a check raised instead of answering: tutor local logs {} shows the traceback",
                service.to_ascii_lowercase()
            ),
        )],
        HeartbeatAnswer::Other(status, excerpt) => vec![CheckResult::failed(
            service,
            name,
            format!("GET {url} answered {status}, not a heartbeat: {excerpt}"),
            other_fix(status, service, flag),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_edx_platform_answers_with() {
        let ok = br#"{"modulestore": {"status": true, "message": "OK"}, "sql": {"status": true, "message": "OK"}, "celery": {"status": true, "message": "{'time': '0.51'}"}}"#;
        assert_eq!(
            parse_heartbeat(200, ok),
            HeartbeatAnswer::Checks(vec![
                ("modulestore".into(), true, "OK".into()),
                ("sql".into(), true, "OK".into()),
                ("celery".into(), true, "{'time': '0.51'}".into()),
            ])
        );
        let failed = br#"{"sql": {"status": true, "message": "OK"}, "celery": {"status": false, "message": "expired"}}"#;
        match parse_heartbeat(503, failed) {
            HeartbeatAnswer::Checks(c) => {
                assert!(c.contains(&("celery".into(), false, "expired".into())))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_heartbeat(503, br#"{"error": "Error importing module x"}"#),
            HeartbeatAnswer::Error("Error importing module x".into())
        );
        assert_eq!(
            parse_heartbeat(400, b"<h1>Bad Request (400)</h1>"),
            HeartbeatAnswer::Other(400, "<h1>Bad Request (400)</h1>".into())
        );
        assert!(matches!(
            parse_heartbeat(200, b"<html>"),
            HeartbeatAnswer::Other(200, _)
        ));
        assert!(matches!(
            parse_heartbeat(503, b"upstream down"),
            HeartbeatAnswer::Other(503, _)
        ));
    }
}
