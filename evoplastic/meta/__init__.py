"""Meta-optimizers: evolution strategies (evosax) over rule genomes."""

from .strategies import DEFAULT_OPTIMIZER, STRATEGIES, StrategyError, make, make_optimizer

__all__ = ["DEFAULT_OPTIMIZER", "STRATEGIES", "StrategyError", "make", "make_optimizer"]
