"""Cluster jobs end to end against a real Ray head on loopback (started and stopped here)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import cli_here, run_cli, small_config

# Ray tests run in their own pytest process, after the parallel ones (see the Makefile)
pytestmark = pytest.mark.ray

pytest.importorskip("ray")

RAY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+[A-Z]+ \S+\.py:\d+ -- ")
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    """A home directory whose ``~/.ray/auth_token`` holds a fresh token (as on a user's laptop)."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, HOME=str(home))
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, env=env, capture_output=True)
    assert (home / ".ray" / "auth_token").is_file()
    return home


@pytest.fixture(scope="module")
def ray_head(ray_home):
    """A Ray head with token authentication (as Ray starts it by default), dashboard on loopback.

    Started with ``--block`` in a process group of its own and stopped by signalling that group,
    so no other Ray instance on the machine is touched.
    """
    port, dash = _free_port(), _free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.update(HOME=str(ray_home), RAY_AUTH_MODE="token")
    start = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1"]
    start += ["--port", str(port), "--dashboard-host", "127.0.0.1"]
    start += ["--dashboard-port", str(dash), "--num-cpus", "2", "--disable-usage-stats"]
    # the agent's default port (52365) may be another Ray's on this machine
    start += ["--dashboard-agent-listen-port", str(_free_port())]
    head = subprocess.Popen(
        start, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert head.poll() is None, head.stderr.read().decode()[-2000:]
            probe = cli_here("jobs", "list", "--address", address, env={"HOME": str(ray_home)})
            if probe.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the Ray dashboard did not answer: {probe.stderr}")
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # a few seconds to stop cleanly, then the whole group
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_submit_wait_logs_results_and_a_failing_job(ray_head, ray_home, tmp_path, write_config):
    home = {"HOME": str(ray_home)}  # the token is found in ~/.ray/auth_token, as Ray's CLI does
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
        "--env",
        "cluster",
        cwd=project,
        env=home,
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.split()[-1]
    status = cli_here("jobs", "status", job_id, "--wait", "--address", ray_head, env=home)
    assert status.returncode == 0, status.stderr
    assert "SUCCEEDED" in status.stdout
    logs = cli_here("jobs", "logs", job_id, "--address", ray_head, env=home)
    # the job's own first lines, after Ray's own about setting up the runtime environment
    lines = [
        line
        for line in logs.stdout.splitlines()
        if not RAY_LOG_LINE.match(line) and not line.startswith("Running entrypoint for job")
    ]
    assert (
        lines[0]
        == "evoplastic job: environment cluster: the cluster's own python, nothing installed"
    )
    assert lines[1].startswith(f"evoplastic job: python {Path(sys.executable).parent}")
    assert "discovered rule: dw =" in logs.stdout
    follow = cli_here("jobs", "logs", job_id, "--follow", "--address", ray_head, env=home)
    assert follow.returncode == 0 and follow.stdout == logs.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in records] == [0, 1, 2, 3]
    assert json.loads((out / "best_rule.json").read_text())["equation"].startswith("dw =")
    assert "backend: ray" in (out / "config.yaml").read_text()
    listed = cli_here("jobs", "list", "--address", ray_head, env=home)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    stop = cli_here("jobs", "stop", job_id, "--address", ray_head, env=home)
    assert stop.returncode == 0 and "not running" in stop.stdout
    # a job that fails on the cluster (its run directory exists): --wait follows its logs,
    # then one line on stderr, exit 2
    bad = run_cli(
        "submit",
        "cfg.yaml",
        "--address",
        ray_head,
        "--out",
        out,
        "--env",
        "cluster",
        "--wait",
        cwd=project,
        timeout=600,
        env=home,
    )
    assert bad.returncode == 2
    assert "evoplastic job: environment cluster" in bad.stdout
    assert bad.stderr.strip().startswith("error: job evoplastic-small-")
    assert "failed" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_token_from_the_environment_and_auth_failures_in_one_line(ray_head, ray_home, tmp_path):
    token = (ray_home / ".ray" / "auth_token").read_text().strip()
    empty = tmp_path / "empty-home"
    empty.mkdir()
    # RAY_AUTH_MODE unset (an earlier ray.init in this process may have set it)
    unset = {"HOME": str(empty), "RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None}
    listed = run_cli("jobs", "list", "--address", ray_head, env=unset)
    assert listed.returncode == 2
    assert listed.stderr.startswith("error: the cluster requires a token and none was sent")
    # RAY_AUTH_MODE=token exported, no token anywhere: the same line
    listed = run_cli("jobs", "list", "--address", ray_head, env=unset | {"RAY_AUTH_MODE": "token"})
    assert listed.returncode == 2 and len(listed.stderr.strip().splitlines()) == 1
    assert listed.stderr.startswith("error: the cluster requires a token and none was sent")
    assert "RAY_AUTH_TOKEN" in listed.stderr and len(listed.stderr.strip().splitlines()) == 1
    wrong = unset | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * len(token)}
    listed = run_cli("jobs", "list", "--address", ray_head, env=wrong)
    assert listed.returncode == 2
    assert listed.stderr.startswith("error: the cluster rejected the token")
    assert len(listed.stderr.strip().splitlines()) == 1
    # RAY_AUTH_TOKEN alone (RAY_AUTH_MODE unset) is found, as by Ray's own clients
    listed = run_cli("jobs", "list", "--address", ray_head, env=unset | {"RAY_AUTH_TOKEN": token})
    assert listed.returncode == 0, listed.stderr


@pytest.mark.slow
def test_pip_environment_installs_the_stack_for_a_bare_python(ray_head, ray_home, tmp_path):
    """A job whose cluster python lacks jax runs with ``--env pip`` (needs a package index)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(Path(__file__).parents[1] / "experiments" / "oja.yaml", project / "oja.yaml")
    sub = run_cli(
        "submit",
        "oja.yaml",
        "generations=5",
        "--address",
        ray_head,
        "--out",
        tmp_path / "run",
        "--wait",
        cwd=project,
        timeout=1800,
        env={"HOME": str(ray_home)},
    )
    assert sub.returncode == 0, sub.stderr
    assert "evoplastic job: environment pip: evoplastic and" in sub.stdout
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_unreachable_dashboard_is_one_line(tmp_path, write_config):
    cfg = write_config(small_config())
    out = cli_here("submit", cfg, "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: cannot reach the Ray dashboard at 'http://127.0.0.1:9'")
    assert len(out.stderr.strip().splitlines()) == 1
    out = cli_here("jobs", "list", "--address", "http://127.0.0.1:9")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
