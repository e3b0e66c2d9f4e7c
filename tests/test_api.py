"""The Python API (evolve, meta_gradient), user fitness checks, import-path tasks, member errors."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import evoplastic as ep
from evoplastic import checkpoint, config
from evoplastic.cli import main
from evoplastic.tasks import custom

from . import custom_tasks as ct
from .conftest import small_config, start_local_ray

TARGET = jnp.array([1.0, -2.0, 0.5])


def quadratic(genome, key):
    return jnp.sum((genome - TARGET) ** 2)


def _call(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


# ----------------------------------------------------------------------------- evolve / gradient


@pytest.fixture(scope="module", autouse=True)
def compilation_cache():
    """The tests' shared persistent compilation cache (as in-process CLI runs use): runs
    of the same program, e.g. a run and its resumption, compile once."""
    from evoplastic.cli import enable_compilation_cache

    enable_compilation_cache()


RUN = {"population_size": 16, "generations": 25, "checkpoint_every": 5, "final_instances": 4}


@pytest.fixture(scope="module")
def converged():
    """One uninterrupted run (shared: the resume test continues the same run)."""
    seen = []
    return ep.evolve(quadratic, jnp.zeros(3), callback=seen.append, **RUN), seen


def test_evolve_finds_the_minimum_and_records_history(converged):
    result, seen = converged
    np.testing.assert_allclose(np.asarray(result.genome), np.asarray(TARGET), atol=0.05)
    assert result.rule is result.genome  # a fitness function has no rule: the genome
    assert result.run_dir is None and result.generations == 25
    assert [r["generation"] for r in result.history] == list(range(25))
    assert seen == result.history
    assert result.history[-1]["best_loss"] < 1e-2 * result.history[0]["best_loss"]
    assert result.config.strategy.population_size == 16


def test_meta_gradient_takes_the_analytic_sgd_steps():
    """SGD on |g - t|^2 with rate r: g_n - t = (g_0 - t) (1 - 2r)^n, exactly."""
    result = ep.meta_gradient(
        quadratic, jnp.zeros(3), optimizer="sgd", learning_rate=0.1, steps=5, clip_norm=0.0
    )
    expected = TARGET + (0.0 - TARGET) * 0.8**5
    np.testing.assert_allclose(np.asarray(result.genome), np.asarray(expected), rtol=1e-5)
    losses = [r["mean_loss"] for r in result.history]
    np.testing.assert_allclose(losses[0], float(jnp.sum(TARGET**2)), rtol=1e-6)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))


def test_an_interrupted_run_resumes_identically_in_the_cli_layout(converged, tmp_path):
    whole, _ = converged

    def stop(record):
        if record["generation"] == 11:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(ep.trainer.Interrupted):
        ep.evolve(quadratic, jnp.zeros(3), run_dir=part, callback=stop, **RUN)
    assert checkpoint.list_checkpoints(part / "checkpoints")[-1][0] == 12
    with pytest.raises(FileExistsError, match="resume=True"):
        ep.evolve(quadratic, jnp.zeros(3), run_dir=part, **RUN)
    resumed = ep.evolve(quadratic, jnp.zeros(3), run_dir=part, resume=True, **RUN)
    np.testing.assert_array_equal(np.asarray(resumed.genome), np.asarray(whole.genome))
    cols = ("generation", "best_loss", "mean_loss")
    assert [{k: r[k] for k in cols} for r in resumed.history] == [
        {k: r[k] for k in cols} for r in whole.history
    ]
    names = {p.name for p in part.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "best_rule.json", "eval.json"} <= names
    best = json.loads((part / "best_rule.json").read_text())
    np.testing.assert_allclose(best["genome_flat"], np.asarray(whole.genome), rtol=1e-6)
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 25
    assert resumed.summary["eval"]["trained"]["evolved"]["loss"]["n"] == 4
    assert resumed.run_dir == part


def test_task_family_with_a_rule_returns_the_rule_as_a_callable():
    family = ct.make_pca_family(dim=4, steps=16)
    rule = ep.rules.make("polynomial", terms=("pre*post", "post^2*w", "w"))
    with pytest.raises(ValueError, match="rule="):
        ep.evolve(family, generations=2)
    result = ep.evolve(family, rule=rule, population_size=4, generations=2)
    assert isinstance(result.rule, ep.BoundRule)
    signals = ep.rules.Signals(
        pre=jnp.array([1.0, 2.0]), post=jnp.array([0.5]), w=jnp.array([[0.1, -0.2]])
    )
    np.testing.assert_array_equal(
        np.asarray(result.rule(signals)), np.asarray(rule.update(result.genome, signals))
    )
    assert str(result.rule) == rule.describe(result.genome)
    assert result.history[0]["best_loss"] > 0


# ----------------------------------------------------------------------------- fitness checks

calls = []
counter = 0


def _append(genome, key):
    calls.append(genome)
    return jnp.sum(genome)


plain_calls = []


def _append_plain(genome, key):
    plain_calls.append(1)
    return jnp.sum(genome)


def _counter(genome, key):
    global counter
    counter += 1
    return jnp.sum(genome) * counter


MISTAKES = [
    (ct.make_python_if(), "is not jittable", "jnp.where"),
    (lambda g, k: float(jnp.sum(g)), "is not jittable", "float()"),
    (lambda g, k: jnp.sum(np.asarray(g)), "numpy array", "jax.numpy"),
    (lambda g, k: jnp.sum(g[g > 0]), "data-dependent shape", "jnp.where"),
    (lambda g, k: g**2, "must return a scalar loss", "shape (3,)"),
    (lambda g, k: (jnp.sum(g), g), "must return one scalar loss", "not `return loss, aux`"),
    (lambda g, k: jnp.sum(g @ jnp.ones(4)), "raised TypeError when traced", "dot_general"),
    (_append, "side effect", "escaped"),
    (_append_plain, "changes Python state", "global 'plain_calls'"),
    (_counter, "changes Python state", "global 'counter'"),
    (lambda g, k: jnp.sum(g) + np.random.rand(), "different computation", "jax.random"),
]


@pytest.mark.parametrize("fitness, what, fix", MISTAKES)
def test_fitness_mistakes_are_one_clear_line(fitness, what, fix):
    with pytest.raises(ep.FitnessError) as info:
        ep.check_fitness(fitness, jnp.zeros(3))
    message = str(info.value)
    assert what in message and fix in message
    assert "\n" not in message


def test_good_fitness_passes_and_evolve_refuses_a_bad_one():
    ep.check_fitness(quadratic, jnp.zeros(3))
    ep.check_fitness(ct.make_checked(), jnp.zeros(2))  # checkify checks are fine
    with pytest.raises(ep.FitnessError, match="must return a scalar loss"):
        ep.evolve(lambda g, k: g**2, jnp.zeros(3), generations=2)
    with pytest.raises(ep.FitnessError, match="not differentiable"):
        ep.meta_gradient(
            lambda g, k: jax.lax.while_loop(lambda x: x < 1.0, lambda x: x + 1.0, g[0]),
            jnp.zeros(2),
            steps=1,
        )


# ----------------------------------------------------------------------------- member errors


def _population(run_dir: Path, fitness, template, generation: int):
    cfg = config.parse(yaml.safe_load((run_dir / "config.yaml").read_text()))
    exp = ep.build(cfg, family=custom.FitnessTask(fitness, template), check=False)
    payload = checkpoint.load_latest(run_dir / "checkpoints")
    assert payload["generation"] == generation  # the last finished generation is kept
    state = exp.init_state(jax.random.PRNGKey(cfg.seed))
    leaves = [jnp.asarray(x) for x in payload["state"]]
    state = jax.tree.unflatten(jax.tree.structure(state), leaves)
    work, _ = exp.generation_step().ask(state, jax.random.PRNGKey(cfg.seed), generation)
    return np.asarray(work["population"])


@pytest.mark.parametrize("make", [ct.make_checked, ct.make_callback])
def test_a_failing_member_is_reported_by_index_and_the_checkpoint_kept(make, tmp_path):
    fitness, limit = make(limit=1.0), 1.0
    with pytest.raises(ep.MemberError) as info:
        ep.evolve(
            fitness,
            jnp.zeros(2),
            population_size=8,
            generations=30,
            checkpoint_every=1,
            run_dir=tmp_path / "run",
            final_instances=2,
        )
    err = info.value
    assert f"member {err.member} of generation {err.generation}" in str(err)
    assert "limit" in str(err) or ">= 1.0" in str(err)
    assert err.generation >= 1  # it ran (and checkpointed) before the failure
    population = _population(tmp_path / "run", fitness, jnp.zeros(2), err.generation)
    assert population[err.member, 0] >= limit
    assert np.all(population[: err.member, 0] < limit)  # the first failing member


# ----------------------------------------------------------------------------- configs


def _write(tmp_path, cfg, task=None):
    if task is not None:
        cfg["task"] = task
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_config_task_by_import_path_runs(tmp_path):
    data = small_config(test={"every": 0, "final_instances": 4})
    data["task"] = {"name": "tests.custom_tasks:make_quadratic", "dim": 3, "genome": 3}
    cfg = config.parse(data)
    assert cfg.task == {
        "name": "tests.custom_tasks:make_quadratic",
        "dim": 3,
        "target": 1.0,
        "genome": 3,
    }
    cfg = config.parse(config.safe_load(config.dump(cfg)))  # the resolved config reloads
    summary = ep.run(cfg, tmp_path / "run")
    genome = np.asarray(summary["rule"]["genome_flat"])
    assert np.sum((genome - 1.0) ** 2) < 3.0 * 0.5  # better than the start (loss 3)
    data["task"] = "tests.custom_tasks:make_quadratic_task"
    assert isinstance(ep.build(config.parse(data)).family, custom.FitnessTask)
    data["task"] = {"name": "tests.custom_tasks:make_pca_family", "dim": 4}
    family = ep.build(config.parse(data)).family
    assert isinstance(family, custom.CheckedFamily) and family.dim == 4


CONFIG_ERRORS = [
    ({"name": "no_such_module_xyz:make"}, "task.name: cannot import module 'no_such_module_xyz'"),
    ({"name": "tests.custom_tasks:nope"}, "has no attribute 'nope'"),
    ({"name": "tests.custom_tasks:NOT_A_FACTORY"}, "is a int, not a factory"),
    ({"name": "tests.custom_tasks:make_raising"}, "ValueError: the data set is missing"),
    ({"name": "tests.custom_tasks:make_quadratic"}, "needs its initial genome"),
    ({"name": "tests.custom_tasks:make_quadratic", "dimm": 3}, "did you mean 'dim'"),
    ({"name": "tests.custom_tasks:make_quadratic", "genome": "x"}, "task.genome: expected"),
    ({"name": "tests.custom_tasks:make_vector_loss", "genome": 2}, "must return a scalar"),
    ({"name": "tests.custom_tasks:make_python_if", "genome": 2}, "is not jittable"),
]


@pytest.mark.parametrize("task, message", CONFIG_ERRORS)
def test_bad_user_task_in_a_config_is_one_line_exit_2(task, message, tmp_path, capsys):
    path = _write(tmp_path, small_config(), task)
    code, out, err = _call(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "run").exists()


def test_cli_imports_a_user_task_from_the_current_directory(tmp_path, monkeypatch, capsys):
    """`evoplastic run` (whose script directory is not the user's) finds ./mytask.py."""
    (tmp_path / "mytask_api_test.py").write_text(
        "import jax.numpy as jnp\n\n\ndef make(target: float = 2.0):\n"
        "    return lambda genome, key: jnp.sum((genome - target) ** 2)\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    cfg = small_config(generations=3, test={"every": 0, "final_instances": 4})
    path = _write(tmp_path, cfg, {"name": "mytask_api_test:make", "genome": [0.0, 0.0]})
    try:
        main(["run", str(path), "--out", "run", "--quiet"])
    finally:
        sys.modules.pop("mytask_api_test", None)
    best = json.loads((tmp_path / "run" / "best_rule.json").read_text())
    assert best["rule"] == "genome" and len(best["genome_flat"]) == 2
    assert best["equation"].startswith("genome = [")


def _ray_instance():
    return start_local_ray()


RAY = {"backend": "ray", "workers": 1}  # one actor: two shards, each evaluated remotely
SHARDS = {"population_size": 8, "shard_size": 4, "checkpoint_every": 1, "final_instances": 2}


def _fitness_columns(run_dir):
    cols = ("generation", "best_loss", "mean_loss", "median_loss")
    return [{k: r[k] for k in cols} for r in ep.trainer.read_metrics(run_dir)]


@pytest.mark.ray  # a real Ray instance: run apart from the parallel tests
def test_ray_backend_runs_a_python_fitness_and_reports_its_failing_member(tmp_path):
    """On a real local Ray instance (2 CPUs) a Python closure (shipped to the actor by
    value) gives the local run's metrics bit for bit, up to the same failing member."""
    import os

    fitness = ct.make_checked(limit=1.0)
    with pytest.raises(ep.MemberError) as local:
        ep.evolve(fitness, jnp.zeros(2), generations=30, run_dir=tmp_path / "local", **SHARDS)
    cache = {"compilation_cache": os.environ["EVOPLASTIC_CACHE_DIR"]}  # the local executables
    ray = _ray_instance()
    try:
        with pytest.raises(ep.MemberError) as remote:
            ep.evolve(
                fitness,
                jnp.zeros(2),
                generations=30,
                run_dir=tmp_path / "ray",
                ray_options=cache,
                **SHARDS,
                **RAY,
            )
    finally:
        ray.shutdown()
    assert (remote.value.generation, remote.value.member) == (
        local.value.generation,
        local.value.member,
    )
    assert "not below the limit" in str(remote.value)
    assert _fitness_columns(tmp_path / "ray") == _fitness_columns(tmp_path / "local")
    assert len(_fitness_columns(tmp_path / "ray")) == local.value.generation


@pytest.mark.slow
@pytest.mark.ray
def test_ray_backend_runs_a_task_named_by_import_path(tmp_path):
    """The actors import the factory themselves (the config route of `evoplastic run`)."""
    local = ep.evolve("tests.custom_tasks:make_quadratic", jnp.zeros(3), generations=4, **SHARDS)
    ray = _ray_instance()
    try:
        remote = ep.evolve(
            "tests.custom_tasks:make_quadratic", jnp.zeros(3), generations=4, **SHARDS, **RAY
        )
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(np.asarray(remote.genome), np.asarray(local.genome))


def test_a_search_whose_mean_turns_non_finite_stops_with_one_line(tmp_path, capsys):
    """Told only non-finite losses (ties), CMA-ES's step size underflows and its mean turns
    NaN; the run then stops with one line naming what to change, instead of finishing with
    a NaN rule, and keeps the last finite state. A start where only some members diverge
    runs as usual."""
    from evoplastic import trainer

    cfg = small_config(generations=1000, test={"every": 0, "final_instances": 4})
    cfg["strategy"] = {"name": "cma_es", "population_size": 8, "std_init": 0.1}
    task = {"name": "tests.custom_tasks:make_finite_near_zero", "genome": [5.0, 5.0]}
    path = _write(tmp_path, cfg, task)
    with pytest.raises(SystemExit) as stop:
        main(["run", str(path), "--out", str(tmp_path / "bad"), "--quiet"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the search's mean genome became non-finite" in err[0]
    assert "strategy.std_init" in err[0]
    assert np.all(np.isfinite(np.asarray(trainer.latest_genome(tmp_path / "bad"))))
    assert not (tmp_path / "bad" / "eval.json").exists()  # no NaN rule reported as a result
    # a start inside the finite region: some members diverge, the search goes on
    task["genome"] = [0.5, 0.5]
    cfg.update(generations=20, strategy=cfg["strategy"] | {"std_init": 0.5})
    summary = ep.run(config.parse(cfg | {"task": task}), tmp_path / "good")
    flat = np.asarray(summary["rule"]["genome_flat"])
    assert np.all(np.isfinite(flat)) and np.sum(flat**2) < 0.5


def test_a_typed_prng_key_is_a_seed():
    from evoplastic.api import seed_of

    typed, raw = jax.random.key(3), jax.random.PRNGKey(3)
    assert seed_of(typed) == seed_of(jax.random.key(3)) == seed_of(raw)  # same key, same seed
    assert seed_of(typed) != seed_of(jax.random.key(4))
    assert seed_of(7) == 7 and 0 <= seed_of(typed) < 2**31
    with pytest.raises(TypeError, match="seed: expected an int or a JAX PRNG key"):
        seed_of(True)
    with pytest.raises(TypeError, match="seed: expected an int or a JAX PRNG key"):
        seed_of("3")
    f = lambda g, k: jnp.sum(g**2)  # noqa: E731
    a = ep.evolve(f, jnp.ones(3), generations=2, population_size=4, seed=typed)
    b = ep.evolve(f, jnp.ones(3), generations=2, population_size=4, seed=seed_of(typed))
    assert a.experiment.config.seed == seed_of(typed)
    np.testing.assert_array_equal(np.asarray(a.genome), np.asarray(b.genome))
