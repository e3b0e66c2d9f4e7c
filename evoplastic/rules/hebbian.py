"""Hebbian ABCD rules (Najarro & Risi 2020, "Meta-learning through Hebbian plasticity in
random networks", NeurIPS) and the static-weights baseline.

``dw = eta * (A*pre*post + B*pre + C*post + D)``. With ``per_synapse=True`` every synapse
has its own five coefficients (the paper's setting: ``5 * n_synapses`` numbers); with
``per_synapse=False`` each layer shares one set (a genomic bottleneck of five numbers a
layer). The genome is a tuple over layers of ``{"A", "B", "C", "D", "eta"}``.

``static(shapes)`` is the baseline with no plasticity: its genome *is* the weights, which
the outer loop evolves directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .base import Genome, Rule, Signals

COEFFICIENTS = ("A", "B", "C", "D", "eta")


def abcd(
    shapes: tuple[tuple[int, int], ...] = (),
    per_synapse: bool = True,
    init_scale: float = 0.1,
    coefficients: tuple[str, ...] = ("A", "B", "C", "D"),
) -> Rule:
    """The Hebbian ABCD rule over a network whose layers have weight ``shapes``.

    Args:
      shapes: ``((n_out, n_in), ...)``, one entry per plastic layer (set by the task).
      per_synapse: five coefficients per synapse (True) or per layer (False).
      init_scale: standard deviation of the initial coefficients.
      coefficients: which of ``A, B, C, D`` the rule has (the others are zero and not
        evolved; ``eta`` always is). With ``[A, B]`` the rule is odd in ``pre``, so a
        network of odd activations without biases behaves the same when its input and its
        first layer's weights change sign: the rule can relearn after its sensors are
        inverted, which the ``C*post`` and ``D`` terms would prevent.
    """
    shapes = tuple(tuple(s) for s in shapes)
    coefficients = tuple(coefficients)
    unknown = [c for c in coefficients if c not in COEFFICIENTS[:4]]
    if unknown or len(set(coefficients)) != len(coefficients):
        raise ValueError(
            f"rule.coefficients: {list(coefficients)} must be distinct names from A, B, C, D"
        )
    names = (*(c for c in COEFFICIENTS[:4] if c in coefficients), "eta")

    def init(key: jax.Array) -> Genome:
        out = []
        for layer, shape in enumerate(shapes):
            k = jax.random.fold_in(key, layer)
            size = shape if per_synapse else ()
            draws = init_scale * jax.random.normal(k, (len(COEFFICIENTS), *size))
            out.append({name: draws[i] for i, name in enumerate(COEFFICIENTS) if name in names})
        return tuple(out)

    def update(genome: Genome, signals: Signals) -> jax.Array:
        local = signals.broadcast()
        pre, post = local["pre"], local["post"]
        g = genome
        dw = 0.0
        for name, value in (("A", pre * post), ("B", pre), ("C", post), ("D", 1.0)):
            if name in g:
                dw = dw + g[name] * value
        return g["eta"] * jnp.broadcast_to(dw, signals.w.shape)

    def describe(genome: Genome) -> str:
        lines = []
        for layer, g in enumerate(genome):
            means = {k: float(np.mean(np.asarray(v))) for k, v in g.items()}
            terms = " + ".join(
                f"{means[name]:.3f}*{term}" if term else f"{means[name]:.3f}"
                for name, term in (("A", "pre*post"), ("B", "pre"), ("C", "post"), ("D", ""))
                if name in means
            )
            kind = "mean over synapses" if per_synapse else "shared"
            lines.append(f"layer {layer} ({kind}): dw = {means['eta']:.3f}*({terms})")
        return "\n".join(lines)

    name = "abcd" if per_synapse else "abcd_shared"
    return Rule(name, init, update, describe, select=lambda genome, layer: genome[layer])


def static(shapes: tuple[tuple[int, int], ...] = (), init_scale: float = 0.5) -> Rule:
    """No plasticity: the genome is the network's weights, evolved directly (a baseline)."""
    shapes = tuple(tuple(s) for s in shapes)

    def init(key: jax.Array) -> Genome:
        return tuple(
            init_scale * jax.random.normal(jax.random.fold_in(key, i), s) / np.sqrt(s[1])
            for i, s in enumerate(shapes)
        )

    def update(genome: Genome, signals: Signals) -> jax.Array:
        del genome
        return jnp.zeros_like(signals.w)

    def describe(genome: Genome) -> str:
        return "static weights: " + ", ".join(f"{np.shape(w)}" for w in genome)

    return Rule(
        "static", init, update, describe, weights=lambda genome: tuple(genome), plastic=False
    )
