"""Reading a rule and its held-out performance: equations, reference cosines, summaries."""

from __future__ import annotations

import json
import math
import operator
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import rules
from ..backends import evaluate_genome, make_genome_evaluator

BASELINES = ("oja", "hebb")  # fixed rules compared on every task; see baselines_for


def baselines_for(family) -> tuple[str, ...]:
    """The fixed rules a task is compared with: ``oja`` and ``hebb`` everywhere, ``bcm`` on
    unsupervised (pca-like) tasks and feedback alignment (``fa``) on supervised ones."""
    from ..tasks import BanditFamily, PCAFamily
    from .baselines import supports_backprop

    if isinstance(family, BanditFamily):  # bandit algorithms instead (bandit_baselines)
        return ()
    if supports_backprop(family):
        return (*BASELINES, "fa")
    if isinstance(family, PCAFamily):
        return (*BASELINES, "bcm")
    return BASELINES


def _baseline_family(exp, overrides: dict):
    """The task family for fixed rules: genome-held network parts (learned or synthetic
    feedback, a modulatory neuron) are replaced by fixed random feedback and no modulator,
    since a fixed rule has no genome to hold them."""
    import dataclasses

    from .. import tasks

    net = dataclasses.asdict(exp.config.network)
    if net["feedback"] not in ("learned", "synthetic") and net["modulation"] == "none":
        return exp.family_variant(**overrides) if overrides else exp.family  # nothing to replace
    if net["feedback"] in ("learned", "synthetic"):
        net["feedback"] = "random"
    net["modulation"] = "none"
    if isinstance(net.get("plastic"), dict):  # an eligibility trace needs the modulator
        drop = ("eligibility", "eta")
        net["plastic"] = {k: v for k, v in net["plastic"].items() if k not in drop}
    params = {k: v for k, v in exp.config.task.items() if k != "name"} | dict(overrides)
    return tasks.make(exp.config.task["name"], network=net, **params)


BOOTSTRAP_SEED = 2718  # the resamples of the IQM interval: the same for every run
BOOTSTRAP_RESAMPLES = 2000


def iqm(values) -> float:
    """The interquartile mean: the mean of the middle 50% of the values (rliable's
    aggregate; Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice")."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    n = v.size
    if n == 0:
        return math.nan
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return float(v[lo:hi].mean()) if hi > lo else float(np.median(v))


def iqm_interval(values, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the IQM (fixed resampling seed)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = np.sort(v[rng.integers(0, v.size, size=(resamples, v.size))], axis=1)
    lo, hi = int(np.floor(0.25 * v.size)), int(np.ceil(0.75 * v.size))
    stats = samples[:, lo:hi].mean(axis=1)
    return float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))


def summarize(values) -> dict[str, float]:
    """Over the finite values: mean with the 95% interval of the mean (mean ± ``ci95``),
    median, and the interquartile mean with a bootstrap 95% interval (``iqm``, ``iqm_lo``,
    ``iqm_hi``), which heavy-tailed losses call for; and the counts."""
    v = np.asarray(values, np.float64).ravel()
    finite = v[np.isfinite(v)]
    n = finite.size
    out = {"n": int(v.size), "nonfinite": int(v.size - n)}
    if n == 0:
        nan = math.nan
        return out | {
            "mean": nan,
            "median": nan,
            "ci95": nan,
            "iqm": nan,
            "iqm_lo": nan,
            "iqm_hi": nan,
        }
    half = 1.96 * finite.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    lo, hi = iqm_interval(finite)
    return out | {
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
        "ci95": half,
        "iqm": iqm(finite),
        "iqm_lo": lo,
        "iqm_hi": hi,
    }


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def seed_interval(values) -> tuple[float, float]:
    """Mean across seeds and the half-width of its 95% t-interval (NaN for one seed)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    half = t_quantile_975(v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def cosine(a, b) -> float:
    """The cosine between two coefficient vectors (NaN if one is zero)."""
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


def evaluate_final(exp, genome, instances: int, baselines=None) -> dict:
    """Held-out metrics of ``genome`` and of fixed reference rules, per task variant.

    ``baselines``: names of fixed rules (default :func:`baselines_for` the task). ``fa``'s
    step size is tuned like the backprop baselines' learning rate.

    Returns ``{variant: {rule_name: {metric: summary}}}``; the variant ``"trained"`` is the
    training task, others come from ``config.test.variants``.
    """
    from ..tasks import BanditFamily
    from .baselines import evaluate_backprop, evaluate_tuned_rule, supports_backprop

    if not getattr(exp.family, "uses_rules", True):  # a fitness function: no rule baselines
        baselines = ()
    elif baselines is None:
        baselines = baselines_for(exp.family)
    variants = {"trained": {}} | dict(exp.config.test.variants)
    candidates = {"evolved": (exp.rule, genome), "random": (exp.rule, random_genome(exp))}
    results = {}
    for vname, overrides in variants.items():
        family = exp.family_variant(**overrides) if overrides else exp.family
        plain = _baseline_family(exp, overrides) if baselines else None
        results[vname] = {}
        evaluators = {}  # one compiled evaluator per rule (evolved and random share one)
        for cname, (rule, g) in candidates.items():
            if id(rule) not in evaluators:
                evaluators[id(rule)] = make_genome_evaluator(family, rule)
            raw = evaluate_genome(family, rule, g, instances, evaluators[id(rule)])
            results[vname][cname] = {k: summarize(v) for k, v in raw.items()}
        for name in baselines:
            if name in TUNED_RULES:
                raw = evaluate_tuned_rule(plain, name, instances)
            else:
                raw = evaluate_genome(plain, rules.make(name), jnp.zeros((0,)), instances)
            results[vname][name] = {k: summarize(v) for k, v in raw.items()}
        if isinstance(family, BanditFamily):  # UCB1, Thompson, uniform on the same episodes
            from .bandit_baselines import evaluate as evaluate_bandit

            for name, raw in evaluate_bandit(family, instances).items():
                results[vname][name] = {k: summarize(v) for k, v in raw.items()}
        if supports_backprop(family):
            init_ws = exp.rule.weights(genome) if exp.rule.weights is not None else None
            for opt in ("sgd", "adam"):
                raw = evaluate_backprop(family, opt, instances, init_ws)
                results[vname][opt] = {k: summarize(v) for k, v in raw.items()}
    return results


TUNED_RULES = ("fa",)  # fixed rules whose step size ``eta`` is swept on meta-train tasks

RANDOM_RULE_SEED = 31_415


def random_genome(exp):
    """A rule drawn from the outer search's initial distribution (the "random rule")."""
    flat = np.asarray(exp.flat_genome(exp.genome_template))
    noise = jax.random.normal(jax.random.PRNGKey(RANDOM_RULE_SEED), flat.shape)
    return exp.unflatten_genome(flat + exp.config.strategy.std_init * np.asarray(noise))


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


CANDIDATE_NAMES = {
    "random": "random rule",
    "oja": "oja (fixed)",
    "hebb": "hebb (fixed)",
    "bcm": "bcm (fixed)",
    "fa": "feedback alignment (fixed)",
    "sgd": "SGD (backprop)",
    "adam": "Adam (backprop)",
    "ucb1": "UCB1",
    "thompson": "Thompson sampling",
    "uniform": "uniform pulls",
}


def report_rows(runs: list[dict]) -> list[dict]:
    """One row per run, task variant and rule, from each run's config and ``eval.json``.

    Args:
      runs: ``{"dir": ..., "config": <config.yaml mapping>, "eval": <eval.json mapping>}``.
    """
    rows = []
    for run in runs:
        cfg, ev = run["config"], run["eval"]
        task = cfg["task"]["name"] + (f" {cfg['task']['env']}" if "env" in cfg["task"] else "")
        rule = cfg["rule"]["name"]
        if cfg["rule"].get("per_synapse"):  # abcd, or a polynomial with per_synapse
            rule += " per synapse"
        elif rule == "abcd" and "per_synapse" in cfg["rule"]:
            rule += " shared per layer"
        for variant, by_rule in ev.items():
            for cand, metrics in by_rule.items():
                metric = next((m for m in metrics if m not in ("loss", "lr")), "loss")
                s = metrics[metric]
                rows.append(
                    {
                        "run": run.get("label") or Path(run["dir"]).name,
                        "name": cfg["name"],
                        "seed": cfg.get("seed"),
                        "group": run.get("group"),
                        "group_key": run.get("group_key"),
                        "dir": str(run["dir"]),
                        "task": task,
                        "variant": variant,
                        "rule": rule if cand == "evolved" else CANDIDATE_NAMES.get(cand, cand),
                        "evolved": cand == "evolved",
                        "strategy": cfg["strategy"]["name"],
                        "metric": metric,
                        "mean": s.get("mean"),
                        "ci95": s.get("ci95"),
                        "median": s.get("median"),
                        "n": s.get("n"),
                        "iqm": s.get("iqm"),
                        "iqm_lo": s.get("iqm_lo"),
                        "iqm_hi": s.get("iqm_hi"),
                        "lr": metrics.get("lr", {}).get("mean"),
                        "loss": metrics.get("loss", {}).get("mean"),
                        "diverged": metrics.get("loss", {}).get("nonfinite", 0),
                    }
                )
    return rows


def seed_rows(rows: list[dict]) -> list[dict]:
    """One aggregate row per group of runs that differ only in their seed (``group``; by
    default the config name) and per task variant and rule: the mean across seeds of each
    run's held-out mean, with a 95% t-interval across seeds (``n`` is the number of seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        group = r.get("group") or r["name"]
        key = (r.get("group_key") or group, group, r["task"], r["variant"], r["rule"], r["metric"])
        groups.setdefault(key, []).append(r)
    out = []
    for (_, group, task, variant, rule, metric), members in groups.items():
        if len({m["run"] for m in members}) < 2:
            continue
        mean, half = seed_interval([m["mean"] for m in members])
        iqm_mean, _ = seed_interval([m.get("iqm") for m in members])
        out.append(
            {
                "run": f"{group} (seeds {', '.join(str(m['seed']) for m in members)})",
                "name": group,
                "task": task,
                "variant": variant,
                "rule": rule,
                "evolved": members[0]["evolved"],
                "metric": metric,
                "mean": mean,
                "ci95": half,
                "median": seed_interval([m["median"] for m in members])[0],
                "iqm": iqm_mean,
                "iqm_lo": None,
                "iqm_hi": None,
                "n": len(members),
                "lr": None,
                "loss": seed_interval([m["loss"] for m in members])[0],
                "diverged": sum(m["diverged"] or 0 for m in members),
                "aggregate": True,
            }
        )
    return out


def markdown_table(rows: list[dict]) -> str:
    """A markdown table: per run, the mean with its 95% interval over held-out instances, the
    median and the IQM with its bootstrap interval; per group of seeds (``aggregate``), the
    mean across seeds with its 95% t-interval (``n`` seeds)."""
    head = "| run | task | variant | rule | metric | mean ± 95% CI | median | IQM [95% CI] |"
    lines = [head + " loss (mean) | n | diverged |", "|---" * 11 + "|"]
    for r in rows:
        rule = r["rule"] + (f", lr {r['lr']:.3g}" if r.get("lr") else "")
        iqm_ci = (
            f" [{_fmt(r['iqm_lo'], 3)}, {_fmt(r['iqm_hi'], 3)}]"
            if r.get("iqm_lo") is not None
            else ""
        )
        run = f"**{r['run']}**" if r.get("aggregate") else r["run"]
        lines.append(
            f"| {run} | {r['task']} | {r['variant']} | {rule} | {r['metric']}"
            f" | {_fmt(r['mean'])} ± {_fmt(r['ci95'], 2)} | {_fmt(r['median'])}"
            f" | {_fmt(r.get('iqm'))}{iqm_ci} | {_fmt(r['loss'])} | {r['n']} | {r['diverged']} |"
        )
    return "\n".join(lines) + "\n"


BAR_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def parse_bar(text: str) -> tuple[str, str, float]:
    """``"return>=475"`` -> ``("return", ">=", 475.0)``; :class:`ReportError` if malformed."""
    m = re.fullmatch(
        r"\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*", text
    )
    if m is None:
        raise ReportError(
            f"--bar: {text!r} is not METRIC OP NUMBER (for example 'return>=475' or 'mse<3.65')"
        )
    return m.group(1), m.group(2), float(m.group(3))


def bar_lines(rows: list[dict], bar: str, variant: str = "trained") -> list[str]:
    """Each run's evolved rule against a bar on its held-out mean, and how many meet it.

    ``rows`` are :func:`report_rows`; ``bar`` is ``METRIC OP NUMBER``. Raises
    :class:`ReportError` (one line) if no run has that metric on ``variant``.
    """
    metric, op, value = parse_bar(bar)
    chosen = [
        r for r in rows
        if r["evolved"] and not r.get("aggregate") and r["variant"] == variant
    ]  # fmt: skip
    found = [r for r in chosen if metric in ("loss", r["metric"])]
    if not found:
        have = sorted({r["metric"] for r in chosen} | {"loss"}) if chosen else []
        variants = sorted({r["variant"] for r in rows})
        raise ReportError(
            f"--bar: no run reports {metric!r} on variant {variant!r}"
            + (f" (metrics: {', '.join(have)})" if have else f" (variants: {', '.join(variants)})")
        )
    lines, met = [], 0
    for r in found:
        x = r["loss"] if metric == "loss" else r["mean"]
        ok = x is not None and BAR_OPS[op](x, value)
        met += ok
        shown = "not finite" if x is None else f"{x:.4g}"
        ci = "" if metric == "loss" or r.get("ci95") is None else f" ± {r['ci95']:.2g}"
        lines.append(f"{r['run']}: {metric} {shown}{ci} {'meets' if ok else 'misses'} the bar")
    lines.append(
        f"{met} of {len(found)} runs meet {metric} {op} {value:g} (variant {variant},"
        " held-out mean of the evolved rule)"
    )
    return lines


SWEEP_INDEX = "sweep.json"  # written by `evoplastic run --seeds/--sweep` (evoplastic.sweep)


class ReportError(ValueError):
    """A directory that cannot be reported (not a run, or unfinished); one line."""


def read_index(out: Path) -> dict | None:
    """The index of a sweep directory (``sweep.json``), or None if ``out`` is not one."""
    path = Path(out) / SWEEP_INDEX
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def load_runs(run_dirs, warn=lambda message: None) -> list[dict]:
    """The finished runs of ``run_dirs`` (run directories, or sweep directories, which
    stand for their finished points) as :func:`report_rows` takes them: each named by its
    directory, grouped with the runs that differ from it only in the seed."""
    from ..config import safe_load

    expanded = []  # (run directory, the sweep point without its seed, or None)
    for run_dir in map(Path, run_dirs):
        index = read_index(run_dir)
        if index is None:
            expanded.append((run_dir, None))
            continue
        for p in index["points"]:
            if p.get("status") != "done":
                warn(f"{run_dir / p['dir']}: {p.get('status')}; left out")
                continue
            point = ",".join(f"{k}={v}" for k, v in p["overrides"].items())
            expanded.append((run_dir / p["dir"], point or None))
    runs = []
    for run_dir, point in expanded:
        _require_run_dir(run_dir)
        if not (run_dir / "eval.json").is_file():
            raise ReportError(
                f"{str(run_dir)!r} has no eval.json (unfinished run? `evoplastic resume` it)"
            )
        data = safe_load((run_dir / "config.yaml").read_text())
        rest = {k: v for k, v in data.items() if k != "seed"}
        runs.append(
            {
                "dir": run_dir,
                "label": run_dir.name,
                "group": f"{data['name']} {point}" if point else data["name"],
                "group_key": json.dumps(rest, sort_keys=True, default=str),
                "config": data,
                "eval": json.loads((run_dir / "eval.json").read_text()),
            }
        )
    names = [r["label"] for r in runs]
    for r in runs:  # two directories of the same name: tell them apart by their parent
        if names.count(r["label"]) > 1:
            r["label"] = f"{r['dir'].parent.name}/{r['label']}"
    return runs


def _require_run_dir(run_dir: Path) -> None:
    """:class:`ReportError` unless ``run_dir`` holds a run's ``config.yaml``."""
    if not (run_dir / "config.yaml").is_file():
        raise ReportError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")


def train_rows(run_dirs, last: int) -> list[dict]:
    """Each run's meta-training loss, averaged over its last ``last`` generations: the
    median member's for an ES, the genome's own for the meta-gradient (``median_loss`` in
    ``metrics.jsonl``). Every point of a sweep directory is listed, also those that failed,
    with how it ended: a figure to choose settings by without looking at held-out instances.
    """
    from ..trainer import read_metrics

    listed = []  # (label, run directory, how it ended)
    for run_dir in map(Path, run_dirs):
        index = read_index(run_dir)
        if index is None:
            _require_run_dir(run_dir)
            ended = "done" if (run_dir / "eval.json").is_file() else "unfinished"
            listed.append((run_dir.name, run_dir, ended))
            continue
        for p in index["points"]:
            listed.append((p["dir"], run_dir / p["dir"], p.get("status") or "pending"))
    rows = []
    for label, run_dir, ended in listed:
        records = read_metrics(run_dir)
        tail = [r.get("median_loss", r.get("mean_loss")) for r in records[-last:]]
        tail = [float(x) for x in tail if x is not None]
        rows.append(
            {
                "run": label,
                "generations": len(records),
                "train_loss": float(np.mean(tail)) if tail else None,
                "ended": ended,
            }
        )
    return rows


def train_table(rows: list[dict], last: int) -> str:
    """:func:`train_rows` as a markdown table; the lowest figure in bold."""
    figures = [r["train_loss"] for r in rows if r["train_loss"] is not None]
    low = min(filter(math.isfinite, figures), default=None)
    lines = [
        f"| run | generations | meta-train loss (mean of the last {last} generations) | ended |",
        "|---|---|---|---|",
    ]
    for r in rows:
        shown = _fmt(r["train_loss"])
        if r["train_loss"] is not None and r["train_loss"] == low:
            shown = f"**{shown}**"
        ended = r["ended"].replace("|", "/").splitlines()[0]
        lines.append(f"| {r['run']} | {r['generations']} | {shown} | {ended[:120]} |")
    return "\n".join(lines) + "\n"
