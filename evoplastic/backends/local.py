"""The local backend: a generation (ask, evaluate every shard, tell) in process.

A generation is three compiled functions of an outer loop (:class:`GenerationStep`),
which the Ray backend's driver and workers share, so that both backends run the same
executables and produce the same bits. The outer loop is any
:class:`~evoplastic.meta.base.OuterLoop`: evolution strategies, learned selection, the
meta-gradient or a truncated estimator; this module knows nothing else about it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..meta.base import (
    OuterLoop,
    generation_keys,
    member_keys,
    sanitize,
    shard_layout,
    strong_types,
)
from ..meta.es import EvolutionStrategy, checked_fitness, evaluate_population
from ..tasks.evaluation import FitnessFn, evaluate_genome, make_genome_evaluator, task_fitness

__all__ = [
    "FitnessFn",
    "GenerationStep",
    "checked_fitness",
    "evaluate_genome",
    "evaluate_population",
    "generation_keys",
    "make_generation_step",
    "make_genome_evaluator",
    "member_keys",
    "sanitize",
    "shard_layout",
    "stack_results",
    "strong_types",
    "task_fitness",
]


def stack_results(parts: list):
    """Shard results (pytrees) -> one pytree with a leading shard axis, in the given order."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *parts)


class GenerationStep:
    """``step(state, run_key, generation) -> (state, metrics)``: one generation of a run.

    A generation is three compiled functions of ``outer``, each compiled once per run:

    * ``ask(state, run_key, generation) -> (work, state)``;
    * ``evaluate(work, shard) -> result``, one shard of the work (the part a backend
      spreads; :meth:`run_shard` runs it with the outer loop's error reporting);
    * ``tell(state, work, results, run_key, generation) -> (state, metrics)``, with every
      shard's result stacked in shard order.

    They are separate executables, not one, because every backend must run the *same*
    executables to get the same bits: XLA fuses a whole-generation program differently
    from its parts and may round the last bit differently. The Ray backend's workers call
    this class's ``ask`` and ``evaluate``, and its driver ``ask`` and ``tell``. Calling
    three executables instead of one costs two dispatches (microseconds) per generation.
    """

    def __init__(self, outer: OuterLoop):
        self.outer = outer
        self.shards = outer.shards
        self.ask = jax.jit(outer.ask)
        self.evaluate = jax.jit(outer.evaluate)
        self.tell = jax.jit(outer.tell)

    def run_shard(self, work, shard: int):
        """The result of one shard (a failing member of a checked fitness raises)."""
        return self.outer.finish_shard(self.evaluate, work, shard)

    def evaluate_all(self, work) -> object:
        """Every shard's result, stacked in shard order."""
        return stack_results([self.run_shard(work, s) for s in range(self.shards)])

    def __call__(self, state, run_key, generation):
        work, asked = self.ask(state, run_key, generation)
        return self.tell(asked, work, self.evaluate_all(work), run_key, generation)

    def _cache_size(self) -> int:
        """The most compilations of any of the three functions (1 after a clean run)."""
        return max(f._cache_size() for f in (self.ask, self.evaluate, self.tell))


def make_generation_step(
    strategy,
    es_params,
    fitness: FitnessFn,
    common_instances: bool = True,
    shard_size: int | None = None,
    checks: bool = False,
) -> GenerationStep:
    """The compiled step of an evolution strategy on ``fitness`` (see
    :class:`~evoplastic.meta.es.EvolutionStrategy`); its state comes from
    ``strategy.init``."""
    return GenerationStep(
        EvolutionStrategy(
            strategy,
            es_params,
            fitness,
            common_instances=common_instances,
            shard_size=shard_size,
            checks=checks,
        )
    )
