"""A fully recurrent network with fixed and plastic weights (differentiable plasticity).

Miconi, Clune & Stanley 2018 ("Differentiable plasticity: training plastic neural
networks with backpropagation", ICML) give every synapse a fixed weight ``w[i, j]``, a
plastic coefficient ``alpha[i, j]`` and a Hebbian trace ``hebb[i, j]`` that starts at zero
in every episode. ``n`` neurons receive one external input each and are connected all to
all:

``y_t = f((w + alpha * hebb_{t-1}) @ y_{t-1} + x_t)``,
``hebb_t = hebb_{t-1} + lr * rule(pre = y_{t-1}, post = y_t, w = hebb_{t-1})``.

``w`` and ``alpha`` are network parts held in the genome (:meth:`genome_parts`, added with
:func:`evoplastic.rules.with_parts`) and meta-learned with the rule; within an episode
only ``hebb`` changes, and only by the rule, from the signals of its own synapse. With the
:func:`~evoplastic.rules.hebb_trace` rule (``hebb <- (1 - eta) hebb + eta * post * pre``)
and ``lr = 1`` this is the paper's network; any other rule family (``polynomial``,
``abcd``, ``bcm``, ...) can drive the trace instead.

Options (``network.plastic`` in a config):

* ``alpha``: ``"synapse"`` (one coefficient a synapse: the paper's), ``"shared"`` (one
  number for the network) or ``"none"`` (``alpha = 1``, not learned);
* ``learn_w``: meta-learn the fixed weights ``w`` (else ``w = 0``).

A rule without genome parts (the fixed ``hebb`` or ``oja`` baselines) runs with ``w = 0``
and ``alpha = 1``: a Hopfield network whose couplings are learned online. A rule that
fixes weights (``static``) sets ``w`` and keeps ``hebb = 0``: the non-plastic recurrent
network.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..rules.base import Genome, Rule, Signals
from .rate import ACTIVATIONS, check_rule_state

ALPHA = ("synapse", "shared", "none")


@struct.dataclass
class PlasticRecurrentState:
    """Activities ``y[n]``, Hebbian traces ``hebb[n, n]``, step counter, rule state."""

    y: jax.Array
    hebb: jax.Array
    t: jax.Array
    rule_state: Any = ()


@dataclasses.dataclass(frozen=True)
class PlasticRecurrentNetwork:
    """``n`` all-to-all neurons with effective weights ``w + alpha * hebb``.

    Attributes:
      n: number of neurons (and of external inputs).
      activation: the neurons' nonlinearity (``tanh`` in the paper).
      lr: the step applied to the rule's change of the trace (1: the rule's own rate).
      w_clip: clip the trace to ``[-w_clip, w_clip]`` after each step (0: no clipping).
      alpha: ``"synapse"``, ``"shared"`` or ``"none"`` (see the module docstring).
      learn_w: meta-learn the fixed weights ``w``.
    """

    n: int
    activation: str = "tanh"
    lr: float = 1.0
    w_clip: float = 0.0
    alpha: str = "synapse"
    learn_w: bool = True

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"network: needs at least one neuron, got {self.n}")
        if self.alpha not in ALPHA:
            raise ValueError(
                f"network.plastic.alpha: unknown {self.alpha!r} (one of {', '.join(ALPHA)})"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"network.activation: unknown activation {self.activation!r}")
        if self.w_clip < 0:
            raise ValueError(f"network.w_clip: must be >= 0, got {self.w_clip}")

    OPTIONS = ("activation", "lr", "w_clip")  # shared network options this class reads

    @classmethod
    def from_options(cls, options: dict | None, n: int) -> PlasticRecurrentNetwork:
        """The network for ``n`` inputs from the config's ``network`` options: the shared
        ``activation``, ``lr`` and ``w_clip``, and this class's ``plastic`` mapping."""
        opts = dict(options or {})
        plastic = dict(opts.get("plastic") or {})
        own = {"alpha", "learn_w"}
        unknown = sorted(set(plastic) - own)
        if unknown:
            raise ValueError(
                f"network.plastic.{unknown[0]}: unknown option (options: {', '.join(sorted(own))})"
            )
        shared = {k: opts[k] for k in cls.OPTIONS if k in opts}
        return cls(n=n, **shared, **plastic)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """The shape of the one plastic matrix (what per-layer rules are sized by)."""
        return ((self.n, self.n),)

    def genome_parts(self) -> dict:
        """The network parts meta-learned with the rule: ``w`` and ``alpha`` (zeros; the
        outer loop's initial noise breaks the symmetry)."""
        parts = {}
        if self.learn_w:
            parts["w"] = lambda key: jnp.zeros((self.n, self.n))
        if self.alpha == "synapse":
            parts["alpha"] = lambda key: jnp.zeros((self.n, self.n))
        elif self.alpha == "shared":
            parts["alpha"] = lambda key: jnp.zeros(())
        return parts

    def init(self, rule: Rule | None = None) -> PlasticRecurrentState:
        """Activities and traces at zero (and ``rule``'s initial state)."""
        shape = (self.n, self.n)
        return PlasticRecurrentState(
            y=jnp.zeros(self.n),
            hebb=jnp.zeros(shape),
            t=jnp.zeros((), jnp.int32),
            rule_state=() if rule is None else rule.init_state(shape),
        )

    def fixed(self, rule: Rule, genome: Genome) -> tuple[jax.Array, jax.Array]:
        """``(w, alpha)`` of a genome: its parts, or ``w = 0`` and ``alpha = 1`` without."""
        parts = rule.parts(genome) if rule.parts is not None else {}
        w = parts.get("w", jnp.zeros((self.n, self.n)))
        if rule.weights is not None:
            w = rule.weights(genome)[0]
        return w, parts.get("alpha", jnp.ones(()))

    def step(
        self, state: PlasticRecurrentState, x: jax.Array, rule: Rule, genome: Genome
    ) -> PlasticRecurrentState:
        """One step: respond to the previous activities and input ``x``, then change every
        trace by the rule from its own synapse's signals."""
        check_rule_state(rule, state.rule_state, (self.n, self.n))
        w, alpha = self.fixed(rule, genome)
        y = ACTIVATIONS[self.activation]((w + alpha * state.hebb) @ state.y + x)
        sig = Signals(pre=state.y, post=y, w=state.hebb, state=state.rule_state)
        dw, rule_state = rule.apply(rule.select(genome, 0), sig)
        hebb = state.hebb + self.lr * dw
        if self.w_clip > 0:
            hebb = jnp.clip(hebb, -self.w_clip, self.w_clip)
        return PlasticRecurrentState(y=y, hebb=hebb, t=state.t + 1, rule_state=rule_state)

    def run(
        self, state: PlasticRecurrentState, xs: jax.Array, rule: Rule, genome: Genome
    ) -> tuple[PlasticRecurrentState, jax.Array]:
        """Step over ``xs[T, n]``; the final state and the activities ``[T, n]``."""

        def body(s, x):
            s = self.step(s, x, rule, genome)
            return s, s.y

        return jax.lax.scan(body, state, xs)
