//! S3 credentials from the AWS SDK's own credential chain, for a side given no keys outright:
//! the environment (`AWS_ACCESS_KEY_ID`...), a profile of the shared config and credentials files
//! (static keys, SSO, `credential_process`, an assumed role), a web identity token (IRSA), the
//! container credentials endpoint (ECS, EKS Pod Identity) and EC2 instance metadata. Finding them
//! is bounded in time (instance metadata is probed with short timeouts, off-cloud included), says
//! where they came from in words for the plan (never the values), and the S3 client gets a
//! provider that asks the same chain again when temporary credentials expire.

use std::future::Future;
use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::imds;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::{ProfileFileCredentialsProvider, ProfileFileRegionProvider};
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::Region;

use crate::secret::Secret;

/// The longest finding one side's credentials may take (STS or SSO calls on a slow link
/// included); instance metadata alone gives up much sooner (see [`imds_client`]).
const LOOKUP_LIMIT: Duration = Duration::from_secs(10);

/// Which part of the chain to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsLookup {
    /// Only this profile (`--from-s3-profile` / `--to-s3-profile`): whatever it holds (keys,
    /// SSO, `credential_process`, a role to assume), and an error if it does not exist.
    Profile(String),
    /// The whole default chain, in the SDK's order (environment, the `AWS_PROFILE` or default
    /// profile, web identity, container endpoint, instance metadata).
    Chain,
}

/// What the chain answered for one side.
pub struct Found {
    /// Where the credentials came from, in words ("environment (AWS_ACCESS_KEY_ID)").
    pub from: String,
    /// Long-term keys (no session token, no expiry), which a cutover can write into config.yml;
    /// `None` for temporary credentials, which only the provider can renew.
    pub keys: Option<(String, Secret)>,
    /// The region the environment or the profile names, if any.
    pub region: Option<String>,
}

/// Why the chain gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("there is no AWS profile `{name}` with credentials in {files} ({detail})")]
    NoProfile {
        name: String,
        files: String,
        detail: String,
    },
    #[error("the AWS credential chain found none ({detail})")]
    NotFound { detail: String },
    #[error("the AWS credential chain failed: {detail}")]
    Failed { detail: String },
    #[error("the AWS credential chain did not answer within {} s", LOOKUP_LIMIT.as_secs())]
    TimedOut,
}

/// The AWS shared files as the SDK finds them, for messages: `$AWS_CONFIG_FILE` or
/// `~/.aws/config`, and `$AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`.
pub fn profile_files() -> String {
    let file = |var: &str, default: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    format!(
        "{}, {}",
        file("AWS_CONFIG_FILE", "~/.aws/config"),
        file("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    )
}

/// Find one side's credentials and region now, on a runtime of its own (settings are resolved
/// outside async code), within [`LOOKUP_LIMIT`]. `region` is the one already known (a flag);
/// `aws` says the endpoint is AWS S3 itself, the only case where the region may come from
/// instance metadata.
pub fn find(lookup: &AwsLookup, region: Option<&str>, aws: bool) -> Result<Found, LookupError> {
    let lookup = lookup.clone();
    let region = region.map(str::to_string);
    on_own_runtime(async move {
        tokio::time::timeout(LOOKUP_LIMIT, find_async(&lookup, region, aws))
            .await
            .unwrap_or(Err(LookupError::TimedOut))
    })
    .unwrap_or_else(|| {
        Err(LookupError::Failed {
            detail: "the credential lookup stopped unexpectedly".into(),
        })
    })
}

async fn find_async(
    lookup: &AwsLookup,
    known_region: Option<String>,
    aws: bool,
) -> Result<Found, LookupError> {
    let region = match known_region {
        Some(r) => Some(r),
        None => region_of(lookup, aws).await,
    };
    let provider = provider(lookup, region.as_deref()).await;
    let creds = provider
        .provide_credentials()
        .await
        .map_err(|e| lookup_error(lookup, &e))?;
    let keys = (creds.session_token().is_none() && creds.expiry().is_none()).then(|| {
        (
            creds.access_key_id().to_string(),
            Secret::new(creds.secret_access_key().to_string()),
        )
    });
    Ok(Found {
        from: describe(lookup, &creds),
        keys,
        region,
    })
}

fn lookup_error(lookup: &AwsLookup, e: &CredentialsError) -> LookupError {
    let detail = error_text(e);
    match (lookup, e) {
        (AwsLookup::Profile(name), CredentialsError::CredentialsNotLoaded(_)) => {
            LookupError::NoProfile {
                name: name.clone(),
                files: profile_files(),
                detail,
            }
        }
        (_, CredentialsError::CredentialsNotLoaded(_)) => LookupError::NotFound { detail },
        (_, CredentialsError::ProviderTimedOut(_)) => LookupError::TimedOut,
        _ => LookupError::Failed { detail },
    }
}

/// An error and its causes on one line (the chain lists each provider it tried on a line).
fn error_text(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts
        .join(": ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace(":; ", ": ")
}

/// The region of the environment (`AWS_REGION`, `AWS_DEFAULT_REGION`) or of the profile; for
/// AWS S3 itself, then that of the instance it runs on.
async fn region_of(lookup: &AwsLookup, aws: bool) -> Option<String> {
    let mut profile = ProfileFileRegionProvider::builder();
    if let AwsLookup::Profile(name) = lookup {
        profile = profile.profile_name(name);
    }
    let mut chain = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
        .or_else(profile.build());
    if aws {
        let imds_region = imds::region::ImdsRegionProvider::builder()
            .imds_client(imds_client(&provider_config(None)))
            .build();
        chain = chain.or_else(imds_region);
    }
    chain.region().await.map(|r| r.to_string())
}

/// What the SDK's providers use to talk to STS, SSO, the container endpoint and instance
/// metadata: rustls with the platform's roots, and the region the answer is for.
fn provider_config(region: Option<&str>) -> ProviderConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    ProviderConfig::without_region()
        .with_http_client(http)
        .with_region(region.map(|r| Region::new(r.to_string())))
}

/// An instance metadata client that gives up quickly where there is none (any machine off EC2):
/// one attempt, one second to connect and one to read.
fn imds_client(conf: &ProviderConfig) -> imds::Client {
    imds::Client::builder()
        .configure(conf)
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .operation_attempt_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(2))
        .build()
}

/// The provider for a lookup; the region is that of STS and SSO calls (us-east-1 if unknown).
async fn provider(lookup: &AwsLookup, region: Option<&str>) -> SharedCredentialsProvider {
    let region = region.unwrap_or("us-east-1");
    let conf = provider_config(Some(region));
    match lookup {
        AwsLookup::Profile(name) => SharedCredentialsProvider::new(
            ProfileFileCredentialsProvider::builder()
                .configure(&conf)
                .profile_name(name)
                .build(),
        ),
        AwsLookup::Chain => {
            let imds = imds_client(&conf);
            SharedCredentialsProvider::new(
                DefaultCredentialsChain::builder()
                    .region(Region::new(region.to_string()))
                    .imds_client(imds)
                    .configure(conf)
                    .build()
                    .await,
            )
        }
    }
}

/// Where credentials came from, from the features the SDK's providers mark them with.
fn describe(lookup: &AwsLookup, creds: &Credentials) -> String {
    use AwsCredentialFeature as F;
    // The SDK marks each answer with the providers it went through (a hidden but public
    // accessor; `provider_name` itself is private). An empty list falls back to the lookup.
    let features: &[F] = creds
        .get_property::<Vec<F>>()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let has = |f: F| features.contains(&f);
    let profile_name = match lookup {
        AwsLookup::Profile(name) => name.clone(),
        AwsLookup::Chain => std::env::var("AWS_PROFILE")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "default".into()),
    };
    if has(F::CredentialsProfile) || matches!(lookup, AwsLookup::Profile(_)) {
        let how = if has(F::CredentialsSso) || has(F::CredentialsProfileSso) {
            "SSO, "
        } else if has(F::CredentialsProcess) || has(F::CredentialsProfileProcess) {
            "credential_process, "
        } else if has(F::CredentialsProfileStsWebIdToken) {
            "web identity token, "
        } else if has(F::CredentialsStsAssumeRole) {
            "assumed role, "
        } else {
            ""
        };
        return format!("AWS profile `{profile_name}` ({how}{})", profile_files());
    }
    if has(F::CredentialsEnvVars) {
        let token = if creds.session_token().is_some() {
            ", AWS_SESSION_TOKEN"
        } else {
            ""
        };
        format!("environment (AWS_ACCESS_KEY_ID{token})")
    } else if has(F::CredentialsProfileStsWebIdToken) || has(F::CredentialsStsAssumeRoleWebId) {
        "web identity token (IRSA: AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)".into()
    } else if has(F::CredentialsHttp) {
        "container credentials endpoint (ECS task role or EKS Pod Identity)".into()
    } else if has(F::CredentialsImds) {
        "instance metadata (EC2 instance role)".into()
    } else {
        "the AWS default credential chain".into()
    }
}

/// A credentials provider for the S3 client: builds the lookup's chain on first use, on the
/// client's own runtime, and asks it again whenever the client's cache wants fresh credentials.
#[derive(Debug)]
pub struct LazyProvider {
    lookup: AwsLookup,
    region: Option<String>,
    built: tokio::sync::OnceCell<SharedCredentialsProvider>,
}

impl LazyProvider {
    pub fn new(lookup: AwsLookup, region: Option<String>) -> LazyProvider {
        LazyProvider {
            lookup,
            region,
            built: tokio::sync::OnceCell::new(),
        }
    }
}

impl ProvideCredentials for LazyProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let provider = self
                .built
                .get_or_init(|| provider(&self.lookup, self.region.as_deref()))
                .await;
            provider.provide_credentials().await
        })
    }
}

/// Run a future to its end on a fresh current-thread runtime in a thread of its own, so that
/// sync code may wait for it whether or not it is itself inside a runtime. `None` if the thread
/// could not run it.
fn on_own_runtime<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .map(|rt| rt.block_on(fut))
    })
    .join()
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(features: &[AwsCredentialFeature], token: Option<&str>) -> Credentials {
        let mut c = Credentials::new("AK", "SK", token.map(str::to_string), None, "test");
        for f in features {
            c.get_property_mut_or_default::<Vec<AwsCredentialFeature>>()
                .push(f.clone());
        }
        c
    }

    #[test]
    fn job_records_name_the_lookup_and_older_profile_records_still_read() {
        use super::super::CredentialSource;
        let chain = CredentialSource::AwsChain {
            found: "environment (AWS_ACCESS_KEY_ID)".into(),
        };
        let json = serde_json::to_value(&chain).unwrap();
        assert_eq!(json["from"], "aws-chain");
        let back: CredentialSource = serde_json::from_value(json).unwrap();
        assert_eq!(back.aws_lookup(), Some(AwsLookup::Chain));
        assert_eq!(back.describe(), "environment (AWS_ACCESS_KEY_ID)");
        // A job written before the SDK chain recorded a profile by name only.
        let old: CredentialSource =
            serde_json::from_value(serde_json::json!({"from": "profile", "name": "prod"})).unwrap();
        assert_eq!(old.aws_lookup(), Some(AwsLookup::Profile("prod".into())));
        assert_eq!(old.describe(), "AWS profile `prod`");
        let env = CredentialSource::Env {
            access: "OFFLOAD_TO_S3_ACCESS_KEY".into(),
            secret: "OFFLOAD_TO_S3_SECRET_KEY".into(),
            token: None,
        };
        assert_eq!(env.aws_lookup(), None);
        assert_eq!(
            env.describe(),
            "environment (OFFLOAD_TO_S3_ACCESS_KEY, OFFLOAD_TO_S3_SECRET_KEY)"
        );
    }

    #[test]
    fn where_credentials_came_from_reads_as_words_without_values() {
        use AwsCredentialFeature as F;
        let chain = AwsLookup::Chain;
        assert_eq!(
            describe(&chain, &creds(&[F::CredentialsEnvVars], None)),
            "environment (AWS_ACCESS_KEY_ID)"
        );
        assert_eq!(
            describe(&chain, &creds(&[F::CredentialsEnvVars], Some("T"))),
            "environment (AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN)"
        );
        assert!(describe(
            &chain,
            &creds(&[F::CredentialsProfileStsWebIdToken], Some("T"))
        )
        .starts_with("web identity token (IRSA"));
        assert!(describe(&chain, &creds(&[F::CredentialsImds], Some("T")))
            .starts_with("instance metadata"));
        assert!(describe(&chain, &creds(&[F::CredentialsHttp], Some("T")))
            .starts_with("container credentials endpoint"));
        let sso = describe(
            &AwsLookup::Profile("team".into()),
            &creds(&[F::CredentialsSso, F::CredentialsProfile], Some("T")),
        );
        assert!(sso.starts_with("AWS profile `team` (SSO, "), "{sso}");
        assert!(!sso.contains("AK") && !sso.contains("SK"), "{sso}");
        assert_eq!(
            describe(&chain, &creds(&[], None)),
            "the AWS default credential chain"
        );
    }
}
