"""The task-family contract and the meta-train / meta-test key streams.

A task family samples task instances and runs the inner loop on one of them:

* ``sample(key, split) -> task``: one instance (a pytree of arrays);
* ``inner_loop(rule, genome, task, key) -> (loss, metrics)``: a fresh network learns the
  instance with the rule alone; ``loss`` is a scalar to minimize and ``metrics`` a dict of
  scalars (for example PC1 alignment).

``split`` is ``"train"`` or ``"test"``. Instances of the two splits come from disjoint
key streams (:func:`instance_key`), and meta-test instances use a fixed base seed, so
every run, backend and outer optimizer is judged on the same held-out instances.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

SPLITS = ("train", "test")
TEST_SEED = 2_718_281  # base seed of the held-out (meta-test) instances


def split_key(key: jax.Array, split: str) -> jax.Array:
    """Fold the split into a key, so that train and test instances never share a key."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return jax.random.fold_in(key, 1 + SPLITS.index(split))


def test_instance_keys(n: int) -> jax.Array:
    """Keys of the first ``n`` held-out instances (the same for every run)."""
    base = jax.random.PRNGKey(TEST_SEED)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jax.numpy.arange(n))


class TaskFamily(Protocol):
    """What the trainer needs from a task family."""

    metric_names: tuple[str, ...]

    def sample(self, key: jax.Array, split: str) -> Any:
        """One task instance of ``split`` (``train`` or ``test``) from ``key``."""

    def inner_loop(self, rule, genome, task, key: jax.Array) -> tuple[jax.Array, dict]:
        """A fresh network learns ``task`` with ``rule(genome)``; returns ``(loss, metrics)``."""


class SteppableTaskFamily(TaskFamily, Protocol):
    """A family whose inner loop can be run a slice at a time (truncated unrolls).

    ``inner_loop(rule, genome, task, key)`` must equal ``init_inner``, then ``inner_step``
    for ``t = 0 .. steps - 1``, then ``score``. The gradient meta-optimizer and the
    truncated evolution strategies (:mod:`evoplastic.meta`) need this API; the plain
    evolution strategies need only ``inner_loop``.
    """

    steps: int

    def init_inner(self, task, key: jax.Array | None = None) -> Any:
        """The inner-loop state before step 0."""

    def inner_step(self, rule, genome, task, state, t) -> Any:
        """Inner step ``t`` (may be traced): the state after it."""

    def score(self, task, state) -> tuple[jax.Array, dict]:
        """``(loss, metrics)`` of an inner-loop state."""
