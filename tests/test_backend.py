from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import backends, build, config, meta
from evoplastic.backends import make_generation_step, member_keys, sanitize

from .conftest import small_config


@pytest.mark.slow  # its feature keeps a faster test in the default run
def test_member_fitness_does_not_depend_on_sharding():
    """Evaluating the population in shards gives the same fitness as all at once."""
    for common in (True, False):
        exp = build(config.parse(small_config(evaluation={"common_instances": common})))
        fit = exp.fitness()
        pop = jax.random.normal(jax.random.PRNGKey(0), (8, 4)) * 0.3
        key = jax.random.PRNGKey(5)
        whole = backends.evaluate_population(fit, pop, key, common)
        parts = [
            backends.evaluate_population(fit, pop[s], key, common, offset=s.start)
            for s in (slice(0, 3), slice(3, 8))
        ]
        np.testing.assert_allclose(whole, np.concatenate(parts), rtol=1e-6)
        # a member's fitness depends on its index, not on its neighbours
        alone = backends.evaluate_population(fit, pop[5:6], key, common, offset=5)
        np.testing.assert_allclose(alone, whole[5:6], rtol=1e-6)
        # identical genomes score identically with common instances, differently without
        oja = jnp.array([1.0, -1.0, 0.0, 0.0])
        twins = backends.evaluate_population(fit, jnp.stack([oja, oja]), key, common)
        assert (twins[0] == twins[1]) == common
    keys = member_keys(key, jnp.arange(3))
    assert len({tuple(np.asarray(k)) for k in keys}) == 3


def test_sanitize_ranks_nonfinite_worst_and_counts():
    raw = jnp.array([0.5, jnp.nan, 2.0, jnp.inf, -jnp.inf])
    fit, n = sanitize(raw)
    assert int(n) == 3
    assert np.all(np.isfinite(fit))
    assert np.all(np.asarray(fit)[[1, 3, 4]] > 2.0)
    fit, n = sanitize(jnp.array([jnp.nan, jnp.nan]))
    assert int(n) == 2 and np.all(np.isfinite(fit))


def test_nonfinite_losses_never_poison_the_strategy():
    """Half the population returns NaN or inf every generation; the run goes on and learns."""
    target = jnp.array([0.5, -0.5])

    def fitness(genome, key):
        loss = jnp.sum((genome - target) ** 2)
        bad = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5)
        return jnp.where(bad, jnp.where(genome[0] > 0.5, jnp.inf, jnp.nan), loss)

    for name in ("cma_es", "open_es", "snes"):
        es, p = meta.make(name, 16, jnp.zeros(2), std_init=0.3)
        step = make_generation_step(es, p, fitness, common_instances=False)
        state = es.init(jax.random.PRNGKey(0), jnp.zeros(2), p)
        counted = 0
        for g in range(80):
            state, m = step(state, jax.random.PRNGKey(3), g)
            counted += int(m["nonfinite"])
            assert np.isfinite(float(m["mean_loss"]))
        assert counted > 0
        leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves if x.size and x.ndim)
        assert float(jnp.sum((es.get_mean(state) - target) ** 2)) < 0.05, name


def test_no_recompilation_after_first_generation():
    exp = build(config.parse(small_config()))
    step = exp.generation_step()
    run_key = jax.random.PRNGKey(0)
    state = exp.init_state(run_key)
    for g in range(4):
        state, _ = step(state, run_key, g)
    assert step._cache_size() == 1


def test_generation_is_deterministic():
    exp = build(config.parse(small_config()))
    run_key = jax.random.PRNGKey(0)
    outs = []
    for _ in range(2):
        step = exp.generation_step()
        state = exp.init_state(run_key)
        for g in range(3):
            state, m = step(state, run_key, g)
        outs.append(np.asarray(exp.mean_genome(state)))
    np.testing.assert_array_equal(*outs)


POLICY = Path(__file__).resolve().parents[1] / "experiments" / "selection" / "policy.npz"
OUTER_LOOPS = {
    "es": {"strategy": {"name": "open_es"}, "evaluation": {"shard_size": 3}},
    "learned_selection": {
        "meta": {"selection": "learned", "selection_policy": str(POLICY)},
        "evaluation": {"shard_size": 3},
    },
    "gradient": {
        "meta": {"optimizer": "gradient", "gradient": {"remat": "none"}},
        "evaluation": {"instances": 5, "shard_size": 2},
    },
    "pes": {
        "strategy": {"name": "pes"},
        "meta": {"truncation": 8},
        "evaluation": {"shard_size": 3, "common_instances": False},
    },
}


@pytest.mark.parametrize("outer", sorted(OUTER_LOOPS))
def test_shards_evaluated_elsewhere_in_any_order_give_the_local_bits(outer):
    """The distributed path without Ray: a worker rebuilds the experiment from its config,
    re-derives each generation's work from the shipped state and evaluates the shards in
    reverse order; the driver stacks them in shard order and tells. Every state leaf and
    metric equals the local step's, bit for bit, for every kind of outer loop."""
    import yaml

    from evoplastic.backends.sharded import ShardEvaluator, sharded_step
    from evoplastic.experiment import config_pieces

    data = small_config(task={"name": "pca", "dim": 4, "steps": 32}, **OUTER_LOOPS[outer])
    exp = build(config.parse(data))
    assert exp.outer.shards == 3
    worker = ShardEvaluator(config_pieces(yaml.safe_load(config.dump(exp.config))))

    def evaluate_shards(state, run_key, generation):
        state = jax.device_get(state)  # shipped, as by ray.put
        out = {
            s: worker.evaluate(state, run_key, generation, s, token=generation)
            for s in reversed(range(exp.outer.shards))
        }
        return [out[s] for s in range(exp.outer.shards)]

    remote, local = sharded_step(exp.generation_step(), evaluate_shards), exp.generation_step()
    run_key = jax.random.PRNGKey(3)
    a = b = exp.init_state(run_key)
    for g in range(3):
        a, ma = local(a, run_key, g)
        b, mb = remote(b, run_key, g)
        assert {k: float(v) for k, v in ma.items()} == {k: float(v) for k, v in mb.items()}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.all(np.isfinite(np.asarray(jax.tree.leaves(exp.mean_genome(a))[0])))
