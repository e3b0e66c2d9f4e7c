"""The local backend: a generation (ask, evaluate every member, tell) in process.

A generation is three compiled functions (:class:`GenerationStep`), which the Ray backend
shares, so that both backends run the same executables and produce the same bits.

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

import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from ..tasks.base import test_instance_keys
from .errors import MemberError

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


def shard_layout(population_size: int, shard_size: int | None) -> tuple[int, int]:
    """``(shards, shard_size)`` of a generation: the fixed batches members are evaluated in.

    ``shard_size=None`` evaluates the whole population as one batch. Otherwise the
    population is cut into ``ceil(P / shard_size)`` shards of ``shard_size`` members (the
    last one padded). The layout depends on the config only, never on the number of
    workers, because XLA may round the last bit differently for different batch sizes:
    every backend evaluates the same batches, so every backend gets the same bits.
    """
    if shard_size is None or shard_size >= population_size:
        return 1, population_size
    return -(-population_size // shard_size), shard_size


def population_shard(population, shard: jax.Array, shard_size: int, shards: int):
    """Members ``shard * shard_size ...`` of ``population``, padded to ``shard_size`` rows."""

    def take(x):
        pad = shards * shard_size - x.shape[0]
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x
        return jax.lax.dynamic_slice_in_dim(x, shard * shard_size, shard_size)

    return jax.tree.map(take, population)


def evaluate_shard(fitness, population, eval_key, common_instances, shard, shard_size, shards):
    """Raw fitness ``[shard_size]`` of one shard (padding rows are evaluated and ignored)."""
    members = population_shard(population, shard, shard_size, shards)
    return evaluate_population(
        fitness, members, eval_key, common_instances, offset=shard * shard_size
    )


def ask_generation(strategy, es_params, state, run_key, generation):
    """``(population, state)``: the ask of a generation, from its ask key."""
    k_ask, _, _ = generation_keys(run_key, generation)
    return strategy.ask(k_ask, state, es_params)


def tell_generation(strategy, es_params, state, population, raw, run_key, generation):
    """Sanitize raw fitness, tell, and return ``(state, metrics)`` of the generation."""
    _, _, k_tell = generation_keys(run_key, generation)
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


class GenerationStep:
    """``step(state, run_key, generation) -> (state, metrics)``: one generation of a run.

    A generation is three compiled functions, each compiled once per run:

    * ``ask(state, run_key, generation) -> (population, state)``;
    * ``evaluate(population, run_key, generation, shard) -> raw[shard_size]``, the raw
      fitness of one shard of the population (the whole population by default);
    * ``tell(state, population, raw, run_key, generation) -> (state, metrics)``.

    They are separate executables, not one, because every backend must run the *same*
    executables to get the same bits: XLA fuses a whole-generation program differently
    from its parts and may round the last bit differently. The Ray backend's workers call
    this class's ``ask`` and ``evaluate``, and its driver ``ask`` and ``tell``. Calling
    three executables instead of one costs two dispatches (microseconds) per generation.
    """

    def __init__(
        self, strategy, es_params, fitness, common_instances=True, shard_size=None, checks=False
    ):
        self.population_size = int(strategy.population_size)
        self.shards, self.shard_size = shard_layout(self.population_size, shard_size)
        shards, size = self.shards, self.shard_size
        self.ask = jax.jit(functools.partial(ask_generation, strategy, es_params))
        self.tell = jax.jit(functools.partial(tell_generation, strategy, es_params))
        self.fitness, self.common_instances, self.checks = fitness, common_instances, checks
        member_fitness = checked_fitness(fitness) if checks else fitness

        @jax.jit
        def evaluate(population, run_key, generation, shard):
            _, k_eval, _ = generation_keys(run_key, generation)
            return evaluate_shard(
                member_fitness, population, k_eval, common_instances, shard, size, shards
            )

        self._evaluate = evaluate
        self.evaluate = self._evaluate_checked if checks else evaluate

    def _evaluate_checked(self, population, run_key, generation, shard) -> jax.Array:
        """Raw fitness of a shard; a failing member raises :class:`MemberError`."""
        first = int(shard) * self.shard_size
        # a raising host callback is reported here, with the member, not logged by JAX
        quiet = logging.getLogger("jax._src.debugging")
        level, quiet.disabled = quiet.disabled, True
        try:
            raw, bad, errors = self._evaluate(population, run_key, generation, shard)
            bad = np.asarray(bad)
        except jax.errors.JaxRuntimeError as err:
            member, reason = self._locate(population, run_key, generation, shard, err)
            raise MemberError(int(generation), member, reason) from None
        finally:
            quiet.disabled = level
        for i in np.flatnonzero(bad):
            if first + i < self.population_size:  # padding rows are not members
                reason = jax.tree.map(lambda x, i=i: x[i], errors).get()
                raise MemberError(int(generation), int(first + i), reason or "a check failed")
        return raw

    def _locate(self, population, run_key, generation, shard, err) -> tuple[int, str]:
        """The first member of ``shard`` whose evaluation alone raises, and the reason."""
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(err).__name__
        _, k_eval, _ = generation_keys(run_key, generation)
        one = jax.jit(self.fitness)
        members = population_shard(population, shard, self.shard_size, self.shards)
        first = int(shard) * self.shard_size
        for i in range(min(self.shard_size, self.population_size - first)):
            member = jax.tree.map(lambda x, i=i: x[i], members)
            key = k_eval if self.common_instances else jax.random.fold_in(k_eval, first + i)
            try:
                jax.block_until_ready(one(member, key))
            except jax.errors.JaxRuntimeError:
                return first + i, reason
        return first, reason  # no single member fails alone: report the shard's first

    def evaluate_all(self, population, run_key, generation) -> jax.Array:
        """Raw fitness ``[P]`` of the whole population, shard by shard."""
        if self.shards == 1:
            return self.evaluate(population, run_key, generation, 0)
        parts = [self.evaluate(population, run_key, generation, s) for s in range(self.shards)]
        return jnp.concatenate(parts)[: self.population_size]

    def __call__(self, state, run_key, generation):
        population, asked = self.ask(state, run_key, generation)
        raw = self.evaluate_all(population, run_key, generation)
        return self.tell(asked, population, raw, run_key, generation)

    def _cache_size(self) -> int:
        """The most compilations of any of the three functions (1 after a clean run)."""
        return max(f._cache_size() for f in (self.ask, self._evaluate, self.tell))


def checked_fitness(fitness: FitnessFn):
    """``fitness`` under ``checkify``: ``(genome, key) -> (loss, failed, error)``."""
    checked = checkify.checkify(fitness, errors=checkify.user_checks)

    def run(genome, key):
        err, loss = checked(genome, key)
        preds = list(getattr(err, "_pred", {}).values())
        bad = jnp.any(jnp.stack([jnp.any(p) for p in preds])) if preds else jnp.zeros((), bool)
        return loss, bad, err

    return run


def make_generation_step(
    strategy,
    es_params,
    fitness: FitnessFn,
    common_instances: bool = True,
    shard_size: int | None = None,
    checks: bool = False,
) -> GenerationStep:
    """Compile ``step(state, run_key, generation) -> (state, metrics)`` once for a run.

    ``shard_size`` fixes the batches the population is evaluated in (see
    :func:`shard_layout`); the Ray backend evaluates the same shards on its workers.
    With ``checks`` the fitness is evaluated under ``jax.experimental.checkify``: a failed
    ``checkify.check`` in one member, or an error raised while evaluating (e.g. by a host
    callback), raises :class:`~evoplastic.backends.errors.MemberError` with that member's
    index (user fitness functions run this way).
    """
    return GenerationStep(strategy, es_params, fitness, common_instances, shard_size, checks)


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
