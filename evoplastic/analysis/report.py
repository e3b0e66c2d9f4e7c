"""Reading a rule and its held-out performance: equations, reference cosines, summaries."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .. import rules
from ..backends import evaluate_genome

BASELINES = ("oja", "hebb")


def summarize(values) -> dict[str, float]:
    """Mean, 95% interval of the mean, median and count over the finite values."""
    v = np.asarray(values, np.float64).ravel()
    finite = v[np.isfinite(v)]
    n = finite.size
    out = {"n": int(v.size), "nonfinite": int(v.size - n)}
    if n == 0:
        return out | {"mean": math.nan, "median": math.nan, "ci95": math.nan}
    half = 1.96 * finite.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return out | {"mean": float(finite.mean()), "median": float(np.median(finite)), "ci95": half}


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else math.nan


def rule_summary(rule: rules.Rule, genome) -> dict:
    """Coefficients, normalized equation and cosine to each reference rule in the library."""
    out: dict = {"rule": rule.name, "equation": rule.describe(genome)}
    if not rule.terms:
        return out
    c = np.asarray(genome, np.float64)
    scale = float(np.max(np.abs(c))) if np.any(c) else 1.0
    out |= {
        "terms": list(rule.terms),
        "coefficients": c.tolist(),
        "scale": scale,
        "normalized": (c / scale).tolist(),
    }
    for name in rules.REFERENCE_RULES:
        try:
            out[f"cosine_to_{name}"] = cosine(c, rules.reference_genome(name, rule.terms))
        except KeyError:
            out[f"cosine_to_{name}"] = None
    return out


def evaluate_final(exp, genome, instances: int, baselines=BASELINES) -> dict:
    """Held-out metrics of ``genome`` and of fixed reference rules, per task variant.

    Returns ``{variant: {rule_name: {metric: summary}}}``; the variant ``"trained"`` is the
    training task, others come from ``config.test.variants``.
    """
    variants = {"trained": {}} | dict(exp.config.test.variants)
    candidates = {"evolved": (exp.rule, genome)}
    for name in baselines:
        candidates[name] = (rules.make(name), jnp.zeros((0,)))
    results = {}
    for vname, overrides in variants.items():
        family = exp.family_variant(**overrides) if overrides else exp.family
        results[vname] = {}
        for cname, (rule, g) in candidates.items():
            raw = evaluate_genome(family, rule, g, instances)
            results[vname][cname] = {k: summarize(v) for k, v in raw.items()}
    return results
