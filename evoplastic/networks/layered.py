"""A multi-layer rate network whose every layer changes only through a plasticity rule.

``a_0 = x``, ``a_{l+1} = f_l(W_l a_l)``; after each forward pass, every layer applies
``W_l <- W_l + lr_t * rule.update(rule.select(genome, l), signals_l)`` where ``signals_l``
holds only what synapse ``W_l[i, j]`` can know: ``a_l[j]``, ``a_{l+1}[i]``, ``W_l[i, j]``,
the feedback value delivered to post neuron ``i`` and a scalar neuromodulator.

Feedback (an error vector ``e`` at the output, when the task has one) reaches hidden
layers through a pathway chosen by ``feedback``:

* ``"none"``: hidden layers receive zero;
* ``"random"``: fixed random matrices ``B_l`` (feedback alignment; Lillicrap et al. 2016),
  so no synapse needs the transpose of another layer's weights (no weight transport).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from ..rules.base import Genome, Rule, Signals
from .rate import ACTIVATIONS

FEEDBACK = ("none", "random")


@struct.dataclass
class LayeredState:
    """Weights ``ws[l]: [n_{l+1}, n_l]``, fixed feedback matrices and the step counter."""

    ws: tuple
    feedback: tuple
    t: jax.Array


@dataclasses.dataclass(frozen=True)
class LayeredNetwork:
    """Plastic layers of sizes ``sizes = (n_in, n_hidden..., n_out)``.

    Attributes:
      sizes: layer widths, input first.
      activation: hidden-layer nonlinearity.
      output_activation: output nonlinearity.
      lr: global plasticity step (rules such as ABCD also carry their own ``eta``).
      lr_decay: ``lr_t = lr / (1 + lr_decay * t)``.
      w_init_std: initial weights ``~ N(0, w_init_std^2 / n_in)``.
      w_clip: clip weights to ``[-w_clip, w_clip]`` after each update (0: no clipping).
      feedback: the error pathway to hidden layers (see module docstring).
    """

    sizes: tuple[int, ...]
    activation: str = "tanh"
    output_activation: str = "tanh"
    lr: float = 1.0
    lr_decay: float = 0.0
    w_init_std: float = 1.0
    w_clip: float = 0.0
    feedback: str = "none"

    @classmethod
    def from_options(cls, options: dict | None, n_in: int, n_out: int) -> LayeredNetwork:
        """A network for a task with ``n_in`` inputs and ``n_out`` outputs, from the
        config's ``network`` options (``hidden`` widths and any field of this class;
        options meant for other network kinds are ignored)."""
        opts = dict(options or {})
        hidden = tuple(opts.pop("hidden", (32,)))
        keep = {f.name for f in dataclasses.fields(cls)} - {"sizes"}
        return cls(sizes=(n_in, *hidden, n_out), **{k: v for k, v in opts.items() if k in keep})

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """The weight shapes ``(n_out, n_in)`` of the plastic layers."""
        return tuple((o, i) for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    def init(self, key: jax.Array) -> LayeredState:
        """Random initial weights and, with random feedback, fixed feedback matrices."""
        ws, fb = [], []
        for layer, (n_out, n_in) in enumerate(self.shapes):
            k_w, k_b = jax.random.split(jax.random.fold_in(key, layer))
            ws.append(self.w_init_std * jax.random.normal(k_w, (n_out, n_in)) / jnp.sqrt(n_in))
            if self.feedback == "random" and layer < len(self.shapes) - 1:
                fb.append(jax.random.normal(k_b, (n_out, self.sizes[-1])) / jnp.sqrt(n_out))
        return LayeredState(ws=tuple(ws), feedback=tuple(fb), t=jnp.zeros((), jnp.int32))

    def forward(self, ws, x: jax.Array) -> list[jax.Array]:
        """The activities of every layer for input ``x``, input first."""
        acts = [x]
        for layer, w in enumerate(ws):
            last = layer == len(ws) - 1
            f = ACTIVATIONS[self.output_activation if last else self.activation]
            acts.append(f(w @ acts[-1]))
        return acts

    def hidden_errors(self, state: LayeredState, error: jax.Array | None) -> list:
        """The feedback value each layer's post neurons receive (see the module docstring)."""
        n = len(self.shapes)
        if error is None:
            return [None] * n
        errs = [jnp.zeros(self.sizes[layer + 1]) for layer in range(n - 1)] + [error]
        if self.feedback == "random":
            errs[:-1] = [b @ error for b in state.feedback]
        return errs

    def plasticity(
        self,
        state: LayeredState,
        acts: list[jax.Array],
        rule: Rule,
        genome: Genome,
        error: jax.Array | None = None,
        modulator: jax.Array | None = None,
    ) -> LayeredState:
        """Apply the rule to every layer, given the activities of a forward pass."""
        lr_t = self.lr / (1.0 + self.lr_decay * state.t)
        errs = self.hidden_errors(state, error)
        new = []
        for layer, w in enumerate(state.ws):
            sig = Signals(
                pre=acts[layer], post=acts[layer + 1], w=w, err=errs[layer], mod=modulator
            )
            w = w + lr_t * rule.update(rule.select(genome, layer), sig)
            if self.w_clip:
                w = jnp.clip(w, -self.w_clip, self.w_clip)
            new.append(w)
        return state.replace(ws=tuple(new), t=state.t + 1)

    def step(self, state, x, rule, genome, error=None, modulator=None):
        """Forward ``x``, then the plasticity of every layer; returns ``(state, output)``."""
        acts = self.forward(state.ws, x)
        return self.plasticity(state, acts, rule, genome, error, modulator), acts[-1]
