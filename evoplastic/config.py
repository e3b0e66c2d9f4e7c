"""Experiment configuration: typed sections, validated once, with one clear error per problem.

The CLI parses YAML into a dict and calls :func:`parse`; library functions never read
config files. Errors are :class:`ConfigError` whose message names the field
(``strategy.population_size: must be > 0, got 0``) and, for unknown keys, suggests the
nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from . import rules, tasks
from .networks import ACTIVATIONS, FEEDBACK

BACKENDS = ("local", "ray")
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")


class ConfigError(ValueError):
    """An invalid configuration; the message names the field and what is wrong."""


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(path: str, value: Any, tp) -> Any:
    """Check ``value`` against a simple annotation; returns the (converted) value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(path, value, option)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return tuple(_check_value(f"{path}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported annotation {tp!r}")


def _from_dict(cls, data: Any, path: str):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"{where}: unknown key{_suggest(str(key), fields)}")
        sub = hints[key]
        if dataclasses.is_dataclass(sub):
            kwargs[key] = _from_dict(sub, value, where)
        else:
            kwargs[key] = _check_value(where, value, sub)
    return cls(**kwargs)


SET_BY_TASK = ("network", "shapes")  # filled in by the task, never by a config


def _kwargs_of(factory, data: dict, path: str, skip=SET_BY_TASK) -> dict:
    """Validate free-form parameters against a factory's keyword arguments and annotations."""
    sig = inspect.signature(factory)
    hints = typing.get_type_hints(factory)
    params = {n: p for n, p in sig.parameters.items() if n not in skip}
    out = {}
    for key, value in data.items():
        if key not in params:
            raise ConfigError(f"{path}.{key}: unknown key{_suggest(key, params)}")
        out[key] = _check_value(f"{path}.{key}", value, hints.get(key, Any))
    return out


def _positive(path: str, value, strict: bool = True):
    if (strict and value <= 0) or (not strict and value < 0):
        raise ConfigError(f"{path}: must be {'>' if strict else '>='} 0, got {value}")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Options of the plastic network; each task family uses those that apply to it."""

    lr: float = 0.1
    lr_decay: float = 0.02
    activation: str = "linear"
    w_init_norm: float = 0.5  # rate (single-layer) networks
    hidden: tuple[int, ...] = (32,)  # layered networks
    output_activation: str = "tanh"
    w_init_std: float = 1.0
    w_clip: float = 0.0
    feedback: str = "none"
    learn_init: bool = False  # meta-learn the initial weights too (layered networks)


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    name: str = "cma_es"
    population_size: int = 16
    std_init: float = 0.3
    params: dict = dataclasses.field(default_factory=dict)
    optimizer: dict | None = None
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """How a population is evaluated.

    ``matmul_precision``: precision of float32 matrix products, set process-wide when the
    experiment is built: ``float32`` (default: the same numbers on CPU and GPU),
    ``tensorfloat32`` or ``bfloat16`` (faster on GPUs, fewer mantissa bits), ``default``
    (the device's default: TF32 on recent NVIDIA GPUs).
    """

    instances: int = 8
    common_instances: bool = True
    shard_size: int | None = None
    matmul_precision: str = "float32"


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """Where and how the Ray backend runs; not part of what a run computes.

    ``address``: a Ray cluster (``HOST:PORT``, ``ray://HOST:10001`` or ``auto``); none starts
    a local Ray instance. ``workers``: actors (default: one per GPU, else one per CPU).
    ``gpus_per_worker``: GPUs per actor (default: 1 on a cluster with GPUs, else 0).
    ``shards_per_worker``: shards per actor when ``evaluation.shard_size`` is not set.
    ``max_restarts``: restarts of a killed actor. ``compilation_cache``: JAX's persistent
    compilation cache directory of the actors (empty: none).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    shards_per_worker: int = 4
    max_restarts: int = 3
    startup_timeout_s: float = 300.0
    compilation_cache: str = "~/.cache/evoplastic/jax"


@dataclasses.dataclass(frozen=True)
class TestConfig:
    every: int = 25
    instances: int = 32
    final_instances: int = 100
    variants: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 10
    keep: int = 3


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where records go besides ``metrics.jsonl`` (see :mod:`evoplastic.loggers`).

    ``mlflow``: also log to MLflow (the ``mlflow`` extra). ``tracking_uri``: MLflow's store
    (default: a local file store, ``<run_dir>/mlruns``; no server). ``experiment``: the
    MLflow experiment name. Not part of what a run computes.
    """

    mlflow: bool = False
    tracking_uri: str | None = None
    experiment: str = "evoplastic"


@dataclasses.dataclass(frozen=True)
class GradientConfig:
    """Options of ``meta.optimizer: gradient`` (backprop through the unrolled inner loop)."""

    optimizer: dict = dataclasses.field(
        default_factory=lambda: {"name": "adam", "learning_rate": 0.01}
    )
    clip_norm: float = 1.0  # clip the meta-gradient to this global norm; 0: no clipping
    remat: str = "nested"  # none | step | nested (see evoplastic.meta.unroll)
    init_std: float | None = None  # initial genome = rule.init + init_std * N(0, 1);
    # None: strategy.std_init, the same distribution an ES samples its first population from


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """The outer loop: ``es`` (evosax, ``strategy`` section) or ``gradient`` (optax)."""

    optimizer: str = "es"
    truncation: int = 0  # inner steps per generation (a truncated unroll); 0: the whole loop
    gradient: GradientConfig = dataclasses.field(default_factory=GradientConfig)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment. ``task`` and ``rule`` are ``{"name": ..., **params}`` mappings."""

    name: str = "experiment"
    seed: int = 0
    generations: int = 100
    backend: str = "local"
    task: dict = dataclasses.field(default_factory=lambda: {"name": "pca"})
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    rule: dict = dataclasses.field(default_factory=lambda: {"name": "polynomial"})
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    test: TestConfig = dataclasses.field(default_factory=TestConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        """The config as nested plain mappings (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)


def _defaults(factory, skip=SET_BY_TASK) -> dict:
    out = {}
    for n, p in inspect.signature(factory).parameters.items():
        if n in skip or p.default is inspect.Parameter.empty:
            continue
        default = p.default
        if isinstance(default, dataclasses.Field) or default is dataclasses.MISSING:
            continue
        out[n] = default
    for f in dataclasses.fields(factory) if dataclasses.is_dataclass(factory) else ():
        if f.name not in skip and f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _named(section: dict, path: str, registry: dict) -> tuple[str, dict]:
    """Validate a ``{"name": ..., **params}`` section and fill in the defaults."""
    params = dict(section)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: required, one of {', '.join(registry)}")
    if name not in registry:
        raise ConfigError(f"{path}.name: unknown {path} {name!r}{_suggest(name, registry)}")
    return name, _defaults(registry[name]) | _kwargs_of(registry[name], params, path)


def parse(data: Any) -> Config:
    """Validate a config mapping (from YAML) and fill in defaults.

    Raises:
      ConfigError: naming the first field at fault.
    """
    cfg = _from_dict(Config, data, "")
    task_name, task_params = _named(cfg.task, "task", tasks.TASKS)
    rule_name, rule_params = _named(cfg.rule, "rule", rules.RULES)
    _positive("generations", cfg.generations)
    if cfg.backend not in BACKENDS:
        raise ConfigError(
            f"backend: unknown backend {cfg.backend!r}{_suggest(cfg.backend, BACKENDS)}"
            f" (available: {', '.join(BACKENDS)})"
        )
    for field in ("lr", "w_init_norm"):
        _positive(f"network.{field}", getattr(cfg.network, field))
    _positive("network.lr_decay", cfg.network.lr_decay, strict=False)
    for field in ("activation", "output_activation"):
        value = getattr(cfg.network, field)
        if value not in ACTIVATIONS:
            raise ConfigError(
                f"network.{field}: unknown activation {value!r}"
                f"{_suggest(value, ACTIVATIONS)} (one of {', '.join(ACTIVATIONS)})"
            )
    if cfg.network.feedback not in FEEDBACK:
        raise ConfigError(
            f"network.feedback: unknown pathway {cfg.network.feedback!r}"
            f" (one of {', '.join(FEEDBACK)})"
        )
    if any(h <= 0 for h in cfg.network.hidden):
        raise ConfigError(
            f"network.hidden: layer sizes must be > 0, got {list(cfg.network.hidden)}"
        )
    _positive("strategy.population_size", cfg.strategy.population_size)
    _positive("strategy.std_init", cfg.strategy.std_init)
    _positive("evaluation.instances", cfg.evaluation.instances)
    if cfg.evaluation.shard_size is not None:
        _positive("evaluation.shard_size", cfg.evaluation.shard_size)
    if cfg.evaluation.matmul_precision not in MATMUL_PRECISIONS:
        value = cfg.evaluation.matmul_precision
        raise ConfigError(
            f"evaluation.matmul_precision: unknown precision {value!r}"
            f"{_suggest(value, MATMUL_PRECISIONS)} (one of {', '.join(MATMUL_PRECISIONS)})"
        )
    if cfg.ray.workers is not None:
        _positive("ray.workers", cfg.ray.workers)
    if cfg.ray.gpus_per_worker is not None:
        _positive("ray.gpus_per_worker", cfg.ray.gpus_per_worker, strict=False)
    _positive("ray.shards_per_worker", cfg.ray.shards_per_worker)
    _positive("ray.max_restarts", cfg.ray.max_restarts, strict=False)
    _positive("ray.startup_timeout_s", cfg.ray.startup_timeout_s)
    _positive("test.every", cfg.test.every, strict=False)
    _positive("test.instances", cfg.test.instances)
    _positive("test.final_instances", cfg.test.final_instances)
    _positive("checkpoint.every", cfg.checkpoint.every)
    _positive("checkpoint.keep", cfg.checkpoint.keep)
    for vname, overrides in cfg.test.variants.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"test.variants.{vname}: expected a mapping of task parameters")
        _kwargs_of(tasks.TASKS[task_name], overrides, f"test.variants.{vname}")
    for key, value in task_params.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            if key in ("dim", "steps", "scale_min", "scale_max"):
                raise ConfigError(f"task.{key}: must be > 0, got {value}")
    _check_meta(cfg, task_params)
    return dataclasses.replace(
        cfg, task={"name": task_name, **task_params}, rule={"name": rule_name, **rule_params}
    )


META_OPTIMIZERS = ("es", "gradient")


def _check_meta(cfg: Config, task_params: dict) -> None:
    """The ``meta`` section, and how it fits the strategy and the task."""
    from .meta.strategies import TRUNCATED_STRATEGIES
    from .meta.unroll import REMAT

    m = cfg.meta
    if m.optimizer not in META_OPTIMIZERS:
        raise ConfigError(
            f"meta.optimizer: unknown meta-optimizer {m.optimizer!r}"
            f"{_suggest(m.optimizer, META_OPTIMIZERS)} (one of {', '.join(META_OPTIMIZERS)})"
        )
    _positive("meta.truncation", m.truncation, strict=False)
    steps = task_params.get("steps")
    if m.truncation and isinstance(steps, int) and steps % m.truncation:
        raise ConfigError(f"meta.truncation: must divide task.steps ({steps}), got {m.truncation}")
    g = m.gradient
    _positive("meta.gradient.clip_norm", g.clip_norm, strict=False)
    if g.init_std is not None:
        _positive("meta.gradient.init_std", g.init_std, strict=False)
    if g.remat not in REMAT:
        raise ConfigError(
            f"meta.gradient.remat: unknown policy {g.remat!r}{_suggest(g.remat, REMAT)}"
            f" (one of {', '.join(REMAT)})"
        )
    if not isinstance(g.optimizer.get("name"), str):
        raise ConfigError("meta.gradient.optimizer.name: required (an optax optimizer, e.g. adam)")
    truncated_es = cfg.strategy.name in TRUNCATED_STRATEGIES
    if m.optimizer == "es" and truncated_es and not m.truncation:
        raise ConfigError(
            f"meta.truncation: strategy {cfg.strategy.name!r} runs over truncated unrolls;"
            " set meta.truncation to the inner steps per generation (> 0)"
        )
    if m.optimizer == "es" and m.truncation and not truncated_es:
        raise ConfigError(
            f"meta.truncation: strategy {cfg.strategy.name!r} needs whole unrolls (0);"
            f" truncated unrolls work with {' or '.join(TRUNCATED_STRATEGIES)}"
            " or meta.optimizer: gradient"
        )


def set_override(data: dict, assignment: str) -> dict:
    """Apply ``"strategy.population_size=32"`` to a raw config mapping (YAML value syntax)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. generations=50")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML") from None
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {assignment!r}: {'.'.join(parts[: i + 1])} is not a section"
            )
        node = child
    node[parts[-1]] = value
    return data


def load(path: str | Path, overrides: tuple[str, ...] = ()) -> Config:
    """Read a YAML config file, apply ``key=value`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for assignment in overrides:
        set_override(data, assignment)
    return parse(data)


def dump(cfg: Config) -> str:
    """The resolved config as YAML (what a run directory stores)."""
    return yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False)


def experiment_dump(cfg: Config) -> str:
    """The config without where it runs (``backend``, ``ray``) or logs (``logging``): what a
    run computes.

    Both backends compute the same numbers, so a run started on one can be resumed on the
    other; checkpoints record a digest of this text, not of :func:`dump`.
    """
    data = _plain(cfg.to_dict())
    data.pop("ray")
    data.pop("logging")
    data["backend"] = "local"
    if data["evaluation"]["shard_size"] is None:  # as written before the field existed
        del data["evaluation"]["shard_size"]
    if data["evaluation"]["matmul_precision"] == "float32":  # likewise
        del data["evaluation"]["matmul_precision"]
    return yaml.safe_dump(data, sort_keys=False)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


__all__ = [
    "BACKENDS",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "dump",
    "experiment_dump",
    "load",
    "parse",
    "set_override",
]
