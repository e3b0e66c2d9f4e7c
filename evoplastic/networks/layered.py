"""A multi-layer rate network whose every layer changes only through a plasticity rule.

``a_0 = x``, ``a_{l+1} = f_l(W_l a_l)``; after each forward pass, every layer applies
``W_l <- W_l + lr_t * rule.update(rule.select(genome, l), signals_l)`` where ``signals_l``
holds only what synapse ``W_l[i, j]`` can know: ``a_l[j]``, ``a_{l+1}[i]``, ``W_l[i, j]``,
the feedback value delivered to post neuron ``i``, a scalar neuromodulator and the rule's
own state (e.g. BCM's threshold) of that neuron or synapse.

Feedback (an error vector ``e`` at the output, when the task has one) reaches a hidden
population ``a_l`` through a pathway chosen by ``feedback``:

* ``"none"``: hidden layers receive zero;
* ``"random"``: fixed random matrices ``B_l`` (feedback alignment; Lillicrap et al. 2016),
  ``err_l = B_l e``, so no synapse needs the transpose of another layer's weights (no
  weight transport);
* ``"learned"``: ``err_l = B_l e`` with ``B_l`` part of the genome, evolved by the outer
  loop with the rule (Lindsey & Litwin-Kumar 2020, "Learning to learn with feedback and
  local plasticity");
* ``"synthetic"``: a small linear predictor, part of the genome, computes the error from
  the layer's own activity, ``err_l = M_l a_l + b_l`` (synthetic gradients; Jaderberg et
  al. 2017, "Decoupled neural interfaces using synthetic gradients").

With ``modulation: "network"`` a modulatory neuron, whose weights are part of the genome,
computes the neuromodulator from the network's own activity and the output error,
``m = tanh(v . [a_1, ..., a_L, e] + b)``, and every synapse receives it as ``mod``: a rule
with ``mod`` terms is then gated by the network (Miconi et al. 2019, "Backpropamine").

With ``traces: true`` every population also keeps an exponential trace of its activity
over the *earlier* steps, ``x_trace <- trace_decay * x_trace + (1 - trace_decay) * a``
after each update (``trace_decay: 0``: the previous step's activity), and a synapse sees
``pre_trace[j]`` and ``post_trace[i]``. Terms such as ``post_trace*pre -
post_trace*pre_trace = post(t-1) * (pre(t) - pre(t-1))`` then relate what a neuron did
to how its input changed next: differential Hebbian learning (Kosko 1986; Porr &
Woergoetter 2006), with which a network in a closed loop can learn the consequences of
its own actions from its sensors alone.

The genome parts a pathway or the modulatory neuron needs come from
:meth:`LayeredNetwork.genome_parts` and are added to the rule's genome with
:func:`evoplastic.rules.with_parts`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..rules.base import Genome, Rule, Signals
from .rate import ACTIVATIONS, check_rule_state

FEEDBACK = ("none", "random", "learned", "synthetic")
MODULATION = ("none", "network")


@struct.dataclass
class LayeredState:
    """Weights ``ws[l]: [n_{l+1}, n_l]``, fixed feedback matrices, step counter, rule state
    and (with ``traces``) one activity trace per population."""

    ws: tuple
    feedback: tuple
    t: jax.Array
    rule_state: Any = ()
    traces: tuple = ()


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
      modulation: ``"none"`` or ``"network"`` (a modulatory neuron; see module docstring).
      traces: keep pre/post activity traces of earlier steps (see module docstring).
      trace_decay: the traces' decay per step, in ``[0, 1)``.
      excitatory: every plastic weight starts and stays ``>= 0`` (Dale's principle: an
        excitatory synapse can weaken to zero but not change sign).
    """

    sizes: tuple[int, ...]
    activation: str = "tanh"
    output_activation: str = "tanh"
    lr: float = 1.0
    lr_decay: float = 0.0
    w_init_std: float = 1.0
    w_clip: float = 0.0
    feedback: str = "none"
    modulation: str = "none"
    traces: bool = False
    trace_decay: float = 0.0
    excitatory: bool = False

    def __post_init__(self):
        if not 0.0 <= self.trace_decay < 1.0:
            raise ValueError(f"network.trace_decay: must be in [0, 1), got {self.trace_decay}")
        if self.feedback not in FEEDBACK:
            raise ValueError(f"network.feedback: unknown pathway {self.feedback!r}")
        if self.modulation not in MODULATION:
            raise ValueError(f"network.modulation: unknown kind {self.modulation!r}")

    @classmethod
    def from_options(cls, options: dict | None, n_in: int, n_out: int) -> LayeredNetwork:
        """A network for a task with ``n_in`` inputs and ``n_out`` outputs, from the
        config's ``network`` options (``hidden`` widths and any field of this class;
        options meant for other network kinds are ignored)."""
        opts = dict(options or {})
        hidden = tuple(opts.pop("hidden", (32,)))
        keep = {f.name for f in dataclasses.fields(cls)} - {"sizes"}
        return cls(sizes=(n_in, *hidden, n_out), **{k: v for k, v in opts.items() if k in keep})

    # -- wiring: which populations each weight matrix connects ---------------------------

    @property
    def wiring(self) -> tuple[tuple[int, int], ...]:
        """``(pre, post)`` population indices of each weight matrix (indices into ``acts``)."""
        return tuple((layer, layer + 1) for layer in range(len(self.sizes) - 1))

    @property
    def populations(self) -> tuple[int, ...]:
        """Sizes of the populations in ``acts`` (input first, output last)."""
        return tuple(self.sizes)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """The weight shapes ``(n_out, n_in)`` of the plastic matrices."""
        pops = self.populations
        return tuple((pops[post], pops[pre]) for pre, post in self.wiring)

    @property
    def hidden_populations(self) -> tuple[int, ...]:
        """Populations that receive feedback: post of some matrix, not the output."""
        posts = []
        for _, post in self.wiring:
            if post != len(self.populations) - 1 and post not in posts:
                posts.append(post)
        return tuple(posts)

    # -- state and genome parts ----------------------------------------------------------

    def init(self, key: jax.Array, rule: Rule | None = None, ws=None) -> LayeredState:
        """Random weights, fixed random feedback (``feedback: random``) and ``rule``'s state.

        ``ws`` (e.g. a genome's weights, ``rule.weights(genome)``) replaces the random
        weights, which are then not drawn; the feedback matrices are the same either way.
        """
        fb = []
        hidden = set(self.hidden_populations)
        drawn = ws is None
        ws = [] if drawn else list(ws)
        for layer, (n_out, n_in) in enumerate(self.shapes):
            k_w, k_b = jax.random.split(jax.random.fold_in(key, layer))
            if drawn:
                w = self.w_init_std * jax.random.normal(k_w, (n_out, n_in)) / jnp.sqrt(n_in)
                ws.append(jnp.abs(w) if self.excitatory else w)
            post = self.wiring[layer][1]
            if self.feedback == "random" and post in hidden and post not in self._fed(layer):
                fb.append(self._feedback_matrix(k_b, post))
        rule_state = () if rule is None else tuple(rule.init_state(s) for s in self.shapes)
        traces = tuple(jnp.zeros(n) for n in self.populations) if self.traces else ()
        return LayeredState(
            ws=tuple(ws),
            feedback=tuple(fb),
            t=jnp.zeros((), jnp.int32),
            rule_state=rule_state,
            traces=traces,
        )

    def initial_state(self, key: jax.Array, rule: Rule, genome: Genome) -> LayeredState:
        """The state an inner loop starts from: the genome's weights where the rule
        encodes them (``rule.weights``), else random ones drawn from ``key``."""
        ws = None if rule.weights is None else tuple(rule.weights(genome))
        return self.init(key, rule, ws)

    def fixed_weights(self, rule: Rule) -> bool:
        """Whether the weights never change in an inner loop: a rule that is not
        plastic, and no clipping or sign constraint that would move them after step 0."""
        return not rule.plastic and not self.w_clip and not self.excitatory

    def split_constants(self, state: LayeredState, rule: Rule) -> tuple[LayeredState, dict]:
        """``(carried, constants)``: the parts of ``state`` that an inner loop's step
        changes, and those it never does (the fixed feedback matrices; the weights of a
        rule that is not plastic). A ``lax.scan`` closes over the constants instead of
        carrying them, so it neither copies nor rewrites them at every step."""
        constants = {"feedback": state.feedback}
        if self.fixed_weights(rule):
            constants["ws"] = state.ws
        return state.replace(**{k: () for k in constants}), constants

    def join_constants(self, carried: LayeredState, constants: dict) -> LayeredState:
        """The whole state again (inverse of :meth:`split_constants`)."""
        return carried.replace(**constants)

    def _fed(self, layer: int) -> set:
        """Hidden populations already given a feedback matrix by an earlier weight matrix."""
        return {self.wiring[k][1] for k in range(layer)}

    def _feedback_matrix(self, key: jax.Array, population: int) -> jax.Array:
        n = self.populations[population]
        return jax.random.normal(key, (n, self.populations[-1])) / jnp.sqrt(n)

    def _feedback_matrices(self, key: jax.Array) -> tuple:
        return tuple(
            self._feedback_matrix(jax.random.fold_in(key, i), p)
            for i, p in enumerate(self.hidden_populations)
        )

    def genome_parts(self) -> dict:
        """The network parts that the outer loop evolves with the rule: ``{name: init(key)}``."""
        parts = {}
        pops = self.populations
        if self.feedback == "learned":
            parts["feedback"] = self._feedback_matrices
        if self.feedback == "synthetic":

            def synthetic(key):
                return tuple(
                    {"M": jnp.zeros((pops[p], pops[p])), "b": jnp.zeros(pops[p])}
                    for p in self.hidden_populations
                )

            parts["synthetic"] = synthetic
        if self.modulation == "network":
            n = sum(pops[1:]) + pops[-1]
            parts["modulator"] = lambda key: {"v": jnp.zeros(n), "b": jnp.zeros(())}
        return parts

    # -- dynamics ------------------------------------------------------------------------

    def forward(self, ws, x: jax.Array) -> list[jax.Array]:
        """The activities of every layer for input ``x``, input first."""
        acts = [x]
        for layer, w in enumerate(ws):
            last = layer == len(ws) - 1
            f = ACTIVATIONS[self.output_activation if last else self.activation]
            acts.append(f(w @ acts[-1]))
        return acts

    def population_errors(self, state, error, acts=None, parts=None) -> list:
        """The error delivered to each population (``None`` for the input and, without a
        task error, everywhere). Hidden populations get it through the feedback pathway."""
        n_pop = len(self.populations)
        if error is None:
            return [None] * n_pop
        errs: list = [None] * n_pop
        errs[-1] = error
        for i, p in enumerate(self.hidden_populations):
            if self.feedback == "random":
                errs[p] = state.feedback[i] @ error
            elif self.feedback == "learned":
                errs[p] = parts["feedback"][i] @ error
            elif self.feedback == "synthetic":
                pred = parts["synthetic"][i]
                errs[p] = pred["M"] @ acts[p] + pred["b"]
            else:
                errs[p] = jnp.zeros(self.populations[p])
        return errs

    def hidden_errors(self, state: LayeredState, error: jax.Array | None, acts=None, parts=None):
        """The error delivered to the post neurons of each weight matrix."""
        errs = self.population_errors(state, error, acts, parts)
        return [errs[post] for _, post in self.wiring]

    def modulator(self, acts, error, parts, task_modulator=None):
        """The neuromodulator every synapse receives (the task's, or the network's own)."""
        if self.modulation != "network":
            return task_modulator
        e = jnp.zeros(self.populations[-1]) if error is None else error
        u = jnp.concatenate([*acts[1:], e])
        m = parts["modulator"]
        return jnp.tanh(m["v"] @ u + m["b"])

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
        # without decay the step is a constant (the same float32 value), folded by XLA
        lr_t = self.lr if not self.lr_decay else self.lr / (1.0 + self.lr_decay * state.t)
        parts = rule.parts(genome) if rule.parts is not None else None
        needs_parts = self.feedback in ("learned", "synthetic") or self.modulation != "none"
        if parts is None and needs_parts:
            raise ValueError(
                f"network.feedback {self.feedback!r} / modulation {self.modulation!r}: the"
                " genome lacks the network's parts (wrap the rule with rules.with_parts)"
            )
        errs = self.hidden_errors(state, error, acts, parts)
        mod = self.modulator(acts, error, parts, modulator)
        rule_states = state.rule_state or tuple(() for _ in self.wiring)
        traces = state.traces or (None,) * len(self.populations)
        if self.fixed_weights(rule):  # no update to compute, the weights stay as they are
            new_rs = []
            for layer, w in enumerate(state.ws):
                check_rule_state(rule, rule_states[layer], w.shape)
                sig = Signals(
                    pre=acts[self.wiring[layer][0]], post=acts[self.wiring[layer][1]], w=w,
                    err=errs[layer], mod=mod, pre_trace=traces[self.wiring[layer][0]],
                    post_trace=traces[self.wiring[layer][1]], state=rule_states[layer],
                )  # fmt: skip
                new_rs.append(rule.next_state(rule.select(genome, layer), sig))
            return self._advance(state, acts, state.ws, tuple(new_rs))
        new, new_rs = [], []
        for layer, (w, (pre, post)) in enumerate(zip(state.ws, self.wiring, strict=True)):
            check_rule_state(rule, rule_states[layer], w.shape)
            sig = Signals(
                pre=acts[pre], post=acts[post], w=w, err=errs[layer], mod=mod,
                pre_trace=traces[pre], post_trace=traces[post], state=rule_states[layer],
            )  # fmt: skip
            dw, rs = rule.apply(rule.select(genome, layer), sig)
            w = w + lr_t * dw
            if self.w_clip:
                w = jnp.clip(w, -self.w_clip, self.w_clip)
            if self.excitatory:
                w = jnp.maximum(w, 0.0)
            new.append(w)
            new_rs.append(rs)
        return self._advance(state, acts, tuple(new), tuple(new_rs))

    def _advance(self, state, acts, ws, new_rs) -> LayeredState:
        """The state after a step: weights ``ws``, the rules' states, traces, ``t + 1``."""
        rule_state = new_rs if state.rule_state else state.rule_state
        if state.traces:
            d = self.trace_decay
            traces = tuple(d * x + (1.0 - d) * a for x, a in zip(state.traces, acts, strict=True))
        else:
            traces = state.traces
        return state.replace(ws=ws, t=state.t + 1, rule_state=rule_state, traces=traces)

    def step(self, state, x, rule, genome, error=None, modulator=None):
        """Forward ``x``, then the plasticity of every layer; returns ``(state, output)``."""
        acts = self.forward(state.ws, x)
        return self.plasticity(state, acts, rule, genome, error, modulator), acts[-1]
