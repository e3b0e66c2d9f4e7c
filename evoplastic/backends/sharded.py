"""A generation as separate pieces a distributed backend can hold. No Ray in here.

The driver of a distributed backend asks and tells; workers evaluate shards. This module
holds the pieces a worker process (or a test, in process) needs:

* :class:`Pieces` -- the run's :class:`~evoplastic.backends.local.GenerationStep` (of any
  outer loop) and its initial state (for warming up the compiled functions);
  (an experiment's :meth:`~evoplastic.experiment.Experiment.pieces_factory` makes them: from
  its config, which travels cheaply to a worker that rebuilds the experiment, or from its
  outer loop shipped whole);
* :class:`ShardEvaluator` -- ``evaluate(state, run_key, generation, shard) -> result``.
  It re-derives the generation's work with the same ``ask`` as the driver (the
  common-random-numbers trick of Salimans et al. 2017, "Evolution Strategies as a
  Scalable Alternative to Reinforcement Learning": ship the state and the key, not the
  population) and evaluates only ``shard``. The work is computed once per generation and
  kept for the worker's next shards;
* :func:`sharded_step` -- ``step(state, run_key, generation)`` whose shards are evaluated
  elsewhere and combined here, in shard order.

Each shard is evaluated with the same compiled function, on a batch of the same shape,
as the local step evaluates it, so the results are bit for bit those of the local backend
(same device kind).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .local import GenerationStep, stack_results


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


class ShardEvaluator:
    """A worker's evaluation: re-derive the generation's work, evaluate one shard of it."""

    def __init__(self, pieces: Pieces):
        self.pieces = pieces
        self._cached: tuple[Any, Any] = (None, None)

    def warm_up(self) -> None:
        """Compile ``ask`` and ``evaluate`` (from the persistent cache, if there is one)."""
        run_key = jax.random.PRNGKey(0)
        state = jax.device_get(self.pieces.init_state(run_key))
        jax.block_until_ready(self.evaluate(state, run_key, 0, 0))
        self._cached = (None, None)

    def evaluate(self, state, run_key, generation: int, shard: int, token=None):
        """The result of ``shard`` (numpy arrays; padding rows included).

        ``token`` names the generation's state; shards with the same token reuse the
        work asked for the first of them.
        """
        step = self.pieces.step
        if token is None or self._cached[0] != token:
            work, _ = step.ask(state, run_key, generation)
            self._cached = (token, work)
        work = self._cached[1]
        return jax.tree.map(np.asarray, step.run_shard(work, shard))


def sharded_step(step: GenerationStep, evaluate_shards: Callable):
    """``step(state, run_key, generation)`` with evaluation done by ``evaluate_shards``.

    ``evaluate_shards(state, run_key, generation) -> [result of shard 0, 1, ...]``
    evaluates every shard (anywhere); asking, combining (in shard order) and telling stay
    here, on the driver.
    """

    def run(state, run_key, generation):
        work, asked = step.ask(state, run_key, generation)
        results = stack_results(evaluate_shards(state, run_key, generation))
        return step.tell(asked, work, results, run_key, generation)

    return run
