"""Cluster jobs end to end against a real Ray head on loopback (started and stopped here)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli, small_config

# Ray tests run in their own pytest process, after the parallel ones (see the Makefile)
pytestmark = pytest.mark.ray

pytest.importorskip("ray")

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """``ray start --head`` on 127.0.0.1 with the dashboard (Jobs API); ``ray stop`` after."""
    port, dash = _free_port(), _free_port()
    # loopback only, so no token authentication (Ray >= 2.5x enables it by default)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env["RAY_AUTH_MODE"] = "disabled"
    start = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    start += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2"]
    subprocess.run(start + ["--disable-usage-stats"], check=True, env=env, capture_output=True)
    try:
        yield f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)


def test_submit_wait_logs_results_and_a_failing_job(ray_head, tmp_path, write_config):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(write_config(small_config(evaluation={"shard_size": 4})), project / "cfg.yaml")
    out = tmp_path / "cluster-run"
    sub = run_cli(
        "submit",
        "cfg.yaml",
        "--address",
        ray_head,
        "--workers",
        "2",
        "--out",
        out,
        cwd=project,
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.split()[-1]
    status = run_cli("jobs", "status", job_id, "--wait", "--address", ray_head, timeout=600)
    assert status.returncode == 0, status.stderr
    assert "SUCCEEDED" in status.stdout
    logs = run_cli("jobs", "logs", job_id, "--address", ray_head)
    assert "discovered rule: dw =" in logs.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in records] == [0, 1, 2, 3]
    assert json.loads((out / "best_rule.json").read_text())["equation"].startswith("dw =")
    assert "backend: ray" in (out / "config.yaml").read_text()
    listed = run_cli("jobs", "list", "--address", ray_head)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    stop = run_cli("jobs", "stop", job_id, "--address", ray_head)
    assert stop.returncode == 0 and "not running" in stop.stdout
    # a job that fails on the cluster (its run directory exists): one line, exit 2
    bad = run_cli(
        "submit",
        "cfg.yaml",
        "--address",
        ray_head,
        "--out",
        out,
        "--wait",
        cwd=project,
        timeout=600,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: job evoplastic-small-")
    assert "failed" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_unreachable_dashboard_is_one_line(tmp_path, write_config):
    cfg = write_config(small_config())
    out = run_cli("submit", cfg, "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: cannot reach the Ray dashboard at 'http://127.0.0.1:9'")
    assert len(out.stderr.strip().splitlines()) == 1
    out = run_cli("jobs", "list", "--address", "http://127.0.0.1:9")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
