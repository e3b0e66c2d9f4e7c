"""Task families: what a plastic network should learn, with disjoint meta-train/test splits."""

from .bandit import BanditFamily, BanditTask
from .base import (
    SPLITS,
    TEST_SEED,
    SteppableTaskFamily,
    TaskFamily,
    split_key,
    test_instance_keys,
)
from .control import ENVS, ControlFamily, ControlTask
from .custom import (
    PYTHON_PREFIX,
    CheckedFamily,
    FitnessError,
    FitnessTask,
    check_fitness,
    is_import_path,
    make_imported,
)
from .evaluation import FitnessFn, evaluate_genome, make_genome_evaluator, task_fitness
from .metamaze import MazeTask, MetaMazeFamily
from .mnist1d import MNIST1DFamily
from .patterns import PatternsFamily, PatternsTask
from .pca import PCAFamily, PCATask
from .supervised import DigitsFamily, SinusoidFamily, SupervisedTask, backprop_step

TASKS = {
    "pca": PCAFamily,
    "control": ControlFamily,
    "sinusoid": SinusoidFamily,
    "digits": DigitsFamily,
    "mnist1d": MNIST1DFamily,
    "patterns": PatternsFamily,
    "bandit": BanditFamily,
    "metamaze": MetaMazeFamily,
}


def make(name: str, network: dict | None = None, **params) -> TaskFamily:
    """Make a task family from the registry: ``make("pca", dim=8, network={"lr": 0.1})``.

    ``name`` may also be an import path, ``"package.module:factory"`` (see
    :mod:`evoplastic.tasks.custom`): the factory's task family or fitness function.
    """
    if name not in TASKS and (is_import_path(name) or name.startswith(PYTHON_PREFIX)):
        return make_imported(name, network=network, **params)
    return TASKS[name].create(network=network, **params)


__all__ = [
    "BanditFamily",
    "BanditTask",
    "MazeTask",
    "MetaMazeFamily",
    "FitnessFn",
    "evaluate_genome",
    "make_genome_evaluator",
    "task_fitness",
    "CheckedFamily",
    "DigitsFamily",
    "MNIST1DFamily",
    "FitnessError",
    "FitnessTask",
    "check_fitness",
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
    "PatternsFamily",
    "PatternsTask",
    "PCATask",
    "SteppableTaskFamily",
    "TaskFamily",
    "make",
    "split_key",
    "test_instance_keys",
]
