"""Config files and overrides: YAML 1.2 numbers, ``key=value`` overrides, what a run stores."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .fields import ConfigError
from .schema import Config
from .validate import parse


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's numbers: ``1e-3`` and ``3E+2`` are floats.

    PyYAML implements YAML 1.1, whose floats need a dot (``1.0e-3``), so ``lr: 1e-3`` was
    read as the text ``'1e-3'``. Everything else is the safe loader's.
    """


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str):
    """Parse YAML text safely, with YAML 1.2 numbers (see :class:`Loader`)."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


def set_override(data: dict, assignment: str) -> dict:
    """Apply ``"strategy.population_size=32"`` to a raw config mapping (YAML value syntax)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. generations=50")
    try:
        value = safe_load(raw) if raw else ""
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
        data = safe_load(path.read_text())
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
    if data["evaluation"]["loss_clip"] is None:  # likewise
        del data["evaluation"]["loss_clip"]
    return yaml.safe_dump(data, sort_keys=False)


def plain(value):
    """``value`` with tuples turned into lists, recursively: what YAML and JSON write."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value
