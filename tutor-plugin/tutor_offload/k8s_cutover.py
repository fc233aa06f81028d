"""`tutor offload k8s-cutover`: the cutover of a job that ran in Kubernetes, on this machine.

`tutor k8s do offload` leaves the job folder (catalog, reports) on the claim `offload`, while
config.yml lives here, where Tutor runs. This command copies the folder down through a
short-lived pod that mounts the claim read-only, deletes the pod, and runs the local
`offload cutover` on the copy against this Tutor root. offload's own gate decides: the cutover
is refused, with offload's message and exit code, unless the job's last verify passed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import typing as t
from datetime import datetime

import click
from tutor import config as tutor_config
from tutor import exceptions, fmt

# Where the claim is mounted in the fetch pod.
POD_JOB_DIR = "/job"
# The local copies of the claims' job folders, under the Tutor root: data/offload-k8s/<claim>.
LOCAL_COPIES_DIR = os.path.join("data", "offload-k8s")
# offload's flags this command sets itself.
OWN_FLAGS = ("--job", "--tutor-root")


def find_offload(binary: str) -> str:
    """The offload executable: `binary` as a path, else looked up on PATH."""
    if os.sep in binary:
        if os.path.isfile(binary) and os.access(binary, os.X_OK):
            return binary
        raise exceptions.TutorError(
            f"--offload-binary (OFFLOAD_BINARY) names {binary}, which is not an executable "
            "file: point it at the offload binary for this machine, or leave it unset to use "
            "`offload` from PATH"
        )
    found = shutil.which(binary)
    if found is None:
        raise exceptions.TutorError(
            f"`{binary}` is not on PATH, and the cutover runs offload on this machine (where "
            "config.yml is): install the offload release binary for this machine, or name it "
            "with --offload-binary PATH or OFFLOAD_BINARY=PATH. Nothing was done in the cluster."
        )
    return found


def check_passthrough(args: t.Sequence[str]) -> None:
    """Refuse the flags this command passes itself: offload would reject them twice over."""
    for arg in args:
        for flag in OWN_FLAGS:
            if arg == flag or arg.startswith(flag + "="):
                raise exceptions.TutorError(
                    f"{flag} is set by `tutor offload k8s-cutover` (the copied job folder and "
                    "this Tutor root): leave it out of the arguments after `--`"
                )


def fetch_pod(
    name: str, image: str, claim: str, config: t.Mapping[str, t.Any]
) -> dict[str, t.Any]:
    """A pod that only holds the claim mounted, read-only, for `kubectl cp`: it sleeps, and ends
    by itself within the hour if this command could not delete it. Its image needs `sleep` and
    `tar` (offload's image has both)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "offload",
                "app.kubernetes.io/component": "fetch",
                "app.kubernetes.io/instance": f"openedx-{config['ID']}",
                "app.kubernetes.io/part-of": "openedx",
                "app.kubernetes.io/managed-by": "tutor",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 3600,
            # `sleep` as the first process ignores SIGTERM: do not wait 30 s for it.
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                # offload's user, who wrote the files on the claim.
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "fetch",
                    "image": image,
                    "command": ["sleep", "3600"],
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "32Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "job-folder", "mountPath": POD_JOB_DIR, "readOnly": True}
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "job-folder",
                    "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
                }
            ],
        },
    }


def _kubectl(*args: str, stdin: bytes | None = None, capture: bool = False) -> tuple[int, bytes]:
    """Run kubectl as Tutor does (the command printed first); its exit code and, when asked,
    its standard output."""
    command = ["kubectl", *args]
    click.echo(fmt.command(shlex.join(command)))
    try:
        result = subprocess.run(
            command,
            input=stdin,
            stdout=subprocess.PIPE if capture else None,
            check=False,
        )
    except FileNotFoundError as e:
        raise exceptions.TutorError(
            "kubectl is not installed: install it and point it at the platform's cluster "
            "(https://kubernetes.io/docs/tasks/tools/)"
        ) from e
    return result.returncode, result.stdout or b""


def active_offload_jobs(namespace: str) -> list[str]:
    """The `tutor k8s do offload` Jobs still running in the namespace."""
    code, out = _kubectl("get", "jobs", "--namespace", namespace, "--output", "json", capture=True)
    if code != 0:
        raise exceptions.TutorError(
            f"kubectl could not list the Jobs in the namespace {namespace} (exit {code}): check "
            "that kubectl reaches the platform's cluster (`kubectl get pods --namespace "
            f"{namespace}`). Nothing was done in the cluster."
        )
    try:
        items = json.loads(out or b"{}").get("items") or []
    except ValueError as e:
        raise exceptions.TutorError(
            f"kubectl's list of the Jobs in {namespace} is not JSON ({e}): check the kubectl on "
            "PATH. Nothing was done in the cluster."
        ) from e
    return [
        job["metadata"]["name"]
        for job in items
        if job.get("metadata", {}).get("name", "").startswith("offload-job-")
        and (job.get("status") or {}).get("active")
    ]


def fetch_job_folder(
    namespace: str, pod: dict[str, t.Any], local: str, timeout: int
) -> None:
    """Copy the claim's job folder into `local` (replaced whole) through the pod, which is
    deleted afterwards whatever happened."""
    name = pod["metadata"]["name"]
    partial = local + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.dirname(local), mode=0o700, exist_ok=True)
    try:
        code, _ = _kubectl(
            "create", "--namespace", namespace, "-f", "-",
            stdin=json.dumps(pod).encode("utf-8"),
        )
        if code != 0:
            raise exceptions.TutorError(
                f"kubectl could not create the pod {name} in {namespace} (exit {code}): see "
                "kubectl's message above, and check that your kubectl context may create pods "
                "in that namespace"
            )
        code, _ = _kubectl(
            "wait", "--namespace", namespace, "--for=condition=Ready",
            f"--timeout={timeout}s", f"pod/{name}",
        )
        if code != 0:
            image = pod["spec"]["containers"][0]["image"]
            raise exceptions.TutorError(
                f"the pod {name} was not ready within {timeout}s (exit {code}): check that the "
                f"cluster can pull {image} (OFFLOAD_K8S_FETCH_IMAGE, or --image) and that no "
                "other pod holds the claim on another node (it is ReadWriteOnce), or allow "
                "more time with --timeout"
            )
        code, _ = _kubectl(
            "cp", "--namespace", namespace, f"{name}:{POD_JOB_DIR}", partial,
        )
        if code != 0:
            raise exceptions.TutorError(
                f"kubectl cp of the job folder from the pod {name} failed (exit {code}): the "
                "image must have `tar` (offload's has); run the command again"
            )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        code, _ = _kubectl(
            "delete", "--namespace", namespace, "pod", name, "--ignore-not-found",
        )
        if code != 0:
            fmt.echo_alert(
                f"kubectl could not delete the pod {name} (exit {code}); it ends by itself "
                f"within the hour, or run `kubectl delete --namespace {namespace} pod {name}`"
            )
    if not os.path.isdir(partial):
        raise exceptions.TutorError(
            f"kubectl cp left no folder at {partial}: check its message above and run the "
            "command again"
        )
    shutil.rmtree(local, ignore_errors=True)
    os.rename(partial, local)


# Signals that stop this command as Ctrl-C does (`kill`, `timeout`, systemd, a closed terminal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(_signum: int, _frame: t.Any) -> None:
    raise KeyboardInterrupt


def _keep_waiting(_signum: int, _frame: t.Any) -> None:
    """offload stops by itself on the signals sent to it: this process waits for it."""


def _on_stop_signals(handler: t.Callable[[int, t.Any], None]) -> dict[int, t.Any]:
    """Install `handler` for SIGTERM and SIGHUP; the handlers they had, to put back."""
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def _restore(handlers: dict[int, t.Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def run_offload(command: list[str]) -> int:
    """Run offload in the foreground and return its exit code. An interrupt, SIGTERM or SIGHUP
    reaches offload too, and it stops by itself (exit 130): wait for it rather than kill it
    mid-write."""
    click.echo(fmt.command(shlex.join(command)))
    process = subprocess.Popen(command)
    # Installed after the start: offload itself keeps the default handlers.
    handlers = _on_stop_signals(_keep_waiting)
    try:
        while True:
            try:
                code = process.wait()
            except KeyboardInterrupt:
                continue
            # Killed by a signal: the shell's convention, 128 + its number.
            return 128 - code if code < 0 else code
    finally:
        _restore(handlers)


@click.command(
    name="k8s-cutover",
    help=(
        "Cut over from a job `tutor k8s do offload` ran: copy the job folder down from the "
        "claim `offload` (through a short-lived pod), then run `offload cutover` here, on this "
        "Tutor root's config.yml. Arguments after `--` go to offload cutover (e.g. --dry-run, "
        "--force, --meilisearch-public-url URL). Exits with offload's exit code: the cutover is "
        "refused unless the job's last verify passed. Targets' secrets come from the same "
        "variables as in the cluster (OFFLOAD_TO_MYSQL_PASSWORD and the like)."
    ),
    context_settings={"ignore_unknown_options": True},
)
@click.option(
    "--image",
    help="The fetch pod's image, which needs `sleep` and `tar` [default: OFFLOAD_K8S_FETCH_IMAGE]",
)
@click.option(
    "--offload-binary",
    envvar="OFFLOAD_BINARY",
    default="offload",
    show_default=True,
    help="The offload executable on this machine: a path, or a name looked up on PATH "
    "(environment variable: OFFLOAD_BINARY)",
)
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Seconds to wait for the fetch pod to be ready",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def k8s_cutover(
    context: t.Any,
    image: str | None,
    offload_binary: str,
    timeout: int,
    args: tuple[str, ...],
) -> None:
    try:
        code = cutover_from_claim(context.root, image, offload_binary, timeout, args)
    except exceptions.TutorError as e:
        # offload's exit code for an error (1 would read as "differences").
        fmt.echo_error(f"Error: {e.args[0]}")
        code = 2
    raise click.exceptions.Exit(code)


def cutover_from_claim(
    root: str,
    image: str | None,
    offload_binary: str,
    timeout: int,
    args: t.Sequence[str],
) -> int:
    """Check what can be checked here, copy the claim's job folder down, run offload cutover on
    it; offload's exit code."""
    # pylint: disable=import-outside-toplevel
    from .plugin import K8S_VOLUME

    check_passthrough(args)
    offload = find_offload(offload_binary)
    config = tutor_config.load(root)
    namespace = str(config["K8S_NAMESPACE"])
    image = image or str(config["OFFLOAD_K8S_FETCH_IMAGE"])
    if not image or any(c.isspace() for c in image):
        raise exceptions.TutorError(
            f"OFFLOAD_K8S_FETCH_IMAGE (or --image) is {image!r}, not an image name: set it to "
            "an image with `sleep` and `tar` that the cluster pulls, e.g. offload's own"
        )
    running = active_offload_jobs(namespace)
    if running:
        raise exceptions.TutorError(
            f"the Job {', '.join(running)} is still running on the job folder: wait for it to "
            f"end (`kubectl logs --namespace {namespace} --follow job/{running[0]}`), then run "
            "this command again. Nothing was done in the cluster."
        )
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    pod = fetch_pod(f"offload-fetch-{stamp}", image, K8S_VOLUME, config)
    local = os.path.join(root, LOCAL_COPIES_DIR, K8S_VOLUME)
    # SIGTERM and SIGHUP stop the copy as Ctrl-C does: the pod is deleted, the partial copy
    # removed, and the command exits 130.
    handlers = _on_stop_signals(_interrupt)
    try:
        fetch_job_folder(namespace, pod, local, timeout)
    except KeyboardInterrupt:
        fmt.echo_alert("Interrupted: the fetch pod was deleted and nothing was cut over")
        return 130
    finally:
        _restore(handlers)
    fmt.echo_info(f"Copied the job folder of the claim {K8S_VOLUME} to {local}")
    code = run_offload([offload, "cutover", "--job", local, "--tutor-root", root, *args])
    if code != 0:
        fmt.echo_info(
            "The job runs in the cluster: where offload says to run `offload verify` or "
            "`offload copy`, run `tutor k8s do offload -- verify` (or `-- copy --resume`, ...) "
            "instead, then this command again."
        )
    return code


@click.group(name="offload", help="offload's commands that run where Tutor runs")
def offload_command() -> None:
    pass


offload_command.add_command(k8s_cutover)
