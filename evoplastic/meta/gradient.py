"""Backprop as the meta-optimizer: optax on ``jax.grad`` of the unrolled inner loop.

The meta-loss of a genome is the mean inner-loop loss over ``instances`` task instances,
a differentiable function of the genome because the inner loop is a ``lax.scan`` of
differentiable steps. One generation takes its gradient and one optax step (Andrychowicz
et al. 2016, arXiv:1606.04474, for learned optimizers; Metz et al. 2019,
arXiv:1804.00222, for learned unsupervised rules trained this way):

* **full unrolls** (``truncation = 0``): every generation samples fresh instances and
  differentiates the whole inner loop;
* **truncated unrolls** (``truncation = K``): an *episode* of ``steps / K`` generations
  shares its instances; each generation continues the network states carried in the
  meta-state for ``K`` more steps and differentiates the loss after them (truncated
  backprop through time, Williams & Peng 1990). Its gradient is biased towards short
  horizons -- the bias PES removes for evolution strategies (Vicol et al. 2021).

The unroll uses :func:`evoplastic.meta.unroll.unroll`, whose ``remat`` policy bounds
reverse-mode memory on long unrolls. The gradient is clipped to a global norm before the
optax step. A step whose loss or gradient is not finite is skipped: neither the genome nor
the optimizer state changes, and it is counted (``nonfinite`` in the metrics, ``skipped``
in the state). With ``loss_clip`` a step whose every instance is at the cap (no gradient)
is skipped too.

Keys follow the ES path: generation ``g`` uses ``eval_key = generation_keys(run_key, g)[1]``
and instance ``j`` ``fold_in(eval_key, j)``; a truncated episode uses the evaluation key of
its first generation (:mod:`evoplastic.meta.episodes`). A generation is a deterministic
function of the state, the run key and ``g``, so resuming from a checkpoint is bit-exact.

As an :class:`~evoplastic.meta.base.OuterLoop` the work is data-parallel: the instances
are cut into shards of ``shard_size``; ``evaluate`` returns one shard's loss *sum* and the
gradient of that sum; ``tell`` adds the shards in order, divides by the number of
instances and takes the optax step. Every backend evaluates the same shards, so local and
Ray runs with the same ``evaluation.shard_size`` are bit-identical.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ..tasks.evaluation import clip_loss
from .base import INIT_FOLD, OuterLoop, join_shards, strong_types
from .episodes import EpisodicLoop, episode, take_rows
from .strategies import StrategyError
from .strategies import make_optimizer as _make_optimizer
from .unroll import unroll_instance

__all__ = ["GradientMeta", "GradientState", "episode", "make_optimizer"]


@struct.dataclass
class GradientState:
    """The meta-state: genome, optimizer state, carried inner states, skipped-step count."""

    genome: Any
    opt_state: Any
    inner: Any  # network states [instances, ...] carried between truncations
    skipped: jax.Array  # non-finite meta-gradients skipped so far


def make_optimizer(spec: dict, clip_norm: float) -> optax.GradientTransformation:
    """``{"name": "adam", "learning_rate": 0.01}`` after global-norm clipping (if > 0)."""
    try:
        tx = _make_optimizer(spec)
    except StrategyError as err:
        message = str(err).removeprefix(f"{err.field}: ")
        raise StrategyError(err.field.replace("strategy.", "meta.gradient."), message) from None
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm > 0 else tx


def fold_sum(stacked):
    """``stacked[0] + stacked[1] + ...`` along the leading axis, left to right."""
    return jax.tree.map(lambda x: sum((x[i] for i in range(1, x.shape[0])), x[0]), stacked)


@dataclasses.dataclass(frozen=True)
class GradientMeta(EpisodicLoop, OuterLoop):
    """The gradient outer loop of an experiment (pure functions, static settings).

    Attributes:
      family: a steppable task family (``init_inner``, ``inner_step``, ``score``).
      rule: the plasticity rule whose genome is learned.
      optimizer: an optax transformation (clipping included).
      instances: meta-train instances per generation.
      init_std: scale of the Gaussian noise added to ``rule.init`` for the first genome.
      truncation: inner steps per generation, or 0 for whole unrolls.
      remat: the unroll's checkpointing policy.
      shard_size: instances per shard (``None``: all at once).
      loss_clip: each instance's loss capped at this value before the mean
        (``evaluation.loss_clip``; an instance above it adds no gradient); ``None``: no cap.
    """

    family: Any
    rule: Any
    optimizer: optax.GradientTransformation
    instances: int
    init_std: float
    truncation: int = 0
    remat: str = "nested"
    shard_size: int | None = None
    loss_clip: float | None = None

    @property
    def units(self) -> int:
        """Task instances per generation (what ``shard_size`` cuts)."""
        return self.instances

    def init(self, run_key: jax.Array) -> GradientState:
        """Genome ``rule.init(k) + init_std * N(0, 1)``: the ES's first-population law."""
        k_rule, k_noise = jax.random.split(jax.random.fold_in(run_key, INIT_FOLD))
        mean = self.rule.init(k_rule)
        leaves, treedef = jax.tree.flatten(mean)
        keys = jax.random.split(k_noise, len(leaves))
        genome = jax.tree.unflatten(
            treedef,
            [
                x + self.init_std * jax.random.normal(k, x.shape, x.dtype)
                for x, k in zip(leaves, keys, strict=True)
            ],
        )
        state = GradientState(
            genome=genome,
            opt_state=self.optimizer.init(genome),
            inner=self.episodes.empty(),
            skipped=jnp.zeros((), jnp.int32),
        )
        # strong dtypes, as after a step: weakly typed leaves would recompile generation 1
        return strong_types(state)

    def ask(self, state: GradientState, run_key, generation):
        """The genome, the episode's key and segment, and the carried inner states."""
        key, seg = self.episodes.position(run_key, generation)
        work = {"genome": state.genome, "key": key, "segment": seg, "inner": state.inner}
        return work, state

    def _shard(self, work, shard):
        """The shard's instance indices (padding rows repeat the last instance), which of
        them are real, their tasks and the states their segment starts from."""
        ep = self.episodes
        index = shard * self.batch + jnp.arange(self.batch)
        valid = index < self.instances
        index = jnp.minimum(index, self.instances - 1)
        tasks = ep.tasks(work["key"], index)
        inner = ep.start(tasks, take_rows(work["inner"], index), work["segment"])
        return valid, tasks, inner

    def _instance_loss(self, genome, task, state, seg):
        """``(capped loss, (loss, metrics, state))`` of one instance's segment."""
        length = self.episodes.length
        loss, metrics, state = unroll_instance(
            self.family, self.rule, genome, task, state, seg * length, length, self.remat
        )
        return clip_loss(loss, self.loss_clip), (loss, metrics, state)

    def _masked_sum(self, genome, valid, tasks, inner, seg):
        """``(sum of the real instances' capped losses, (losses, metrics, inner))``."""
        capped, aux = jax.vmap(self._instance_loss, in_axes=(None, 0, 0, None))(
            genome, tasks, inner, seg
        )
        return jnp.sum(jnp.where(valid, capped, 0.0)), aux

    def shard_loss(self, genome, work, shard):
        """``(sum of the shard's capped losses, (losses, metrics, inner))``.

        Padding rows are left out of the sum.
        """
        return self._masked_sum(genome, *self._shard(work, shard), work["segment"])

    def evaluate(self, work, shard):
        """The shard's loss sum, the gradient of that sum, per-instance metrics and states.

        With ``loss_clip`` the gradient is taken instance by instance and summed, so that an
        instance that blows up adds the cap to the loss and, where its gradient is not
        finite, nothing to the gradient; without it, the gradient of the sum (a non-finite
        sum makes ``tell`` skip the step).
        """
        genome, seg = work["genome"], work["segment"]
        valid, tasks, inner = self._shard(work, shard)
        if self.loss_clip is None:
            grad_fn = jax.value_and_grad(self._masked_sum, has_aux=True)
            (loss, (_, metrics, inner)), grad = grad_fn(genome, valid, tasks, inner, seg)
            return {"loss": loss, "grad": grad, "metrics": metrics, "inner": inner}
        grad_one = jax.value_and_grad(self._instance_loss, has_aux=True)
        (capped, (_, metrics, inner)), grads = jax.vmap(grad_one, in_axes=(None, 0, 0, None))(
            genome, tasks, inner, seg
        )
        finite = [
            jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), -1) for g in jax.tree.leaves(grads)
        ]
        keep = functools.reduce(jnp.logical_and, finite, valid)
        grad = jax.tree.map(
            lambda g: jnp.sum(jnp.where(keep.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0), 0),
            grads,
        )
        loss = jnp.sum(jnp.where(valid, capped, 0.0))
        return {"loss": loss, "grad": grad, "metrics": metrics, "inner": inner}

    def meta_loss(self, genome, tasks, inner, start, length: int):
        """Mean loss over instances after ``length`` steps from ``inner`` at ``start``
        (one batch, for tests and analysis)."""

        def one(task, s):
            loss, metrics, s = unroll_instance(
                self.family, self.rule, genome, task, s, start, length, self.remat
            )
            return loss, (metrics, s)

        losses, (metrics, inner) = jax.vmap(one)(tasks, inner)
        return jnp.mean(losses), (metrics, inner)

    def tell(self, state: GradientState, work, results, run_key, generation):
        """Add the shards in order, average, clip and step; skip a non-finite step."""
        n = self.instances
        loss = fold_sum(results["loss"]) / n
        grad = jax.tree.map(lambda g: g / n, fold_sum(results["grad"]))
        if self.rule.penalty is not None:  # the rule's prior, once per step
            penalty, penalty_grad = jax.value_and_grad(self.rule.penalty)(state.genome)
            loss = loss + penalty
            grad = jax.tree.map(jnp.add, grad, penalty_grad)
        task_metrics = join_shards(results["metrics"], n)
        inner = join_shards(results["inner"], n)
        grad_norm = optax.tree.norm(grad)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if self.loss_clip is not None:  # every instance at the cap: no gradient, and Adam's
            ok = ok & (grad_norm > 0)  # momentum alone would move the genome on no information
        updates, opt_state = self.optimizer.update(grad, state.opt_state, state.genome)
        genome = optax.apply_updates(state.genome, updates)

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b).astype(b.dtype), new, old)

        new_state = GradientState(
            genome=keep(genome, state.genome),
            opt_state=keep(opt_state, state.opt_state),
            inner=inner,
            skipped=state.skipped + (~ok).astype(jnp.int32),
        )
        metrics = {
            "best_loss": loss,
            "mean_loss": loss,
            "median_loss": loss,
            "nonfinite": (~ok).astype(jnp.int32),
            "grad_norm": grad_norm,
            "skipped": new_state.skipped,
        }
        for name, values in task_metrics.items():
            metrics[f"train_{name}"] = jnp.median(values)
        return new_state, metrics

    def mean_genome(self, state: GradientState):
        """The current genome (what a run reports)."""
        return state.genome
