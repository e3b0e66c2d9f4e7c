import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from evoplastic import backends, build, config, rules, tasks
from evoplastic.analysis import baselines
from evoplastic.config import ConfigError
from evoplastic.tasks.supervised import _digits

NET = {"hidden": [16], "feedback": "random", "output_activation": "linear", "lr": 1.0,
       "lr_decay": 0.0}  # fmt: skip


def _labels(x):
    """True digit labels of rows of the bundled data set (matched exactly)."""
    x_all, y_all = _digits()
    idx = [int(np.flatnonzero((x_all == row).all(axis=1))[0]) for row in np.asarray(x)]
    return y_all[idx]


def test_sinusoid_instances():
    fam = tasks.make("sinusoid", network=NET, support_size=10, query_size=20)
    t = fam.sample(jax.random.PRNGKey(0), "train")
    assert t.xs.shape == (10, 1) and t.qy.shape == (20, 1) and float(t.mask.sum()) == 10
    x = np.concatenate([t.xs, t.qx])[:, 0] * 5.0
    y = np.concatenate([t.ys, t.qy])[:, 0]
    # y is one sinusoid A sin(x + phi): fit A and phi by least squares, residual ~ 0
    basis = np.stack([np.sin(x), np.cos(x)], 1)
    coef, res, *_ = np.linalg.lstsq(basis, y, rcond=None)
    assert res[0] < 1e-6 and 0.1 <= np.hypot(*coef) <= 5.0
    u = fam.sample(jax.random.PRNGKey(0), "test")
    assert not np.allclose(t.ys, u.ys)


def test_sinusoid_bias_input_lets_the_network_fit_even_functions():
    """Without the constant input a layered network is odd in x and can fit only the odd
    part of a sinusoid; with ``bias: true`` it is not odd."""
    net = dict(NET, hidden=[8], w_init_std=2.0)
    key = jax.random.PRNGKey(0)
    plain = tasks.make("sinusoid", network=net)
    biased = tasks.make("sinusoid", network=net, bias=True, input_scale=1.0)
    t, u = plain.sample(key, "test"), biased.sample(key, "test")
    np.testing.assert_allclose(u.xs[:, 0], 5.0 * t.xs[:, 0], rtol=1e-6)  # raw x, same draw
    np.testing.assert_array_equal(u.xs[:, 1], 1.0)
    np.testing.assert_array_equal(u.ys, t.ys)
    x = jnp.linspace(-1.0, 1.0, 7)[:, None]
    for fam, odd in ((plain, True), (biased, False)):
        ws = fam.network.init(key).ws
        inputs = jnp.concatenate([x, jnp.ones_like(x)], 1) if fam.bias else x
        mirror = inputs.at[:, 0].multiply(-1.0)
        f = jax.vmap(lambda v, ws=ws, fam=fam: fam.network.forward(ws, v)[-1])
        assert np.allclose(f(inputs), -f(mirror), atol=1e-6) == odd
    with pytest.raises(ValueError, match="task.input_scale"):
        tasks.make("sinusoid", network=net, input_scale=0.0)


def test_digits_classes_are_disjoint_and_labels_consistent():
    fam = tasks.make("digits", network=NET, ways=3, shots=2, query_per_class=4,
                     train_classes=[0, 1, 2, 3], test_classes=[6, 7, 8])  # fmt: skip
    for split, allowed in (("train", {0, 1, 2, 3}), ("test", {6, 7, 8})):
        for i in range(5):
            t = fam.sample(jax.random.PRNGKey(i), split)
            labels = _labels(np.concatenate([t.xs, t.qx]))
            assert set(labels) <= allowed and len(set(labels)) == 3
            onehot = np.argmax(np.concatenate([t.ys, t.qy]), 1)
            # each task label stands for one digit throughout the instance
            assert all(len(set(labels[onehot == c])) == 1 for c in range(3))
    with pytest.raises(ValueError, match="disjoint"):
        tasks.make("digits", network=NET, test_classes=[4, 5, 6, 7, 8])
    semi = tasks.make("digits", network=NET, label_fraction=0.4)
    masks = [float(semi.sample(jax.random.PRNGKey(i), "train").mask.mean()) for i in range(20)]
    assert 0.3 < np.mean(masks) < 0.5


def test_delta_rule_learns_and_zero_rule_does_not():
    """A local delta rule (err*pre) on the output layer learns digits well above chance."""
    fam = tasks.make("digits", network=NET | {"feedback": "none"}, epochs=3)
    rule = rules.polynomial(("err*pre",))
    learned = backends.evaluate_genome(fam, rule, jnp.array([0.5]), 40)["accuracy"]
    frozen = backends.evaluate_genome(fam, rule, jnp.array([0.0]), 40)["accuracy"]
    assert np.mean(learned) > 0.5 > np.mean(frozen) + 0.15


def test_backprop_baseline_trains_and_is_tuned():
    fam = tasks.make("digits", network=NET, epochs=2)
    keys = tasks.test_instance_keys(20)
    tasks_ = [fam.sample(k, "test") for k in keys[:20]]
    untrained = np.mean([float(fam.query(fam.network.init(t.weight_key).ws, t)[0]) for t in tasks_])
    sgd = np.mean([float(tasks.backprop_step(fam, optax.sgd(0.1), None, t)[0]) for t in tasks_])
    assert sgd < 0.7 * untrained
    lr = baselines.tune_learning_rate(fam, "sgd", instances=8)
    assert lr in baselines.LEARNING_RATES
    tuned = baselines.evaluate_backprop(fam, "sgd", 20)
    assert np.isclose(float(tuned["lr"][0]), lr)
    worst = baselines._losses(fam, "sgd", [baselines.LEARNING_RATES[0]], keys, "test")[0]
    assert np.mean(tuned["loss"]) < np.mean(np.asarray(worst))


def test_per_layer_polynomial():
    cfg = config.parse(
        {
            "task": {"name": "sinusoid"},
            "network": NET,
            "rule": {"name": "polynomial", "per_layer": True, "terms": ["err*pre", "w"]},
        }  # fmt: skip
    )
    exp = build(cfg)
    assert np.shape(exp.genome_template) == (2, 2)
    assert "layer 1:" in exp.rule.describe(jnp.ones((2, 2)))
    with pytest.raises(ConfigError, match="rule.per_layer"):
        build(config.parse({"rule": {"name": "polynomial", "per_layer": True}}))


def test_learned_initial_weights_are_used_by_rule_and_backprop():
    cfg = config.parse(
        {
            "task": {"name": "digits", "epochs": 1},
            "network": NET | {"learn_init": True},
            "rule": {"name": "polynomial", "per_layer": True, "terms": ["err*pre"]},
        }  # fmt: skip
    )
    exp = build(cfg)
    g = exp.genome_template
    assert set(g) == {"rule", "w0"} and [w.shape for w in g["w0"]] == [(16, 64), (5, 16)]
    # with a zero rule the network never changes: its query loss is that of w0 itself
    frozen = {"rule": jnp.zeros_like(g["rule"]), "w0": g["w0"]}
    task = exp.family.sample(jax.random.PRNGKey(0), "test")
    loss, _ = exp.family.inner_loop(exp.rule, frozen, task)
    np.testing.assert_allclose(loss, exp.family.query(g["w0"], task)[0], rtol=1e-6)
    # backprop with learning rate 0 keeps exactly the same initial weights
    sgd0 = tasks.backprop_step(exp.family, optax.sgd(0.0), g["w0"], task)[0]
    np.testing.assert_allclose(sgd0, loss, rtol=1e-6)
    flat = exp.flat_genome(g)
    assert len(flat) == 2 + 16 * 64 + 5 * 16
    back = exp.unflatten_genome(flat)
    np.testing.assert_array_equal(back["w0"][1], g["w0"][1])


@pytest.mark.parametrize(
    "name", ["sinusoid", pytest.param("digits", marks=pytest.mark.slow)]
)  # both run the same code (_Supervised); digits compiles slowly
@pytest.mark.parametrize("learn_init", [False, True])
def test_stepwise_inner_loop_equals_inner_loop(name, learn_init):
    """init_inner + inner_step for every step + score is the family's own inner loop, and
    so is its meta-gradient (what meta.optimizer: gradient differentiates)."""
    from evoplastic import meta

    params = {"support_size": 5, "epochs": 2} if name == "sinusoid" else {"ways": 3, "shots": 2}
    data = {"task": {"name": name, **params}, "network": NET | {"learn_init": learn_init},
            "rule": {"name": "polynomial", "per_layer": True,
                     "terms": ["err*pre", "err", "post^2*w", "pre*post"]}}  # fmt: skip
    exp = build(config.parse(data))
    fam, rule = exp.family, exp.rule
    flat = np.asarray(exp.flat_genome(exp.genome_template))
    noise = 0.03 * np.asarray(jax.random.normal(jax.random.PRNGKey(5), flat.shape))
    genome = exp.unflatten_genome(flat + noise)
    task = fam.sample(jax.random.PRNGKey(7), "train")

    def stepwise(g):
        loss, metrics, state = meta.unroll_instance(
            fam, rule, g, task, fam.init_inner(task), 0, fam.steps, "nested"
        )
        return loss, (metrics, state.t)

    (loss, (metrics, t)), grad = jax.value_and_grad(stepwise, has_aux=True)(genome)
    (want, want_metrics), want_grad = jax.value_and_grad(
        lambda g: fam.inner_loop(rule, g, task), has_aux=True
    )(genome)
    assert int(t) == fam.steps
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for key, value in want_metrics.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5)
    flat_grad, want_flat = exp.flat_genome(grad), exp.flat_genome(want_grad)
    assert np.linalg.norm(want_flat) > 1e-3 and np.all(np.isfinite(want_flat))
    np.testing.assert_allclose(flat_grad, want_flat, rtol=1e-3, atol=1e-5)
    # the genome matters (the comparison is not between two constant functions)
    other, _ = fam.inner_loop(rule, jax.tree.map(jnp.zeros_like, genome), task)
    assert abs(float(other) - float(want)) > 1e-3


@pytest.mark.slow  # digits compiles for ~10 s on 2 cores
def test_backprop_meta_optimizer_learns_digits():
    """meta.optimizer: gradient through the layered, random-feedback inner loop raises the
    held-out accuracy of the rule from chance (the zero rule) within 25 steps."""
    cfg = config.parse(
        {
            "task": {"name": "digits", "ways": 3, "shots": 3, "query_per_class": 5},
            "network": NET | {"hidden": [8], "w_init_std": 0.3},
            "rule": {"name": "polynomial", "per_layer": True, "terms": ["err*pre", "err"]},
            "evaluation": {"instances": 8},
            "meta": {
                "optimizer": "gradient",
                "gradient": {
                    "optimizer": {"name": "adam", "learning_rate": 0.01},
                    "remat": "none",
                    "init_std": 0.0,
                },
            },
        }  # fmt: skip
    )
    exp = build(cfg)
    step = exp.generation_step()
    run_key = jax.random.PRNGKey(0)
    state = exp.init_state(run_key)
    before = backends.evaluate_genome(exp.family, exp.rule, exp.mean_genome(state), 64)
    for g in range(25):
        state, m = step(state, run_key, g)
    after = backends.evaluate_genome(exp.family, exp.rule, exp.mean_genome(state), 64)
    assert int(m["skipped"]) == 0
    assert float(np.mean(before["accuracy"])) < 0.4  # chance is 1/3
    assert float(np.mean(after["accuracy"])) > 0.6
    assert float(np.mean(after["loss"])) < float(np.mean(before["loss"])) - 0.2
