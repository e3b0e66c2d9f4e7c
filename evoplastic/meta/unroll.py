"""Unrolling an inner loop a slice at a time, with bounded-memory reverse mode.

An inner loop is a state carried through ``step(state, t)`` for ``t = 0 .. T - 1``.
Differentiating it with ``jax.grad`` through ``lax.scan`` stores every intermediate of
every step for the backward pass, so memory grows linearly with ``T`` (about 10x from
1,000 to 10,000 steps). :func:`unroll` offers three policies (``remat``):

* ``"none"``: a plain ``lax.scan``; reverse mode keeps all intermediates (fastest).
* ``"step"``: ``jax.checkpoint`` on the scan body. Reverse mode keeps only the carry of
  every step and recomputes the rest of the step: still linear in ``T``, with a smaller
  constant.
* ``"nested"``: the steps are split into ``L`` nested levels of ``b`` iterations each
  (``b ** L >= T``), and every level is a ``jax.checkpoint``-ed scan. Reverse mode then
  keeps about ``L * b`` carries at a time and recomputes each level once, so memory grows
  like ``L * T ** (1 / L)`` and compute like ``(L + 1) * T``. This is the recursive
  checkpointing of Griewank (1992, Optim. Methods Softw. 1:35-54) and Chen et al. (2016,
  arXiv:1604.06174) with a fixed branching, built from nested ``jax.checkpoint``/``scan``.
  Steps beyond ``T`` in the last block are masked (the state passes through unchanged).

Every policy computes the same function, and the same gradient up to floating-point
reassociation; ``tests/test_unroll.py`` checks both.

Example::

    state = unroll(lambda s, t: s * 0.99 + xs[t], state0, start=0, length=1000, remat="nested")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

REMAT = ("none", "step", "nested")

# the largest branching factor `nested` uses before it adds a level
MAX_BRANCHING = 16


def nested_shape(length: int, max_branching: int = MAX_BRANCHING) -> tuple[int, int]:
    """``(levels, branching)`` with ``branching ** levels >= length`` and little padding."""
    if length <= 1:
        return 1, max(length, 1)
    levels = max(1, math.ceil(math.log(length) / math.log(max_branching) - 1e-9))
    branching = math.ceil(length ** (1.0 / levels) - 1e-9)
    while branching**levels < length:
        branching += 1
    return levels, branching


def unroll(
    step: Callable[[Any, jax.Array], Any],
    state: Any,
    start,
    length: int,
    remat: str = "none",
) -> Any:
    """``state = step(state, t)`` for ``t = start, ..., start + length - 1``.

    Args:
      step: one inner step; ``t`` is a traced int32 scalar.
      state: the carried pytree (network weights, counters, ...).
      start: the first step index (may be traced, e.g. the offset of a truncation).
      length: the number of steps (static).
      remat: ``"none"``, ``"step"`` or ``"nested"`` (see the module docstring).

    Returns:
      The state after the last step.
    """
    if remat not in REMAT:
        raise ValueError(f"remat must be one of {REMAT}, got {remat!r}")
    start = jnp.asarray(start, jnp.int32)
    if remat in ("none", "step"):

        def body(s, t):
            return step(s, t), None

        if remat == "step":
            body = jax.checkpoint(body)
        state, _ = jax.lax.scan(body, state, start + jnp.arange(length, dtype=jnp.int32))
        return state

    levels, b = nested_shape(length)
    padded = b**levels != length

    def leaf_step(s, offset):
        new = step(s, start + offset)
        if not padded:
            return new
        keep = offset < length
        return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, s)

    def level(k):
        """Run ``b ** k`` steps from ``offset``; each level is checkpointed."""
        if k == 0:
            return leaf_step
        inner, span = level(k - 1), b ** (k - 1)

        @jax.checkpoint
        def run(s, offset):
            def body(c, i):
                return inner(c, offset + i * span), None

            c, _ = jax.lax.scan(body, s, jnp.arange(b, dtype=jnp.int32))
            return c

        return run

    return level(levels)(state, jnp.zeros((), jnp.int32))


def unroll_instance(family, rule, genome, task, state, start, length: int, remat: str = "none"):
    """Run steps ``start .. start + length - 1`` of one instance; ``(loss, metrics, state)``.

    ``family`` is a :class:`~evoplastic.tasks.SteppableTaskFamily`; the loss is its
    ``score`` of the state after the last step.
    """
    state = unroll(
        lambda s, t: family.inner_step(rule, genome, task, s, t), state, start, length, remat
    )
    loss, metrics = family.score(task, state)
    return loss, metrics, state
