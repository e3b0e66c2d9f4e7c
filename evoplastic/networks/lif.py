"""A leaky integrate-and-fire layer whose synapses see pre/post traces (STDP-style inputs).

Each time step ``k`` of the simulation (``dt = 1``):

``v <- v * exp(-1 / tau_m) + W s_pre + I``; a neuron spikes (``s_post = 1``) when
``v >= v_threshold`` and its potential is reset to ``v_reset``. Every neuron keeps an
exponential trace of its activity, ``x <- x * exp(-1 / tau_trace) + s`` (the current
spike counts in the trace). Then every synapse changes by the rule with

``pre = s_pre[j]``, ``post = s_post[i]``, ``pre_trace = x_pre[j]``, ``post_trace = x_post[i]``,
``w = W[i, j]`` (and the neuromodulator ``mod``),

all local. The pair-based STDP rule (Song, Miller & Abbott 2000) is the polynomial
``a_plus * pre_trace*post - a_minus * post_trace*pre``: a post spike potentiates by the
trace of earlier pre spikes (pre before post), a pre spike depresses by the trace of
earlier post spikes (post before pre).

A task step presents one input vector ``x``: presynaptic activity ``s_pre = input_gain *
x`` (graded input neurons, or spikes when ``x`` is 0/1) for ``substeps`` simulation steps.
The network has :class:`RateNetwork`'s interface (``init``, ``init_from``, ``step``,
``run``, ``state.w``), so it plugs into the ``pca`` task with ``network.kind: lif``; its
output is the spike rate over the ``substeps`` steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..rules.base import Genome, Rule, Signals
from .rate import check_rule_state


@struct.dataclass
class LIFState:
    """Weights, membrane potentials, pre/post traces, step counter and the rule's state."""

    w: jax.Array  # [n_out, n_in]
    v: jax.Array  # [n_out]
    pre_trace: jax.Array  # [n_in]
    post_trace: jax.Array  # [n_out]
    t: jax.Array
    rule_state: Any = ()


@dataclasses.dataclass(frozen=True)
class LIFNetwork:
    """One plastic layer of leaky integrate-and-fire neurons.

    Attributes:
      n_in, n_out: layer sizes (static).
      lr, lr_decay: plasticity step ``lr / (1 + lr_decay * t)``, ``t`` counting task steps.
      w_init_norm: norm of each neuron's initial weight vector.
      tau_m: membrane time constant (simulation steps).
      v_threshold, v_reset: spike threshold and reset potential.
      tau_trace: time constant of the pre/post traces.
      substeps: simulation steps per task step (per input vector).
      input_gain: presynaptic activity per unit of input.
    """

    n_in: int
    n_out: int = 1
    lr: float = 0.01
    lr_decay: float = 0.0
    w_init_norm: float = 0.5
    tau_m: float = 10.0
    v_threshold: float = 1.0
    v_reset: float = 0.0
    tau_trace: float = 20.0
    substeps: int = 10
    input_gain: float = 1.0

    def __post_init__(self):
        for name in ("tau_m", "tau_trace", "v_threshold", "substeps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"network.lif.{name}: must be > 0, got {getattr(self, name)}")
        if self.v_reset >= self.v_threshold:
            raise ValueError("network.lif.v_reset: must be below v_threshold")

    def init(self, key: jax.Array, rule: Rule | None = None) -> LIFState:
        """Random initial weights, membrane potentials at rest, traces at zero and ``rule``'s
        state."""
        return self.init_from(jax.random.normal(key, (self.n_out, self.n_in)), rule)

    def init_from(self, direction: jax.Array, rule: Rule | None = None) -> LIFState:
        """Weights along ``direction``, rows of norm ``w_init_norm``; neurons at rest."""
        w = self.w_init_norm * direction / jnp.linalg.norm(direction, axis=1, keepdims=True)
        return LIFState(
            w=w,
            v=jnp.full((self.n_out,), self.v_reset, w.dtype),
            pre_trace=jnp.zeros((self.n_in,), w.dtype),
            post_trace=jnp.zeros((self.n_out,), w.dtype),
            t=jnp.zeros((), jnp.int32),
            rule_state=() if rule is None else rule.init_state((self.n_out, self.n_in)),
        )

    def substep(
        self,
        state: LIFState,
        pre: jax.Array,
        rule: Rule,
        genome: Genome,
        current: jax.Array | float = 0.0,
        modulator: jax.Array | None = None,
        lr: jax.Array | float | None = None,
    ) -> tuple[LIFState, jax.Array]:
        """One simulation step with presynaptic activity ``pre`` and an external current.

        Returns the new state and the post spikes (0/1).
        """
        check_rule_state(rule, state.rule_state, (self.n_out, self.n_in))
        v = state.v * math.exp(-1.0 / self.tau_m) + state.w @ pre + current
        spikes = (v >= self.v_threshold).astype(v.dtype)
        v = jnp.where(spikes > 0, self.v_reset, v)
        decay = math.exp(-1.0 / self.tau_trace)
        pre_trace = state.pre_trace * decay + pre
        post_trace = state.post_trace * decay + spikes
        sig = Signals(
            pre=pre,
            post=spikes,
            w=state.w,
            mod=modulator,
            pre_trace=pre_trace,
            post_trace=post_trace,
            state=state.rule_state,
        )
        dw, rule_state = rule.apply(genome, sig)
        lr = self.lr if lr is None else lr
        new = state.replace(
            w=state.w + lr * dw,
            v=v,
            pre_trace=pre_trace,
            post_trace=post_trace,
            rule_state=rule_state,
        )
        return new, spikes

    def step(self, state, x, rule, genome, feedback=None, modulator=None):
        """Present ``x`` for ``substeps`` steps; returns the state and the spike rate."""
        del feedback  # a single layer: no pathway to deliver an error through
        lr_t = self.lr / (1.0 + self.lr_decay * state.t)
        pre = self.input_gain * x

        def body(s, _):
            return self.substep(s, pre, rule, genome, modulator=modulator, lr=lr_t)

        state, spikes = jax.lax.scan(body, state, None, length=self.substeps)
        return state.replace(t=state.t + 1), spikes.mean(axis=0)

    def run(self, state, xs, rule, genome):
        """Step over ``xs[T, n_in]``; returns the final state and the rates ``[T, n_out]``."""

        def body(s, x):
            return self.step(s, x, rule, genome)

        return jax.lax.scan(body, state, xs)
