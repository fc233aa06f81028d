//! An object read through the platform's S3 settings: the endpoint, region, addressing style and
//! keys tutor-contrib-s3 gives Open edX (`S3_*`, `OPENEDX_AWS_ACCESS_KEY`,
//! `OPENEDX_AWS_SECRET_ACCESS_KEY`), and in every bucket it names, one object listed and its first
//! bytes read. An empty bucket shows the listing works, with nothing to read.

use aws_sdk_s3::error::DisplayErrorContext;

use super::{CheckResult, CheckStatus};
use crate::resolve::config_text;
use crate::secret::Secret;
use crate::stores::objects::{CredentialSource, S3Endpoint};
use crate::tutor::TutorConfig;

const SERVICE: &str = "S3";
/// Bytes read from the object: enough to show it is readable, bounded whatever its size.
const READ_BYTES: u64 = 64 * 1024;

/// The buckets tutor-contrib-s3 names, with what the platform keeps in each.
const BUCKET_KEYS: [(&str, &str); 4] = [
    ("S3_STORAGE_BUCKET", "course assets and media"),
    ("S3_FILE_UPLOAD_BUCKET", "learner uploads"),
    ("S3_GRADE_BUCKET", "grade reports"),
    ("S3_PROFILE_IMAGE_BUCKET", "profile images"),
];

/// The platform's S3 endpoint, from the s3 plugin's keys.
fn endpoint(cfg: &TutorConfig) -> Result<S3Endpoint, String> {
    let host = config_text(cfg, "S3_HOST").unwrap_or_default();
    let ssl = cfg.get_bool("S3_USE_SSL").unwrap_or(true);
    let port = match config_text(cfg, "S3_PORT").filter(|p| !p.is_empty()) {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("S3_PORT in config.yml is not a port (1-65535)")?,
        ),
        None => None,
    };
    let style = config_text(cfg, "S3_ADDRESSING_STYLE").unwrap_or_else(|| "auto".into());
    let url = (!host.is_empty()).then(|| {
        let scheme = if ssl { "https" } else { "http" };
        match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        }
    });
    let access = config_text(cfg, "OPENEDX_AWS_ACCESS_KEY").filter(|k| !k.is_empty());
    let secret = config_text(cfg, "OPENEDX_AWS_SECRET_ACCESS_KEY").filter(|k| !k.is_empty());
    let credentials = if access.is_some() && secret.is_some() {
        CredentialSource::Tutor {
            access: "OPENEDX_AWS_ACCESS_KEY".into(),
            secret: "OPENEDX_AWS_SECRET_ACCESS_KEY".into(),
        }
    } else {
        // boto3, as the platform runs it, then asks its own chain (instance roles, IRSA).
        CredentialSource::AwsChain {
            found: "the AWS credential chain".into(),
        }
    };
    Ok(S3Endpoint {
        path_style: match style.as_str() {
            "path" => true,
            "virtual" => false,
            // boto3's `auto` takes virtual-hosted names on AWS and paths elsewhere.
            _ => url.is_some(),
        },
        url,
        region: config_text(cfg, "S3_REGION").unwrap_or_default(),
        access_key: access,
        secret_key: secret.map(Secret::new),
        session_token: None,
        credentials,
        ca: None,
    })
}

pub async fn check(cfg: &TutorConfig) -> Vec<CheckResult> {
    if !cfg.plugins().iter().any(|p| p == "s3") {
        let why = if cfg.plugins().iter().any(|p| p == "minio") {
            "the platform still keeps its objects in MinIO (the minio plugin is enabled, s3 is not): object storage was not cut over"
        } else {
            "the s3 plugin is not enabled: the platform keeps its media on the filesystem"
        };
        return vec![CheckResult::new(SERVICE, "read", CheckStatus::Skipped, why)];
    }
    let endpoint = match endpoint(cfg) {
        Ok(e) => e,
        Err(e) => {
            return vec![CheckResult::failed(
                SERVICE,
                "settings",
                e,
                "fix the setting (tutor config save --set KEY=VALUE), then offload check again",
            )]
        }
    };
    let client = endpoint.client(1);
    let mut buckets: Vec<(String, &str)> = Vec::new();
    for (key, what) in BUCKET_KEYS {
        if let Some(b) = config_text(cfg, key).filter(|b| !b.is_empty() && !b.contains("{{")) {
            if !buckets.iter().any(|(seen, _)| *seen == b) {
                buckets.push((b, what));
            }
        }
    }
    if buckets.is_empty() {
        return vec![CheckResult::failed(
            SERVICE,
            "settings",
            "config.yml names no bucket (S3_STORAGE_BUCKET and friends are empty)",
            "set the buckets (offload cutover writes them), then tutor config save",
        )];
    }
    let mut out = Vec::new();
    for (bucket, what) in buckets {
        out.push(read_one(&client, &endpoint, &bucket, what).await);
    }
    out
}

async fn read_one(
    client: &aws_sdk_s3::Client,
    endpoint: &S3Endpoint,
    bucket: &str,
    what: &str,
) -> CheckResult {
    let at = format!("bucket {bucket} at {}", endpoint.address());
    let fix = "check S3_HOST, S3_PORT, S3_USE_SSL, S3_REGION, S3_ADDRESSING_STYLE, the bucket names and OPENEDX_AWS_ACCESS_KEY / OPENEDX_AWS_SECRET_ACCESS_KEY in config.yml against the new object storage";
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .max_keys(1)
        .send()
        .await;
    let (key, size) = match listed {
        Err(e) => {
            return CheckResult::failed(
                SERVICE,
                bucket,
                format!("listing {at} ({what}) failed: {}", DisplayErrorContext(&e)),
                fix,
            )
        }
        Ok(page) => match page
            .contents()
            .first()
            .and_then(|o| Some((o.key()?, o.size())))
        {
            Some((k, size)) => (k.to_string(), size.unwrap_or(0).max(0) as u64),
            None => {
                return CheckResult::ok(
                    SERVICE,
                    bucket,
                    format!("{at} ({what}) lists, and holds no object to read"),
                )
            }
        },
    };
    // Only a large object is read in part: a range on an empty object is not satisfiable.
    let mut get = client.get_object().bucket(bucket).key(&key);
    if size > READ_BYTES {
        get = get.range(format!("bytes=0-{}", READ_BYTES - 1));
    }
    let got = get.send().await;
    match got {
        Err(e) => CheckResult::failed(
            SERVICE,
            bucket,
            format!(
                "reading {key:?} from {at} failed: {}",
                DisplayErrorContext(&e)
            ),
            fix,
        ),
        Ok(object) => match object.body.collect().await {
            Ok(bytes) => CheckResult::ok(
                SERVICE,
                bucket,
                format!(
                    "read {} of {size} byte(s) of {key:?} from {at} ({what})",
                    bytes.into_bytes().len()
                ),
            ),
            Err(e) => CheckResult::failed(
                SERVICE,
                bucket,
                format!("reading {key:?} from {at} stopped: {e}"),
                fix,
            ),
        },
    }
}
