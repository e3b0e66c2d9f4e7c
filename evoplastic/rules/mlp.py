"""MLP rules: a small neural network, shared by every synapse, maps local signals to ``dw``.

``dw[i, j] = MLP_theta(pre[j], post[i], w[i, j], err[i], mod)``: the genome is the MLP's
parameters ``theta`` (a flax pytree), the same for every synapse, so the rule stays local
however expressive it is. This is the "learned plasticity rule as a small network" family
of, e.g., Confavreux et al. 2020 ("A meta-learning approach to (re)discover plasticity
rules that carve a desired function into a neural network") and Tyulmankov et al. 2022.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .base import SIGNAL_NAMES, Genome, Rule, Signals


class _SynapseMLP(nn.Module):
    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        h = features
        for width in self.hidden:
            h = jnp.tanh(nn.Dense(width)(h))
        return nn.Dense(1)(h)[..., 0]


def mlp(
    features: tuple[str, ...] = ("pre", "post", "w", "err"),
    hidden: tuple[int, ...] = (16,),
    out_scale: float = 0.1,
    odd_in: tuple[str, ...] = (),
    l2: float = 0.0,
) -> Rule:
    """A rule whose ``dw`` is a small MLP of the synapse's local signals.

    Args:
      features: which local signals the MLP reads (from ``pre, post, w, err, mod``).
      hidden: the MLP's hidden widths.
      out_scale: multiplies the MLP's output (keeps initial rules gentle).
      odd_in: signals under whose joint sign flip ``dw`` flips sign:
        ``dw = (f(x) - f(x'))/2`` with ``x'`` the features with these signals negated. With
        ``[post, w]`` a rule treats ``w`` and ``-w`` alike (its weights' path from ``-w0``
        is the mirror image of the path from ``w0``), as a task whose solutions come in
        sign pairs (a principal component) suggests; terms such as a constant, ``pre^2`` or
        ``w^2`` are then impossible.
      l2: adds ``l2 * sum(W_in**2)`` (``W_in``: the first layer's weights, which scale the
        signals into the tanh units) to the meta-training loss. A prior for smooth rules:
        with small input weights the units stay near their linear range over the signals'
        range, so ``dw`` is close to a low-degree polynomial of the signals and distills
        into a short equation (``evoplastic distill``). 0: none.
    """
    features = tuple(features)
    for f in features:
        if f not in SIGNAL_NAMES:
            raise ValueError(
                f"rule.features: unknown signal {f!r} (signals: {', '.join(SIGNAL_NAMES)})"
            )
    odd_in = tuple(odd_in)
    for f in odd_in:
        if f not in features:
            raise ValueError(f"rule.odd_in: {f!r} is not one of the features {list(features)}")
    if not l2 >= 0:
        raise ValueError(f"rule.l2: must be >= 0, got {l2}")
    flip = jnp.array([-1.0 if f in odd_in else 1.0 for f in features])
    net = _SynapseMLP(hidden=tuple(hidden))

    def init(key: jax.Array) -> Genome:
        return net.init(key, jnp.zeros((1, len(features))))["params"]

    def update(genome: Genome, signals: Signals) -> jax.Array:
        local = signals.broadcast()
        shape = signals.w.shape
        x = jnp.stack([jnp.broadcast_to(local[f], shape) for f in features], axis=-1)
        if not odd_in:
            return out_scale * net.apply({"params": genome}, x)
        both = net.apply({"params": genome}, jnp.stack([x, x * flip.astype(x.dtype)]))
        return out_scale * 0.5 * (both[0] - both[1])

    def describe(genome: Genome) -> str:
        n = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(genome))
        odd = f", odd in {', '.join(odd_in)}" if odd_in else ""
        return f"MLP rule dw = f({', '.join(features)}), hidden {list(hidden)}, {n} parameters{odd}"

    def penalty(genome: Genome) -> jax.Array:
        return l2 * jnp.sum(genome["Dense_0"]["kernel"] ** 2)

    return Rule("mlp", init, update, describe, penalty=penalty if l2 > 0 else None)
