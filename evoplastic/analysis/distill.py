"""Distilling a learned rule into a readable equation by sparse regression.

Any rule -- an MLP, a per-synapse Hebbian rule, a polynomial -- is a function of the local
signals. :func:`distill_rule` records what the synapses of a network saw while the rule
taught it (:func:`~evoplastic.analysis.trace.record_inner_loop` on held-out task
instances, in float64, skipping instances on which the rule diverges), then fits the
rule's weight changes with a sparse sum of local polynomial terms (products of ``pre,
post, w, err, mod`` up to a degree) by sequential thresholded least squares (STLSQ;
Brunton, Proctor & Kutz 2016, "Discovering governing equations from data by sparse
identification of nonlinear dynamical systems", PNAS).

What is fitted is what matters to learning. By default (``target="drift"``, where the task
has the stepwise inner loop) it is the rule's *drift*: at the states the network visits
along its own inner loop, the weight change of one step averaged over many inputs of the
same instance, the state held fixed (:func:`drift_samples`), against the same average of
each term. Fluctuations that average out over the inputs weigh nothing, and the drift is
what decides where the weights go (stochastic approximation). Elsewhere
(``target="window"``) it is the change the rule made to each weight over short windows of
steps along its path, ``sum_t s_t dw_t`` with the step size ``s_t`` the network applied
(:func:`window_samples`), against the same sums of each term. A polynomial rule is
recovered exactly either way. The fit is judged by its R² on samples from *other* held-out
instances than it was fitted on.

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
from ..tasks import evaluate_genome, test_instance_keys
from .trace import RECORDED, _as_float64, record_inner_loops, synapse_samples

# the local signals a recorded inner loop holds (every network gives them)
SIGNAL_NAMES = RECORDED[:-1]

DEFAULT_DEGREE = 3
DEFAULT_THRESHOLD = 0.01  # a term is dropped if it moves dw by < 1% of dw's RMS
DEFAULT_WINDOW = 20  # steps whose weight change one sample sums
DIVERGED = 1e4  # an instance whose weights grew this many times past their start diverged
MAX_TRIES = 4  # held-out instances tried, as a multiple of those needed
SPARSITY_PATH = (0.01, 0.03, 0.1, 0.3)  # thresholds tried when choosing by task loss
LOSS_TOLERANCE = 0.1  # the sparsest equation within 10% of the rule's task loss wins
SELECT_OFFSET = 10_000  # held-out instances from here on score the candidate equations
FILE_NAME = "distilled.json"
DRIFT_EVERY = 20  # a state every this many steps of the network's own inner loop
DRIFT_INPUTS = 1000  # inputs (steps of the same instance) each drift is averaged over


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
      window: the steps whose weight change one sample sums (see :func:`window_samples`).
      selection: how the sparsity was chosen by task loss (see :func:`distill_rule`):
        ``{"instances", "rule_loss", "candidates": [{"threshold", "terms", "loss"}]}``;
        empty when it was not.
      target: what was fitted: ``"drift"`` (the expected weight change at the states the
        network visits, :func:`drift_samples`) or ``"window"`` (:func:`window_samples`).
      drift: with ``target="drift"``, ``{"every", "inputs"}``: a state every ``every``
        steps, each drift averaged over ``inputs`` inputs.
      r2_window: with ``target="drift"``, the equation's R² against the windowed weight
        changes of the held-out instances (:func:`window_samples`), for comparison.
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
    window: int = 1
    selection: dict = dataclasses.field(default_factory=dict)
    target: str = "window"
    drift: dict = dataclasses.field(default_factory=dict)
    r2_window: float | None = None

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


def diverged(trace) -> bool:
    """Whether the rule diverged on a recorded instance: a non-finite loss or signal, or a
    weight that grew more than :data:`DIVERGED` times past the largest initial weight."""
    if not np.isfinite(trace.loss):
        return True
    for rec in trace.layers:
        if not all(np.all(np.isfinite(rec[k])) for k in (*SIGNAL_NAMES, "dw")):
            return True
        if np.max(np.abs(rec["w"])) > DIVERGED * (1.0 + np.max(np.abs(rec["w"][0]))):
            return True
    return False


def step_sizes(rec: dict[str, np.ndarray]) -> np.ndarray:
    """``s[t]``, the step size the network applied to the rule's ``dw`` at step ``t``
    (``w[t + 1] - w[t] ~ s[t] * dw[t]``, least squares over the layer's synapses), for
    ``t = 0 .. T - 2``; 0 where the rule changed nothing. Any network's own step-size
    schedule is read off the recorded weights, so nothing about it is assumed."""
    moved = np.diff(np.asarray(rec["w"], np.float64), axis=0)
    dw = np.asarray(rec["dw"], np.float64)[:-1]
    axes = tuple(range(1, dw.ndim))
    den = np.sum(dw * dw, axis=axes)
    num = np.sum(moved * dw, axis=axes)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def window_samples(
    trace, terms, layer: int | None = None, window: int = DEFAULT_WINDOW,
    max_samples: int | None = None, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(X [n, k], y [n])``: the weight change the rule made over windows of ``window``
    steps, one sample per synapse and window, and the same sum for each term.

    ``y = sum_t s[t] * dw[t]`` over the window's steps (``s``: :func:`step_sizes`), which
    is what the weight actually moved by, and ``X[:, k] = sum_t s[t] * term_k[t]``, so
    ``y ~ X @ c`` for a polynomial rule ``dw = sum_k c_k term_k`` exactly. ``window = 1``
    fits single steps (weighted by their step size). At most ``max_samples`` samples, from
    synapses drawn at random (``seed``).
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for index, rec in enumerate(trace.layers):
        if layer is not None and index != layer:
            continue
        steps, n_out, n_in = rec["w"].shape
        win = max(1, min(window, steps - 1))
        n_win = (steps - 1) // win
        if n_win == 0:
            continue
        keep = n_out * n_in
        if max_samples is not None:
            keep = max(1, min(keep, max_samples // n_win))
        chosen = np.sort(rng.choice(n_out * n_in, keep, replace=False))
        rows, cols = np.divmod(chosen, n_in)
        use = n_win * win
        sig = {
            "pre": rec["pre"][:use, cols],
            "post": rec["post"][:use, rows],
            "w": rec["w"][:use, rows, cols],
            "err": rec["err"][:use, rows],
            "mod": np.broadcast_to(rec["mod"][:use].reshape(use, 1), (use, keep)),
            "dw": rec["dw"][:use, rows, cols],
        }
        s = step_sizes(rec)[:use, None]
        flat = {k: np.asarray(v, np.float64).reshape(-1) for k, v in sig.items()}
        x = design_matrix(terms, flat).reshape(use, keep, len(terms)) * s[..., None]
        y = np.asarray(sig["dw"], np.float64) * s
        xs.append(x.reshape(n_win, win, keep, len(terms)).sum(axis=1).reshape(-1, len(terms)))
        ys.append(y.reshape(n_win, win, keep).sum(axis=1).reshape(-1))
    if not xs:
        raise DistillError(f"distill: the recorded inner loop has no layer {layer}")
    return np.concatenate(xs), np.concatenate(ys)


def _pooled(traces, terms, layer, window, max_samples, seed):
    parts = [
        window_samples(t, terms, layer, window, max_samples, seed + i) for i, t in enumerate(traces)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _given_terms(terms, varying) -> tuple[str, ...]:
    """The canonical spelling of the terms asked for; each must use signals that vary in
    the recorded inner loops (``varying``)."""
    out = []
    for term in terms:
        try:
            text = rules.canonical(term)
        except rules.TermError as err:
            raise DistillError(f"distill: --terms: {err}") from None
        missing = [f for f, _ in rules.parse_term(term) if f not in varying]
        if missing:
            raise DistillError(
                f"distill: --terms: {term!r} uses {missing[0]!r}, which does not vary in this"
                f" task's inner loop (signals that do: {', '.join(varying)})"
            )
        if text not in out:
            out.append(text)
    if not out:
        raise DistillError("distill: --terms: no term given")
    return tuple(out)


def _raw(traces, max_samples, seed):
    parts = [
        synapse_samples(t, max_samples=max_samples, seed=seed + i) for i, t in enumerate(traces)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _finite_traces(family, rule, genome, fit_instances, heldout_instances):
    """Float64 traces of the first held-out instances on which the rule does not diverge
    (up to :data:`MAX_TRIES` times as many are tried): ``(fit, heldout, indices)``."""
    want = fit_instances + heldout_instances
    keys = test_instance_keys(MAX_TRIES * want)
    good, indices, n_bad = [], [], 0
    for start in range(0, len(keys), want):
        batch = keys[start : start + want]
        for i, trace in enumerate(record_inner_loops(family, rule, genome, batch, float64=True)):
            if diverged(trace):
                n_bad += 1
            else:
                good.append(trace)
                indices.append(start + i)
        if len(good) >= want:
            break
    if len(good) < want:
        raise DistillError(
            f"distill: the rule diverged on {n_bad} of {len(good) + n_bad} held-out instances;"
            f" fewer than {want} finite ones to fit and test on"
        )
    return good[:fit_instances], good[fit_instances:want], indices[:want], n_bad


def _finite_or_none(value: float):
    return value if np.isfinite(value) else None


def _mean_loss(losses) -> float:
    losses = np.asarray(losses, np.float64)
    return float(np.mean(losses)) if np.all(np.isfinite(losses)) else float("inf")


def _select_by_loss(family, rule, genome, fits, library, threshold, per_layer, shapes, n):
    """``(threshold, coefs, record)``: the sparsity whose equation learns (nearly) as well
    as the rule, on ``n`` held-out instances of its own (see :func:`distill_rule`)."""
    from ..backends import make_genome_evaluator

    keys = test_instance_keys(SELECT_OFFSET + n)[SELECT_OFFSET:]
    rule_loss = _mean_loss(make_genome_evaluator(family, rule)(genome, keys)[0])
    candidates, seen = [], set()
    for th in sorted({threshold, *(t for t in SPARSITY_PATH if t > threshold)}):
        coefs = np.stack([stlsq(x, y, th) for x, y in fits])
        active = np.any(coefs != 0.0, axis=0)
        support = tuple(np.flatnonzero(active))
        if not active.any() or support in seen:
            continue
        seen.add(support)
        terms = tuple(t for t, a in zip(library, active, strict=True) if a)
        poly = rules.polynomial(terms, per_layer=per_layer, shapes=shapes if per_layer else ())
        g = jax.numpy.asarray(coefs[:, active] if per_layer else coefs[0, active], "float32")
        loss = _mean_loss(make_genome_evaluator(family, poly)(g, keys)[0])
        candidates.append({"threshold": th, "terms": len(terms), "loss": loss, "coefs": coefs})
    if not candidates:
        return threshold, np.stack([stlsq(x, y, threshold) for x, y in fits]), {}
    good = [c for c in candidates if c["loss"] <= rule_loss + LOSS_TOLERANCE * abs(rule_loss)]
    best = min(good, key=lambda c: c["terms"]) if good else min(candidates, key=lambda c: c["loss"])
    record = {
        "instances": n,
        "rule_loss": _finite_or_none(rule_loss),
        "candidates": [
            {"threshold": c["threshold"], "terms": c["terms"], "loss": _finite_or_none(c["loss"])}
            for c in candidates
        ],
    }
    return best["threshold"], best["coefs"], record


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
    window: int = DEFAULT_WINDOW,
    select_instances: int = 0,
    target: str = "auto",
    drift_inputs: int = DRIFT_INPUTS,
    terms: tuple[str, ...] | None = None,
) -> Distilled:
    """Fit ``rule(genome)``'s weight changes with a sparse polynomial of local signals.

    The inner loop is recorded in float64 on held-out task instances; instances on which
    the rule diverges (:func:`diverged`) are skipped. The first ``fit_instances`` finite
    ones are fitted, the next ``heldout_instances`` score the fit (R²). The library holds
    every product of the ``signals`` that vary in the recorded signals, up to ``degree``.
    What is fitted (``target``):

    * ``"drift"``: the expected weight change at the states the network visits
      (:func:`drift_samples`): every :data:`DRIFT_EVERY` steps of the rule's own inner
      loop, one step of the rule from that state, averaged over ``drift_inputs`` inputs of
      the same instance. Fluctuations that average out over the inputs weigh nothing; the
      drift, which decides where the weights go, is all that is fitted.
    * ``"window"``: what the rule did to each weight over windows of ``window`` steps along
      its own path (:func:`window_samples`).
    * ``"auto"``: ``"drift"`` where the family allows it (:func:`drift_unsupported`), else
      ``"window"``.

    Args:
      family: the task family the rule was meta-trained on (its inner loop makes the signals).
      rule, genome: the rule to distill.
      fit_instances, heldout_instances: held-out task instances to fit on and to score on.
      degree: the highest total degree of a term.
      threshold: sparsity, as a fraction of the RMS of the target (see :func:`stlsq`).
      samples_per_instance: at most this many (synapse, window) samples from each instance.
      signals: the signals the terms may use.
      seed: the subsampling seed (and the drift's choice of inputs).
      window: steps summed in one sample (1: single steps) with ``target="window"``.
      select_instances: with ``n > 0``, the sparsity is chosen by what the equation does
        as a rule: the fit is repeated at ``threshold`` and each larger threshold of
        :data:`SPARSITY_PATH`, every distinct equation is run on ``n`` held-out instances
        of its own (from index :data:`SELECT_OFFSET` on, disjoint from those fitted,
        scored and reported by ``evoplastic eval``), and the sparsest one whose mean task
        loss is within :data:`LOSS_TOLERANCE` of the rule's own wins (else the one with
        the lowest loss).
      target: ``"auto"``, ``"drift"`` or ``"window"`` (above).
      drift_inputs: the inputs each drift sample averages over.
      terms: fit these terms (an equation's form to test, e.g. ``("pre*post",
        "post^2*w")``) instead of every product up to ``degree``; sparsity still applies.

    Returns:
      A :class:`Distilled` rule.

    Raises:
      DistillError: if the rule changes no weight, diverges on too many instances, no term
        of the library fits its weight changes, or ``target="drift"`` is not possible.
    """
    if fit_instances < 1 or heldout_instances < 1:
        raise DistillError("distill: needs at least one fit and one held-out instance")
    if window < 1:
        raise DistillError(f"distill: window must be >= 1, got {window}")
    if target not in ("auto", "drift", "window"):
        raise DistillError(f"distill: target must be auto, drift or window, got {target!r}")
    fit_traces, test_traces, used, n_diverged = _finite_traces(
        family, rule, genome, fit_instances, heldout_instances
    )
    n_layers = len(fit_traces[0].layers)
    raw = _raw(fit_traces, samples_per_instance, seed)
    if np.max(np.abs(raw["dw"])) == 0.0:
        raise DistillError(f"distill: {rule.name} never changes a weight (dw = 0): nothing to fit")
    library = term_library(_varying(raw, signals), degree)
    if terms is not None:
        library = _given_terms(terms, _varying(raw, SIGNAL_NAMES))
    per_layer = n_layers > 1 and differs_by_layer(rule, genome, n_layers)
    why_not = drift_unsupported(family, genome, per_layer)
    if target == "drift" and why_not:
        raise DistillError(f"distill: cannot fit the drift: {why_not}; use --target window")
    target = ("window" if why_not else "drift") if target == "auto" else target
    n_fit, n_test = len(fit_traces), len(test_traces)
    sizes = [int(np.prod(rec["w"].shape[1:])) for rec in fit_traces[0].layers]
    if target == "drift":
        keys = test_instance_keys(max(used) + 1)
        groups = [None]

        def samples(indices, offset):
            return drift_samples(
                family, rule, genome, keys[np.asarray(indices)], library,
                inputs=drift_inputs, seed=seed + offset,
            )  # fmt: skip

        fits = [samples(used[:n_fit], 0)]
        tests = [samples(used[n_fit : n_fit + n_test], 10_000)]
    else:
        groups = list(range(n_layers)) if per_layer else [None]
        fits = [_pooled(fit_traces, library, g, window, samples_per_instance, seed) for g in groups]
        tests = [
            _pooled(test_traces, library, g, window, samples_per_instance, seed + 10_000)
            for g in groups
        ]
    if all(np.max(np.abs(y)) == 0.0 for _, y in fits):
        raise DistillError(
            f"distill: the network applied none of {rule.name}'s weight changes: nothing to fit"
        )
    coefs = np.stack([stlsq(x, y, threshold) for x, y in fits])
    selection = {}
    if select_instances > 0:
        shapes = tuple(tuple(rec["w"].shape[1:]) for rec in fit_traces[0].layers)
        threshold, coefs, selection = _select_by_loss(
            family, rule, genome, fits, library, threshold, per_layer, shapes, select_instances
        )
    active = np.any(coefs != 0.0, axis=0)
    r2_all = r2_score(
        np.concatenate([y for _, y in tests]),
        np.concatenate([x @ c for (x, _), c in zip(tests, coefs, strict=True)]),
    )
    if not active.any() or not np.isfinite(r2_all) or r2_all <= 0.0:
        raise DistillError(
            f"distill: no sparse polynomial of degree {degree} fits {rule.name}'s weight"
            f" changes (held-out R² {r2_all:.3g}); try a higher --degree or a lower --threshold"
        )
    terms = tuple(t for t, a in zip(library, active, strict=True) if a)
    coefs = coefs[:, active]
    keep = np.flatnonzero(active)

    def r2(parts, cs=coefs):
        y = np.concatenate([p[1] for p in parts])
        pred = np.concatenate([p[0][:, keep] @ c for p, c in zip(parts, cs, strict=True)])
        return r2_score(y, pred)

    def layer_part(part, layer):
        """The samples of one layer's weights (drift samples cycle through all weights)."""
        x, y = part
        start, size = sum(sizes[:layer]), sizes[layer]
        x = x.reshape(-1, sum(sizes), x.shape[-1])[:, start : start + size]
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, sum(sizes))[
            :, start : start + size
        ].ravel()

    if per_layer:
        r2_layers = tuple(r2([t], [c]) for t, c in zip(tests, coefs, strict=True))
    elif target == "drift":
        r2_layers = tuple(r2([layer_part(tests[0], layer)]) for layer in range(n_layers))
    else:
        r2_layers = tuple(
            r2([_pooled(test_traces, library, layer, window, samples_per_instance, seed)])
            for layer in range(n_layers)
        )
    r2_window = None
    if target == "drift":  # the same equation against the windowed changes, for comparison
        x, y = _pooled(test_traces, library, None, window, samples_per_instance, seed + 10_000)
        r2_window = r2_score(y, x[:, keep] @ coefs[0])

    def importance(part, c):
        x, y = part[0][:, keep], part[1]
        return np.abs(c) * np.sqrt(np.mean(x**2, axis=0)) / np.sqrt(np.mean(y**2))

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
            "fit": int(sum(y.size for _, y in fits)),
            "heldout": int(sum(y.size for _, y in tests)),
        },
        instances={
            "fit": used[:n_fit],
            "heldout": used[n_fit : n_fit + n_test],
            "diverged": n_diverged,
        },
        source=rule.describe(genome),
        degree=degree,
        threshold=threshold,
        library=library,
        window=window,
        selection=selection,
        target=target,
        drift={"every": DRIFT_EVERY, "inputs": drift_inputs} if target == "drift" else {},
        r2_window=r2_window,
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


def heldout_losses(candidates: dict, instances: int) -> dict[str, float]:
    """``{name: mean held-out loss}`` of ``{name: (experiment, genome)}`` over the first
    ``instances`` held-out instances (the finite ones; NaN if none is finite)."""
    out = {}
    for name, (exp, genome) in candidates.items():
        loss = np.asarray(evaluate_genome(exp.family, exp.rule, genome, instances)["loss"])
        finite = loss[np.isfinite(loss)]
        out[name] = float(finite.mean()) if finite.size else float("nan")
    return out


# --- the expected weight change at the states the network visits (the drift) -----------------


def _state_weights(state):
    """Every plastic weight of an inner-loop state, flattened into one vector."""
    for name in ("w", "ws"):
        if hasattr(state, name):
            leaves = jax.tree.leaves(getattr(state, name))
            return jax.numpy.concatenate([jax.numpy.ravel(x) for x in leaves])
    raise DistillError(f"distill: a {type(state).__name__} holds no weights")


def drift_unsupported(family, genome, per_layer: bool) -> str | None:
    """Why the drift cannot be fitted on ``family`` (``None`` if it can): it needs the
    stepwise inner loop (``steps``, ``init_inner``, ``inner_step``), a state with its
    weights (``w`` or ``ws``), one equation for all layers, and no meta-learned initial
    weights."""
    if not all(hasattr(family, a) for a in ("init_inner", "inner_step", "steps")):
        return f"{type(family).__name__} has no stepwise inner loop"
    if isinstance(genome, dict) and "w0" in genome:
        return "the run meta-learned its initial weights"
    if per_layer:
        return "the rule differs between layers"
    return None


def _float64_tasks(family, keys):
    """The held-out instances of ``keys``, drawn as the evaluation draws them, in float64."""
    return _as_float64(jax.vmap(lambda k: family.sample(k, "test"))(keys))


def _init_state(family, task, rule):
    try:
        return family.init_inner(task, rule=rule)
    except TypeError:
        return family.init_inner(task)


class _Float64:
    """Float64 computation inside (the process-wide switch, as the recording uses)."""

    def __enter__(self):
        self.before = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
        self.scope = jax.enable_x64(True)
        self.scope.__enter__()

    def __exit__(self, *exc):
        self.scope.__exit__(*exc)
        jax.config.update("jax_enable_x64", self.before)


@dataclasses.dataclass
class DriftStates:
    """The network's states every ``every`` steps of its inner loop on some held-out
    instances (float64 pytrees, leading axes ``[n, states]``), the instances, and the
    steps whose inputs each drift averages over."""

    states: object
    tasks: object
    inputs: np.ndarray
    every: int
    rule: object = None  # the rule that made the states (its own state is kept for it)


def visited_states(family, rule, genome, keys, every: int = DRIFT_EVERY,
                   inputs: int = DRIFT_INPUTS, seed: int = 0) -> DriftStates:  # fmt: skip
    """Run ``rule(genome)`` on the held-out instances of ``keys`` (float64) and keep its
    state every ``every`` steps; draw the ``inputs`` steps (of the same instance) the
    drift at each state is averaged over."""
    steps = int(family.steps)
    every = max(1, min(every, steps))

    def one(genome, task):
        def body(state, t):
            return family.inner_step(rule, genome, task, state, t), state

        _, states = jax.lax.scan(body, _init_state(family, task, rule), jax.numpy.arange(steps))
        return jax.tree.map(lambda x: x[::every], states)

    @jax.jit
    def run(genome, keys):
        tasks = _float64_tasks(family, keys)
        return jax.vmap(one, (None, 0))(_as_float64(genome), tasks), tasks

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(steps, min(inputs, steps), replace=False))
    with _Float64():
        states, tasks = run(genome, jax.numpy.asarray(keys))
    return DriftStates(states, tasks, chosen, every, rule)


def drift(family, rule, genomes, visited: DriftStates, chunk: int = 50) -> np.ndarray:
    """``[g, n, states, n_weights]``: for each of the genomes stacked along the leading axis
    of ``genomes``, the weight change one step of ``rule`` makes at each visited state,
    averaged over the inputs of ``visited.inputs``, the state (its step size included) held
    fixed. This is the expected update, the drift that the weights follow on average
    (stochastic approximation: Ljung 1977, Kushner & Yin 2003)."""
    inputs = np.asarray(visited.inputs)
    pad = (-len(inputs)) % chunk
    blocks = np.concatenate([inputs, np.full(pad, inputs[0])]).reshape(-1, chunk)
    valid = np.concatenate([np.ones(len(inputs)), np.zeros(pad)]).reshape(-1, chunk)

    def at(genome, task, state, blocks, valid):
        if rule is not visited.rule and hasattr(state, "rule_state"):
            # another rule (a term of the library) starts from its own initial state
            fresh = _init_state(family, task, rule)
            state = dataclasses.replace(state, rule_state=fresh.rule_state)
        w0 = _state_weights(state)

        def one(s):
            return _state_weights(family.inner_step(rule, genome, task, state, s)) - w0

        def block(total, sv):
            steps, ok = sv
            return total + jax.numpy.einsum("s,sw->w", ok, jax.vmap(one)(steps)), None

        total, _ = jax.lax.scan(block, jax.numpy.zeros_like(w0), (blocks, valid))
        return total / len(inputs)

    @jax.jit
    def run(genomes, tasks, states, blocks, valid):
        per_state = jax.vmap(at, (None, None, 0, None, None))
        per_instance = jax.vmap(per_state, (None, 0, 0, None, None))
        return jax.lax.map(lambda g: per_instance(g, tasks, states, blocks, valid), genomes)

    with _Float64():
        out = run(_as_float64(genomes), visited.tasks, visited.states, blocks,
                  jax.numpy.asarray(valid, "float64"))  # fmt: skip
        return np.asarray(out, np.float64)


def drift_samples(family, rule, genome, keys, terms, every: int = DRIFT_EVERY,
                  inputs: int = DRIFT_INPUTS, seed: int = 0):  # fmt: skip
    """``(X [n, k], y [n])``: the drift (:func:`drift`) of ``rule(genome)`` at the states it
    visits on the held-out instances of ``keys`` (one sample per instance, state and
    weight), and the drift of each term ``k`` of ``terms`` (the polynomial rule with that
    term alone, coefficient 1) at the same states, on the same inputs. For a polynomial
    rule ``dw = sum_k c_k term_k`` of a network that adds its step size times ``dw``,
    ``y = X @ c`` exactly."""
    visited = visited_states(family, rule, genome, keys, every, inputs, seed)
    y = drift(family, rule, jax.tree.map(lambda x: x[None], genome), visited)[0]
    basis = drift(family, rules.polynomial(tuple(terms)), np.eye(len(terms)), visited)
    return np.moveaxis(basis, 0, -1).reshape(-1, len(terms)), y.reshape(-1)
