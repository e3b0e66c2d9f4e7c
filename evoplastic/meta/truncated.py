"""Evolution strategies over truncated unrolls: PES and Noise-Reuse ES.

A long inner loop (``task.steps`` steps) is cut into truncations of ``K`` steps; one
generation runs one truncation. Each population member keeps its own network state from
one truncation to the next, as in learned_optimization's truncated PES
(``outer_trainers/truncated_pes.py``), so the outer loop updates the genome ``steps / K``
times per inner episode instead of once.

Plain antithetic ES over truncations is biased: it only sees how a perturbation changes
the loss of the next ``K`` steps, not its effect through the carried state. evosax's

* ``PersistentES`` (``pes``; Vicol, Metz & Sohl-Dickstein 2021, "Unbiased gradient
  estimation in unrolled computation graphs with persistent evolution strategies",
  ICML, arXiv:2112.13835) accumulates each member's perturbations over the episode and
  uses the sum in its gradient estimate, which removes the bias;
* ``NoiseReuseES`` (``noise_reuse_es``; Li et al. 2023, arXiv:2304.12180) reuses one
  perturbation per member for the whole episode, which also removes it, at lower variance.

Both take ``T`` (episode length) and ``K`` (truncation) in their params; :func:`make` sets
them from ``task.steps`` and ``meta.truncation``, so evosax's own counter and the
episode index here (``generation % (steps / K)``) reset together.

Keys: an episode's instances come from the evaluation key of its first generation
(``generation_keys(run_key, first)[1]``), instance ``j`` from ``fold_in(key, j)`` and,
without common instances, member ``i``'s from ``fold_in(fold_in(key, i), j)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..backends.local import generation_keys, member_keys, sanitize
from .gradient import episode
from .unroll import unroll_instance


@struct.dataclass
class TruncatedState:
    """The evosax state and every member's network states ``[population, instances, ...]``."""

    es: Any
    inner: Any


@dataclasses.dataclass(frozen=True)
class TruncatedES:
    """A PES / Noise-Reuse ES outer loop over truncated unrolls.

    Attributes:
      family: a steppable task family (``init_inner``, ``inner_step``, ``score``).
      rule: the plasticity rule.
      strategy, es_params: the evosax strategy (``T`` and ``K`` already set).
      instances: task instances per member.
      truncation: inner steps per generation (divides ``family.steps``).
      common_instances: every member meets the same instances (common random numbers).
    """

    family: Any
    rule: Any
    strategy: Any
    es_params: Any
    instances: int
    truncation: int
    common_instances: bool = True

    @property
    def segments(self) -> int:
        """Truncated segments per inner loop (``steps / truncation``)."""
        return self.family.steps // self.truncation

    @property
    def population_size(self) -> int:
        """Members per generation."""
        return self.strategy.population_size

    def _tasks(self, key):
        """Tasks ``[instances]`` (common) or ``[population, instances]``."""

        def for_key(k):
            keys = jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(self.instances))
            return jax.vmap(lambda kk: self.family.sample(kk, "train"))(keys)

        if self.common_instances:
            return for_key(key)
        return jax.vmap(for_key)(member_keys(key, jnp.arange(self.population_size)))

    def _fresh_inner(self, tasks):
        init = jax.vmap(self.family.init_inner)
        if self.common_instances:
            one = init(tasks)
            return jax.tree.map(
                lambda x: jnp.broadcast_to(x, (self.population_size, *x.shape)), one
            )
        return jax.vmap(init)(tasks)

    def init_state(self, run_key: jax.Array) -> TruncatedState:
        """The strategy state and the inner states of every member before generation 0."""
        k_rule, k_es = jax.random.split(jax.random.fold_in(run_key, 2**31 - 1))
        es = self.strategy.init(k_es, self.rule.init(k_rule), self.es_params)
        inner = self._fresh_inner(self._tasks(jax.random.PRNGKey(0)))
        state = TruncatedState(es=es, inner=jax.tree.map(jnp.zeros_like, inner))
        # strong dtypes, as after a tell: weakly typed leaves would recompile generation 1
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), state)

    def generation_step(self):
        """Compile ``step(state, run_key, generation) -> (state, metrics)`` once for a run."""
        K = self.truncation

        @jax.jit
        def step(state: TruncatedState, run_key, generation):
            k_ask, _, k_tell = generation_keys(run_key, generation)
            first, seg = episode(generation, self.segments)
            _, k_episode, _ = generation_keys(run_key, first)
            tasks = self._tasks(k_episode)
            fresh = self._fresh_inner(tasks)
            inner = jax.tree.map(lambda f, c: jnp.where(seg == 0, f, c), fresh, state.inner)
            population, es = self.strategy.ask(k_ask, state.es, self.es_params)

            def member(genome, member_tasks, member_inner):
                def one(task, s):
                    loss, _, s = unroll_instance(
                        self.family, self.rule, genome, task, s, seg * K, K
                    )
                    return loss, s

                losses, s = jax.vmap(one)(member_tasks, member_inner)
                return jnp.mean(losses), s

            task_axis = None if self.common_instances else 0
            raw, inner = jax.vmap(member, in_axes=(0, task_axis, 0))(population, tasks, inner)
            fit, nonfinite = sanitize(raw)
            es, _ = self.strategy.tell(k_tell, population, fit, es, self.es_params)
            finite = jnp.isfinite(raw)
            metrics = {
                "best_loss": jnp.min(fit),
                "mean_loss": jnp.sum(jnp.where(finite, raw, 0.0)) / jnp.maximum(finite.sum(), 1),
                "median_loss": jnp.median(fit),
                "nonfinite": nonfinite,
                "segment": seg,
            }
            return TruncatedState(es=es, inner=inner), metrics

        return step

    def mean_genome(self, state: TruncatedState):
        """The search mean (what a run reports)."""
        return self.strategy.get_mean(state.es)

    def evals_per_generation(self) -> int:
        """Truncated segments evaluated per generation."""
        return self.population_size * self.instances
