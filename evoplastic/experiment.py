"""Turn a validated :class:`~evoplastic.config.Config` into the pieces of a run.

Everything that can be wrong with a config is found here, before a run directory is
written: unknown terms, a strategy that rejects its population size, a rule with nothing
to evolve.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.flatten_util

from . import backends, meta, rules, tasks
from .config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The built pieces of a run (all pure functions and static descriptions)."""

    config: Config
    family: Any
    rule: rules.Rule
    strategy: Any
    es_params: Any
    genome_template: Any

    def family_variant(self, **overrides):
        """The same task family with some task parameters changed (e.g. ``dim=40``)."""
        params = {k: v for k, v in self.config.task.items() if k != "name"} | overrides
        network = dataclasses.asdict(self.config.network)
        return tasks.make(self.config.task["name"], network=network, **params)

    def fitness(self):
        return backends.task_fitness(self.family, self.rule, self.config.evaluation.instances)

    def generation_step(self):
        return backends.make_generation_step(
            self.strategy,
            self.es_params,
            self.fitness(),
            common_instances=self.config.evaluation.common_instances,
        )

    def init_state(self, run_key: jax.Array):
        """The strategy state before generation 0; its mean is the rule's ``init``."""
        k_rule, k_es = jax.random.split(jax.random.fold_in(run_key, 2**31 - 1))
        mean = self.rule.init(k_rule)
        return backends.strong_types(self.strategy.init(k_es, mean, self.es_params))

    def mean_genome(self, state):
        return self.strategy.get_mean(state)

    def flat_genome(self, genome) -> list[float]:
        """The genome as one flat list of numbers (what ``best_rule.json`` stores)."""
        flat, _ = jax.flatten_util.ravel_pytree(genome)
        return [float(x) for x in flat]

    def unflatten_genome(self, flat):
        """Inverse of :meth:`flat_genome`, with the structure of this rule's genome."""
        _, unravel = jax.flatten_util.ravel_pytree(self.genome_template)
        return unravel(jax.numpy.asarray(flat, jax.numpy.float32))


NEEDS_LAYERS = ("abcd", "static")  # rules whose genome follows the network's layers


def build(cfg: Config) -> Experiment:
    """Build rule, task family and strategy; raises :class:`ConfigError` on bad input."""
    task_params = {k: v for k, v in cfg.task.items() if k != "name"}
    try:
        family = tasks.make(
            cfg.task["name"], network=dataclasses.asdict(cfg.network), **task_params
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    rule_params = {k: v for k, v in cfg.rule.items() if k != "name"}
    if "shapes" in inspect.signature(rules.RULES[cfg.rule["name"]]).parameters:
        shapes = getattr(family.network, "shapes", None)
        if shapes is None and cfg.rule["name"] in NEEDS_LAYERS:
            raise ConfigError(
                f"rule.name: {cfg.rule['name']!r} needs a layered network"
                f" (task {cfg.task['name']!r} has none)"
            )
        rule_params["shapes"] = shapes or ()
    try:
        rule = rules.make(cfg.rule["name"], **rule_params)
    except rules.TermError as err:
        raise ConfigError(f"rule.terms: {err}") from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.network.learn_init:
        shapes = getattr(family.network, "shapes", None)
        if not shapes:
            raise ConfigError("network.learn_init: needs a task with a layered network")
        rule = rules.with_learned_init(rule, shapes, cfg.network.w_init_std)
    template = rule.init(jax.random.PRNGKey(0))
    if rule.num_params() == 0:
        raise ConfigError(
            f"rule.name: {cfg.rule['name']!r} is a fixed rule with nothing to evolve"
            " (use 'polynomial'; fixed rules are baselines in `evoplastic eval`)"
        )
    if rule.terms and len(set(map(rules.canonical, rule.terms))) != len(rule.terms):
        raise ConfigError("rule.terms: the term library lists a term twice")
    try:
        strategy, es_params = meta.make(
            cfg.strategy.name,
            cfg.strategy.population_size,
            template,
            std_init=cfg.strategy.std_init,
            params=cfg.strategy.params,
            optimizer=cfg.strategy.optimizer,
            options=cfg.strategy.options,
        )
    except meta.StrategyError as err:
        raise ConfigError(str(err)) from None
    return Experiment(cfg, family, rule, strategy, es_params, template)
