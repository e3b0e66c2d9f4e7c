"""Cluster jobs through the Ray Jobs API: submit a run, list, follow, stop.

``evoplastic submit CONFIG --address http://HEAD:8265`` uploads the project directory as the
job's working directory and runs ``evoplastic run`` there with ``backend=ray``; the job's
driver connects to the cluster (Ray sets ``RAY_ADDRESS`` for it) and starts one actor per
GPU. Results are written to ``--out`` on the cluster (a shared filesystem, or the head's
disk) and the summary is printed to the job's logs.

Ray is imported here lazily; every failure becomes a :class:`JobError` with one line.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

EXCLUDES = [".venv", ".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobError(RuntimeError):
    """A one-line problem with the cluster or a job."""


def default_address() -> str | None:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_JOBS_ADDRESS")


def client(address: str | None):
    """A ``JobSubmissionClient`` for the dashboard at ``address`` (``http://HEAD:8265``)."""
    address = address or default_address()
    if not address:
        raise JobError("no cluster address: pass --address http://HEAD:8265")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # ConnectionError, ValueError, ... from several layers
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise JobError(f"cannot reach the Ray dashboard at {address!r}: {reason}") from None


def entrypoint(config_rel: str, overrides, out: str, workers, gpus_per_worker) -> str:
    """The shell command the job runs in its working directory."""
    args = ["python", "-m", "evoplastic.cli", "run", config_rel, *overrides, "backend=ray"]
    if workers is not None:
        args.append(f"ray.workers={workers}")
    if gpus_per_worker is not None:
        args.append(f"ray.gpus_per_worker={gpus_per_worker}")
    quoted = " ".join(shlex.quote(a) for a in args)
    # --out unquoted: a leading ~ is the cluster user's home
    return f"{quoted} --out {out}"


def submit(
    address,
    config_path: Path,
    overrides=(),
    project: Path = Path("."),
    out: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    name: str = "experiment",
) -> str:
    """Submit a run of ``config_path`` (inside ``project``); returns the job's id."""
    project, config_path = Path(project).resolve(), Path(config_path).resolve()
    try:
        rel = config_path.relative_to(project)
    except ValueError:
        raise JobError(
            f"{config_path} is not inside the project directory {project} that is uploaded"
        ) from None
    job_id = f"evoplastic-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out or f"~/evoplastic-runs/{job_id}"
    jobs = client(address)
    try:
        return jobs.submit_job(
            entrypoint=entrypoint(str(rel), overrides, out, workers, gpus_per_worker),
            submission_id=job_id,
            runtime_env={"working_dir": str(project), "excludes": EXCLUDES},
        )
    except Exception as err:
        raise JobError(f"cannot submit the job: {_first_line(err)}") from None


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def _call(address, method: str, *args):
    jobs = client(address)
    try:
        return getattr(jobs, method)(*args)
    except RuntimeError as err:
        raise JobError(_first_line(err)) from None


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


def stop(address, job_id: str) -> bool:
    return bool(_call(address, "stop_job", job_id))
