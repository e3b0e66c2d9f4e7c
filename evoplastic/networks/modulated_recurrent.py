"""A recurrent agent whose plasticity is gated by a neuromodulator it computes itself.

Miconi, Rawal, Clune & Stanley 2019 ("Backpropamine: training self-modifying neural
networks with differentiable neuromodulated plasticity", ICLR) give a recurrent network
plastic connections whose Hebbian trace changes only as much as a modulatory output of the
network allows. Here ``n = hidden`` neurons see the input ``x_t`` and their own previous
activities; the presynaptic vector of the plastic matrix is ``z_t = [x_t, h_{t-1}]`` (input
and recurrent connections are one matrix, as in Backpropamine):

``h_t = f((w + alpha * hebb_{t-1}) @ z_t + b)``,  ``logits_t = w_out @ h_t + b_out``,
``m_t = tanh(w_mod . [h_t, x_t] + b_mod)``  (``modulation: network``; else no modulator),
``hebb_t = clip(hebb_{t-1} + lr * rule(pre = z_t, post = h_t, w = hebb_{t-1}, mod = m_t))``.

With the rule ``mod*pre*post`` (a polynomial term) this is Backpropamine's simple
neuromodulation, ``hebb += m(t) * pre * post``: the trace changes only when the network
releases its modulator, which it computes from the reward in its input and its own
activity. ``w``, ``b``, ``alpha``, the read-out and the modulatory neuron are network parts
held in the genome (:meth:`genome_parts`) and evolved with the rule; within an episode only
``hebb`` changes, by the rule, from its own synapse's signals and the scalar modulator.

Options (``network`` in a config): ``hidden`` (its first width is ``n``), ``activation``,
``lr``, ``w_clip`` (clip the trace to ``[-w_clip, w_clip]``; 0: no clipping),
``modulation`` (``network`` or ``none``) and the ``plastic`` mapping:

* ``alpha``: ``"synapse"`` (one coefficient a synapse) or ``"shared"`` (one number);
* ``enabled``: ``false`` drops the plastic part (no ``alpha``, the trace is never used):
  the same network with evolved fixed weights, whose only memory is its activity
  (meta-RL by memory alone, Wang et al. 2016);
* ``eligibility``: ``true`` gives every synapse an eligibility trace ``E`` and makes the
  modulation retroactive (Backpropamine's "retroactive neuromodulation"): the rule's
  change, computed with the modulator at 1 (for ``mod*pre*post``: ``pre * post``), goes
  into ``E_t = (1 - eta) * E_{t-1} + eta * rule(pre, post, w, mod=1)``, and the modulator
  releases the trace, ``hebb_t = clip(hebb_{t-1} + lr * m_t * E_t)``. A reward can then
  strengthen the connections that were active several steps before it. Each synapse's
  ``E`` depends on its own signals only. Needs ``modulation: network``. With ``eta = 1``
  and the rule ``mod*pre*post`` it is the update above;
* ``eta``: the trace's step, a number in ``(0, 1]`` or ``evolved`` (the default: one
  evolved number, ``eta = sigmoid(eta_logit)``, starting at 0.5).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..rules.base import Genome, Rule, Signals
from .rate import ACTIVATIONS, check_rule_state

ALPHA = ("synapse", "shared")
MODULATION = ("none", "network")


@struct.dataclass
class ModulatedRecurrentState:
    """Activities ``h[n]``, Hebbian traces ``hebb[n, n_in + n]``, step counter, rule state
    and (``eligibility``) the eligibility traces ``elig[n, n_in + n]`` (else ``()``)."""

    h: jax.Array
    hebb: jax.Array
    t: jax.Array
    rule_state: Any = ()
    elig: Any = ()


@dataclasses.dataclass(frozen=True)
class ModulatedRecurrentNetwork:
    """A recurrent agent with modulated plastic connections (see the module docstring).

    Attributes:
      n_in, n_out: input size and number of outputs (action logits).
      hidden: number of recurrent neurons.
      activation: their nonlinearity.
      lr: the step applied to the rule's change of the trace.
      w_clip: clip the trace to ``[-w_clip, w_clip]`` (0: no clipping).
      modulation: ``network`` (an evolved modulatory neuron) or ``none``.
      alpha: ``synapse`` or ``shared`` plasticity coefficients.
      plastic: ``False``: no plastic part (the non-plastic recurrent baseline).
      eligibility: retroactive modulation through a per-synapse eligibility trace.
      eta: that trace's step in ``(0, 1]``, or ``"evolved"``.
    """

    n_in: int
    n_out: int
    hidden: int = 16
    activation: str = "tanh"
    lr: float = 1.0
    w_clip: float = 1.0
    modulation: str = "network"
    alpha: str = "synapse"
    plastic: bool = True
    eligibility: bool = False
    eta: float | str = "evolved"

    def __post_init__(self):
        if self.hidden < 1:
            raise ValueError(f"network.hidden: needs at least one neuron, got {self.hidden}")
        if self.alpha not in ALPHA:
            raise ValueError(
                f"network.plastic.alpha: unknown {self.alpha!r} (one of {', '.join(ALPHA)})"
            )
        if self.modulation not in MODULATION:
            raise ValueError(
                f"network.modulation: unknown {self.modulation!r} (one of {', '.join(MODULATION)})"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"network.activation: unknown activation {self.activation!r}")
        if self.w_clip < 0:
            raise ValueError(f"network.w_clip: must be >= 0, got {self.w_clip}")
        if self.eligibility:
            if not self.plastic or self.modulation != "network":
                raise ValueError(
                    "network.plastic.eligibility: needs a plastic network with modulation: network"
                )
            if self.eta != "evolved" and (
                isinstance(self.eta, bool)
                or not isinstance(self.eta, (int, float))
                or not 0 < self.eta <= 1
            ):
                raise ValueError(
                    f"network.plastic.eta: a number in (0, 1] or 'evolved', got {self.eta!r}"
                )

    @classmethod
    def from_options(cls, options: dict | None, n_in: int, n_out: int):
        """The network from the config's ``network`` options (see the module docstring)."""
        opts = dict(options or {})
        plastic = dict(opts.get("plastic") or {})
        own = {"alpha", "enabled", "eligibility", "eta"}
        unknown = sorted(set(plastic) - own)
        if unknown:
            raise ValueError(
                f"network.plastic.{unknown[0]}: unknown option (options: {', '.join(sorted(own))})"
            )
        enabled = plastic.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError(f"network.plastic.enabled: must be true or false, got {enabled!r}")
        eligibility = plastic.get("eligibility", False)
        if not isinstance(eligibility, bool):
            raise ValueError(
                f"network.plastic.eligibility: must be true or false, got {eligibility!r}"
            )
        hidden = opts.get("hidden", (cls.hidden,))
        hidden = hidden[0] if isinstance(hidden, (tuple, list)) and hidden else hidden
        shared = {k: opts[k] for k in ("activation", "lr", "w_clip", "modulation") if k in opts}
        return cls(n_in=n_in, n_out=n_out, hidden=int(hidden), plastic=enabled, **shared, **plastic)

    @property
    def n_pre(self) -> int:
        """Presynaptic inputs of the plastic matrix: the input and the recurrent activities."""
        return self.n_in + self.hidden

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """The shape of the one plastic matrix (what per-layer rules are sized by)."""
        return ((self.hidden, self.n_pre),)

    def genome_parts(self) -> dict:
        """The evolved network parts: fixed weights and biases, read-out, plasticity
        coefficients (when plastic) and the modulatory neuron (``modulation: network``).
        Weights (the modulator's too) start at ``N(0, 1/fan_in)``, biases and ``alpha`` at
        zero: plasticity then has a first-order effect on the search from the start."""
        n, m = self.hidden, self.n_pre

        def normal(shape, fan_in):
            return lambda key: jax.random.normal(key, shape) / jnp.sqrt(fan_in)

        parts = {
            "w": normal((n, m), m),
            "b": lambda key: jnp.zeros(n),
            "w_out": normal((self.n_out, n), n),
            "b_out": lambda key: jnp.zeros(self.n_out),
        }
        if self.plastic:
            shape = (n, m) if self.alpha == "synapse" else ()
            parts["alpha"] = lambda key: jnp.zeros(shape)
        if self.modulation == "network":
            parts["w_mod"] = normal((n + self.n_in,), n + self.n_in)
            parts["b_mod"] = lambda key: jnp.zeros(())
        if self.eligibility and self.eta == "evolved":
            parts["eta_logit"] = lambda key: jnp.zeros(())
        return parts

    def num_weights(self) -> int:
        """Numbers in the evolved network parts (for equal-size comparisons)."""
        parts = self.genome_parts()
        key = jax.random.PRNGKey(0)
        return int(sum(jnp.size(f(key)) for f in parts.values()))

    def init(self, rule: Rule | None = None) -> ModulatedRecurrentState:
        """Activities and traces at zero (and ``rule``'s initial state)."""
        shape = (self.hidden, self.n_pre)
        return ModulatedRecurrentState(
            h=jnp.zeros(self.hidden),
            hebb=jnp.zeros(shape),
            t=jnp.zeros((), jnp.int32),
            rule_state=() if rule is None else rule.init_state(shape),
            elig=jnp.zeros(shape) if self.eligibility else (),
        )

    def _parts(self, rule: Rule, genome: Genome) -> dict:
        parts = rule.parts(genome) if rule.parts is not None else {}
        n, m = self.hidden, self.n_pre
        zeros = {
            "w": jnp.zeros((n, m)),
            "b": jnp.zeros(n),
            "w_out": jnp.zeros((self.n_out, n)),
            "b_out": jnp.zeros(self.n_out),
            "alpha": jnp.ones(()) if self.plastic else jnp.zeros(()),
            "eta_logit": jnp.zeros(()),
        }
        return zeros | dict(parts)

    def step(
        self, state: ModulatedRecurrentState, x: jax.Array, rule: Rule, genome: Genome
    ) -> tuple[ModulatedRecurrentState, jax.Array, jax.Array]:
        """One step on input ``x``: ``(state, logits, modulator)``; the trace changes by the
        rule from each synapse's own signals and the modulator (zero without one)."""
        check_rule_state(rule, state.rule_state, (self.hidden, self.n_pre))
        p = self._parts(rule, genome)
        z = jnp.concatenate([x, state.h])
        if self.plastic:
            h = ACTIVATIONS[self.activation]((p["w"] + p["alpha"] * state.hebb) @ z + p["b"])
        else:
            h = ACTIVATIONS[self.activation](p["w"] @ z + p["b"])
        logits = p["w_out"] @ h + p["b_out"]
        if self.modulation == "network" and "w_mod" in p:
            mod = jnp.tanh(p["w_mod"] @ jnp.concatenate([h, x]) + p["b_mod"])
        else:
            mod = None
        if not self.plastic:
            new = state.replace(h=h, t=state.t + 1)
            return new, logits, jnp.zeros(()) if mod is None else mod
        if self.eligibility:
            one = jnp.ones((), state.hebb.dtype)
            sig = Signals(pre=z, post=h, w=state.hebb, mod=one, state=state.rule_state)
            dw, rule_state = rule.apply(rule.select(genome, 0), sig)
            eta = jax.nn.sigmoid(p["eta_logit"]) if self.eta == "evolved" else self.eta
            elig = (1.0 - eta) * state.elig + eta * dw
            hebb = state.hebb + self.lr * mod * elig
        else:
            sig = Signals(pre=z, post=h, w=state.hebb, mod=mod, state=state.rule_state)
            dw, rule_state = rule.apply(rule.select(genome, 0), sig)
            hebb = state.hebb + self.lr * dw
            elig = state.elig
        if self.w_clip > 0:
            hebb = jnp.clip(hebb, -self.w_clip, self.w_clip)
        new = ModulatedRecurrentState(
            h=h, hebb=hebb, t=state.t + 1, rule_state=rule_state, elig=elig
        )
        return new, logits, jnp.zeros(()) if mod is None else mod
