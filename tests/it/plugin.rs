//! The Tutor plugin (`tutor-plugin/`, installed into the stack's venv by `scripts/stack up`) with
//! real Tutor: what `tutor config save` renders for Compose and Kubernetes, that no secret from
//! config.yml lands in any file of the plugin's, that the manifests pass their schemas, and
//! `tutor local|dev|k8s do offload -- ARGS` end to end through stand-ins for `docker` and
//! `kubectl` (and for the Kubernetes API server Tutor polls) that run the real binary, and
//! `tutor offload k8s-cutover` through the `kubectl` stand-in, whose `cp` copies from the folder
//! standing for the claim.
//!
//! Schemas: Kubernetes manifests with `kubernetes-validate --strict` (the schemas of Kubernetes
//! 1.37 it ships), the Compose jobs file with `check-jsonschema --builtin-schema
//! vendor.compose-spec` (the Compose specification schema vendored in check-jsonschema); both
//! from the stack's venv, offline. Dockerfiles with hadolint, from the same venv.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_yaml::Value;

use crate::common::*;

// ---- the platform ------------------------------------------------------------------------------

/// The stack venv's `bin/` (tutor, python, the linters).
fn venv_bin(name: &str) -> PathBuf {
    if name == "python" {
        if let Some(python) = std::env::var_os("OFFLOAD_STACK_PYTHON") {
            return PathBuf::from(python);
        }
    }
    tutor_bin().parent().unwrap().join(name)
}

/// Real Tutor on `root`, with no `TUTOR_*` variable of this process leaking in (as
/// `common::tutor`, but the caller adds to the environment and reads the whole output).
fn tutor_command(root: &Path) -> Command {
    let mut cmd = Command::new(tutor_bin());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("TUTOR_") || name.starts_with("OFFLOAD_") || name == "KUBECONFIG" {
            cmd.env_remove(name);
        }
    }
    cmd.env("TUTOR_ROOT", root)
        .env("TUTOR_PLUGINS_ROOT", root.join("no-plugins"));
    cmd
}

fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", text(out));
}

/// A Tutor root made from the fixture config.yml with the offload plugin enabled and saved.
struct Platform {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Platform {
    fn new(set: &[String]) -> Platform {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tutor");
        std::fs::create_dir(&root).unwrap();
        let installed = tutor(&root, &["plugins", "list"]);
        assert!(
            installed.lines().any(|l| l.starts_with("offload")),
            "the offload plugin is not installed in Tutor's venv: run scripts/stack up (it installs ./tutor-plugin)\n{installed}"
        );
        std::fs::copy(
            repo_root().join("fixtures/tutor/config.yml"),
            root.join("config.yml"),
        )
        .unwrap();
        tutor(&root, &["plugins", "enable", "offload"]);
        let mut args = vec!["config", "save"];
        for s in set {
            args.extend(["--set", s.as_str()]);
        }
        tutor(&root, &args);
        Platform { _dir: dir, root }
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn yaml(&self, rel: &str) -> Value {
        serde_yaml::from_str(&self.read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Every document of a multi-document YAML file.
    fn docs(&self, rel: &str) -> Vec<Value> {
        let text = self.read(rel);
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .filter(|d| !d.is_null())
            .collect()
    }

    /// The job service the plugin adds to the Compose jobs file.
    fn compose_service(&self) -> Value {
        self.yaml("env/local/docker-compose.jobs.yml")["services"]["offload-job"].clone()
    }

    /// The plugin's Kubernetes objects: the Job template and its volume claim.
    fn k8s_objects(&self) -> (Value, Value) {
        let named = |rel: &str, kind: &str, name: &str| {
            self.docs(rel)
                .into_iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no {kind} {name} in {rel}"))
        };
        (
            named("env/k8s/jobs.yml", "Job", "offload-job"),
            named("env/k8s/volumes.yml", "PersistentVolumeClaim", "offload"),
        )
    }

    fn printvalue(&self, key: &str) -> String {
        tutor(&self.root, &["config", "printvalue", key])
            .trim_end()
            .to_string()
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Every secret config.yml holds: values of keys naming a password, secret or key (each line of
/// a multi-line one), long enough not to match by chance.
fn config_secrets(root: &Path) -> Vec<String> {
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("config.yml")).unwrap()).unwrap();
    let mut secrets = Vec::new();
    for (key, value) in config.as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        let secret = ["PASSWORD", "SECRET", "_KEY", "TOKEN"]
            .iter()
            .any(|w| key.contains(w))
            && !key.ends_with("_UID");
        if let (true, Some(value)) = (secret, value.as_str()) {
            secrets.extend(
                value
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.len() >= 8 && !l.starts_with("-----"))
                    .map(String::from),
            );
        }
    }
    assert!(secrets.len() > 10, "the fixture has secrets: {secrets:?}");
    secrets
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} holds a secret from config.yml:\n{text}"
        );
    }
}

// ---- rendering ---------------------------------------------------------------------------------

#[test]
fn compose_job_service_runs_offload_on_the_platform_network_with_the_tutor_root() {
    let p = Platform::new(&[]);
    let s = p.compose_service();
    assert_eq!(
        s["image"].as_str(),
        Some(format!("offload:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "the plugin's version is offload's (tutor-plugin/tutor_offload/__about__.py and Cargo.toml move together)"
    );
    // Tutor runs `sh -e -c SCRIPT` in the container, which the image's entrypoint would swallow.
    assert_eq!(s["entrypoint"], Value::Sequence(vec![]));
    assert!(s["user"].as_str().unwrap().parse::<u32>().is_ok());
    // The network: every service of the project, jobs included, is on its default network
    // (`<LOCAL_PROJECT_NAME>_default`) because none names another.
    assert_eq!(p.printvalue("LOCAL_PROJECT_NAME"), "tutor_local");
    for rel in [
        "env/local/docker-compose.yml",
        "env/local/docker-compose.jobs.yml",
    ] {
        let file = p.yaml(rel);
        assert!(file.get("networks").is_none(), "{rel} defines networks");
        for (name, service) in file["services"].as_mapping().unwrap() {
            assert!(
                service.get("networks").is_none() && service.get("network_mode").is_none(),
                "{rel}: {name:?} leaves the default network"
            );
        }
    }
    assert_eq!(
        strs(&s["volumes"]),
        [
            "../..:/tutor-root",
            "../../data/offload:/tutor-root.offload"
        ]
    );
    let env = strs(&s["environment"]);
    assert_eq!(env[0], "TUTOR_ROOT=/tutor-root");
    for name in &env[1..] {
        assert!(
            !name.contains('='),
            "credentials pass by name only, never with a value: {name}"
        );
    }
    for name in [
        "OFFLOAD_TO_MYSQL_PASSWORD",
        "OFFLOAD_TO_S3_SECRET_KEY",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(
            env.iter().any(|e| e == name),
            "{name} is not passed through"
        );
    }
    assert_eq!(
        strs(&s["depends_on"]),
        ["mysql", "mongodb", "redis", "meilisearch", "minio"]
    );

    // An absolute job folder is mounted as it is; stores Tutor does not run are not waited for.
    let p = Platform::new(&[
        "OFFLOAD_JOB_DIR=/srv/offload-job".into(),
        "RUN_MYSQL=false".into(),
        "RUN_MONGODB=false".into(),
    ]);
    let s = p.compose_service();
    assert_eq!(
        strs(&s["volumes"])[1],
        "/srv/offload-job:/tutor-root.offload"
    );
    assert_eq!(strs(&s["depends_on"]), ["redis", "meilisearch", "minio"]);
}

#[test]
fn k8s_job_reads_config_and_credentials_from_secrets_and_keeps_its_folder_on_a_claim() {
    let p = Platform::new(&[]);
    let (job, pvc) = p.k8s_objects();
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"].as_str().unwrap(),
        format!("offload:{}", env!("CARGO_PKG_VERSION"))
    );
    // Empty, so that `tutor k8s do` replaces it with `sh -e -c` instead of appending to the
    // image's entrypoint.
    assert_eq!(c["command"], Value::Sequence(vec![]));
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"));
    assert!(
        pod.get("serviceAccountName").is_none(),
        "the namespace's default account unless one is named"
    );
    assert_eq!(job["spec"]["backoffLimit"].as_u64(), Some(1));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(10001));
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(10001));
    assert_eq!(c["resources"]["requests"]["memory"].as_str(), Some("512Mi"));
    assert_eq!(c["resources"]["limits"]["memory"].as_str(), Some("1Gi"));

    // config.yml from a Secret, the job folder from the claim.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}: {mounts:?}"))
    };
    let volume = |name: &Value| {
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| &v["name"] == name)
            .unwrap()
            .clone()
    };
    let config = mount("/tutor-root/config.yml");
    assert_eq!(config["subPath"].as_str(), Some("config.yml"));
    assert_eq!(config["readOnly"].as_bool(), Some(true));
    assert_eq!(
        volume(&config["name"])["secret"]["secretName"].as_str(),
        Some("offload-tutor-config")
    );
    let folder = mount("/tutor-root.offload");
    assert_eq!(
        volume(&folder["name"])["persistentVolumeClaim"]["claimName"].as_str(),
        Some("offload")
    );
    assert_eq!(mounts.len(), 2, "no media claim unless one is named");

    // Environment: the Tutor root by value, every credential by reference to the Secret.
    let env = c["env"].as_sequence().unwrap();
    assert_eq!(env[0]["name"].as_str(), Some("TUTOR_ROOT"));
    assert_eq!(env[0]["value"].as_str(), Some("/tutor-root"));
    for e in &env[1..] {
        assert!(e.get("value").is_none(), "a credential has a value: {e:?}");
        let r = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"].as_str(), Some("offload-credentials"));
        assert_eq!(r["key"], e["name"]);
        assert_eq!(r["optional"].as_bool(), Some(true));
    }
    assert!(env.iter().any(|e| e["name"] == "OFFLOAD_TO_MYSQL_PASSWORD"));

    // The claim outlives the Job: a separate object, applied with the platform's volumes.
    assert_eq!(
        pvc["metadata"]["labels"]["app.kubernetes.io/component"].as_str(),
        Some("volume")
    );
    assert_eq!(
        pvc["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
        Some("offload")
    );
    assert_eq!(
        pvc["spec"]["resources"]["requests"]["storage"].as_str(),
        Some("1Gi")
    );
    assert!(pvc["spec"].get("storageClassName").is_none());
    assert!(
        job["metadata"]["labels"]
            .get("app.kubernetes.io/name")
            .is_none(),
        "`tutor k8s start offload` must not start the Job template itself"
    );

    // Filesystem media on a claim of the operator's, read-only where offload looks for them.
    let p = Platform::new(&[
        "OFFLOAD_K8S_MEDIA_PVC=openedx-media".into(),
        "OFFLOAD_K8S_STORAGE_CLASS=fast".into(),
        "OFFLOAD_K8S_BACKOFF_LIMIT=3".into(),
        "OFFLOAD_K8S_SERVICE_ACCOUNT=offload-s3".into(),
    ]);
    let (job, pvc) = p.k8s_objects();
    let pod = &job["spec"]["template"]["spec"];
    // An account of the operator's (IRSA, Pod Identity) gives S3 credentials without keys.
    assert_eq!(pod["serviceAccountName"].as_str(), Some("offload-s3"));
    let media = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/tutor-root/data/openedx-media")
        .expect("media mounted")
        .clone();
    assert_eq!(media["readOnly"].as_bool(), Some(true));
    let claim = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == media["name"])
        .unwrap()["persistentVolumeClaim"]
        .clone();
    assert_eq!(claim["claimName"].as_str(), Some("openedx-media"));
    assert_eq!(claim["readOnly"].as_bool(), Some(true));
    assert_eq!(pvc["spec"]["storageClassName"].as_str(), Some("fast"));
    assert_eq!(job["spec"]["backoffLimit"].as_u64(), Some(3));
}

#[test]
fn no_rendered_file_of_the_plugin_holds_a_secret_from_config_yml() {
    let p = Platform::new(&["OFFLOAD_REPOSITORY=https://git.example.org/offload.git".into()]);
    let mut secrets = config_secrets(&repo_root().join("fixtures/tutor"));
    // The MinIO plugin's job service carries its keys in the shared jobs file: without it, the
    // files the plugin renders into hold only Tutor's core jobs (which hold no secret) and the
    // plugin's, so they are checked whole, comments included.
    tutor(&p.root, &["plugins", "disable", "minio"]);
    tutor(&p.root, &["config", "save"]);
    secrets.extend(config_secrets(&p.root));
    let mut files: Vec<PathBuf> = [
        "env/local/docker-compose.jobs.yml",
        "env/dev/docker-compose.jobs.yml",
        "env/k8s/jobs.yml",
        "env/k8s/volumes.yml",
    ]
    .iter()
    .map(|rel| p.root.join(rel))
    .collect();
    files.extend(walk(&p.root.join("env/plugins/offload")));
    assert!(files.len() > 4, "the Dockerfile is rendered: {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains("offload") || file.ends_with("dev/docker-compose.jobs.yml"));
        assert_no_secret(&file.display().to_string(), &text, &secrets);
    }
    // The check has teeth: Tutor's own environment does hold them.
    let lms = p.read("env/apps/openedx/config/lms.env.yml");
    assert!(secrets.iter().any(|s| lms.contains(s.as_str())));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Runs a tool from the stack's venv, failing with its output.
fn venv_tool(name: &str, args: &[&std::ffi::OsStr]) -> String {
    let bin = venv_bin(name);
    assert!(
        bin.is_file(),
        "{} missing: run scripts/stack up",
        bin.display()
    );
    let out = Command::new(&bin).args(args).output().unwrap();
    assert_success(&out, name);
    text(&out)
}

fn write_yaml_docs(path: &Path, docs: &[&Value]) {
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    std::fs::write(path, text.join("---\n")).unwrap();
}

#[test]
fn rendered_manifests_pass_the_kubernetes_and_compose_schemas() {
    let p = Platform::new(&["OFFLOAD_K8S_MEDIA_PVC=openedx-media".into()]);
    let (job, pvc) = p.k8s_objects();
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("offload.yml");
    write_yaml_docs(&manifests, &[&job, &pvc]);
    let report = venv_tool(
        "kubernetes-validate",
        &["--strict".as_ref(), manifests.as_os_str()],
    );
    assert!(
        report.contains("job/offload-job") && report.contains("persistentvolumeclaim/offload"),
        "{report}"
    );
    let jobs = p.root.join("env/local/docker-compose.jobs.yml");
    venv_tool(
        "check-jsonschema",
        &[
            "--builtin-schema".as_ref(),
            "vendor.compose-spec".as_ref(),
            jobs.as_os_str(),
        ],
    );
}

#[test]
fn dockerfiles_pass_hadolint_and_build_alike() {
    let repo = repo_root().join("Dockerfile");
    venv_tool("hadolint", &[repo.as_os_str()]);
    let from_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("FROM docker.io/"))
            .map(String::from)
            .collect()
    };
    let ours = from_lines(&std::fs::read_to_string(&repo).unwrap());
    assert_eq!(ours.len(), 2);
    for set in [
        vec![],
        vec!["OFFLOAD_REPOSITORY=https://git.example.org/offload.git".to_string()],
    ] {
        let p = Platform::new(&set);
        let rel = "env/plugins/offload/build/offload/Dockerfile";
        venv_tool("hadolint", &[p.root.join(rel).as_os_str()]);
        let text = p.read(rel);
        assert_eq!(
            from_lines(&text),
            ours,
            "the plugin builds as the repository's Dockerfile does"
        );
        assert_eq!(
            text.contains("ADD --keep-git-dir=false https://git.example.org/offload.git#v"),
            !set.is_empty()
        );
        assert_eq!(
            tutor(&p.root, &["images", "printtag", "offload"]).trim(),
            format!("offload:{}", env!("CARGO_PKG_VERSION"))
        );
    }
}

// ---- stand-ins for docker, kubectl and the Kubernetes API server -------------------------------

/// One script for both stand-ins; it acts as the tool its symlink is named after.
const STANDIN_PY: &str = r#"# A stand-in for `docker` and `kubectl`, written by tests/it/plugin.rs: no Docker daemon or
# Kubernetes cluster exists in the tests. Invoked through a symlink named `docker` or `kubectl`,
# it records each invocation Tutor makes (argv, and what it pipes or applies) as one JSON line in
# $STANDIN_RECORD, answers the queries Tutor makes before a job, and runs the job's container
# command on this machine: each mount becomes a symlink under a fresh folder standing for the
# container's filesystem, and `offload` on the job's PATH is $STANDIN_OFFLOAD. A Pod it is
# given is only kept, for `kubectl cp` from the claims it mounts. It does not isolate anything:
# no network namespace, no read-only mounts, no user switch.
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import yaml

STATE = os.environ["STANDIN_STATE"]


def record(entry):
    with open(os.environ["STANDIN_RECORD"], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def link(ctr, container_path, host_path):
    """Make `container_path` inside the container folder `ctr` point at `host_path`."""
    target = os.path.join(ctr, container_path.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.symlink(os.path.abspath(host_path), target)


def run_container(ctr, mounts, env, command, workdir):
    for container_path, host_path in mounts:
        link(ctr, container_path, host_path)
    shim = os.path.join(ctr, ".standin-bin")
    os.makedirs(shim)
    os.symlink(os.environ["STANDIN_OFFLOAD"], os.path.join(shim, "offload"))
    home = os.path.join(ctr, workdir.lstrip("/"))
    os.makedirs(home, exist_ok=True)
    # Values naming a path in the container name the same path under `ctr`.
    env = {k: (os.path.join(ctr, v.lstrip("/")) if v.startswith("/") else v) for k, v in env.items()}
    env.update({"PATH": shim + ":/usr/bin:/bin", "HOME": home, "NO_COLOR": "1"})
    return subprocess.run(command, env=env, cwd=home, check=False).returncode


def docker(argv):
    if argv[:1] != ["compose"]:
        record({"argv": argv})
        return 1
    files, project, i = [], None, 1
    while i < len(argv) and argv[i] in ("-f", "--project-name"):
        if argv[i] == "-f":
            files.append(argv[i + 1])
        else:
            project = argv[i + 1]
        i += 2
    sub = argv[i:]
    entry = {"argv": argv, "files": files, "project": project}
    if sub[:1] == ["ls"]:
        record(entry)
        print("[]")
        return 0
    if sub[:1] != ["run"]:
        record(entry)
        return 1
    j = 1
    while sub[j].startswith("-"):
        j += 1
    name, command = sub[j], sub[j + 1 :]
    entry.update({"service": name, "command": command})
    record(entry)
    service = {}
    for f in files:
        with open(f, encoding="utf-8") as fi:
            service.update((yaml.safe_load(fi).get("services") or {}).get(name) or {})
    project_dir = os.path.dirname(files[0])
    mounts = []
    for volume in service.get("volumes", []):
        src, dst = volume.split(":")[:2]
        mounts.append((dst, os.path.join(project_dir, src)))
    env = {}
    for item in service.get("environment", []):
        key, eq, value = item.partition("=")
        if eq:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    entrypoint = service.get("entrypoint")
    assert entrypoint == [], f"the stand-in runs only services without an entrypoint: {entrypoint}"
    ctr = tempfile.mkdtemp(prefix="container-", dir=STATE)
    return run_container(ctr, mounts, env, command, "/home/offload")


def secret_path(name, key):
    return os.path.join(STATE, "secrets", name, key)


def run_job(job):
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = []
    for m in container.get("volumeMounts", []):
        v = volumes[m["name"]]
        if "persistentVolumeClaim" in v:
            host = os.path.join(STATE, "pvc", v["persistentVolumeClaim"]["claimName"])
            os.makedirs(host, exist_ok=True)
        elif "secret" in v:
            host = os.path.join(STATE, "secrets", v["secret"]["secretName"])
        else:
            raise SystemExit(f"kubectl-standin: unsupported volume {v}")
        if m.get("subPath"):
            host = os.path.join(host, m["subPath"])
        mounts.append((m["mountPath"], host))
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            path = secret_path(ref["name"], ref["key"])
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    env[e["name"]] = f.read()
            elif not ref.get("optional"):
                raise SystemExit(f"kubectl-standin: missing secret key {ref}")
    command = container.get("command", []) + container.get("args", [])
    ctr = tempfile.mkdtemp(prefix="pod-", dir=STATE)
    code = run_container(ctr, mounts, env, command, "/home/offload")
    os.makedirs(os.path.join(STATE, "jobs"), exist_ok=True)
    with open(os.path.join(STATE, "jobs", job["metadata"]["name"]), "w", encoding="utf-8") as f:
        f.write(str(code))


def namespaced(argv):
    """argv without `--namespace NS`."""
    if "--namespace" in argv:
        i = argv.index("--namespace")
        return argv[:i] + argv[i + 2 :]
    return argv


def pod_path(pod_name, path):
    """Where `path` in the pod `pod_name` is on this machine: under the claim mounted there."""
    with open(os.path.join(STATE, "pods", pod_name + ".json"), encoding="utf-8") as f:
        pod = json.load(f)["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in pod["containers"][0].get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if path == mount or path.startswith(mount + "/"):
            claim = volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
            return os.path.join(STATE, "pvc", claim) + path[len(mount) :]
    raise SystemExit(f"kubectl-standin: nothing is mounted at {path} in {pod_name}")


def kubectl_cp(argv):
    """`kubectl cp POD:PATH DEST`: DEST becomes a copy of the folder PATH (tar's way: the
    folder's entries land directly in DEST). $STANDIN_KUBECTL_CP_FAIL makes it fail."""
    source, dest = namespaced(argv)[1:3]
    held = os.environ.get("STANDIN_KUBECTL_CP_HOLD")
    if held:
        # Part of the folder arrives, then the copy hangs until it is killed; the file named by
        # $STANDIN_KUBECTL_CP_HOLD says it is there.
        os.makedirs(dest)
        open(os.path.join(dest, "catalog.sqlite"), "w", encoding="utf-8").close()
        open(held, "w", encoding="utf-8").close()
        while True:
            signal.pause()
    if os.environ.get("STANDIN_KUBECTL_CP_FAIL"):
        print("kubectl-standin: error: cp failed (STANDIN_KUBECTL_CP_FAIL)", file=sys.stderr)
        return 1
    pod_name, path = source.split(":", 1)
    shutil.copytree(pod_path(pod_name, path), dest)
    return 0


def kubectl_get_jobs():
    """The Jobs this stand-in ran (all finished), and any named in $STANDIN_ACTIVE_JOBS as
    running."""
    items = []
    jobs = os.path.join(STATE, "jobs")
    for name in sorted(os.listdir(jobs)) if os.path.isdir(jobs) else []:
        with open(os.path.join(jobs, name), encoding="utf-8") as f:
            done = {"succeeded": 1} if f.read() == "0" else {"failed": 1}
        items.append({"metadata": {"name": name}, "status": done})
    for name in filter(None, os.environ.get("STANDIN_ACTIVE_JOBS", "").split(",")):
        items.append({"metadata": {"name": name}, "status": {"active": 1}})
    print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return 0


def kubectl(argv):
    entry = {"argv": argv}
    if argv[:1] == ["cp"]:
        record(entry)
        return kubectl_cp(argv)
    if namespaced(argv)[:2] == ["get", "jobs"]:
        record(entry)
        return kubectl_get_jobs()
    if argv[:1] == ["kustomize"]:
        record(entry)
        with open(os.path.join(argv[1], "kustomization.yml"), encoding="utf-8") as f:
            kustomization = yaml.safe_load(f)
        docs = []
        for resource in kustomization["resources"]:
            with open(os.path.join(argv[1], resource), encoding="utf-8") as f:
                docs += [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            d["metadata"]["namespace"] = kustomization["namespace"]
        yaml.safe_dump_all(docs, sys.stdout)
        return 0
    if argv[:1] in (["apply"], ["create"]) and "-f" in argv:
        source = argv[argv.index("-f") + 1]
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
        manifest = yaml.safe_load(text)
        entry["manifest"] = manifest
        record(entry)
        items = manifest["items"] if manifest.get("kind") == "List" else [manifest]
        for item in items:
            if item["kind"] == "Secret":
                folder = os.path.join(STATE, "secrets", item["metadata"]["name"])
                os.makedirs(folder, exist_ok=True)
                for old in os.listdir(folder):
                    os.remove(os.path.join(folder, old))
                for key, value in (item.get("data") or {}).items():
                    with open(os.path.join(folder, key), "wb") as f:
                        f.write(base64.b64decode(value))
            elif item["kind"] == "Job":
                run_job(item)
            elif item["kind"] == "Pod":
                # Kept for `cp`, which reads the claims it mounts.
                os.makedirs(os.path.join(STATE, "pods"), exist_ok=True)
                with open(os.path.join(STATE, "pods", item["metadata"]["name"] + ".json"), "w", encoding="utf-8") as f:
                    json.dump(item, f)
            print(f"{item['kind'].lower()}/{item['metadata']['name']} configured")
        return 0
    record(entry)
    return 0


role = os.path.basename(sys.argv[0])
sys.exit({"docker": docker, "kubectl": kubectl}[role](sys.argv[1:]))
"#;

/// Stand-ins for `docker` and `kubectl` on PATH, their record and their state (claims, Secrets,
/// finished Jobs).
struct Standins {
    dir: tempfile::TempDir,
}

impl Standins {
    /// `offload` inside the stand-in containers, and on PATH beside the stand-ins, runs
    /// `offload_bin`.
    fn new(offload_bin: &Path) -> Standins {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        for tool in ["docker", "kubectl"] {
            let script = bin.join(format!("{tool}-standin"));
            std::fs::write(
                &script,
                format!("#!{}\n{STANDIN_PY}", venv_bin("python").display()),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            symlink(&script, bin.join(tool)).unwrap();
        }
        symlink(offload_bin, dir.path().join("offload")).unwrap();
        // And on the operator's machine (`tutor offload k8s-cutover` finds it on PATH).
        symlink(offload_bin, bin.join("offload")).unwrap();
        Standins { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Tutor, with the stand-ins first on PATH.
    fn tutor(&self, root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.tutor_command(root, args, env)
            .output()
            .expect("run tutor")
    }

    /// Tutor with the stand-ins first on `PATH`, not started.
    fn tutor_command(&self, root: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = tutor_command(root);
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.args(args)
            .env("PATH", path)
            .env("STANDIN_STATE", self.state())
            .env("STANDIN_RECORD", self.dir.path().join("record.jsonl"))
            .env("STANDIN_OFFLOAD", self.dir.path().join("offload"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Every invocation the stand-ins saw, in order.
    fn record(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("record.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn argv(entry: &serde_json::Value) -> Vec<String> {
    entry["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// A stand-in for the Kubernetes API server, for the two Job listings `tutor k8s do` makes with
/// the Python client: the active Jobs (none) and, while it waits, the Job it started, reported
/// finished with the exit code the kubectl stand-in left in `state/jobs/<name>`. Returns the
/// kubeconfig file pointing at it.
fn api_standin(state: PathBuf, dir: &Path) -> PathBuf {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            let target = request_line.split(' ').nth(1).unwrap_or("").to_string();
            let items = match target.split("fieldSelector=metadata.name%3D").nth(1) {
                None => serde_json::json!([]),
                Some(rest) => {
                    let name = rest.split('&').next().unwrap();
                    let code = std::fs::read_to_string(state.join("jobs").join(name))
                        .unwrap_or_else(|_| "missing".into());
                    let status = if code == "0" {
                        serde_json::json!({"succeeded": 1})
                    } else {
                        serde_json::json!({"failed": 1})
                    };
                    serde_json::json!([{"metadata": {"name": name}, "status": status}])
                }
            };
            let body = serde_json::json!({
                "apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": items
            })
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: standin\n  user:\n    token: standin\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\ncurrent-context: standin\n"
        ),
    )
    .unwrap();
    kubeconfig
}

/// A program that stands in for offload inside the stand-in containers: it writes the
/// arguments it was given, and what it finds in its environment, to `out` as JSON.
fn offload_recorder(dir: &Path, out: &Path) -> PathBuf {
    let path = dir.join("offload-recorder");
    std::fs::write(
        &path,
        format!(
            "#!{}\nimport json, os, sys\njson.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({:?}, 'w'))\n",
            venv_bin("python").display(),
            out.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// ---- tutor local|dev do offload ----------------------------------------------------------------

/// The stack's MySQL source as the platform's MySQL: config.yml points at it, with a user that
/// has the root password Tutor generated (as tests/it/migrate.rs does), and one fixture database.
struct MysqlPlatform {
    platform: Platform,
    user: String,
    db: TestDb,
}

impl MysqlPlatform {
    async fn new(tag: &str, set: &[&str]) -> MysqlPlatform {
        let db = TestDb::new(tag).await;
        db.load_fixture();
        let fixture = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_root().join("fixtures/tutor/config.yml"),
            fixture.path().join("config.yml"),
        )
        .unwrap();
        let password = tutor(
            fixture.path(),
            &["config", "printvalue", "MYSQL_ROOT_PASSWORD"],
        );
        let user = format!("it_{tag}_{}", std::process::id());
        let src = mysql_source();
        exec(
            &src,
            &format!(
                "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{}'",
                password.trim()
            ),
        )
        .await;
        exec(
            &src,
            &format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION"),
        )
        .await;
        let u = url::Url::parse(&src).unwrap();
        let mut settings = vec![
            format!("MYSQL_HOST={}", u.host_str().unwrap()),
            format!("MYSQL_PORT={}", u.port().unwrap()),
            format!("MYSQL_ROOT_USERNAME={user}"),
        ];
        settings.extend(set.iter().map(|s| s.to_string()));
        let platform = Platform::new(&settings);
        MysqlPlatform { platform, user, db }
    }

    async fn done(self) {
        exec(
            &mysql_source(),
            &format!("DROP USER IF EXISTS '{}'@'%'", self.user),
        )
        .await;
        self.db.drop_both().await;
    }
}

/// The `docker compose run` of a job, from the stand-ins' record.
fn compose_run(standins: &Standins) -> serde_json::Value {
    let record = standins.record();
    let runs: Vec<_> = record
        .iter()
        .filter(|e| e.get("service").is_some())
        .cloned()
        .collect();
    assert_eq!(runs.len(), 1, "one job run: {record:#?}");
    runs[0].clone()
}

#[tokio::test]
async fn local_do_offload_plans_in_the_job_service_then_migrates_and_cuts_over() {
    let m = MysqlPlatform::new("plugin_local", &[]).await;
    let root = &m.platform.root;
    let target = mysql_target();
    let plan_args = [
        "plan",
        "--to-mysql",
        target.as_str(),
        "--databases",
        m.db.name.as_str(),
    ];
    let standins = Standins::new(Path::new(env!("CARGO_BIN_EXE_offload")));
    let mut args = vec!["local", "do", "offload", "--"];
    args.extend(plan_args);
    let out = standins.tutor(root, &args, &[]);
    assert_success(&out, "tutor local do offload -- plan");

    // The exact invocation: Tutor's project files, the jobs file, the job service, sh -e -c.
    let run = compose_run(&standins);
    let env = root.join("env/local");
    let mut want = vec!["compose".to_string()];
    for f in ["docker-compose.yml", "docker-compose.prod.yml"] {
        want.extend(["-f".into(), env.join(f).display().to_string()]);
    }
    want.extend(["--project-name".into(), "tutor_local".into()]);
    want.extend([
        "-f".into(),
        env.join("docker-compose.jobs.yml").display().to_string(),
    ]);
    want.extend(["run", "--rm", "-T", "offload-job", "sh", "-e", "-c"].map(String::from));
    want.push(format!("exec offload {}", plan_args.join(" ")));
    assert_eq!(argv(&run), want);
    // offload ran in it, read config.yml through the mounted root and reached both servers.
    let report = text(&out);
    assert!(
        report.contains(&m.db.name) && report.contains("auth_user"),
        "{report}"
    );
    assert!(
        root.join("data/offload").is_dir(),
        "the job folder is made before the run, as the operator"
    );

    // The whole migration through the job service: copy, verify, and cutover of the mounted
    // config.yml; the catalog stays in the Tutor root's data/offload for a later resume.
    let standins = Standins::new(Path::new(env!("CARGO_BIN_EXE_offload")));
    let out = standins.tutor(
        root,
        &[
            "local",
            "do",
            "offload",
            "--",
            "migrate",
            "--to-mysql",
            &target,
            "--databases",
            &m.db.name,
        ],
        &[],
    );
    assert_success(&out, "tutor local do offload -- migrate");
    let report = text(&out);
    assert!(
        report.contains("Safe to switch") && report.contains("Rewrote"),
        "{report}"
    );
    // Not on a terminal (Tutor then runs the job service without one): progress comes as lines,
    // as it would into `docker compose logs` or `kubectl logs`.
    assert!(
        report.contains("offload progress: copy done"),
        "progress lines from the job service: {report}"
    );
    assert!(
        root.join("data/offload/catalog.sqlite").is_file(),
        "the catalog is in OFFLOAD_JOB_DIR"
    );
    let t = url::Url::parse(&target).unwrap();
    assert_eq!(m.platform.printvalue("RUN_MYSQL"), "false");
    assert_eq!(
        m.platform.printvalue("MYSQL_PORT"),
        t.port().unwrap().to_string()
    );
    assert_eq!(
        dump(&mysql_source(), &m.db.name),
        dump(&mysql_target(), &m.db.name),
        "the target holds what the source does"
    );
    m.done().await;
}

#[test]
fn do_offload_hands_arguments_credentials_and_the_tutor_root_to_offload_in_every_mode() {
    let p = Platform::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("seen.json");
    let standins = Standins::new(&offload_recorder(dir.path(), &got));
    let kubeconfig = api_standin(standins.state(), dir.path());
    let credential = "standin-pässword $(x) 'q'";
    let env = [
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("OFFLOAD_TO_MYSQL_PASSWORD", credential),
    ];
    // Shell syntax, quotes, and Jinja (Tutor renders the job's script as a template).
    let tricky = [
        "plan",
        "--databases",
        "a b;c",
        "it's \"quoted\"",
        "$(touch pwned) `touch pwned` $HOME",
        "{{ MYSQL_ROOT_PASSWORD }}",
        "{% raw %}{#",
        "ünïcode\ttab",
        "",
    ];
    let config = std::fs::read(p.root.join("config.yml")).unwrap();
    for (mode, job_folder) in [
        ("local", p.root.join("data/offload")),
        ("dev", p.root.join("data/offload")),
        ("k8s", standins.state().join("pvc/offload")),
    ] {
        let mut args = vec![mode, "do", "offload", "--"];
        args.extend(tricky);
        let out = standins.tutor(&p.root, &args, &env);
        assert_success(&out, &format!("tutor {mode} do offload"));
        let seen: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&got).unwrap()).unwrap();
        assert_eq!(seen["argv"], serde_json::json!(tricky), "{mode}");
        assert!(!p.root.join("pwned").exists() && !dir.path().join("pwned").exists());
        // The credential by name, through Compose or the Secret; the Tutor root and the job
        // folder where offload looks for them by default.
        assert_eq!(
            seen["env"]["OFFLOAD_TO_MYSQL_PASSWORD"], credential,
            "{mode}"
        );
        assert_eq!(seen["env"].get("OFFLOAD_TO_REDIS_PASSWORD"), None, "{mode}");
        let tutor_root = PathBuf::from(seen["env"]["TUTOR_ROOT"].as_str().unwrap());
        assert!(tutor_root.ends_with("tutor-root"), "{mode}: {tutor_root:?}");
        assert_eq!(
            std::fs::read(tutor_root.join("config.yml")).unwrap(),
            config,
            "{mode}"
        );
        assert_eq!(
            tutor_root
                .with_file_name("tutor-root.offload")
                .canonicalize()
                .unwrap(),
            job_folder.canonicalize().unwrap(),
            "{mode}"
        );
    }
    // `tutor dev do` runs the same service with the dev project and its own jobs file too.
    let dev = standins
        .record()
        .into_iter()
        .rfind(|e| e.get("service").is_some())
        .unwrap();
    assert_eq!(dev["project"], "tutor_dev");
    let files = argv(&serde_json::json!({"argv": dev["files"]}));
    for jobs in [
        "env/local/docker-compose.jobs.yml",
        "env/dev/docker-compose.jobs.yml",
    ] {
        assert!(files.iter().any(|f| f.ends_with(jobs)), "{files:?}");
    }
}

// ---- tutor k8s do offload ----------------------------------------------------------------------

#[tokio::test]
async fn k8s_do_offload_runs_a_job_on_the_claim_and_k8s_cutover_cuts_over_as_offload_does() {
    // The template's backoffLimit, which `tutor k8s do` replaces with its own.
    let m = MysqlPlatform::new("plugin_k8s", &["OFFLOAD_K8S_BACKOFF_LIMIT=3"]).await;
    let root = &m.platform.root;
    let config_before = std::fs::read(root.join("config.yml")).unwrap();
    let standins = Standins::new(Path::new(env!("CARGO_BIN_EXE_offload")));
    let kubeconfig = api_standin(standins.state(), standins.dir.path());
    let kubeconfig = kubeconfig.to_str().unwrap();
    // A credential in the operator's environment: it must reach the Job only through a Secret.
    // (The Redis target is not part of this job; offload ignores it.)
    let credential = "standin-redis-pässword";
    let env = [
        ("KUBECONFIG", kubeconfig),
        ("OFFLOAD_TO_REDIS_PASSWORD", credential),
    ];
    let target = mysql_target();
    let k8s_do = |args: &[&str]| {
        let mut all = vec!["k8s", "do", "offload", "--"];
        all.extend_from_slice(args);
        standins.tutor(root, &all, &env)
    };

    let out = k8s_do(&["copy", "--to-mysql", &target, "--databases", &m.db.name]);
    assert_success(&out, "tutor k8s do offload -- copy");
    // Tutor waits for the platform's deployments; then the plugin applies the claim from the
    // rendered environment and the Secrets on stdin; then Tutor renders the Job and applies it.
    let record = standins.record();
    let calls: Vec<Vec<String>> = record.iter().map(argv).collect();
    let env_dir = root.join("env").display().to_string();
    let waited: Vec<&str> = calls
        .iter()
        .filter(|c| c[0] == "wait")
        .map(|c| c[3].rsplit("app.kubernetes.io/name=").next().unwrap())
        .collect();
    assert_eq!(waited, ["caddy", "meilisearch", "mysql", "mongodb"]);
    let steps: Vec<&Vec<String>> = calls.iter().filter(|c| c[0] != "wait").collect();
    assert_eq!(
        steps[0][..],
        [
            "apply",
            "--kustomize",
            &env_dir,
            "--selector",
            "app.kubernetes.io/name=offload,app.kubernetes.io/component=volume"
        ]
    );
    assert_eq!(steps[1][..], ["apply", "--namespace", "openedx", "-f", "-"]);
    assert_eq!(steps[2][..], ["kustomize", &env_dir]);
    assert_eq!(steps[3][..2], ["apply", "-f"]);
    assert_eq!(steps.len(), 4, "{calls:?}");
    let secrets_applied = record
        .iter()
        .find(|e| argv(e).last().map(String::as_str) == Some("-"))
        .unwrap();

    // The Secrets: config.yml byte for byte, and the credentials set in the environment (as
    // the kubectl stand-in decoded them from what was applied).
    let names: Vec<&str> = secrets_applied["manifest"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["offload-tutor-config", "offload-credentials"]);
    let data = |name: &str, key: &str| {
        std::fs::read(standins.state().join("secrets").join(name).join(key)).ok()
    };
    assert_eq!(
        data("offload-tutor-config", "config.yml").unwrap(),
        config_before
    );
    assert_eq!(
        data("offload-credentials", "OFFLOAD_TO_REDIS_PASSWORD").unwrap(),
        credential.as_bytes()
    );
    assert_eq!(
        data("offload-credentials", "OFFLOAD_TO_MYSQL_PASSWORD"),
        None
    );

    // The Job Tutor applied: its name, `sh -e -c` and the script, Tutor's own retry and TTL.
    let applied = record
        .iter()
        .find(|e| e["manifest"]["kind"] == "Job")
        .expect("a Job applied")["manifest"]
        .clone();
    assert!(applied["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("offload-job-"));
    let c = &applied["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], serde_json::json!(["sh", "-e", "-c"]));
    assert_eq!(
        c["args"],
        serde_json::json!([format!(
            "exec offload copy --to-mysql {target} --databases {}",
            m.db.name
        )])
    );
    assert_eq!(
        applied["spec"]["backoffLimit"], 1,
        "Tutor's, not OFFLOAD_K8S_BACKOFF_LIMIT"
    );
    assert_eq!(applied["spec"]["ttlSecondsAfterFinished"], 3600);
    let dir = tempfile::tempdir().unwrap();
    let applied_file = dir.path().join("applied.yml");
    std::fs::write(&applied_file, serde_yaml::to_string(&applied).unwrap()).unwrap();
    venv_tool(
        "kubernetes-validate",
        &["--strict".as_ref(), applied_file.as_os_str()],
    );
    // No secret on any command line or in the Job.
    let mut secrets_all = config_secrets(root);
    secrets_all.push(credential.to_string());
    for e in &record {
        assert_no_secret("a command line", &argv(e).join(" "), &secrets_all);
    }
    assert_no_secret("the applied Job", &applied.to_string(), &secrets_all);
    assert!(text(&out).contains("successful"), "{}", text(&out));

    // The job folder lives on the claim; a second Job resumes from it (verify needs no flags).
    let claim = standins.state().join("pvc/offload");
    assert!(
        claim.join("catalog.sqlite").is_file(),
        "the catalog is on the claim"
    );
    let out = k8s_do(&["verify"]);
    assert_success(&out, "tutor k8s do offload -- verify");
    assert!(text(&out).contains("Safe to switch"), "{}", text(&out));

    // Cutover runs on the operator's machine: `tutor offload k8s-cutover` copies the claim's
    // folder down through a pod and runs offload cutover on it against the operator's own
    // config.yml, which ends up exactly as offload cutover by hand on a copy of both leaves it.
    let (bare, want) = bare_cutover(&claim, root, dir.path());
    assert_exit(&bare, 0);
    let (out, calls) = k8s_cutover(&standins, root, &[], &env);
    assert_exit(&out, 0);
    let local = local_copy(root);
    let pod = assert_fetch_calls(&calls, &local, 300);
    assert_eq!(
        pod["spec"]["containers"][0]["image"].as_str().unwrap(),
        format!("offload:{}", env!("CARGO_PKG_VERSION")),
        "offload's own image by default"
    );
    assert_no_secret("the fetch pod", &pod.to_string(), &secrets_all);
    assert!(text(&out).contains("Rewrote"), "{}", text(&out));
    assert_eq!(
        std::fs::read(root.join("config.yml")).unwrap(),
        want,
        "config.yml as offload cutover rewrites it"
    );
    assert_eq!(m.platform.printvalue("RUN_MYSQL"), "false");
    assert!(local.join("catalog.sqlite").is_file(), "the copy stays");
    assert!(!partial_copy(&local).exists());
    m.done().await;
}

/// `tutor offload k8s-cutover ARGS` through the stand-ins (`offload` on PATH is theirs); its
/// output, and the kubectl calls it made.
fn k8s_cutover(
    standins: &Standins,
    root: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Output, Vec<serde_json::Value>) {
    let before = standins.record().len();
    let mut all = vec!["offload", "k8s-cutover"];
    all.extend_from_slice(args);
    let out = standins.tutor(root, &all, env);
    (out, standins.record()[before..].to_vec())
}

/// Where `tutor offload k8s-cutover` copies the claim's job folder: under the Tutor root (as
/// Tutor resolves it).
fn local_copy(root: &Path) -> PathBuf {
    root.canonicalize()
        .unwrap()
        .join("data/offload-k8s/offload")
}

/// The folder `kubectl cp` writes before it replaces the local copy.
fn partial_copy(local: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", local.display()))
}

/// The exact kubectl calls of a `tutor offload k8s-cutover` that reached the cluster: list the
/// Jobs (none may be running), create the pod (its manifest on stdin), wait for it, copy the
/// folder, delete the pod. Returns the pod, checked: the claim `offload`, read-only, at the
/// folder copied.
fn assert_fetch_calls(
    calls: &[serde_json::Value],
    local: &Path,
    timeout: u32,
) -> serde_json::Value {
    let argvs: Vec<Vec<String>> = calls.iter().map(argv).collect();
    assert_eq!(argvs.len(), 5, "{argvs:#?}");
    assert_eq!(
        argvs[0],
        ["get", "jobs", "--namespace", "openedx", "--output", "json"]
    );
    assert_eq!(argvs[1], ["create", "--namespace", "openedx", "-f", "-"]);
    let pod = calls[1]["manifest"].clone();
    assert_eq!(pod["kind"], "Pod");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("offload-fetch-"), "{name}");
    assert_eq!(
        argvs[2],
        [
            "wait",
            "--namespace",
            "openedx",
            "--for=condition=Ready",
            &format!("--timeout={timeout}s"),
            &format!("pod/{name}"),
        ]
    );
    assert_eq!(
        argvs[3],
        [
            "cp",
            "--namespace",
            "openedx",
            &format!("{name}:/job"),
            &partial_copy(local).display().to_string(),
        ]
    );
    assert_eq!(
        argvs[4],
        [
            "delete",
            "--namespace",
            "openedx",
            "pod",
            &name,
            "--ignore-not-found"
        ]
    );
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["securityContext"]["runAsUser"], 10001);
    let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0]["mountPath"], "/job");
    assert_eq!(mounts[0]["readOnly"], true);
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mounts[0]["name"])
        .unwrap();
    assert_eq!(
        volume["persistentVolumeClaim"],
        serde_json::json!({"claimName": "offload", "readOnly": true})
    );
    pod
}

/// offload cutover by hand, on copies of the claim's job folder and of `root`'s config.yml
/// made in `scratch`: what `tutor offload k8s-cutover` must do. Its output and the config.yml
/// it left.
fn bare_cutover(claim: &Path, root: &Path, scratch: &Path) -> (Output, Vec<u8>) {
    let job = scratch.join("bare-job");
    let tutor_root = scratch.join("bare-tutor");
    copy_dir(claim, &job);
    std::fs::create_dir_all(&tutor_root).unwrap();
    std::fs::copy(root.join("config.yml"), tutor_root.join("config.yml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(["cutover", "--job"])
        .arg(&job)
        .arg("--tutor-root")
        .arg(&tutor_root)
        .env_remove("TUTOR_ROOT")
        .output()
        .unwrap();
    (out, std::fs::read(tutor_root.join("config.yml")).unwrap())
}

/// `tutor offload k8s-cutover` is refused as offload cutover by hand is on the same folder:
/// same exit code, offload's message, config.yml untouched. Returns the message.
fn assert_refused_as_offload_refuses(
    standins: &Standins,
    root: &Path,
    env: &[(&str, &str)],
) -> String {
    let before = std::fs::read(root.join("config.yml")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (bare, _) = bare_cutover(&standins.state().join("pvc/offload"), root, scratch.path());
    assert_ne!(bare.status.code(), Some(0), "{}", text(&bare));
    // The same words, naming the folder the command copied down.
    let refusal = String::from_utf8_lossy(&bare.stderr).trim().replace(
        &scratch.path().join("bare-job").display().to_string(),
        &local_copy(root).display().to_string(),
    );
    assert!(!refusal.is_empty(), "{}", text(&bare));
    let (out, calls) = k8s_cutover(standins, root, &[], env);
    assert_eq!(
        out.status.code(),
        bare.status.code(),
        "offload's exit code: {}",
        text(&out)
    );
    assert!(
        text(&out).contains(&refusal),
        "offload's message {refusal:?} in:\n{}",
        text(&out)
    );
    assert_fetch_calls(&calls, &local_copy(root), 300);
    assert_eq!(std::fs::read(root.join("config.yml")).unwrap(), before);
    // Where offload says to verify, the plugin says how to, in the cluster.
    assert!(
        text(&out).contains("run `tutor k8s do offload -- verify`"),
        "{}",
        text(&out)
    );
    refusal
}

#[tokio::test]
async fn k8s_cutover_is_refused_as_offload_cutover_is_when_verify_did_not_pass() {
    let m = MysqlPlatform::new("plugin_k8s_refuse", &[]).await;
    let root = &m.platform.root;
    let standins = Standins::new(Path::new(env!("CARGO_BIN_EXE_offload")));
    let kubeconfig = api_standin(standins.state(), standins.dir.path());
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let target = mysql_target();
    let out = standins.tutor(
        root,
        &[
            "k8s",
            "do",
            "offload",
            "--",
            "copy",
            "--to-mysql",
            &target,
            "--databases",
            &m.db.name,
        ],
        &env,
    );
    assert_success(&out, "tutor k8s do offload -- copy");
    // No verify yet: `tutor offload k8s-cutover` is refused as offload cutover is.
    let unverified = assert_refused_as_offload_refuses(&standins, root, &env);
    assert!(
        unverified.contains("is not safe to switch")
            && unverified.contains("16 of 16 unit(s) not verified as matching"),
        "{unverified}"
    );

    // A verify that finds differences (a row changed on the target): refused too.
    exec(
        &target,
        &format!(
            "UPDATE `{}`.auth_user SET first_name = 'changed-on-the-target' LIMIT 1",
            m.db.name
        ),
    )
    .await;
    let out = standins.tutor(root, &["k8s", "do", "offload", "--", "verify"], &env);
    assert!(!out.status.success(), "{}", text(&out));
    let differences = assert_refused_as_offload_refuses(&standins, root, &env);
    assert!(
        differences.contains("is not safe to switch") && differences != unverified,
        "{differences}"
    );

    // A Job that fails is reported failed by Tutor.
    let out = standins.tutor(
        root,
        &["k8s", "do", "offload", "--", "verify", "--no-such-flag"],
        &env,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("failed"), "{}", text(&out));
    m.done().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// SIGTERM while the job folder is being copied down stops `tutor offload k8s-cutover` as
/// Ctrl-C does: the fetch pod is deleted (it would hold the claim), the partial copy removed,
/// offload never runs, exit 130.
#[test]
fn k8s_cutover_stopped_by_sigterm_deletes_its_pod_and_exits_130() {
    let p = Platform::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen.json");
    let standins = Standins::new(&offload_recorder(dir.path(), &seen));
    let local = local_copy(&p.root);
    let held = dir.path().join("cp-held");
    let held_s = held.to_str().unwrap();
    let mut child = standins
        .tutor_command(
            &p.root,
            &["offload", "k8s-cutover"],
            &[("STANDIN_KUBECTL_CP_HOLD", held_s)],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tutor");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !held.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "tutor ended before the copy"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(partial_copy(&local).exists(), "part of the folder arrived");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 130);
    let calls: Vec<Vec<String>> = standins.record().iter().map(argv).collect();
    let last = calls.last().unwrap();
    assert_eq!(last[0], "delete", "the pod is deleted last: {calls:?}");
    assert!(
        last.iter().any(|a| a.starts_with("offload-fetch-")),
        "{last:?}"
    );
    assert!(!local.exists() && !partial_copy(&local).exists());
    assert!(!seen.exists(), "offload ran");
}

#[test]
fn k8s_cutover_checks_before_the_cluster_and_deletes_its_pod_even_when_the_copy_fails() {
    let p = Platform::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen.json");
    // offload on PATH is the recorder: it shows what the cutover would have been given.
    let standins = Standins::new(&offload_recorder(dir.path(), &seen));
    let local = local_copy(&p.root);

    // Checked before anything happens in the cluster: offload missing, a flag the command sets
    // itself, a Job still running on the folder. Exit 2, offload's code for an error.
    let (out, calls) = k8s_cutover(
        &standins,
        &p.root,
        &[],
        &[("OFFLOAD_BINARY", "offload-not-installed")],
    );
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("`offload-not-installed` is not on PATH")
            && text(&out).contains("--offload-binary"),
        "{}",
        text(&out)
    );
    assert!(calls.is_empty(), "{calls:?}");
    let (out, calls) = k8s_cutover(&standins, &p.root, &["--", "--tutor-root", "/srv"], &[]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("--tutor-root is set by `tutor offload k8s-cutover`"),
        "{}",
        text(&out)
    );
    assert!(calls.is_empty(), "{calls:?}");
    let (out, calls) = k8s_cutover(
        &standins,
        &p.root,
        &[],
        &[("STANDIN_ACTIVE_JOBS", "offload-job-20261207101500")],
    );
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("offload-job-20261207101500 is still running"),
        "{}",
        text(&out)
    );
    assert_eq!(calls.len(), 1, "only the Jobs listed: {calls:?}");

    // The copy fails: the pod is deleted all the same, nothing is left here, offload never runs.
    let (out, calls) = k8s_cutover(&standins, &p.root, &[], &[("STANDIN_KUBECTL_CP_FAIL", "1")]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("kubectl cp of the job folder"),
        "{}",
        text(&out)
    );
    let pod = assert_fetch_calls(&calls, &local, 300);
    assert!(!local.exists() && !partial_copy(&local).exists());
    assert!(!seen.exists(), "offload ran");
    // The pod passes the Kubernetes schemas.
    let pod_file = dir.path().join("pod.yml");
    std::fs::write(&pod_file, serde_yaml::to_string(&pod).unwrap()).unwrap();
    venv_tool(
        "kubernetes-validate",
        &["--strict".as_ref(), pod_file.as_os_str()],
    );

    // A job folder on the claim: copied down whole, then offload cutover runs on the copy with
    // this Tutor root and the arguments after `--`; another image and timeout by flags.
    let claim = standins.state().join("pvc/offload");
    std::fs::create_dir_all(claim.join("reports")).unwrap();
    std::fs::write(claim.join("catalog.sqlite"), "standin catalog").unwrap();
    std::fs::write(claim.join("reports/old.html"), "old").unwrap();
    let args = [
        "--image",
        "docker.io/library/busybox:1.37",
        "--timeout",
        "20",
        "--",
        "--dry-run",
        "--stores",
        "mysql",
    ];
    let (out, calls) = k8s_cutover(&standins, &p.root, &args, &[]);
    assert_exit(&out, 0);
    let pod = assert_fetch_calls(&calls, &local, 20);
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "docker.io/library/busybox:1.37"
    );
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    let root = p.root.canonicalize().unwrap();
    assert_eq!(
        got["argv"],
        serde_json::json!([
            "cutover",
            "--job",
            local.display().to_string(),
            "--tutor-root",
            root.display().to_string(),
            "--dry-run",
            "--stores",
            "mysql"
        ])
    );
    assert_eq!(
        std::fs::read_to_string(local.join("catalog.sqlite")).unwrap(),
        "standin catalog"
    );
    // A second run replaces the copy whole: nothing of the last one stays.
    std::fs::remove_file(claim.join("reports/old.html")).unwrap();
    let (out, _) = k8s_cutover(&standins, &p.root, &[], &[]);
    assert_exit(&out, 0);
    assert!(local.join("catalog.sqlite").is_file());
    assert!(!local.join("reports/old.html").exists());
}
