"""Task family ``patterns``: memorize patterns seen in an episode, then complete one.

Miconi, Clune & Stanley 2018 ("Differentiable plasticity", ICML, section 4.1): each
episode draws ``n_patterns`` random ``+-1`` patterns of ``n_bits`` bits. The network sees
them ``presentations`` times, in a fresh random order each time, each for
``present_steps`` steps followed by ``pause_steps`` steps of zero input; then one of them,
with half of its bits (a random subset of ``n_bits // 2``) set to zero, for
``test_steps`` steps. Input ``i`` drives neuron ``i`` with ``input_scale`` times the bit.

The loss is scored on the network's final activities, on the zeroed bits only (the bits
it must complete): by default (``loss: squared``) their mean squared error against the
test pattern; with ``loss: hinge`` the mean of ``max(0, margin - y * target)``, a convex
surrogate of the count of wrong signs that asks each completed bit for the right sign by
``margin`` and no more (it does not reward saturated outputs). The metric
``bit_accuracy`` is the fraction of those bits whose sign is right. Which patterns an
episode holds is known only once it starts, so no fixed weights can solve the task: the
network must store the patterns within the episode, with plasticity (or, for an LSTM, in
its activities).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from .. import networks
from ..networks.plastic_recurrent import PlasticRecurrentNetwork, PlasticRecurrentState
from .base import split_key

LOSSES = ("squared", "hinge")


@struct.dataclass
class PatternsTask:
    """One episode: the input stream, the test pattern and the mask of its zeroed bits."""

    xs: jax.Array  # [steps, n_bits], +-1 patterns, zeros in pauses and zeroed bits
    target: jax.Array  # [n_bits], the complete test pattern
    mask: jax.Array  # [n_bits], 1 on the bits zeroed in the test input


@dataclasses.dataclass(frozen=True)
class PatternsFamily:
    """Pattern memorization and completion (see the module docstring).

    Attributes:
      network: the plastic recurrent network (``n = n_bits``).
      n_bits: bits a pattern (N).
      n_patterns: patterns an episode (P).
      presentations: times each pattern is shown.
      present_steps, pause_steps: steps of each presentation and of the pause after it.
      test_steps: steps the degraded pattern is shown for.
      input_scale: the input drive of a +-1 bit (20 in the paper: inputs clamp neurons).
      loss: ``squared`` (squared error of the completed bits) or ``hinge``
        (``max(0, margin - y * target)`` on each completed bit).
      margin: the hinge loss's margin, in (0, 1] (tanh outputs); unused by ``squared``.
    """

    network: PlasticRecurrentNetwork
    n_bits: int = 100
    n_patterns: int = 5
    presentations: int = 2
    present_steps: int = 6
    pause_steps: int = 4
    test_steps: int = 6
    input_scale: float = 20.0
    loss: str = "squared"
    margin: float = 0.1

    metric_names = ("bit_accuracy",)

    def __post_init__(self):
        for name in ("n_bits", "n_patterns", "presentations", "present_steps", "test_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name}: must be >= 1, got {getattr(self, name)}")
        if self.n_bits < 2:
            raise ValueError(f"task.n_bits: must be >= 2 (half are zeroed), got {self.n_bits}")
        if self.pause_steps < 0:
            raise ValueError(f"task.pause_steps: must be >= 0, got {self.pause_steps}")
        if not self.input_scale > 0:
            raise ValueError(f"task.input_scale: must be > 0, got {self.input_scale}")
        if self.loss not in LOSSES:
            raise ValueError(f"task.loss: must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if isinstance(self.margin, bool) or not 0 < self.margin <= 1:
            raise ValueError(f"task.margin: must be in (0, 1], got {self.margin!r}")

    @property
    def steps(self) -> int:
        """Steps an episode: the presentations, their pauses and the test."""
        block = self.present_steps + self.pause_steps
        return self.presentations * self.n_patterns * block + self.test_steps

    def sample(self, key: jax.Array, split: str) -> PatternsTask:
        """One episode of ``split``: patterns, presentation order, test pattern and mask."""
        k_pat, k_order, k_test, k_mask = jax.random.split(split_key(key, split), 4)
        p, n = self.n_patterns, self.n_bits
        patterns = jnp.where(jax.random.bernoulli(k_pat, 0.5, (p, n)), 1.0, -1.0)
        orders = jax.vmap(lambda k: jax.random.permutation(k, p))(
            jax.random.split(k_order, self.presentations)
        ).reshape(-1)  # [presentations * p]
        block = jnp.concatenate(
            [jnp.ones(self.present_steps), jnp.zeros(self.pause_steps)]
        )  # 1 while a pattern is shown
        shown = patterns[orders]  # [presentations * p, n]
        study = (shown[:, None, :] * block[None, :, None]).reshape(-1, n)
        target = patterns[jax.random.randint(k_test, (), 0, p)]
        zeroed = jax.random.permutation(k_mask, n) < n // 2  # exactly half the bits
        test = jnp.where(zeroed, 0.0, target)
        xs = jnp.concatenate([study, jnp.broadcast_to(test, (self.test_steps, n))])
        return PatternsTask(xs=xs, target=target, mask=zeroed.astype(jnp.float32))

    def inner_loop(self, rule, genome, task: PatternsTask, key: jax.Array | None = None):
        """Run the episode; ``(loss, {bit_accuracy})`` of the final activities."""
        state = self.init_inner(task, key, rule=rule)
        state, _ = self.network.run(state, self.input_scale * task.xs, rule, genome)
        return self.score(task, state)

    # The stepwise inner-loop API (meta-gradients, truncated unrolls): ``inner_loop``
    # equals ``init_inner``, ``inner_step`` for t = 0 .. steps - 1, and ``score``.

    def init_inner(self, task: PatternsTask, key=None, rule=None) -> PlasticRecurrentState:
        """Activities and traces at zero before step 0 (with ``rule``'s initial state)."""
        del task, key
        return self.network.init(rule)

    def inner_step(self, rule, genome, task: PatternsTask, state, t) -> PlasticRecurrentState:
        """Step ``t`` (may be traced): respond to input ``xs[t]`` and update the traces."""
        return self.network.step(state, self.input_scale * task.xs[t], rule, genome)

    def score(self, task: PatternsTask, state: PlasticRecurrentState):
        """``(loss, metrics)`` of the final activities on the zeroed bits."""
        return completion_score(state.y, task, self.loss, self.margin)

    @classmethod
    def create(cls, network: dict | None = None, **params) -> PatternsFamily:
        """Make the family; ``network`` holds the network options (``kind:
        plastic_recurrent``, the task's own, and its ``plastic`` mapping)."""
        n = params.get("n_bits", cls.n_bits)
        net = networks.from_options(network, n, n, default="plastic_recurrent")
        return cls(network=net, **params)


def completion_score(
    y: jax.Array, task: PatternsTask, loss: str = "squared", margin: float = 0.1
) -> tuple[jax.Array, dict]:
    """``(loss, {bit_accuracy})`` of final activities ``y`` over the zeroed bits: the
    squared error (``loss="squared"``) or the hinge ``max(0, margin - y * target)``
    (``loss="hinge"``), and the fraction of right signs (shared by the LSTM baseline)."""
    m = task.mask
    count = jnp.maximum(jnp.sum(m), 1.0)
    if loss == "squared":
        per_bit = (y - task.target) ** 2
    elif loss == "hinge":
        per_bit = jax.nn.relu(margin - y * task.target)
    else:
        raise ValueError(f"task.loss: must be one of {', '.join(LOSSES)}, got {loss!r}")
    loss = jnp.sum(m * per_bit) / count
    right = jnp.sum(m * (jnp.sign(y) == task.target)) / count
    return loss, {"bit_accuracy": right}
