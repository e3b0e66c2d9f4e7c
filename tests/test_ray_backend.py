"""The Ray backend against a real local Ray instance (2 CPUs), shared by this module."""

import dataclasses
import functools
import os
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import backends, build, config, meta
from evoplastic.backends import ray_backend
from evoplastic.backends.sharded import Pieces
from evoplastic.experiment import config_pieces
from evoplastic.trainer import read_metrics, train

from .conftest import cli_here, run_cli, small_config, start_local_ray

# Ray tests run in their own pytest process, after the parallel ones (see the Makefile)
pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")

FITNESS_COLUMNS = ("best_loss", "mean_loss", "median_loss", "nonfinite")


@pytest.fixture(scope="module")
def ray_instance():
    start_local_ray()
    yield ray
    ray.shutdown()


def _ray_config(tmp_path, **sections):
    ray_section = {"workers": 2, "compilation_cache": str(tmp_path / "jax-cache")}
    ray_section |= sections.pop("ray", {})
    return config.parse(small_config(backend="ray", ray=ray_section, **sections))


def _train(exp, run_dir, step=None, **kw):
    from evoplastic.trainer import prepare_run_dir

    if not run_dir.exists():
        prepare_run_dir(run_dir, exp)
    return train(exp, run_dir, step=step, **kw)


def _columns(run_dir):
    return [{k: r.get(k) for k in FITNESS_COLUMNS} for r in read_metrics(run_dir)]


def test_ray_run_equals_local_run_bit_for_bit(ray_instance, tmp_path):
    """Same config and seed: identical metrics.jsonl fitness columns and final genome, and
    the bytes sent per generation flat and small. (CMA-ES, learned selection, the gradient and
    PES: test_every_outer_loop_on_ray_equals_local_with_one_and_two_actors.)"""
    cfg = _ray_config(
        tmp_path, strategy={"name": "open_es"}, evaluation={"shard_size": 3}, generations=5
    )
    exp = build(cfg)
    with backends.open_step(exp) as step:
        assert step.shards == 3 and len(step.actors) == 2  # 8 members: 3 + 3 + 2 (padded)
        remote = _train(exp, tmp_path / "ray", step=step)
        sent = [s["bytes"] for s in step.stats]
    local = _train(exp, tmp_path / "local")
    assert _columns(tmp_path / "ray") == _columns(tmp_path / "local")
    assert len(_columns(tmp_path / "ray")) == 5
    np.testing.assert_array_equal(np.asarray(remote.genome), np.asarray(local.genome))
    assert len(set(sent)) == 1 and 0 < sent[0] < 10_000
    assert any((tmp_path / "jax-cache").iterdir())  # the actors' persistent compile cache


def _slow_quadratic(genome, key):
    """A fitness that takes a while per shard, so an actor can be killed mid-generation."""

    def nap(x):
        time.sleep(0.25)
        return x

    loss = jnp.sum((genome - 1.0) ** 2) + 0.01 * jax.random.normal(key)
    return jax.pure_callback(
        nap, jax.ShapeDtypeStruct((), jnp.float32), loss, vmap_method="sequential"
    )


def _quadratic_pieces(dim, population, shard_size, shared=None):
    es, params = meta.make("cma_es", population, jnp.zeros(dim), std_init=0.5)
    step = backends.make_generation_step(es, params, _slow_quadratic, shard_size=shard_size)
    return Pieces(step, lambda key: es.init(key, jnp.zeros(dim), params))


def test_killed_actor_has_its_shard_rerun_and_result_is_unchanged(ray_instance):
    factory = functools.partial(_quadratic_pieces, 3, 8, 1)  # 8 shards of 1 member
    pieces = factory()
    run_key = jax.random.PRNGKey(0)
    expected = pieces.init_state(run_key)
    for g in range(2):
        expected, expected_m = pieces.step(expected, run_key, g)
    with ray_backend.open_step(factory, workers=2, max_restarts=2) as step:
        state = pieces.init_state(run_key)
        state, _ = step(state, run_key, 0)
        victim = step.info[0]["pid"]
        killer = threading.Timer(0.4, os.kill, (victim, signal.SIGKILL))
        killer.start()
        state, m = step(state, run_key, 1)
        killer.join()
        assert step.restarts >= 1
    assert {k: float(v) for k, v in m.items()} == {k: float(v) for k, v in expected_m.items()}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_losing_every_worker_stops_with_a_checkpoint_and_resumes_locally(ray_instance, tmp_path):
    """All actors killed, no restarts: WorkersLost, a checkpoint, and an exact local resume."""
    cfg = _ray_config(tmp_path, evaluation={"shard_size": 4}, ray={"max_restarts": 0})
    cfg = config.parse(small_config(**{**cfg.to_dict(), "checkpoint": {"every": 3}}))
    exp = build(cfg)
    run_dir = tmp_path / "run"
    with backends.open_step(exp) as step:

        def kill_all(done):
            if done == 2:
                for info in step.info:
                    os.kill(info["pid"], signal.SIGKILL)

        with pytest.raises(
            backends.WorkersLost, match="no Ray worker left during generation .*: all 2 are gone"
        ):
            _train(exp, run_dir, step=step, on_generation=kill_all)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-00000002.npz"]
    _train(exp, run_dir, resume=True)  # on the local backend
    _train(exp, tmp_path / "reference")
    assert _columns(run_dir) == _columns(tmp_path / "reference")


def test_cli_cluster_errors_are_one_line(write_config, tmp_path):
    cfg = write_config(small_config())
    out = run_cli("run", cfg, "--address", "127.0.0.1:9", "--out", tmp_path / "r", timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: cannot reach the Ray cluster")
    assert "127.0.0.1:9" in lines[0] and not (tmp_path / "r").exists()


def test_importing_evoplastic_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, evoplastic, evoplastic.backends.ray_backend; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _Cluster:
    """A stand-in for ``ray`` that reports fixed cluster resources (no GPU here)."""

    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_actor_resources_one_actor_per_gpu_and_gpu_errors():
    from evoplastic.backends.errors import BackendError
    from evoplastic.backends.ray_backend import actor_resources

    gpus = _Cluster(CPU=32.0, GPU=4.0)
    assert actor_resources(gpus, None, None) == {"workers": 4, "num_cpus": 1, "num_gpus": 1.0}
    assert actor_resources(gpus, None, 0.5)["workers"] == 8
    assert actor_resources(_Cluster(CPU=2.0), None, None) == {
        "workers": 2,
        "num_cpus": 1,
        "num_gpus": 0.0,
    }
    with pytest.raises(BackendError, match="GPU\\(s\\) per worker were asked for, but"):
        actor_resources(_Cluster(CPU=2.0), None, 1.0)
    with pytest.raises(BackendError, match="6 workers x 1 GPU\\(s\\)"):
        actor_resources(gpus, 6, 1.0)


def test_cli_asking_for_gpus_on_a_cpu_cluster_is_one_line(ray_instance, write_config, tmp_path):
    """(In this process, on its CPU-only Ray instance.)"""
    cfg = small_config(backend="ray", ray={"gpus_per_worker": 1.0})
    proc = cli_here("run", write_config(cfg), "--out", tmp_path / "r")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "GPU(s) per worker were asked for" in lines[-1]
    assert "Traceback" not in proc.stderr  # (Ray's own start-up warnings may come before)
    assert not (tmp_path / "r").exists()  # the backend is built before the run directory


class _FailingFactory:
    """A pieces factory that raises on the calls listed in ``fail`` (1: the driver's, 2: the
    first actor's, ...): a worker that fails while starting, as a lost worker process does."""

    def __init__(self, counter, cfg, fail):
        self.counter, self.cfg, self.fail = str(counter), cfg, tuple(fail)

    def __call__(self, shared):
        calls = int(open(self.counter).read()) + 1 if os.path.exists(self.counter) else 1
        with open(self.counter, "w") as f:
            f.write(str(calls))
        if calls in self.fail:
            raise RuntimeError("worker process lost while starting")
        return config_pieces(self.cfg)


def test_a_worker_that_fails_to_start_is_started_again_once(ray_instance, tmp_path):
    """Startup is tried twice: a transient failure is absorbed, a lasting one is one error."""
    cfg = small_config(evaluation={"shard_size": 4})
    exp = build(config.parse(cfg))
    factory = _FailingFactory(tmp_path / "once", cfg, fail=(2,))
    with ray_backend.open_step(factory, workers=1) as step:
        _, metrics = step(exp.init_state(jax.random.PRNGKey(0)), jax.random.PRNGKey(0), 0)
    assert np.isfinite(float(metrics["best_loss"]))
    assert open(tmp_path / "once").read() == "3"  # driver, failed actor, started again

    factory = _FailingFactory(tmp_path / "always", cfg, fail=(2, 3))
    with pytest.raises(backends.BackendError, match="^a Ray worker failed to start: "):
        with ray_backend.open_step(factory, workers=1):
            pass
    assert open(tmp_path / "always").read() == "3"


# --------------------------------------------------------------- every outer loop on Ray

POLICY = Path(__file__).resolve().parents[1] / "experiments" / "selection" / "policy.npz"
OUTER_LOOPS = {
    "es": {"strategy": {"name": "cma_es"}, "evaluation": {"shard_size": 3}},
    "learned_selection": {
        "meta": {"selection": "learned", "selection_policy": str(POLICY)},
        "evaluation": {"shard_size": 3},
    },
    "gradient": {
        "meta": {"optimizer": "gradient", "gradient": {"remat": "none"}},
        "evaluation": {"instances": 5, "shard_size": 2},  # 2 + 2 + 1 (padded)
    },
    "pes": {
        "strategy": {"name": "pes"},
        "meta": {"truncation": 16},
        "evaluation": {"shard_size": 3},
    },
}
ALL_COLUMNS = ("best_loss", "mean_loss", "median_loss", "nonfinite", "grad_norm", "skipped")


def _outer_config(tmp_path, outer, **extra):
    sections = {
        "generations": 3,
        "task": {"name": "pca", "dim": 4, "steps": 32},
        "test": {"every": 3, "instances": 2, "final_instances": 4},
        "checkpoint": {"every": 1, "keep": 2},
    }
    for key, value in (OUTER_LOOPS[outer] | extra).items():
        sections[key] = sections.get(key, {}) | value if isinstance(value, dict) else value
    return _ray_config(tmp_path, **sections)


def _metric_columns(run_dir):
    """Every metrics.jsonl column but the timings."""
    from evoplastic.trainer import TIMING_FIELDS

    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(run_dir)]


@pytest.mark.parametrize("outer", sorted(OUTER_LOOPS))
def test_every_outer_loop_on_ray_equals_local_with_one_and_two_actors(
    ray_instance, tmp_path, outer
):
    """Same config, seed and shard size: bit-identical metrics.jsonl (timings aside) and
    final genome, local and on Ray with 1 and 2 actors, through the one run driver."""
    from evoplastic import runner

    exp = build(_outer_config(tmp_path, outer))
    assert exp.outer.shards == 3
    local = runner.execute(
        dataclasses.replace(exp, config=dataclasses.replace(exp.config, backend="local")),
        tmp_path / "local",
        finish=None,
    )
    expected = _metric_columns(tmp_path / "local")
    assert len(expected) == 3 and all(np.isfinite(r["mean_loss"]) for r in expected)
    for workers in (1, 2):
        cfg = exp.config
        cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, workers=workers))
        remote = runner.execute(
            dataclasses.replace(exp, config=cfg), tmp_path / f"ray{workers}", finish=None
        )
        assert _metric_columns(tmp_path / f"ray{workers}") == expected, workers
        for a, b in zip(jax.tree.leaves(remote.genome), jax.tree.leaves(local.genome), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any((tmp_path / "jax-cache").iterdir())  # the actors compiled (their own cache)


@pytest.mark.parametrize("outer", ["gradient", "pes"])
def test_a_killed_actor_mid_run_leaves_the_metrics_unchanged(ray_instance, tmp_path, outer):
    """One of two actors is killed after generation 1; its shards run again elsewhere (and
    on it once restarted), and the run ends with the local run's metrics and genome."""
    from evoplastic import runner

    exp = build(_outer_config(tmp_path, outer, generations=4, ray={"max_restarts": 1}))
    with backends.open_step(exp) as step:

        def kill_one(done):
            if done == 1:
                os.kill(step.info[0]["pid"], signal.SIGKILL)

        remote = _train(exp, tmp_path / "ray", step=step, on_generation=kill_one)
        assert step.restarts >= 1
    local = runner.execute(
        dataclasses.replace(exp, config=dataclasses.replace(exp.config, backend="local")),
        tmp_path / "local",
        finish=None,
    )
    assert _metric_columns(tmp_path / "ray") == _metric_columns(tmp_path / "local")
    for a, b in zip(jax.tree.leaves(remote.genome), jax.tree.leaves(local.genome), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ep_run_with_backend_ray_runs_on_ray_actors(ray_instance, tmp_path):
    """ep.run honours backend: ray (the actors compile into their cache) with the local
    run's numbers."""
    import evoplastic as ep

    cfg = _outer_config(tmp_path, "gradient")
    ep.run(cfg, tmp_path / "ray")
    assert any((tmp_path / "jax-cache").iterdir())
    ep.run(dataclasses.replace(cfg, backend="local"), tmp_path / "local")
    assert _metric_columns(tmp_path / "ray") == _metric_columns(tmp_path / "local")


def test_init_from_is_read_on_the_driver_and_ray_equals_local(ray_instance, tmp_path):
    """rule.init_from on Ray: the driver reads the start (it may be gone before the actors
    start: they rebuild the experiment from its config and never read it) and the run
    equals the local one from the same start (test_init_from.py: that start is the mean of
    generation 0)."""
    from evoplastic.runner import execute
    from evoplastic.start import with_start

    from .rundirs import fake_run

    start = tmp_path / "start"
    fake_run(
        start,
        small_config(),
        build(config.parse(small_config())).unflatten_genome([0.31, -0.72, 0.05, -0.13]),
    )
    rule = dict(small_config()["rule"], init_from=str(start))
    exp = with_start(build(_ray_config(tmp_path, rule=rule, generations=3)))
    (start / "best_rule.json").unlink()
    remote = execute(exp, tmp_path / "ray", finish=None)
    assert (tmp_path / "ray" / "start.json").is_file()
    local = execute(
        dataclasses.replace(exp, config=dataclasses.replace(exp.config, backend="local")),
        tmp_path / "local",
        finish=None,
    )
    assert _columns(tmp_path / "ray") == _columns(tmp_path / "local")
    np.testing.assert_array_equal(np.asarray(remote.genome), np.asarray(local.genome))


@pytest.mark.slow  # its feature keeps a faster test in the default run
def test_cli_gradient_and_pes_on_ray_finish_like_local(write_config, tmp_path):
    """`evoplastic run --backend ray` with the meta-gradient and with PES exits 0 and writes
    the metrics of the local run (a fresh Ray instance per CLI process)."""
    for outer in ("gradient", "pes"):
        data = _outer_config(tmp_path, outer).to_dict()
        data["ray"]["workers"] = 2
        path = write_config(data, f"{outer}.yaml")
        for backend in ("local", "ray"):
            out = tmp_path / f"{outer}-{backend}"
            proc = run_cli("run", path, "--backend", backend, "--out", out, "--quiet")
            assert proc.returncode == 0, proc.stderr[-2000:]
        assert _metric_columns(tmp_path / f"{outer}-ray") == _metric_columns(
            tmp_path / f"{outer}-local"
        )


def test_cli_without_ray_is_one_line_and_writes_nothing(write_config, tmp_path):
    """backend: ray where Ray cannot be imported: one line, exit 2, no run directory."""
    import subprocess
    import sys

    path = write_config(small_config(backend="ray"))
    code = (
        "import sys; sys.modules['ray'] = None; from evoplastic.cli import main;"
        f" main(['run', {str(path)!r}, '--out', {str(tmp_path / 'r')!r}])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: backend: ray needs Ray, which is not installed (pip install 'ray[default]')"
    ]
    assert not (tmp_path / "r").exists()


def test_cli_compare_without_ray_is_one_line_and_writes_nothing(write_config, tmp_path):
    """`evoplastic compare` of a backend: ray config where Ray cannot be imported: one line,
    exit 2, and no output directory (the check comes before the manifest)."""
    import subprocess
    import sys

    data = small_config(
        backend="ray", time_budget_s=5, compare={"seeds": [0], "methods": {"cma": {}}}
    )
    path = write_config(data)
    out = tmp_path / "cmp"
    code = (
        "import sys; sys.modules['ray'] = None; from evoplastic.cli import main;"
        f" main(['compare', {str(path)!r}, '--out', {str(out)!r}])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: backend: ray needs Ray, which is not installed (pip install 'ray[default]')"
    ]
    assert not out.exists()
