//! One S3-compatible endpoint as offload talks to it: the URL (`http(s)://[key[:secret]@]host:port`
//! or `aws`), region, addressing style and credentials (and where they came from, so a job can find
//! them again without storing them), the SDK client built from it, and the mapping of SDK errors
//! to what the runner and the operator can act on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use serde::{Deserialize, Serialize};

use super::credentials::{AwsLookup, LazyProvider};
use crate::core::{ErrorKind, Side, StoreError, StoreKind};
use crate::resolve::{check_ca_file, check_host, with_userinfo_hint};
use crate::secret::Secret;

/// Where an endpoint's access key and secret key were found; recorded in the job (never the keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum CredentialSource {
    /// Inside the URL given on the command line (not kept by the job).
    Url,
    /// Environment variables of these names.
    Env {
        access: String,
        secret: String,
        #[serde(default)]
        token: Option<String>,
    },
    /// The profile named by `--from-s3-profile` / `--to-s3-profile`, through the AWS SDK (a job
    /// asks it again on resume); `found` says how the profile gave them (for the plan).
    Profile {
        name: String,
        #[serde(default)]
        found: String,
    },
    /// The AWS SDK's default credential chain (a job asks it again on resume); `found` says
    /// which of its sources answered.
    #[serde(rename = "aws-chain")]
    AwsChain { found: String },
    /// Tutor's config.yml keys.
    Tutor { access: String, secret: String },
    /// Anonymous requests.
    None,
}

impl CredentialSource {
    /// Where the credentials come from, in words for the plan (never a value).
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Url => "URL".into(),
            CredentialSource::Env {
                access,
                secret,
                token,
            } => {
                let mut names = vec![access.as_str(), secret.as_str()];
                names.extend(token.as_deref());
                format!("environment ({})", names.join(", "))
            }
            CredentialSource::Profile { name, found } if found.is_empty() => {
                format!("AWS profile `{name}`")
            }
            CredentialSource::Profile { found, .. } | CredentialSource::AwsChain { found } => {
                found.clone()
            }
            CredentialSource::Tutor { access, secret } => {
                format!("config.yml ({access}, {secret})")
            }
            CredentialSource::None => "none (anonymous requests)".into(),
        }
    }

    /// How the AWS SDK is asked for them, when it is.
    pub fn aws_lookup(&self) -> Option<AwsLookup> {
        match self {
            CredentialSource::Profile { name, .. } => Some(AwsLookup::Profile(name.clone())),
            CredentialSource::AwsChain { .. } => Some(AwsLookup::Chain),
            _ => None,
        }
    }
}

/// An S3-compatible endpoint with its credentials.
#[derive(Clone)]
pub struct S3Endpoint {
    /// `scheme://host[:port]`; `None` means AWS S3's own endpoints for the region.
    pub url: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub credentials: CredentialSource,
    /// CA certificates trusted besides the system's for an https:// endpoint
    /// (`--from-s3-ca-file` / `--to-s3-ca-file`, else `AWS_CA_BUNDLE`).
    pub ca: Option<std::sync::Arc<CaBundle>>,
}

/// A CA file and the PEM certificates read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    pem: Vec<u8>,
}

impl CaBundle {
    /// Read and check the CA file named by `option` (a flag or variable, for the message).
    pub fn load(option: &str, path: &Path) -> Result<CaBundle, String> {
        check_ca_file(option, path)?;
        let pem = std::fs::read(path)
            .map_err(|e| format!("{option}: cannot read the CA file {}: {e}", path.display()))?;
        Ok(CaBundle {
            path: path.to_path_buf(),
            pem,
        })
    }
}

impl std::fmt::Debug for S3Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Endpoint")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials)
            .field("ca", &self.ca.as_ref().map(|c| &c.path))
            .finish_non_exhaustive()
    }
}

impl S3Endpoint {
    /// Parse `http(s)://[access[:secret]@]host[:port][/]`, or `aws` / `s3://` for AWS S3 itself.
    /// Returns the endpoint without credentials unless the URL holds them.
    pub fn parse(url: &str) -> Result<S3Endpoint, String> {
        let trimmed = url.trim();
        let mut e = S3Endpoint {
            url: None,
            region: String::new(),
            path_style: true,
            access_key: None,
            secret_key: None,
            session_token: None,
            credentials: CredentialSource::None,
            ca: None,
        };
        if trimmed.eq_ignore_ascii_case("aws") || trimmed == "s3://" {
            e.path_style = false;
            return Ok(e);
        }
        let parsed = url::Url::parse(trimmed).map_err(|err| {
            with_userinfo_hint(trimmed, format!("not an S3 endpoint URL ({err}); expected http(s)://host:port, optionally with access-key:secret-key@, or `aws`"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "URL scheme `{}` is not http:// or https://; expected http(s)://host:port or `aws`",
                parsed.scheme()
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| with_userinfo_hint(trimmed, "the S3 URL has no host".into()))?;
        check_host(host).map_err(|d| with_userinfo_hint(trimmed, format!("in the S3 URL, {d}")))?;
        if parsed.port() == Some(0) {
            return Err("in the S3 URL, 0 is not a port (1-65535)".into());
        }
        if parsed.path() != "/" && !parsed.path().is_empty() {
            // A key or secret with a raw `/` puts the rest of it in the path: then the path is
            // not shown (found by fuzzing).
            let shown = if parsed.path().contains('@') {
                String::new()
            } else {
                format!(" ({})", parsed.path())
            };
            return Err(with_userinfo_hint(
                trimmed,
                format!(
                    "the S3 URL has a path{shown}; give only the endpoint, and buckets with --buckets / --bucket-map"
                ),
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        if !parsed.username().is_empty() {
            e.access_key = Some(decode(parsed.username()));
            e.secret_key = parsed.password().map(|p| Secret::new(decode(p)));
            e.credentials = CredentialSource::Url;
        }
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        e.url = Some(format!("{}://{host}{port}", parsed.scheme()));
        Ok(e)
    }

    /// `host:port` (or `AWS S3 (region)`), for messages and the job's identity.
    pub fn address(&self) -> String {
        match &self.url {
            Some(u) => u
                .split_once("://")
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_else(|| u.clone()),
            None => format!("AWS S3 ({})", self.region),
        }
    }

    /// The URL without credentials.
    pub fn public_url(&self) -> String {
        self.url.clone().unwrap_or_else(|| "aws".to_string())
    }

    /// An SDK client for this endpoint: path-style or virtual-hosted, checksums only where S3
    /// requires them (so streaming uploads stay plain), rustls with ring.
    pub fn client(&self, transfers: usize) -> aws_sdk_s3::Client {
        use aws_smithy_http_client::tls::{
            rustls_provider::CryptoMode, Provider, TlsContext, TrustStore,
        };
        let mut http = aws_smithy_http_client::Builder::new()
            .pool_max_idle_per_host(transfers.max(8) * 2)
            .tls_provider(Provider::Rustls(CryptoMode::Ring));
        if let Some(ca) = &self.ca {
            // The system's roots stay trusted; the CA file's certificates are added to them.
            let trust = TrustStore::default().with_pem_certificate(ca.pem.clone());
            http = http.tls_context(
                TlsContext::builder()
                    .with_trust_store(trust)
                    .build()
                    .expect("a TLS context with a trust store builds"),
            );
        }
        let http = http.build_https();
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(if self.region.is_empty() {
                "us-east-1".to_string()
            } else {
                self.region.clone()
            }))
            .force_path_style(self.path_style)
            .http_client(http)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(Duration::from_secs(120))
                    .build(),
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .build(),
            )
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(3));
        if let Some(url) = &self.url {
            b = b.endpoint_url(url.clone());
        }
        if let Some(lookup) = self.credentials.aws_lookup() {
            // Through the SDK's chain, so temporary credentials are renewed as they expire.
            let region = (!self.region.is_empty()).then(|| self.region.clone());
            b = b.credentials_provider(LazyProvider::new(lookup, region));
        } else if let (Some(access), Some(secret)) = (&self.access_key, &self.secret_key) {
            b = b.credentials_provider(Credentials::new(
                access.clone(),
                secret.expose().to_string(),
                self.session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "offload",
            ));
        } else {
            b = b.allow_no_auth();
        }
        aws_sdk_s3::Client::from_conf(b.build())
    }
}

/// How an S3 call failed, in the terms the store acts on.
#[derive(Debug)]
pub enum Failure {
    /// The whole job cannot go on this way (credentials, missing bucket, server down): a
    /// [`StoreError`] for the runner, which retries it when it is transient.
    Fatal(StoreError),
    /// Only this object is affected (access denied on it, unreadable, changed while read).
    Object(String),
    /// The object is gone (deleted since it was listed).
    Gone,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Fatal(e)
    }
}

/// Turn an SDK error of a call on `side` at `address` into a [`Failure`]. `object_level` says
/// whether the call concerned one object (so access denied on it does not stop the job).
pub fn classify<E>(
    side: Side,
    address: &str,
    what: &str,
    object_level: bool,
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = match e {
        SdkError::ServiceError(s) => Some(status_of(s.raw())),
        _ => None,
    };
    let code = e.code().unwrap_or("").to_string();
    let message = e.message().unwrap_or("").to_string();
    let detail = |kind: &str| {
        let mut d = format!("{what} on the {side}: {kind}");
        if !code.is_empty() {
            d.push_str(&format!(" ({code}"));
            if !message.is_empty() {
                d.push_str(&format!(": {message}"));
            }
            d.push(')');
        }
        d
    };
    let fatal = |kind: ErrorKind, d: String, hint: String| {
        Failure::Fatal(StoreError::new(StoreKind::Objects, address, kind, d, hint))
    };
    match e {
        SdkError::DispatchFailure(d) => {
            let text = source_chain(e);
            let lower = text.to_ascii_lowercase();
            if lower.contains("invalid peer certificate") || lower.contains("not valid for name") || lower.contains("unknownissuer") {
                let flag = format!("--{}-s3-ca-file", side.flag_prefix());
                let hint = if lower.contains("not valid for name") {
                    "the certificate does not name the host dialled: use the endpoint by a name its certificate holds".to_string()
                } else {
                    format!("pass the CA that signed it with {flag} FILE (or the AWS_CA_BUNDLE variable)")
                };
                fatal(ErrorKind::Input, format!("the {side} S3 endpoint's TLS certificate was refused: {text}"), hint)
            } else if d.is_timeout() {
                fatal(ErrorKind::Transient, format!("{what} on the {side}: timed out ({text})"), "offload retries this on its own; if it keeps failing, check the server's load".into())
            } else if d.is_io() || d.is_other() {
                fatal(ErrorKind::Connect, format!("cannot talk to the {side} S3 endpoint: {text}"), "check that it is running and reachable from this machine, and that the URL (scheme, host, port) is right".into())
            } else {
                fatal(ErrorKind::Query, format!("{what} on the {side}: {text}"), String::new())
            }
        }
        SdkError::TimeoutError(_) => fatal(ErrorKind::Transient, format!("{what} on the {side}: timed out"), "offload retries this on its own".into()),
        SdkError::ResponseError(_) => fatal(ErrorKind::Transient, format!("{what} on the {side}: unreadable response ({})", source_chain(e)), "offload retries this on its own".into()),
        SdkError::ConstructionFailure(_) => fatal(ErrorKind::Input, format!("{what}: cannot build the request ({})", source_chain(e)), "check the endpoint URL, region and bucket names".into()),
        _ => match (code.as_str(), status) {
            ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AuthorizationHeaderMalformed" | "ExpiredToken" | "InvalidToken" | "InvalidClientTokenId", _) => fatal(
                ErrorKind::Auth,
                detail("the credentials were refused"),
                credentials_hint(side),
            ),
            ("NoSuchBucket", _) => fatal(
                ErrorKind::Input,
                detail("the bucket does not exist"),
                if side == Side::Target {
                    "create it, or pass --create-buckets to let offload create it (or map it to another with --bucket-map)".into()
                } else {
                    "check the bucket names (--buckets, or the MINIO_*_BUCKET_NAME settings)".into()
                },
            ),
            ("NoSuchKey", _) | (_, Some(404)) if object_level => Failure::Gone,
            ("AccessDenied" | "AllAccessDisabled", _) | (_, Some(403)) if object_level => {
                Failure::Object(detail("access denied"))
            }
            ("AccessDenied" | "AllAccessDisabled", _) | (_, Some(403)) => fatal(
                ErrorKind::Auth,
                detail("access denied"),
                format!("give the {side} credentials the S3 permissions offload needs (list, read{}), or use other credentials", if side == Side::Target { ", write, multipart uploads" } else { "" }),
            ),
            ("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout" | "RequestTimeTooSkewed" | "OperationAborted", _) => fatal(
                ErrorKind::Transient,
                detail("the server asked to try again"),
                "offload retries this on its own; if it keeps failing, check the server's logs".into(),
            ),
            (_, Some(s)) if s >= 500 => fatal(
                ErrorKind::Transient,
                detail(&format!("server error {s}")),
                "offload retries this on its own; if it keeps failing, check the server's logs".into(),
            ),
            (_, s) if object_level => Failure::Object(detail(&match s {
                Some(s) => format!("refused with status {s}"),
                None => "failed".to_string(),
            })),
            (_, s) => fatal(
                ErrorKind::Query,
                detail(&match s {
                    Some(s) => format!("refused with status {s}"),
                    None => "failed".to_string(),
                }),
                "fix the cause the server names, then run the command again (a stopped copy continues with --resume)".into(),
            ),
        },
    }
}

fn status_of(raw: &aws_sdk_s3::config::http::HttpResponse) -> u16 {
    raw.status().as_u16()
}

/// An error and its causes on one line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// What to check when an endpoint refuses the credentials.
pub fn credentials_hint(side: Side) -> String {
    if side == Side::Source {
        "check the source credentials, or give others (the --from-s3 URL, OFFLOAD_FROM_S3_ACCESS_KEY / OFFLOAD_FROM_S3_SECRET_KEY, OPENEDX_AWS_ACCESS_KEY / OPENEDX_AWS_SECRET_ACCESS_KEY in config.yml, the --from-s3-profile profile, or the AWS credential chain)".into()
    } else {
        "check the target credentials, or give others (the --to-s3 URL, OFFLOAD_TO_S3_ACCESS_KEY / OFFLOAD_TO_S3_SECRET_KEY, the --to-s3-profile profile, or the AWS credential chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE...)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_and_keeps_keys_out_of_the_public_url() {
        let e = S3Endpoint::parse("https://AKID:se%2Fcret@s3.example.org:9000/").unwrap();
        assert_eq!(e.url.as_deref(), Some("https://s3.example.org:9000"));
        assert_eq!(e.access_key.as_deref(), Some("AKID"));
        assert_eq!(e.secret_key.as_ref().unwrap().expose(), "se/cret");
        assert_eq!(e.credentials, CredentialSource::Url);
        assert!(!e.public_url().contains("cret"));
        assert!(!format!("{e:?}").contains("cret"));
        assert_eq!(e.address(), "s3.example.org:9000");
        let aws = S3Endpoint::parse("aws").unwrap();
        assert!(aws.url.is_none() && !aws.path_style);
        assert!(S3Endpoint::parse("ftp://x").is_err());
        assert!(S3Endpoint::parse("http://h:1/bucket").is_err());
    }

    #[test]
    fn keys_with_reserved_characters_parse_and_the_public_url_parses_back() {
        let enc = crate::resolve::encode_userinfo;
        for access in ["tgt:adm", "a@b", "x/y", "p%q", "ünï cødé"] {
            for host in ["s3.example.org:9000", "[::1]:9000", "10.0.0.1"] {
                let url = format!("https://{}:{}@{host}", enc(access), enc("se:c/r@t%"));
                let e = S3Endpoint::parse(&url).unwrap();
                assert_eq!(e.access_key.as_deref(), Some(access), "{url}");
                assert_eq!(e.secret_key.as_ref().unwrap().expose(), "se:c/r@t%");
                let shown = e.public_url();
                assert!(!shown.contains('@'), "{shown}");
                let back = S3Endpoint::parse(&shown).unwrap();
                assert_eq!(back.url, e.url, "{shown}");
                assert_eq!(back.public_url(), shown);
                assert_eq!(back.credentials, CredentialSource::None);
            }
        }
    }

    #[test]
    fn bad_ports_hosts_and_raw_reserved_characters_are_refused() {
        for bad in [
            "http://h:0",
            "http://h:65536",
            "http://h:abc",
            "http://:9000",
            "http://",
            "junk",
        ] {
            assert!(S3Endpoint::parse(bad).is_err(), "{bad}");
        }
        let err = S3Endpoint::parse("http://AK:se/cret@h:9000").unwrap_err();
        assert!(
            err.contains("percent-encode") && err.contains("/ as %2F"),
            "{err}"
        );
        assert!(!err.contains("se/cret"), "{err}");
    }
}
