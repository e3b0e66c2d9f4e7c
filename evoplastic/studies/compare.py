"""Outer loops side by side at equal wall-clock budget: ``evoplastic compare``.

A compare config is an ordinary run config (its settings are the shared base) with a
``compare`` section and a ``time_budget_s``::

    time_budget_s: 40          # every run trains for the same wall-clock time
    compare:
      seeds: [0, 1, 2]
      threshold: 0.05          # held-out loss that counts as "reached"
      methods:
        cma_es: {strategy: {name: cma_es}}
        open_es: {strategy: {name: open_es, optimizer: {name: adam, learning_rate: 0.05}}}
        backprop: {meta: {optimizer: gradient}}

Each method is the base config with its sections merged in (:func:`config.method_data`).
:func:`plan` lays out every (method, seed) run; :func:`run_all` runs them one at a time,
**interleaved seed by seed** (for seed ``k``, all methods in an order rotated by ``k``), so
that a change in machine load affects every method alike. Each run is a normal run
directory (``OUT/<config name>/<method>/seed<k>``): it stops at the budget with its
checkpoint (each run goes through the run driver, :func:`evoplastic.runner.execute`, on
the config's backend), then :func:`final_eval` evaluates the final rule on
``test.final_instances`` held-out instances (after the budget; the same for every method).

:func:`collect` and :func:`markdown_report` read only those run directories
(``eval.json``, ``metrics.jsonl``) and ``OUT/compare.json``, so a report can be rebuilt from
the files. Per method it gives the final held-out loss, mean and 95% Student-t interval
over seeds (:func:`seed_interval`), and the time to reach the threshold
(:func:`time_to_threshold`): the training clock ``wall_s`` of the first periodic held-out
test whose loss is at or below it (compilation included, held-out tests excluded).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..analysis.report import t_quantile_975
from ..config import Config, ConfigError, method_data, parse
from ..runner import execute
from ..trainer import Reporter, SearchDiverged, latest_genome

MANIFEST = "compare.json"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a comparison: a resolved config and where its run directory goes."""

    task: str  # the base config's name
    method: str
    seed: int
    config: Config
    run_dir: Path


def plan(data: dict, out: Path, seeds: tuple[int, ...] | None = None) -> list[PlannedRun]:
    """Every run of a compare config mapping, in the order they run (seed by seed).

    Args:
      data: the config mapping (from YAML), with ``compare.methods`` and ``time_budget_s``.
      out: the comparison's output directory.
      seeds: replaces ``compare.seeds``.

    Raises:
      ConfigError: for an invalid config, no methods, or no time budget.
    """
    base = parse(data)
    if not base.compare.methods:
        raise ConfigError(f"{base.name}: compare.methods: list the methods to compare")
    if base.time_budget_s is None:
        raise ConfigError(f"{base.name}: time_budget_s: required (the budget of every run)")
    seeds = tuple(base.compare.seeds if seeds is None else seeds)
    if not seeds:
        raise ConfigError(f"{base.name}: compare.seeds: at least one seed")
    methods = list(base.compare.methods)
    runs = []
    for k, seed in enumerate(seeds):
        order = methods[k % len(methods) :] + methods[: k % len(methods)]
        for method in order:
            cfg = parse(method_data(data, method) | {"seed": seed})
            cfg = dataclasses.replace(cfg, name=f"{base.name}-{method}-seed{seed}")
            run_dir = Path(out) / base.name / method / f"seed{seed}"
            runs.append(PlannedRun(base.name, method, seed, cfg, run_dir))
    return runs


def manifest_entry(data: dict, runs: list[PlannedRun]) -> dict:
    """What the report needs to know about one compare config besides its run files."""
    base = parse(data)
    return {
        "name": base.name,
        "task": base.task["name"],
        "threshold": base.compare.threshold,
        "time_budget_s": base.time_budget_s,
        "methods": list(base.compare.methods),
        "seeds": sorted({r.seed for r in runs}),
        "runs": [
            {"method": r.method, "seed": r.seed, "dir": str(r.run_dir), "order": i}
            for i, r in enumerate(runs)
        ],
    }


def run_all(
    runs: list[PlannedRun],
    build: Callable,
    echo: Callable[[str], None] = print,
    reporter_factory: Callable | None = None,
) -> None:
    """Run (or finish) every planned run in order.

    A run directory with an ``eval.json`` is finished and kept; one without is resumed
    (its training clock goes on from its last metric line).
    """

    class _Echo(Reporter):
        def __init__(self, echo):
            self.echo = echo

        def warn(self, message):
            self.echo(f"warning: {message}")

    def finish(exp, run_dir, result):
        return final_eval(exp, run_dir, result.genome, result.generations)

    exps = [build(r.config) for r in runs]  # every config error before any run starts
    for i, (r, exp) in enumerate(zip(runs, exps, strict=True)):
        if (r.run_dir / "eval.json").is_file():
            echo(f"[{i + 1}/{len(runs)}] {r.run_dir}: finished, kept")
            continue
        reporter = reporter_factory() if reporter_factory else _Echo(echo)
        try:
            result = execute(exp, r.run_dir, resume=True, reporter=reporter, finish=finish)
        except SearchDiverged as err:  # a method's failure, reported with its last rule
            genome = latest_genome(r.run_dir)
            final_eval(exp, r.run_dir, genome, None)
            echo(f"[{i + 1}/{len(runs)}] {r.task} {r.method} seed {r.seed}: stopped, {err}")
            continue
        last = result.records[-1] if result.records else {}
        echo(
            f"[{i + 1}/{len(runs)}] {r.task} {r.method} seed {r.seed}: {result.generations}"
            f" generations in {last.get('wall_s', 0.0):.1f} s"
            + (" (budget reached)" if result.budget_stop else "")
        )


def final_eval(exp, run_dir: Path, genome, generations: int) -> dict:
    """``best_rule.json`` and ``eval.json`` of a compared run: the final rule alone.

    Like :func:`evoplastic.trainer.finalize`, on ``test.final_instances`` held-out
    instances, but without the reference rules and the SGD/Adam learning-rate sweeps
    (the same for every method and seed, and slower than a run here).
    """
    from ..analysis.report import rule_summary, summarize
    from ..backends import evaluate_genome
    from ..trainer import write_json

    raw = evaluate_genome(exp.family, exp.rule, genome, exp.config.test.final_instances)
    results = {"trained": {"evolved": {k: summarize(v) for k, v in raw.items()}}}
    best = rule_summary(exp.rule, genome) | {
        "genome_flat": exp.flat_genome(genome),
        "generations": generations,
    }
    write_json(Path(run_dir) / "best_rule.json", best)
    write_json(Path(run_dir) / "eval.json", results)
    return results


# --- reading the results ------------------------------------------------------------------


def seed_interval(values) -> dict:
    """Mean and 95% Student-t half-width over seeds (finite values; ``n`` counts them).

    With ``n`` values of sample standard deviation ``s``, the half-width is
    ``t_{0.975, n-1} * s / sqrt(n)``; undefined (NaN) for fewer than two values.
    """
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {"mean": math.nan, "ci95": math.nan, "n": 0}
    half = t_quantile_975(n - 1) * v.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": float(v.mean()), "ci95": float(half), "n": n}


def time_to_threshold(records: list[dict], threshold: float, key: str = "test_loss"):
    """``wall_s`` of the first record whose ``key`` is finite and ``<= threshold``; else None.

    Records without ``key`` (generations between periodic tests) and non-finite values
    (stored as ``None``) never count as reached.
    """
    for r in records:
        value = r.get(key)
        if value is not None and math.isfinite(value) and value <= threshold:
            return float(r["wall_s"])
    return None


def _read_json(path: Path):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def run_summary(run_dir: Path, threshold: float | None) -> dict:
    """What one run contributes to the report, read from its files."""
    from ..trainer import read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    ev = _read_json(run_dir / "eval.json")
    out = {"dir": str(run_dir), "finished": ev is not None, "generations": len(records)}
    if records:
        out["wall_s"] = records[-1].get("wall_s")
        out["first_generation_s"] = records[0].get("time_s")
        later = [r["time_s"] for r in records[1:] if r.get("time_s") is not None]
        out["generation_s"] = float(np.median(later)) if later else None
    if ev is not None:
        evolved = ev["trained"]["evolved"]
        out["loss"] = evolved["loss"]["mean"]
        out["instances"] = evolved["loss"]["n"]
        out["diverged"] = evolved["loss"].get("nonfinite", 0)
        metric = next((m for m in evolved if m != "loss"), None)
        if metric is not None:
            out["metric"], out["metric_value"] = metric, evolved[metric]["mean"]
    out["time_to_threshold"] = (
        time_to_threshold(records, threshold) if threshold is not None else None
    )
    # the same time less the first generation (which compiles the step): search time only
    if out["time_to_threshold"] is not None and out.get("first_generation_s") is not None:
        out["search_to_threshold"] = out["time_to_threshold"] - out["first_generation_s"]
    return out


def collect(out: Path) -> list[dict]:
    """Per compare config: its manifest entry with every run's summary, per method."""
    manifest = _read_json(Path(out) / MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"{Path(out) / MANIFEST} not found (not a comparison directory)")
    tasks = []
    for entry in manifest["tasks"]:
        by_method = {m: [] for m in entry["methods"]}
        for run in sorted(entry["runs"], key=lambda r: r["seed"]):
            summary = run_summary(run["dir"], entry["threshold"]) | {"seed": run["seed"]}
            by_method[run["method"]].append(summary)
        tasks.append(entry | {"results": by_method})
    return tasks


def method_row(runs: list[dict]) -> dict:
    """Aggregate a method's runs: seed interval of the final loss, times, threshold."""
    done = [r for r in runs if r["finished"]]
    times = [r["time_to_threshold"] for r in done]
    reached = sorted(t for t in times if t is not None)
    # median over seeds with "not reached" as +inf: defined when most seeds reach it
    median_time = float(np.median([math.inf if t is None else t for t in times])) if times else None
    metric = next((r["metric"] for r in done if "metric" in r), None)
    return {
        "runs": len(runs),
        "finished": len(done),
        "loss": seed_interval([r.get("loss") for r in done]),
        "losses": [r.get("loss") for r in done],
        "metric": metric,
        "metric_value": seed_interval([r.get("metric_value") for r in done]),
        "instances": min((r["instances"] for r in done), default=0),
        "diverged": sum(r.get("diverged", 0) for r in done),
        "generations": [r["generations"] for r in done],
        "first_generation_s": _median([r.get("first_generation_s") for r in done]),
        "generation_s": _median([r.get("generation_s") for r in done]),
        "wall_s": _median([r.get("wall_s") for r in done]),
        "times": times,
        "reached": len(reached),
        "median_time": median_time,
        "median_search_time": _median([r.get("search_to_threshold") for r in done]),
    }


def _median(values):
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def markdown_report(tasks: list[dict]) -> str:
    """One markdown table per compare config (numbers read from the run directories)."""
    parts = []
    for entry in tasks:
        thr = entry["threshold"]
        parts.append(
            f"### {entry['name']} (task {entry['task']}; budget {entry['time_budget_s']:g} s"
            f" per run; seeds {', '.join(map(str, entry['seeds']))})\n"
        )
        metric = None
        rows = []
        for method, runs in entry["results"].items():
            row = method_row(runs)
            metric = metric or row["metric"]
            if thr is None:
                reach = "no threshold"
            else:
                per_seed = ", ".join("-" if t is None else f"{t:.1f}" for t in row["times"])
                median = (
                    "not reached"
                    if row["median_time"] is None or not math.isfinite(row["median_time"])
                    else f"{row['median_time']:.1f} s"
                )
                reach = f"{row['reached']}/{row['finished']}: {median} ({per_seed})"
                if row["median_search_time"] is not None:
                    reach += f"; {row['median_search_time']:.1f} s after the first generation"
            loss, mv = row["loss"], row["metric_value"]
            rows.append(
                f"| {method} | {row['finished']}/{row['runs']}"
                f" | {_f(loss['mean'])} ± {_f(loss['ci95'], 2)}"
                f" ({', '.join(_f(x, 3) for x in row['losses'])})"
                f" | {_f(mv['mean'])} ± {_f(mv['ci95'], 2)} | {reach}"
                f" | {', '.join(map(str, row['generations']))}"
                f" | {_f(row['first_generation_s'], 3)} | {_f(row['generation_s'], 3)}"
                f" | {row['instances']} | {row['diverged']} |"
            )
        thr_text = "—" if thr is None else f"{thr:g}"
        parts.append(
            f"| method | runs | final held-out loss: mean ± 95% CI over seeds (per seed)"
            f" | held-out {metric or 'metric'} | time to held-out loss <= {thr_text}"
            " (reached; median s; per seed) | generations per seed"
            " | first generation s (incl. compile) | later generation s (median)"
            " | held-out instances | diverged |"
        )
        parts.append("|---|---|---|---|---|---|---|---|---|---|")
        parts.extend(rows)
        parts.append("")
    return "\n".join(parts) + "\n"


def plot(tasks: list[dict], path: Path) -> Path:
    """Held-out (top) and meta-train (bottom) loss against the training clock, per task.

    The axes end at 3x the largest starting loss: divergent rules leave through the top.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..trainer import read_metrics

    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 6.4), dpi=110, squeeze=False)
    for col, entry in enumerate(tasks):
        top, bottom = axes[0, col], axes[1, col]
        positive = True
        starts = {0: [], 1: []}  # each run's first held-out / meta-train value
        for i, method in enumerate(entry["methods"]):
            color = f"C{i}"
            for j, run in enumerate(r for r in entry["runs"] if r["method"] == method):
                records = read_metrics(run["dir"])
                label = method if j == 0 else None
                tested = [r for r in records if r.get("test_loss") is not None]
                top.plot(
                    [r["wall_s"] for r in tested],
                    [r["test_loss"] for r in tested],
                    color=color,
                    alpha=0.8,
                    lw=1.2,
                    label=label,
                )
                train = [r for r in records if r.get("median_loss") is not None]
                bottom.plot(
                    [r["wall_s"] for r in train],
                    [r["median_loss"] for r in train],
                    color=color,
                    alpha=0.6,
                    lw=0.8,
                    label=label,
                )
                for row, series in ((0, tested), (1, train)):
                    key = "test_loss" if row == 0 else "median_loss"
                    if series and math.isfinite(series[0][key]):
                        starts[row].append(series[0][key])
                values = [r["test_loss"] for r in tested] + [r["median_loss"] for r in train]
                positive &= all(v > 0 for v in values)
        if entry["threshold"] is not None:
            top.axhline(entry["threshold"], color="k", ls="--", lw=0.8, label="threshold")
        for row, ax in enumerate((top, bottom)):
            ax.set_yscale("log" if positive else "symlog")
            if starts[row]:  # divergent excursions leave the top of the axis
                ax.set_ylim(top=3 * max(starts[row]))
            ax.axvline(entry["time_budget_s"], color="gray", ls=":", lw=0.8)
            ax.grid(alpha=0.3)
        top.set_title(entry["name"])
        top.set_ylabel("held-out loss (search mean)")
        bottom.set_ylabel("meta-train loss (median member)")
        bottom.set_xlabel("training wall clock (s, compile included)")
        top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_report(out: Path) -> tuple[Path, Path]:
    """``OUT/report.md`` and ``OUT/compare.png`` from the run directories."""
    from .. import checkpoint

    out = Path(out)
    tasks = collect(out)
    text = markdown_report(tasks)
    checkpoint.atomic_write(out / "report.md", text.encode())
    return out / "report.md", plot(tasks, out / "compare.png")


def write_manifest(out: Path, entries: list[dict]) -> None:
    """``OUT/compare.json`` with ``entries``; the entries of earlier comparisons into the same
    directory for other configs are kept (one of the same name is replaced where it stood),
    so that the report covers every config compared there."""
    from .. import checkpoint

    earlier = _read_json(Path(out) / MANIFEST) or {}
    new = {e["name"]: e for e in entries}
    merged = [new.pop(e["name"], e) for e in earlier.get("tasks", [])]
    data = {"tasks": merged + [e for e in entries if e["name"] in new]}
    checkpoint.atomic_write(Path(out) / MANIFEST, (json.dumps(data, indent=2) + "\n").encode())
