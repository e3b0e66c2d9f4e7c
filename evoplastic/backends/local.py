"""The local backend: a whole generation (ask, evaluate every member, tell) in one jit.

Keys follow DESIGN.md: the generation key is ``fold_in(run_key, generation)``; member
``i`` gets ``fold_in(eval_key, i)`` and its instance ``j`` ``fold_in(member_key, j)``.
With ``common_instances`` (the default) every member meets the same instances in a
generation -- common random numbers, which make ranks less noisy; the instance key is
then ``fold_in(eval_key, j)``. Either way a key depends on indices only, never on how the
population is split over devices or workers.

Non-finite losses (divergent rules are common) are replaced by a value just worse than
the worst finite loss of the generation before ``tell`` and counted in the metrics, so
they rank last and never reach the strategy state.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..tasks.base import test_instance_keys

FitnessFn = Callable[[object, jax.Array], jax.Array]


def task_fitness(family, rule, instances: int) -> FitnessFn:
    """``fitness(genome, key) -> mean loss`` over ``instances`` meta-train instances."""

    def fitness(genome, key):
        def one(j):
            k = jax.random.fold_in(key, j)
            loss, _ = family.inner_loop(rule, genome, family.sample(k, "train"), k)
            return loss

        return jnp.mean(jax.vmap(one)(jnp.arange(instances)))

    return fitness


def member_keys(eval_key: jax.Array, indices: jax.Array) -> jax.Array:
    """The key of each member, ``fold_in(eval_key, i)``: a function of its index only."""
    return jax.vmap(lambda i: jax.random.fold_in(eval_key, i))(indices)


def evaluate_population(
    fitness: FitnessFn, population, eval_key: jax.Array, common_instances: bool, offset=0
) -> jax.Array:
    """``fitness`` of members ``offset, offset + 1, ...`` of a generation, shape ``[n]``.

    With ``common_instances`` every member sees ``eval_key`` itself; the key is not
    batched, so each task instance is sampled once and shared by the whole population
    rather than re-drawn per member.
    """
    if common_instances:
        return jax.vmap(fitness, in_axes=(0, None))(population, eval_key)
    n = jax.tree.leaves(population)[0].shape[0]
    keys = member_keys(eval_key, offset + jnp.arange(n))
    return jax.vmap(fitness)(population, keys)


def sanitize(raw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replace non-finite losses by a value worse than every finite one; count them."""
    finite = jnp.isfinite(raw)
    worst = jnp.max(jnp.where(finite, raw, -jnp.inf))
    worst = jnp.where(jnp.isfinite(worst), worst + jnp.abs(worst) + 1.0, 1e6)
    return jnp.where(finite, raw, worst), jnp.sum(~finite)


def generation_keys(run_key: jax.Array, generation) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ask_key, eval_key, tell_key)`` of a generation."""
    key_g = jax.random.fold_in(run_key, generation)
    return tuple(jax.random.fold_in(key_g, i) for i in range(3))


def strong_types(tree):
    """The same pytree with every leaf strongly typed.

    Some strategies return weakly typed scalars (e.g. a Python-float ``std`` schedule);
    feeding them back into a jitted step would compile it a second time.
    """
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def make_generation_step(strategy, es_params, fitness: FitnessFn, common_instances: bool = True):
    """Compile ``step(state, run_key, generation) -> (state, metrics)`` once for a run."""

    @jax.jit
    def step(state, run_key, generation):
        k_ask, k_eval, k_tell = generation_keys(run_key, generation)
        population, state = strategy.ask(k_ask, state, es_params)
        raw = evaluate_population(fitness, population, k_eval, common_instances)
        fit, nonfinite = sanitize(raw)
        state, _ = strategy.tell(k_tell, population, fit, state, es_params)
        state = strong_types(state)
        finite = jnp.isfinite(raw)
        n_finite = jnp.maximum(jnp.sum(finite), 1)
        metrics = {
            "best_loss": jnp.min(fit),
            "mean_loss": jnp.sum(jnp.where(finite, raw, 0.0)) / n_finite,
            "median_loss": jnp.median(fit),
            "nonfinite": nonfinite,
        }
        return state, metrics

    return step


def make_genome_evaluator(family, rule):
    """``evaluate(genome, keys) -> (loss[N], metrics[N])`` on meta-test instances, jitted."""

    @jax.jit
    def evaluate(genome, keys):
        def one(k):
            return family.inner_loop(rule, genome, family.sample(k, "test"), k)

        return jax.vmap(one)(keys)

    return evaluate


def evaluate_genome(family, rule, genome, instances: int, evaluator=None):
    """Loss and task metrics of ``genome`` on the first ``instances`` held-out instances."""
    evaluator = evaluator or make_genome_evaluator(family, rule)
    loss, metrics = evaluator(genome, test_instance_keys(instances))
    return {"loss": loss, **metrics}
