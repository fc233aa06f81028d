"""Tutor plugin for offload: a migration runs where the data is.

A default Tutor platform keeps mysql, mongodb, redis, minio and meilisearch inside its Compose
network or Kubernetes namespace, unreachable from the operator's shell. This plugin adds:

- `tutor local do offload -- ARGS` (and `tutor dev do offload`): a `docker compose run` of the
  job service `offload-job`, on the project's network, with the Tutor root mounted and the job
  folder kept in `OFFLOAD_JOB_DIR` so that a rerun resumes;
- `tutor k8s do offload -- ARGS`: a Job `offload-job` in Tutor's namespace whose job folder is a
  PersistentVolumeClaim that outlives it, and whose config.yml and credentials come from Secrets
  made from the operator's files and environment at each run (never from a rendered file);
- `tutor offload k8s-cutover -- ARGS`: the cutover of that job here, where config.yml is, from
  a copy of the claim's job folder (`k8s_cutover.py`);
- `tutor images build offload` (and pull, push): offload's image.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import typing as t
from glob import glob
from importlib.resources import files

import click
from tutor import config as tutor_config
from tutor import exceptions, fmt, hooks

from .__about__ import __version__
from .k8s_cutover import offload_command

# Settings, all prefixed OFFLOAD_ (Tutor's convention for a plugin's keys).
CONFIG_DEFAULTS: dict[str, t.Any] = {
    "VERSION": __version__,
    # No registry publishes offload's image yet: this is the name `tutor images build offload`
    # and `docker build -t offload:VERSION .` produce. For Kubernetes, push it to a registry the
    # cluster pulls from and set this to that name.
    "DOCKER_IMAGE": "offload:{{ OFFLOAD_VERSION }}",
    # Where `tutor images build offload` takes offload's source from: a git URL and a tag or
    # branch. Empty until the project has a public home; meanwhile `tutor mounts add
    # /path/to/offload` builds from a local checkout.
    "REPOSITORY": "",
    "REPOSITORY_VERSION": "v{{ OFFLOAD_VERSION }}",
    # The job folder (catalog, lock, reports), relative to the Tutor root unless absolute. Compose
    # mode only: in Kubernetes it is the PersistentVolumeClaim below.
    "JOB_DIR": "data/offload",
    # `tutor offload k8s-cutover`: the image of the short-lived pod that copies the job folder
    # down from its claim (it needs `sleep` and `tar`; offload's own image, which the cluster
    # already pulls, has both).
    "K8S_FETCH_IMAGE": "{{ OFFLOAD_DOCKER_IMAGE }}",
    # Kubernetes. offload holds about 256-512 MiB with its default batch sizes and transfers:
    # the request reserves the top of that range so the pod lands where it fits, and the limit
    # leaves twice that before the kernel kills it (raise both with --parallel or
    # --object-transfers). No CPU limit: throttling only makes the copy slower.
    "K8S_CPU_REQUEST": "500m",
    "K8S_MEMORY_REQUEST": "512Mi",
    "K8S_MEMORY_LIMIT": "1Gi",
    # `tutor k8s do` itself sets backoffLimit: 1 on the Job it starts (see docs/tutor.md); this
    # value holds when the Job template is applied some other way.
    "K8S_BACKOFF_LIMIT": 1,
    # The job folder's claim: a catalog in SQLite and reports, a few MiB even for large platforms.
    "K8S_VOLUME_SIZE": "1Gi",
    "K8S_STORAGE_CLASS": "",
    # Tutor on Kubernetes keeps no media on a shared volume (media belong in MinIO or S3). If yours
    # does, name its claim here: it is mounted read-only where offload looks for filesystem media.
    "K8S_MEDIA_PVC": "",
    # The Job's service account. On EKS, one annotated with an IAM role (IRSA) or bound by a Pod
    # Identity association gives offload S3 credentials without keys (the AWS credential chain
    # reads what the cluster injects); empty: the namespace's default account.
    "K8S_SERVICE_ACCOUNT": "",
}

# Names of the Kubernetes objects the plugin manages besides the Job.
K8S_VOLUME = "offload"
K8S_CONFIG_SECRET = "offload-tutor-config"
K8S_CREDENTIALS_SECRET = "offload-credentials"

# The environment variables offload reads its credentials from (see `offload plan --help`).
# They pass from the shell that runs `tutor ... do offload` into the job by name only: Compose
# takes their values from that shell, Kubernetes from a Secret made from it at each run.
CREDENTIAL_ENV = [
    "OFFLOAD_FROM_MYSQL_PASSWORD",
    "OFFLOAD_TO_MYSQL_PASSWORD",
    "OFFLOAD_FROM_MONGODB_PASSWORD",
    "OFFLOAD_TO_MONGODB_PASSWORD",
    "OFFLOAD_FROM_REDIS_PASSWORD",
    "OFFLOAD_TO_REDIS_PASSWORD",
    "OFFLOAD_FROM_S3_ACCESS_KEY",
    "OFFLOAD_FROM_S3_SECRET_KEY",
    "OFFLOAD_TO_S3_ACCESS_KEY",
    "OFFLOAD_TO_S3_SECRET_KEY",
    "OFFLOAD_FROM_MEILISEARCH_KEY",
    "OFFLOAD_TO_MEILISEARCH_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "OFFLOAD_LOG",
]

hooks.Filters.CONFIG_DEFAULTS.add_items(
    [(f"OFFLOAD_{key}", value) for key, value in CONFIG_DEFAULTS.items()]
)
hooks.Filters.ENV_TEMPLATE_VARIABLES.add_items(
    [
        ("OFFLOAD_CREDENTIAL_ENV", CREDENTIAL_ENV),
        ("OFFLOAD_K8S_VOLUME", K8S_VOLUME),
        ("OFFLOAD_K8S_CONFIG_SECRET", K8S_CONFIG_SECRET),
        ("OFFLOAD_K8S_CREDENTIALS_SECRET", K8S_CREDENTIALS_SECRET),
    ]
)

# Templates: the image's Dockerfile, rendered to env/plugins/offload/build/offload/.
hooks.Filters.ENV_TEMPLATE_ROOTS.add_item(
    str(files("tutor_offload") / "templates")
)
hooks.Filters.ENV_TEMPLATE_TARGETS.add_item(("offload/build", "plugins"))

# Patches: the Compose job service, the Kubernetes Job and its volume.
for _path in glob(str(files("tutor_offload") / "patches" / "*")):
    with open(_path, encoding="utf-8") as _patch_file:
        hooks.Filters.ENV_PATCHES.add_item((os.path.basename(_path), _patch_file.read()))

# Images.
hooks.Filters.IMAGES_BUILD.add_item(
    ("offload", ("plugins", "offload", "build", "offload"), "{{ OFFLOAD_DOCKER_IMAGE }}", ())
)
hooks.Filters.IMAGES_PULL.add_item(("offload", "{{ OFFLOAD_DOCKER_IMAGE }}"))
hooks.Filters.IMAGES_PUSH.add_item(("offload", "{{ OFFLOAD_DOCKER_IMAGE }}"))


@hooks.Filters.IMAGES_BUILD_MOUNTS.add()
def _build_from_local_checkout(
    mounts: list[tuple[str, str]], path: str
) -> list[tuple[str, str]]:
    """`tutor mounts add /path/to/offload` builds the image from that checkout."""
    if os.path.basename(path.rstrip("/")) == "offload":
        mounts.append(("offload", "offload-src"))
    return mounts


def job_script(args: t.Sequence[str]) -> str:
    """The shell script the job container runs (`sh -e -c SCRIPT`): offload with `args`.

    Each argument is shell-quoted. Tutor renders a job's script as a Jinja template before it runs
    it, so every `{` is written as a Jinja expression that prints it, and an argument such as
    `{{ MYSQL_ROOT_PASSWORD }}` reaches offload as those characters, not as a config value.
    """
    quoted = shlex.join(["offload", *args])
    return "exec " + quoted.replace("{", "{{ '{' }}")


def host_job_dir(root: str, config: t.Mapping[str, t.Any]) -> str:
    """The job folder on the host (Compose modes): OFFLOAD_JOB_DIR under the Tutor root."""
    return os.path.join(root, str(config["OFFLOAD_JOB_DIR"]))


def _secret(name: str, data: dict[str, bytes], config: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "offload",
                "app.kubernetes.io/component": "secret",
                "app.kubernetes.io/instance": f"openedx-{config['ID']}",
                "app.kubernetes.io/part-of": "openedx",
            },
        },
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }


def k8s_secrets(
    root: str, config: t.Mapping[str, t.Any], environ: t.Mapping[str, str]
) -> dict[str, t.Any]:
    """The Secrets the Job reads: config.yml as it is on the operator's machine, and the
    credential variables set in the operator's environment (a List manifest)."""
    with open(tutor_config.config_path(root), "rb") as config_file:
        config_yml = config_file.read()
    credentials = {
        name: environ[name].encode("utf-8") for name in CREDENTIAL_ENV if environ.get(name)
    }
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            _secret(K8S_CONFIG_SECRET, {"config.yml": config_yml}, config),
            _secret(K8S_CREDENTIALS_SECRET, credentials, config),
        ],
    }


def _kubectl_apply_stdin(namespace: str, manifest: bytes) -> None:
    """`kubectl apply -f -` with the manifest on standard input: secret values never appear in
    a command line or a file."""
    command = ["kubectl", "apply", "--namespace", namespace, "-f", "-"]
    click.echo(fmt.command(shlex.join(command) + "  # Secrets on stdin"))
    try:
        result = subprocess.run(command, input=manifest, check=False)
    except FileNotFoundError as e:
        raise exceptions.TutorError("kubectl is not installed") from e
    if result.returncode != 0:
        raise exceptions.TutorError(
            f"kubectl apply of the Secrets {K8S_CONFIG_SECRET} and "
            f"{K8S_CREDENTIALS_SECRET} failed (exit {result.returncode})"
        )


def prepare_k8s(root: str, config: t.Mapping[str, t.Any]) -> None:
    """Before the Job: its volume claim (from the rendered environment, as `tutor k8s start
    offload` would) and its Secrets, refreshed from config.yml and the environment."""
    # pylint: disable=import-outside-toplevel
    from tutor.commands.k8s import kubectl_apply

    kubectl_apply(
        root,
        "--selector",
        "app.kubernetes.io/name=offload,app.kubernetes.io/component=volume",
    )
    manifest = json.dumps(k8s_secrets(root, config, os.environ)).encode("utf-8")
    _kubectl_apply_stdin(str(config["K8S_NAMESPACE"]), manifest)


@click.command(
    name="offload",
    help=(
        "Run offload inside the platform's network (Compose) or namespace (Kubernetes). "
        "Everything after `--` goes to offload, e.g. `tutor local do offload -- plan "
        "--to-mysql mysql://root@db.internal:3306`. The job folder persists between runs "
        "(OFFLOAD_JOB_DIR, or a PersistentVolumeClaim on Kubernetes), so a rerun resumes. "
        "Credentials pass by name from this shell: OFFLOAD_TO_MYSQL_PASSWORD and the like."
    ),
    context_settings={"ignore_unknown_options": True},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def offload_job(context: t.Any, args: tuple[str, ...]) -> t.Iterator[tuple[str, str]]:
    # pylint: disable=import-outside-toplevel
    from tutor.commands.k8s import K8sContext

    config = tutor_config.load(context.root)
    if isinstance(context, K8sContext):
        prepare_k8s(context.root, config)
    else:
        # Created here, as the operator: a folder Docker creates for a bind mount is root's.
        os.makedirs(host_job_dir(context.root, config), exist_ok=True)
    yield ("offload", job_script(args))


hooks.Filters.CLI_DO_COMMANDS.add_item(offload_job)
# `tutor offload k8s-cutover`: the cutover of a Kubernetes job, where config.yml is.
hooks.Filters.CLI_COMMANDS.add_item(offload_command)
