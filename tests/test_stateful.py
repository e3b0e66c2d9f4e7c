"""Stateful neural rules: a GRU cell shared by every synapse, a hidden state per synapse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evoplastic as ep
from evoplastic import rules, tasks
from evoplastic.analysis import distill
from evoplastic.backends import evaluate_genome
from evoplastic.rules import Signals

from .conftest import small_config
from .test_distill import OJA, _mlp_like_oja, coefficient
from .test_rules import _locality_masks, _random_signals

FEATURES = ("pre", "post", "w", "err", "mod")


def _random_genome(rule, seed=0, scale=0.5):
    """A genome with every parameter random (flax initializes the GRU's biases to zero)."""
    g = rule.init(jax.random.PRNGKey(seed))
    leaves, tree = jax.tree.flatten(g)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(
        tree, [scale * jax.random.normal(k, np.shape(x)) for k, x in zip(keys, leaves, strict=True)]
    )


def test_registered_with_a_state_per_synapse():
    rule = rules.make("stateful", features=("pre", "post", "w"), state_size=4)
    assert rule.init_state((3, 5)).shape == (3, 5, 4)
    # a GRU of 4 units on 3 inputs (3 gates: input and recurrent kernels, 4 biases) + read-out
    assert rule.num_params() == 3 * (3 * 4 + 4 * 4) + 4 * 4 + (4 + 1)
    for bad, match in (
        ({"features": ("pre", "trace")}, "unknown signal 'trace'"),
        ({"state_size": 0}, "rule.state_size"),
    ):
        with pytest.raises(ValueError, match=match):
            rules.stateful(**bad)


def test_dw_and_next_state_are_local():
    """dw[i, j] and h'[i, j] depend on pre[j], post[i], w[i, j], err[i] and h[i, j] only."""
    rule = rules.stateful(features=FEATURES, state_size=3)
    genome = _random_genome(rule)
    sig = _random_signals(mod=0.3)
    h = jax.random.normal(jax.random.PRNGKey(7), (3, 4, 3))
    mask_pre, mask_post, mask_w = _locality_masks(3, 4)
    mask_h = np.einsum("ik,jl->ijkl", np.eye(3), np.eye(4))[..., None]  # [i, j, k, l, unit]
    mask_h = np.broadcast_to(mask_h, (3, 4, 3, 4, 3))

    def f(pre, post, w, err, state, which):
        s = Signals(pre=pre, post=post, w=w, err=err, mod=sig.mod, state=state)
        return rule.apply(genome, s)[which]

    for which in (0, 1):  # dw, then the next state (one more axis: the state's units)
        jacs = jax.jacobian(f, argnums=(0, 1, 2, 3, 4))(sig.pre, sig.post, sig.w, sig.err, h, which)
        masks = (mask_pre, mask_post, mask_w, mask_post, mask_h)
        for jac, mask in zip(jacs, masks, strict=True):
            jac = np.asarray(jac)
            if which == 1:  # h'[i, j, u]: the same mask for every unit u
                mask = np.broadcast_to(np.expand_dims(mask, 2), jac.shape)
            assert np.all(jac[mask == 0] == 0.0)
            assert np.any(jac[mask == 1] != 0.0)  # and the check is not vacuous


def test_the_rule_remembers():
    """Two synapses seeing the same signals now but different ones before change differently;
    without a state given, the rule starts from h = 0."""
    rule = rules.stateful(features=("pre", "post", "w"), state_size=4)
    genome = _random_genome(rule)
    w = jnp.zeros((1, 2))
    h = rule.init_state((1, 2))
    first = Signals(pre=jnp.array([1.0, -1.0]), post=jnp.array([1.0]), w=w, state=h)
    h = rule.next_state(genome, first)
    now = Signals(pre=jnp.array([0.5, 0.5]), post=jnp.array([0.3]), w=w, state=h)
    dw = np.asarray(rule.update(genome, now))
    assert abs(dw[0, 0] - dw[0, 1]) > 1e-4
    fresh = rule.update(genome, now.replace(state=()))
    np.testing.assert_allclose(fresh, rule.update(genome, now.replace(state=0 * h)))


def _pca_config(**sections):
    cfg = small_config(
        generations=40,
        task={"dim": 4, "steps": 200},
        strategy={"name": "cma_es", "population_size": 16, "std_init": 0.3},
        evaluation={"instances": 4},
        test={"every": 0, "instances": 8, "final_instances": 8},
        checkpoint={"every": 40},
    )
    cfg["rule"] = {"name": "stateful", "features": ["pre", "post", "w"], "state_size": 3}
    cfg.update(sections)
    return cfg


def _held_out_loss(exp, genome):
    return float(np.mean(evaluate_genome(exp.family, exp.rule, genome, 32)["loss"]))


def test_trained_by_es(tmp_path):
    exp = ep.build(ep.config.parse(_pca_config()))
    before = _held_out_loss(exp, exp.genome_template)
    ep.prepare_run_dir(tmp_path / "run", exp)
    after = _held_out_loss(exp, ep.train(exp, tmp_path / "run").genome)
    assert after < 0.5 * before, (before, after)


def test_trained_by_backprop(tmp_path):
    meta = {
        "optimizer": "gradient",
        "gradient": {"optimizer": {"name": "adam", "learning_rate": 0.03}, "remat": "none"},
    }
    exp = ep.build(ep.config.parse(_pca_config(generations=40, meta=meta)))
    start = exp.init_state(jax.random.PRNGKey(0)).genome
    before = _held_out_loss(exp, start)
    ep.prepare_run_dir(tmp_path / "run", exp)
    after = _held_out_loss(exp, ep.train(exp, tmp_path / "run").genome)
    assert after < 0.5 * before, (before, after)


def _memoryless_copy(mlp_genome):
    """The stateful genome that computes the given one-hidden-layer MLP rule: the update
    gate shut (z ~ 0, so h' = n), no recurrent input, and n = tanh(the MLP's first layer)."""
    dense0, dense1 = mlp_genome["Dense_0"], mlp_genome["Dense_1"]
    n_in, width = np.shape(dense0["kernel"])
    zero_h = jnp.zeros((width, width))
    cell = {
        "in": {"kernel": dense0["kernel"], "bias": dense0["bias"]},
        "hn": {"kernel": zero_h, "bias": jnp.zeros(width)},
        "iz": {"kernel": jnp.zeros((n_in, width)), "bias": jnp.full(width, -40.0)},
        "hz": {"kernel": zero_h},
        "ir": {"kernel": jnp.zeros((n_in, width)), "bias": jnp.zeros(width)},
        "hr": {"kernel": zero_h},
    }
    return {"cell": cell, "readout": {"kernel": dense1["kernel"], "bias": dense1["bias"]}}


def test_distilled_through_its_read_out():
    """A stateful rule whose read-out computes Oja's rule (an MLP fitted to it, copied into
    the cell) is distilled into Oja's two terms, from the signals of its own inner loop."""
    mlp, mlp_genome = _mlp_like_oja()
    rule = rules.stateful(features=("pre", "post", "w"), state_size=32, out_scale=1.0)
    genome = _memoryless_copy(mlp_genome)
    sig = _random_signals()
    sig = sig.replace(state=rule.init_state(sig.w.shape) + 1.0)  # the state is ignored
    np.testing.assert_allclose(rule.update(genome, sig), mlp.update(mlp_genome, sig), atol=1e-5)
    pca = tasks.make("pca", dim=8, steps=200)
    d = distill.distill_rule(pca, rule, genome, fit_instances=2, heldout_instances=2)
    assert d.r2 > 0.9 and set(d.dominant(2)) == set(OJA), d.equation
    for term, value in OJA.items():
        assert coefficient(d, term) == pytest.approx(value, rel=0.15), d.equation
