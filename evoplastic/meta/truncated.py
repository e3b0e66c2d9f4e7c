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
without common instances, member ``i``'s from ``fold_in(fold_in(key, i), j)``
(:mod:`evoplastic.meta.episodes`, the truncated step shared with the meta-gradient).

As an :class:`~evoplastic.meta.base.OuterLoop` the population is evaluated in shards of
``shard_size`` members. The members' network states travel with the work: each shard
continues its members' states and returns them, and ``tell`` keeps them in the meta-state.
A shard is a pure function of the state and the keys, so a backend may re-run a lost one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from .base import INIT_FOLD, PopulationLoop, generation_keys, join_shards, member_keys, take_shard
from .episodes import EpisodicLoop
from .es import es_metrics


@struct.dataclass
class TruncatedState:
    """The evosax state and every member's network states ``[population, instances, ...]``."""

    es: Any
    inner: Any


@dataclasses.dataclass(frozen=True)
class TruncatedES(EpisodicLoop, PopulationLoop):
    """A PES / Noise-Reuse ES outer loop over truncated unrolls.

    Attributes:
      family: a steppable task family (``init_inner``, ``inner_step``, ``score``).
      rule: the plasticity rule.
      strategy, es_params: the evosax strategy (``T`` and ``K`` already set).
      instances: task instances per member.
      truncation: inner steps per generation (divides ``family.steps``).
      common_instances: every member meets the same instances (common random numbers).
      shard_size: members per shard (``None``: the whole population at once).
    """

    family: Any
    rule: Any
    strategy: Any
    es_params: Any
    instances: int
    truncation: int
    common_instances: bool = True
    shard_size: int | None = None

    def evals_per_generation(self) -> int:
        """Truncated segments evaluated per generation."""
        return self.units * self.instances

    def init(self, run_key: jax.Array) -> TruncatedState:
        """The strategy state and the inner states of every member before generation 0."""
        k_rule, k_es = jax.random.split(jax.random.fold_in(run_key, INIT_FOLD))
        es = self.strategy.init(k_es, self.rule.init(k_rule), self.es_params)
        state = TruncatedState(es=es, inner=self.episodes.empty(self.units))
        # strong dtypes, as after a tell: weakly typed leaves would recompile generation 1
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), state)

    def ask(self, state: TruncatedState, run_key, generation):
        """The population, the episode's key and segment, and the members' inner states."""
        k_ask, _, _ = generation_keys(run_key, generation)
        key, seg = self.episodes.position(run_key, generation)
        population, es = self.strategy.ask(k_ask, state.es, self.es_params)
        work = {"population": population, "key": key, "segment": seg, "inner": state.inner}
        return work, state.replace(es=es)

    def evaluate(self, work, shard):
        """Members' mean losses ``[shard_size]`` over one truncation, and their new states."""
        ep, seg = self.episodes, work["segment"]
        members = take_shard(work["population"], shard, self.batch, self.shards)
        carried = take_shard(work["inner"], shard, self.batch, self.shards)
        instances = jnp.arange(self.instances)
        if self.common_instances:
            tasks = ep.tasks(work["key"], instances)
        else:
            index = shard * self.batch + jnp.arange(self.batch)
            keys = member_keys(work["key"], index)
            tasks = jax.vmap(lambda k: ep.tasks(k, instances))(keys)

        def member(genome, member_tasks, member_inner):
            member_inner = ep.start(member_tasks, member_inner, seg)
            losses, _, s = ep.run(self.rule, genome, member_tasks, member_inner, seg)
            return jnp.mean(losses), s

        task_axis = None if self.common_instances else 0
        raw, inner = jax.vmap(member, in_axes=(0, task_axis, 0))(members, tasks, carried)
        return {"raw": raw, "inner": inner}

    def tell(self, state: TruncatedState, work, results, run_key, generation):
        """Keep the members' new states; sanitize the losses and tell the strategy."""
        _, _, k_tell = generation_keys(run_key, generation)
        raw = join_shards(results["raw"], self.units)
        inner = join_shards(results["inner"], self.units)
        fit, metrics = es_metrics(raw)
        es, _ = self.strategy.tell(k_tell, work["population"], fit, state.es, self.es_params)
        state = TruncatedState(es=es, inner=inner)
        state = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), state)
        return state, metrics | {"segment": work["segment"]}

    def mean_genome(self, state: TruncatedState):
        """The search mean (what a run reports)."""
        return self.strategy.get_mean(state.es)
