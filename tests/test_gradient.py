"""The gradient meta-optimizer and the truncated evolution strategies."""

import json
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evoplastic as ep
from evoplastic import meta

from .conftest import cli_here, run_cli, small_config
from .test_resume import _metrics, _start_and_stop

ROOT = Path(__file__).resolve().parents[1]

GRADIENT = {"optimizer": "gradient", "gradient": {"remat": "step"}}


def _gradient_exp(**sections):
    sections.setdefault("meta", GRADIENT)
    return ep.build(ep.config.parse(small_config(**sections)))


def test_config_defaults_keep_the_es_path():
    cfg = ep.config.parse(small_config())
    assert cfg.meta.optimizer == "es" and cfg.meta.truncation == 0
    assert isinstance(ep.build(cfg).outer, ep.meta.EvolutionStrategy)


@pytest.mark.parametrize(
    "meta_section, field",
    [
        ({"optimizer": "gradeint"}, "meta.optimizer: unknown meta-optimizer 'gradeint'"),
        ({"optimizer": "gradient", "truncation": 7}, "meta.truncation: must divide task.steps"),
        ({"truncation": -1}, "meta.truncation: must be >= 0"),
        ({"truncation": 16}, "meta.truncation: strategy 'cma_es' needs whole unrolls"),
        ({"gradient": {"remat": "all"}}, "meta.gradient.remat: unknown policy 'all'"),
        ({"gradient": {"clip_norm": -1.0}}, "meta.gradient.clip_norm: must be >= 0"),
        ({"gradient": {"optimiser": {}}}, "meta.gradient.optimiser: unknown key"),
        (
            {"optimizer": "gradient", "gradient": {"optimizer": {"name": "adamm"}}},
            "meta.gradient.optimizer.name: expected an optax optimizer (adam, sgd, ...),"
            " got 'adamm'",
        ),
    ],
)
def test_meta_config_errors_name_the_field(meta_section, field):
    with pytest.raises(ep.ConfigError) as err:
        ep.build(ep.config.parse(small_config(meta=meta_section)))
    assert str(err.value).startswith(field), str(err.value)


def test_truncated_strategy_needs_a_truncation():
    with pytest.raises(ep.ConfigError, match="^meta.truncation: strategy 'pes' runs over"):
        ep.config.parse(small_config(strategy={"name": "pes"}))


def test_initial_genome_has_the_es_distribution():
    """rule.init + std_init * N(0, 1): the law of an ES's first population around its mean."""
    exp = _gradient_exp(rule={"init_scale": 0.0}, strategy={"std_init": 0.5})
    genomes = np.stack([exp.init_state(jax.random.PRNGKey(s)).genome for s in range(400)])
    assert abs(genomes.mean()) < 0.05
    assert abs(genomes.std() - 0.5) < 0.03


def test_gradient_step_descends():
    sgd = {"optimizer": {"name": "sgd", "learning_rate": 1e-3}, "clip_norm": 0.0}
    exp = _gradient_exp(meta={"optimizer": "gradient", "gradient": sgd})
    state = exp.init_state(jax.random.PRNGKey(0))
    step = exp.generation_step()
    # the same instances (generation 0's) before and after one small step
    grad_fn = jax.jit(lambda g: exp.outer.meta_loss(g, *_gen0(exp), 0, exp.family.steps)[0])
    new, m = step(state, jax.random.PRNGKey(0), 0)
    assert int(m["nonfinite"]) == 0
    np.testing.assert_allclose(m["best_loss"], grad_fn(state.genome), rtol=1e-5)
    assert float(grad_fn(new.genome)) < float(grad_fn(state.genome))


def _gen0(exp):
    _, k_eval, _ = ep.backends.generation_keys(jax.random.PRNGKey(0), 0)
    episodes = exp.outer.episodes
    tasks = episodes.tasks(k_eval, jnp.arange(exp.outer.instances))
    return tasks, jax.vmap(exp.family.init_inner)(tasks)


def test_nonfinite_meta_gradient_is_skipped_and_counted():
    exp = _gradient_exp()
    state = exp.init_state(jax.random.PRNGKey(0))
    step = exp.generation_step()
    run_key = jax.random.PRNGKey(0)
    good, m = step(state, run_key, 0)
    assert int(m["nonfinite"]) == 0 and int(good.skipped) == 0
    assert not np.array_equal(good.genome, state.genome)
    # a genome whose rule blows the weights up: loss and gradient are not finite
    bad = state.replace(genome=jnp.full_like(state.genome, 1e3))
    after, m = step(bad, run_key, 1)
    assert int(m["nonfinite"]) == 1 and int(after.skipped) == 1
    assert not np.isfinite(float(m["best_loss"]))
    np.testing.assert_array_equal(after.genome, bad.genome)
    for a, b in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(bad.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    after2, m = step(after, run_key, 2)
    assert int(after2.skipped) == 2


def test_truncated_gradient_carries_inner_state_within_an_episode():
    """With a zero step size the genome stays put; two truncations equal one long unroll."""
    exp = _gradient_exp(
        task={"steps": 64},
        meta={
            "optimizer": "gradient",
            "truncation": 32,
            "gradient": {"optimizer": {"name": "sgd", "learning_rate": 0.0}},
        },
    )
    run_key = jax.random.PRNGKey(0)
    state = exp.init_state(run_key)
    step = exp.generation_step()
    s1, _ = step(state, run_key, 0)
    s2, m2 = step(s1, run_key, 1)
    tasks, fresh = _gen0(exp)
    loss, (_, whole) = exp.outer.meta_loss(state.genome, tasks, fresh, 0, 64)
    np.testing.assert_allclose(s2.inner.w, whole.w, rtol=1e-5)
    np.testing.assert_allclose(m2["best_loss"], loss, rtol=1e-5)
    assert np.all(np.asarray(s2.inner.t) == 64)
    # generation 2 starts a new episode: fresh instances from fresh initial states
    s3, _ = step(s2, run_key, 2)
    assert np.all(np.asarray(s3.inner.t) == 32)


@pytest.mark.parametrize("strategy", sorted(meta.TRUNCATED_STRATEGIES))
def test_truncated_es_runs_and_learns(tmp_path, strategy):
    """PES / Noise-Reuse ES over truncations: state carried, held-out loss goes down."""
    cfg = small_config(
        generations=60,
        task={"dim": 4, "steps": 200},
        strategy={
            "name": strategy,
            "population_size": 16,
            "std_init": 0.03,
            "optimizer": {"name": "adam", "learning_rate": 0.05},
        },
        evaluation={"instances": 4},
        test={"every": 60, "instances": 32, "final_instances": 32},
        meta={"truncation": 50},
        checkpoint={"every": 60},
    )
    exp = ep.build(ep.config.parse(cfg))
    state = exp.init_state(jax.random.PRNGKey(0))
    step = exp.generation_step()
    state, m = step(state, jax.random.PRNGKey(0), 0)
    assert int(m["segment"]) == 0 and np.all(np.asarray(state.inner.t) == 50)
    state, m = step(state, jax.random.PRNGKey(0), 1)
    assert int(m["segment"]) == 1 and np.all(np.asarray(state.inner.t) == 100)
    assert int(state.es.inner_step_counter) == 100
    before = ep.backends.evaluate_genome(exp.family, exp.rule, jnp.zeros(4), 32)["loss"]
    ep.prepare_run_dir(tmp_path / "run", exp)
    result = ep.train(exp, tmp_path / "run")
    after = ep.backends.evaluate_genome(exp.family, exp.rule, result.genome, 32)["loss"]
    assert float(np.mean(after)) < 0.5 * float(np.mean(before)), (before.mean(), after.mean())


def _resume_config():
    return small_config(
        generations=60,
        task={"dim": 8, "steps": 1000},
        evaluation={"instances": 64},
        test={"every": 20, "instances": 8, "final_instances": 10},
        checkpoint={"every": 3, "keep": 3},
        meta={"optimizer": "gradient", "truncation": 250, "gradient": {"remat": "nested"}},
    )


@pytest.mark.slow  # 34 s; resume exactness keeps its default tests in test_resume.py
def test_gradient_resume_after_sigkill_is_exact(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps(_resume_config()))
    ref_dir = tmp_path / "uninterrupted"
    ep.run(ep.config.parse(_resume_config()), ref_dir)  # in-process: one start-up fewer
    run_dir = tmp_path / "stopped"
    code, _, _ = _start_and_stop(cfg_path, run_dir, signal.SIGKILL, after_generation=12)
    assert code == -signal.SIGKILL
    stopped_at = len(_metrics(run_dir))
    assert 12 <= stopped_at < 60, "the run was not stopped mid-way"
    proc = run_cli("resume", run_dir, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert _metrics(run_dir) == _metrics(ref_dir)
    got = json.loads((run_dir / "best_rule.json").read_text())
    assert got["genome"] == json.loads((ref_dir / "best_rule.json").read_text())["genome"]


@pytest.mark.slow  # a whole backprop run; the outer loop keeps its step tests in the default run
def test_backprop_rediscovers_oja(tmp_path):
    """The target: experiments/oja_backprop.yaml meets the Oja criteria of tests/test_oja.py."""
    from .test_oja import _check

    cfg = ep.config.load(ROOT / "experiments" / "oja_backprop.yaml")
    assert cfg.meta.optimizer == "gradient"
    summary = ep.run(cfg, tmp_path / "run")
    _check(summary)


def test_sharded_meta_gradient_equals_the_whole_batch():
    """Instances in shards of 2 (the last padded): the shards' loss and gradient sums, added
    in order and averaged, give the whole batch's mean loss and step (to float rounding);
    the padding row is left out (counting it would shift the loss by a fifth)."""
    sgd = {"optimizer": {"name": "sgd", "learning_rate": 1e-3}, "clip_norm": 0.0}
    meta_section = {"optimizer": "gradient", "gradient": sgd}
    whole = _gradient_exp(meta=meta_section, evaluation={"instances": 5})
    sharded = _gradient_exp(meta=meta_section, evaluation={"instances": 5, "shard_size": 2})
    assert (whole.outer.shards, sharded.outer.shards) == (1, 3)
    run_key = jax.random.PRNGKey(0)
    state = whole.init_state(run_key)
    a, ma = whole.generation_step()(state, run_key, 0)
    b, mb = sharded.generation_step()(state, run_key, 0)
    np.testing.assert_allclose(mb["best_loss"], ma["best_loss"], rtol=1e-5)
    np.testing.assert_allclose(mb["grad_norm"], ma["grad_norm"], rtol=1e-4)
    np.testing.assert_allclose(b.genome, a.genome, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b.inner.w, a.inner.w, rtol=1e-5, atol=1e-6)


def test_gradient_step_adds_the_rule_prior_once():
    """With ``rule.l2`` the meta-gradient step's loss is the instances' mean loss plus the
    prior, and plain SGD moves the first layer by ``-lr * 2 * l2 * W_in`` more than without
    it (every other parameter exactly as without)."""
    sgd = {"optimizer": {"name": "sgd", "learning_rate": 1e-2}, "clip_norm": 0.0}
    rule = {"name": "mlp", "features": ["pre", "post", "w"], "hidden": [4]}
    steps = {}
    for l2 in (0.0, 0.3):
        cfg = small_config(meta={"optimizer": "gradient", "gradient": sgd})
        cfg["rule"] = dict(rule, l2=l2)
        exp = ep.build(ep.config.parse(cfg))
        state = exp.init_state(jax.random.PRNGKey(0))
        steps[l2] = (state,) + exp.generation_step()(state, jax.random.PRNGKey(0), 0)
    (s0, new0, m0), (s1, new1, m1) = steps[0.0], steps[0.3]
    w_in = s0.genome["Dense_0"]["kernel"]
    np.testing.assert_array_equal(w_in, s1.genome["Dense_0"]["kernel"])
    np.testing.assert_allclose(m1["best_loss"], m0["best_loss"] + 0.3 * jnp.sum(w_in**2), rtol=1e-5)
    np.testing.assert_allclose(
        new1.genome["Dense_0"]["kernel"] - new0.genome["Dense_0"]["kernel"],
        -1e-2 * 2 * 0.3 * w_in,
        rtol=1e-4, atol=1e-7,
    )  # fmt: skip
    for path in (("Dense_0", "bias"), ("Dense_1", "kernel"), ("Dense_1", "bias")):
        a, b = new0.genome[path[0]][path[1]], new1.genome[path[0]][path[1]]
        np.testing.assert_array_equal(a, b)


def _stopped_run_line(tmp_path, cfg: dict, name: str) -> str:
    """Run ``cfg`` into ``tmp_path/name`` by the CLI; it must stop with one line, exit 2."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(ep.config.dump(ep.config.parse(cfg)))
    out = cli_here("run", path, "--out", tmp_path / name, "--quiet")
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_run_whose_meta_gradient_steps_are_all_skipped_stops_with_one_line(tmp_path):
    """A start whose inner loop diverges on every meta-training instance makes every step
    non-finite: the run stops after 20 skipped steps in a row with one line (exit 2),
    instead of finishing with its random rule."""
    from evoplastic import trainer

    cfg = small_config(generations=300, meta=GRADIENT, test={"every": 0, "final_instances": 4})
    cfg["rule"] = {"name": "polynomial", "terms": ["pre*post"], "init": {"pre*post": 1e4}}
    cfg["strategy"] = {"name": "cma_es", "population_size": 8, "std_init": 1e-6}
    err = _stopped_run_line(tmp_path, cfg, "bad")
    assert "generation 19: 20 meta-gradient steps in a row" in err
    assert "std_init" in err and "learning_rate" not in err  # the start is at fault
    assert not (tmp_path / "bad" / "eval.json").exists()
    assert len(trainer.read_metrics(tmp_path / "bad")) == 19


def test_a_run_whose_steps_walk_into_rules_that_blow_up_is_told_to_lower_its_rate(tmp_path):
    """A start that learns, with a learning rate so large that the first step lands on rules
    that blow up on every instance (all at the loss cap): the run stops after 20 skipped
    steps, and its one line blames the learning rate, not the start."""
    from evoplastic import trainer

    cfg = {
        "name": "lr_too_high", "seed": 0, "generations": 200,
        "task": {"name": "sinusoid", "support_size": 10, "query_size": 20, "epochs": 5,
                 "bias": True, "input_scale": 1.0},
        "network": {"hidden": [16], "activation": "tanh", "output_activation": "linear",
                    "feedback": "random", "lr": 1.0, "w_init_std": 1.0},
        "rule": {"name": "polynomial", "per_layer": True, "terms": ["err*pre", "w"],
                 "init": {"err*pre": 0.03}},
        "evaluation": {"instances": 16, "loss_clip": 25.0},
        "meta": {"optimizer": "gradient", "gradient": {
            "optimizer": {"name": "adam", "learning_rate": 1.0}, "remat": "none",
            "init_std": 0.0}},
        "test": {"every": 0, "final_instances": 4},
    }  # fmt: skip
    err = _stopped_run_line(tmp_path, cfg, "high")
    assert "generation 20: 20 meta-gradient steps in a row" in err
    assert "1 earlier step led the meta-gradient into rules that blow up" in err
    assert "lower meta.gradient.optimizer.learning_rate" in err and "std_init" not in err
    records = trainer.read_metrics(tmp_path / "high")
    assert records[0]["nonfinite"] == 0 and all(r["nonfinite"] for r in records[1:])
