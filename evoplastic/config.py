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
from .networks import ACTIVATIONS

BACKENDS = ("local", "ray")


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


def _kwargs_of(factory, data: dict, path: str, skip=("network",)) -> dict:
    """Validate free-form parameters against a factory's keyword arguments and defaults."""
    sig = inspect.signature(factory)
    params = {n: p for n, p in sig.parameters.items() if n not in skip}
    out = {}
    for key, value in data.items():
        if key not in params:
            raise ConfigError(f"{path}.{key}: unknown key{_suggest(key, params)}")
        default = params[key].default
        tp = type(default) if default is not inspect.Parameter.empty else Any
        if tp is tuple:
            tp = tuple[str, ...]
        out[key] = _check_value(f"{path}.{key}", value, tp)
    return out


def _positive(path: str, value, strict: bool = True):
    if (strict and value <= 0) or (not strict and value < 0):
        raise ConfigError(f"{path}: must be {'>' if strict else '>='} 0, got {value}")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    lr: float = 0.1
    lr_decay: float = 0.02
    activation: str = "linear"
    w_init_norm: float = 0.5


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
    instances: int = 8
    common_instances: bool = True
    shard_size: int | None = None


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
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _defaults(factory, skip=("network",)) -> dict:
    return {
        n: p.default
        for n, p in inspect.signature(factory).parameters.items()
        if n not in skip and p.default is not inspect.Parameter.empty
    }


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
    if cfg.network.activation not in ACTIVATIONS:
        raise ConfigError(
            f"network.activation: unknown activation {cfg.network.activation!r}"
            f"{_suggest(cfg.network.activation, ACTIVATIONS)} (one of {', '.join(ACTIVATIONS)})"
        )
    _positive("strategy.population_size", cfg.strategy.population_size)
    _positive("strategy.std_init", cfg.strategy.std_init)
    _positive("evaluation.instances", cfg.evaluation.instances)
    if cfg.evaluation.shard_size is not None:
        _positive("evaluation.shard_size", cfg.evaluation.shard_size)
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
    return dataclasses.replace(
        cfg, task={"name": task_name, **task_params}, rule={"name": rule_name, **rule_params}
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
    """The config without where it runs (``backend``, ``ray``): what a run computes.

    Both backends compute the same numbers, so a run started on one can be resumed on the
    other; checkpoints record a digest of this text, not of :func:`dump`.
    """
    data = _plain(cfg.to_dict())
    data.pop("ray")
    data["backend"] = "local"
    if data["evaluation"]["shard_size"] is None:  # as written before the field existed
        del data["evaluation"]["shard_size"]
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
    "dump",
    "experiment_dump",
    "load",
    "parse",
    "set_override",
]
