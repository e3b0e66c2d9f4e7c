"""Outer loops: evolution strategies (evosax) or backprop (optax) over rule genomes.

Every outer loop implements one contract, :class:`~evoplastic.meta.base.OuterLoop`
(``init``, ``ask``, ``evaluate`` one shard, ``tell``, ``mean_genome``), which is all the
backends see:

* :mod:`~evoplastic.meta.base`: the contract, key derivation and the shard layout;
* :mod:`~evoplastic.meta.es`: evosax strategies and learned selection as an outer loop;
* :mod:`~evoplastic.meta.strategies`: evosax strategies by name (``meta.optimizer: es``);
* :mod:`~evoplastic.meta.selection`: the learned selection policy's strategy;
* :mod:`~evoplastic.meta.gradient`: meta-gradients through the unrolled inner loop
  (``meta.optimizer: gradient``), full or truncated;
* :mod:`~evoplastic.meta.truncated`: PES and Noise-Reuse ES over truncated unrolls;
* :mod:`~evoplastic.meta.episodes`: the truncated step those two share;
* :mod:`~evoplastic.meta.unroll`: stepwise unrolls with bounded-memory checkpointing.
"""

from .base import OuterLoop, generation_keys, shard_layout
from .episodes import Episodes
from .es import EvolutionStrategy
from .gradient import GradientMeta, GradientState
from .strategies import (
    DEFAULT_OPTIMIZER,
    STRATEGIES,
    TRUNCATED_STRATEGIES,
    StrategyError,
    make,
    make_optimizer,
)
from .truncated import TruncatedES, TruncatedState
from .unroll import REMAT, nested_shape, unroll, unroll_instance

__all__ = [
    "DEFAULT_OPTIMIZER",
    "Episodes",
    "EvolutionStrategy",
    "OuterLoop",
    "REMAT",
    "STRATEGIES",
    "TRUNCATED_STRATEGIES",
    "GradientMeta",
    "GradientState",
    "StrategyError",
    "TruncatedES",
    "TruncatedState",
    "generation_keys",
    "make",
    "make_optimizer",
    "nested_shape",
    "shard_layout",
    "unroll",
    "unroll_instance",
]
