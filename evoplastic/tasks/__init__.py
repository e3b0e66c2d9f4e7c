"""Task families: what a plastic network should learn, with disjoint meta-train/test splits."""

from .base import (
    SPLITS,
    TEST_SEED,
    SteppableTaskFamily,
    TaskFamily,
    split_key,
    test_instance_keys,
)
from .control import ENVS, ControlFamily, ControlTask
from .pca import PCAFamily, PCATask
from .supervised import DigitsFamily, SinusoidFamily, SupervisedTask, backprop_step

TASKS = {
    "pca": PCAFamily,
    "control": ControlFamily,
    "sinusoid": SinusoidFamily,
    "digits": DigitsFamily,
}


def make(name: str, network: dict | None = None, **params) -> TaskFamily:
    """Make a task family from the registry: ``make("pca", dim=8, network={"lr": 0.1})``."""
    return TASKS[name].create(network=network, **params)


__all__ = [
    "DigitsFamily",
    "SinusoidFamily",
    "SupervisedTask",
    "backprop_step",
    "ENVS",
    "ControlFamily",
    "ControlTask",
    "SPLITS",
    "TASKS",
    "TEST_SEED",
    "PCAFamily",
    "PCATask",
    "SteppableTaskFamily",
    "TaskFamily",
    "make",
    "split_key",
    "test_instance_keys",
]
