"""The outer-loop contract: every meta-optimizer is the same few pure functions.

An outer loop updates a genome (or a search distribution over genomes) from what inner
loops achieve with it. Every kind here -- evolution strategies from evosax, learned
selection, the meta-gradient and the truncated estimators (PES, Noise-Reuse ES,
truncated backprop) -- is written as the same five pure functions over an explicit state,
in the style of evosax's ``ask``/``tell`` and optax's ``(init, update)``:

.. code-block:: text

    init(run_key)                                   -> state
    ask(state, run_key, generation)                 -> (work, state)
    evaluate(work, shard)                           -> result of one shard
    tell(state, work, results, run_key, generation) -> (state, metrics)
    mean_genome(state)                              -> genome

``work`` is what a generation evaluates: a population of genomes (ES), or one genome and
its task instances (meta-gradient), together with the evaluation key and whatever carried
inner state the evaluation continues. It is cut into ``shards`` fixed batches (members, or
task instances) of ``shard_size`` units; ``evaluate(work, shard)`` computes one of them --
raw losses of its members, or the loss and gradient *sums* over its instances -- and is
the part a backend spreads over devices or machines. ``results`` is every shard's result
stacked along a leading axis in shard order; ``tell`` combines them in that fixed order,
so a backend that evaluates the same shards gets the same bits however many workers it
has. Keys are arguments: each generation's keys are derived from ``run_key`` and
``generation`` by :func:`generation_keys`, never kept as hidden object state.

A backend needs nothing else (:class:`evoplastic.backends.GenerationStep` compiles the
three middle functions once and runs ask -> evaluate every shard -> tell)::

    work, asked = outer.ask(state, run_key, g)
    results = stack([outer.evaluate(work, s) for s in range(outer.shards)])
    state, metrics = outer.tell(asked, work, results, run_key, g)

The implementations: :class:`~evoplastic.meta.es.EvolutionStrategy` (evosax strategies and
learned selection), :class:`~evoplastic.meta.gradient.GradientMeta` and
:class:`~evoplastic.meta.truncated.TruncatedES`; the last two share the truncated step of
:mod:`evoplastic.meta.episodes`. The pattern follows learned_optimization's
``outer_trainers`` (one gradient estimator per module behind one interface).
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp

# the run key is folded with this before the initial genome and strategy state are drawn
INIT_FOLD = 2**31 - 1


class OuterLoop(abc.ABC):
    """The contract every outer loop implements (see the module docstring).

    Subclasses are frozen dataclasses of static settings and pure functions; they hold no
    state of their own. ``units`` is the number of things a generation evaluates (members
    or task instances) and ``shard_size`` the batch they are evaluated in.
    """

    @property
    @abc.abstractmethod
    def units(self) -> int:
        """Members (ES) or task instances (meta-gradient) evaluated per generation."""

    @property
    @abc.abstractmethod
    def shard_size(self) -> int | None:
        """Units per shard (``None``: all at once)."""

    @property
    def shards(self) -> int:
        """Fixed batches a generation's work is cut into (see :func:`shard_layout`)."""
        return shard_layout(self.units, self.shard_size)[0]

    @property
    def batch(self) -> int:
        """Units per shard, padding included."""
        return shard_layout(self.units, self.shard_size)[1]

    @abc.abstractmethod
    def init(self, run_key: jax.Array) -> Any:
        """The meta-state before generation 0 (strongly typed)."""

    @abc.abstractmethod
    def ask(self, state, run_key: jax.Array, generation) -> tuple[Any, Any]:
        """``(work, state)``: what generation ``generation`` evaluates."""

    @abc.abstractmethod
    def evaluate(self, work, shard) -> Any:
        """The result of shard ``shard`` of ``work`` (a pytree of arrays)."""

    @abc.abstractmethod
    def tell(self, state, work, results, run_key: jax.Array, generation) -> tuple[Any, dict]:
        """``(state, metrics)`` from every shard's result, stacked in shard order."""

    @abc.abstractmethod
    def mean_genome(self, state) -> Any:
        """The genome a run reports (search mean, or the current genome)."""

    def evals_per_generation(self) -> int:
        """Inner loops (or truncations of them) run per generation, for ``evals_per_s``."""
        return self.units

    def finish_shard(self, evaluate, work, shard):
        """Run a compiled ``evaluate`` on one shard on the host; raise a clear error if
        it failed. The default just calls it (:class:`~evoplastic.meta.es.EvolutionStrategy`
        with checks locates a failing member)."""
        return evaluate(work, shard)


class PopulationLoop(OuterLoop):
    """An outer loop over the members of an evosax strategy: ``shard_size`` cuts its
    population (needs a ``strategy`` field)."""

    @property
    def units(self) -> int:
        """Members per generation (what ``shard_size`` cuts)."""
        return int(self.strategy.population_size)

    @property
    def population_size(self) -> int:
        """Members per generation."""
        return self.units


def generation_keys(run_key: jax.Array, generation) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ask_key, eval_key, tell_key)`` of a generation: ``fold_in(fold_in(run_key, g), i)``."""
    key_g = jax.random.fold_in(run_key, generation)
    return tuple(jax.random.fold_in(key_g, i) for i in range(3))


def member_keys(eval_key: jax.Array, indices: jax.Array) -> jax.Array:
    """The key of each member, ``fold_in(eval_key, i)``: a function of its index only."""
    return jax.vmap(lambda i: jax.random.fold_in(eval_key, i))(indices)


def sanitize(raw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replace non-finite losses by a value worse than every finite one; count them."""
    finite = jnp.isfinite(raw)
    worst = jnp.max(jnp.where(finite, raw, -jnp.inf))
    worst = jnp.where(jnp.isfinite(worst), worst + jnp.abs(worst) + 1.0, 1e6)
    return jnp.where(finite, raw, worst), jnp.sum(~finite)


def strong_types(tree):
    """The same pytree with every leaf strongly typed.

    Some strategies return weakly typed scalars (e.g. a Python-float ``std`` schedule);
    feeding them back into a jitted step would compile it a second time.
    """
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def shard_layout(units: int, shard_size: int | None) -> tuple[int, int]:
    """``(shards, shard_size)``: the fixed batches a generation's units are evaluated in.

    ``shard_size=None`` evaluates every unit as one batch. Otherwise the units are cut into
    ``ceil(units / shard_size)`` shards of ``shard_size`` (the last one padded). The layout
    depends on the config only, never on the number of workers, because XLA may round the
    last bit differently for different batch sizes: every backend evaluates the same
    batches, so every backend gets the same bits.
    """
    if shard_size is None or shard_size >= units:
        return 1, units
    return -(-units // shard_size), shard_size


def take_shard(tree, shard, shard_size: int, shards: int):
    """Rows ``shard * shard_size ...`` of every leaf, padded (with zeros) to ``shard_size``."""

    def take(x):
        pad = shards * shard_size - x.shape[0]
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x
        return jax.lax.dynamic_slice_in_dim(x, shard * shard_size, shard_size)

    return jax.tree.map(take, tree)


def join_shards(results, units: int):
    """Stacked shard results ``[shards, shard_size, ...]`` -> ``[units, ...]`` (padding cut)."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:units], results)
