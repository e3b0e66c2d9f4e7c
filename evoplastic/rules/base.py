"""The plasticity-rule contract and the local signals a synapse may see.

A rule is a pair of pure functions over pytrees, in the style of optax's
``GradientTransformation``:

* ``init(key) -> genome``: the rule's evolvable parameters (a pytree of arrays);
* ``update(genome, signals) -> dw``: the weight change of every synapse of one layer.

``signals`` holds only what a synapse can know: its presynaptic rate ``pre``, its
postsynaptic rate ``post``, its own weight ``w``, a feedback (error) value delivered to
the post neuron, a scalar neuromodulator, the pre/post exponential traces (spiking
networks) and the rule's own state for the layer. A rule computes ``dw[i, j]`` from
``pre[j]``, ``post[i]``, ``w[i, j]``, ``err[i]``, ``mod``, ``pre_trace[j]``,
``post_trace[i]`` and its state at ``i`` (or ``[i, j]``) only; the tests check this
locality with Jacobians.

Stateful rules (BCM's sliding threshold) declare ``init_state(shape) -> state`` and
``next_state(genome, signals) -> state``; the network carries the state of every layer
and hands it back as ``signals.state``. Each state leaf is shaped ``[n_out]`` (one value a
post neuron), ``[n_out, n_in]`` (one a synapse) or ``[n_out, n_in, k]`` (a vector a
synapse, as the ``stateful`` rule's), so it stays local.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Genome = Any  # a pytree of arrays

SIGNAL_NAMES = ("pre", "post", "w", "err", "mod", "pre_trace", "post_trace")


@struct.dataclass
class Signals:
    """Local signals of one layer of synapses ``w[post, pre]``.

    Attributes:
      pre: presynaptic rates, shape ``[n_in]``.
      post: postsynaptic rates, shape ``[n_out]``.
      w: weights, shape ``[n_out, n_in]``.
      err: a feedback value delivered to each post neuron, shape ``[n_out]`` (zeros if none).
      mod: a scalar neuromodulator (zero if none).
      pre_trace, post_trace: exponential traces of pre/post activity, shapes ``[n_in]`` and
        ``[n_out]`` (spiking networks; zeros if none).
      state: the rule's own state for this layer (see :attr:`Rule.init_state`).
    """

    pre: jax.Array
    post: jax.Array
    w: jax.Array
    err: jax.Array | None = None
    mod: jax.Array | None = None
    pre_trace: jax.Array | None = None
    post_trace: jax.Array | None = None
    state: Any = ()

    def broadcast(self) -> dict[str, jax.Array]:
        """Each signal as an array broadcastable to ``w``'s shape ``[n_out, n_in]``."""
        err = jnp.zeros_like(self.post) if self.err is None else self.err
        mod = jnp.zeros((), self.w.dtype) if self.mod is None else self.mod
        pre_tr = jnp.zeros_like(self.pre) if self.pre_trace is None else self.pre_trace
        post_tr = jnp.zeros_like(self.post) if self.post_trace is None else self.post_trace
        return {
            "pre": self.pre[None, :],
            "post": self.post[:, None],
            "w": self.w,
            "err": err[:, None],
            "mod": jnp.asarray(mod),
            "pre_trace": pre_tr[None, :],
            "post_trace": post_tr[:, None],
        }


@dataclasses.dataclass(frozen=True)
class Rule:
    """A plasticity rule: ``init(key) -> genome`` and ``update(genome, signals) -> dw``.

    Attributes:
      name: registry name of the rule family.
      init: returns an initial genome (the mean of the outer search).
      update: the weight change for every synapse of a layer.
      describe: a readable form of a genome (an equation for polynomial rules).
      terms: for rules that are weighted sums of local terms, the term library.
      select: the part of the genome that layer ``l`` of a network uses; the default
        shares one genome across layers, per-layer rules return ``genome[l]``.
      weights: for rules that fix the weights instead of changing them (the static
        baseline), the network weights a genome encodes; ``None`` otherwise.
      plastic: ``False`` for a rule that never changes the weights (the static baseline):
        networks then skip its update and keep the weights out of the inner loop's
        state (constants of the loop, not carried and rewritten at every step).
      init_state: ``init_state((n_out, n_in)) -> state``, the rule's state for a layer of
        that shape before the first step (``()``: a stateless rule).
      next_state: ``next_state(genome, signals) -> state``, the state after a step; it
        reads the current state from ``signals.state``.
      parts: for genomes that also hold parts of the network (learned feedback weights,
        a synthetic-error predictor, a modulatory neuron; see :func:`with_parts`), those
        parts by name; ``None`` otherwise.
      penalty: ``penalty(genome) -> scalar`` added to the meta-training loss (a prior on
        the rule, e.g. the MLP rule's ``l2``); ``None``: none. Held-out evaluation never
        includes it.
    """

    name: str
    init: Callable[[jax.Array], Genome]
    update: Callable[[Genome, Signals], jax.Array]
    describe: Callable[[Genome], str]
    terms: tuple[str, ...] = ()
    select: Callable[[Genome, int], Genome] = lambda genome, layer: genome
    weights: Callable[[Genome], tuple] | None = None
    init_state: Callable[[tuple[int, int]], Any] = lambda shape: ()
    next_state: Callable[[Genome, Signals], Any] = lambda genome, signals: signals.state
    parts: Callable[[Genome], dict] | None = None
    plastic: bool = True
    penalty: Callable[[Genome], jax.Array] | None = None

    def apply(self, genome: Genome, signals: Signals) -> tuple[jax.Array, Any]:
        """``(dw, next state)`` of one layer: what a network calls at every step."""
        return self.update(genome, signals), self.next_state(genome, signals)

    def num_params(self) -> int:
        """Number of evolvable numbers in this rule's genome."""
        leaves = jax.tree.leaves(self.init(jax.random.PRNGKey(0)))
        return int(sum(leaf.size for leaf in leaves))


def with_learned_init(rule: Rule, shapes: tuple[tuple[int, int], ...], scale: float = 1.0) -> Rule:
    """The same rule with the network's initial weights added to the genome.

    The genome becomes ``{"rule": <rule genome>, "w0": (W_0, W_1, ...)}``: the outer loop
    then meta-learns where plasticity starts from as well as the rule (as Lindsey &
    Litwin-Kumar 2020 and MAML do). Weights still change only through the rule.
    """

    def init(key: jax.Array) -> Genome:
        k_rule, k_w = jax.random.split(key)
        w0 = tuple(
            scale * jax.random.normal(jax.random.fold_in(k_w, i), s) / jnp.sqrt(s[1])
            for i, s in enumerate(shapes)
        )
        return {"rule": rule.init(k_rule), "w0": w0}

    return dataclasses.replace(
        rule,
        init=init,
        update=lambda g, signals: rule.update(g, signals),
        describe=lambda g: rule.describe(g["rule"]) + "\n(with meta-learned initial weights)",
        select=lambda g, layer: rule.select(g["rule"], layer),
        weights=lambda g: tuple(g["w0"]),
        terms=(),
        parts=None if rule.parts is None else (lambda g: rule.parts(g["rule"])),
        penalty=None if rule.penalty is None else (lambda g: rule.penalty(g["rule"])),
    )


def with_parts(rule: Rule, parts: dict[str, Callable[[jax.Array], Genome]]) -> Rule:
    """The same rule with parts of the network added to the genome.

    The genome becomes ``{"rule": <rule genome>, name: part, ...}`` where each part is
    drawn by ``parts[name](key)``: for example learned feedback weights (Lindsey &
    Litwin-Kumar 2020), a synthetic-error predictor (Jaderberg et al. 2016) or a
    modulatory neuron (Miconi et al. 2019). The network reads them with ``rule.parts``;
    the outer loop evolves them with the rule. Synapses still see only local signals.
    """
    names = tuple(parts)

    def init(key: jax.Array) -> Genome:
        out = {"rule": rule.init(jax.random.fold_in(key, 0))}
        for i, name in enumerate(names):
            out[name] = parts[name](jax.random.fold_in(key, i + 1))
        return out

    return dataclasses.replace(
        rule,
        init=init,
        update=lambda g, signals: rule.update(g, signals),
        next_state=lambda g, signals: rule.next_state(g, signals),
        describe=lambda g: rule.describe(g["rule"]) + f"\n(with evolved {', '.join(names)})",
        select=lambda g, layer: rule.select(g["rule"], layer),
        weights=None if rule.weights is None else (lambda g: rule.weights(g["rule"])),
        terms=(),
        parts=lambda g: {name: g[name] for name in names},
        penalty=None if rule.penalty is None else (lambda g: rule.penalty(g["rule"])),
    )
