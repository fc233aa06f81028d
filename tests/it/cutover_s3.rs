//! Object-storage cutover against real Tutor 22.0.3: the keys carried over from MinIO
//! (`S3_SIGNATURE_VERSION`, `S3_CUSTOM_DOMAIN`) are byte for byte what `tutor config save --set`
//! writes, and the settings patches for the buckets tutor-contrib-s3 has no key for render into
//! the LMS and CMS settings as valid Python, with no secret in the plugin that holds them.
//!
//! The discovery and xqueue patches render inside those plugins' templates: tutor-discovery and
//! tutor-xqueue 22.0.0 from PyPI, installed in the stack's venv.
//!
//! The plugin here is written by the test, as a stand-in for the settings plugin the cutover
//! writes beside the root: a Tutor YAML plugin in `$(tutor plugins printroot)` holding the
//! patches of `s3_settings_patches`, enabled through `PLUGINS`.

use std::path::Path;
use std::process::Command;

use crate::common::{tutor, tutor_bin};
use crate::cutover::{assert_printvalues, cutover_matches_tutor, fixture_root, read, s3};
use offload::tutor::{
    apply_cutover, plan_cutover, s3_settings_patches, CutoverTarget, SettingsPatch, TutorConfig,
};

/// The name of the stand-in settings plugin.
const PATCH_PLUGIN: &str = "offloadpatchesstandin";

/// Writes `patches` as a Tutor YAML plugin into the plugins root the test's Tutor uses (the
/// `tutor` helper points `TUTOR_PLUGINS_ROOT` at `<root>/no-plugins`) and enables it beside s3.
fn enable_patch_plugin(root: &Path, patches: &[SettingsPatch]) {
    enable_patch_plugin_with(root, patches, &[]);
}

/// [`enable_patch_plugin`], with `others` enabled too.
fn enable_patch_plugin_with(root: &Path, patches: &[SettingsPatch], others: &[&str]) {
    let mut by_name = serde_yaml::Mapping::new();
    for p in patches {
        by_name.insert(p.name.into(), p.text.clone().into());
    }
    let mut plugin = serde_yaml::Mapping::new();
    plugin.insert("name".into(), PATCH_PLUGIN.into());
    plugin.insert("version".into(), "0.1.0".into());
    plugin.insert("patches".into(), serde_yaml::Value::Mapping(by_name));
    let dir = root.join("no-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{PATCH_PLUGIN}.yml"));
    std::fs::write(&file, serde_yaml::to_string(&plugin).unwrap()).unwrap();
    let listed = tutor(root, &["plugins", "list"]);
    assert!(
        listed.contains(PATCH_PLUGIN),
        "Tutor does not see the plugin: {listed}"
    );
    let mut enabled: Vec<String> = [PATCH_PLUGIN, "s3"]
        .iter()
        .chain(others)
        .map(|p| format!("\"{p}\""))
        .collect();
    enabled.sort();
    let plugins = format!("PLUGINS=[{}]", enabled.join(","));
    tutor(root, &["config", "save", "--set", &plugins]);
}

/// Python must compile the rendered settings file.
fn assert_python_compiles(path: &Path) {
    let python = tutor_bin().with_file_name("python");
    let out = Command::new(python)
        .args(["-m", "py_compile"])
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{} is not valid Python: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn s3_cutover_carries_the_minio_options_and_every_bucket_renders_in_lms_and_cms() {
    let CutoverTarget::S3(mut target) = s3() else {
        unreachable!("s3() is an S3 target")
    };
    // A MinIO platform with MINIO_QUERYSTRING_AUTH: false.
    target.querystring_auth = Some(false);
    let (root, plan) = cutover_matches_tutor(&[CutoverTarget::S3(target.clone())]);
    let root = root.path();
    assert_printvalues(
        root,
        &[
            ("S3_SIGNATURE_VERSION", "s3v4"),
            ("S3_CUSTOM_DOMAIN", ""),
            ("S3_PROFILE_IMAGE_BUCKET", "learn-profiles"),
        ],
    );
    let warnings = plan.warnings.join("\n");
    for name in [
        "`openedx-common-settings`",
        "`openedx-cms-common-settings`",
        "`openedx-lms-production-settings`",
    ] {
        assert!(warnings.contains(name), "{name} not named: {warnings}");
    }

    let cfg = TutorConfig::load_with_env(root, []).unwrap();
    let patches = s3_settings_patches(&cfg, &target).unwrap();
    enable_patch_plugin(root, &patches);
    tutor(root, &["config", "save"]);
    let plugin = read(root, &format!("no-plugins/{PATCH_PLUGIN}.yml"));
    for secret in ["wJalrXUtnFEMI", "AKIAEXAMPLE0123"] {
        assert!(!plugin.contains(secret), "the patch plugin holds a key");
    }

    let lms_path = root.join("env/apps/openedx/settings/lms/production.py");
    let cms_path = root.join("env/apps/openedx/settings/cms/production.py");
    let lms = read(root, "env/apps/openedx/settings/lms/production.py");
    let cms = read(root, "env/apps/openedx/settings/cms/production.py");
    for settings in [&lms, &cms] {
        assert!(settings.contains(
            "STORAGES[\"default\"][\"BACKEND\"] = \"storages.backends.s3boto3.S3Boto3Storage\"\n"
        ));
        assert!(settings.contains(
            "OPENEDX_LEARNING[\"MEDIA\"] = {\"BACKEND\": \"storages.backends.s3boto3.S3Boto3Storage\", \"OPTIONS\": {\"bucket_name\": \"learn-learning\"}}\n"
        ));
        assert!(settings.contains("\nAWS_QUERYSTRING_AUTH = False\n"));
        // Tutor's own filesystem setting for openedx-learning comes first, so ours wins.
        let tutors = settings.find("\"location\": \"/openedx/media-private/openedx-learning\"");
        let ours = settings.find("\"bucket_name\": \"learn-learning\"");
        assert!(tutors < ours, "the patch comes before Tutor's default");
    }
    assert!(cms.contains(
        "VIDEO_UPLOAD_PIPELINE.update({\"BUCKET\": \"learn-videos\", \"VEM_S3_BUCKET\": \"learn-videos\"})\n"
    ));
    assert!(
        !lms.contains("VIDEO_UPLOAD_PIPELINE"),
        "video uploads are Studio's"
    );
    assert!(lms.contains("\nPROFILE_IMAGE_BACKEND[\"options\"][\"querystring_auth\"] = False"));
    assert!(!cms.contains("PROFILE_IMAGE_BACKEND"));
    assert_python_compiles(&lms_path);
    assert_python_compiles(&cms_path);
    // The access keys reach the platform through Tutor's own setting, not through the plugin.
    let lms_env = read(root, "env/apps/openedx/config/lms.env.yml");
    assert!(lms_env.contains("AWS_ACCESS_KEY_ID: \"AKIAEXAMPLE0123\""));
}

#[test]
fn a_filesystem_platform_gets_no_minio_options_but_its_openedx_learning_bucket() {
    let CutoverTarget::S3(mut target) = s3() else {
        unreachable!("s3() is an S3 target")
    };
    // What the job makes of Tutor's media folders: no signature, domain or signing to carry,
    // no video uploads bucket.
    target.signature_version = None;
    target.custom_domain = None;
    target.querystring_auth = None;
    target.video_upload_bucket.clear();
    let (root, plan) = cutover_matches_tutor(&[CutoverTarget::S3(target.clone())]);
    assert!(plan.edits.get("S3_SIGNATURE_VERSION").is_none());
    assert!(plan.edits.get("S3_CUSTOM_DOMAIN").is_none());
    let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
    let patches = s3_settings_patches(&cfg, &target).unwrap();
    let names: Vec<&str> = patches.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["openedx-common-settings", "openedx-lms-production-settings"]
    );
    enable_patch_plugin(root.path(), &patches);
    tutor(root.path(), &["config", "save"]);
    let lms = read(root.path(), "env/apps/openedx/settings/lms/production.py");
    assert!(lms.contains("\"bucket_name\": \"learn-learning\""));
    assert!(!lms.contains("AWS_QUERYSTRING_AUTH = False"));
}

#[test]
fn discovery_and_xqueue_get_their_buckets_through_their_own_plugins_templates() {
    let root = fixture_root();
    let root = root.path();
    let listed = tutor(root, &["plugins", "list"]);
    for plugin in ["discovery", "xqueue"] {
        assert!(
            listed.contains(plugin),
            "tutor-{plugin} is not installed beside {}: run scripts/stack venv",
            crate::common::tutor_bin().display()
        );
    }
    // A MinIO platform with both plugins, as `tutor plugins enable` leaves it.
    tutor(
        root,
        &[
            "config",
            "save",
            "--set",
            "PLUGINS=[\"discovery\",\"minio\",\"xqueue\"]",
        ],
    );
    let CutoverTarget::S3(mut target) = s3() else {
        unreachable!("s3() is an S3 target")
    };
    target.discovery_bucket = "learn-discovery".into();
    let cfg = TutorConfig::load_with_env(root, []).unwrap();
    let plan = plan_cutover(&cfg, &[CutoverTarget::S3(target.clone())]).unwrap();
    let patches = s3_settings_patches(&cfg, &target).unwrap();
    apply_cutover(root, &plan, &cfg.digest(), "20261207T000000Z").unwrap();
    assert!(read(root, "config.yml").contains("PLUGINS:\n- discovery\n- s3\n- xqueue\n"));
    enable_patch_plugin_with(root, &patches, &["discovery", "xqueue"]);
    tutor(root, &["config", "save"]);

    let discovery_path = "env/plugins/discovery/apps/settings/tutor/production.py";
    let discovery = read(root, discovery_path);
    for line in [
        "STORAGES[\"default\"][\"BACKEND\"] = \"storages.backends.s3boto3.S3Boto3Storage\"\n",
        "AWS_ACCESS_KEY_ID = \"AKIAEXAMPLE0123\"\n",
        "AWS_STORAGE_BUCKET_NAME = \"learn-discovery\"\n",
        "AWS_S3_ENDPOINT_URL = \"https://s3.eu-central-1.example.net:443\"\n",
        "AWS_S3_CUSTOM_DOMAIN = \"s3.eu-central-1.example.net:443/learn-discovery\"\n",
        "AWS_S3_URL_PROTOCOL = \"https:\"\n",
    ] {
        assert!(
            discovery.contains(line),
            "{line} missing from {discovery_path}"
        );
    }
    assert!(!discovery.contains("MINIO") && !discovery.contains("files.learn"));
    let xqueue_path = "env/plugins/xqueue/apps/settings/tutor.py";
    let xqueue = read(root, xqueue_path);
    for line in [
        "AWS_STORAGE_BUCKET_NAME = \"learn-storage\"\n",
        "AWS_LOCATION = \"xqueueuploads\"",
        "AWS_S3_ADDRESSING_STYLE = \"path\"\n",
    ] {
        assert!(xqueue.contains(line), "{line} missing from {xqueue_path}");
    }
    assert_python_compiles(&root.join(discovery_path));
    assert_python_compiles(&root.join(xqueue_path));
}
