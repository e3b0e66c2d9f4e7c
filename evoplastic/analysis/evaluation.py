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
    """``["dim=40", "task.steps=10"]`` -> ``["task.dim=40", "task.steps=10"]``;
    ``task=mnist1d`` -> ``task.name=mnist1d``; ``network.*`` changes are kept as they are."""
    out = []
    for item in items:
        key = item.split("=", 1)[0]
        if key == "task":
            out.append(f"task.name={item.split('=', 1)[1]}")
        elif key.startswith(("task.", "network.")):
            out.append(item)
        else:
            out.append(f"task.{item}")
    return out


# task options that carry over when ``task=NAME`` changes the family (the episode shape)
CARRIED_TASK_OPTIONS = ("shots", "query_per_class", "epochs")


def _new_task_section(task: dict, name: str) -> dict:
    """The task section for family ``name``: only the run's episode options it accepts."""
    from .. import tasks

    family = tasks.TASKS.get(name)
    accepted = {f.name for f in dataclasses.fields(family)} if family else set()
    carried = {k: task[k] for k in CARRIED_TASK_OPTIONS if k in task and k in accepted}
    return {"name": name} | carried


def config_with_task(run_dir: Path, items) -> tuple[Config, dict]:
    """The run's config with ``TASK_PARAM=VALUE`` changes (checked: a
    :class:`~evoplastic.config.ConfigError` names a bad one) and no test variants; and the
    changes as ``{"task.param": value text}``.

    ``task=NAME`` evaluates on another task family: the task section is replaced by
    ``NAME``'s defaults and the run's episode options (:data:`CARRIED_TASK_OPTIONS`) that
    ``NAME`` accepts, before the other changes apply. ``network.OPTION=VALUE`` changes the
    network (e.g. ``network.hidden=[64,64]``)."""
    data = safe_load((Path(run_dir) / "config.yaml").read_text())
    assignments = task_assignments(items)
    names = [a.split("=", 1)[1] for a in assignments if a.split("=", 1)[0] == "task.name"]
    if names and names[-1] != data["task"].get("name"):  # another family: a fresh section
        data["task"] = _new_task_section(data["task"], names[-1])
    for item in assignments:
        set_override(data, item)
    cfg = parse(data)
    cfg = dataclasses.replace(cfg, test=dataclasses.replace(cfg.test, variants={}))
    changes = dict(a.split("=", 1) for a in assignments)
    return cfg, changes


def evaluate_run(exp, genome, instances: int, baselines: bool = True) -> dict:
    """``{rule: {metric: summary}}`` of the run's rule and the baselines on the trained task
    (``baselines=False``: the rule alone, as ``evolved``).

    A supervised task on a network with hidden layers also gets layer-local training
    (``local_sgd``, ``local_adam``: each layer by backprop through its own head, tuned like
    SGD and Adam) on the same network, initial weights, examples and steps.
    """
    from .baselines import evaluate_layer_local, supports_backprop
    from .report import evaluate_final, summarize

    if not baselines:
        return {"evolved": evaluate_rule(exp, genome, instances)}
    results = evaluate_final(exp, genome, instances)["trained"]
    family = exp.family
    if supports_backprop(family) and len(getattr(family.network, "sizes", ())) > 2:
        init_ws = exp.rule.weights(genome) if exp.rule.weights is not None else None
        for opt in ("sgd", "adam"):
            raw = evaluate_layer_local(family, instances, opt, init_ws)
            results[f"local_{opt}"] = {k: summarize(v) for k, v in raw.items()}
    return results


def evaluate_rule(exp, genome, instances: int) -> dict:
    """``{metric: summary}`` of the rule alone on the trained task's held-out instances."""
    from ..tasks.evaluation import evaluate_genome
    from .report import summarize

    raw = evaluate_genome(exp.family, exp.rule, genome, instances)
    return {k: summarize(v) for k, v in raw.items()}


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


def keeps_learning(by_value: dict, name: str) -> bool:
    """Whether rule ``name`` diverges at no value of a sweep and its headline metric at every
    later value is at least (accuracy) or at most (loss) its figure at the first value."""
    first = next(iter(by_value.values()))
    metric = headline_metric(first)
    start = first[name][metric]["mean"]
    for results in by_value.values():
        res = results[name]
        mean = res[metric]["mean"]
        if res["loss"]["nonfinite"] or not mean == mean:  # a diverged instance, or no figure
            return False
        if (mean < start) if metric == "accuracy" else (mean > start):
            return False
    return True


def sweep_table(param: str, by_value: dict) -> tuple[list[str], list[list[str]]]:
    """``(columns, rows)``: per rule, the headline metric's mean ± 95% interval at every value,
    the diverged instances summed over values, and whether it keeps learning
    (:func:`keeps_learning`: the first value taken as the rule's own horizon)."""
    first = next(iter(by_value.values()))
    metric = headline_metric(first)
    columns = ["rule", *(f"{param.removeprefix('task.')}={v} {metric}" for v in by_value)]
    columns += ["diverged", "keeps learning"]
    rows = []
    for name in first:
        row = [name]
        for results in by_value.values():
            s = results[name][metric]
            row.append(f"{s['mean']:.4g} ± {s['ci95']:.2g}")
        row.append(str(sum(r[name]["loss"]["nonfinite"] for r in by_value.values())))
        row.append("yes" if keeps_learning(by_value, name) else "no")
        rows.append(row)
    return columns, rows


def carry_genome(source_exp, genome, target_exp):
    """The run's ``genome`` (built for ``source_exp``) for ``target_exp``'s network.

    A rule shared by every synapse (``mlp``, ``stateful``, a shared ``polynomial``) has a
    genome independent of the network's shape: it is returned as it is. A ``polynomial``
    rule with ``per_layer`` holds one coefficient vector per layer (``[n_layers, K]``); on
    a network of another depth, hidden layer ``l`` uses the run's hidden layer
    ``min(l, n_hidden - 1)`` (extra hidden layers repeat the last hidden layer's
    coefficients) and the output layer the run's output coefficients. Anything else whose
    genome does not fit raises ``ValueError`` with one line.
    """
    import jax
    import numpy as np

    def shapes(tree):
        leaves, treedef = jax.tree.flatten(tree)
        return treedef, [np.shape(x) for x in leaves]

    if shapes(genome) == shapes(target_exp.genome_template):
        return genome
    cfg = source_exp.config
    template = (
        np.asarray(target_exp.genome_template)
        if not isinstance(target_exp.genome_template, (dict, list, tuple))
        else None
    )
    per_layer = cfg.rule.get("name") == "polynomial" and cfg.rule.get("per_layer")
    if not per_layer or template is None or np.ndim(genome) != 2 or template.ndim != 2:
        raise ValueError(
            f"rule {cfg.rule.get('name')!r}: its genome depends on the network's shape and"
            " cannot be carried to another network"
        )
    genome = np.asarray(genome)
    n_old, n_new = genome.shape[0], template.shape[0]
    rows = [genome[min(layer, n_old - 2)] for layer in range(n_new - 1)] + [genome[-1]]
    return jax.numpy.asarray(np.stack(rows), dtype=template.dtype)
