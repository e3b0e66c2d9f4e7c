"""Plots of a run: the learning curve, the rule against a reference, the rule's ``dw`` as a
heat map over ``pre x post`` and the weight trajectories of the inner loop.

The data behind each figure comes from a pure function that the tests check
(:func:`dw_grid`, :func:`heatmap_data`); the drawing functions only lay it out.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..rules.base import Signals  # noqa: E402
from .trace import Trace, record_inner_loop, typical_values  # noqa: E402

GRID = 41  # heat-map resolution (points per axis)
TRAJECTORY_SYNAPSES = 8  # weights drawn per layer
MAX_PANELS = 4  # layers drawn


def _suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width, so that it is never cut at the sides."""
    chars = max(20, int(fig.get_figwidth() * 10))  # about 10 characters per inch at 10 pt
    fig.suptitle(textwrap.fill(text, chars), fontsize=10)


def learning_curve(records: list[dict], path: Path, title: str = "") -> Path:
    """Best and mean meta-train loss per generation, and held-out loss where measured."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    gens = np.array([r["generation"] for r in records])
    for key, label in (("best_loss", "best (meta-train)"), ("mean_loss", "mean (meta-train)")):
        vals = np.array([r.get(key, np.nan) for r in records], float)
        ax.plot(gens, vals, label=label)
    tested = [r for r in records if "test_loss" in r]
    if tested:
        ax.plot(
            [r["generation"] for r in tested],
            [r["test_loss"] for r in tested],
            "o-",
            label="rule mean (meta-test)",
        )
    finite = [v for r in records for k in ("best_loss", "mean_loss") if (v := r.get(k)) is not None]
    ax.set_yscale("log" if finite and min(finite) > 0 else "symlog")
    ax.set_xlabel("generation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no fractional generations
    ax.set_ylabel("loss")
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def rule_vs_reference(
    terms, normalized, reference, path: Path, reference_name: str = "Oja"
) -> Path:
    """Bar chart of the normalized coefficients next to a reference rule's."""
    x = np.arange(len(terms))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.8 * len(terms)), 4.0), dpi=110)
    ax.bar(x - 0.2, normalized, width=0.4, label="discovered (normalized)")
    ax.bar(x + 0.2, reference, width=0.4, label=reference_name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, terms, rotation=30, ha="right")
    ax.set_ylabel("coefficient")
    ax.set_title(f"discovered rule vs {reference_name}'s rule")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def report_bars(rows: list[dict], path: Path) -> Path:
    """Mean ± 95% CI of each run's evolved rule per task variant (bars) and of the
    baselines (marks), one panel per metric."""
    metrics = sorted({r["metric"] for r in rows})
    most = max(len({(r["run"], r["variant"]) for r in rows if r["metric"] == m}) for m in metrics)
    width = max(8.0, 0.55 * most)  # room for every label when a panel has many bars
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 3.4 * len(metrics)), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        sub = [r for r in rows if r["metric"] == metric]
        groups = sorted({(r["run"], r["variant"]) for r in sub})
        for i, group in enumerate(groups):
            for r in sub:
                if (r["run"], r["variant"]) != group or r["mean"] is None:
                    continue
                if r.get("evolved"):
                    ax.bar(i, r["mean"], yerr=r["ci95"] or 0.0, color="C0", capsize=4)
                else:
                    ax.plot(i, r["mean"], "_", color="k", ms=14, mew=2)
        labels = [f"{run}\n{variant}" for run, variant in groups]
        rotation = 20 if len(groups) <= 8 else 60
        ax.set_xticks(range(len(groups)), labels, rotation=rotation, ha="right", fontsize=7)
        ax.set_ylabel(metric)
        ax.legend(
            handles=[
                Patch(color="C0", label="evolved rule (mean ± 95% CI)"),
                Line2D([], [], color="k", marker="_", ls="", ms=14, mew=2, label="baselines"),
            ],
            fontsize=7,
            loc="best",
        )
    axes[0].set_title("held-out mean per run (bars) and baselines (marks)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def dw_grid(
    rule,
    genome,
    pre_values,
    post_values,
    w: float = 0.0,
    err: float = 0.0,
    mod: float = 0.0,
    layer: int = 0,
    shape: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """The rule's ``dw`` at every ``(post, pre)`` pair, with ``w``, ``err``, ``mod`` fixed.

    Every synapse of a layer of ``shape = (n_out, n_in)`` is given the same signals; the
    result is the mean ``dw`` over its synapses (for a rule shared by all synapses, the
    ``dw`` of any one of them; per-synapse rules such as ``abcd`` differ per synapse).

    Args:
      rule, genome: the rule and its (whole) genome; ``rule.select(genome, layer)`` is used.
      pre_values, post_values: the grid axes.
      w, err, mod: the fixed values of the other local signals.
      layer: the layer whose part of the genome is used.
      shape: the layer's weight shape (needed by per-synapse rules).

    Returns:
      ``dw[len(post_values), len(pre_values)]``.
    """
    g = rule.select(genome, layer)
    n_out, n_in = shape
    pre_values = jnp.asarray(pre_values, jnp.float32)

    def at(q):
        def one(p):
            sig = Signals(
                pre=jnp.full((n_in,), p),
                post=jnp.full((n_out,), q),
                w=jnp.full((n_out, n_in), w, jnp.float32),
                err=jnp.full((n_out,), err, jnp.float32),
                mod=jnp.asarray(mod, jnp.float32),
            )
            return jnp.mean(rule.update(g, sig))

        return jax.vmap(one)(pre_values)

    return np.asarray(jax.lax.map(at, jnp.asarray(post_values, jnp.float32)))


def _axis(values: np.ndarray, n: int) -> np.ndarray:
    """``n`` points spanning the central 98% of the recorded finite ``values``."""
    values = np.asarray(values)[np.isfinite(values)]
    if values.size == 0:  # a divergent inner loop: show the unit square
        return np.linspace(-1.0, 1.0, n)
    lo, hi = np.percentile(values, [1, 99])
    if hi - lo < 1e-3:
        lo, hi = lo - 1.0, hi + 1.0
    return np.linspace(lo, hi, n)


def heatmap_data(rule, genome, trace: Trace, layer: int = 0, grid: int = GRID) -> dict:
    """The heat map of one layer: its axes span the recorded ``pre`` and ``post``; ``w``,
    ``err`` and ``mod`` are fixed at the medians the layer's synapses saw.

    Returns:
      ``{"pre": [grid], "post": [grid], "dw": [grid, grid], "fixed": {w, err, mod}}``.
    """
    rec = trace.layers[layer]
    fixed = typical_values(rec)
    pre, post = _axis(rec["pre"], grid), _axis(rec["post"], grid)
    dw = dw_grid(rule, genome, pre, post, layer=layer, shape=rec["w"].shape[1:], **fixed)
    return {"pre": pre, "post": post, "dw": dw, "fixed": fixed}


def rule_heatmap(rule, genome, trace: Trace, path: Path, grid: int = GRID) -> Path:
    """``dw`` over ``pre x post`` for each layer (up to four), at typical ``w, err, mod``."""
    n = min(len(trace.layers), MAX_PANELS)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.0), dpi=110, squeeze=False)
    for layer, ax in enumerate(axes[0]):
        d = heatmap_data(rule, genome, trace, layer, grid)
        dw = np.asarray(d["dw"], np.float64)
        finite = np.abs(dw[np.isfinite(dw)])
        limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        mesh = ax.pcolormesh(
            d["pre"], d["post"], dw, cmap="RdBu_r", vmin=-limit, vmax=limit, shading="auto"
        )
        fig.colorbar(mesh, ax=ax, label="dw")
        f = d["fixed"]
        ax.set_title(
            f"layer {layer}: w={f['w']:.3g}, err={f['err']:.3g}, mod={f['mod']:.3g}", fontsize=9
        )
        ax.set_xlabel("pre")
        ax.set_ylabel("post")
    _suptitle(fig, f"{rule.name} rule: dw over pre x post (synapse mean; w, err, mod at medians)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def trajectory_data(trace: Trace, layer: int = 0, synapses: int = TRAJECTORY_SYNAPSES, seed=0):
    """``(indices, w[T, k])``: ``k`` synapses of a layer drawn at random, over inner steps."""
    w = trace.layers[layer]["w"]
    steps, n_out, n_in = w.shape
    flat = w.reshape(steps, n_out * n_in)
    k = min(synapses, flat.shape[1])
    idx = np.sort(np.random.default_rng(seed).choice(flat.shape[1], k, replace=False))
    return [(int(i // n_in), int(i % n_in)) for i in idx], flat[:, idx]


def weight_trajectories(trace: Trace, path: Path, synapses: int = TRAJECTORY_SYNAPSES) -> Path:
    """A sample of each layer's weights over the inner loop of one held-out instance."""
    n = min(len(trace.layers), MAX_PANELS)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), dpi=110, squeeze=False)
    for layer, ax in enumerate(axes[0]):
        index, w = trajectory_data(trace, layer, synapses)
        for (i, j), series in zip(index, w.T, strict=True):
            ax.plot(series, lw=1.0, label=f"w[{i},{j}]")
        ax.set_xlabel("inner step")
        ax.set_ylabel("weight")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.grid(alpha=0.3)
        if len(index) <= 8:
            ax.legend(fontsize=6)
    _suptitle(fig, f"weights over the inner loop (held-out instance; loss {trace.loss:.4g})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def rule_plots(family, rule, genome, run_dir: Path, instance: int = 0) -> list[Path]:
    """``rule_heatmap.png`` and ``weight_trajectories.png`` of a genome, from its inner loop
    on held-out instance ``instance``."""
    from ..tasks import test_instance_keys

    key = test_instance_keys(instance + 1)[instance]
    trace = record_inner_loop(family, rule, genome, key)
    run_dir = Path(run_dir)
    return [
        rule_heatmap(rule, genome, trace, run_dir / "rule_heatmap.png"),
        weight_trajectories(trace, run_dir / "weight_trajectories.png"),
    ]


def sweep_curves(param: str, by_value: dict, metric: str, path: Path, title: str = "") -> Path:
    """One task parameter swept: ``metric`` (mean with its 95% interval) against the value,
    a line per rule (the evolved rule drawn thickest)."""
    values = list(by_value)
    try:
        xs = np.array([float(v) for v in values])
        ticks = None
    except ValueError:  # a parameter that is not a number: evenly spaced, labelled
        xs, ticks = np.arange(len(values), dtype=float), values
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name in next(iter(by_value.values())):
        mean = np.array([by_value[v][name][metric]["mean"] for v in values], float)
        half = np.array([by_value[v][name][metric]["ci95"] for v in values], float)
        width = 2.5 if name.startswith("evolved") else 1.2
        (line,) = ax.plot(xs, mean, "o-", lw=width, label=name)
        ax.fill_between(xs, mean - half, mean + half, color=line.get_color(), alpha=0.15)
    if ticks is not None:
        ax.set_xticks(xs, ticks)
    ax.set_xlabel(param.removeprefix("task."))
    ax.set_ylabel(f"{metric} (held-out mean, 95% interval)")
    ax.set_title(title or f"{metric} against {param.removeprefix('task.')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
