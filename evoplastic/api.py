"""The Python API: evolve or meta-train a genome for your own fitness function or task family.

:func:`evolve` (evolution strategies) and :func:`meta_gradient` (backprop through the
fitness) take

* a plain function ``fitness(genome, key) -> loss`` (jittable, a scalar loss to minimize)
  and a genome template (a pytree of arrays: the initial genome, the search mean of
  generation 0);
* a task family object (``sample``/``inner_loop``, see docs/concepts.md) and a plasticity
  rule (``rule=``) whose genome is searched; or
* an import path ``"package.module:make_task"`` of a factory returning either.

Both build a :class:`~evoplastic.config.Config` and an
:class:`~evoplastic.experiment.Experiment` and run the same trainer as ``evoplastic run``
(checkpoints, metrics, resume, the local and Ray backends), and return a :class:`Result`.

Example::

    import jax.numpy as jnp
    import evoplastic as ep

    def fitness(genome, key):
        return jnp.sum((genome - jnp.array([1.0, -2.0, 0.5])) ** 2)

    result = ep.evolve(fitness, jnp.zeros(3), population_size=16, generations=60)
    print(result.genome)          # close to [1, -2, 0.5]
    df = result.to_dataframe()    # one row per generation (needs pandas)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.flatten_util
import numpy as np

from . import config as config_mod
from . import runner
from .config import Config
from .experiment import Experiment, build
from .rules.base import Rule, Signals
from .tasks import custom
from .trainer import Reporter


@dataclasses.dataclass(frozen=True)
class BoundRule:
    """A plasticity rule with its genome fixed: ``dw = bound(signals)``.

    Attributes:
      rule: the rule (:class:`~evoplastic.rules.Rule`).
      genome: its genome.

    Example::

        dw = result.rule(ep.rules.Signals(pre=x, post=y, w=w))
        print(result.rule)  # the rule's equation
    """

    rule: Rule
    genome: Any

    def __call__(self, signals: Signals) -> jax.Array:
        return self.rule.update(self.genome, signals)

    def __str__(self) -> str:
        return self.rule.describe(self.genome)


@dataclasses.dataclass(frozen=True)
class Result:
    """What :func:`evolve` and :func:`meta_gradient` return.

    Attributes:
      genome: the best genome: the search distribution's mean at the end of an evolution
        strategy (what it converges to; see docs/architecture.md, "The best genome"), or
        the final genome of the meta-gradient.
      rule: for a task family with a plasticity rule, the rule with that genome as a
        callable :class:`BoundRule` (``rule(signals) -> dw``); for a fitness function,
        the genome itself.
      history: one record (a dict) per generation, as in ``metrics.jsonl``:
        ``generation``, ``best_loss``, ``mean_loss``, ``median_loss``, ``nonfinite``,
        ``time_s``, ... ; ``pandas.DataFrame(result.history)`` makes a table.
      run_dir: the run directory, if one was asked for (else ``None``).
      generations: finished generations (or gradient steps).
      experiment: the built experiment (config, family, rule, strategy).
      summary: for a run directory, ``{"rule": ..., "eval": ...}`` as written to
        ``best_rule.json`` and ``eval.json``; else ``None``.
    """

    genome: Any
    rule: Any
    history: list[dict]
    run_dir: Path | None
    generations: int
    experiment: Experiment
    summary: dict | None = None

    @property
    def config(self) -> Config:
        """The resolved config of the run."""
        return self.experiment.config

    def to_dataframe(self):
        """The history as a ``pandas.DataFrame`` (pandas is imported only here)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install pandas") from None
        return pd.DataFrame(self.history)


class _Callback(Reporter):
    def __init__(self, callback: Callable[[dict], None] | None):
        self.callback = callback

    def update(self, record: dict) -> None:
        if self.callback is not None:
            self.callback(record)

    def warn(self, message: str) -> None:
        warnings.warn(message, stacklevel=2)


def _task_section(fitness, genome_template, task_params) -> tuple[dict, Any]:
    """The config's ``task`` section and the object :func:`build` receives (or None)."""
    if isinstance(fitness, str):
        section = {"name": fitness, **(task_params or {})}
        if genome_template is not None:
            section["genome"] = _flat_list(genome_template)
        return section, None
    if task_params:
        raise ValueError("task_params: only for a task named by import path")
    if custom.is_task_family(fitness) or isinstance(fitness, custom.FitnessTask):
        obj = fitness
    elif callable(fitness):
        if genome_template is None:
            raise ValueError(
                "genome_template: a fitness function needs an initial genome, e.g. jnp.zeros(3)"
            )
        obj = custom.FitnessTask(fitness, genome_template, _name(fitness))
    else:
        raise TypeError(
            f"fitness: expected a function fitness(genome, key) -> loss, a task family or an"
            f" import path 'package.module:make_task', got {type(fitness).__name__}"
        )
    section = {"name": custom.PYTHON_PREFIX + _name(fitness)}
    template = getattr(obj, "genome_template", None)
    if template is not None:
        section["genome"] = _flat_list(template)
    return section, obj


def _needs_rule(obj) -> bool:
    return obj is not None and not isinstance(obj, custom.FitnessTask)


def _name(obj) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{qualname}"


def _flat_list(tree) -> list[float]:
    flat, _ = jax.flatten_util.ravel_pytree(jax.tree.map(np.asarray, tree))
    return [float(x) for x in np.asarray(flat)]


def _rule_with_init(rule: Rule | None, genome_template) -> Rule | None:
    if rule is None or genome_template is None:
        return rule
    template = jax.tree.map(jax.numpy.asarray, genome_template)
    return dataclasses.replace(rule, init=lambda key: template)


def _run(
    data: dict,
    obj,
    rule: Rule | None,
    run_dir,
    resume: bool,
    callback,
    check: bool,
) -> Result:
    cfg = config_mod.parse(data)
    exp = build(cfg, family=obj, rule=rule, check=check)
    outcome = runner.execute(exp, run_dir, resume=resume, reporter=_Callback(callback))
    uses_rules = getattr(exp.family, "uses_rules", True)
    genome = outcome.genome
    return Result(
        genome=genome,
        rule=BoundRule(exp.rule, genome) if uses_rules else genome,
        history=outcome.records,
        run_dir=outcome.run_dir,
        generations=outcome.generations,
        experiment=exp,
        summary=outcome.summary,
    )


def seed_of(seed) -> int:
    """The integer seed of ``seed``: an int as it is, a JAX PRNG key (typed or raw) drawn
    from, so that the same key gives the same run."""
    if isinstance(seed, bool):
        raise TypeError(f"seed: expected an int or a JAX PRNG key, got {seed!r}")
    if isinstance(seed, int | np.integer):
        return int(seed)
    try:
        return int(jax.random.randint(seed, (), 0, 2**31 - 1))
    except (TypeError, ValueError):
        raise TypeError(f"seed: expected an int or a JAX PRNG key, got {seed!r}") from None


def evolve(
    fitness: Callable | Any | str,
    genome_template: Any = None,
    strategy: str = "cma_es",
    population_size: int = 16,
    generations: int = 100,
    backend: str = "local",
    seed: int | jax.Array = 0,
    run_dir: str | Path | None = None,
    *,
    rule: Rule | None = None,
    std_init: float = 0.3,
    instances: int = 1,
    common_instances: bool = True,
    strategy_params: dict | None = None,
    strategy_options: dict | None = None,
    shard_size: int | None = None,
    task_params: dict | None = None,
    checkpoint_every: int = 10,
    test_every: int = 0,
    test_instances: int = 32,
    final_instances: int = 32,
    workers: int | None = None,
    ray_address: str | None = None,
    ray_options: dict | None = None,
    resume: bool = False,
    name: str = "evolve",
    callback: Callable[[dict], None] | None = None,
    check: bool = True,
) -> Result:
    """Minimize ``fitness`` over genomes with an evolution strategy (evosax).

    Args:
      fitness: ``fitness(genome, key) -> loss``, jittable, a scalar loss; or a task family
        (then pass ``rule``); or an import path ``"package.module:make_task"`` of a factory
        returning either (called with ``task_params``).
      genome_template: the initial genome (the search mean of generation 0), a pytree of
        arrays; required for a fitness function. With a task family and a rule, it
        replaces ``rule.init``.
      strategy: an evosax strategy name (``evoplastic list`` shows them).
      population_size, generations: as in a config.
      seed: an int, as in a config, or a JAX PRNG key (``jax.random.key(3)`` or a raw
        ``PRNGKey``), from which the run's integer seed is drawn (the config records it).
      backend: ``"local"`` (in process) or ``"ray"`` (actors; ``workers``,
        ``ray_address`` and the config's other ``ray`` options in ``ray_options``; a
        running Ray instance is used if there is one, else a local one is started).
      run_dir: a new directory for ``config.yaml``, ``metrics.jsonl``, checkpoints,
        ``best_rule.json`` and ``eval.json`` (the layout of ``evoplastic run``); ``None``
        keeps nothing on disk.
      rule: the plasticity rule whose genome a task family's inner loop uses.
      std_init: the initial search scale.
      instances: fitness calls per member and generation (keys ``fold_in(eval_key, j)``,
        split ``train``); the member's fitness is their mean.
      common_instances: every member gets the same keys in a generation (less noisy
        ranks); otherwise each member its own.
      strategy_params, strategy_options: evosax ``Params`` fields and constructor options.
      shard_size: evaluate the population in batches of this size (see the config's
        ``evaluation.shard_size``).
      checkpoint_every: generations between checkpoints.
      test_every, test_instances, final_instances: held-out evaluations (keys of the
        ``test`` split), every ``test_every`` generations (0: never) and, with a
        ``run_dir``, at the end.
      resume: continue the run in ``run_dir`` from its newest checkpoint; it must have
        been started with the same arguments and fitness.
      name: the run's name in its config.
      callback: called with each generation's record.
      check: trace the fitness first and raise :class:`~evoplastic.tasks.FitnessError`
        if it is not jittable, not a scalar or has Python side effects.

    Returns:
      a :class:`Result`.

    Raises:
      ConfigError: a bad argument (the message names the config field).
      FitnessError: a fitness that cannot be used; the message says what was wrong and
        how to fix it (it is also a ConfigError, as the CLI reports it).
      MemberError: a member's evaluation failed (a ``checkify.check``, a raising host
        callback); the run directory keeps its last checkpoint.

    Example::

        result = ep.evolve(lambda g, k: jnp.sum(g**2), jnp.ones(4), generations=30)
    """
    section, obj = _task_section(fitness, genome_template, task_params)
    if _needs_rule(obj) and rule is None:
        raise ValueError("rule: a task family needs the plasticity rule to evolve (rule=...)")
    data = {
        "name": name,
        "seed": seed_of(seed),
        "generations": generations,
        "backend": backend,
        "task": section,
        "strategy": {
            "name": strategy,
            "population_size": population_size,
            "std_init": std_init,
            "params": dict(strategy_params or {}),
            "options": dict(strategy_options or {}),
        },
        "evaluation": {
            "instances": instances,
            "common_instances": common_instances,
            "shard_size": shard_size,
        },
        "test": {
            "every": test_every,
            "instances": test_instances,
            "final_instances": final_instances,
        },
        "checkpoint": {"every": checkpoint_every},
        "ray": {"address": ray_address, "workers": workers, **(ray_options or {})},
    }
    return _run(data, obj, _rule_with_init(rule, genome_template), run_dir, resume, callback, check)


def meta_gradient(
    fitness: Callable | Any | str,
    genome_template: Any = None,
    optimizer: str = "adam",
    learning_rate: float = 0.01,
    steps: int = 100,
    seed: int | jax.Array = 0,
    run_dir: str | Path | None = None,
    *,
    rule: Rule | None = None,
    instances: int = 1,
    clip_norm: float = 1.0,
    init_std: float = 0.0,
    optimizer_options: dict | None = None,
    remat: str = "none",
    shard_size: int | None = None,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    ray_options: dict | None = None,
    task_params: dict | None = None,
    checkpoint_every: int = 10,
    test_every: int = 0,
    test_instances: int = 32,
    final_instances: int = 32,
    resume: bool = False,
    name: str = "meta_gradient",
    callback: Callable[[dict], None] | None = None,
    check: bool = True,
) -> Result:
    """Minimize ``fitness`` by gradient descent on the genome (optax).

    Each step averages ``fitness(genome, key_j)`` over ``instances`` keys, takes
    ``jax.grad`` of it, clips it to the global norm ``clip_norm`` (0: off) and applies one
    step of ``optimizer``; a step whose loss or gradient is not finite is skipped and
    counted. For a task family (with ``rule``) the family must be steppable
    (``init_inner``/``inner_step``/``score``); the gradient flows through the unrolled
    inner loop (``remat`` bounds its memory, see :func:`evoplastic.meta.unroll`).

    Args:
      fitness, genome_template, rule, task_params: as for :func:`evolve`; the fitness must
        also be differentiable.
      optimizer: an optax optimizer name (``adam``, ``sgd``, ...).
      learning_rate: its learning rate; ``optimizer_options`` adds other arguments.
      steps: gradient steps (the run's generations).
      init_std: Gaussian noise added to the template for the first genome (0: none).
      shard_size: instances per shard; the shards' loss and gradient sums are added in
        order, so a run gives the same bits on every backend with the same shard size.
      backend, workers, ray_address, ray_options: as for :func:`evolve`; with ``"ray"``
        the shards of instances are spread over the actors (data-parallel).
      instances, seed, run_dir, checkpoint_every, test_*, resume, name, callback, check:
        as for :func:`evolve`.

    Returns:
      a :class:`Result`.

    Example::

        result = ep.meta_gradient(lambda g, k: jnp.sum(g**2), jnp.ones(4), steps=50,
                                  learning_rate=0.1)
    """
    section, obj = _task_section(fitness, genome_template, task_params)
    if _needs_rule(obj) and rule is None:
        raise ValueError("rule: a task family needs the plasticity rule to learn (rule=...)")
    if check and isinstance(obj, custom.FitnessTask):
        _check_differentiable(obj)
    spec = {"name": optimizer, "learning_rate": learning_rate, **(optimizer_options or {})}
    data = {
        "name": name,
        "seed": seed_of(seed),
        "generations": steps,
        "backend": backend,
        "task": section,
        "evaluation": {"instances": instances, "shard_size": shard_size},
        "meta": {
            "optimizer": "gradient",
            "gradient": {
                "optimizer": spec,
                "clip_norm": clip_norm,
                "init_std": init_std,
                "remat": remat,
            },
        },
        "test": {
            "every": test_every,
            "instances": test_instances,
            "final_instances": final_instances,
        },
        "checkpoint": {"every": checkpoint_every},
        "ray": {"address": ray_address, "workers": workers, **(ray_options or {})},
    }
    return _run(data, obj, _rule_with_init(rule, genome_template), run_dir, resume, callback, check)


def _check_differentiable(task: custom.FitnessTask) -> None:
    template = jax.tree.map(jax.numpy.asarray, task.genome_template)
    try:
        jax.eval_shape(
            jax.grad(lambda g, k: task.inner_loop(None, g, k)[0]), template, jax.random.PRNGKey(0)
        )
    except Exception as err:  # noqa: BLE001 (reported in one line)
        text = str(err).strip().splitlines()
        first = text[0] if text else type(err).__name__
        raise custom.FitnessError(
            f"the fitness is not differentiable with jax.grad ({type(err).__name__}: {first});"
            " use evolve (no gradients needed) or differentiable operations (e.g. lax.scan"
            " instead of lax.while_loop)"
        ) from None


__all__ = ["BoundRule", "Result", "evolve", "meta_gradient"]
