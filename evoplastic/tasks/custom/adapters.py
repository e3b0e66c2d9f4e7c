"""A plain fitness function as a task family (:class:`FitnessTask`), and a family whose
failed ``checkify`` checks become non-finite losses (:class:`CheckedFamily`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from ...rules.base import Rule
from ..base import split_key
from ..evaluation import task_fitness
from .errors import FitnessError


def is_task_family(obj) -> bool:
    """Whether ``obj`` follows the task-family protocol (``sample`` and ``inner_loop``)."""
    return callable(getattr(obj, "sample", None)) and callable(getattr(obj, "inner_loop", None))


def genome_rule(template) -> Rule:
    """The "rule" of a plain fitness function: the genome itself, starting at ``template``.

    Its ``update`` is never called (a fitness function has no plastic network);
    ``describe`` prints the genome.
    """
    template = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), template)

    def update(genome, signals):
        raise FitnessError("a fitness function's genome is not a plasticity rule")

    def describe(genome) -> str:
        leaves = jax.tree.leaves(genome)
        flat = np.concatenate([np.ravel(np.asarray(x)) for x in leaves]) if leaves else []
        return "genome = [" + ", ".join(f"{x:.4g}" for x in flat) + "]"

    return Rule(name="genome", init=lambda key: template, update=update, describe=describe)


def failed(err) -> jax.Array:
    """Whether a ``checkify`` error value holds a failed check (traceable)."""
    preds = list(getattr(err, "_pred", {}).values())
    if not preds:
        return jnp.zeros((), bool)
    return jnp.any(jnp.stack([jnp.any(p) for p in preds]))


def nan_on_failed_check(fn: Callable) -> Callable:
    """``fn`` (returning a loss, or ``(loss, metrics)``) with failed checks as a NaN loss."""
    checked = checkify.checkify(fn, errors=checkify.user_checks)

    def run(*args):
        err, out = checked(*args)
        bad = failed(err)
        if isinstance(out, tuple):
            loss, metrics = out
            return jnp.where(bad, jnp.nan, loss), metrics
        return jnp.where(bad, jnp.nan, out)

    return run


def _as_loss(value) -> jax.Array:
    return jnp.asarray(value, jnp.result_type(float))


@dataclasses.dataclass(frozen=True, eq=False)
class FitnessTask:
    """A plain ``fitness(genome, key) -> loss`` as a task family.

    An instance of the family is a key: ``sample(key, split)`` folds the split in (so
    held-out keys never meet training keys), and ``inner_loop`` calls the fitness with it.
    A training evaluation averages ``fitness(genome, key_j)`` over ``evaluation.instances``
    keys. The family is also steppable with one step (the meta-gradient's unroll): the
    "inner state" is the loss.

    Attributes:
      fitness: the user's function.
      genome_template: the initial genome (the search mean of generation 0).
      name: how configs and run directories name it.

    Example::

        task = FitnessTask(lambda g, k: jnp.sum((g - 1.0) ** 2), jnp.zeros(3))
    """

    fitness: Callable
    genome_template: Any
    name: str = "fitness"

    metric_names = ()
    steps = 1
    uses_rules = False  # no plasticity rule: fixed-rule baselines do not apply
    checks = True  # evaluate under checkify, report failed checks with the member index

    @property
    def rule(self) -> Rule:
        """The genome as the rule (:func:`genome_rule`)."""
        return genome_rule(self.genome_template)

    def sample(self, key: jax.Array, split: str) -> jax.Array:
        """An instance: the key with the split folded in."""
        return split_key(key, split)

    def inner_loop(self, rule, genome, task, key=None):
        """``(fitness(genome, task), {})``; a failed check gives a NaN loss."""
        return _as_loss(nan_on_failed_check(self.fitness)(genome, task)), {}

    def train_fitness(self, rule, instances: int) -> Callable:
        """``fitness(genome, key)``: the mean over ``instances`` training keys, unchecked
        (the generation step evaluates it under ``checkify``)."""

        def fitness(genome, key):
            def one(j):
                return _as_loss(
                    self.fitness(genome, self.sample(jax.random.fold_in(key, j), "train"))
                )

            return jnp.mean(jax.vmap(one)(jnp.arange(instances)))

        return fitness

    def init_inner(self, task, key=None) -> jax.Array:
        """The one-step inner state before the step: a zero loss."""
        return jnp.zeros((), jnp.result_type(float))

    def inner_step(self, rule, genome, task, state, t) -> jax.Array:
        """The only step: the loss (a failed check gives NaN)."""
        return _as_loss(nan_on_failed_check(self.fitness)(genome, task))

    def score(self, task, state):
        """``(loss, {})`` of the inner state."""
        return state, {}


@dataclasses.dataclass(frozen=True, eq=False)
class CheckedFamily:
    """A user's task family whose ``checkify`` checks are reported per member.

    Training evaluations run the family's inner loop unchanged under ``checkify``; held-out
    evaluations and the stepwise API (meta-gradients) count a failed check as a NaN loss.
    Every other attribute is the family's own.
    """

    family: Any

    checks = True

    def __getattr__(self, name):
        if name.startswith("__") or "family" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["family"], name)

    def sample(self, key, split):
        """The family's instance."""
        return self.family.sample(key, split)

    def inner_loop(self, rule, genome, task, key):
        """The family's inner loop; a failed check gives a NaN loss."""
        return nan_on_failed_check(self.family.inner_loop)(rule, genome, task, key)

    def train_fitness(self, rule, instances: int) -> Callable:
        """The family's training fitness, unchecked (evaluated under ``checkify``)."""
        return task_fitness(self.family, rule, instances)

    def score(self, task, state):
        """The family's score; a failed check gives a NaN loss."""
        return nan_on_failed_check(self.family.score)(task, state)


def wrap(obj, genome=None, name: str = "fitness"):
    """A task family for ``obj``: a task family, a :class:`FitnessTask` or a function.

    Raises:
      FitnessError: if ``obj`` is neither, or a function comes without a genome.
    """
    if isinstance(obj, FitnessTask | CheckedFamily):
        return obj
    if is_task_family(obj):
        return CheckedFamily(obj)
    if callable(obj):
        if genome is None:
            raise FitnessError(
                f"{name}: a fitness function needs its initial genome (task.genome: a list of"
                " numbers or a length, or return evoplastic.FitnessTask(fitness, genome))"
            )
        return FitnessTask(obj, genome, name)
    raise FitnessError(
        f"{name}: got a {type(obj).__name__}; expected a fitness function"
        " fitness(genome, key) -> loss or a task family (sample and inner_loop)"
    )
