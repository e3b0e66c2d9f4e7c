"""``evoplastic eval``: a finished run's rule on held-out instances, with task changes.

The command line only parses arguments and prints; the work is here:
:func:`config_with_task` applies ``TASK_PARAM=VALUE`` changes to a run's config,
:func:`evaluate_run` evaluates the rule and its baselines, :func:`table` lays the results out
as rows (one per rule: mean ± 95% interval and median per metric, diverged instances).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import Config, parse, safe_load, set_override


def task_assignments(items) -> list[str]:
    """``["dim=40", "task.steps=10"]`` -> ``["task.dim=40", "task.steps=10"]``."""
    return [item if item.split("=", 1)[0].startswith("task.") else f"task.{item}" for item in items]


def config_with_task(run_dir: Path, items) -> tuple[Config, dict]:
    """The run's config with ``TASK_PARAM=VALUE`` changes (checked: a
    :class:`~evoplastic.config.ConfigError` names a bad one) and no test variants; and the
    changes as ``{"task.param": value text}``."""
    data = safe_load((Path(run_dir) / "config.yaml").read_text())
    assignments = task_assignments(items)
    for item in assignments:
        set_override(data, item)
    cfg = parse(data)
    cfg = dataclasses.replace(cfg, test=dataclasses.replace(cfg.test, variants={}))
    changes = dict(a.split("=", 1) for a in assignments)
    return cfg, changes


def evaluate_run(exp, genome, instances: int) -> dict:
    """``{rule: {metric: summary}}`` of the run's rule and the baselines on the trained task."""
    from .report import evaluate_final

    return evaluate_final(exp, genome, instances)["trained"]


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """``(columns, rows)``: per rule, mean ± 95% interval and median of each metric, and the
    number of diverged (non-finite) instances."""
    metrics = list(next(iter(results.values())))
    columns = ["rule"]
    for m in metrics:
        columns += [f"{m} mean ± 95%", f"{m} median"]
    columns.append("diverged")
    rows = []
    for name, res in results.items():
        row = [name]
        for m in metrics:
            s = res[m]
            row += [f"{s['mean']:.4g} ± {s['ci95']:.2g}", f"{s['median']:.4g}"]
        row.append(str(res["loss"]["nonfinite"]))
        rows.append(row)
    return columns, rows


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``"shots=5,10,20"`` -> ``("task.shots", ["5", "10", "20"])``; a
    :class:`~evoplastic.config.ConfigError` for anything else."""
    from ..config import ConfigError

    name, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not name.strip() or len(items) < 2:
        raise ConfigError(
            f"--sweep {text!r}: expected TASK_PARAM=V1,V2[,...] (two values at least), "
            "e.g. --sweep shots=5,10,20"
        )
    (assignment,) = task_assignments([f"{name.strip()}=x"])
    return assignment.split("=", 1)[0], items


def sweep_configs(run_dir: Path, sweep: str, items) -> tuple[str, list[tuple[str, Config]]]:
    """The run's config at every value of a swept task parameter (with the other
    ``TASK_PARAM=VALUE`` changes), every one checked before anything is evaluated."""
    param, values = parse_sweep(sweep)
    fixed = [i for i in task_assignments(items) if i.split("=", 1)[0] != param]
    return param, [(v, config_with_task(run_dir, [*fixed, f"{param}={v}"])[0]) for v in values]


def headline_metric(results: dict) -> str:
    """The metric a sweep plots: accuracy where the task reports it, else the loss."""
    metrics = next(iter(results.values()))
    return "accuracy" if "accuracy" in metrics else "loss"


def sweep_table(param: str, by_value: dict) -> tuple[list[str], list[list[str]]]:
    """``(columns, rows)``: per rule, the headline metric's mean ± 95% interval at every value
    and the diverged instances summed over values."""
    first = next(iter(by_value.values()))
    metric = headline_metric(first)
    columns = ["rule", *(f"{param.removeprefix('task.')}={v} {metric}" for v in by_value)]
    columns.append("diverged")
    rows = []
    for name in first:
        row = [name]
        for results in by_value.values():
            s = results[name][metric]
            row.append(f"{s['mean']:.4g} ± {s['ci95']:.2g}")
        row.append(str(sum(r[name]["loss"]["nonfinite"] for r in by_value.values())))
        rows.append(row)
    return columns, rows
