"""Checking a config mapping against the schema, the registries and each other section.

:func:`parse` is the one entry point: a mapping (from YAML) in, a :class:`Config` out, or a
:class:`~evoplastic.config.fields.ConfigError` naming the first field at fault.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import optax

from .. import rules, tasks
from ..meta.strategies import TRUNCATED_STRATEGIES
from ..meta.unroll import REMAT
from ..networks import ACTIVATIONS, FEEDBACK, KINDS, MODULATION
from ..tasks import custom
from .fields import (
    SET_BY_TASK,
    ConfigError,
    _check_value,
    _defaults,
    _from_dict,
    _kwargs_of,
    _named,
    _positive,
    _show,
    _suggest,
)
from .schema import BACKENDS, MATMUL_PRECISIONS, Config


def parse(data: Any) -> Config:
    """Validate a config mapping (from YAML) and fill in defaults.

    Raises:
      ConfigError: naming the first field at fault.
    """
    cfg = _from_dict(Config, data, "")
    task_name, task_params, task_factory = _task(cfg.task)
    rule_section, init_from = _init_from(cfg.rule)
    rule_name, rule_params = _named(rule_section, "rule", rules.RULES)
    if init_from is not None:
        rule_params["init_from"] = init_from
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
    if cfg.evaluation.loss_clip is not None and not 0 < cfg.evaluation.loss_clip < math.inf:
        raise ConfigError(
            "evaluation.loss_clip: must be a finite number > 0 (or none),"
            f" got {cfg.evaluation.loss_clip!r}"
        )
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
    _check_task_values("task", task_params)
    for vname, overrides in cfg.test.variants.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"test.variants.{vname}: expected a mapping of task parameters")
        if task_factory is None:
            raise ConfigError(f"test.variants.{vname}: not available for a Python task object")
        checked = _kwargs_of(task_factory, overrides, f"test.variants.{vname}")
        _check_task_values(f"test.variants.{vname}", task_params | checked)
    if cfg.strategy.optimizer is not None:
        check_optimizer("strategy.optimizer", cfg.strategy.optimizer)
    _check_meta(cfg, task_params)
    if cfg.time_budget_s is not None:
        _positive("time_budget_s", cfg.time_budget_s)
    _check_compare(cfg, data)
    return dataclasses.replace(
        cfg, task={"name": task_name, **task_params}, rule={"name": rule_name, **rule_params}
    )


def _init_from(section) -> tuple[Any, str | list[str] | None]:
    """``(section without init_from, init_from)``: the run or rule file a search starts
    from (see evoplastic/start.py); the file itself is read when a run starts."""
    if not isinstance(section, dict) or "init_from" not in section:
        return section, None
    section = dict(section)
    value = section.pop("init_from")
    if value is None:
        return section, None

    def bad(what):
        return ConfigError(
            f"rule.init_from: expected the path of a run directory or a best_rule.json (or a"
            f" list of them), got {what!r}"
        )

    if isinstance(value, list):
        if not value:
            raise bad(value)
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise bad(item)
        return section, list(value)
    if not isinstance(value, str) or not value.strip():
        raise bad(value)
    return section, value


def _task(section) -> tuple[str, dict, Any]:
    """``(name, params, factory)`` of the ``task`` section: a registered family's name, or
    a user factory's import path, ``"package.module:make_task"`` (see tasks/custom.py)."""
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


def _schedule(path: str, spec: dict):
    kwargs = {k: v for k, v in spec.items() if k != "schedule"}
    return getattr(optax, spec["schedule"])(**kwargs)


def _check_schedule(where: str, spec: dict) -> None:
    """A learning-rate schedule, ``{schedule: cosine_decay_schedule, init_value: 0.01,
    decay_steps: 600}``: an optax ``*_schedule`` whose other keys are its numeric arguments
    and which gives a finite, non-negative rate at step 0."""
    name = spec.get("schedule")
    factory = getattr(optax, name, None) if isinstance(name, str) else None
    if (
        not isinstance(name, str)
        or not name.endswith("_schedule")
        or not inspect.isfunction(factory)
    ):
        names = [n for n in dir(optax) if n.endswith("_schedule")]
        hint = _suggest(name, names) if isinstance(name, str) else ""
        raise ConfigError(
            f"{where}.schedule: expected an optax schedule (cosine_decay_schedule, ...),"
            f" got {name!r}{hint}"
        )
    params = inspect.signature(factory).parameters
    for key, value in spec.items():
        if key == "schedule":
            continue
        if key not in params:
            raise ConfigError(
                f"{where}.{_show(key)}: not an argument of optax.{name}{_suggest(str(key), params)}"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{where}.{_show(key)}: expected a finite number, got {value!r}")
    try:
        rate = float(_schedule(where, spec)(0))
    except Exception as err:  # optax's own checks: one line naming the section
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{where}: optax.{name} rejects these arguments: {reason}") from None
    if not math.isfinite(rate) or rate < 0:
        raise ConfigError(f"{where}: the rate at step 0 must be finite and >= 0, got {rate}")


def check_optimizer(path: str, spec) -> None:
    """An optax optimizer section, ``{name: adamw, learning_rate: 1e-3, ...}``, before use.

    The name must be an optax optimizer and every other key one of its arguments, with a value
    of the argument's kind (numbers where optax takes numbers); the optimizer is then built
    and stepped once on a two-number parameter, so an argument optax rejects is found here.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping like {{name: adam, learning_rate: 0.01}}")
    name = spec.get("name")
    factory = getattr(optax, name, None) if isinstance(name, str) else None
    if not isinstance(name, str) or name.startswith("_") or not inspect.isfunction(factory):
        names = [n for n in dir(optax) if not n.startswith("_")]
        hint = _suggest(name, names) if isinstance(name, str) else ""
        raise ConfigError(
            f"{path}.name: expected an optax optimizer (adam, sgd, ...), got {name!r}{hint}"
        )
    params = inspect.signature(factory).parameters
    for key, value in spec.items():
        if key == "name":
            continue
        where = f"{path}.{_show(key)}"
        if key not in params:
            raise ConfigError(
                f"{where}: not an argument of optax.{name}{_suggest(str(key), params)}"
            )
        default = params[key].default
        if key == "learning_rate" and isinstance(value, dict):
            _check_schedule(where, value)
            continue
        number = key in ("learning_rate",) or (
            isinstance(default, int | float) and not isinstance(default, bool)
        )
        if number:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be finite, got {value}")
            if key == "learning_rate" and value < 0:
                raise ConfigError(f"{where}: must be >= 0, got {value}")
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        elif not isinstance(value, int | float | str | bool | type(None)):
            raise ConfigError(f"{where}: expected a number, text or true/false, got {value!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if isinstance(kwargs.get("learning_rate"), dict):
        kwargs["learning_rate"] = _schedule(path, kwargs["learning_rate"])
    try:
        tx = factory(**kwargs)
        params0 = np.zeros(2, np.float32)
        tx.update(np.ones(2, np.float32), tx.init(params0), params0)
    except Exception as err:  # optax's own checks, of any kind: one line naming the section
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: optax.{name} rejects these arguments: {reason}") from None


# task parameters that are sizes, counts or scales: > 0 (in task and in every test variant)
POSITIVE_TASK_PARAMS = (
    "dim",
    "steps",
    "scale_min",
    "scale_max",
    "train_scale_min",
    "train_scale_max",
    "support_size",
    "query_size",
    "epochs",
    "ways",
    "shots",
    "query_per_class",
    "input_scale",
)


def _check_task_values(path: str, params: dict) -> None:
    for key, value in params.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{path}.{key}: must be finite, got {value}")
            if key in POSITIVE_TASK_PARAMS and value <= 0:
                raise ConfigError(f"{path}.{key}: must be > 0, got {value}")
    for low, high in (
        ("scale_min", "scale_max"),
        ("train_scale_min", "train_scale_max"),
        ("amp_min", "amp_max"),
    ):
        lo, hi = params.get(low), params.get(high)
        if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
            raise ConfigError(f"{path}.{low}: must be <= {high} ({hi}), got {lo}")
    fraction = params.get("label_fraction")
    if isinstance(fraction, int | float) and not 0 < fraction <= 1:
        raise ConfigError(f"{path}.label_fraction: must be in (0, 1], got {fraction}")


META_OPTIMIZERS = ("es", "gradient")


SELECTIONS = ("strategy", "learned")


def _check_meta(cfg: Config, task_params: dict) -> None:
    """The ``meta`` section, and how it fits the strategy and the task."""
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
    check_optimizer("meta.gradient.optimizer", g.optimizer)
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
