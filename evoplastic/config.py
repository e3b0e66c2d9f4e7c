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
from .networks import ACTIVATIONS, FEEDBACK, KINDS, MODULATION

BACKENDS = ("local", "ray")
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")


class ConfigError(ValueError):
    """An invalid configuration; the message names the field and what is wrong."""


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(key) -> str:
    """A key as it appears in a message: plain if it is a one-line name, else its repr."""
    text = str(key)
    return text if isinstance(key, str) and text.isprintable() and text.strip() else repr(key)


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
        where = f"{path}.{_show(key)}" if path else _show(key)
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
            raise ConfigError(f"{path}.{_show(key)}: unknown key{_suggest(str(key), params)}")
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
    kind: str = "default"  # default (the task's own) | layered | recurrent | rate | lif
    modulation: str = "none"  # none | network (a modulatory neuron gates the rule's mod)
    settle: int = 3  # recurrent networks: recurrent steps per input
    traces: bool = False  # layered networks: pre/post activity traces of earlier steps
    trace_decay: float = 0.0  # the traces' decay per step, in [0, 1)
    excitatory: bool = False  # layered networks: plastic weights stay >= 0 (Dale's principle)
    lif: dict = dataclasses.field(default_factory=dict)  # lif networks: LIFNetwork options
    plastic: dict = dataclasses.field(default_factory=dict)  # plastic_recurrent: alpha, learn_w


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
    selection: str = "strategy"  # strategy: the strategy's own; learned: a policy file's
    selection_policy: str | None = None  # the policy file of selection: learned


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """``evoplastic compare``: outer loops run side by side on this config, seed by seed.

    ``methods`` maps a method's name to config sections merged into this config (e.g.
    ``{"meta": {"optimizer": "gradient"}}``); ``threshold`` is the held-out loss whose first
    crossing gives each run's time to threshold. Not part of what a single run computes.
    """

    methods: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    threshold: float | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment. ``task`` and ``rule`` are ``{"name": ..., **params}`` mappings."""

    name: str = "experiment"
    seed: int = 0
    generations: int = 100
    backend: str = "local"
    task: dict | str = dataclasses.field(default_factory=lambda: {"name": "pca"})
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    rule: dict = dataclasses.field(default_factory=lambda: {"name": "polynomial"})
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    test: TestConfig = dataclasses.field(default_factory=TestConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    time_budget_s: float | None = None  # stop training once this much wall time is spent
    compare: CompareConfig = dataclasses.field(default_factory=CompareConfig)
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
    task_name, task_params, task_factory = _task(cfg.task)
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
    if not 0.0 <= cfg.network.trace_decay < 1.0:
        raise ConfigError(f"network.trace_decay: must be in [0, 1), got {cfg.network.trace_decay}")
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
    for field, choices in (("kind", KINDS), ("modulation", MODULATION)):
        value = getattr(cfg.network, field)
        if value not in choices:
            raise ConfigError(
                f"network.{field}: unknown {field} {value!r}{_suggest(value, choices)}"
                f" (one of {', '.join(choices)})"
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
        if task_factory is None:
            raise ConfigError(f"test.variants.{vname}: not available for a Python task object")
        _kwargs_of(task_factory, overrides, f"test.variants.{vname}")
    for key, value in task_params.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            if key in ("dim", "steps", "scale_min", "scale_max"):
                raise ConfigError(f"task.{key}: must be > 0, got {value}")
    _check_meta(cfg, task_params)
    if cfg.time_budget_s is not None:
        _positive("time_budget_s", cfg.time_budget_s)
    _check_compare(cfg, data)
    return dataclasses.replace(
        cfg, task={"name": task_name, **task_params}, rule={"name": rule_name, **rule_params}
    )


def _task(section) -> tuple[str, dict, Any]:
    """``(name, params, factory)`` of the ``task`` section: a registered family's name, or
    a user factory's import path, ``"package.module:make_task"`` (see tasks/custom.py)."""
    from .tasks import custom

    if isinstance(section, str):
        section = {"name": section}
    name = section.get("name")
    if (
        not isinstance(name, str)
        or name in tasks.TASKS
        or not (custom.is_import_path(name) or name.startswith(custom.PYTHON_PREFIX))
    ):
        name, params = _named(section, "task", tasks.TASKS)
        return name, params, tasks.TASKS[name]
    params = {k: v for k, v in section.items() if k not in ("name", "genome")}
    try:
        custom.genome_from_config(section.get("genome"))
        factory = None if name.startswith(custom.PYTHON_PREFIX) else custom.load_factory(name)
    except custom.FitnessError as err:
        field = "task.genome" if str(err).startswith("task.genome") else "task.name"
        raise ConfigError(f"{field}: {str(err).removeprefix('task.genome: ')}") from None
    if factory is not None:
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):
            sig = None
        takes_any = sig is None or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
        )
        if not takes_any:
            try:
                params = _kwargs_of(factory, params, "task")
            except (NameError, TypeError):  # annotations that cannot be resolved
                params = {k: _check_value(f"task.{k}", v, Any) for k, v in params.items()}
            simple = (int, float, str, bool, type(None))
            defaults = {
                k: v
                for k, v in _defaults(factory, skip=SET_BY_TASK + ("genome",)).items()
                if isinstance(v, simple)
            }
            params = defaults | params
    if "genome" in section:
        params["genome"] = section["genome"]
    return name, params, factory


META_OPTIMIZERS = ("es", "gradient")
SELECTIONS = ("strategy", "learned")


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
    _check_selection(cfg)
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


def _check_selection(cfg: Config) -> None:
    """``meta.selection`` and its policy file (which must exist; its content is read by build)."""
    m = cfg.meta
    if m.selection not in SELECTIONS:
        raise ConfigError(
            f"meta.selection: unknown selection {m.selection!r}{_suggest(m.selection, SELECTIONS)}"
            f" (one of {', '.join(SELECTIONS)})"
        )
    if m.selection == "strategy":
        if m.selection_policy is not None:
            raise ConfigError("meta.selection_policy: only used with meta.selection: learned")
        return
    if m.optimizer != "es" or m.truncation:
        raise ConfigError(
            "meta.selection: learned selection drives a plain ES (meta.optimizer: es,"
            " meta.truncation: 0)"
        )
    if not m.selection_policy:
        raise ConfigError(
            "meta.selection_policy: required with meta.selection: learned (a policy file"
            " written by `evoplastic train-selection`)"
        )
    if not Path(m.selection_policy).is_file():
        raise ConfigError(f"meta.selection_policy: file {m.selection_policy!r} not found")


COMPARE_SHARED = ("seed", "time_budget_s", "compare")  # the same for every compared method


def merged(data: dict, over: dict) -> dict:
    """``data`` with the sections of ``over`` merged in (nested mappings merge key by key)."""
    out = dict(data)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def method_data(data: dict, method: str) -> dict:
    """The config mapping of one ``compare.methods`` entry: its sections merged into
    ``data``, without the ``compare`` section."""
    base = {k: v for k, v in data.items() if k != "compare"}
    return merged(base, data["compare"]["methods"][method])


def _check_compare(cfg: Config, data: dict) -> None:
    c = cfg.compare
    if len(set(c.seeds)) != len(c.seeds):
        raise ConfigError(f"compare.seeds: a seed is listed twice, got {list(c.seeds)}")
    for name, over in c.methods.items():
        where = f"compare.methods.{name}"
        if not isinstance(over, dict):
            raise ConfigError(f"{where}: expected a mapping of config sections")
        for key in COMPARE_SHARED:
            if key in over:
                raise ConfigError(f"{where}.{key}: the same for every method; set it at the top")
        try:
            parse(method_data(data, name))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


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
    return parse(load_data(path, overrides))


def load_data(path: str | Path, overrides: tuple[str, ...] = ()) -> dict:
    """The mapping of a YAML config file with ``key=value`` overrides, not yet validated."""
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
    return data


def dump(cfg: Config) -> str:
    """The resolved config as YAML (what a run directory stores)."""
    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)


def experiment_dump(cfg: Config) -> str:
    """The config without where it runs (``backend``, ``ray``) or logs (``logging``): what a
    run computes.

    Both backends compute the same numbers, so a run started on one can be resumed on the
    other; checkpoints record a digest of this text, not of :func:`dump`.
    """
    data = plain(cfg.to_dict())
    if data["meta"]["selection"] == "strategy" and data["meta"]["selection_policy"] is None:
        del data["meta"]["selection"], data["meta"]["selection_policy"]  # as before them
    data.pop("ray")
    data.pop("logging")
    data["backend"] = "local"
    for key in ("time_budget_s", "compare"):  # when to stop and what to compare with:
        data.pop(key, None)  # a budget can be raised before `evoplastic resume`
    if data["evaluation"]["shard_size"] is None:  # as written before the field existed
        del data["evaluation"]["shard_size"]
    if data["evaluation"]["matmul_precision"] == "float32":  # likewise
        del data["evaluation"]["matmul_precision"]
    return yaml.safe_dump(data, sort_keys=False)


def plain(value):
    """``value`` with tuples turned into lists, recursively: what YAML and JSON write."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


__all__ = [
    "BACKENDS",
    "CompareConfig",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "dump",
    "experiment_dump",
    "load",
    "load_data",
    "merged",
    "method_data",
    "parse",
    "set_override",
]
