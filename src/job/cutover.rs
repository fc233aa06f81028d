//! The cutover gate of a job: config.yml is rewritten only for stores whose last verify passed
//! (and, for Meilisearch, whose indexes were rebuilt and checked), only when config.yml is still
//! the file the job planned with, and from each store's target as Tutor's keys describe it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::JobError;
use crate::core::catalog::{Catalog, PhaseOwner, Verdict};
use crate::core::progress::Phase;
use crate::core::StoreKind;
use crate::resolve::config_text;
use crate::search::settings::MeilisearchSettings;
use crate::settings::Settings;
use crate::stores::mongodb::MongoEndpoint;
use crate::stores::objects::{ObjectSource, ObjectsSettings};
use crate::tutor::settings_patch::{self, MongodbTls, MysqlSslMode, MysqlTls, RedisTls, TargetTls};
use crate::tutor::workers::HostResources;
use crate::tutor::{
    self, CutoverTarget, MeilisearchTarget, MongodbTarget, MysqlPluginUser, MysqlTarget,
    RedisTarget, S3Target, TutorConfig,
};

/// `host:port`, `[v6]:port` or a bare host of a URI's host list, as (host, port); IPv6 hosts
/// keep their brackets.
fn host_and_port(item: &str) -> (&str, u16) {
    match item.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!item.starts_with('[') || h.ends_with(']')) =>
        {
            (h, p.parse().unwrap_or(27017))
        }
        _ => (item, 27017),
    }
}

/// `MONGODB_HOST` and `MONGODB_PORT` for a target URI, in the forms Tutor's templates take: one
/// host; several hosts (a replica set's members) as a comma-separated list sharing one port,
/// since Tutor's init job waits on each at `MONGODB_PORT`; a `mongodb+srv://` name as it is.
fn mongodb_host(e: &MongoEndpoint) -> Result<(String, u16), JobError> {
    if e.srv {
        return Ok((format!("mongodb+srv://{}", e.hosts), 27017));
    }
    let members: Vec<(&str, u16)> = e.hosts.split(',').map(host_and_port).collect();
    if let [(host, port)] = members.as_slice() {
        // One host: bare, as Tutor writes it (IPv6 without brackets).
        let host = host.trim_start_matches('[').trim_end_matches(']');
        return Ok((host.to_string(), *port));
    }
    let port = members[0].1;
    if members.iter().any(|(_, p)| *p != port) {
        return Err(JobError::Refused(format!(
            "the MongoDB target `{}` has hosts on different ports; Tutor's MONGODB_HOST list shares one MONGODB_PORT (its init job waits on each host at that port): give the members one port, or use the replica set's mongodb+srv:// name",
            e.hosts
        )));
    }
    let hosts: Vec<&str> = members.iter().map(|(h, _)| *h).collect();
    Ok((hosts.join(","), port))
}

/// Tutor's MongoDB keys for a target URI: the hosts, authentication and TLS as separate settings.
fn mongodb_target(e: &MongoEndpoint) -> Result<MongodbTarget, JobError> {
    let (host, port) = mongodb_host(e)?;
    let option = |name: &str| {
        e.options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    Ok(MongodbTarget {
        host,
        port,
        username: e.user.clone().unwrap_or_default(),
        password: e
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default(),
        use_ssl: e.tls(),
        auth_source: option("authSource")
            .or_else(|| e.path_db.clone())
            .unwrap_or_else(|| "admin".into()),
        auth_mechanism: option("authMechanism").unwrap_or_default(),
        replica_set: option("replicaSet").unwrap_or_default(),
    })
}

/// tutor-contrib-s3's settings for the job's object-storage target: the endpoint and keys, and
/// each bucket the platform uses under the name it has on the target.
fn s3_target(o: &ObjectsSettings, cfg: &TutorConfig) -> Result<S3Target, JobError> {
    let t = &o.target;
    let (host, port, use_ssl) = match &t.url {
        None => (String::new(), None, true),
        Some(u) => {
            let parsed = url::Url::parse(u).map_err(|e| {
                JobError::Refused(format!(
                    "the job's S3 target URL `{u}` is not a URL ({e}); plan the job again with a valid --to-s3"
                ))
            })?;
            (
                parsed.host_str().unwrap_or_default().to_string(),
                parsed.port_or_known_default(),
                parsed.scheme() == "https",
            )
        }
    };
    // The source buckets the platform uses, as the minio plugin names them (a filesystem source
    // is copied into buckets with these default names).
    let minio = matches!(o.source, ObjectSource::S3 { .. });
    let source_bucket = |key: &str, default: &str| {
        minio
            .then(|| config_text(cfg, key))
            .flatten()
            .filter(|b| !b.is_empty() && !b.contains('{'))
            .unwrap_or_else(|| default.to_string())
    };
    let on_target = |b: String| o.options.bucket_map.get(&b).cloned().unwrap_or(b);
    let storage = on_target(source_bucket("MINIO_BUCKET_NAME", "openedx"));
    // The buckets tutor-contrib-s3 has no setting for (settings patches), and which of the
    // platform's buckets the job left out (`--buckets`).
    let copied: &[String] = match &o.source {
        ObjectSource::S3 { buckets, .. } => buckets,
        ObjectSource::Media { .. } => &[],
    };
    let mut not_copied = Vec::new();
    let mut used = |name: Option<String>| -> String {
        match name.filter(|b| !b.is_empty()) {
            Some(b) => {
                if minio && !copied.contains(&b) {
                    not_copied.push(b.clone());
                }
                on_target(b)
            }
            None => String::new(),
        }
    };
    // A filesystem source copies openedx-learning media into the bucket the minio plugin names.
    let video_upload_bucket =
        used(minio.then(|| source_bucket("MINIO_VIDEO_UPLOAD_BUCKET_NAME", "openedxvideos")));
    let openedx_learning_bucket = used(Some(source_bucket(
        "MINIO_OPENEDX_LEARNING_BUCKET_NAME",
        "openedxlearning",
    )));
    let discovery_bucket = used(minio.then(|| discovery_bucket(cfg)).flatten());
    for b in [
        source_bucket("MINIO_BUCKET_NAME", "openedx"),
        source_bucket("MINIO_FILE_UPLOAD_BUCKET_NAME", "openedxuploads"),
        source_bucket("MINIO_GRADES_BUCKET_NAME", "openedxgrades"),
    ] {
        if minio && !copied.contains(&b) && !not_copied.contains(&b) {
            not_copied.push(b);
        }
    }
    Ok(S3Target {
        host,
        port,
        use_ssl,
        region: if t.region.is_empty() {
            "us-east-1".into()
        } else {
            t.region.clone()
        },
        file_upload_bucket: on_target(source_bucket(
            "MINIO_FILE_UPLOAD_BUCKET_NAME",
            "openedxuploads",
        )),
        grade_bucket: on_target(source_bucket("MINIO_GRADES_BUCKET_NAME", "openedxgrades")),
        // Profile images were copied into the storage bucket, where the minio plugin keeps them.
        profile_image_bucket: storage.clone(),
        storage_bucket: storage,
        addressing_style: if t.url.is_none() {
            "auto".into()
        } else if t.path_style {
            "path".into()
        } else {
            "virtual".into()
        },
        access_key: t.access_key.clone().unwrap_or_default(),
        secret_key: t
            .secret_key
            .as_ref()
            .map(|k| k.expose().to_string())
            .unwrap_or_default(),
        // MinIO signs with s3v4, has no custom domain, and may serve unsigned URLs.
        signature_version: minio.then(|| "s3v4".to_string()),
        custom_domain: minio.then(String::new),
        querystring_auth: if minio {
            Some(cfg.get_bool("MINIO_QUERYSTRING_AUTH").unwrap_or(true))
        } else {
            None
        },
        video_upload_bucket,
        openedx_learning_bucket,
        discovery_bucket,
        not_copied,
    })
}

/// The course discovery bucket the minio plugin names: `MINIO_DISCOVERY_BUCKET_NAME`, whose
/// default is `discoveryuploads` when the `discovery` plugin is enabled and empty otherwise.
fn discovery_bucket(cfg: &TutorConfig) -> Option<String> {
    match config_text(cfg, "MINIO_DISCOVERY_BUCKET_NAME") {
        Some(b) if !b.contains('{') => Some(b),
        _ => cfg
            .plugins()
            .iter()
            .any(|p| p == "discovery")
            .then(|| "discoveryuploads".to_string()),
    }
}

/// Tutor's Meilisearch settings for the job's target; the public URL is the operator's to give.
fn meilisearch_target(m: &MeilisearchSettings) -> Result<MeilisearchTarget, JobError> {
    let public_url = m.public_url.clone().ok_or_else(|| JobError::Refused(
        "Meilisearch needs the address browsers reach it at (MEILISEARCH_PUBLIC_URL): pass --meilisearch-public-url URL, e.g. https://search.example.org".into(),
    ))?;
    let master_key = m.master_key.as_ref().map(|k| k.expose().to_string()).ok_or_else(|| JobError::Refused(
        "the target Meilisearch's master key is needed for MEILISEARCH_MASTER_KEY: put it in --to-meilisearch-key-file FILE or OFFLOAD_TO_MEILISEARCH_KEY".into(),
    ))?;
    // Without the uid there is no key to derive; Tutor's own check names the missing setting.
    let api_key = m
        .api_key_uid
        .as_deref()
        .map(|uid| crate::search::api_key::derive(&master_key, uid))
        .unwrap_or_default();
    Ok(MeilisearchTarget {
        url: m.url.clone(),
        public_url,
        master_key,
        api_key,
    })
}

/// The enabled plugins' MySQL databases and users as config.yml has them: the cutover keeps
/// them, and its runbook names each plugin's init.
fn plugin_users(cfg: &TutorConfig) -> Result<Vec<MysqlPluginUser>, JobError> {
    Ok(cfg
        .mysql_plugins()?
        .plugins
        .into_iter()
        .map(|p| MysqlPluginUser {
            plugin: p.plugin,
            prefix: p.prefix,
            database: p.database,
            username: p.username,
            password: p.password,
        })
        .collect())
}

/// Whether a store may be switched, or why not.
type Clearance = Result<(), String>;

/// Which stores of the job passed verification, and why the others did not.
fn verified_stores(catalog: &Catalog) -> Result<Vec<(StoreKind, Clearance)>, JobError> {
    let job_verify_clean = catalog.last_verify()? == Some(Verdict::Clean);
    let mut out = Vec::new();
    for kind in StoreKind::ALL {
        let units = catalog.units(Some(kind))?;
        if units.is_empty() {
            continue;
        }
        let unverified = units
            .iter()
            .filter(|u| u.verify_state.as_deref() != Some("matched"))
            .count();
        let verdict = if unverified > 0 {
            Err(format!(
                "{unverified} of {} unit(s) not verified as matching",
                units.len()
            ))
        } else if !job_verify_clean {
            Err("the last verify found differences (schema or data)".to_string())
        } else {
            Ok(())
        };
        out.push((kind, verdict));
    }
    Ok(out)
}

/// Whether the job's search indexes were rebuilt and verified on the target.
fn reindexed(catalog: &Catalog) -> Result<Clearance, JobError> {
    Ok(match catalog.last_reindex()? {
        Some(Verdict::Clean) => Ok(()),
        Some(Verdict::Differs) => {
            Err("the last reindex found differences in the rebuilt indexes".into())
        }
        Some(Verdict::Unfinished) => Err("the last reindex did not finish".into()),
        None => Err("the search indexes were not rebuilt on the target yet (offload reindex, or offload migrate)".into()),
    })
}

/// The backup of the job's cutover when it is done and config.yml is still the file it wrote
/// (its digest is the one recorded beside the backup).
fn cut_over_to(catalog: &Catalog, digest: &str) -> Result<Option<PathBuf>, JobError> {
    let done = catalog.phase(PhaseOwner::Job, Phase::Cutover)?;
    let Some(backup) = done
        .filter(|p| p.done_at.is_some())
        .and_then(|p| p.detail)
        .map(PathBuf::from)
    else {
        return Ok(None);
    };
    Ok((tutor::written_by_cutover(&backup).as_deref() == Some(digest)).then_some(backup))
}

/// A store cut over although it was not verified, because `--force` was given.
#[derive(Debug, Clone, Serialize)]
pub struct Forced {
    pub store: StoreKind,
    pub why: String,
}

/// What a cutover did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct CutoverOutcome {
    pub dry_run: bool,
    /// The rewritten config.yml and its backup (not on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<PathBuf>,
    /// The change, secrets masked.
    pub diff: String,
    pub warnings: Vec<String>,
    /// The Tutor commands to run next.
    pub runbook: String,
    /// Stores switched without a passing verify (`--force`).
    #[serde(skip)]
    pub forced: Vec<Forced>,
}

/// Cut over the job's verified stores (all of them, or refuse unless `force`).
pub fn cutover(
    settings: &Settings,
    catalog: &Catalog,
    job_dir: &Path,
    dry_run: bool,
    force: bool,
) -> Result<CutoverOutcome, JobError> {
    let setup = catalog.setup()?;
    let cfg = TutorConfig::load(&settings.tutor_root)?;

    // The file must be the one the job planned against.
    if let Some(planned) = setup.endpoints["tutor_config_digest"].as_str() {
        if planned != cfg.digest() {
            let done = match cut_over_to(catalog, &cfg.digest())? {
                Some(backup) => Some(backup),
                None => tutor::cut_over_from(&settings.tutor_root, planned, &cfg.digest()),
            };
            if let Some(backup) = done {
                return Err(JobError::Refused(format!(
                    "{} was already cut over by this job (the previous file is saved as {}): nothing to do. To go back to the old servers, run `offload rollback`",
                    cfg.path().display(),
                    backup.display()
                )));
            }
            return Err(JobError::Refused(format!(
                "{} changed since this job planned the migration; check what changed, then plan and copy again (offload copy --restart) or restore the file",
                cfg.path().display()
            )));
        }
    }

    let mut verdicts = verified_stores(catalog)?;
    if settings.meilisearch.is_some() {
        verdicts.push((StoreKind::Meilisearch, reindexed(catalog)?));
    }
    let mut targets = Vec::new();
    let mut forced = Vec::new();
    for (kind, verdict) in verdicts {
        if let Err(why) = &verdict {
            if !force {
                return Err(JobError::Refused(format!("{kind} is not safe to switch: {why}. Run `offload verify --job {}` and fix what it reports; --force overrides this at the risk of losing data", job_dir.display())));
            }
            tracing::error!(store = %kind, reason = %why, "cutting over an unverified store because --force was given; the platform may lose data");
            forced.push(Forced {
                store: kind,
                why: why.clone(),
            });
        }
        targets.push(cutover_target(settings, kind, &cfg)?);
    }
    targets.extend(elasticsearch_target(settings));
    if targets.is_empty() {
        return Err(JobError::Refused(format!(
            "the job in {} has no store to cut over",
            job_dir.display()
        )));
    }

    let outcome = rewrite(settings, &cfg, &targets, forced, dry_run)?;
    if let Some(backup) = &outcome.backup {
        catalog.phase_done(
            PhaseOwner::Job,
            Phase::Cutover,
            &backup.display().to_string(),
        )?;
    }
    Ok(outcome)
}

/// Cut over without a job, for servers filled by other means: every store named by a target
/// flag, none of them verified, so only with `force` (a dry run shows the change without it).
pub fn cutover_without_job(
    settings: &Settings,
    dry_run: bool,
    force: bool,
) -> Result<CutoverOutcome, JobError> {
    if !force && !dry_run {
        return Err(JobError::Refused(format!(
            "there is no job in {}, so nothing was copied or verified by offload. Point --job at the job that copied the data, or, for servers you filled by other means and checked yourself, add --force (try --dry-run first)",
            settings.job_dir.display()
        )));
    }
    let cfg = TutorConfig::load(&settings.tutor_root)?;
    let mut kinds: Vec<StoreKind> = settings.stores.iter().map(|s| s.kind()).collect();
    if settings.meilisearch.is_some() {
        kinds.push(StoreKind::Meilisearch);
    }
    let mut targets = Vec::new();
    let mut forced = Vec::new();
    for kind in kinds {
        tracing::warn!(store = %kind, "cutting over without a job: nothing was verified");
        forced.push(Forced {
            store: kind,
            why: "there is no job, so nothing was verified".into(),
        });
        targets.push(cutover_target(settings, kind, &cfg)?);
    }
    targets.extend(elasticsearch_target(settings));
    rewrite(settings, &cfg, &targets, forced, dry_run)
}

/// The Elasticsearch target (Tutor 18 and older), when named. It needs no verify: nothing is
/// copied to it, its indexes are rebuilt after cutover by the runbook's commands.
fn elasticsearch_target(settings: &Settings) -> Option<CutoverTarget> {
    settings
        .elasticsearch
        .as_ref()
        .map(|e| CutoverTarget::Elasticsearch(e.target()))
}

/// Plan the rewrite of config.yml for these targets and, unless dry, apply it with a backup.
fn rewrite(
    settings: &Settings,
    cfg: &TutorConfig,
    targets: &[CutoverTarget],
    forced: Vec<Forced>,
    dry_run: bool,
) -> Result<CutoverOutcome, JobError> {
    let tls = target_tls(settings, targets)?;
    let plan = tutor::plan_cutover_with_tls(cfg, targets, &tls, &settings_patch::plugins_root())?;
    let mut outcome = CutoverOutcome {
        dry_run,
        config: None,
        backup: None,
        diff: plan.masked_diff(),
        warnings: plan.warnings.clone(),
        runbook: plan.runbook_ending_with(&closing_steps(cfg)),
        forced,
    };
    if dry_run {
        return Ok(outcome);
    }
    let now = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(|e| JobError::Refused(format!("formatting the backup timestamp: {e}")))?;
    let applied = tutor::apply_cutover(&settings.tutor_root, &plan, &cfg.digest(), &now)?;
    outcome.config = Some(applied.config_path);
    outcome.backup = Some(applied.backup_path);
    Ok(outcome)
}

/// This host's CPUs (as many as this process may use) and memory (`MemTotal`), when it can tell.
pub fn host_resources() -> Option<HostResources> {
    let cpus = std::thread::available_parallelism().ok()?.get() as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(HostResources {
        cpus,
        memory_bytes: kib * 1024,
    })
}

/// The runbook's last steps, once the platform runs on the new servers: web worker counts for
/// this host in the installed Tutor's keys, then `offload check` against the platform's own
/// addresses.
fn closing_steps(cfg: &TutorConfig) -> Vec<String> {
    let mut steps = Vec::new();
    if let Some(host) = host_resources() {
        if let Some(advice) = tutor::workers::advise(cfg, host) {
            steps.push(advice.step_text(host));
        }
    }
    let scheme = if cfg.get_bool("ENABLE_HTTPS").unwrap_or(false) {
        "https"
    } else {
        "http"
    };
    let host = |key: &str| {
        cfg.get_str(key)
            .filter(|h| !h.is_empty() && !h.contains("{{"))
            .map(|h| format!("{scheme}://{h}"))
    };
    let mut command = format!(
        "offload check --tutor-root {}",
        shell_word(&cfg.root().display().to_string())
    );
    match host("LMS_HOST") {
        Some(lms) => command.push_str(&format!(" --lms-url {}", shell_word(&lms))),
        None => command.push_str(" --lms-url URL"),
    }
    if let Some(cms) = host("CMS_HOST") {
        command.push_str(&format!(" --cms-url {}", shell_word(&cms)));
    }
    steps.push(format!(
        "Check that the platform works on the new servers (the LMS and CMS heartbeats, a search \
         with the browsers' key, a Celery round trip, an object read; exit 0 when all work):\n     {command}"
    ));
    steps
}

/// A word as a POSIX shell reads it back: as is when safe, else single-quoted.
fn shell_word(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The CA certificates in `path` (a target's CA file), for the settings patch.
fn ca_pem(store: &str, flag: &str, path: &Path) -> Result<String, JobError> {
    std::fs::read_to_string(path).map_err(|e| {
        JobError::Refused(format!(
            "cannot read the {store} target's CA file {} ({flag}): {e}; the cutover copies the CA certificates into Tutor's settings, so give a readable PEM file",
            path.display()
        ))
    })
}

/// TLS of the targets being cut over that Tutor has no key for (MySQL `ssl-mode` above
/// `preferred`, `rediss://`, a MongoDB CA or skipped check), with their CA files read.
fn target_tls(settings: &Settings, targets: &[CutoverTarget]) -> Result<TargetTls, JobError> {
    use crate::stores::mysql::TlsMode;
    let moved = |pick: fn(&CutoverTarget) -> bool| targets.iter().any(pick);
    let mut tls = TargetTls::default();
    if let Some(m) = settings
        .mysql()
        .filter(|_| moved(|t| matches!(t, CutoverTarget::Mysql(_))))
    {
        let mode = match m.target.tls {
            TlsMode::Disabled | TlsMode::Preferred => None,
            TlsMode::Required => Some(MysqlSslMode::Required),
            TlsMode::VerifyCa => Some(MysqlSslMode::VerifyCa),
            TlsMode::VerifyIdentity => Some(MysqlSslMode::VerifyIdentity),
        };
        if let Some(mode) = mode {
            let ca_pem = match &m.target.ca_file {
                Some(f) => Some(ca_pem("MySQL", "ssl-ca", f)?),
                None => None,
            };
            tls.mysql = Some(MysqlTls { mode, ca_pem });
        }
    }
    if let Some(r) = settings
        .redis()
        .filter(|_| moved(|t| matches!(t, CutoverTarget::Redis(_))))
    {
        if let Some(t) = &r.target.tls {
            let ca_pem = match &t.ca_file {
                Some(f) => Some(ca_pem("Redis", "ca=", f)?),
                None => None,
            };
            tls.redis = Some(RedisTls {
                verify: !t.insecure,
                ca_pem,
            });
        }
    }
    if let Some(m) = settings
        .mongodb()
        .filter(|_| moved(|t| matches!(t, CutoverTarget::Mongodb(_))))
    {
        if m.target.tls() {
            let ca_pem = match m.target.ca_file() {
                Some(f) => Some(ca_pem("MongoDB", "tlsCAFile", &f)?),
                None => None,
            };
            tls.mongodb = Some(MongodbTls {
                ca_pem,
                allow_invalid_certificates: m.target.skips_certificate_check(),
            });
        }
    }
    Ok(tls)
}

/// Where the platform will find one store after cutover, from the job's (or the flags') settings.
fn cutover_target(
    settings: &Settings,
    kind: StoreKind,
    cfg: &TutorConfig,
) -> Result<CutoverTarget, JobError> {
    let missing = |what: &str| JobError::Refused(format!("the job has no {what} target"));
    Ok(match kind {
        StoreKind::Mysql => {
            let m = settings.mysql().ok_or_else(|| missing("MySQL"))?;
            CutoverTarget::Mysql(MysqlTarget {
                host: m.target.host.clone(),
                port: m.target.port,
                root_username: m.target.user.clone(),
                // A target without a password gets an empty one, not the old server's.
                root_password: Some(
                    m.target
                        .password
                        .as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                ),
                app: None,
                plugin_users: plugin_users(cfg)?,
            })
        }
        StoreKind::Redis => {
            let r = settings.redis().ok_or_else(|| missing("Redis"))?;
            CutoverTarget::Redis(RedisTarget {
                host: r.target.host.clone(),
                port: r.target.port,
                username: r.target.username.clone().unwrap_or_default(),
                password: r
                    .target
                    .password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
                databases: r.options.dbs.iter().map(|d| (d.source, d.target)).collect(),
            })
        }
        StoreKind::Mongodb => {
            let m = settings.mongodb().ok_or_else(|| missing("MongoDB"))?;
            CutoverTarget::Mongodb(mongodb_target(&m.target)?)
        }
        StoreKind::Objects => {
            let o = settings
                .objects()
                .ok_or_else(|| missing("object-storage"))?;
            CutoverTarget::S3(s3_target(o, cfg)?)
        }
        StoreKind::Meilisearch => {
            let m = settings
                .meilisearch
                .as_ref()
                .ok_or_else(|| missing("Meilisearch"))?;
            CutoverTarget::Meilisearch(meilisearch_target(m)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, SecretSource};
    use crate::stores::objects::{ObjectSource, ObjectsOptions, S3Endpoint};

    fn config(text: &str) -> (tempfile::TempDir, TutorConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yml"), text).unwrap();
        let cfg = TutorConfig::load(dir.path()).unwrap();
        (dir, cfg)
    }

    fn objects(url: &str, minio: bool, map: &[(&str, &str)]) -> ObjectsSettings {
        let mut target = S3Endpoint::parse(url).unwrap();
        target.access_key = Some("AK".into());
        target.secret_key = Some(Secret::new("SK"));
        let source = if minio {
            ObjectSource::S3 {
                endpoint: S3Endpoint::parse("http://minio:9000").unwrap(),
                buckets: Vec::new(),
            }
        } else {
            ObjectSource::Media {
                root: "/t".into(),
                folders: Vec::new(),
            }
        };
        ObjectsSettings {
            source,
            target,
            options: ObjectsOptions {
                bucket_map: map
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                ..ObjectsOptions::default()
            },
        }
    }

    #[test]
    fn s3_settings_name_the_target_buckets_the_platform_uses() {
        let (_d, cfg) = config("MINIO_BUCKET_NAME: site-media\nMINIO_GRADES_BUCKET_NAME: site-grades\nPLUGINS:\n- minio\n");
        let t = s3_target(
            &objects(
                "http://s3.internal:9000",
                true,
                &[("site-media", "prod-media")],
            ),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.use_ssl),
            ("s3.internal", Some(9000), false)
        );
        assert_eq!(t.storage_bucket, "prod-media");
        assert_eq!(t.profile_image_bucket, "prod-media");
        assert_eq!(t.grade_bucket, "site-grades");
        assert_eq!(t.file_upload_bucket, "openedxuploads");
        assert_eq!(t.addressing_style, "path");
        assert_eq!((t.access_key.as_str(), t.secret_key.as_str()), ("AK", "SK"));
        // The buckets tutor-contrib-s3 has no key for, and MinIO's options, carried over.
        assert_eq!(t.video_upload_bucket, "openedxvideos");
        assert_eq!(t.openedx_learning_bucket, "openedxlearning");
        assert_eq!(t.discovery_bucket, "");
        assert_eq!(t.signature_version.as_deref(), Some("s3v4"));
        assert_eq!(t.custom_domain.as_deref(), Some(""));
        assert_eq!(t.querystring_auth, Some(true));
        // The job's source listed no bucket: every one the platform uses is reported.
        assert!(t.not_copied.contains(&"openedxvideos".to_string()));
        assert!(t.not_copied.contains(&"site-media".to_string()));

        // Filesystem media land in buckets with the plugin's default names, whatever
        // config.yml's unused MINIO_* settings say.
        let t = s3_target(&objects("aws", false, &[]), &cfg).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.use_ssl), ("", None, true));
        assert_eq!(t.storage_bucket, "openedx");
        assert_eq!(t.grade_bucket, "openedxgrades");
        assert_eq!(
            (t.addressing_style.as_str(), t.region.as_str()),
            ("auto", "us-east-1")
        );
        // Media folders: openedx-learning media land in its bucket; nothing else to carry.
        assert_eq!(t.openedx_learning_bucket, "openedxlearning");
        assert!(t.video_upload_bucket.is_empty() && t.discovery_bucket.is_empty());
        assert_eq!(
            (t.signature_version, t.custom_domain, t.querystring_auth),
            (None, None, None)
        );
        assert!(t.not_copied.is_empty());
    }

    #[test]
    fn s3_settings_follow_the_copied_minio_buckets_and_options() {
        let (_d, cfg) = config(
            "MINIO_QUERYSTRING_AUTH: false\nMINIO_VIDEO_UPLOAD_BUCKET_NAME: site-videos\nPLUGINS:\n- discovery\n- minio\n",
        );
        let mut o = objects(
            "http://s3.internal:9000",
            true,
            &[("discoveryuploads", "prod-discovery")],
        );
        o.source = ObjectSource::S3 {
            endpoint: S3Endpoint::parse("http://minio:9000").unwrap(),
            buckets: [
                "openedx",
                "openedxuploads",
                "openedxgrades",
                "openedxlearning",
                "discoveryuploads",
            ]
            .map(String::from)
            .to_vec(),
        };
        let t = s3_target(&o, &cfg).unwrap();
        assert_eq!(t.discovery_bucket, "prod-discovery");
        assert_eq!(t.video_upload_bucket, "site-videos");
        assert_eq!(t.querystring_auth, Some(false));
        assert_eq!(t.not_copied, ["site-videos"]);
    }

    #[test]
    fn mongodb_hosts_take_the_forms_tutor_reads() {
        let target = |uri: &str| mongodb_target(&MongoEndpoint::parse(uri).unwrap());
        let t = target("mongodb://u:p@m1.internal:27018/?authSource=admin").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.use_ssl),
            ("m1.internal", 27018, false)
        );
        let t = target("mongodb://u:p@[fd00::5]:27019/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("fd00::5", 27019));
        let t = target("mongodb://u:p@m1:27018,m2:27018,[fd00::5]:27018/?replicaSet=rs0&tls=true")
            .unwrap();
        assert_eq!(t.host, "m1,m2,[fd00::5]");
        assert_eq!(
            (t.port, t.use_ssl, t.replica_set.as_str()),
            (27018, true, "rs0")
        );
        let t = target("mongodb://u:p@m1,m2/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("m1,m2", 27017));
        // TLS is on by default for mongodb+srv://, and Tutor passes MONGODB_USE_SSL as `ssl`.
        let t = target("mongodb+srv://u:p@cluster0.example.mongodb.net/").unwrap();
        assert_eq!(t.host, "mongodb+srv://cluster0.example.mongodb.net");
        assert!(t.use_ssl);
        let err = target("mongodb://u:p@m1:27017,m2:27018/")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("different ports") && err.contains("mongodb+srv://"),
            "{err}"
        );
    }

    #[test]
    fn meilisearch_needs_a_public_url_and_a_master_key() {
        let mut m = MeilisearchSettings {
            url: "http://search.internal:7700".into(),
            master_key: Some(Secret::new("mk")),
            key_source: SecretSource::None,
            public_url: None,
            prefix: "tutor_".into(),
            api_key_uid: None,
        };
        let err = meilisearch_target(&m).unwrap_err().to_string();
        assert!(err.contains("--meilisearch-public-url"), "{err}");
        m.public_url = Some("https://search.example.org".into());
        m.master_key = None;
        let err = meilisearch_target(&m).unwrap_err().to_string();
        assert!(err.contains("--to-meilisearch-key-file"), "{err}");
        m.master_key = Some(Secret::new("mk"));
        let t = meilisearch_target(&m).unwrap();
        assert_eq!(t.public_url, "https://search.example.org");
    }
}
