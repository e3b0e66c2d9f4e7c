import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

# CLI runs in tests share one fresh compilation cache, not the user's
os.environ["EVOPLASTIC_CACHE_DIR"] = tempfile.mkdtemp(prefix="evoplastic-test-cache-")

SMALL = {
    "name": "small",
    "seed": 0,
    "generations": 4,
    "task": {"name": "pca", "dim": 4, "steps": 64},
    "rule": {"name": "polynomial", "terms": ["pre*post", "post^2*w", "w", "post"]},
    "strategy": {"name": "cma_es", "population_size": 8, "std_init": 0.3},
    "evaluation": {"instances": 2},
    "test": {"every": 2, "instances": 4, "final_instances": 8},
    "checkpoint": {"every": 2, "keep": 2},
}


def small_config(**sections) -> dict:
    """A tiny, fast config; keyword arguments replace or update whole sections."""
    cfg = copy.deepcopy(SMALL)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def write_config(tmp_path):
    def write(cfg: dict, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write


def run_cli(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run the real ``evoplastic`` entry point in a subprocess (``env``: variables to set)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "evoplastic.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def start_local_ray(num_cpus: int = 2):
    """A new Ray instance on loopback for this test process (never another on the machine).

    Ray gives its raylet a fixed 30 s to register; on a loaded 2-core machine (the other
    pytest-xdist worker compiling, a Ray head just stopped by ``ray stop``) that can pass,
    so a start that timed out is tried once more.
    """
    ray = pytest.importorskip("ray")
    options = dict(
        address="local",
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        ray.init(**options)
    except Exception as err:  # ray raises a bare Exception for a startup timeout
        if "timed out during startup" not in str(err):
            raise
        ray.shutdown()
        ray.init(**options)
    return ray
