"""Distilling a learned rule into a readable equation by sparse regression.

Any rule -- an MLP, a per-synapse Hebbian rule, a polynomial -- is a function of the local
signals. :func:`distill_rule` records what the synapses of a network saw while the rule
taught it (:func:`~evoplastic.analysis.trace.record_inner_loop` on held-out task
instances), then fits the rule's ``dw`` with a sparse sum of local polynomial terms
(products of ``pre, post, w, err, mod`` up to a degree) by sequential thresholded least
squares (STLSQ; Brunton, Proctor & Kutz 2016, "Discovering governing equations from data
by sparse identification of nonlinear dynamical systems", PNAS). The fit is judged by its
R² on signal samples from *other* held-out instances than those it was fitted on.

The result is a polynomial rule (:func:`evoplastic.rules.polynomial`) over the terms that
survived, so it can be evaluated like any other rule (``evoplastic eval RUN --rule
distilled``).

Example::

    d = distill_rule(family, rules.mlp(), genome)
    print(d.equation, d.r2)             # dw = 0.9712*pre*post - 0.9503*post^2*w  0.993
    rule, g = distilled_rule(d), d.genome()
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import jax
import numpy as np

from .. import rules
from ..tasks import test_instance_keys
from .trace import RECORDED, record_inner_loops, synapse_samples

# the local signals a recorded inner loop holds (every network gives them)
SIGNAL_NAMES = RECORDED[:-1]

DEFAULT_DEGREE = 3
DEFAULT_THRESHOLD = 0.01  # a term is dropped if it moves dw by < 1% of dw's RMS
FILE_NAME = "distilled.json"


class DistillError(ValueError):
    """A rule or run that cannot be distilled (no weight change, non-finite signals...)."""


def term_library(signals=SIGNAL_NAMES, degree: int = DEFAULT_DEGREE) -> tuple[str, ...]:
    """Every product of ``signals`` of total degree ``0 .. degree`` (``"1"`` first).

    ``term_library(("pre", "post"), 2)`` is ``("1", "pre", "post", "pre^2", "pre*post",
    "post^2")``.
    """
    order = [s for s in SIGNAL_NAMES if s in signals]
    out = []
    for d in range(degree + 1):
        for combo in itertools.combinations_with_replacement(order, d):
            text = "*".join(combo) if combo else "1"
            out.append(rules.canonical(text))
    return tuple(out)


def design_matrix(terms, samples: dict[str, np.ndarray]) -> np.ndarray:
    """``X[n, k]``: term ``k`` evaluated at sample ``n`` (float64)."""
    n = samples["dw"].shape[0]
    columns = []
    for term in terms:
        col = np.ones(n)
        for name, power in rules.parse_term(term):
            col = col * np.asarray(samples[name], np.float64) ** power
        columns.append(col)
    return np.stack(columns, axis=1)


def stlsq(x: np.ndarray, y: np.ndarray, threshold: float = DEFAULT_THRESHOLD, iters: int = 20):
    """Sequential thresholded least squares: ``coef`` with few nonzeros, ``x @ coef ~ y``.

    Columns are scaled to unit RMS, so a coefficient measures how much its term moves
    ``y``; terms moving it by less than ``threshold * rms(y)`` are dropped and the rest
    refitted, until nothing changes.
    """
    scale = np.sqrt(np.mean(x**2, axis=0))
    scale = np.where(scale > 0, scale, 1.0)
    xn = x / scale
    cutoff = threshold * np.sqrt(np.mean(y**2))
    active = np.ones(x.shape[1], bool)
    coef = np.zeros(x.shape[1])
    for _ in range(iters):
        coef = np.zeros(x.shape[1])
        if not active.any():
            break
        coef[active] = np.linalg.lstsq(xn[:, active], y, rcond=None)[0]
        keep = active & (np.abs(coef) >= cutoff)
        if (keep == active).all():
            break
        active = keep
    coef[~active] = 0.0
    return coef / scale


def r2_score(y: np.ndarray, prediction: np.ndarray) -> float:
    """The coefficient of determination ``1 - SS_res / SS_tot``."""
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    ss_res = float(np.sum((y - prediction) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def format_terms(coefs, terms) -> str:
    """``dw = 0.5012*pre*post - 0.4987*post^2*w`` (nonzero terms, four significant digits)."""
    parts = [(c, t) for c, t in zip(np.asarray(coefs, float), terms, strict=True) if c != 0.0]
    if not parts:
        return "dw = 0"
    text = ""
    for i, (c, t) in enumerate(parts):
        body = f"{abs(c):.4g}"
        if t != "1":
            body = t if body == "1" else f"{body}*{t}"
        sign = ("-" if c < 0 else "") if i == 0 else (" - " if c < 0 else " + ")
        text += sign + body
    return "dw = " + text


@dataclasses.dataclass(frozen=True)
class Distilled:
    """A rule distilled into a polynomial over local terms.

    Attributes:
      terms: the terms that survived the sparse fit (the polynomial rule's library).
      coefficients: ``[len(terms)]``, or ``[n_layers, len(terms)]`` with ``per_layer``.
      per_layer: one equation per layer (for rules whose genome differs per layer).
      r2: R² of the fit on held-out signal samples (all layers pooled).
      r2_layers: the same per layer.
      r2_fit: R² on the samples it was fitted on.
      importance: per term, how much it moves ``dw`` on the held-out samples:
        ``|c_k| * rms(term_k) / rms(dw)`` (the largest over layers with ``per_layer``).
      samples: ``{"fit": n, "heldout": n}`` signal samples.
      instances: ``{"fit": [...], "heldout": [...]}`` the held-out task instances used.
      source: the distilled rule's description.
      degree, threshold: the library's degree and the sparsity threshold.
      library: the full library the fit chose from.
    """

    terms: tuple[str, ...]
    coefficients: np.ndarray
    per_layer: bool
    r2: float
    r2_layers: tuple[float, ...]
    r2_fit: float
    importance: tuple[float, ...]
    samples: dict
    instances: dict
    source: str
    degree: int
    threshold: float
    library: tuple[str, ...]

    @property
    def equation(self) -> str:
        """The readable equation (one line per layer with ``per_layer``)."""
        if not self.per_layer:
            return format_terms(self.coefficients, self.terms)
        return "\n".join(
            f"layer {i}: {format_terms(c, self.terms)}" for i, c in enumerate(self.coefficients)
        )

    def dominant(self, n: int = 2) -> tuple[str, ...]:
        """The ``n`` terms that move ``dw`` most (by :attr:`importance`), largest first."""
        order = np.argsort(self.importance)[::-1][:n]
        return tuple(self.terms[i] for i in order)

    def genome(self) -> jax.Array:
        """The coefficients as the genome of :func:`distilled_rule`."""
        return jax.numpy.asarray(self.coefficients, jax.numpy.float32)

    def to_dict(self) -> dict:
        """A JSON-ready mapping (what ``distilled.json`` holds)."""
        out = dataclasses.asdict(self)
        out["coefficients"] = np.asarray(self.coefficients).tolist()
        out["terms"], out["library"] = list(self.terms), list(self.library)
        out["r2_layers"] = list(self.r2_layers)
        out["importance"] = list(self.importance)
        out["equation"] = self.equation
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Distilled:
        """Inverse of :meth:`to_dict`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in fields}
        kw["terms"], kw["library"] = tuple(kw["terms"]), tuple(kw["library"])
        kw["r2_layers"] = tuple(kw["r2_layers"])
        kw["importance"] = tuple(kw["importance"])
        kw["coefficients"] = np.asarray(kw["coefficients"], np.float64)
        return cls(**kw)


def save(distilled: Distilled, path: Path) -> Path:
    """Write ``distilled`` as JSON (atomically)."""
    from ..trainer import write_json

    write_json(Path(path), distilled.to_dict())
    return Path(path)


def load(path: Path) -> Distilled:
    """Read a ``distilled.json``.

    Raises:
      DistillError: if the file is missing or not a distilled rule.
    """
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"{path} not found (run `evoplastic distill` first)")
    try:
        return Distilled.from_dict(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as err:
        raise DistillError(f"{path}: not a distilled rule ({err})") from None


def differs_by_layer(rule: rules.Rule, genome, n_layers: int) -> bool:
    """Whether layers use different parts of ``genome`` (per-layer or per-synapse rules)."""
    parts = [jax.tree.leaves(rule.select(genome, layer)) for layer in range(n_layers)]
    for other in parts[1:]:
        if len(other) != len(parts[0]):
            return True
        for a, b in zip(parts[0], other, strict=True):
            if np.shape(a) != np.shape(b) or not np.array_equal(np.asarray(a), np.asarray(b)):
                return True
    return False


def _varying(samples, names) -> tuple[str, ...]:
    """The signals that take more than one value in ``samples`` (others add no term)."""
    out = []
    for name in names:
        v = np.asarray(samples[name], np.float64)
        if np.ptp(v) > 1e-6 * (1.0 + np.max(np.abs(v))):
            out.append(name)
    return tuple(out)


def _pooled(traces, layer, max_samples, seed):
    parts = [
        synapse_samples(t, layer=layer, max_samples=max_samples, seed=seed + i)
        for i, t in enumerate(traces)
    ]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    finite = np.all([np.isfinite(out[k]) for k in (*SIGNAL_NAMES, "dw")], axis=0)
    return {k: v[finite] for k, v in out.items()}


def distill_rule(
    family,
    rule: rules.Rule,
    genome,
    fit_instances: int = 4,
    heldout_instances: int = 4,
    degree: int = DEFAULT_DEGREE,
    threshold: float = DEFAULT_THRESHOLD,
    samples_per_instance: int = 20_000,
    signals: tuple[str, ...] = SIGNAL_NAMES,
    seed: int = 0,
) -> Distilled:
    """Fit ``rule(genome)``'s weight changes with a sparse polynomial of local signals.

    Signals are recorded on held-out task instances ``0 .. fit_instances - 1`` (fit) and
    ``fit_instances .. fit_instances + heldout_instances - 1`` (R² reported), at most
    ``samples_per_instance`` synapse-steps from each. The library holds every product of
    the ``signals`` that vary in the fit samples, up to ``degree``.

    Args:
      family: the task family the rule was meta-trained on (its inner loop makes the signals).
      rule, genome: the rule to distill.
      fit_instances, heldout_instances: held-out task instances to fit on and to score on.
      degree: the highest total degree of a term.
      threshold: sparsity, as a fraction of the RMS of ``dw`` (see :func:`stlsq`).
      samples_per_instance: synapse-steps sampled from each instance.
      signals: the signals the terms may use.
      seed: the subsampling seed.

    Returns:
      A :class:`Distilled` rule.

    Raises:
      DistillError: if the rule changes no weight, or too few samples are finite.
    """
    if fit_instances < 1 or heldout_instances < 1:
        raise DistillError("distill: needs at least one fit and one held-out instance")
    keys = test_instance_keys(fit_instances + heldout_instances)
    traces = record_inner_loops(family, rule, genome, keys)
    fit_traces, test_traces = traces[:fit_instances], traces[fit_instances:]
    n_layers = len(traces[0].layers)
    per_layer = n_layers > 1 and differs_by_layer(rule, genome, n_layers)
    groups = list(range(n_layers)) if per_layer else [None]
    fits = [_pooled(fit_traces, g, samples_per_instance, seed) for g in groups]
    tests = [_pooled(test_traces, g, samples_per_instance, seed + 10_000) for g in groups]
    for part in fits + tests:
        if part["dw"].size < 10:
            raise DistillError("distill: the rule's signals are not finite (a divergent rule?)")
    if all(np.max(np.abs(f["dw"])) == 0.0 for f in fits):
        raise DistillError(f"distill: {rule.name} never changes a weight (dw = 0): nothing to fit")
    pooled_fit = {k: np.concatenate([f[k] for f in fits]) for k in fits[0]}
    library = term_library(_varying(pooled_fit, signals), degree)
    coefs = np.stack([stlsq(design_matrix(library, f), f["dw"], threshold) for f in fits])
    active = np.any(coefs != 0.0, axis=0)
    if not active.any():  # keep the largest term rather than an empty rule
        active[np.argmax(np.max(np.abs(coefs), axis=0))] = True
    terms = tuple(t for t, a in zip(library, active, strict=True) if a)
    coefs = coefs[:, active]

    def r2(parts):
        y = np.concatenate([p["dw"] for p in parts])
        pred = np.concatenate(
            [design_matrix(terms, p) @ c for p, c in zip(parts, coefs, strict=True)]
        )
        return r2_score(y, pred)

    if per_layer:
        r2_layers = tuple(r2_one(terms, t, c) for t, c in zip(tests, coefs, strict=True))
    else:
        r2_layers = tuple(
            r2_one(terms, _pooled(test_traces, layer, samples_per_instance, seed), coefs[0])
            for layer in range(n_layers)
        )

    def importance(part, c):
        x = design_matrix(terms, part)
        return np.abs(c) * np.sqrt(np.mean(x**2, axis=0)) / np.sqrt(np.mean(part["dw"] ** 2))

    weight = np.max([importance(t, c) for t, c in zip(tests, coefs, strict=True)], axis=0)
    return Distilled(
        terms=terms,
        coefficients=coefs if per_layer else coefs[0],
        per_layer=per_layer,
        r2=r2(tests),
        r2_layers=r2_layers,
        r2_fit=r2(fits),
        importance=tuple(float(v) for v in weight),
        samples={
            "fit": int(sum(f["dw"].size for f in fits)),
            "heldout": int(sum(t["dw"].size for t in tests)),
        },
        instances={
            "fit": list(range(fit_instances)),
            "heldout": list(range(fit_instances, fit_instances + heldout_instances)),
        },
        source=rule.describe(genome),
        degree=degree,
        threshold=threshold,
        library=library,
    )


def r2_one(terms, samples, coefs) -> float:
    """R² of ``sum_k coefs[k] * term_k`` on one set of samples."""
    return r2_score(samples["dw"], design_matrix(terms, samples) @ np.asarray(coefs))


def distilled_rule(distilled: Distilled, shapes: tuple[tuple[int, int], ...] = ()) -> rules.Rule:
    """The polynomial rule of a distilled equation; its genome is ``distilled.genome()``."""
    return rules.polynomial(distilled.terms, per_layer=distilled.per_layer, shapes=shapes)


def distilled_experiment(cfg, distilled: Distilled, original_genome=None):
    """``(experiment, genome)`` of a run's config with its rule replaced by the distilled one.

    With ``network.learn_init`` the distilled rule starts from the original genome's
    meta-learned initial weights (``original_genome["w0"]``).

    Raises:
      ConfigError: if the distilled rule does not fit the config's task.
    """
    from ..config import ConfigError
    from ..experiment import build

    rule = {"name": "polynomial", "terms": list(distilled.terms), "init_scale": 0.0}
    if distilled.per_layer:
        rule["per_layer"] = True
    exp = build(dataclasses.replace(cfg, rule=rule))
    genome = distilled.genome()
    if exp.rule.weights is not None:
        if not isinstance(original_genome, dict) or "w0" not in original_genome:
            raise ConfigError(
                "network.learn_init: the distilled rule needs the run's initial weights"
            )
        genome = {"rule": genome, "w0": tuple(original_genome["w0"])}
    return exp, genome
