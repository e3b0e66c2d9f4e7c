import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import backends, build, config, rules, tasks
from evoplastic.config import ConfigError


def _family(**params):
    net = {"hidden": (4,), "activation": "linear", "output_activation": "linear"}
    return tasks.make("control", network=net, **params)


def _pd_controller(fam):
    """Static weights of a hand-made CartPole controller: push towards where the pole falls."""
    w0 = np.zeros((4, 4), np.float32)
    w0[0] = [0.05, 0.1, 1.0, 0.5]  # hidden 0 = a PD signal on angle and position
    w1 = np.zeros((2, 4), np.float32)
    w1[1, 0], w1[0, 0] = 1.0, -1.0  # right if the pole leans right
    return (jnp.asarray(w0), jnp.asarray(w1))


def test_cartpole_episode_returns_follow_the_controller():
    fam = _family()
    static = rules.static(shapes=fam.network.shapes)
    good = backends.evaluate_genome(fam, static, _pd_controller(fam), 10)["return"]
    assert np.mean(np.asarray(good)) > 450  # a PD controller balances (nearly) every episode
    w0, w1 = _pd_controller(fam)
    bad = (w0, -w1)  # pushes the way the pole falls
    worst = backends.evaluate_genome(fam, static, bad, 10)["return"]
    assert np.all(np.asarray(worst) < 50)
    inverted = backends.evaluate_genome(_family(invert_at=100), static, _pd_controller(fam), 10)[
        "return"
    ]
    assert np.all(np.asarray(inverted) < 200)  # fixed weights fail once sensors invert


def test_sign_readout_pushes_right_when_its_single_unit_is_positive():
    """``readout: sign``: one output unit; the same controller as the argmax pair balances
    through it, and its negation drops the pole."""
    net = {"hidden": [], "activation": "linear", "output_activation": "linear"}
    fam = tasks.make("control", network=net, readout="sign")
    assert fam.network.sizes == (4, 1)
    static = rules.static(shapes=fam.network.shapes)
    u = jnp.asarray([[0.05, 0.1, 1.0, 0.5]])  # > 0 when the pole falls right: push right
    good = np.asarray(backends.evaluate_genome(fam, static, (u,), 10)["return"])
    bad = np.asarray(backends.evaluate_genome(fam, static, (-u,), 10)["return"])
    assert good.mean() > 450 and np.all(bad < 50)
    with pytest.raises(ValueError, match="task.readout: 'sign' needs an environment with two"):
        tasks.make("control", network=net, env="Acrobot-v1", readout="sign")
    with pytest.raises(ValueError, match="task.readout: unknown readout 'max'"):
        tasks.make("control", network=net, readout="max")


def test_plastic_steps_stop_the_rule():
    """``plastic_steps: 0``: the weights stay at their random start, so two different rules
    give the same episodes; with the rule on for the whole episode they differ."""
    net = {"hidden": [4], "activation": "tanh", "output_activation": "tanh", "lr": 0.5}

    def returns(plastic_steps, rule):
        fam = tasks.make("control", network=net, max_steps=100, plastic_steps=plastic_steps)
        return np.asarray(backends.evaluate_genome(fam, rule, None, 16)["return"])

    frozen = returns(0, rules.hebb())
    np.testing.assert_array_equal(frozen, returns(0, rules.oja()))
    hebb = returns(-1, rules.hebb())
    assert not np.array_equal(hebb, frozen)
    assert not np.array_equal(hebb, returns(-1, rules.oja()))
    with pytest.raises(ValueError, match="task.plastic_steps: must be >= 0"):
        tasks.make("control", network=net, plastic_steps=-2)


def test_env_params_change_the_physics():
    fam = _family(env_params={"length": 1.0, "masspole": 0.2})
    assert fam.params.length == 1.0
    assert fam.params.polemass_length == pytest.approx(0.2)
    assert fam.params.total_mass == pytest.approx(1.2)
    with pytest.raises(ValueError, match="task.env_params.lenght"):
        _family(env_params={"lenght": 1.0})
    with pytest.raises(ValueError, match="task.env: unknown environment"):
        _family(env="CartPole-v0")


def test_splits_differ():
    fam = _family()
    key = jax.random.PRNGKey(0)
    a, b = fam.sample(key, "train"), fam.sample(key, "test")
    assert not np.array_equal(a.reset_key, b.reset_key)


@pytest.mark.parametrize("env", ["Acrobot-v1", "Pendulum-v1"])
def test_other_environments_run(env):
    cfg = config.parse(
        {
            "task": {"name": "control", "env": env, "max_steps": 50},
            "network": {"hidden": [8]},
            "rule": {"name": "abcd", "per_synapse": False},
            "strategy": {"name": "open_es", "population_size": 4},
            "evaluation": {"instances": 2},
        }
    )
    exp = build(cfg)
    ret = backends.evaluate_genome(exp.family, exp.rule, exp.rule.init(jax.random.PRNGKey(0)), 3)
    r = np.asarray(ret["return"])
    assert np.all(np.isfinite(r)) and np.all(r <= 0)  # both give negative rewards per step
    assert np.all(r >= -50 * (16.3 if env == "Pendulum-v1" else 1.0))


def test_rules_needing_shapes_need_a_layered_network():
    with pytest.raises(ConfigError, match="needs a layered network"):
        build(config.parse({"rule": {"name": "abcd"}}))


@pytest.mark.slow  # its feature keeps a faster test in the default run
def test_control_run_eval_and_report_from_the_cli(write_config, tmp_path):
    """A per-synapse ABCD genome (a tuple of dicts) survives best_rule.json and eval."""
    from .conftest import cli_here

    cfg = {
        "name": "cp",
        "generations": 2,
        "task": {"name": "control", "max_steps": 30},
        "network": {"hidden": [4], "lr_decay": 0.0},
        "rule": {"name": "abcd"},
        "strategy": {"name": "open_es", "population_size": 4},
        "evaluation": {"instances": 1},
        "test": {"every": 1, "instances": 2, "final_instances": 3},
    }
    run_dir = tmp_path / "run"
    proc = cli_here("run", write_config(cfg), "--out", run_dir, "--quiet")
    assert proc.returncode == 0, proc.stderr
    proc = cli_here("eval", run_dir, "--instances", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    saved = json.loads((run_dir / "eval.json").read_text())["trained"]["evolved"]["return"]
    again = json.loads(proc.stdout)["rules"]["evolved"]["return"]
    assert again["mean"] == saved["mean"]  # the reloaded genome is the trained one
