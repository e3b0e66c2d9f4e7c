"""Cluster jobs through the Ray Jobs API: submit a run, list, follow, stop.

``evoplastic submit CONFIG --address http://HEAD:8265`` uploads the project directory as the
job's working directory and runs ``evoplastic run`` there with ``backend=ray``; the job's
driver connects to the cluster (Ray sets ``RAY_ADDRESS`` for it) and starts one actor per
GPU. Results are written to ``--out`` on the cluster (a shared filesystem, or the head's
disk) and the summary is printed to the job's logs.

The job carries its environment through a Ray runtime environment (``--env``):

- ``pip`` (default) or ``uv``: the evoplastic package itself (uploaded) and its core
  requirements pinned to the versions installed on the submitting machine, installed by Ray
  into a per-job virtual environment on the cluster (cached across jobs);
- ``cluster``: the cluster's own ``python`` as it is (it must already have the stack);
- ``image:URI``: a container image that holds the stack (Ray's ``image_uri``).

The job's first log line says which one it got, and the second which ``python`` runs it.

Authentication follows Ray's own clients: ``RAY_AUTH_MODE=token`` with the token in
``RAY_AUTH_TOKEN``, in the file named by ``RAY_AUTH_TOKEN_PATH``, or in ``~/.ray/auth_token``;
where ``RAY_AUTH_MODE`` is unset and a token is found, it is sent.

Ray is imported here lazily; every failure becomes a :class:`JobError` with one line.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from importlib import metadata
from pathlib import Path

EXCLUDES = [".venv", ".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ENVS = ("pip", "uv", "cluster", "image:URI")
AUTH_HINT = (
    "set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head) or copy it "
    "to ~/.ray/auth_token, and RAY_AUTH_MODE=token"
)


class JobError(RuntimeError):
    """A one-line problem with the cluster or a job."""


def default_address() -> str | None:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_JOBS_ADDRESS")


def _enable_token_auth() -> None:
    """Send the local token where ``RAY_AUTH_MODE`` is unset and one is found (as Ray does)."""
    from ray._private.authentication import authentication_token_setup as setup

    quiet = logging.getLogger(setup.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # Ray logs a warning either way; the CLI stays quiet
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def _auth_problem(text: str) -> str | None:
    """One line for an authentication failure in ``text`` (a Ray SDK message), else None."""
    if (
        "Authentication required" in text
        or "no authentication token was found" in text
        or "couldn't find an authentication token" in text
    ):
        return f"the cluster requires a token and none was sent: {AUTH_HINT}"
    if "Authentication failed" in text or "token is invalid" in text:
        return f"the cluster rejected the token: {AUTH_HINT}"
    return None


def client(address: str | None):
    """A ``JobSubmissionClient`` for the dashboard at ``address`` (``http://HEAD:8265``)."""
    address = address or default_address()
    if not address:
        raise JobError("no cluster address: pass --address http://HEAD:8265")
    from ray.job_submission import JobSubmissionClient

    _enable_token_auth()
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # ConnectionError, ValueError, ... from several layers
        auth = _auth_problem(str(err))
        if auth:
            raise JobError(auth) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise JobError(f"cannot reach the Ray dashboard at {address!r}: {reason}") from None


def core_requirements() -> list[str]:
    """evoplastic's core requirements pinned to the versions installed here (``name==x.y``)."""
    try:
        declared = metadata.requires("evoplastic") or []
    except metadata.PackageNotFoundError:
        raise JobError("evoplastic is not installed here; install it to use --env pip/uv") from None
    pinned = []
    for req in declared:
        if "extra ==" in req:
            continue
        name = re.split(r"[\s<>=!~\[;(]", req, maxsplit=1)[0]
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(req.split(";")[0].strip())
    return pinned


def parse_env(env: str) -> str:
    """Check an ``--env`` value: pip, uv, cluster or image:URI."""
    if env in ("pip", "uv", "cluster") or (env.startswith("image:") and len(env) > 6):
        return env
    raise JobError(f"--env: expected one of {', '.join(ENVS)}, got {env!r}")


def runtime_env(project: Path, env: str = "pip") -> tuple[dict, str]:
    """The job's Ray runtime environment for ``--env`` and the banner that describes it."""
    env = parse_env(env)
    spec: dict = {"working_dir": str(project), "excludes": EXCLUDES}
    package = Path(__file__).parent
    if env != "cluster" and not (project / "evoplastic" / "__init__.py").is_file():
        spec["py_modules"] = [str(package)]  # the project holds configs only: ship the package
    if env in ("pip", "uv"):
        pins = core_requirements()
        spec[env] = {"packages": pins} if env == "uv" else {"packages": pins, "pip_check": False}
        banner = f"environment {env}: evoplastic and {len(pins)} pinned requirements"
    elif env == "cluster":
        banner = "environment cluster: the cluster's own python, nothing installed"
    else:
        spec["image_uri"] = env[len("image:") :]
        banner = f"environment image: {spec['image_uri']}"
    return spec, banner


def entrypoint(
    config_rel: str, overrides, out: str, workers, gpus_per_worker, banner: str = ""
) -> str:
    """The shell command the job runs in its working directory (banner lines first)."""
    args = ["python", "-m", "evoplastic.cli", "run", config_rel, *overrides, "backend=ray"]
    if workers is not None:
        args.append(f"ray.workers={workers}")
    if gpus_per_worker is not None:
        args.append(f"ray.gpus_per_worker={gpus_per_worker}")
    quoted = " ".join(shlex.quote(a) for a in args)
    # --out unquoted: a leading ~ is the cluster user's home
    run = f"{quoted} --out {out}"
    if not banner:
        return run
    where = "import sys; print('evoplastic job: python', sys.executable, sys.version.split()[0])"
    head = f"echo {shlex.quote('evoplastic job: ' + banner)} && python -c {shlex.quote(where)}"
    return f"{head} && {run}"


def submit(
    address,
    config_path: Path,
    overrides=(),
    project: Path = Path("."),
    out: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    name: str = "experiment",
    env: str = "pip",
    agent_wait_s: float = 60.0,
) -> str:
    """Submit a run of ``config_path`` (inside ``project``); returns the job's id.

    ``env`` is the job's environment: ``pip``, ``uv``, ``cluster`` or ``image:URI``. A head
    that has just started has no job agent yet; the submission is retried for
    ``agent_wait_s`` seconds.
    """
    project, config_path = Path(project).resolve(), Path(config_path).resolve()
    try:
        rel = config_path.relative_to(project)
    except ValueError:
        raise JobError(
            f"{config_path} is not inside the project directory {project} that is uploaded"
        ) from None
    job_id = f"evoplastic-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out or f"~/evoplastic-runs/{job_id}"
    spec, banner = runtime_env(project, env)
    jobs = client(address)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return jobs.submit_job(
                entrypoint=entrypoint(str(rel), overrides, out, workers, gpus_per_worker, banner),
                submission_id=job_id,
                runtime_env=spec,
            )
        except Exception as err:
            # a head that has just started answers 500 until its job agent is up
            if "No available agent" in str(err) and time.monotonic() < deadline:
                time.sleep(2.0)
                continue
            problem = _auth_problem(str(err)) or f"cannot submit the job: {_first_line(err)}"
            raise JobError(problem) from None


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def _call(address, method: str, *args):
    jobs = client(address)
    try:
        return getattr(jobs, method)(*args)
    except RuntimeError as err:
        raise JobError(_auth_problem(str(err)) or _first_line(err)) from None


def status(address, job_id: str, wait: bool = False, poll_s: float = 1.0) -> dict:
    """``{"status", "message"}`` of a job; with ``wait``, once it has finished."""
    while True:
        info = _call(address, "get_job_info", job_id)
        state = str(getattr(info.status, "value", info.status))
        if not wait or state in FINAL:
            return {"status": state, "message": info.message or ""}
        time.sleep(poll_s)


def list_jobs(address) -> list[dict]:
    return [
        {
            "id": j.submission_id or j.job_id,
            "status": str(getattr(j.status, "value", j.status)),
            "entrypoint": j.entrypoint,
        }
        for j in _call(address, "list_jobs")
    ]


def logs(address, job_id: str) -> str:
    return _call(address, "get_job_logs", job_id)


def follow(address, job_id: str, write) -> None:
    """Stream a job's logs to ``write`` as they come, until the job has finished."""
    import asyncio

    jobs = client(address)

    async def tail():
        async for chunk in jobs.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as err:
        raise JobError(_auth_problem(str(err)) or _first_line(err)) from None


def stop(address, job_id: str) -> bool:
    return bool(_call(address, "stop_job", job_id))
