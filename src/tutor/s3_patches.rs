//! The object-storage settings tutor-contrib-s3 has no key for, as Tutor settings patches.
//!
//! Moving off the `minio` plugin, the S3 plugin's keys (`S3_*`, written by the cutover) cover the
//! default storage, ORA2 uploads, grade reports and profile images. The minio plugin also
//! configured, and the S3 plugin does not: openedx-learning media, the course discovery bucket,
//! xqueue's uploads, unsigned profile image URLs, `MINIO_QUERYSTRING_AUTH: false`, and on Tutor 22
//! Django's `STORAGES["default"]` (tutor-contrib-s3 v2.3.1 still writes `DEFAULT_FILE_STORAGE`).
//! The video uploads bucket, which the minio plugin creates, gets Studio's
//! `VIDEO_UPLOAD_PIPELINE` bucket. [`s3_settings_patches`] returns those settings per Tutor patch
//! name, for offload's settings plugin to hold.
//!
//! Every text is a Jinja template that Tutor renders: the access keys are named by setting
//! (`{{ OPENEDX_AWS_SECRET_ACCESS_KEY }}`), so the plugin file holds no secret; every other value
//! is checked to be plain (letters, digits, `. - _ : / [ ]`) so it can neither break the Python
//! string it lands in nor be read as Jinja.

use super::cutover::S3Target;
use super::{TutorConfig, TutorError};

/// The tutor-contrib-s3 release whose keys and patches offload's were checked against.
pub const S3_PLUGIN_RELEASE: &str = "v2.3.1";
/// Its commit (github.com/hastexo/tutor-contrib-s3).
pub const S3_PLUGIN_COMMIT: &str = "bd89a3e7683a85778b9f206485ec7d09f03ace4a";

/// Django's S3 storage class, as the minio and S3 plugins name it.
const S3_STORAGE: &str = "storages.backends.s3boto3.S3Boto3Storage";

/// One Tutor settings patch: `name` is the patch (`openedx-common-settings`, ...), `text` the
/// Jinja template appended to it, `covers` what it sets, in words for the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsPatch {
    pub name: &'static str,
    pub covers: Vec<String>,
    pub text: String,
}

/// `value` as a Python string literal, refused unless every character is plain.
fn py(field: &str, value: &str) -> Result<String, TutorError> {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-_:/[]".contains(&b));
    if !plain {
        return Err(TutorError::Target {
            store: "S3",
            reason: format!(
                "{field} may hold only letters, digits and . - _ : / [ ] to go in a settings \
                 patch; give a plain value"
            ),
        });
    }
    Ok(format!("\"{value}\""))
}

/// The host for a URL: IPv6 addresses in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `host[:port]` of the target, `None` for AWS.
fn authority(t: &S3Target) -> Option<String> {
    (!t.host.is_empty()).then(|| match t.port {
        Some(port) => format!("{}:{port}", url_host(&t.host)),
        None => url_host(&t.host),
    })
}

/// Whether the root's Tutor uses Django's `STORAGES` (22, and a root without `env/version`,
/// taken to be the newest known release).
fn uses_storages_setting(cfg: &TutorConfig) -> bool {
    cfg.tutor_version_hint()
        .and_then(|v| {
            v.trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
        })
        .is_none_or(|major| major >= 22)
}

/// The S3 client settings of a Django service the S3 plugin does not configure (discovery,
/// xqueue): keys by setting name, endpoint, region, signature, addressing and bucket.
fn service_client(t: &S3Target, bucket: &str, text: &mut String) -> Result<(), TutorError> {
    let signature = t.signature_version.as_deref().unwrap_or("s3v4");
    text.push_str("AWS_ACCESS_KEY_ID = \"{{ OPENEDX_AWS_ACCESS_KEY }}\"\n");
    text.push_str("AWS_SECRET_ACCESS_KEY = \"{{ OPENEDX_AWS_SECRET_ACCESS_KEY }}\"\n");
    text.push_str(&format!(
        "AWS_STORAGE_BUCKET_NAME = {}\n",
        py("bucket", bucket)?
    ));
    if let Some(authority) = authority(t) {
        let scheme = if t.use_ssl { "https" } else { "http" };
        text.push_str(&format!(
            "AWS_S3_ENDPOINT_URL = {}\n",
            py("host", &format!("{scheme}://{authority}"))?
        ));
    }
    text.push_str(&format!(
        "AWS_S3_REGION_NAME = {}\n",
        py("region", &t.region)?
    ));
    text.push_str(&format!(
        "AWS_S3_SIGNATURE_VERSION = {}\n",
        py("signature_version", signature)?
    ));
    text.push_str(&format!(
        "AWS_S3_ADDRESSING_STYLE = {}\n",
        py("addressing_style", &t.addressing_style)?
    ));
    text.push_str(
        "from botocore.client import Config as OffloadBotoConfig\n\
         AWS_S3_CLIENT_CONFIG = OffloadBotoConfig(\n    \
         signature_version=AWS_S3_SIGNATURE_VERSION,\n    \
         request_checksum_calculation=\"when_required\",\n    \
         response_checksum_validation=\"when_required\",\n    \
         s3={\"addressing_style\": AWS_S3_ADDRESSING_STYLE},\n\
         )\n",
    );
    Ok(())
}

/// The settings patches a cutover to `t` needs, per Tutor patch name, in a fixed order; empty
/// when the S3 plugin's keys cover everything. See the module documentation for what each holds.
pub fn s3_settings_patches(
    cfg: &TutorConfig,
    t: &S3Target,
) -> Result<Vec<SettingsPatch>, TutorError> {
    let plugins = cfg.plugins();
    let enabled = |name: &str| plugins.iter().any(|p| p == name);
    let mut out = Vec::new();

    // Both services: the default storage on Tutor 22, openedx-learning media, unsigned URLs.
    let mut covers = Vec::new();
    let mut text = String::new();
    if uses_storages_setting(cfg) {
        covers.push(
            "Django's default storage on Tutor 22 (STORAGES[\"default\"]; the plugin sets only \
             DEFAULT_FILE_STORAGE)"
                .to_owned(),
        );
        text.push_str(&format!(
            "STORAGES[\"default\"][\"BACKEND\"] = \"{S3_STORAGE}\"\n"
        ));
    }
    if !t.openedx_learning_bucket.is_empty() {
        covers.push(format!(
            "the openedx-learning media bucket {:?}",
            t.openedx_learning_bucket
        ));
        text.push_str(&format!(
            "OPENEDX_LEARNING[\"MEDIA\"] = {{\"BACKEND\": \"{S3_STORAGE}\", \"OPTIONS\": \
             {{\"bucket_name\": {}}}}}\n",
            py("openedx_learning_bucket", &t.openedx_learning_bucket)?
        ));
    }
    if t.querystring_auth == Some(false) {
        covers.push("unsigned file URLs (MINIO_QUERYSTRING_AUTH: false)".to_owned());
        text.push_str("AWS_QUERYSTRING_AUTH = False\n");
    }
    if !text.is_empty() {
        out.push(SettingsPatch {
            name: "openedx-common-settings",
            covers,
            text,
        });
    }

    // Studio's video upload pipeline.
    if !t.video_upload_bucket.is_empty() {
        let bucket = py("video_upload_bucket", &t.video_upload_bucket)?;
        out.push(SettingsPatch {
            name: "openedx-cms-common-settings",
            covers: vec![format!(
                "the video uploads bucket {:?} (Studio's VIDEO_UPLOAD_PIPELINE)",
                t.video_upload_bucket
            )],
            text: format!(
                "VIDEO_UPLOAD_PIPELINE.update({{\"BUCKET\": {bucket}, \"VEM_S3_BUCKET\": {bucket}}})\n"
            ),
        });
    }

    // Profile images: the minio plugin and Tutor's media folder served them unsigned; a signed
    // URL breaks when Open edX appends its `?v=` version to it.
    if !t.profile_image_bucket.is_empty() {
        out.push(SettingsPatch {
            name: "openedx-lms-production-settings",
            covers: vec!["unsigned profile image URLs, as before".to_owned()],
            text: "PROFILE_IMAGE_BACKEND[\"options\"][\"querystring_auth\"] = False\n".to_owned(),
        });
    }

    // Course discovery's own bucket, public and unsigned as the minio plugin made it.
    if !t.discovery_bucket.is_empty() {
        let mut text = format!("STORAGES[\"default\"][\"BACKEND\"] = \"{S3_STORAGE}\"\n");
        service_client(t, &t.discovery_bucket, &mut text)?;
        let (domain, protocol) = match authority(t) {
            Some(authority) => (
                format!("{authority}/{}", t.discovery_bucket),
                if t.use_ssl { "https:" } else { "http:" },
            ),
            // Dots in a bucket name break the virtual-hosted name's TLS certificate.
            None if t.discovery_bucket.contains('.') => (
                format!("s3.{}.amazonaws.com/{}", t.region, t.discovery_bucket),
                "https:",
            ),
            None => (
                format!("{}.s3.{}.amazonaws.com", t.discovery_bucket, t.region),
                "https:",
            ),
        };
        text.push_str(&format!(
            "AWS_S3_CUSTOM_DOMAIN = {}\nAWS_S3_URL_PROTOCOL = {}\n\
             AWS_QUERYSTRING_EXPIRE = 7 * 24 * 60 * 60\n",
            py("discovery custom domain", &domain)?,
            py("protocol", protocol)?
        ));
        out.push(SettingsPatch {
            name: "discovery-common-settings",
            covers: vec![format!(
                "the course discovery bucket {:?}",
                t.discovery_bucket
            )],
            text,
        });
    }

    // Xqueue kept its uploads in MinIO's storage bucket, under xqueueuploads/.
    if enabled("xqueue") && enabled("minio") {
        let mut text = String::new();
        service_client(t, &t.storage_bucket, &mut text)?;
        text.push_str("AWS_LOCATION = \"xqueueuploads\"\n");
        out.push(SettingsPatch {
            name: "xqueue-settings",
            covers: vec![format!(
                "xqueue's uploads (bucket {:?}, under xqueueuploads/)",
                t.storage_bucket
            )],
            text,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str, version: Option<&str>) -> (tempfile::TempDir, TutorConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yml"), text).unwrap();
        if let Some(v) = version {
            std::fs::create_dir(dir.path().join("env")).unwrap();
            std::fs::write(dir.path().join("env/version"), v).unwrap();
        }
        let cfg = TutorConfig::load_with_env(dir.path(), []).unwrap();
        (dir, cfg)
    }

    fn target() -> S3Target {
        S3Target {
            host: "s3.internal".into(),
            port: Some(9000),
            use_ssl: false,
            region: "us-east-1".into(),
            storage_bucket: "media".into(),
            file_upload_bucket: "uploads".into(),
            grade_bucket: "grades".into(),
            profile_image_bucket: "media".into(),
            addressing_style: "path".into(),
            access_key: "AKIA-SECRET-ACCESS".into(),
            secret_key: "very-secret-key".into(),
            signature_version: Some("s3v4".into()),
            custom_domain: Some(String::new()),
            querystring_auth: Some(true),
            video_upload_bucket: "videos".into(),
            openedx_learning_bucket: "learning".into(),
            discovery_bucket: "discovery".into(),
            not_copied: Vec::new(),
        }
    }

    fn patch<'a>(patches: &'a [SettingsPatch], name: &str) -> &'a str {
        &patches
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {name} patch in {patches:?}"))
            .text
    }

    #[test]
    fn every_bucket_the_plugin_lacks_gets_a_patch_without_a_secret() {
        let (_d, cfg) = config("PLUGINS:\n- discovery\n- minio\n- xqueue\n", None);
        let patches = s3_settings_patches(&cfg, &target()).unwrap();
        let names: Vec<&str> = patches.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "openedx-common-settings",
                "openedx-cms-common-settings",
                "openedx-lms-production-settings",
                "discovery-common-settings",
                "xqueue-settings"
            ]
        );
        let common = patch(&patches, "openedx-common-settings");
        assert!(common.contains(
            "STORAGES[\"default\"][\"BACKEND\"] = \"storages.backends.s3boto3.S3Boto3Storage\"\n"
        ));
        assert!(common.contains("\"OPTIONS\": {\"bucket_name\": \"learning\"}}\n"));
        assert!(!common.contains("AWS_QUERYSTRING_AUTH"), "{common}");
        assert_eq!(
            patch(&patches, "openedx-cms-common-settings"),
            "VIDEO_UPLOAD_PIPELINE.update({\"BUCKET\": \"videos\", \"VEM_S3_BUCKET\": \"videos\"})\n"
        );
        let discovery = patch(&patches, "discovery-common-settings");
        for line in [
            "AWS_STORAGE_BUCKET_NAME = \"discovery\"\n",
            "AWS_S3_ENDPOINT_URL = \"http://s3.internal:9000\"\n",
            "AWS_S3_CUSTOM_DOMAIN = \"s3.internal:9000/discovery\"\n",
            "AWS_S3_URL_PROTOCOL = \"http:\"\n",
            "AWS_S3_ADDRESSING_STYLE = \"path\"\n",
            "AWS_SECRET_ACCESS_KEY = \"{{ OPENEDX_AWS_SECRET_ACCESS_KEY }}\"\n",
        ] {
            assert!(discovery.contains(line), "{line} missing from {discovery}");
        }
        let xqueue = patch(&patches, "xqueue-settings");
        assert!(xqueue.contains("AWS_STORAGE_BUCKET_NAME = \"media\"\n"));
        assert!(xqueue.contains("AWS_LOCATION = \"xqueueuploads\"\n"));
        for p in &patches {
            assert!(
                !p.text.contains("very-secret-key") && !p.text.contains("AKIA-SECRET"),
                "{} holds a key",
                p.name
            );
        }
    }

    #[test]
    fn the_source_options_are_carried_and_absent_buckets_left_out() {
        let (_d, cfg) = config("PLUGINS:\n- mfe\n", Some("22.0.3"));
        let mut t = target();
        t.querystring_auth = Some(false);
        t.video_upload_bucket.clear();
        t.discovery_bucket.clear();
        t.profile_image_bucket.clear();
        let patches = s3_settings_patches(&cfg, &t).unwrap();
        let names: Vec<&str> = patches.iter().map(|p| p.name).collect();
        assert_eq!(names, ["openedx-common-settings"]);
        assert!(
            patch(&patches, "openedx-common-settings").ends_with("AWS_QUERYSTRING_AUTH = False\n")
        );
    }

    #[test]
    fn before_tutor_22_the_plugin_storage_setting_is_left_alone() {
        let (_d, cfg) = config("PLUGINS: []\n", Some("20.0.1"));
        let mut t = target();
        t.openedx_learning_bucket.clear();
        let patches = s3_settings_patches(&cfg, &t).unwrap();
        assert!(patches.iter().all(|p| p.name != "openedx-common-settings"));
    }

    #[test]
    fn aws_discovery_bucket_is_served_from_its_aws_name() {
        let (_d, cfg) = config("PLUGINS:\n- discovery\n", None);
        let mut t = target();
        t.host.clear();
        t.port = None;
        t.use_ssl = true;
        t.region = "eu-west-1".into();
        t.addressing_style = "auto".into();
        let patches = s3_settings_patches(&cfg, &t).unwrap();
        let d = patch(&patches, "discovery-common-settings");
        assert!(!d.contains("AWS_S3_ENDPOINT_URL"), "{d}");
        assert!(d.contains("AWS_S3_CUSTOM_DOMAIN = \"discovery.s3.eu-west-1.amazonaws.com\"\n"));
        assert!(d.contains("AWS_S3_URL_PROTOCOL = \"https:\"\n"));
        t.discovery_bucket = "disco.example".into();
        let patches = s3_settings_patches(&cfg, &t).unwrap();
        assert!(patch(&patches, "discovery-common-settings")
            .contains("AWS_S3_CUSTOM_DOMAIN = \"s3.eu-west-1.amazonaws.com/disco.example\"\n"));
    }

    #[test]
    fn an_ipv6_endpoint_is_bracketed() {
        let (_d, cfg) = config("PLUGINS:\n- discovery\n", None);
        let mut t = target();
        t.host = "fd00::7".into();
        let patches = s3_settings_patches(&cfg, &t).unwrap();
        assert!(patch(&patches, "discovery-common-settings")
            .contains("AWS_S3_ENDPOINT_URL = \"http://[fd00::7]:9000\"\n"));
    }

    #[test]
    fn a_value_that_could_break_python_or_jinja_is_refused_by_name() {
        let (_d, cfg) = config("PLUGINS:\n- discovery\n", None);
        let mut t = target();
        t.region = "eu\"{{ x }}".into();
        let err = s3_settings_patches(&cfg, &t).unwrap_err().to_string();
        assert!(err.contains("region"), "{err}");
        assert!(!err.contains("{{"), "{err}");
    }
}
