"""Stateful neural rules: every synapse carries a hidden state that one shared recurrent
cell updates from its local signals, and ``dw`` is read out from that state.

At every step, synapse ``(i, j)`` runs

    h[i, j] <- cell_theta(h[i, j], (pre[j], post[i], w[i, j], err[i], mod))
    dw[i, j] = out_scale * readout_theta(h[i, j])

with the same parameters ``theta`` (a GRU cell and a linear read-out, flax) for every
synapse: the genome is ``theta``, the state ``h`` is the rule's state for the layer, one
vector of ``state_size`` numbers per synapse (``[n_out, n_in, state_size]``). The rule can
thus keep a memory of its synapse's past and learn its own time constants (eligibility
traces, running averages, a sliding threshold), while staying local: ``dw[i, j]`` and
``h[i, j]`` depend on the signals of synapse ``(i, j)`` and on ``h[i, j]`` alone. This is
the family of "variable shared meta learning" (VSML; Kirsch & Schmidhuber 2021, "Meta
Learning Backpropagation and Improving It", NeurIPS), where tiny LSTMs shared by all
synapses replace both the weights' update rule and their memory.

A synapse whose state is not given (``signals.state == ()``, e.g. when a heat map asks the
rule for its ``dw`` on a grid of signals) is treated as seen for the first time: ``h = 0``.

Example::

    rule = stateful(features=("pre", "post", "w"), state_size=4)
    genome = rule.init(jax.random.PRNGKey(0))
    h = rule.init_state((3, 5))                            # [3, 5, 4] zeros
    dw, h = rule.apply(genome, Signals(pre=x, post=y, w=w, state=h))
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .base import SIGNAL_NAMES, Genome, Rule, Signals


class _SynapseCell(nn.Module):
    """One synapse's step: a GRU cell over the local signals, then a linear read-out."""

    state_size: int

    @nn.compact
    def __call__(self, h: jax.Array, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, _ = nn.GRUCell(features=self.state_size, name="cell")(h, features)
        return h, nn.Dense(1, name="readout")(h)[..., 0]


def stateful(
    features: tuple[str, ...] = ("pre", "post", "w", "err"),
    state_size: int = 4,
    out_scale: float = 0.1,
) -> Rule:
    """A rule whose synapses each carry a hidden state, updated by one shared GRU cell.

    Args:
      features: which local signals the cell reads (from ``pre, post, w, err, mod,
        pre_trace, post_trace``).
      state_size: the number of hidden units per synapse.
      out_scale: multiplies the read-out (keeps initial rules gentle).

    Returns:
      A :class:`Rule` with ``init_state`` and ``next_state``; its genome is the flax
      parameters ``{"cell": ..., "readout": ...}``.
    """
    features = tuple(features)
    for f in features:
        if f not in SIGNAL_NAMES:
            raise ValueError(
                f"rule.features: unknown signal {f!r} (signals: {', '.join(SIGNAL_NAMES)})"
            )
    if not features:
        raise ValueError("rule.features: needs at least one signal")
    if int(state_size) < 1:
        raise ValueError(f"rule.state_size: must be >= 1, got {state_size}")
    state_size = int(state_size)
    net = _SynapseCell(state_size=state_size)

    def init(key: jax.Array) -> Genome:
        h = jnp.zeros((1, state_size))
        return net.init(key, h, jnp.zeros((1, len(features))))["params"]

    def init_state(shape: tuple[int, int]) -> jax.Array:
        return jnp.zeros((*shape, state_size))

    def step(genome: Genome, signals: Signals) -> tuple[jax.Array, jax.Array]:
        local = signals.broadcast()
        shape = signals.w.shape
        x = jnp.stack([jnp.broadcast_to(local[f], shape) for f in features], axis=-1)
        h = signals.state
        if isinstance(h, tuple) and not h:  # no state given: a synapse seen for the first time
            h = jnp.zeros((*shape, state_size), x.dtype)
        h, out = net.apply({"params": genome}, h, x)
        return h, out_scale * out

    def update(genome: Genome, signals: Signals) -> jax.Array:
        return step(genome, signals)[1]

    def next_state(genome: Genome, signals: Signals) -> jax.Array:
        return step(genome, signals)[0]

    def describe(genome: Genome) -> str:
        n = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(genome))
        return (
            f"stateful rule: a GRU cell of {state_size} units per synapse reads"
            f" ({', '.join(features)}), dw = linear read-out of its state; {n} parameters"
        )

    return Rule("stateful", init, update, describe, init_state=init_state, next_state=next_state)
