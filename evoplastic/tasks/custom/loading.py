"""Tasks named by import path (``task: "mypackage.module:make_task"``), genomes from configs."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable

import jax.numpy as jnp

from .adapters import wrap
from .errors import FitnessError, _first_line

PYTHON_PREFIX = "python:"  # task names of objects handed to evoplastic.evolve in process


_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(name: str) -> bool:
    """``"package.module:attribute"`` (what configs use to name a user task)."""
    return isinstance(name, str) and bool(_PATH.match(name))


def load_factory(path: str) -> Callable:
    """Import ``"package.module:attribute"``; raises :class:`FitnessError` in one line."""
    if isinstance(path, str) and path.startswith(PYTHON_PREFIX):
        raise FitnessError(
            f"{path!r} is a Python object that was given to evoplastic.evolve or"
            " meta_gradient; continue such a run from Python (resume=True with the same"
            " fitness), or name a factory by import path, 'package.module:function'"
        )
    if not is_import_path(path):
        raise FitnessError(f"{path!r} is not an import path of the form 'package.module:function'")
    module_name, _, attr = path.partition(":")
    try:
        module = _import(module_name)
    except Exception as err:  # noqa: BLE001 (any import failure is the user's to fix)
        raise FitnessError(
            f"cannot import module {module_name!r} of {path!r}:"
            f" {type(err).__name__}: {_first_line(err)}"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FitnessError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FitnessError(
            f"{path!r} is a {type(obj).__name__}, not a factory (a function returning a task"
            " family or a fitness function)"
        )
    return obj


def _import(module_name: str):
    """Import a module from ``sys.path`` or, failing that, the current directory (as a
    script run from there would; the ``evoplastic`` command does not have it on its path)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        if (
            err.name != top
            or cwd in sys.path
            or not (
                os.path.isdir(os.path.join(cwd, top))
                or os.path.isfile(os.path.join(cwd, top + ".py"))
            )
        ):
            raise
        sys.path.insert(0, cwd)
        return importlib.import_module(module_name)


def genome_from_config(value):
    """``task.genome`` of a config: a list of numbers, or a length (zeros)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise FitnessError(f"task.genome: a length must be > 0, got {value}")
        return jnp.zeros(value, jnp.float32)
    if isinstance(value, list | tuple) and value:
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return jnp.asarray(value, jnp.float32)
    raise FitnessError(
        f"task.genome: expected a list of numbers or a length (e.g. 3), got {value!r}"
    )


def make_imported(path: str, network: dict | None = None, genome=None, **params):
    """Call the factory at ``path`` with ``params``; a task family for what it returns."""
    factory = load_factory(path)
    if "network" in inspect.signature(factory).parameters:
        params["network"] = network
    try:
        obj = factory(**params)
    except (TypeError, ValueError) as err:
        raise FitnessError(f"{path}: {type(err).__name__}: {_first_line(err)}") from None
    return wrap(obj, genome_from_config(genome), name=path)
