import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import build, config, meta
from evoplastic.backends import make_generation_step

from .conftest import small_config


@pytest.mark.parametrize("name", sorted(meta.STRATEGIES))
def test_every_strategy_runs_three_generations(name):
    """Each registered strategy runs 3 real generations of the pca task."""
    exp = build(config.parse(small_config(strategy={"name": name, "population_size": 8})))
    step = exp.generation_step()
    run_key = jax.random.PRNGKey(0)
    state0 = exp.init_state(run_key)
    state = state0
    losses = []
    for g in range(3):
        state, m = step(state, run_key, g)
        losses.append(float(m["best_loss"]))
    assert np.all(np.isfinite(losses))
    mean = np.asarray(exp.mean_genome(state))
    assert np.all(np.isfinite(mean))
    assert int(state.generation_counter) == 3
    assert step._cache_size() == 1  # compiled once: no recompilation after generation 0
    # the search moved: the population is not frozen at the initial mean
    pop, _ = exp.outer.strategy.ask(jax.random.PRNGKey(1), state, exp.outer.es_params)
    assert float(jnp.std(pop)) > 0


def test_strategy_converges_on_a_quadratic():
    """CMA-ES and OpenAI-ES reach the minimum of a shifted sphere through our step."""
    target = jnp.array([1.0, -2.0, 0.5])
    for name, gens in (("cma_es", 60), ("open_es", 300)):
        es, p = meta.make(name, 16, jnp.zeros(3), std_init=0.5, optimizer=None)
        step = make_generation_step(es, p, lambda g, k: jnp.sum((g - target) ** 2), False)
        state = es.init(jax.random.PRNGKey(0), jnp.zeros(3), p)
        for g in range(gens):
            state, _ = step(state, jax.random.PRNGKey(1), g)
        np.testing.assert_allclose(es.get_mean(state), target, atol=0.1)


def test_bad_strategy_configs_name_the_field():
    with pytest.raises(meta.StrategyError, match="strategy.name.*did you mean 'cma_es'"):
        meta.make("cmaes", 8, jnp.zeros(2))
    with pytest.raises(meta.StrategyError, match="strategy.population_size.*even"):
        meta.make("open_es", 7, jnp.zeros(2))
    with pytest.raises(meta.StrategyError, match="strategy.population_size"):
        meta.make("cma_es", 0, jnp.zeros(2))
    with pytest.raises(meta.StrategyError, match="strategy.params.c_mena.*c_mean"):
        meta.make("cma_es", 8, jnp.zeros(2), params={"c_mena": 1.0})
    with pytest.raises(meta.StrategyError, match="strategy.optimizer.name"):
        meta.make("open_es", 8, jnp.zeros(2), optimizer={"name": "adamm"})
    with pytest.raises(meta.StrategyError, match="strategy.options.antithetic"):
        meta.make("open_es", 8, jnp.zeros(2), options={"antithetic": False})


def test_hyperparameters_reach_the_strategy():
    es, p = meta.make("cma_es", 8, jnp.zeros(2), std_init=0.7, params={"c_mean": 0.5})
    assert float(p.std_init) == pytest.approx(0.7)
    assert float(p.c_mean) == pytest.approx(0.5)
    state = es.init(jax.random.PRNGKey(0), jnp.zeros(2), p)
    assert float(state.std) == pytest.approx(0.7)
    es, p = meta.make(
        "open_es", 8, jnp.zeros(2), std_init=0.2, options={"use_antithetic_sampling": False}
    )
    assert es.use_antithetic_sampling is False
    state = es.init(jax.random.PRNGKey(0), jnp.zeros(2), p)
    assert float(state.std) == pytest.approx(0.2)
