"""``evaluation.loss_clip``: each meta-training instance's loss is capped (a non-finite one
counts as the cap) before the mean, so a few instances that blow up cost a bounded amount.
Without it the fitness is the plain mean, computed as before, and the digest of an existing
config does not change."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import build, config
from evoplastic.config import ConfigError, config_digest
from evoplastic.config.yaml_io import experiment_dump

SIN = {"name": "sinusoid", "support_size": 10, "query_size": 20, "epochs": 5, "bias": True,
       "input_scale": 1.0}  # fmt: skip
NET = {"hidden": [16], "activation": "tanh", "output_activation": "linear", "feedback": "random",
       "lr": 1.0, "w_init_std": 1.0}  # fmt: skip
RULE = {"name": "polynomial", "per_layer": True, "terms": ["err*pre", "w"]}


def _exp(**evaluation):
    data = {"task": SIN, "network": NET, "rule": RULE,
            "evaluation": {"instances": 16, **evaluation}}  # fmt: skip
    return build(config.parse(data))


def _per_instance(exp, genome, key, instances):
    """Each meta-training instance's loss, as the fitness draws them."""
    fam, rule = exp.family, exp.rule

    def one(j):
        k = jax.random.fold_in(key, j)
        return fam.inner_loop(rule, genome, fam.sample(k, "train"), k)[0]

    return np.asarray(jax.vmap(one)(jnp.arange(instances)))


def _genome(exp, hidden, out):
    """``dw = c * err*pre`` with ``c`` = ``hidden`` in layer 0 and ``out`` in layer 1."""
    return exp.unflatten_genome([hidden, 0.0, out, 0.0])


def test_clipped_fitness_caps_each_instance_and_counts_a_blow_up_as_the_cap():
    plain, clipped = _exp(), _exp(loss_clip=25.0)
    key = jax.random.PRNGKey(5)
    # a delta rule with too large a step in the output layer: some instances learn, some
    # blow up (a few to inf)
    wild = _genome(plain, 0.03, 0.35)
    losses = _per_instance(plain, wild, key, 16)
    finite = losses[np.isfinite(losses)]
    assert (~np.isfinite(losses)).any() and (finite > 25).any() and (finite < 25).any()
    assert not np.isfinite(plain.fitness()(wild, key))  # one blow-up: the plain mean is lost
    expected = np.where(np.isfinite(losses), np.minimum(losses, 25.0), 25.0).mean()
    got = float(clipped.fitness()(wild, key))
    assert np.isclose(got, expected, rtol=1e-6) and got <= 25.0
    # a gentle rule: nothing reaches the cap, and the clipped fitness is the plain one
    gentle = _genome(plain, 0.03, 0.03)
    losses = _per_instance(plain, gentle, key, 16)
    assert np.isfinite(losses).all() and losses.max() < 25.0
    assert float(clipped.fitness()(gentle, key)) == float(plain.fitness()(gentle, key))
    # a cap below some instances' losses changes the fitness, and ranks by it
    low = _exp(loss_clip=float(np.median(losses)))
    assert float(low.fitness()(gentle, key)) < float(plain.fitness()(gentle, key))


def test_default_is_the_plain_mean_and_leaves_the_digest_alone():
    exp = _exp()
    key = jax.random.PRNGKey(1)
    genome = _genome(exp, 0.03, 0.05)
    losses = _per_instance(exp, genome, key, 16)
    assert float(exp.fitness()(genome, key)) == float(jnp.mean(jnp.asarray(losses)))
    assert "loss_clip" not in experiment_dump(exp.config)
    assert config_digest(exp.config) != config_digest(_exp(loss_clip=25.0).config)


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), "big"])
def test_bad_loss_clip_names_the_field(value):
    with pytest.raises(ConfigError, match=r"^evaluation.loss_clip: "):
        _exp(loss_clip=value)


def test_loss_clip_is_for_whole_episodes():
    data = {"task": {"name": "pca"}, "evaluation": {"loss_clip": 1.0},
            "meta": {"optimizer": "gradient", "truncation": 10}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"^evaluation.loss_clip: only over whole episodes"):
        build(config.parse(data))


def test_meta_gradient_caps_each_instance_and_a_capped_one_adds_no_gradient():
    """With the meta-gradient the cap is the ES fitness's: the loss is the capped mean, and
    an instance above the cap contributes nothing to the gradient."""
    grad_data = {"optimizer": "gradient", "gradient": {"remat": "none"}}
    data = {"task": SIN, "network": NET, "rule": RULE, "meta": grad_data,
            "evaluation": {"instances": 16}}  # fmt: skip
    plain = build(config.parse(data))
    clipped = build(config.parse({**data, "evaluation": {"instances": 16, "loss_clip": 25.0}}))
    genome = _genome(plain, 0.03, 0.28)  # a few instances above 25, all finite
    outer, key = plain.outer, jax.random.PRNGKey(5)
    work, _ = outer.ask(outer.init(key), key, 0)
    work = {**work, "genome": genome}
    _, (per, _, _) = outer.shard_loss(genome, work, 0)
    per = np.asarray(per)
    assert np.isfinite(per).all() and (per > 25).any() and (per < 25).any()
    got = clipped.outer.evaluate(work, 0)
    np.testing.assert_allclose(got["loss"], np.minimum(per, 25.0).sum(), rtol=1e-5)
    # the gradient is the sum over the instances below the cap only
    below = per < 25.0

    def kept_sum(g):
        return jnp.sum(jnp.where(below, outer.shard_loss(g, work, 0)[1][0], 0.0))

    want = jax.grad(kept_sum)(genome)
    for a, b in zip(jax.tree.leaves(got["grad"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # instances that blow up to inf or nan count as the cap and leave the gradient finite;
    # without the cap the step's loss is not finite (tell skips it)
    wild = _genome(plain, 0.03, 0.4)  # 3 of 16 not finite, 3 below the cap
    work = {**work, "genome": wild}
    per = np.asarray(outer.shard_loss(wild, work, 0)[1][0])
    assert (~np.isfinite(per)).any() and (per < 25).any()
    got = clipped.outer.evaluate(work, 0)
    expected = np.where(np.isfinite(per), np.minimum(per, 25.0), 25.0).sum()
    np.testing.assert_allclose(got["loss"], expected, rtol=1e-5)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(got["grad"]))
    assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(got["grad"]))
    assert not np.isfinite(outer.evaluate(work, 0)["loss"])
    # every instance at the cap: no gradient, and the step is skipped (genome and optimizer
    # state kept) instead of letting Adam's momentum move the genome
    gone = _genome(plain, 0.03, 1.5)
    state = clipped.outer.init(key)
    state = state.replace(genome=gone)
    work = {**work, "genome": gone}
    results = clipped.outer.evaluate(work, 0)
    assert float(results["loss"]) == pytest.approx(25.0 * 16)
    stacked = jax.tree.map(lambda x: x[None], results)  # one shard
    new_state, metrics = clipped.outer.tell(state, work, stacked, key, 0)
    assert int(metrics["nonfinite"]) == 1 and int(new_state.skipped) == 1
    for a, b in zip(jax.tree.leaves(new_state.genome), jax.tree.leaves(gone), strict=True):
        np.testing.assert_array_equal(a, b)
