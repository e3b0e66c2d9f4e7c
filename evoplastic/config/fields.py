"""The checking machinery: typed sections from mappings, one message naming the field.

:func:`_from_dict` builds a frozen dataclass section from a mapping, rejecting unknown keys
(with the nearest valid one suggested) and values of the wrong kind; :func:`_kwargs_of`
does the same for free-form parameters checked against a factory's signature (task and
rule parameters).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from typing import Any


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
