"""Model networks whose synapses change only through a local plasticity rule."""

from .layered import FEEDBACK, LayeredNetwork, LayeredState
from .rate import ACTIVATIONS, RateNetwork, RateState

NETWORKS = {"rate": RateNetwork, "layered": LayeredNetwork}

__all__ = [
    "ACTIVATIONS",
    "FEEDBACK",
    "NETWORKS",
    "LayeredNetwork",
    "LayeredState",
    "RateNetwork",
    "RateState",
]
