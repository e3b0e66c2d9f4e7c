"""Meta-optimizers: evolution strategies (evosax) or backprop (optax) over rule genomes.

* :mod:`~evoplastic.meta.strategies`: evosax strategies by name (``meta.optimizer: es``);
* :mod:`~evoplastic.meta.gradient`: meta-gradients through the unrolled inner loop
  (``meta.optimizer: gradient``), full or truncated;
* :mod:`~evoplastic.meta.truncated`: PES and Noise-Reuse ES over truncated unrolls;
* :mod:`~evoplastic.meta.unroll`: stepwise unrolls with bounded-memory checkpointing.
"""

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
    "REMAT",
    "STRATEGIES",
    "TRUNCATED_STRATEGIES",
    "GradientMeta",
    "GradientState",
    "StrategyError",
    "TruncatedES",
    "TruncatedState",
    "make",
    "make_optimizer",
    "nested_shape",
    "unroll",
    "unroll_instance",
]
