"""The truncated step shared by the meta-gradient and the truncated evolution strategies.

An inner loop of ``family.steps`` steps (``train_steps`` where meta-training instances
draw random horizons) is cut into ``segments`` truncations of
``length`` steps (``truncation``; 0 runs the whole loop as one segment). Generation ``g``
runs segment ``g % segments`` of an *episode* that began at generation
``first = g - g % segments``; every generation of an episode meets the same task
instances, drawn from the evaluation key of its first generation
(``generation_keys(run_key, first)[1]``): instance ``j`` from ``fold_in(key, j)``. At the
first segment every instance starts from ``family.init_inner``; later segments continue
the network states carried in the meta-state.

:class:`~evoplastic.meta.gradient.GradientMeta` (full and truncated backprop) and
:class:`~evoplastic.meta.truncated.TruncatedES` (PES, Noise-Reuse ES) use these same
functions, as learned_optimization's gradient estimators share one truncated step
(``outer_trainers/truncated_step.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from .base import generation_keys
from .unroll import unroll_instance


def train_steps(family) -> int:
    """Inner steps of a meta-training instance (``family.train_steps`` where the family
    draws random horizons, else ``family.steps``)."""
    return getattr(family, "train_steps", family.steps)


def episode(generation, segments: int):
    """``(first generation of the episode, index of the truncation within it)``."""
    seg = generation % segments
    return generation - seg, seg


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Task instances and carried inner states of a (possibly truncated) inner loop.

    Attributes:
      family: a steppable task family (``sample``, ``init_inner``, ``inner_step``, ``score``).
      instances: task instances per episode (per member, for an ES).
      truncation: inner steps per generation, or 0 for whole unrolls.
      rule: the rule whose state the inner states carry (a stateful rule's), handed to
        ``family.init_inner`` where it takes one.
    """

    family: Any
    instances: int
    truncation: int = 0
    rule: Any = None

    def _init_inner(self, task):
        if self.rule is not None and "rule" in inspect.signature(self.family.init_inner).parameters:
            return self.family.init_inner(task, rule=self.rule)
        return self.family.init_inner(task)

    @property
    def length(self) -> int:
        """Inner steps run per generation."""
        return self.truncation or train_steps(self.family)

    @property
    def segments(self) -> int:
        """Truncations per inner loop (1 without truncation)."""
        return train_steps(self.family) // self.truncation if self.truncation else 1

    def position(self, run_key, generation) -> tuple[jax.Array, jax.Array]:
        """``(episode key, segment index)`` of a generation."""
        first, seg = episode(generation, self.segments)
        _, key, _ = generation_keys(run_key, first)
        return key, seg

    def tasks(self, key, indices):
        """The train instances with the given indices: ``sample(fold_in(key, j), "train")``."""
        return jax.vmap(lambda j: self.family.sample(jax.random.fold_in(key, j), "train"))(indices)

    def start(self, tasks, carried, seg):
        """The states a segment continues: fresh at segment 0, else ``carried``."""
        fresh = jax.vmap(self._init_inner)(tasks)
        return jax.tree.map(lambda f, c: jnp.where(seg == 0, f, c), fresh, carried)

    def empty(self, *lead: int):
        """Zero inner states ``[*lead, instances, ...]`` (the shape the meta-state carries)."""
        shapes = jax.eval_shape(
            lambda: jax.vmap(self._init_inner)(
                self.tasks(jax.random.PRNGKey(0), jnp.arange(self.instances))
            )
        )
        return jax.tree.map(lambda s: jnp.zeros((*lead, *s.shape), s.dtype), shapes)

    def run(self, rule, genome, tasks, inner, seg, remat: str = "none"):
        """``(losses[n], metrics, inner)``: segment ``seg`` of every instance."""
        length = self.length

        def one(task, s):
            return unroll_instance(self.family, rule, genome, task, s, seg * length, length, remat)

        return jax.vmap(one)(tasks, inner)


def take_rows(tree, indices):
    """Rows ``indices`` of every leaf (a gather; ``indices`` may repeat rows)."""
    return jax.tree.map(lambda x: jnp.take(x, indices, axis=0), tree)


class EpisodicLoop:
    """For outer loops that unroll ``family`` through :class:`Episodes` (the meta-gradient and
    the truncated ES): needs ``family``, ``instances``, ``truncation`` and ``rule`` fields."""

    @property
    def episodes(self) -> Episodes:
        """Task instances and carried states (the truncated step the loops share)."""
        return Episodes(self.family, self.instances, self.truncation, self.rule)

    @property
    def segments(self) -> int:
        """Truncated segments per inner loop (``steps / truncation``; 1 without truncation)."""
        return self.episodes.segments
