"""A single-layer rate network whose weights change only through a plasticity rule.

At every step the network reads one input ``x``, computes ``y = f(W x)`` and applies the
rule's weight change ``W <- W + lr_t * dw`` with ``lr_t = lr / (1 + lr_decay * t)``
(a decaying step, as stochastic-approximation results such as Oja's convergence proof
assume). Nothing but the current signals and the weights is stored: the network is
online. ``run`` steps over a whole input stream with ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..rules.base import Genome, Rule, Signals


def check_rule_state(rule: Rule, rule_state, shape: tuple[int, int]) -> None:
    """Raise a clear error when a stateful rule meets a network started without its state."""
    want = jax.tree.structure(jax.eval_shape(lambda: rule.init_state(shape)))
    if jax.tree.structure(rule_state) != want:
        raise ValueError(
            f"rule {rule.name!r} keeps a state: start the network with init(key, rule)"
        )


ACTIVATIONS = {"linear": lambda v: v, "tanh": jnp.tanh, "relu": jax.nn.relu}


@struct.dataclass
class RateState:
    """Weights ``w[n_out, n_in]``, the step counter ``t`` and the rule's state."""

    w: jax.Array
    t: jax.Array
    rule_state: Any = ()


@dataclasses.dataclass(frozen=True)
class RateNetwork:
    """A plastic layer ``y = activation(w @ x)``.

    Attributes:
      n_in, n_out: layer sizes (static).
      activation: ``"linear"``, ``"tanh"`` or ``"relu"``.
      lr: the plasticity step size.
      lr_decay: step-size decay, ``lr_t = lr / (1 + lr_decay * t)``.
      w_init_norm: the norm of each output neuron's random initial weight vector.
    """

    n_in: int
    n_out: int = 1
    activation: str = "linear"
    lr: float = 0.1
    lr_decay: float = 0.02
    w_init_norm: float = 0.5

    def init(self, key: jax.Array, rule: Rule | None = None) -> RateState:
        """Random weights, each row of norm ``w_init_norm`` (and ``rule``'s initial state)."""
        return self.init_from(jax.random.normal(key, (self.n_out, self.n_in)), rule)

    def init_from(self, direction: jax.Array, rule: Rule | None = None) -> RateState:
        """Weights along ``direction[n_out, n_in]``, each row rescaled to ``w_init_norm``."""
        w = direction / jnp.linalg.norm(direction, axis=1, keepdims=True)
        rule_state = () if rule is None else rule.init_state((self.n_out, self.n_in))
        return RateState(w=self.w_init_norm * w, t=jnp.zeros((), jnp.int32), rule_state=rule_state)

    def forward(self, w: jax.Array, x: jax.Array) -> jax.Array:
        """The response ``activation(w @ x)``."""
        return ACTIVATIONS[self.activation](w @ x)

    def step(
        self,
        state: RateState,
        x: jax.Array,
        rule: Rule,
        genome: Genome,
        feedback: jax.Array | None = None,
        modulator: jax.Array | None = None,
    ) -> tuple[RateState, jax.Array]:
        """One online step: respond to ``x``, then change the weights by the rule."""
        y = self.forward(state.w, x)
        check_rule_state(rule, state.rule_state, (self.n_out, self.n_in))
        sig = Signals(pre=x, post=y, w=state.w, err=feedback, mod=modulator, state=state.rule_state)
        dw, rule_state = rule.apply(genome, sig)
        lr_t = self.lr / (1.0 + self.lr_decay * state.t)
        return RateState(w=state.w + lr_t * dw, t=state.t + 1, rule_state=rule_state), y

    def run(
        self, state: RateState, xs: jax.Array, rule: Rule, genome: Genome
    ) -> tuple[RateState, jax.Array]:
        """Step over ``xs[T, n_in]``; returns the final state and the outputs ``[T, n_out]``."""

        def body(s, x):
            return self.step(s, x, rule, genome)

        return jax.lax.scan(body, state, xs)
