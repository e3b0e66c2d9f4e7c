"""Learned selection against evosax strategies at an equal evaluation budget.

Every strategy gets the same population size and number of generations on each held-out
problem, from the same initial mean and step size, for several seeds. Problems are

* cheap ones (:func:`~evoplastic.studies.selection_training.fixed_problem`): their rotation and
  optimum are drawn from the *test* key stream, which training never uses, at dimensions
  training need not have seen; the final loss is ``f(mean)`` of the last generation;
* plasticity tasks (an experiment config, e.g. ``experiments/oja.yaml``): the strategy is
  swapped in and the final loss is the mean held-out loss of the final mean genome over the
  task's ``test.final_instances`` meta-test instances.

A plasticity task runs through the run driver (:func:`evoplastic.runner.execute`, on the
task config's backend), the path of ``evoplastic run``; a cheap problem runs the same
compiled generation step (:class:`~evoplastic.backends.GenerationStep`) in process.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import backends, runner
from ..experiment import build
from ..meta import selection, strategies
from ..trainer import SearchDiverged
from . import selection_training as st

LEARNED = "learned"
UNTRAINED = "untrained"  # the policy as training starts from it (an ablation)


@dataclasses.dataclass(frozen=True)
class ProblemSpec:
    """A held-out problem: a cheap ``kind`` or a plasticity task ``config`` (a path)."""

    name: str
    kind: str | None = None
    dim: int = 10
    distance: float = 2.0
    condition: float = 1.0
    coef: float = 0.0
    config: str | None = None


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """The config of ``evoplastic compare-selection`` (a YAML file)."""

    policy: str = "experiments/selection/policy.npz"
    population_size: int = 16
    generations: int = 100
    std_init: float = 0.3
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    strategies: tuple[str, ...] = (LEARNED, "open_es", "snes", "cma_es")
    problems: tuple[dict, ...] = ()


def parse_config(data: Any) -> tuple[CompareConfig, list[ProblemSpec]]:
    """Validate a ``compare-selection`` mapping (ConfigError naming the field if bad)."""
    from ..config import ConfigError
    from ..config.fields import _from_dict, _positive

    cfg = _from_dict(CompareConfig, data, "")
    _positive("generations", cfg.generations)
    _positive("std_init", cfg.std_init)
    if cfg.population_size < 2:
        raise ConfigError(f"population_size: must be >= 2, got {cfg.population_size}")
    if not cfg.seeds:
        raise ConfigError("seeds: list at least one seed")
    for name in cfg.strategies:
        if name not in (LEARNED, UNTRAINED) and name not in strategies.STRATEGIES:
            raise ConfigError(
                f"strategies: unknown strategy {name!r} (learned, untrained or one of"
                f" {', '.join(strategies.STRATEGIES)})"
            )
    if not cfg.problems:
        raise ConfigError("problems: list at least one problem")
    specs = []
    for i, raw in enumerate(cfg.problems):
        spec = _from_dict(ProblemSpec, raw, f"problems[{i}]")
        if (spec.kind is None) == (spec.config is None):
            raise ConfigError(f"problems[{i}]: give either kind (a cheap problem) or config")
        if spec.kind is not None and spec.kind not in st.KINDS:
            raise ConfigError(
                f"problems[{i}].kind: unknown problem {spec.kind!r} (one of {', '.join(st.KINDS)})"
            )
        if spec.kind is not None and spec.dim < 2:
            raise ConfigError(f"problems[{i}].dim: must be >= 2, got {spec.dim}")
        specs.append(spec)
    return cfg, specs


def untrained_policy(policy):
    """The policy that training starts from (seed 0), with the hidden size of ``policy``."""
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
    return selection.init_policy(key, selection.hidden_size(policy))


def _policy_of(name, policy):
    return untrained_policy(policy) if name == UNTRAINED else policy


def _strategy(name, population_size, template, std_init, policy):
    if name in (LEARNED, UNTRAINED):
        return selection.make(population_size, template, _policy_of(name, policy), std_init)
    return strategies.make(name, population_size, template, std_init=std_init)


def _search(strategy, es_params, fitness, init_state, seed: int, generations: int):
    """The state after ``generations`` of ``strategy`` on ``fitness`` (the run's step)."""
    step = backends.make_generation_step(strategy, es_params, fitness)
    run_key = jax.random.PRNGKey(seed)
    state = init_state(run_key)
    for g in range(generations):
        state, _ = step(state, run_key, g)
    return state


def run_cheap(spec: ProblemSpec, name: str, seed: int, cfg: CompareConfig, policy) -> float:
    """Final ``f(mean)`` of strategy ``name`` on the held-out draw ``seed`` of ``spec``."""
    index = zlib.crc32(spec.name.encode()) % 2**20 * 1000 + seed
    problem = st.fixed_problem(
        st.problem_key(st.TEST_SEED, "test", index),
        spec.kind,
        spec.dim,
        spec.distance,
        spec.condition,
        spec.coef,
    )
    template = jnp.zeros(spec.dim)
    strategy, es_params = _strategy(name, cfg.population_size, template, cfg.std_init, policy)

    def fitness(genome, key):
        return st.problem_loss(problem, genome)

    def init_state(run_key):
        k = jax.random.fold_in(run_key, 2**31 - 1)
        return backends.strong_types(strategy.init(k, template, es_params))

    state = _search(strategy, es_params, fitness, init_state, seed, cfg.generations)
    return float(st.problem_loss(problem, strategy.get_mean(state)))


def run_task(task_cfg, name: str, seed: int, cfg: CompareConfig, policy) -> tuple[float, int]:
    """``(mean held-out loss, diverged instances)`` of the final mean genome of ``name``.

    The mean is over the instances whose loss is finite; diverged ones are counted.
    """
    meta = task_cfg.meta
    if name in (LEARNED, UNTRAINED):
        meta = dataclasses.replace(meta, selection="learned", selection_policy=cfg.policy)
        strategy_cfg = dataclasses.replace(task_cfg.strategy, params={}, optimizer=None, options={})
    else:
        strategy_cfg = dataclasses.replace(
            task_cfg.strategy, name=name, params={}, optimizer=None, options={}
        )
    strategy_cfg = dataclasses.replace(
        strategy_cfg, population_size=cfg.population_size, std_init=cfg.std_init
    )
    run_cfg = dataclasses.replace(
        task_cfg,
        seed=seed,
        generations=cfg.generations,
        strategy=strategy_cfg,
        meta=meta,
        test=dataclasses.replace(task_cfg.test, every=0),  # only the final evaluation counts
        time_budget_s=None,
    )
    exp = build(run_cfg)
    if name == UNTRAINED:
        outer = exp.outer
        es_params = outer.es_params.replace(policy=untrained_policy(policy))
        exp = exp.with_outer(dataclasses.replace(outer, es_params=es_params))
    try:
        genome = runner.execute(exp, None, finish=None).genome
    except SearchDiverged:
        return float("nan"), run_cfg.test.final_instances
    result = backends.evaluate_genome(exp.family, exp.rule, genome, run_cfg.test.final_instances)
    loss = np.asarray(result["loss"])
    finite = np.isfinite(loss)
    return float(np.mean(loss[finite])) if finite.any() else float("nan"), int((~finite).sum())


def compare(
    cfg: CompareConfig,
    specs: list[ProblemSpec],
    task_configs: dict[str, Any],
    policy,
    echo: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, list]]]:
    """``{problem: {strategy: {"loss": [per seed], "diverged": [per seed]}}}``.

    ``diverged`` counts the held-out instances of a plasticity task whose loss is not finite
    (left out of that seed's mean loss); cheap problems never diverge (always 0).

    ``task_configs`` maps each plasticity problem's name to its parsed
    :class:`~evoplastic.config.Config`; ``policy`` is the learned policy.
    """
    echo = echo or (lambda line: None)
    results: dict[str, dict[str, dict[str, list]]] = {}
    for spec in specs:
        results[spec.name] = {}
        for name in cfg.strategies:
            t0 = time.perf_counter()
            losses, diverged = [], []
            for seed in cfg.seeds:
                if spec.kind is not None:
                    loss, bad = run_cheap(spec, name, seed, cfg, policy), 0
                else:
                    loss, bad = run_task(task_configs[spec.name], name, seed, cfg, policy)
                losses.append(loss)
                diverged.append(bad)
            results[spec.name][name] = {"loss": losses, "diverged": diverged}
            echo(
                f"{spec.name:>12}  {name:>9}  mean final loss {np.nanmean(losses):.4g}"
                f"  diverged {sum(diverged)}  ({time.perf_counter() - t0:.0f}s)"
            )
    return results


def markdown_table(results: dict, cfg: CompareConfig) -> str:
    """Mean ± std (median) of the final held-out loss over seeds; the best mean in bold.

    A cell notes held-out instances that diverged (left out of its mean). The last column
    counts the seeds where learned selection ends below each of OpenAI-ES and SNES.
    """
    names = list(cfg.strategies)
    others = [n for n in ("open_es", "snes") if n in names] if LEARNED in names else []
    head = "| problem | " + " | ".join(names) + " |"
    rule = "|---|" + "---|" * len(names)
    if others:
        head += " seeds learned < " + ", ".join(others) + " |"
        rule += "---|"
    lines = [
        f"Final held-out loss after {cfg.generations} generations x {cfg.population_size}"
        f" members (mean ± std over {len(cfg.seeds)} seeds; median in brackets):",
        "",
        head,
        rule,
    ]
    wins = []
    for problem, by_name in results.items():
        loss = {n: np.asarray(by_name[n]["loss"], float) for n in names}
        means = {n: float(np.nanmean(loss[n])) for n in names}
        best = min(means, key=lambda n: means[n] if np.isfinite(means[n]) else np.inf)
        cells = []
        for n in names:
            text = f"{means[n]:.3g} ± {np.nanstd(loss[n]):.2g} ({np.nanmedian(loss[n]):.3g})"
            text = f"**{text}**" if n == best else text
            if sum(by_name[n]["diverged"]):
                text += f" [{sum(by_name[n]['diverged'])} diverged]"
            cells.append(text)
        row = f"| {problem} | " + " | ".join(cells) + " |"
        if others:
            counts = [int(np.sum(loss[LEARNED] < loss[o])) for o in others]
            row += " " + ", ".join(f"{c}/{len(cfg.seeds)}" for c in counts) + " |"
            if all(means[LEARNED] < means[o] for o in others):
                wins.append(problem)
        lines.append(row)
    if others:
        lines += [
            "",
            f"Learned selection below {' and '.join(others)} (mean over seeds) on {len(wins)}"
            f" of {len(results)} problems" + (f" ({', '.join(wins)})." if wins else "."),
        ]
    return "\n".join(lines) + "\n"


__all__ = [
    "LEARNED",
    "UNTRAINED",
    "CompareConfig",
    "ProblemSpec",
    "compare",
    "markdown_table",
    "parse_config",
    "run_cheap",
    "run_task",
    "untrained_policy",
]
