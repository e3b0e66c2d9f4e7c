"""Plots of a run: the learning curve and the discovered rule against a reference."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8.0, 2.8 * len(metrics)), dpi=110)
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
                    ax.plot(i, r["mean"], "_", color="k", ms=14)
        labels = [f"{run}\n{variant}" for run, variant in groups]
        ax.set_xticks(range(len(groups)), labels, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel(metric)
    axes[0].set_title("held-out mean (bars: evolved rule ± 95% CI; marks: baselines)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
