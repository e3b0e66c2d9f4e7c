"""evoplastic: discover biologically plausible learning rules by meta-optimization.

A model network's synapses change only through a local plasticity rule; an evolution
strategy (evosax) searches the rule's parameters so that fresh networks *learn* a task
family. The pieces are pure functions over pytrees:

* :mod:`evoplastic.rules` -- ``init(key) -> genome``, ``update(genome, signals) -> dw``;
* :mod:`evoplastic.networks` -- plastic model networks stepping online with ``lax.scan``;
* :mod:`evoplastic.tasks` -- task families with disjoint meta-train / meta-test splits;
* :mod:`evoplastic.meta` -- evosax strategies by name;
* :mod:`evoplastic.backends` -- evaluation (``local``: one compiled generation).

Example::

    import evoplastic as ep
    cfg = ep.config.parse({"task": {"name": "pca", "dim": 8}, "generations": 50})
    result = ep.run(cfg, "runs/my-oja")
    print(result["rule"]["equation"])
"""

from __future__ import annotations

from pathlib import Path

from . import analysis, backends, checkpoint, config, meta, networks, rules, tasks
from .config import Config, ConfigError
from .experiment import Experiment, build
from .trainer import TrainResult, finalize, prepare_run_dir, train

__version__ = "0.1.0"


def run(cfg: Config | dict, run_dir: str | Path) -> dict:
    """Build, train and evaluate an experiment in a new ``run_dir``.

    Args:
      cfg: a :class:`Config` or a config mapping (validated with :func:`config.parse`).
      run_dir: a directory that does not exist yet.

    Returns:
      ``{"rule": ..., "eval": ...}``: the final rule summary and its held-out evaluation.
    """
    cfg = cfg if isinstance(cfg, Config) else config.parse(cfg)
    exp = build(cfg)
    prepare_run_dir(Path(run_dir), exp)
    result = train(exp, Path(run_dir))
    return finalize(exp, Path(run_dir), result.genome, result.records)


__all__ = [
    "Config",
    "ConfigError",
    "Experiment",
    "TrainResult",
    "analysis",
    "backends",
    "build",
    "checkpoint",
    "config",
    "finalize",
    "meta",
    "networks",
    "prepare_run_dir",
    "rules",
    "run",
    "tasks",
    "train",
]
