"""Turn a validated :class:`~evoplastic.config.Config` into the pieces of a run.

Everything that can be wrong with a config is found here, before a run directory is
written: unknown terms, a strategy that rejects its population size, a rule with nothing
to evolve.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

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
            shard_size=self.config.evaluation.shard_size,
        )

    def init_state(self, run_key: jax.Array):
        """The strategy state before generation 0; its mean is the rule's ``init``."""
        k_rule, k_es = jax.random.split(jax.random.fold_in(run_key, 2**31 - 1))
        mean = self.rule.init(k_rule)
        state = self.strategy.init(k_es, mean, self.es_params)
        # strong dtypes, as after a tell: weakly typed leaves would recompile generation 1
        return jax.tree.map(lambda x: jax.numpy.asarray(x, dtype=x.dtype), state)

    def mean_genome(self, state):
        return self.strategy.get_mean(state)


def build(cfg: Config) -> Experiment:
    """Build rule, task family and strategy; raises :class:`ConfigError` on bad input."""
    rule_params = {k: v for k, v in cfg.rule.items() if k != "name"}
    try:
        rule = rules.make(cfg.rule["name"], **rule_params)
    except rules.TermError as err:
        raise ConfigError(f"rule.terms: {err}") from None
    template = rule.init(jax.random.PRNGKey(0))
    if rule.num_params() == 0:
        raise ConfigError(
            f"rule.name: {cfg.rule['name']!r} is a fixed rule with nothing to evolve"
            " (use 'polynomial'; fixed rules are baselines in `evoplastic eval`)"
        )
    if rule.terms and len(set(map(rules.canonical, rule.terms))) != len(rule.terms):
        raise ConfigError("rule.terms: the term library lists a term twice")
    task_params = {k: v for k, v in cfg.task.items() if k != "name"}
    try:
        family = tasks.make(
            cfg.task["name"], network=dataclasses.asdict(cfg.network), **task_params
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
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
