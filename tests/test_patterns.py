"""The ``patterns`` task, the plastic recurrent network and the LSTM baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import build, rules, tasks
from evoplastic.analysis import recurrent_baseline as rb
from evoplastic.config import ConfigError, parse
from evoplastic.tasks.patterns import completion_score


def _family(n_bits=40, alpha="shared", learn_w=False, **params):
    network = {"activation": "tanh", "lr": 1.0, "plastic": {"alpha": alpha, "learn_w": learn_w}}
    return tasks.make("patterns", network=network, n_bits=n_bits, **params)


def _keys(n, seed=0):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(n))


def test_episode_shows_each_pattern_then_a_half_zeroed_copy():
    fam = _family(n_bits=40, n_patterns=3, presentations=2, present_steps=5, pause_steps=2)
    task = fam.sample(jax.random.PRNGKey(3), "train")
    xs, target, mask = map(np.asarray, (task.xs, task.target, task.mask))
    assert xs.shape == (fam.steps, 40) and fam.steps == 2 * 3 * 7 + fam.test_steps
    assert mask.sum() == 20  # exactly half the bits are zeroed
    test = xs[-fam.test_steps :]
    np.testing.assert_array_equal(test, np.broadcast_to(target * (1 - mask), test.shape))
    study = xs[: -fam.test_steps].reshape(6, 7, 40)
    assert np.all(study[:, 5:] == 0)  # pauses
    shown = study[:, 0]
    assert np.all(study[:, :5] == shown[:, None])  # one pattern per presentation
    distinct = np.unique(shown, axis=0)
    assert len(distinct) == 3 and np.all(np.abs(distinct) == 1)
    for p in distinct:  # each pattern shown once in each of the two presentation rounds
        assert sum(np.array_equal(p, s) for s in shown[:3]) == 1
        assert sum(np.array_equal(p, s) for s in shown[3:]) == 1
    assert any(np.array_equal(target, p) for p in distinct)
    other = fam.sample(jax.random.PRNGKey(3), "test")  # the held-out stream differs
    assert not np.array_equal(np.asarray(other.xs), xs)


def test_loss_counts_only_the_zeroed_bits():
    task = _family(n_bits=10).sample(jax.random.PRNGKey(0), "test")
    t, m = np.asarray(task.target), np.asarray(task.mask)
    loss, metrics = completion_score(task.target, task)
    assert float(loss) == 0.0 and float(metrics["bit_accuracy"]) == 1.0
    shown_bit, zeroed_bit = int(np.argmin(m)), int(np.argmax(m))
    y = t.copy()
    y[shown_bit] *= -1  # a wrong shown bit does not count
    assert float(completion_score(jnp.asarray(y), task)[0]) == 0.0
    y[zeroed_bit] *= -1  # a wrong completed bit does
    loss, metrics = completion_score(jnp.asarray(y), task)
    assert float(loss) == pytest.approx(4.0 / m.sum())
    assert float(metrics["bit_accuracy"]) == pytest.approx(1 - 1 / m.sum())


def test_hinge_loss_scores_the_signs_of_the_completed_bits():
    """``loss: hinge``: max(0, margin - y * target) on the zeroed bits; a right sign beyond
    the margin costs nothing however small the output, a wrong one costs its size."""
    task = _family(n_bits=10).sample(jax.random.PRNGKey(0), "test")
    t, m = np.asarray(task.target), np.asarray(task.mask)

    def hinge(y):
        loss, metrics = completion_score(jnp.asarray(y, jnp.float32), task, "hinge", 0.1)
        return float(loss), float(metrics["bit_accuracy"])

    assert hinge(0.2 * t) == (0.0, 1.0)  # small but right: no loss (squared error: 0.64)
    assert hinge(t)[0] == hinge(0.11 * t)[0] == 0.0
    assert hinge(0.05 * t)[0] == pytest.approx(0.05)  # inside the margin
    shown_bit, zeroed_bit = int(np.argmin(m)), int(np.argmax(m))
    y = 0.5 * t
    y[shown_bit] *= -1  # a wrong shown bit does not count
    assert hinge(y) == (0.0, 1.0)
    y[zeroed_bit] *= -1  # a wrong completed bit costs margin + |y|
    loss, acc = hinge(y)
    assert loss == pytest.approx(0.6 / m.sum())
    assert acc == pytest.approx(1 - 1 / m.sum())
    with pytest.raises(ValueError, match="task.loss"):
        _family(n_bits=10, loss="logistic")
    with pytest.raises(ValueError, match="task.margin"):
        _family(n_bits=10, loss="hinge", margin=0.0)


def test_bad_loss_option_is_one_line_and_exit_2(tmp_path, capsys):
    from evoplastic.cli import main

    out = tmp_path / "run"
    for bad, message in (
        ("task.loss=hing", "task.loss: must be one of squared, hinge"),
        ("task.margin=2", "task.margin: must be in (0, 1]"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "experiments/patterns.yaml", bad, "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
        assert not out.exists()


def test_step_matches_miconis_update():
    """Parity with the paper's equations, written out in numpy."""
    fam = _family(n_bits=7, alpha="synapse", learn_w=True)
    net = fam.network
    rule = rules.with_parts(rules.make("hebb_trace"), net.genome_parts())
    rng = np.random.default_rng(0)
    w, alpha, hebb = (rng.normal(size=(7, 7)).astype(np.float32) for _ in range(3))
    y0, x = rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32)
    genome = {"rule": {"eta": jnp.float32(0.2)}, "w": jnp.asarray(w), "alpha": jnp.asarray(alpha)}
    state = net.init(rule).replace(y=jnp.asarray(y0), hebb=jnp.asarray(hebb))
    new = net.step(state, jnp.asarray(x), rule, genome)
    y = np.tanh((w + alpha * hebb) @ y0 + x)
    np.testing.assert_allclose(np.asarray(new.y), y, rtol=1e-5, atol=1e-6)
    want = 0.8 * hebb + 0.2 * np.outer(y, y0)  # hebb[post, pre]
    np.testing.assert_allclose(np.asarray(new.hebb), want, rtol=1e-5, atol=1e-6)


def test_trace_change_is_local():
    """The change of trace [i, j] depends on pre[j], post[i] and trace[i, j] only."""
    rule = rules.make("hebb_trace", oja=True)
    g = rule.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    pre, post, w = rng.normal(size=4), rng.normal(size=3), rng.normal(size=(3, 4))

    def dw(pre, post, w):
        return rule.update(g, rules.Signals(pre=pre, post=post, w=w))

    jp, jq, jw = jax.jacobian(dw, argnums=(0, 1, 2))(*map(jnp.asarray, (pre, post, w)))
    eye3, eye4 = np.eye(3), np.eye(4)
    assert np.all(np.asarray(jp)[~eye4.astype(bool)[None, :, :].repeat(3, 0)] == 0)
    assert np.all(np.asarray(jq) * (1 - eye3[:, None, :]) == 0)
    off = 1 - np.einsum("ik,jl->ijkl", eye3, eye4)
    assert np.all(np.asarray(jw) * off == 0)


@jax.jit
def _hopfield(alpha, keys):
    fam = _family(n_bits=60)
    rule = rules.with_parts(rules.make("hebb_trace"), fam.network.genome_parts())
    genome = {"rule": {"eta": jnp.float32(0.01)}, "alpha": alpha}
    return jax.vmap(lambda k: fam.inner_loop(rule, genome, fam.sample(k, "test"), k))(keys)[1]


def test_hand_set_hebbian_network_completes_patterns():
    """A Hopfield-style check: w = 0, one small alpha, Miconi's trace with eta = 0.01
    complete 99% of the zeroed bits; without plasticity (alpha = 0) they get no drive and
    stay at zero (none completed)."""
    keys = _keys(64)
    plastic = float(jnp.mean(_hopfield(jnp.float32(0.01), keys)["bit_accuracy"]))
    frozen = float(jnp.mean(_hopfield(jnp.float32(0.0), keys)["bit_accuracy"]))
    assert plastic >= 0.99
    assert frozen == 0.0


def _config(**over):
    data = {
        "task": {"name": "patterns", "n_bits": 12, "n_patterns": 2, "presentations": 1},
        "network": {"activation": "tanh", "lr": 1.0},
        "rule": {"name": "hebb_trace"},
        "strategy": {"name": "open_es", "population_size": 8, "std_init": 0.01},
        "evaluation": {"instances": 2},
        "generations": 2,
    }
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse(data)


def test_meta_gradient_lowers_the_loss():
    """Backprop through the episodes (meta.optimizer: gradient) improves the genome."""
    exp = build(
        _config(
            meta={
                "optimizer": "gradient",
                "gradient": {"remat": "none", "optimizer": {"name": "adam", "learning_rate": 0.01}},
            },
            evaluation={"instances": 16},
        )
    )
    step = exp.generation_step()
    state = exp.init_state(jax.random.PRNGKey(0))
    losses = []
    for g in range(30):
        state, m = step(state, jax.random.PRNGKey(0), g)
        losses.append(float(m["mean_loss"]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.parametrize(
    "rule", [{"name": "polynomial", "terms": ["pre*post", "w"]}, {"name": "abcd"}, {"name": "bcm"}]
)
def test_other_rule_families_drive_the_same_network(rule):
    exp = build(_config(rule=rule))
    genome = exp.rule.init(jax.random.PRNGKey(0))
    loss = exp.fitness()(genome, jax.random.PRNGKey(1))
    assert np.isfinite(float(loss))
    assert set(exp.rule.parts(genome)) == {"w", "alpha"}  # the network's own parts


def test_bad_network_options_are_config_errors():
    with pytest.raises(ConfigError, match="network.plastic.alpah: unknown option"):
        build(_config(network={"plastic": {"alpah": "shared"}}))
    with pytest.raises(ConfigError, match="network.plastic.alpha: unknown"):
        build(_config(network={"plastic": {"alpha": "row"}}))
    with pytest.raises(ConfigError, match="does not fit"):
        build(_config(network={"kind": "layered"}))


def test_lstm_parameter_count_matches_flax():
    model = rb.LSTMReader(hidden=9, n_out=12)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((5, 12)))
    count = sum(x.size for x in jax.tree.leaves(params))
    assert count == rb.lstm_params(12, 9, 12)
    assert rb.lstm_params(12, rb.matching_hidden(12, 12, 500), 12) >= 500
    assert rb.lstm_params(12, rb.matching_hidden(12, 12, 500) - 1, 12) < 500


@pytest.mark.slow  # 40 LSTM steps twice; the baseline keeps a 3-step test in the default run
def test_lstm_baseline_trains_on_the_same_budget():
    exp = build(_config(generations=40, evaluation={"instances": 8}))
    out = rb.lstm_baseline(exp, lrs=(1e-2,), instances=16)
    assert out["params"] >= out["plastic_genome_params"]
    assert out["episodes"] == 320 and out["optimizer_steps"] == 40
    assert 0.0 <= out["test"]["bit_accuracy"]["mean"] <= 1.0
    _, _, losses = rb.train_lstm(exp.family, completion_score, 8, 1e-2, 40, 8, 0)
    assert float(jnp.mean(losses[-5:])) < float(jnp.mean(losses[:5]))  # it learns something


def test_lstm_baseline_trains_and_scores_on_the_tasks_loss():
    """With ``task.loss: hinge`` the LSTM's validation and test losses are hinge losses
    (at most ``margin + 1``; the squared error of outputs near zero is about 1)."""
    exp = build(_config(generations=3, task={"loss": "hinge", "margin": 0.1}))
    out = rb.lstm_baseline(exp, lrs=(1e-3,), instances=16)
    assert (out["loss"], out["margin"]) == ("hinge", 0.1)
    assert max(out["validation_loss_by_learning_rate"].values()) < 0.3
    assert out["test"]["loss"]["mean"] < 0.3


def test_lstm_baseline_command_rejects_bad_input(tmp_path, capsys):
    assert rb.main([str(tmp_path / "missing.yaml")]) == 2
    cfg = tmp_path / "pca.yaml"
    cfg.write_text("task: {name: pca}\n")
    assert rb.main([str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: task.name: the LSTM baseline needs task patterns")
    assert not list(tmp_path.glob("*.json"))
