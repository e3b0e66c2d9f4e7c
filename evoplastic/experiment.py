"""Turn a validated :class:`~evoplastic.config.Config` into the pieces of a run.

Everything that can be wrong with a config is found here, before a run directory is
written: unknown terms, a strategy that rejects its population size, a rule with nothing
to evolve.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import jax
import jax.flatten_util
import yaml

from . import meta, rules, tasks
from .backends.local import GenerationStep
from .backends.sharded import Pieces
from .config import Config, ConfigError, dump, parse
from .meta import selection
from .meta.base import OuterLoop
from .meta.es import EvolutionStrategy
from .meta.gradient import GradientMeta
from .meta.gradient import make_optimizer as make_gradient_optimizer
from .meta.truncated import TruncatedES
from .tasks import custom
from .tasks.evaluation import task_fitness


class InvalidFitness(ConfigError, custom.FitnessError):
    """A user fitness or task that cannot be used (a config error and a fitness error)."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The built pieces of a run (all pure functions and static descriptions).

    Attributes:
      config: the validated config.
      family: the task family (or a user's fitness task).
      rule: the plasticity rule whose genome is meta-learned.
      outer: the outer loop (:class:`~evoplastic.meta.base.OuterLoop`): an evolution
        strategy, learned selection, the meta-gradient or a truncated estimator.
      genome_template: a genome of the rule (structure and shapes).
      portable: whether the config alone rebuilds this experiment (else it was built with
        Python objects, and a distributed backend ships its outer loop instead).
      start: what the search starts from when the config has ``rule.init_from`` and
        :func:`evoplastic.start.with_start` has loaded it (``start.json``); else ``None``.
    """

    config: Config
    family: Any
    rule: rules.Rule
    outer: OuterLoop
    genome_template: Any
    portable: bool = True
    start: dict | None = None

    def family_variant(self, **overrides):
        """The same task family with some task parameters changed (e.g. ``dim=40``)."""
        params = {k: v for k, v in self.config.task.items() if k != "name"} | overrides
        network = dataclasses.asdict(self.config.network)
        return tasks.make(self.config.task["name"], network=network, **params)

    def fitness(self):
        """``fitness(genome, key)``: the mean meta-train loss a generation evaluates."""
        ev = self.config.evaluation
        return _fitness(self.family, self.rule, ev.instances, ev.loss_clip)

    def generation_step(self) -> GenerationStep:
        """``step(state, run_key, generation) -> (state, metrics)``: one generation, compiled."""
        return GenerationStep(self.outer)

    def init_state(self, run_key: jax.Array):
        """The meta-state before generation 0."""
        return self.outer.init(run_key)

    def mean_genome(self, state):
        """The genome a run reports: the search mean (ES) or the current genome (gradient)."""
        return self.outer.mean_genome(state)

    def flat_genome(self, genome) -> list[float]:
        """The genome as one flat list of numbers (what ``best_rule.json`` stores)."""
        flat, _ = jax.flatten_util.ravel_pytree(genome)
        return [float(x) for x in flat]

    def unflatten_genome(self, flat):
        """Inverse of :meth:`flat_genome`, with the structure of this rule's genome."""
        _, unravel = jax.flatten_util.ravel_pytree(self.genome_template)
        return unravel(jax.numpy.asarray(flat, jax.numpy.float32))

    def evals_per_generation(self) -> int:
        """Inner loops (or truncations of them) run per generation, for ``evals_per_s``."""
        return self.outer.evals_per_generation()

    def with_shard_size(self, shard_size: int | None) -> Experiment:
        """The same experiment with ``evaluation.shard_size`` (and its outer loop's) set."""
        evaluation = dataclasses.replace(self.config.evaluation, shard_size=shard_size)
        config = dataclasses.replace(self.config, evaluation=evaluation)
        outer = dataclasses.replace(self.outer, shard_size=shard_size)
        return dataclasses.replace(self, config=config, outer=outer)

    def pieces_factory(self):
        """``factory(shared) -> Pieces``, picklable: how a worker process rebuilds this
        experiment's generation step. A portable experiment travels as its config (a plain
        mapping; the worker builds it again), any other as its outer loop, pickled."""
        if self.portable:
            return functools.partial(config_pieces, yaml.safe_load(dump(self.config)))
        return functools.partial(outer_pieces, self.outer)

    def with_outer(self, outer: OuterLoop) -> Experiment:
        """The same experiment with another outer loop (no longer rebuilt from its config)."""
        return dataclasses.replace(self, outer=outer, portable=False)


def _fitness(family, rule, instances: int, loss_clip: float | None = None):
    own = getattr(family, "train_fitness", None)  # user tasks (tasks.custom)
    if own is not None:
        if loss_clip is not None:
            raise ConfigError("evaluation.loss_clip: not available for a user's fitness task")
        return own(rule, instances)
    return task_fitness(family, rule, instances, loss_clip)


NEEDS_LAYERS = ("abcd", "static")  # rules whose genome follows the network's layers


def config_pieces(config: dict, shared=None) -> Pieces:
    """The pieces of the experiment described by ``config`` (a mapping, as in YAML).

    ``shared`` is unused: a config's task family generates its data from keys.
    """
    exp = build(parse(config))
    return Pieces(step=exp.generation_step(), init_state=exp.init_state)


def outer_pieces(outer, shared=None) -> Pieces:
    """The pieces of an outer loop shipped as an object (``shared`` is unused)."""
    return Pieces(step=GenerationStep(outer), init_state=outer.init)


def build(cfg: Config, family=None, rule: rules.Rule | None = None, check: bool = True):
    """Build rule, task family and strategy; raises :class:`ConfigError` on bad input.

    ``family`` (a task family or a fitness function, see :mod:`evoplastic.tasks.custom`)
    and ``rule`` replace what the config's ``task`` and ``rule`` sections would make; a
    user's fitness is traced and checked (``check``) before anything runs.

    Also sets JAX's matrix-product precision for the process (``evaluation.matmul_precision``),
    so a GPU computes what a CPU does unless the config asks for TF32 or bfloat16.
    """
    given = family is not None or rule is not None
    precision = cfg.evaluation.matmul_precision
    jax.config.update("jax_default_matmul_precision", None if precision == "default" else precision)
    task_params = {k: v for k, v in cfg.task.items() if k != "name"}
    try:
        if family is None:
            family = tasks.make(
                cfg.task["name"], network=dataclasses.asdict(cfg.network), **task_params
            )
        else:
            genome = task_params.get("genome")
            family = custom.wrap(family, custom.genome_from_config(genome), cfg.task["name"])
    except custom.FitnessError as err:
        raise InvalidFitness(f"task: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if isinstance(family, custom.FitnessTask):
        rule = family.rule
    if rule is None:
        rule = _config_rule(cfg, family)
    exp = Experiment(
        cfg,
        family,
        rule,
        _build_outer(cfg, family, rule),
        rule.init(jax.random.PRNGKey(0)),
        portable=not given,
    )
    if check and getattr(family, "checks", False):
        try:
            if isinstance(family, custom.FitnessTask):
                custom.check_fitness(family.fitness, family.genome_template, family.name)
            else:
                custom.check_fitness(task_fitness(family, rule, 1), exp.genome_template, "task")
        except custom.FitnessError as err:
            raise InvalidFitness(f"task: {err}") from None
    return exp


def _config_rule(cfg: Config, family) -> rules.Rule:
    """The rule of the config's ``rule`` section (and ``network.learn_init``)."""
    rule_params = {k: v for k, v in cfg.rule.items() if k not in ("name", "init_from")}
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
    parts = getattr(family.network, "genome_parts", dict)()
    if parts:  # learned feedback, a synthetic-error predictor, a modulatory neuron
        rule = rules.with_parts(rule, parts)
    if cfg.network.learn_init:
        shapes = getattr(family.network, "shapes", None)
        if not shapes:
            raise ConfigError("network.learn_init: needs a task with a layered network")
        rule = rules.with_learned_init(rule, shapes, cfg.network.w_init_std)
    return rule


def _build_outer(cfg: Config, family, rule: rules.Rule) -> OuterLoop:
    """The outer loop the config's ``meta`` and ``strategy`` sections describe."""
    template = rule.init(jax.random.PRNGKey(0))
    if rule.num_params() == 0:
        raise ConfigError(
            f"rule.name: {cfg.rule['name']!r} is a fixed rule with nothing to evolve"
            " (use 'polynomial'; fixed rules are baselines in `evoplastic eval`)"
        )
    if cfg.evaluation.loss_clip is not None and cfg.meta.truncation:
        raise ConfigError("evaluation.loss_clip: only over whole episodes (not meta.truncation)")
    if cfg.meta.optimizer == "gradient" or cfg.meta.truncation:
        missing = [m for m in ("init_inner", "inner_step", "score") if not hasattr(family, m)]
        if missing:
            raise ConfigError(
                f"task.name: task {cfg.task['name']!r} has no stepwise inner loop"
                f" ({', '.join(missing)}), which meta.optimizer: gradient and truncated"
                " unrolls need"
            )
        if cfg.meta.truncation and getattr(family, "draws_horizons", False):
            raise ConfigError(
                "meta.truncation: random horizons (task.epochs_max, shots_max,"
                " support_size_max) need whole unrolls; set meta.truncation: 0"
            )
    if cfg.meta.optimizer == "gradient":
        return _gradient_outer(cfg, family, rule)
    if cfg.meta.selection == "learned":
        strategy, es_params = _learned_selection(cfg, template)
    else:
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
    ev = cfg.evaluation
    if not cfg.meta.truncation:
        return EvolutionStrategy(
            strategy,
            es_params,
            _fitness(family, rule, ev.instances, ev.loss_clip),
            init_genome=rule.init,
            common_instances=ev.common_instances,
            shard_size=ev.shard_size,
            checks=getattr(family, "checks", False),
        )
    for key in ("T", "K"):
        if key in cfg.strategy.params:
            raise ConfigError(
                f"strategy.params.{key}: set from task.steps and meta.truncation; remove it"
            )
    return TruncatedES(
        family,
        rule,
        strategy,
        es_params.replace(T=family.steps, K=cfg.meta.truncation),
        instances=ev.instances,
        truncation=cfg.meta.truncation,
        common_instances=ev.common_instances,
        shard_size=ev.shard_size,
    )


def _learned_selection(cfg: Config, template):
    """``(strategy, es_params)`` of ``meta.selection: learned`` (strategy.name is not used)."""
    try:
        policy = selection.load_policy(cfg.meta.selection_policy)
    except selection.PolicyFileError as err:
        raise ConfigError(f"meta.selection_policy: {err}") from None
    if cfg.strategy.params or cfg.strategy.optimizer or cfg.strategy.options:
        raise ConfigError(
            "strategy: meta.selection: learned takes only strategy.population_size and"
            " strategy.std_init"
        )
    if cfg.strategy.population_size < 2:
        raise ConfigError("strategy.population_size: learned selection needs at least 2")
    return selection.make(cfg.strategy.population_size, template, policy, cfg.strategy.std_init)


def _gradient_outer(cfg: Config, family, rule) -> GradientMeta:
    g = cfg.meta.gradient
    try:
        optimizer = make_gradient_optimizer(g.optimizer, g.clip_norm)
    except meta.StrategyError as err:
        raise ConfigError(str(err)) from None
    return GradientMeta(
        family,
        rule,
        optimizer,
        instances=cfg.evaluation.instances,
        init_std=cfg.strategy.std_init if g.init_std is None else g.init_std,
        truncation=cfg.meta.truncation,
        remat=g.remat,
        shard_size=cfg.evaluation.shard_size,
        loss_clip=cfg.evaluation.loss_clip,
    )
