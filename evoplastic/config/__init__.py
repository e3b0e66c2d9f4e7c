"""Experiment configuration: typed sections, validated once, with one clear error per problem.

The CLI parses YAML into a dict and calls :func:`parse`; library functions never read
config files. Errors are :class:`ConfigError` whose message names the field
(``strategy.population_size: must be > 0, got 0``) and, for unknown keys, suggests the
nearest valid one.

* :mod:`~evoplastic.config.schema` -- the sections (frozen dataclasses) and their defaults;
* :mod:`~evoplastic.config.fields` -- the checking machinery (types, unknown keys);
* :mod:`~evoplastic.config.validate` -- :func:`parse`: a mapping checked against the schema,
  the registries (tasks, rules, strategies, optax) and the other sections;
* :mod:`~evoplastic.config.yaml_io` -- files and ``key=value`` overrides (YAML 1.2 numbers),
  what a run directory stores;
* :mod:`~evoplastic.config.digest` -- the digest of what a run computes.
"""

from .digest import config_digest
from .fields import SET_BY_TASK, ConfigError
from .schema import (
    BACKENDS,
    MATMUL_PRECISIONS,
    CheckpointConfig,
    CompareConfig,
    Config,
    EvaluationConfig,
    GradientConfig,
    LoggingConfig,
    MetaConfig,
    NetworkConfig,
    RayConfig,
    StrategyConfig,
    TestConfig,
)
from .validate import (
    COMPARE_SHARED,
    META_OPTIMIZERS,
    POSITIVE_TASK_PARAMS,
    SELECTIONS,
    check_optimizer,
    merged,
    method_data,
    parse,
)
from .yaml_io import (
    Loader,
    dump,
    experiment_dump,
    load,
    load_data,
    plain,
    safe_load,
    set_override,
)

__all__ = [
    "BACKENDS",
    "COMPARE_SHARED",
    "MATMUL_PRECISIONS",
    "META_OPTIMIZERS",
    "POSITIVE_TASK_PARAMS",
    "SELECTIONS",
    "SET_BY_TASK",
    "CheckpointConfig",
    "CompareConfig",
    "Config",
    "ConfigError",
    "EvaluationConfig",
    "GradientConfig",
    "Loader",
    "LoggingConfig",
    "MetaConfig",
    "NetworkConfig",
    "RayConfig",
    "StrategyConfig",
    "TestConfig",
    "check_optimizer",
    "config_digest",
    "dump",
    "experiment_dump",
    "load",
    "load_data",
    "merged",
    "method_data",
    "parse",
    "plain",
    "safe_load",
    "set_override",
]
