"""The plasticity-rule contract and the local signals a synapse may see.

A rule is a pair of pure functions over pytrees, in the style of optax's
``GradientTransformation``:

* ``init(key) -> genome``: the rule's evolvable parameters (a pytree of arrays);
* ``update(genome, signals) -> dw``: the weight change of every synapse of one layer.

``signals`` holds only what a synapse can know: its presynaptic rate ``pre``, its
postsynaptic rate ``post``, its own weight ``w``, a feedback (error) value delivered to
the post neuron and a scalar neuromodulator. A rule computes ``dw[i, j]`` from
``pre[j]``, ``post[i]``, ``w[i, j]``, ``feedback[i]`` and ``modulator`` only; the tests
check this locality with Jacobians.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Genome = Any  # a pytree of arrays

SIGNAL_NAMES = ("pre", "post", "w", "err", "mod")


@struct.dataclass
class Signals:
    """Local signals of one layer of synapses ``w[post, pre]``.

    Attributes:
      pre: presynaptic rates, shape ``[n_in]``.
      post: postsynaptic rates, shape ``[n_out]``.
      w: weights, shape ``[n_out, n_in]``.
      err: a feedback value delivered to each post neuron, shape ``[n_out]`` (zeros if none).
      mod: a scalar neuromodulator (zero if none).
    """

    pre: jax.Array
    post: jax.Array
    w: jax.Array
    err: jax.Array | None = None
    mod: jax.Array | None = None

    def broadcast(self) -> dict[str, jax.Array]:
        """Each signal as an array broadcastable to ``w``'s shape ``[n_out, n_in]``."""
        err = jnp.zeros_like(self.post) if self.err is None else self.err
        mod = jnp.zeros((), self.w.dtype) if self.mod is None else self.mod
        return {
            "pre": self.pre[None, :],
            "post": self.post[:, None],
            "w": self.w,
            "err": err[:, None],
            "mod": jnp.asarray(mod),
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
    """

    name: str
    init: Callable[[jax.Array], Genome]
    update: Callable[[Genome, Signals], jax.Array]
    describe: Callable[[Genome], str]
    terms: tuple[str, ...] = ()
    select: Callable[[Genome, int], Genome] = lambda genome, layer: genome
    weights: Callable[[Genome], tuple] | None = None

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
    )
