"""evoplastic: discover biologically plausible learning rules by meta-optimization.

A model network's synapses change only through a local plasticity rule; an evolution
strategy (evosax) searches the rule's parameters so that fresh networks *learn* a task
family. The pieces are pure functions over pytrees:

* :mod:`evoplastic.rules` -- ``init(key) -> genome``, ``update(genome, signals) -> dw``;
* :mod:`evoplastic.networks` -- plastic model networks stepping online with ``lax.scan``;
* :mod:`evoplastic.tasks` -- task families with disjoint meta-train / meta-test splits;
* :mod:`evoplastic.meta` -- outer loops behind one contract (``init``, ``ask``, ``evaluate``
  a shard, ``tell``): evosax strategies, learned selection, the meta-gradient, PES;
* :mod:`evoplastic.backends` -- execution: ask, evaluate the shards (in process, or on Ray
  actors), tell, as three compiled functions;
* :mod:`evoplastic.runner` -- the one run driver every entry point uses.

Your own fitness function (or task family) goes to :func:`evolve` or :func:`meta_gradient`,
which return a :class:`Result`; see docs/tutorials/custom_fitness.md. Example::

    import jax.numpy as jnp
    import evoplastic as ep

    result = ep.evolve(lambda g, k: jnp.sum((g - 1.0) ** 2), jnp.zeros(3), generations=50)
    print(result.genome)

A whole experiment from a config (what ``evoplastic run`` does)::

    cfg = ep.config.parse({"task": {"name": "pca", "dim": 8}, "generations": 50})
    summary = ep.run(cfg, "runs/my-oja")
    print(summary["rule"]["equation"])
"""

from __future__ import annotations

from pathlib import Path

from . import analysis, backends, checkpoint, config, meta, networks, rules, runner, tasks
from .api import BoundRule, Result, evolve, meta_gradient
from .backends import MemberError
from .config import Config, ConfigError
from .experiment import Experiment, build
from .tasks import FitnessError, FitnessTask, check_fitness
from .trainer import SearchDiverged, TrainResult, finalize, prepare_run_dir, train

__version__ = "0.1.0"


def run(cfg: Config | dict, run_dir: str | Path) -> dict:
    """Build, train and evaluate an experiment in a new ``run_dir``, on its config's backend.

    Args:
      cfg: a :class:`Config` or a config mapping (validated with :func:`config.parse`).
      run_dir: a directory that does not exist yet.

    Returns:
      ``{"rule": ..., "eval": ...}``: the final rule summary and its held-out evaluation.
    """
    cfg = cfg if isinstance(cfg, Config) else config.parse(cfg)
    return runner.execute(build(cfg), Path(run_dir)).summary


__all__ = [
    "BoundRule",
    "Config",
    "ConfigError",
    "Experiment",
    "FitnessError",
    "FitnessTask",
    "MemberError",
    "Result",
    "SearchDiverged",
    "TrainResult",
    "analysis",
    "backends",
    "build",
    "check_fitness",
    "checkpoint",
    "config",
    "evolve",
    "finalize",
    "meta",
    "meta_gradient",
    "networks",
    "prepare_run_dir",
    "rules",
    "run",
    "runner",
    "tasks",
    "train",
]
