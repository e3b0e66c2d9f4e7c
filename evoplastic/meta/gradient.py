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
in the state).

Keys follow the ES path: generation ``g`` uses ``eval_key = generation_keys(run_key, g)[1]``
and instance ``j`` ``fold_in(eval_key, j)``; a truncated episode uses the evaluation key of
its first generation. A generation is a deterministic function of the state, the run key
and ``g``, so resuming from a checkpoint is bit-exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ..backends.local import generation_keys
from .unroll import unroll_instance


@struct.dataclass
class GradientState:
    """The meta-state: genome, optimizer state, carried inner states, skipped-step count."""

    genome: Any
    opt_state: Any
    inner: Any  # network states [instances, ...] carried between truncations
    skipped: jax.Array  # non-finite meta-gradients skipped so far


def episode(generation, segments: int):
    """``(first generation of the episode, index of the truncation within it)``."""
    seg = generation % segments
    return generation - seg, seg


def make_optimizer(spec: dict, clip_norm: float) -> optax.GradientTransformation:
    """``{"name": "adam", "learning_rate": 0.01}`` after global-norm clipping (if > 0)."""
    from .strategies import StrategyError
    from .strategies import make_optimizer as _make

    try:
        tx = _make(spec)
    except StrategyError as err:
        message = str(err).removeprefix(f"{err.field}: ")
        raise StrategyError(err.field.replace("strategy.", "meta.gradient."), message) from None
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm > 0 else tx


@dataclasses.dataclass(frozen=True)
class GradientMeta:
    """The gradient outer loop of an experiment (pure functions, static settings).

    Attributes:
      family: a steppable task family (``init_inner``, ``inner_step``, ``score``).
      rule: the plasticity rule whose genome is learned.
      optimizer: an optax transformation (clipping included).
      instances: meta-train instances per generation.
      init_std: scale of the Gaussian noise added to ``rule.init`` for the first genome.
      truncation: inner steps per generation, or 0 for whole unrolls.
      remat: the unroll's checkpointing policy.
    """

    family: Any
    rule: Any
    optimizer: optax.GradientTransformation
    instances: int
    init_std: float
    truncation: int = 0
    remat: str = "nested"

    @property
    def segments(self) -> int:
        """Truncated segments per inner loop (1 without truncation)."""
        return self.family.steps // self.truncation if self.truncation else 1

    def _tasks(self, key):
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(self.instances))
        return jax.vmap(lambda k: self.family.sample(k, "train"))(keys)

    def _fresh_inner(self, tasks):
        return jax.vmap(self.family.init_inner)(tasks)

    def init_state(self, run_key: jax.Array) -> GradientState:
        """Genome ``rule.init(k) + init_std * N(0, 1)``: the ES's first-population law."""
        k_rule, k_noise = jax.random.split(jax.random.fold_in(run_key, 2**31 - 1))
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
        inner = self._fresh_inner(self._tasks(jax.random.PRNGKey(0)))
        state = GradientState(
            genome=genome,
            opt_state=self.optimizer.init(genome),
            inner=jax.tree.map(jnp.zeros_like, inner),
            skipped=jnp.zeros((), jnp.int32),
        )
        # strong dtypes, as after a step: weakly typed leaves would recompile generation 1
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), state)

    def meta_loss(self, genome, tasks, inner, start, length: int):
        """Mean loss over instances after ``length`` steps from ``inner`` at ``start``."""

        def one(task, s):
            loss, metrics, s = unroll_instance(
                self.family, self.rule, genome, task, s, start, length, self.remat
            )
            return loss, (metrics, s)

        losses, (metrics, inner) = jax.vmap(one)(tasks, inner)
        return jnp.mean(losses), (metrics, inner)

    def generation_step(self):
        """Compile ``step(state, run_key, generation) -> (state, metrics)`` once for a run."""
        length = self.truncation or self.family.steps

        @jax.jit
        def step(state: GradientState, run_key, generation):
            first, seg = episode(generation, self.segments)
            _, k_eval, _ = generation_keys(run_key, first)
            tasks = self._tasks(k_eval)
            fresh = self._fresh_inner(tasks)
            inner = jax.tree.map(lambda f, c: jnp.where(seg == 0, f, c), fresh, state.inner)
            grad_fn = jax.value_and_grad(self.meta_loss, has_aux=True)
            (loss, (task_metrics, inner)), grad = grad_fn(
                state.genome, tasks, inner, seg * length, length
            )
            grad_norm = optax.tree.norm(grad)
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            updates, opt_state = self.optimizer.update(grad, state.opt_state, state.genome)
            genome = optax.apply_updates(state.genome, updates)

            def keep(new, old):
                return jax.tree.map(lambda n, o: jnp.where(ok, n, o).astype(o.dtype), new, old)

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

        return step

    def mean_genome(self, state: GradientState):
        """The current genome (what a run reports)."""
        return state.genome

    def evals_per_generation(self) -> int:
        """Inner loops (or segments of them) per generation."""
        return self.instances
