"""Model networks whose synapses change only through a local plasticity rule."""

from .rate import ACTIVATIONS, RateNetwork, RateState

NETWORKS = {"rate": RateNetwork}

__all__ = ["ACTIVATIONS", "NETWORKS", "RateNetwork", "RateState"]
