"""More than one Ray node: a head and a second node on this machine, the second one lost or
joining mid-run. Each run's metrics must equal a local run's, bit for bit."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import run_cli, small_config

pytestmark = pytest.mark.ray

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

RAY = str(Path(sys.executable).parent / "ray")
FITNESS_COLUMNS = ("generation", "best_loss", "mean_loss", "median_loss", "nonfinite")
# heavy enough that a generation takes a while (the kill lands mid-run), small enough for CI
CONFIG = small_config(
    generations=25,
    task={"name": "pca", "dim": 8, "steps": 1500},
    strategy={"name": "cma_es", "population_size": 16, "std_init": 0.3},
    evaluation={"instances": 4, "shard_size": 2},
    test={"every": 0, "instances": 4, "final_instances": 8},
    checkpoint={"every": 5, "keep": 2},
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A Ray head and extra nodes on loopback, each ``ray start --block`` in a process group of
    its own, so that stopping them touches no other Ray instance on the machine."""

    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled")  # a private loopback test cluster
        self.env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        self.nodes: list[subprocess.Popen] = []
        self.tmp = tmp

    def _start(self, args: list[str], cpus: int = 1) -> subprocess.Popen:
        common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus)]
        common += ["--object-store-memory", str(150 * 2**20), "--disable-usage-stats"]
        common += ["--dashboard-agent-listen-port", str(_free_port())]
        log = open(self.tmp / f"node{len(self.nodes)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [RAY, "start", *args, *common],
            env=self.env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.nodes.append(proc)
        return proc

    def start_head(self, extra: tuple[str, ...] = (), cpus: int = 1) -> None:
        args = ["--head", "--port", str(self.port), "--include-dashboard", "false", *extra]
        self._start(args, cpus)
        self.wait_nodes(1)

    def add_node(self) -> subprocess.Popen:
        proc = self._start(["--address", self.address])
        return proc

    def alive_nodes(self) -> int:
        code = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False);"
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120
        )
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != n:
            assert time.monotonic() < deadline, f"the cluster did not reach {n} nodes"
            time.sleep(2)

    def kill_raylet(self, proc: subprocess.Popen) -> None:
        raylets = [
            p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "raylet"
        ]
        assert raylets, "no raylet under the node's process"
        for p in raylets:
            p.kill()

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.nodes:  # a few seconds to stop cleanly, then the whole group
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _local(tmp: Path, config: dict) -> list[dict]:
    cfg = tmp / "local.yaml"
    cfg.write_text(json.dumps(config))
    out = run_cli("run", cfg, "--out", tmp / "local-run", "--quiet", timeout=900)
    assert out.returncode == 0, out.stderr
    return _columns(tmp / "local-run")


@pytest.fixture(scope="module")
def local_metrics(tmp_path_factory):
    """The reference: the same config run on the local backend."""
    return _local(tmp_path_factory.mktemp("local"), CONFIG)


def _columns(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: json.loads(line).get(k) for k in FITNESS_COLUMNS} for line in lines]


def _start_run(cluster, tmp_path, config=CONFIG) -> tuple[subprocess.Popen, Path]:
    cfg = tmp_path / "cfg.yaml"
    data = config | {"ray": {"compilation_cache": ""}}
    cfg.write_text(json.dumps(data))
    run_dir = tmp_path / "run"
    env = dict(cluster.env, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "evoplastic.cli", "run", str(cfg), "--backend", "ray"]
    cmd += ["--address", cluster.address, "--out", str(run_dir), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, run_dir


def _wait_generation(proc, run_dir: Path, generation: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= generation):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not get there"
        time.sleep(0.1)


def _node_lost_run(cluster, tmp_path, local_metrics, at: int) -> str:
    cluster.start_head()
    second = cluster.add_node()
    cluster.wait_nodes(2)
    proc, run_dir = _start_run(cluster, tmp_path)
    _wait_generation(proc, run_dir, at)
    cluster.kill_raylet(second)
    done_at_kill = len((run_dir / "metrics.jsonl").read_text().splitlines())
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert _columns(run_dir) == local_metrics
    # the loss is said (the worker lost with its node, or the node itself) and noticed
    # within seconds of training time after the kill
    said = re.compile(r"Ray (worker \d+ \(node \S+\)|node \S+) lost during generation")
    lost = [x for x in err.splitlines() if said.search(x)]
    assert lost, err[-3000:]
    generation = int(re.search(r"during generation (\d+)", lost[0]).group(1))
    wall = [
        json.loads(line)["wall_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert generation >= done_at_kill - 1, lost[0]
    assert wall[generation] - wall[done_at_kill - 1] < 10.0, (lost[0], wall[done_at_kill - 1 :])
    return err


def test_second_node_lost_mid_run_finishes_on_the_head_with_local_metrics(
    cluster, tmp_path, local_metrics
):
    _node_lost_run(cluster, tmp_path, local_metrics, at=10)


@pytest.mark.slow
@pytest.mark.parametrize("at", [3, 20])
def test_second_node_lost_at_other_generations(cluster, tmp_path, local_metrics, at):
    _node_lost_run(cluster, tmp_path, local_metrics, at=at)


def test_a_node_that_joins_mid_run_gets_workers(cluster, tmp_path, local_metrics):
    """The driver is paused after generation 5 while the node starts (a node can take longer
    to start than the whole run), then goes on: the next generation gets a worker there."""
    cluster.start_head()
    proc, run_dir = _start_run(cluster, tmp_path)
    _wait_generation(proc, run_dir, 5)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        cluster.add_node()
        cluster.wait_nodes(2)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert "Ray resources for 1 more worker(s) appeared" in err, err[-3000:]
    assert _columns(run_dir) == local_metrics


@pytest.mark.slow
def test_two_actors_share_one_declared_gpu_with_local_metrics(cluster, tmp_path, local_metrics):
    """``gpus_per_worker: 0.5`` on a node that declares one GPU: two actors on it, the
    metrics those of a local run. (A declared GPU is a Ray resource only; JAX runs on the
    CPU here. On a machine with a GPU the same run uses the device.)"""
    cluster.start_head(("--num-gpus", "1"), cpus=2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(CONFIG | {"ray": {"compilation_cache": "", "workers": 2}}))
    run = run_cli(
        "run",
        cfg,
        "--backend",
        "ray",
        "--address",
        cluster.address,
        "--out",
        tmp_path / "run",
        "ray.gpus_per_worker=0.5",
        "--quiet",
        timeout=900,
        env={"RAY_AUTH_MODE": "disabled"},
    )
    assert run.returncode == 0, run.stderr
    assert _columns(tmp_path / "run") == local_metrics
