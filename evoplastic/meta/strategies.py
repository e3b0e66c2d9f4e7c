"""Evolution strategies from evosax 0.3, made by name with hyperparameters from a config.

Every strategy is used through evosax's pure ask/tell interface with explicit keys:
``ask(key, state, params) -> (population, state)`` and
``tell(key, population, fitness, state, params) -> (state, metrics)``; fitness is
minimized. ``std_init`` sets the initial search scale whichever way the strategy takes it
(a ``Params`` field or a ``std_schedule``); other ``Params`` fields are set with
``params``, constructor options with ``options``, and the mean-update optimizer of
gradient-style strategies (OpenAI-ES, PGPE, SNES, ...) with ``optimizer``.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import jax.numpy as jnp
import optax
from evosax.algorithms import distribution_based_algorithms as _ALGORITHMS

# registry name -> evosax class name (distribution-based strategies with a plain ask/tell)
STRATEGIES = {
    "ars": "ARS",
    "asebo": "ASEBO",
    "cma_anchored_les": "CMAAnchoredLES",
    "cma_es": "CMA_ES",
    "cr_fm_nes": "CR_FM_NES",
    "des": "DES",
    "esmc": "ESMC",
    "evotf_es": "EvoTF_ES",
    "gradientless_descent": "GradientlessDescent",
    "guided_es": "GuidedES",
    "hill_climbing": "HillClimbing",
    "iamalgam_full": "iAMaLGaM_Full",
    "iamalgam_univariate": "iAMaLGaM_Univariate",
    "les": "LES",
    "lm_ma_es": "LM_MA_ES",
    "ma_es": "MA_ES",
    "open_es": "Open_ES",
    "pgpe": "PGPE",
    "rm_es": "Rm_ES",
    "sep_cma_es": "Sep_CMA_ES",
    "simple_es": "SimpleES",
    "simulated_annealing": "SimulatedAnnealing",
    "snes": "SNES",
    "xnes": "xNES",
}

# strategies for truncated unrolls (``meta.truncation > 0``): each member keeps its own inner
# state from one truncation to the next (see evoplastic.meta.truncated)
TRUNCATED_STRATEGIES = {
    "noise_reuse_es": "NoiseReuseES",
    "pes": "PersistentES",
}

DEFAULT_OPTIMIZER = {"name": "adam", "learning_rate": 0.05}


class StrategyError(ValueError):
    """A strategy configuration that cannot be built; ``field`` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_schedule(spec: dict[str, Any]) -> optax.Schedule:
    """``{"schedule": "cosine_decay_schedule", "init_value": 0.01, "decay_steps": 600}``
    -> ``optax.cosine_decay_schedule(init_value=0.01, decay_steps=600)``: a learning rate
    that changes with the optimizer's step count."""
    spec = dict(spec)
    name = spec.pop("schedule", None)
    factory = getattr(optax, str(name), None)
    if not isinstance(name, str) or not name.endswith("_schedule") or not callable(factory):
        raise StrategyError("optimizer.learning_rate.schedule", f"unknown optax schedule {name!r}")
    return factory(**spec)


def make_optimizer(spec: dict[str, Any]) -> optax.GradientTransformation:
    """``{"name": "adam", "learning_rate": 0.05}`` -> ``optax.adam(learning_rate=0.05)``.

    ``learning_rate`` may be a schedule, ``{"schedule": "cosine_decay_schedule",
    "init_value": 0.01, "decay_steps": 600}`` (see :func:`make_schedule`)."""
    spec = dict(spec)
    name = spec.pop("name", None)
    factory = getattr(optax, str(name), None)
    if not isinstance(name, str) or not callable(factory):
        raise StrategyError("strategy.optimizer.name", f"unknown optax optimizer {name!r}")
    try:
        if isinstance(spec.get("learning_rate"), dict):
            spec["learning_rate"] = make_schedule(spec["learning_rate"])
        return factory(**spec)
    except TypeError as err:
        raise StrategyError("strategy.optimizer", str(err)) from None


def make(
    name: str,
    population_size: int,
    solution,
    std_init: float = 0.5,
    params: dict[str, float] | None = None,
    optimizer: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
):
    """Build an evosax strategy and its params.

    Args:
      name: a key of :data:`STRATEGIES` (``"cma_es"``, ``"open_es"``, ``"snes"``, ...) or
        of :data:`TRUNCATED_STRATEGIES` (``"pes"``, ``"noise_reuse_es"``).
      population_size: members per generation.
      solution: a genome pytree whose structure the population takes.
      std_init: initial search scale.
      params: overrides of fields of the strategy's ``Params``.
      optimizer: optax optimizer spec for strategies that take one (default adam, lr 0.05).
      options: extra constructor options (e.g. ``use_antithetic_sampling``).

    Returns:
      ``(strategy, es_params)``.

    Raises:
      StrategyError: naming the config field at fault.
    """
    registry = STRATEGIES | TRUNCATED_STRATEGIES
    if name not in registry:
        raise StrategyError("strategy.name", f"unknown strategy {name!r}{_suggest(name, registry)}")
    cls = _ALGORITHMS[registry[name]]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in accepted or key in ("population_size", "solution"):
            raise StrategyError(
                f"strategy.options.{key}",
                f"{name} takes no option {key!r}{_suggest(key, accepted)}",
            )
        kwargs[key] = value
    if "optimizer" in accepted:
        kwargs["optimizer"] = make_optimizer(optimizer or DEFAULT_OPTIMIZER)
    elif optimizer:
        raise StrategyError("strategy.optimizer", f"{name} takes no optimizer")
    if "std_schedule" in accepted:
        kwargs["std_schedule"] = optax.constant_schedule(std_init)
    if population_size <= 0:
        raise StrategyError("strategy.population_size", f"must be > 0, got {population_size}")
    try:
        strategy = cls(population_size=population_size, solution=solution, **kwargs)
        es_params = strategy.default_params
    except AssertionError as err:
        raise StrategyError("strategy.population_size", f"{name}: {err}") from None
    except (ArithmeticError, ValueError, TypeError, IndexError) as err:  # e.g. a tiny population
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise StrategyError(
            "strategy.population_size",
            f"{name} cannot be built with population_size {population_size}"
            f" ({type(err).__name__}{': ' + first if first else ''})",
        ) from None
    fields = set(getattr(es_params, "__dataclass_fields__", {}))
    replace = {}
    if "std_init" in fields:
        replace["std_init"] = jnp.asarray(std_init, jnp.float32)
    for key, value in (params or {}).items():
        if key not in fields:
            raise StrategyError(
                f"strategy.params.{key}",
                f"{name} has no parameter {key!r}{_suggest(key, fields)}"
                f" (parameters: {', '.join(sorted(fields)) or 'none'})",
            )
        replace[key] = jnp.asarray(value, jnp.asarray(getattr(es_params, key)).dtype)
    if replace:
        es_params = es_params.replace(**replace)
    return strategy, es_params
