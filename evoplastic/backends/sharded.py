"""A generation as separate pieces: ask, evaluate one shard, tell. No Ray in here.

The local backend compiles a whole generation into one function. A distributed backend
cannot: the driver asks and tells, and workers evaluate shards. This module holds those
pieces as compiled functions that a worker process (or a test, in process) can hold:

* :class:`Pieces` -- what a worker needs to evaluate: strategy, fitness, shard layout and
  the initial state (for warming up the compiled functions);
* :func:`config_pieces` -- the pieces of a config, built from a plain mapping so that it
  travels cheaply to a worker, which rebuilds the experiment itself;
* :class:`ShardEvaluator` -- ``evaluate(state, run_key, generation, shard) -> raw[n]``.
  It re-derives the generation's population with the same ``ask`` as the driver (the
  common-random-numbers trick of Salimans et al. 2017, "Evolution Strategies as a
  Scalable Alternative to Reinforcement Learning": ship the state and the key, not the
  population) and evaluates only the members of ``shard``. The population is computed
  once per generation and kept for the worker's next shards.

Each shard is evaluated with the same function, on a batch of the same shape, as
:func:`~evoplastic.backends.local.evaluate_sharded` evaluates it inside the local step, so
the fitness values are bit for bit those of the local backend (same device kind).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .local import GenerationStep


@dataclasses.dataclass(frozen=True)
class Pieces:
    """What a worker needs: the run's generation step and its initial state.

    Attributes:
      step: the :class:`~evoplastic.backends.local.GenerationStep` (its ``ask`` and
        ``evaluate`` run on workers, ``ask`` and ``tell`` on the driver).
      init_state: ``init_state(run_key) -> state``, for warming up.
    """

    step: GenerationStep
    init_state: Callable


def config_pieces(config: dict, shared=None) -> Pieces:
    """The pieces of the experiment described by ``config`` (a mapping, as in YAML).

    ``shared`` is unused: a config's task family generates its data from keys.
    """
    from ..config import parse
    from ..experiment import build

    exp = build(parse(config))
    return Pieces(step=exp.generation_step(), init_state=exp.init_state)


class ShardEvaluator:
    """A worker's evaluation: re-derive the population, evaluate one shard of it."""

    def __init__(self, pieces: Pieces):
        self.pieces = pieces
        self._cached: tuple[Any, Any] = (None, None)

    def warm_up(self) -> None:
        """Compile ``ask`` and ``evaluate`` (from the persistent cache, if there is one)."""
        run_key = jax.random.PRNGKey(0)
        state = jax.device_get(self.pieces.init_state(run_key))
        jax.block_until_ready(self.evaluate(state, run_key, 0, 0))
        self._cached = (None, None)

    def evaluate(self, state, run_key, generation: int, shard: int, token=None) -> np.ndarray:
        """Raw fitness of the members of ``shard`` (``shard_size`` values, padding included).

        ``token`` names the generation's state; shards with the same token reuse the
        population asked for the first of them.
        """
        step = self.pieces.step
        if token is None or self._cached[0] != token:
            population, _ = step.ask(state, run_key, generation)
            self._cached = (token, population)
        population = self._cached[1]
        return np.asarray(step.evaluate(population, run_key, generation, shard))


def sharded_step(step: GenerationStep, evaluate_shards: Callable):
    """``step(state, run_key, generation)`` with evaluation done by ``evaluate_shards``.

    ``evaluate_shards(state, run_key, generation) -> raw[shards * shard_size]`` evaluates
    every shard (anywhere); asking and telling stay here, on the driver.
    """

    def run(state, run_key, generation):
        population, asked = step.ask(state, run_key, generation)
        raw = np.asarray(evaluate_shards(state, run_key, generation))[: step.population_size]
        return step.tell(asked, population, jax.numpy.asarray(raw), run_key, generation)

    return run
