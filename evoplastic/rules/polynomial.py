"""Polynomial plasticity rules: a weighted sum of named local terms.

``dw = sum_k c_k * term_k(pre, post, w, err, mod)`` where every term is a product of
powers of local signals, written as a string such as ``"pre*post"`` or ``"post^2*w"``.
The term library is data (a tuple of strings), not code: any product of the signals in
:data:`evoplastic.rules.base.SIGNAL_NAMES` is a valid term, and ``"1"`` is the constant.

Oja's rule (Oja 1982, "A simplified neuron model as a principal component analyzer")
is ``dw = pre*post - post^2*w``; Hebb's is ``dw = pre*post``. Both are available as
fixed rules and as reference genomes over any library that contains their terms.

Example::

    rule = polynomial(("pre*post", "post^2*w", "w"))
    genome = jnp.array([1.0, -1.0, 0.0])          # Oja's rule
    dw = rule.update(genome, Signals(pre=x, post=y, w=w))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .base import SIGNAL_NAMES, Genome, Rule, Signals

DEFAULT_TERMS = ("pre*post", "post^2*w", "pre", "post", "w", "post*w", "1", "post^2")

REFERENCE_RULES = {
    "hebb": {"pre*post": 1.0},
    "oja": {"pre*post": 1.0, "post^2*w": -1.0},
}


class TermError(ValueError):
    """A term string that does not parse."""


def parse_term(term: str) -> tuple[tuple[str, int], ...]:
    """Parse ``"post^2*w"`` into ``(("post", 2), ("w", 1))`` in canonical signal order.

    Raises:
      TermError: if a factor names an unknown signal or a power is not a positive integer.
    """
    text = term.replace(" ", "")
    if text == "1":
        return ()
    powers: dict[str, int] = {}
    for factor in text.split("*"):
        name, _, power = factor.partition("^")
        if name not in SIGNAL_NAMES:
            raise TermError(
                f"term {term!r}: unknown signal {name!r} (signals: {', '.join(SIGNAL_NAMES)})"
            )
        try:
            p = int(power) if power else 1
        except ValueError:
            p = 0
        if p < 1:
            raise TermError(f"term {term!r}: power of {name!r} must be a positive integer")
        powers[name] = powers.get(name, 0) + p
    return tuple((s, powers[s]) for s in SIGNAL_NAMES if s in powers)


def canonical(term: str) -> str:
    """The canonical spelling of a term (``"w*post^2"`` -> ``"post^2*w"``)."""
    factors = parse_term(term)
    if not factors:
        return "1"
    return "*".join(s if p == 1 else f"{s}^{p}" for s, p in factors)


def reference_genome(name: str, terms: tuple[str, ...]) -> np.ndarray:
    """The coefficient vector of a reference rule (``"oja"``, ``"hebb"``) over ``terms``.

    Raises:
      KeyError: if the rule is unknown or the library lacks one of its terms.
    """
    coefs = REFERENCE_RULES[name]
    index = {canonical(t): i for i, t in enumerate(terms)}
    out = np.zeros(len(terms), np.float32)
    for term, value in coefs.items():
        if term not in index:
            raise KeyError(f"the term library lacks {term!r}, needed by {name}'s rule")
        out[index[term]] = value
    return out


def format_equation(coefs, terms: tuple[str, ...], normalize: bool = True) -> str:
    """``dw = 1.00*pre*post - 0.99*post^2*w + ...``, scaled so the largest |c| is 1."""
    c = np.asarray(coefs, np.float64)
    scale = np.max(np.abs(c)) if normalize and np.any(c) else 1.0
    parts = []
    for value, term in zip(c / scale, terms, strict=True):
        sign = "-" if value < 0 else "+"
        body = f"{abs(value):.2f}" if canonical(term) == "1" else f"{abs(value):.2f}*{term}"
        parts.append((sign, body))
    if not parts:
        return "dw = 0"
    first_sign, first = parts[0]
    text = ("-" if first_sign == "-" else "") + first
    for sign, body in parts[1:]:
        text += f" {sign} {body}"
    return "dw = " + text


def _weighted_terms(coefs, parsed, signals: Signals) -> jax.Array:
    """``sum_k coefs[k] * term_k`` as one elementwise expression (XLA fuses it into a loop)."""
    local = signals.broadcast()
    total = jnp.zeros(signals.w.shape, signals.w.dtype)
    for k, factors in enumerate(parsed):
        value = coefs[k]
        for name, power in factors:
            value = value * local[name] ** power
        total = total + value
    return total


def polynomial(
    terms: tuple[str, ...] = DEFAULT_TERMS,
    init_scale: float = 0.0,
    per_layer: bool = False,
    shapes: tuple[tuple[int, int], ...] = (),
    per_synapse: bool = False,
    init: dict[str, float] | None = None,
) -> Rule:
    """A rule ``dw = sum_k c_k * term_k``; the genome is the coefficient vector ``c``.

    Args:
      terms: the term library, e.g. ``("pre*post", "post^2*w", "w")``.
      init_scale: standard deviation of the initial coefficients (0: start at zero).
      per_layer: one coefficient vector per layer of a layered network (genome
        ``[n_layers, K]``) instead of one shared by all layers.
      shapes: the layers' weight shapes (set by the task; needed with ``per_layer`` and
        ``per_synapse``).
      per_synapse: one coefficient vector per synapse (genome: a tuple over layers of
        ``[K, n_out, n_in]`` arrays), as the ABCD rule has per synapse; the rule is then
        still local, each synapse weighting its own signals with its own coefficients.
      init: initial coefficients by term, e.g. ``{"err*pre": 0.1}`` (the delta rule) for
        every layer and synapse, added to the random draw: the outer search then starts
        from a known rule instead of from zero.

    Returns:
      A :class:`Rule` whose ``terms`` attribute is the library.
    """
    terms = tuple(terms)
    parsed = tuple(parse_term(t) for t in terms)
    if len(set(parsed)) != len(parsed):
        twice = next(t for i, t in enumerate(terms) if parsed[i] in parsed[:i])
        raise TermError(f"the term library lists a term twice ({twice!r}, as {canonical(twice)!r})")
    if per_layer and per_synapse:
        raise ValueError("rule.per_synapse: choose per_layer or per_synapse, not both")
    for flag, on in (("per_layer", per_layer), ("per_synapse", per_synapse)):
        if on and not shapes:
            raise ValueError(f"rule.{flag}: needs a task with a layered network")
    shapes = tuple(tuple(s) for s in shapes)
    lead = (len(shapes),) if per_layer else ()
    start = np.zeros(len(terms), np.float32)
    for term, value in (init or {}).items():
        try:
            k = parsed.index(parse_term(str(term)))
        except ValueError:  # a term that does not parse, or one not in the library
            raise ValueError(
                f"rule.init: term {term!r} is not in the library (rule.terms)"
            ) from None
        start[k] = float(value)

    def init(key: jax.Array) -> Genome:
        if per_synapse:
            return tuple(
                init_scale * jax.random.normal(jax.random.fold_in(key, i), (len(terms), *s))
                + start[:, None, None]
                for i, s in enumerate(shapes)
            )
        return init_scale * jax.random.normal(key, (*lead, len(terms))) + start

    def update(genome: Genome, signals: Signals) -> jax.Array:
        return _weighted_terms(genome, parsed, signals)

    def describe(genome: Genome) -> str:
        if per_synapse:
            return "\n".join(
                f"layer {i} (mean over synapses): "
                + format_equation(np.mean(np.asarray(g), axis=(1, 2)), terms)
                for i, g in enumerate(genome)
            )
        if not per_layer:
            return format_equation(genome, terms)
        return "\n".join(f"layer {i}: {format_equation(g, terms)}" for i, g in enumerate(genome))

    layered = per_layer or per_synapse
    select = (lambda g, layer: g[layer]) if layered else (lambda g, layer: g)
    return Rule("polynomial", init, update, describe, terms if not layered else (), select)


def _fixed(name: str) -> Rule:
    terms = tuple(REFERENCE_RULES[name])
    parsed = tuple(parse_term(t) for t in terms)
    coefs = jnp.asarray(list(REFERENCE_RULES[name].values()))

    def update(genome: Genome, signals: Signals) -> jax.Array:
        del genome
        return _weighted_terms(coefs, parsed, signals)

    return Rule(name, lambda key: jnp.zeros((0,)), update, lambda g: format_equation(coefs, terms))


def hebb() -> Rule:
    """Hebb's rule ``dw = pre*post`` (fixed; its genome is empty)."""
    return _fixed("hebb")


def oja() -> Rule:
    """Oja's rule ``dw = pre*post - post^2*w`` (fixed; its genome is empty)."""
    return _fixed("oja")
