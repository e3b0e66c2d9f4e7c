"""A rule evaluated on a task family: the fitness an outer loop optimizes, and held-out scores.

These functions know task families and rules only (the inner loop); every outer loop,
backend and analysis uses them.

* :func:`task_fitness` -- ``fitness(genome, key) -> mean loss`` over meta-train instances;
* :func:`make_genome_evaluator` / :func:`evaluate_genome` -- a genome's loss and metrics on
  held-out (meta-test) instances, the same ones for every run
  (:func:`~evoplastic.tasks.base.test_instance_keys`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .base import test_instance_keys

FitnessFn = Callable[[Any, jax.Array], jax.Array]


def task_fitness(family, rule, instances: int, loss_clip: float | None = None) -> FitnessFn:
    """``fitness(genome, key) -> mean loss`` over ``instances`` meta-train instances (plus
    the rule's ``penalty``, if it has one).

    With ``loss_clip``, each instance's loss is capped at it first (a non-finite loss
    counts as the cap): a robust mean over heavy-tailed losses.
    """

    def fitness(genome, key):
        return train_scores(family, rule, genome, key, instances, loss_clip)[0]

    return fitness


def train_scores(family, rule, genome, key, instances: int, loss_clip: float | None = None):
    """``(loss, metrics)``: the mean capped loss (plus the rule's ``penalty``) and the mean of
    each metric over meta-train instances ``sample(fold_in(key, j), "train")``, j <
    ``instances``; what :func:`task_fitness` ranks members by."""

    def one(j):
        k = jax.random.fold_in(key, j)
        loss, metrics = family.inner_loop(rule, genome, family.sample(k, "train"), k)
        return clip_loss(loss, loss_clip), metrics

    losses, metrics = jax.vmap(one)(jnp.arange(instances))
    loss = jnp.mean(losses)
    loss = loss if rule.penalty is None else loss + rule.penalty(genome)
    return loss, {name: jnp.mean(v) for name, v in metrics.items()}


def clip_loss(loss, loss_clip: float | None):
    """``loss`` capped at ``loss_clip`` (a non-finite loss counts as the cap); unchanged
    without one (``evaluation.loss_clip``)."""
    if loss_clip is None:
        return loss
    return jnp.where(jnp.isfinite(loss), jnp.minimum(loss, loss_clip), loss_clip)


def make_genome_evaluator(family, rule):
    """``evaluate(genome, keys) -> (loss[N], metrics[N])`` on meta-test instances, jitted."""

    @jax.jit
    def evaluate(genome, keys):
        def one(k):
            return family.inner_loop(rule, genome, family.sample(k, "test"), k)

        return jax.vmap(one)(keys)

    return evaluate


def evaluate_genome(family, rule, genome, instances: int, evaluator=None):
    """Loss and task metrics of ``genome`` on the first ``instances`` held-out instances."""
    evaluator = evaluator or make_genome_evaluator(family, rule)
    loss, metrics = evaluator(genome, test_instance_keys(instances))
    return {"loss": loss, **metrics}
