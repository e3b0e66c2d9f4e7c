"""Evolution strategies (evosax, or learned selection) as an :class:`~.base.OuterLoop`.

A generation asks the strategy for a population, evaluates every member's mean loss over
``instances`` task instances, and tells the strategy the losses (minimized).

Keys (docs/architecture.md, "Keys"): the generation key is ``fold_in(run_key, generation)``; member
``i`` gets ``fold_in(eval_key, i)`` and its instance ``j`` ``fold_in(member_key, j)``.
With ``common_instances`` (the default) every member meets the same instances in a
generation -- common random numbers, which make ranks less noisy; the instance key is
then ``fold_in(eval_key, j)``. Either way a key depends on indices only, never on how the
population is split over devices or workers.

The population is evaluated in shards of ``shard_size`` members (the last padded with
zero genomes, evaluated and ignored). Non-finite losses (divergent rules are common) are
replaced by a value just worse than the worst finite loss of the generation before
``tell`` and counted in the metrics, so they rank last and never reach the strategy state.

With ``checks`` (user fitness functions) a shard is evaluated under
``jax.experimental.checkify``; a failed check, or an error raised while evaluating (e.g.
by a host callback), raises :class:`~evoplastic.backends.errors.MemberError` naming the
member.

Example::

    strategy, params = meta.make("cma_es", 16, jnp.zeros(3))
    outer = EvolutionStrategy(strategy, params, lambda g, k: jnp.sum(g**2),
                              init_genome=lambda key: jnp.zeros(3))
    step = backends.GenerationStep(outer)          # compiled ask / evaluate / tell
    state = outer.init(run_key)
    state, metrics = step(state, run_key, 0)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from ..errors import MemberError
from ..tasks.evaluation import FitnessFn
from .base import (
    INIT_FOLD,
    PopulationLoop,
    generation_keys,
    join_shards,
    member_keys,
    sanitize,
    strong_types,
    take_shard,
)


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


def checked_fitness(fitness: FitnessFn):
    """``fitness`` under ``checkify``: ``(genome, key) -> (loss, failed, error)``."""
    checked = checkify.checkify(fitness, errors=checkify.user_checks)

    def run(genome, key):
        err, loss = checked(genome, key)
        preds = list(getattr(err, "_pred", {}).values())
        bad = jnp.any(jnp.stack([jnp.any(p) for p in preds])) if preds else jnp.zeros((), bool)
        return loss, bad, err

    return run


def es_metrics(raw: jax.Array) -> tuple[jax.Array, dict]:
    """``(sanitized fitness, metrics)`` of a generation's raw losses."""
    fit, nonfinite = sanitize(raw)
    finite = jnp.isfinite(raw)
    metrics = {
        "best_loss": jnp.min(fit),
        "mean_loss": jnp.sum(jnp.where(finite, raw, 0.0)) / jnp.maximum(jnp.sum(finite), 1),
        "median_loss": jnp.median(fit),
        "nonfinite": nonfinite,
    }
    return fit, metrics


@dataclasses.dataclass(frozen=True)
class EvolutionStrategy(PopulationLoop):
    """An evosax-style strategy over genomes, evaluated by ``fitness``.

    Attributes:
      strategy, es_params: an evosax distribution-based strategy (or
        :class:`~evoplastic.meta.selection.LearnedSelectionES`) and its params.
      fitness: ``fitness(genome, key) -> loss``, jittable.
      init_genome: ``init_genome(key) -> genome``, the search mean of generation 0.
      common_instances: every member sees the same evaluation key in a generation.
      shard_size: members per shard (``None``: the whole population at once).
      checks: evaluate under ``checkify`` and report a failing member by index.
    """

    strategy: Any
    es_params: Any
    fitness: FitnessFn
    init_genome: Callable | None = None
    common_instances: bool = True
    shard_size: int | None = None
    checks: bool = False

    def init(self, run_key):
        """Strategy state with mean ``init_genome(k_rule)`` (keys from ``fold_in(run_key, -)``)."""
        k_rule, k_es = jax.random.split(jax.random.fold_in(run_key, INIT_FOLD))
        mean = self.init_genome(k_rule)
        return strong_types(self.strategy.init(k_es, mean, self.es_params))

    def ask(self, state, run_key, generation):
        """The population (from the ask key) and the evaluation key of the generation."""
        k_ask, k_eval, _ = generation_keys(run_key, generation)
        population, state = self.strategy.ask(k_ask, state, self.es_params)
        work = {"population": population, "key": k_eval, "generation": generation}
        return work, state

    def evaluate(self, work, shard):
        """Raw losses ``[shard_size]`` (padding rows evaluated and ignored); with checks,
        ``(raw, failed, errors)``."""
        members = take_shard(work["population"], shard, self.batch, self.shards)
        fitness = checked_fitness(self.fitness) if self.checks else self.fitness
        return evaluate_population(
            fitness, members, work["key"], self.common_instances, offset=shard * self.batch
        )

    def tell(self, state, work, results, run_key, generation):
        """Sanitize the joined raw losses, tell the strategy; fitness metrics."""
        _, _, k_tell = generation_keys(run_key, generation)
        raw = join_shards(results, self.units)
        fit, metrics = es_metrics(raw)
        state, _ = self.strategy.tell(k_tell, work["population"], fit, state, self.es_params)
        return strong_types(state), metrics

    def mean_genome(self, state):
        """The search mean (what a run reports)."""
        return self.strategy.get_mean(state)

    def finish_shard(self, evaluate, work, shard):
        """Raw losses of a shard; with checks, a failing member raises :class:`MemberError`."""
        if not self.checks:
            return evaluate(work, shard)
        generation = int(work["generation"])
        first = int(shard) * self.batch
        # a raising host callback is reported here, with the member, not logged by JAX
        quiet = logging.getLogger("jax._src.debugging")
        level, quiet.disabled = quiet.disabled, True
        try:
            raw, bad, errors = evaluate(work, shard)
            bad = np.asarray(bad)
        except jax.errors.JaxRuntimeError as err:
            member, reason = self._locate(work, shard, err)
            raise MemberError(generation, member, reason) from None
        finally:
            quiet.disabled = level
        for i in np.flatnonzero(bad):
            if first + i < self.units:  # padding rows are not members
                reason = jax.tree.map(lambda x, i=i: x[i], errors).get()
                raise MemberError(generation, int(first + i), reason or "a check failed")
        return raw

    def _locate(self, work, shard, err) -> tuple[int, str]:
        """The first member of ``shard`` whose evaluation alone raises, and the reason."""
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(err).__name__
        one = jax.jit(self.fitness)
        members = take_shard(work["population"], shard, self.batch, self.shards)
        first = int(shard) * self.batch
        for i in range(min(self.batch, self.units - first)):
            member = jax.tree.map(lambda x, i=i: x[i], members)
            key = work["key"]
            key = key if self.common_instances else jax.random.fold_in(key, first + i)
            try:
                jax.block_until_ready(one(member, key))
            except jax.errors.JaxRuntimeError:
                return first + i, reason
        return first, reason  # no single member fails alone: report the shard's first
