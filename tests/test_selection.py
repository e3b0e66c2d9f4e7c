"""The learned selection policy: fitness-only selection, meta-training, files, config, CLI."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from evoplastic import build, config, train
from evoplastic.cli import main
from evoplastic.meta import selection
from evoplastic.trainer import prepare_run_dir

from .conftest import small_config

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_POLICY = ROOT / "experiments" / "selection" / "policy.npz"


weights_of = jax.jit(selection.selection_weights)  # one compilation per population size


def random_policy(seed=0, scale=0.7):
    """An untrained policy whose MLP matters (larger weights than the default init)."""
    return selection.init_policy(jax.random.PRNGKey(seed), hidden=8, scale=scale)


def test_weights_depend_on_fitness_only_and_follow_the_members():
    policy = random_policy()
    rng = np.random.default_rng(1)
    fitness = rng.normal(size=8).astype(np.float32)  # 8 members, as the next test
    weights, utilities = weights_of(policy, fitness)
    weights, utilities = np.asarray(weights), np.asarray(utilities)
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)
    assert float(np.abs(utilities).sum()) == pytest.approx(1.0, abs=1e-5)
    # better members get more weight under the policy training starts from (rank-based)
    order = np.argsort(fitness)
    start_weights, _ = weights_of(selection.init_policy(jax.random.PRNGKey(0), 8), fitness)
    assert np.all(np.diff(np.asarray(start_weights)[order]) < 0)
    # reordering the members reorders their weights (equivariance)
    perm = rng.permutation(8)
    w_perm, u_perm = weights_of(policy, fitness[perm])
    np.testing.assert_allclose(w_perm, weights[perm], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(u_perm, utilities[perm], rtol=1e-5, atol=1e-7)
    # shifting and scaling the losses changes nothing
    w_aff, _ = weights_of(policy, 3.0 * fitness + 7.0)
    np.testing.assert_allclose(w_aff, weights, rtol=1e-4, atol=1e-6)
    # tied losses get tied weights
    tied = fitness.copy()
    tied[4] = fitness[0]
    w_tied, _ = weights_of(policy, tied)
    assert float(w_tied[4]) == pytest.approx(float(w_tied[0]), rel=1e-6)


def test_update_uses_genomes_only_through_fitness_chosen_weights():
    """Changing a genome without changing its fitness moves the mean by w_k * change only."""
    policy = random_policy(seed=3)
    dim, p = 5, 8
    es, params = selection.make(p, jnp.zeros(dim), policy, std_init=0.5)
    state = es.init(jax.random.PRNGKey(0), jnp.ones(dim), params)
    population, state = es.ask(jax.random.PRNGKey(1), state, params)
    fitness = jnp.arange(p, dtype=jnp.float32)[::-1] % 5  # ties: members 0 and 5, ...
    weights, _ = weights_of(policy, fitness)
    new, _ = es.tell(jax.random.PRNGKey(2), population, fitness, state, params)

    delta = jnp.linspace(-1.0, 1.0, dim)
    moved = population.at[6].add(delta)
    new_moved, _ = es.tell(jax.random.PRNGKey(2), moved, fitness, state, params)
    lr = float(jnp.exp(policy["log_lr_mean"]))
    np.testing.assert_allclose(
        new_moved.mean - new.mean, lr * weights[6] * delta, rtol=1e-4, atol=1e-6
    )
    # swapping the genomes of two members with the same fitness changes nothing
    a, b = 0, 5
    assert float(fitness[a]) == float(fitness[b])
    swapped = population.at[a].set(population[b]).at[b].set(population[a])
    new_swapped, _ = es.tell(jax.random.PRNGKey(2), swapped, fitness, state, params)
    np.testing.assert_allclose(new_swapped.mean, new.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_swapped.std, new.std, rtol=1e-5, atol=1e-6)


def test_policy_file_round_trip_and_bad_files(tmp_path):
    policy = random_policy(seed=4)
    path = tmp_path / "policy.npz"
    selection.save_policy(path, policy, {"training": {"note": "test"}})
    loaded, header = selection.read_policy(path)
    assert header["features"] == list(selection.FEATURES)
    assert header["architecture"]["hidden"] == 8
    assert header["training"] == {"note": "test"}
    for name, value in policy.items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), np.asarray(value))

    with pytest.raises(selection.PolicyFileError, match="not found"):
        selection.read_policy(tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(selection.PolicyFileError, match="corrupt.npz: not a selection policy"):
        selection.read_policy(corrupt)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(selection.PolicyFileError, match="not an .npz archive"):
        selection.read_policy(single)
    other = tmp_path / "other.npz"
    np.savez(other, w1=np.zeros(3))
    with pytest.raises(selection.PolicyFileError, match="no JSON header"):
        selection.read_policy(other)
    bad = dict(policy, w2=jnp.full_like(policy["w2"], jnp.nan))
    nonfinite = tmp_path / "nan.npz"
    nonfinite.write_bytes(selection.policy_bytes(bad))
    with pytest.raises(selection.PolicyFileError, match="non-finite"):
        selection.read_policy(nonfinite)


def learned_config(policy_path, **sections):
    return small_config(
        meta={"selection": "learned", "selection_policy": str(policy_path)}, **sections
    )


def test_config_validation_of_learned_selection(tmp_path):
    with pytest.raises(config.ConfigError, match="meta.selection_policy: required"):
        config.parse(small_config(meta={"selection": "learned"}))
    with pytest.raises(config.ConfigError, match="meta.selection_policy: file .* not found"):
        config.parse(learned_config(tmp_path / "none.npz"))
    with pytest.raises(config.ConfigError, match="meta.selection: unknown selection 'learnt'"):
        config.parse(small_config(meta={"selection": "learnt"}))
    # runs without learned selection keep the config digest they had before it existed
    assert "selection" not in config.experiment_dump(config.parse(small_config()))
    learned = config.parse(learned_config(COMMITTED_POLICY))
    assert f"selection_policy: {COMMITTED_POLICY}" in config.experiment_dump(learned)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(config.ConfigError, match="meta.selection_policy: .*garbage.npz"):
        build(config.parse(learned_config(garbage)))


def test_learned_selection_runs_through_the_trainer(tmp_path):
    """meta.selection: learned with the committed policy improves a tiny pca task."""
    cfg = config.parse(learned_config(COMMITTED_POLICY, generations=8, test={"every": 0}))
    exp = build(cfg)
    assert isinstance(exp.outer.strategy, selection.LearnedSelectionES)
    prepare_run_dir(tmp_path / "run", exp)
    step = exp.generation_step()
    result = train(exp, tmp_path / "run", step=step)
    first, last = result.records[0], result.records[-1]
    assert last["mean_loss"] < 0.7 * first["mean_loss"]
    assert "sigma" in last
    assert step._cache_size() == 1  # compiled once for the whole run


def test_cli_run_with_a_corrupt_policy_is_one_line_exit_2(tmp_path, capsys):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00" * 64)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(learned_config(garbage)))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: meta.selection_policy:")
    assert not (tmp_path / "run").exists()


def test_cli_train_selection_learns_selection_from_none(tmp_path, capsys):
    """From uniform weights (no selection), a few steps lower the held-out meta-loss."""
    cfg = {
        "output": str(tmp_path / "policy.npz"),
        "hidden": 8,
        "init": "uniform",
        "problems": {"dims": [4], "kinds": ["quadratic", "rastrigin"]},
        "training": {
            "steps": 12,
            "generations": 12,
            "truncation": 4,
            "batch": 8,
            "validation_problems": 16,
            "log_every": 6,
            "optimizer": {"name": "adam", "learning_rate": 0.1},
        },
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["train-selection", str(path)])
    out = capsys.readouterr().out
    assert "step    12/12" in out and "policy written to" in out
    policy, header = selection.read_policy(tmp_path / "policy.npz")
    training = header["training"]
    assert training["config"]["training"]["steps"] == 12
    # validation problems come from their own key stream, never trained on
    assert training["initial_validation_meta_loss"] > -0.5  # no selection: hardly any progress
    assert training["final_validation_meta_loss"] < training["initial_validation_meta_loss"] - 1
    assert training["kept_step"] == 12 and training["skipped_steps"] == 0
    # the file holds the trained policy: it now prefers better members
    fitness = np.arange(16, dtype=np.float32)
    weights, _ = weights_of(policy, fitness)
    assert float(weights[0]) > 2.0 / 16 > float(weights[-1])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    path.write_text(yaml.safe_dump(cfg | {"training": {"stepz": 2}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["train-selection", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: training.stepz: unknown key (did you mean 'steps'?)"]
    path.write_text(yaml.safe_dump(cfg | {"output": str(tmp_path / "no" / "p.npz")}))
    with pytest.raises(SystemExit) as exit_info:
        main(["train-selection", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: output: directory")


OTHERS = ("open_es", "snes")


@pytest.mark.slow
def test_comparison_target(monkeypatch):
    """Learned selection below OpenAI-ES and SNES on >= 2 of 3 held-out problems."""
    import json
    import tempfile

    monkeypatch.chdir(ROOT)  # the config names its policy and task relative to the project
    out = Path(tempfile.mkdtemp()) / "results.json"
    main(["compare-selection", "experiments/selection/compare.yaml", "--json", str(out)])
    results = json.loads(out.read_text())
    mean = lambda r, name: np.nanmean(r[name]["loss"])
    wins = [p for p, r in results.items() if all(mean(r, "learned") < mean(r, o) for o in OTHERS)]
    assert len(wins) >= 2, results
