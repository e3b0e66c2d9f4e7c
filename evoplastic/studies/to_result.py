"""``evoplastic bench --to-result``: seconds until a run meets its result's bar.

The figure a researcher feels: from the start of a run (compilation included) to the first
checked generation whose search mean meets the bar of docs/results.md on held-out
(meta-test) instances:

* ``oja`` (experiments/oja.yaml): cosine to Oja's rule >= 0.95 and median
  ``|cos(w, PC1)|`` >= 0.99 at the trained dimension 8 and at dimension 40;
* ``cartpole_shared`` (experiments/cartpole_shared_excitatory.yaml, one rule a layer):
  mean return >= 475 on CartPole-v1.

The mean is checked every ``every`` generations on ``instances`` held-out instances; the
time of those checks is reported apart (``check_s``) and not counted in ``train_s``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from .. import config, tasks
from ..experiment import build
from ..tasks.evaluation import evaluate_genome, make_genome_evaluator

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _oja_check(exp, instances: int):
    from ..analysis.report import rule_summary

    cfg = exp.config
    params = {k: v for k, v in cfg.task.items() if k != "name"}
    network = dataclasses.asdict(cfg.network)
    wide = tasks.make("pca", network=network, **(params | {"dim": 40}))
    evaluators = {8: make_genome_evaluator(exp.family, exp.rule)}
    evaluators[40] = make_genome_evaluator(wide, exp.rule)
    families = {8: exp.family, 40: wide}

    def check(genome) -> tuple[bool, dict]:
        cos = rule_summary(exp.rule, genome)["cosine_to_oja"]
        fig = {"cosine_to_oja": cos}
        for dim, fam in families.items():
            r = evaluate_genome(fam, exp.rule, genome, instances, evaluators[dim])
            fig[f"median_alignment_dim{dim}"] = float(np.median(np.asarray(r["alignment"])))
        met = cos >= 0.95 and all(fig[f"median_alignment_dim{d}"] >= 0.99 for d in families)
        return met, fig

    return check


def _return_check(exp, instances: int, bar: float = 475.0):
    evaluator = make_genome_evaluator(exp.family, exp.rule)

    def check(genome) -> tuple[bool, dict]:
        r = evaluate_genome(exp.family, exp.rule, genome, instances, evaluator)
        mean = float(np.mean(np.asarray(r["return"])))
        return mean >= bar, {"mean_return": mean}

    return check


CASES = {
    "oja": ("oja.yaml", _oja_check, 10, 32),
    "cartpole_shared": ("cartpole_shared_excitatory.yaml", _return_check, 10, 32),
}


def time_to_result(name: str, echo=print, max_generations: int | None = None) -> dict:
    """Run case ``name`` of :data:`CASES` until its bar is met (or its generations run out)."""
    import yaml

    path, make_check, every, instances = CASES[name]
    raw = yaml.safe_load((EXPERIMENTS / path).read_text())
    raw.pop("test", None), raw.pop("checkpoint", None)
    exp = build(config.parse(raw))
    check = make_check(exp, instances)
    total = max_generations or exp.config.generations
    t_start, c_start = time.perf_counter(), time.process_time()
    run_key = jax.random.PRNGKey(exp.config.seed)
    step = exp.generation_step()
    state = exp.init_state(run_key)
    check_s, check_cpu, met, fig, g = 0.0, 0.0, False, {}, 0
    for g in range(total):
        state, metrics = step(state, run_key, g)
        if (g + 1) % every == 0 or g + 1 == total:
            jax.block_until_ready(metrics)
            t0, c0 = time.perf_counter(), time.process_time()
            met, fig = check(exp.outer.mean_genome(state))
            check_s += time.perf_counter() - t0
            check_cpu += time.process_time() - c0
            if met:
                break
    wall, cpu = time.perf_counter() - t_start, time.process_time() - c_start
    out = {
        "case": name,
        "config": f"experiments/{path}",
        "met": met,
        "generations": g + 1,
        "train_s": wall - check_s,
        "check_s": check_s,
        "wall_s": wall,
        "train_cpu_s": cpu - check_cpu,
        "figures": fig,
    }
    figures = ", ".join(f"{k} {v:.4g}" for k, v in fig.items())
    echo(
        f"time to result {name:>15}: "
        + (f"bar met at generation {g + 1}" if met else f"bar NOT met in {g + 1} generations")
        + f" after {out['train_s']:.1f} s of training (CPU time {out['train_cpu_s']:.1f} s;"
        f" compile included; checks every"
        f" {every} generations took {check_s:.1f} s more): {figures}"
    )
    return out


def run_to_result(echo=print, cases=tuple(CASES)) -> list[dict]:
    """Every case of :data:`CASES`, one after the other."""
    return [time_to_result(name, echo) for name in cases]


__all__ = ["CASES", "run_to_result", "time_to_result"]
