"""What a cluster job carries: its runtime environment, banner and entry point (no Ray needed)."""

import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

import evoplastic
from evoplastic import jobs

from .conftest import run_cli, small_config

PACKAGE = Path(evoplastic.__file__).parent


def test_pip_and_uv_ship_the_package_and_pin_what_is_installed(tmp_path):
    spec, banner = jobs.runtime_env(tmp_path, "pip")
    assert spec["working_dir"] == str(tmp_path) and ".venv" in spec["excludes"]
    assert spec["py_modules"] == [str(PACKAGE)]  # the project holds configs only
    pins = spec["pip"]["packages"]
    versions = dict(p.split("==") for p in pins)
    for name in ("jax", "evosax", "optax", "flax", "numpy"):
        assert versions[name] == metadata.version(name)
    assert not any(name.startswith(("ray", "pytest", "mlflow")) for name in versions)
    assert banner == f"environment pip: evoplastic and {len(pins)} pinned requirements"
    uv, banner = jobs.runtime_env(tmp_path, "uv")
    assert uv["uv"]["packages"] == pins and banner.startswith("environment uv:")


def test_project_that_holds_the_package_is_not_shipped_twice(tmp_path):
    (tmp_path / "evoplastic").mkdir()
    (tmp_path / "evoplastic" / "__init__.py").write_text("")
    spec, _ = jobs.runtime_env(tmp_path, "pip")
    assert "py_modules" not in spec


def test_cluster_and_image_environments(tmp_path):
    spec, banner = jobs.runtime_env(tmp_path, "cluster")
    assert set(spec) == {"working_dir", "excludes"} and "nothing installed" in banner
    spec, banner = jobs.runtime_env(tmp_path, "image:ghcr.io/lab/evoplastic:0.1")
    assert spec["image_uri"] == "ghcr.io/lab/evoplastic:0.1"
    assert banner == "environment image: ghcr.io/lab/evoplastic:0.1"
    for bad in ("conda", "image:", "PIP"):
        with pytest.raises(jobs.JobError, match="--env: expected one of pip, uv, cluster"):
            jobs.runtime_env(tmp_path, bad)


def test_entrypoint_prints_the_banner_and_python_first(tmp_path):
    command = jobs.entrypoint("cfg.yaml", ["generations=2"], str(tmp_path / "o"), 2, None, "env x")
    banner, where, run = command.split(" && ")
    out = subprocess.run(banner + " && " + where, shell=True, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "evoplastic job: env x"
    assert lines[1].startswith("evoplastic job: python ")
    assert shlex.split(run)[:6] == [
        "python",
        "-m",
        "evoplastic.cli",
        "run",
        "cfg.yaml",
        "generations=2",
    ]
    assert "ray.workers=2" in run and "backend=ray" in run


def test_bad_env_is_one_line_before_contacting_the_cluster(tmp_path, write_config):
    cfg = write_config(small_config())
    out = run_cli("submit", cfg, "--env", "conda", "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "error: --env: expected one of pip, uv, cluster, image:URI, got 'conda'"
    )
