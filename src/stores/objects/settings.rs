//! Settings of the objects store from flags, Tutor's config.yml, the environment and a job's
//! record: the source (MinIO buckets when the `minio` plugin is on or `--from-s3` is given, else
//! Tutor's media folders mapped to the buckets and key prefixes the MinIO and S3 plugins use),
//! the target endpoint with its credentials, and the copy options.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::credentials::{self, AwsLookup, LookupError};
use super::{
    CaBundle, CredentialSource, FolderSpec, Layout, MediaFolder, ObjectSource, ObjectsOptions,
    S3Endpoint, MIN_PART_SIZE,
};
use crate::core::Side;
use crate::resolve::{config_text, invalid, ResolveContext, SettingsError};
use crate::secret::Secret;
use crate::tutor::TutorConfig;

/// The object-storage flags.
#[derive(Debug, clap::Args, Clone)]
pub struct ObjectsArgs {
    /// Source S3 endpoint (MinIO), overriding what config.yml says (`http(s)://MINIO_HOST`):
    /// http(s)://[access-key:secret-key@]host:port. Keys may instead come from
    /// OFFLOAD_FROM_S3_ACCESS_KEY / OFFLOAD_FROM_S3_SECRET_KEY, config.yml, --from-s3-profile,
    /// or the AWS credential chain.
    #[arg(long, value_name = "URL")]
    pub from_s3: Option<String>,

    /// Target S3-compatible endpoint: http(s)://[access-key:secret-key@]host:port, or `aws`.
    /// Keys may instead come from --to-s3-profile, OFFLOAD_TO_S3_ACCESS_KEY /
    /// OFFLOAD_TO_S3_SECRET_KEY, or the AWS credential chain (AWS_ACCESS_KEY_ID..., AWS_PROFILE,
    /// SSO, web identity (IRSA), ECS/EKS container credentials, EC2 instance role).
    #[arg(long, value_name = "URL")]
    pub to_s3: Option<String>,

    /// CA certificates (PEM) to trust, besides the system's, for an https:// source endpoint
    /// [default: the AWS_CA_BUNDLE variable].
    #[arg(long, value_name = "FILE")]
    pub from_s3_ca_file: Option<PathBuf>,

    /// CA certificates (PEM) to trust, besides the system's, for an https:// target endpoint
    /// [default: the AWS_CA_BUNDLE variable].
    #[arg(long, value_name = "FILE")]
    pub to_s3_ca_file: Option<PathBuf>,

    /// Region of the target S3 [default: AWS_REGION, the AWS profile's region, else us-east-1].
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// How to address target buckets: path (http://host/bucket), virtual (http://bucket.host),
    /// or auto [default: path for a URL, virtual for `aws`].
    #[arg(long, value_name = "STYLE")]
    pub s3_addressing: Option<String>,

    /// AWS profile (~/.aws/config, ~/.aws/credentials) giving the source's credentials: keys,
    /// SSO, credential_process or a role to assume. Wins over keys in the environment.
    #[arg(long, value_name = "NAME")]
    pub from_s3_profile: Option<String>,

    /// AWS profile (~/.aws/config, ~/.aws/credentials) giving the target's credentials: keys,
    /// SSO, credential_process or a role to assume. Wins over keys in the environment.
    /// (`--s3-profile` is its old name.)
    #[arg(long, value_name = "NAME", alias = "s3-profile")]
    pub to_s3_profile: Option<String>,

    /// Source buckets to copy, comma-separated [default: the MinIO buckets named in config.yml].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub buckets: Vec<String>,

    /// Target bucket names where they differ from the source's: openedx=prod-openedx,...
    #[arg(long, value_delimiter = ',', value_name = "MAP")]
    pub bucket_map: Vec<String>,

    /// Create target buckets that do not exist (otherwise a missing bucket stops the job).
    #[arg(long)]
    pub create_buckets: bool,

    /// Part size for objects copied in parts (larger objects; multipart source objects keep
    /// their own parts) [default: 64 MiB, at least 5 MiB].
    #[arg(long, value_name = "BYTES")]
    pub part_size: Option<u64>,

    /// Objects (or parts of objects) moved at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub object_transfers: usize,
}

impl Default for ObjectsArgs {
    fn default() -> Self {
        ObjectsArgs {
            from_s3: None,
            to_s3: None,
            from_s3_ca_file: None,
            to_s3_ca_file: None,
            s3_region: None,
            s3_addressing: None,
            from_s3_profile: None,
            to_s3_profile: None,
            buckets: Vec::new(),
            bucket_map: Vec::new(),
            create_buckets: false,
            part_size: None,
            object_transfers: 32,
        }
    }
}

/// The objects part of the settings.
#[derive(Debug, Clone)]
pub struct ObjectsSettings {
    pub source: ObjectSource,
    pub target: S3Endpoint,
    pub options: ObjectsOptions,
}

/// The MinIO buckets Tutor's `minio` plugin creates, from config.yml (with the plugin's defaults).
pub fn minio_buckets(cfg: &TutorConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (key, default) in [
        ("MINIO_BUCKET_NAME", "openedx"),
        ("MINIO_FILE_UPLOAD_BUCKET_NAME", "openedxuploads"),
        ("MINIO_VIDEO_UPLOAD_BUCKET_NAME", "openedxvideos"),
        ("MINIO_GRADES_BUCKET_NAME", "openedxgrades"),
        ("MINIO_OPENEDX_LEARNING_BUCKET_NAME", "openedxlearning"),
    ] {
        out.push(config_text(cfg, key).unwrap_or_else(|| default.to_string()));
    }
    let discovery = config_text(cfg, "MINIO_DISCOVERY_BUCKET_NAME")
        .filter(|b| !b.contains('{'))
        .or_else(|| {
            cfg.plugins()
                .iter()
                .any(|p| p == "discovery")
                .then(|| "discoveryuploads".to_string())
        });
    if let Some(b) = discovery.filter(|b| !b.is_empty()) {
        out.push(b);
    }
    out.dedup();
    out
}

/// Tutor's media folders and where the MinIO/S3 plugins keep the same files: the default
/// storage (keys relative to the media folder), video transcripts and images and profile images
/// (`openedx/media/...` in the same bucket), grade reports (own bucket), openedx-learning media
/// (own bucket) and ORA2 uploads (own bucket, one object per upload folder).
pub fn media_folders(root: &Path) -> Vec<MediaFolder> {
    let media = root.join("data").join("openedx-media");
    let special = ["video-transcripts", "video-images", "profile-images"];
    let mut skip: Vec<String> = special.iter().map(|s| s.to_string()).collect();
    skip.push("grades".into());
    let plain = |folder: PathBuf| FolderSpec {
        folder,
        skip_dirs: Vec::new(),
        layout: Layout::Plain,
    };
    let mut out = vec![MediaFolder {
        name: "openedx-media".into(),
        folder: FolderSpec {
            folder: media.clone(),
            skip_dirs: skip,
            layout: Layout::Plain,
        },
        bucket: "openedx".into(),
        prefix: String::new(),
        exclude: vec!["openedx/media/".into()],
    }];
    for d in special {
        out.push(MediaFolder {
            name: format!("openedx-media/{d}"),
            folder: plain(media.join(d)),
            bucket: "openedx".into(),
            prefix: format!("openedx/media/{d}/"),
            exclude: Vec::new(),
        });
    }
    out.push(MediaFolder {
        name: "openedx-media/grades".into(),
        folder: plain(media.join("grades")),
        bucket: "openedxgrades".into(),
        prefix: "openedx/media/grades/".into(),
        exclude: Vec::new(),
    });
    out.push(MediaFolder {
        name: "openedx-media-private/openedx-learning".into(),
        folder: plain(
            root.join("data")
                .join("openedx-media-private")
                .join("openedx-learning"),
        ),
        bucket: "openedxlearning".into(),
        prefix: String::new(),
        exclude: Vec::new(),
    });
    out.push(MediaFolder {
        name: "lms/ora2".into(),
        folder: FolderSpec {
            folder: root
                .join("data")
                .join("lms")
                .join("ora2")
                .join("openedxuploads"),
            skip_dirs: Vec::new(),
            layout: Layout::Ora2,
        },
        bucket: "openedxuploads".into(),
        prefix: String::new(),
        exclude: Vec::new(),
    });
    out
}

/// Parse `a=b,c=d` (already split on commas).
fn parse_bucket_map(items: &[String]) -> Result<BTreeMap<String, String>, SettingsError> {
    let mut map = BTreeMap::new();
    for item in items.iter().filter(|i| !i.trim().is_empty()) {
        let (from, to) = item.split_once('=').ok_or_else(|| {
            invalid(
                "--bucket-map",
                format!("`{item}` is not SOURCE=TARGET, e.g. openedx=prod-openedx"),
            )
        })?;
        let (from, to) = (from.trim(), to.trim());
        if !valid_bucket(to) {
            return Err(invalid("--bucket-map", format!("`{to}` is not a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)")));
        }
        map.insert(from.to_string(), to.to_string());
    }
    Ok(map)
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Fill in an endpoint's keys from the first place that has them: the URL, then an explicit
/// profile flag (a flag wins over the environment), then the `OFFLOAD_*_S3_*` variables,
/// config.yml (source), and last the AWS SDK's default credential chain. `region` is the one a
/// flag gave.
fn find_keys(
    e: &mut S3Endpoint,
    side: Side,
    tutor: Option<&TutorConfig>,
    profile: Option<&str>,
    region: Option<&str>,
) -> Result<(), SettingsError> {
    if e.credentials == CredentialSource::Url {
        if e.secret_key.is_none() {
            let var = format!("OFFLOAD_{}_S3_SECRET_KEY", side.env_prefix());
            e.secret_key = env(&var).map(Secret::new);
            if e.secret_key.is_none() {
                return Err(invalid(format!("the {side} S3 URL"), format!("it names an access key but no secret key; add it to the URL (key:secret@host) or set {var}")));
            }
        }
        return Ok(());
    }
    if let Some(name) = profile {
        let name = name.trim();
        if name.is_empty() || name.contains(['[', ']']) || name.chars().any(char::is_whitespace) {
            return Err(invalid(
                profile_flag(side),
                format!("`{name}` is not an AWS profile name (no spaces or brackets); list yours with `aws configure list-profiles`"),
            ));
        }
        return from_aws(e, side, AwsLookup::Profile(name.to_string()), region, None);
    }
    let prefix = format!("OFFLOAD_{}_S3", side.env_prefix());
    let (ak, sk) = (
        format!("{prefix}_ACCESS_KEY"),
        format!("{prefix}_SECRET_KEY"),
    );
    if let (Some(a), Some(s)) = (env(&ak), env(&sk)) {
        e.access_key = Some(a);
        e.secret_key = Some(Secret::new(s));
        e.credentials = CredentialSource::Env {
            access: ak,
            secret: sk,
            token: None,
        };
        return Ok(());
    }
    if side == Side::Source {
        if let Some(cfg) = tutor {
            let access = config_text(cfg, "OPENEDX_AWS_ACCESS_KEY").filter(|v| !v.is_empty());
            let (secret_key, secret) = [
                "OPENEDX_AWS_SECRET_ACCESS_KEY",
                "MINIO_AWS_SECRET_ACCESS_KEY",
            ]
            .iter()
            .find_map(|k| {
                config_text(cfg, k)
                    .filter(|v| !v.is_empty() && !v.contains("{{"))
                    .map(|v| (k.to_string(), v))
            })
            .unzip();
            if let (Some(a), Some(s), Some(k)) = (access, secret, secret_key) {
                e.access_key = Some(a);
                e.secret_key = Some(Secret::new(s));
                e.credentials = CredentialSource::Tutor {
                    access: "OPENEDX_AWS_ACCESS_KEY".into(),
                    secret: k,
                };
                return Ok(());
            }
        }
    }
    from_aws(e, side, AwsLookup::Chain, region, None)
}

/// The flag naming a side's AWS profile.
fn profile_flag(side: Side) -> String {
    format!("--{}-s3-profile", side.env_prefix().to_ascii_lowercase())
}

/// Ask the AWS SDK for a side's credentials (and its region, unless one is known) and note
/// where they came from. `job` is set when a job's record says to ask this way.
fn from_aws(
    e: &mut S3Endpoint,
    side: Side,
    lookup: AwsLookup,
    region: Option<&str>,
    job: Option<&CredentialSource>,
) -> Result<(), SettingsError> {
    let known = region.or((!e.region.is_empty()).then_some(e.region.as_str()));
    let found = credentials::find(&lookup, known, e.url.is_none())
        .map_err(|err| no_credentials(side, &lookup, err, job))?;
    tracing::debug!(store = "objects", side = %side, from = %found.from, "S3 credentials found through the AWS SDK");
    e.credentials = match lookup {
        AwsLookup::Profile(name) => CredentialSource::Profile {
            name,
            found: found.from,
        },
        AwsLookup::Chain => CredentialSource::AwsChain { found: found.from },
    };
    // Long-term keys are kept (a cutover writes them into config.yml); the client always asks
    // the chain, which renews temporary ones.
    (e.access_key, e.secret_key) = found.keys.unzip();
    e.session_token = None;
    if e.region.is_empty() {
        if let Some(r) = found.region {
            e.region = r;
        }
    }
    Ok(())
}

/// The error for a side whose credentials the AWS SDK did not give, with every way to give them.
fn no_credentials(
    side: Side,
    lookup: &AwsLookup,
    err: LookupError,
    job: Option<&CredentialSource>,
) -> SettingsError {
    let flag = profile_flag(side);
    let pfx = side.env_prefix();
    if let Some(source) = job {
        return invalid(
            format!("the {side} S3 credentials"),
            format!("the job asks {} for them again, and {err}. Make them available the same way (or pass the S3 URL and credentials again)", match source {
                CredentialSource::Profile { name, .. } => format!("AWS profile `{name}`"),
                _ => "the AWS credential chain".to_string(),
            }),
        );
    }
    if let (AwsLookup::Profile(_), LookupError::NoProfile { .. }) = (lookup, &err) {
        return invalid(
            flag,
            format!("{err}. Check the name (`aws configure list-profiles`), or point AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE at the files that have it"),
        );
    }
    let lower = pfx.to_ascii_lowercase();
    let config_yml = if side == Side::Source {
        "; OPENEDX_AWS_ACCESS_KEY and OPENEDX_AWS_SECRET_ACCESS_KEY in config.yml"
    } else {
        ""
    };
    invalid(
        format!("the {side} S3 credentials"),
        format!("none given, and {err}. Give them one of these ways: in the --{lower}-s3 URL (access-key:secret-key@host); OFFLOAD_{pfx}_S3_ACCESS_KEY and OFFLOAD_{pfx}_S3_SECRET_KEY{config_yml}; AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; an AWS profile ({flag} NAME or AWS_PROFILE, in {}) with keys, SSO (`aws sso login`), credential_process or a role; a web identity token (IRSA: AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN); the ECS or EKS Pod Identity container credentials endpoint; or an EC2 instance role (instance metadata)", credentials::profile_files()),
    )
}

/// Find an endpoint's keys again where the job says they came from.
fn recover_keys(
    e: &mut S3Endpoint,
    source: &CredentialSource,
    side: Side,
    tutor: Option<&TutorConfig>,
) -> Result<(), SettingsError> {
    let prefix = format!("OFFLOAD_{}_S3", side.env_prefix());
    let need = |name: &str| {
        env(name).ok_or_else(|| {
            invalid(
                format!("the {side} S3 keys"),
                format!("the job reads them from ${name}, which is not set now; export it again"),
            )
        })
    };
    match source {
        CredentialSource::None => {}
        CredentialSource::Url => {
            let (a, s) = (
                env(&format!("{prefix}_ACCESS_KEY")),
                env(&format!("{prefix}_SECRET_KEY")),
            );
            match (a, s) {
                (Some(a), Some(s)) => {
                    e.access_key = Some(a);
                    e.secret_key = Some(Secret::new(s));
                }
                _ => {
                    return Err(SettingsError::SecretNotRecoverable {
                        side: side.to_string(),
                        store: "S3".into(),
                        env: format!("{prefix}_ACCESS_KEY and {prefix}_SECRET_KEY"),
                    })
                }
            }
        }
        CredentialSource::Env {
            access,
            secret,
            token,
        } => {
            e.access_key = Some(need(access)?);
            e.secret_key = Some(Secret::new(need(secret)?));
            e.session_token = token.as_deref().and_then(env).map(Secret::new);
        }
        CredentialSource::Profile { .. } | CredentialSource::AwsChain { .. } => {
            let lookup = source.aws_lookup().expect("an AWS SDK source");
            // Asked again the same way; what answers is shown anew.
            return from_aws(e, side, lookup, None, Some(source));
        }
        CredentialSource::Tutor { access, secret } => {
            let cfg = tutor.ok_or_else(|| invalid(format!("the {side} S3 keys"), format!("the job reads them from config.yml ({access}, {secret}), but no config.yml was found; pass --tutor-root")))?;
            e.access_key = config_text(cfg, access);
            e.secret_key = config_text(cfg, secret).map(Secret::new);
        }
    }
    e.credentials = source.clone();
    Ok(())
}

fn reopen(
    rec: &serde_json::Value,
    side: Side,
    tutor: Option<&TutorConfig>,
) -> Result<S3Endpoint, SettingsError> {
    let url = rec["url"].as_str().unwrap_or("aws");
    let mut e =
        S3Endpoint::parse(url).map_err(|d| invalid(format!("the job's {side} S3 URL"), d))?;
    let source: CredentialSource =
        serde_json::from_value(rec["credentials"].clone()).unwrap_or(CredentialSource::None);
    if let Some(r) = rec["region"].as_str() {
        e.region = r.to_string();
    }
    recover_keys(&mut e, &source, side, tutor)?;
    if let Some(p) = rec["path_style"].as_bool() {
        e.path_style = p;
    }
    Ok(e)
}

/// The CA file of one side: its flag, else the job's record, else `AWS_CA_BUNDLE`. A named file
/// that cannot be read or holds no certificate is an error naming where it was named.
fn ca_bundle(
    flag: Option<&Path>,
    side: Side,
    recorded: Option<&serde_json::Value>,
) -> Result<Option<std::sync::Arc<CaBundle>>, SettingsError> {
    let name = format!("--{}-s3-ca-file", side.flag_prefix());
    let (what, path) = if let Some(path) = flag {
        (name, path.to_path_buf())
    } else if let Some(path) = recorded.and_then(|r| r["ca_file"].as_str()) {
        (
            format!("the job's {side} S3 CA file (give {name} to change it)"),
            PathBuf::from(path),
        )
    } else if let Some(path) = env("AWS_CA_BUNDLE") {
        ("AWS_CA_BUNDLE".to_string(), PathBuf::from(path))
    } else {
        return Ok(None);
    };
    CaBundle::load(&what, &path)
        .map(|c| Some(std::sync::Arc::new(c)))
        .map_err(|d| invalid(what, d))
}

/// Resolve the objects settings; `recorded` is the objects part of a job's record.
pub fn resolve(
    inputs: &ObjectsArgs,
    ctx: &ResolveContext,
    recorded: Option<&serde_json::Value>,
) -> Result<ObjectsSettings, SettingsError> {
    let tutor = ctx.tutor;
    // `--to-s3`, else the targets file's `s3:`.
    let target_url = inputs.to_s3.as_deref().or(ctx.targets.s3.as_deref());
    let rec = |k: &str| recorded.map(|r| &r[k]).filter(|v| !v.is_null());
    let bucket_map = if inputs.bucket_map.is_empty() {
        rec("bucket_map")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    } else {
        parse_bucket_map(&inputs.bucket_map)?
    };
    let part_size = inputs
        .part_size
        .or_else(|| rec("part_size").and_then(|v| v.as_u64()))
        .unwrap_or(64 * 1024 * 1024);
    if !(MIN_PART_SIZE..=5 * 1024 * 1024 * 1024).contains(&part_size) {
        return Err(invalid(
            "--part-size",
            "S3 takes parts of 5 MiB (5242880 bytes) to 5 GiB",
        ));
    }

    // Source.
    let from_profile = inputs.from_s3_profile.as_deref();
    let minio_on = tutor.is_some_and(|c| c.plugins().iter().any(|p| p == "minio"));
    let mut public_read = Vec::new();
    let mut public_media = Vec::new();
    let source = if let Some(url) = &inputs.from_s3 {
        let mut e = S3Endpoint::parse(url).map_err(|d| invalid("--from-s3", d))?;
        find_keys(&mut e, Side::Source, tutor, from_profile, None)?;
        e.ca = ca_bundle(inputs.from_s3_ca_file.as_deref(), Side::Source, None)?;
        let buckets = if !inputs.buckets.is_empty() {
            inputs.buckets.clone()
        } else if let Some(b) = rec("source")
            .and_then(|s| serde_json::from_value::<Vec<String>>(s["buckets"].clone()).ok())
        {
            b
        } else if let Some(cfg) = tutor {
            minio_buckets(cfg)
        } else {
            return Err(invalid("--from-s3", "no config.yml to read the MinIO bucket names from: pass --buckets LIST (or --tutor-root)"));
        };
        public_read = buckets.clone();
        ObjectSource::S3 {
            endpoint: e,
            buckets,
        }
    } else if let Some(src) = rec("source").filter(|s| s["kind"] == "s3") {
        let mut e = reopen(src, Side::Source, tutor)?;
        e.ca = ca_bundle(inputs.from_s3_ca_file.as_deref(), Side::Source, Some(src))?;
        let buckets: Vec<String> = if inputs.buckets.is_empty() {
            serde_json::from_value(src["buckets"].clone()).unwrap_or_default()
        } else {
            inputs.buckets.clone()
        };
        public_read = buckets.clone();
        ObjectSource::S3 {
            endpoint: e,
            buckets,
        }
    } else if minio_on {
        let cfg = tutor.expect("minio_on implies config");
        let host = cfg
            .get_str("MINIO_HOST")
            .unwrap_or_else(|| "files.local.openedx.io".into());
        let scheme = if cfg.get_bool("ENABLE_HTTPS") == Some(true) {
            "https"
        } else {
            "http"
        };
        let mut e = S3Endpoint::parse(&format!("{scheme}://{host}")).map_err(|d| {
            invalid(
                "config.yml MINIO_HOST",
                format!("{host}: {d}; fix it in config.yml or pass --from-s3 URL"),
            )
        })?;
        find_keys(&mut e, Side::Source, tutor, from_profile, None)?;
        e.ca = ca_bundle(inputs.from_s3_ca_file.as_deref(), Side::Source, None)?;
        let buckets = if inputs.buckets.is_empty() {
            minio_buckets(cfg)
        } else {
            inputs.buckets.clone()
        };
        public_read = buckets.clone();
        ObjectSource::S3 {
            endpoint: e,
            buckets,
        }
    } else {
        if from_profile.is_some() {
            return Err(invalid("--from-s3-profile", "the source is Tutor's media folders, not S3: leave the flag out, or name the S3 source with --from-s3 URL"));
        }
        let root = rec("source")
            .and_then(|s| s["root"].as_str())
            .filter(|_| !ctx.tutor_root_flag)
            .map(PathBuf::from)
            .unwrap_or_else(|| ctx.tutor_root.to_path_buf());
        public_media.push("openedx".to_string());
        ObjectSource::Media {
            folders: media_folders(&root),
            root,
        }
    };

    // Target.
    let region_flag = match inputs.s3_region.as_deref().map(str::trim) {
        Some(r) if r.is_empty() || !r.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') => {
            return Err(invalid(
                "--s3-region",
                format!("`{r}` is not a region name (letters, digits and hyphens, e.g. eu-west-1)"),
            ))
        }
        r => r.map(str::to_string),
    };
    let mut target = if let Some(url) = target_url {
        let mut e = S3Endpoint::parse(url).map_err(|d| invalid("--to-s3", d))?;
        find_keys(
            &mut e,
            Side::Target,
            tutor,
            inputs.to_s3_profile.as_deref(),
            region_flag.as_deref(),
        )?;
        e.ca = ca_bundle(inputs.to_s3_ca_file.as_deref(), Side::Target, None)?;
        e
    } else if let Some(t) = rec("target") {
        let mut e = reopen(t, Side::Target, tutor)?;
        e.ca = ca_bundle(inputs.to_s3_ca_file.as_deref(), Side::Target, Some(t))?;
        e
    } else {
        return Err(SettingsError::NoTarget { store: "s3".into() });
    };
    // The flag, else what the AWS SDK found with the credentials, else the environment.
    if let Some(r) = region_flag {
        target.region = r;
    } else if target.region.is_empty() {
        if let Some(r) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
            target.region = r;
        }
    }
    match inputs.s3_addressing.as_deref() {
        None | Some("auto") => {}
        Some("path") => target.path_style = true,
        Some("virtual") => target.path_style = false,
        Some(other) => {
            return Err(invalid(
                "--s3-addressing",
                format!("`{other}` is not path, virtual or auto"),
            ))
        }
    }

    Ok(ObjectsSettings {
        source,
        target,
        options: ObjectsOptions {
            part_size,
            transfers: inputs.object_transfers.max(1),
            create_buckets: inputs.create_buckets,
            deep: ctx.deep,
            bucket_map,
            public_read,
            public_media,
        },
    })
}

impl ObjectsSettings {
    /// What the job records to reconnect later: URLs without keys, where the keys come from.
    pub fn record(&self) -> serde_json::Value {
        let source = match &self.source {
            ObjectSource::S3 { endpoint, buckets } => json!({
                "kind": "s3", "url": endpoint.public_url(), "credentials": endpoint.credentials,
                "region": endpoint.region, "buckets": buckets,
                "ca_file": endpoint.ca.as_ref().map(|c| c.path.display().to_string()),
            }),
            ObjectSource::Media { root, .. } => json!({
                "kind": "filesystem", "root": root.display().to_string(),
            }),
        };
        json!({
            "source": source,
            "target": {
                "url": self.target.public_url(),
                "credentials": self.target.credentials,
                "region": self.target.region,
                "path_style": self.target.path_style,
                "ca_file": self.target.ca.as_ref().map(|c| c.path.display().to_string()),
            },
            "bucket_map": self.options.bucket_map,
            "part_size": self.options.part_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_comes_from_the_flag_then_the_record_and_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let got = ca_bundle(Some(&ca), Side::Target, None).unwrap().unwrap();
        assert_eq!(got.path, ca);
        let rec = json!({ "ca_file": ca.display().to_string() });
        let got = ca_bundle(None, Side::Source, Some(&rec)).unwrap().unwrap();
        assert_eq!(got.path, ca);
        let err = ca_bundle(Some(Path::new("/nonexistent/ca.pem")), Side::Target, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--to-s3-ca-file") && err.contains("cannot read"),
            "{err}"
        );
        let err = ca_bundle(Some(Path::new("/etc/hostname")), Side::Source, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--from-s3-ca-file") && err.contains("no PEM"),
            "{err}"
        );
    }

    #[test]
    fn bucket_maps_parse_and_reject_bad_names() {
        let m = parse_bucket_map(&["openedx=prod-openedx".into(), " a = b.c-d ".into()]).unwrap();
        assert_eq!(m["openedx"], "prod-openedx");
        assert_eq!(m["a"], "b.c-d");
        assert!(parse_bucket_map(&["nope".into()]).is_err());
        assert!(parse_bucket_map(&["a=Upper".into()]).is_err());
    }

    #[test]
    fn media_folders_follow_the_plugins_layout() {
        let f = media_folders(Path::new("/t"));
        let grades = f.iter().find(|m| m.name == "openedx-media/grades").unwrap();
        assert_eq!(
            grades.folder.folder,
            Path::new("/t/data/openedx-media/grades")
        );
        assert_eq!(
            (grades.bucket.as_str(), grades.prefix.as_str()),
            ("openedxgrades", "openedx/media/grades/")
        );
        let main = &f[0];
        assert!(main.folder.skip_dirs.contains(&"grades".to_string()));
        assert_eq!(main.exclude, vec!["openedx/media/".to_string()]);
        let ora2 = f.iter().find(|m| m.folder.layout == Layout::Ora2).unwrap();
        assert_eq!(
            ora2.folder.folder,
            Path::new("/t/data/lms/ora2/openedxuploads")
        );
    }
}
