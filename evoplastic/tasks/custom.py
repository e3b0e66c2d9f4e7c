"""Your own fitness functions and task families: wrapping, import paths and checks.

A user fitness is either

* a plain function ``fitness(genome, key) -> loss``: jittable, ``genome`` a pytree of
  arrays shaped like a template, ``key`` a JAX PRNG key, the loss a scalar to minimize; or
* a task family: an object with ``sample(key, split) -> task`` and
  ``inner_loop(rule, genome, task, key) -> (loss, metrics)`` (see
  :mod:`evoplastic.tasks.base` and docs/concepts.md), whose genome is a plasticity rule's.

:class:`FitnessTask` turns a plain function into a task family, so that the trainer,
checkpoints, both backends and the meta-gradient run it as they run the built-in tasks.
Its "rule" (:func:`genome_rule`) is the genome itself.

Configs name either kind by import path, ``task: "mypackage.module:make_task"``: a factory
called with the task section's other keys, returning a task family or a fitness function.
For a fitness function, ``task.genome`` gives the initial genome (a list of numbers, or a
length for zeros) unless the factory returns a :class:`FitnessTask`, which carries it.

:func:`check_fitness` traces a fitness before a run and turns the usual mistakes into one
clear :class:`FitnessError`: not jittable, not a scalar, Python side effects.

Errors inside one member's evaluation are reported with the member's index: a fitness may
call ``jax.experimental.checkify.check(pred, msg)``; every user fitness is evaluated under
``checkify`` (:class:`~evoplastic.backends.local.GenerationStep` with ``checks=True``), and
a failed check stops the run with :class:`~evoplastic.backends.MemberError` naming the
generation and the member. In held-out evaluations and in meta-gradient steps a failed
check counts as a non-finite loss instead.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from ..rules.base import Rule
from .base import split_key

PYTHON_PREFIX = "python:"  # task names of objects handed to evoplastic.evolve in process
_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class FitnessError(ValueError):
    """A user fitness that cannot be used as it is; the message says what and how to fix it."""


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


def is_task_family(obj) -> bool:
    """Whether ``obj`` follows the task-family protocol (``sample`` and ``inner_loop``)."""
    return callable(getattr(obj, "sample", None)) and callable(getattr(obj, "inner_loop", None))


def genome_rule(template) -> Rule:
    """The "rule" of a plain fitness function: the genome itself, starting at ``template``.

    Its ``update`` is never called (a fitness function has no plastic network);
    ``describe`` prints the genome.
    """
    template = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), template)

    def update(genome, signals):
        raise FitnessError("a fitness function's genome is not a plasticity rule")

    def describe(genome) -> str:
        leaves = jax.tree.leaves(genome)
        flat = np.concatenate([np.ravel(np.asarray(x)) for x in leaves]) if leaves else []
        return "genome = [" + ", ".join(f"{x:.4g}" for x in flat) + "]"

    return Rule(name="genome", init=lambda key: template, update=update, describe=describe)


def failed(err) -> jax.Array:
    """Whether a ``checkify`` error value holds a failed check (traceable)."""
    preds = list(getattr(err, "_pred", {}).values())
    if not preds:
        return jnp.zeros((), bool)
    return jnp.any(jnp.stack([jnp.any(p) for p in preds]))


def nan_on_failed_check(fn: Callable) -> Callable:
    """``fn`` (returning a loss, or ``(loss, metrics)``) with failed checks as a NaN loss."""
    checked = checkify.checkify(fn, errors=checkify.user_checks)

    def run(*args):
        err, out = checked(*args)
        bad = failed(err)
        if isinstance(out, tuple):
            loss, metrics = out
            return jnp.where(bad, jnp.nan, loss), metrics
        return jnp.where(bad, jnp.nan, out)

    return run


def _as_loss(value) -> jax.Array:
    return jnp.asarray(value, jnp.result_type(float))


@dataclasses.dataclass(frozen=True, eq=False)
class FitnessTask:
    """A plain ``fitness(genome, key) -> loss`` as a task family.

    An instance of the family is a key: ``sample(key, split)`` folds the split in (so
    held-out keys never meet training keys), and ``inner_loop`` calls the fitness with it.
    A training evaluation averages ``fitness(genome, key_j)`` over ``evaluation.instances``
    keys. The family is also steppable with one step (the meta-gradient's unroll): the
    "inner state" is the loss.

    Attributes:
      fitness: the user's function.
      genome_template: the initial genome (the search mean of generation 0).
      name: how configs and run directories name it.

    Example::

        task = FitnessTask(lambda g, k: jnp.sum((g - 1.0) ** 2), jnp.zeros(3))
    """

    fitness: Callable
    genome_template: Any
    name: str = "fitness"

    metric_names = ()
    steps = 1
    uses_rules = False  # no plasticity rule: fixed-rule baselines do not apply
    checks = True  # evaluate under checkify, report failed checks with the member index

    @property
    def rule(self) -> Rule:
        """The genome as the rule (:func:`genome_rule`)."""
        return genome_rule(self.genome_template)

    def sample(self, key: jax.Array, split: str) -> jax.Array:
        """An instance: the key with the split folded in."""
        return split_key(key, split)

    def inner_loop(self, rule, genome, task, key=None):
        """``(fitness(genome, task), {})``; a failed check gives a NaN loss."""
        return _as_loss(nan_on_failed_check(self.fitness)(genome, task)), {}

    def train_fitness(self, rule, instances: int) -> Callable:
        """``fitness(genome, key)``: the mean over ``instances`` training keys, unchecked
        (the generation step evaluates it under ``checkify``)."""

        def fitness(genome, key):
            def one(j):
                return _as_loss(
                    self.fitness(genome, self.sample(jax.random.fold_in(key, j), "train"))
                )

            return jnp.mean(jax.vmap(one)(jnp.arange(instances)))

        return fitness

    def init_inner(self, task, key=None) -> jax.Array:
        """The one-step inner state before the step: a zero loss."""
        return jnp.zeros((), jnp.result_type(float))

    def inner_step(self, rule, genome, task, state, t) -> jax.Array:
        """The only step: the loss (a failed check gives NaN)."""
        return _as_loss(nan_on_failed_check(self.fitness)(genome, task))

    def score(self, task, state):
        """``(loss, {})`` of the inner state."""
        return state, {}


@dataclasses.dataclass(frozen=True, eq=False)
class CheckedFamily:
    """A user's task family whose ``checkify`` checks are reported per member.

    Training evaluations run the family's inner loop unchanged under ``checkify``; held-out
    evaluations and the stepwise API (meta-gradients) count a failed check as a NaN loss.
    Every other attribute is the family's own.
    """

    family: Any

    checks = True

    def __getattr__(self, name):
        if name.startswith("__") or "family" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["family"], name)

    def sample(self, key, split):
        """The family's instance."""
        return self.family.sample(key, split)

    def inner_loop(self, rule, genome, task, key):
        """The family's inner loop; a failed check gives a NaN loss."""
        return nan_on_failed_check(self.family.inner_loop)(rule, genome, task, key)

    def train_fitness(self, rule, instances: int) -> Callable:
        """The family's training fitness, unchecked (evaluated under ``checkify``)."""
        from ..backends.local import task_fitness

        return task_fitness(self.family, rule, instances)

    def score(self, task, state):
        """The family's score; a failed check gives a NaN loss."""
        return nan_on_failed_check(self.family.score)(task, state)


def wrap(obj, genome=None, name: str = "fitness"):
    """A task family for ``obj``: a task family, a :class:`FitnessTask` or a function.

    Raises:
      FitnessError: if ``obj`` is neither, or a function comes without a genome.
    """
    if isinstance(obj, FitnessTask | CheckedFamily):
        return obj
    if is_task_family(obj):
        return CheckedFamily(obj)
    if callable(obj):
        if genome is None:
            raise FitnessError(
                f"{name}: a fitness function needs its initial genome (task.genome: a list of"
                " numbers or a length, or return evoplastic.FitnessTask(fitness, genome))"
            )
        return FitnessTask(obj, genome, name)
    raise FitnessError(
        f"{name}: got a {type(obj).__name__}; expected a fitness function"
        " fitness(genome, key) -> loss or a task family (sample and inner_loop)"
    )


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


# ---------------------------------------------------------------------------------------
# checks before a run


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _user_frame(err: BaseException, fn) -> str:
    """``file:line`` of the deepest traceback frame in ``fn``'s file, if any."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    filename = getattr(code, "co_filename", None)
    where = ""
    for frame, lineno in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_filename == filename:
            where = f" (at {filename.rsplit('/', 1)[-1]}:{lineno})"
    return where


# How each tracing error reads for a user, by the jax error it is: "{what} <text>" with
# ``{where}`` the user's frame.
_TRACE_ERRORS = (
    (
        jax.errors.TracerBoolConversionError,
        "is not jittable{where}: a Python `if`/`while`/`and`/`or` on a traced value; use"
        " jnp.where or jax.lax.cond/while_loop instead",
    ),
    (
        jax.errors.TracerArrayConversionError,
        "is not jittable{where}: it converts a traced value to a numpy array (np.* or"
        " np.asarray on an argument); use jax.numpy (jnp.*) instead",
    ),
    (
        jax.errors.TracerIntegerConversionError,
        "is not jittable{where}: a traced value is used as a Python int (an index or a"
        " range); use jnp indexing, jax.lax.dynamic_slice or lax.fori_loop",
    ),
    (
        jax.errors.ConcretizationTypeError,
        "is not jittable{where}: a traced value is converted to a Python number (float(),"
        " int(), .item()) or used where a concrete value is needed; keep it a jax array and"
        " use jnp functions",
    ),
    (
        jax.errors.NonConcreteBooleanIndexError,
        "is not jittable{where}: boolean-mask indexing has a data-dependent shape; use"
        " jnp.where(mask, x, 0) instead",
    ),
    (
        jax.errors.UnexpectedTracerError,
        "has a Python side effect{where}: a traced value escaped the function (stored in a"
        " global, a list or an object); return values instead of storing them",
    ),
)


def _trace_error(err: BaseException, fn, what: str) -> FitnessError:
    where = _user_frame(err, fn)
    for kind, text in _TRACE_ERRORS:
        if isinstance(err, kind):
            return FitnessError(f"{what} " + text.format(where=where))
    return FitnessError(
        f"{what} raised {type(err).__name__} when traced with a genome like the template"
        f"{where}: {_first_line(err)}"
    )


_MUTABLE = (list, dict, set, bytearray, np.ndarray, int, float, str, tuple)


def _python_state(fn) -> dict[str, Any]:
    """Copies of the plain Python values ``fn`` reads from globals and closure cells."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return {}
    out = {}
    globs = getattr(fn, "__globals__", {})
    for name in code.co_names:
        if name in globs and isinstance(globs[name], _MUTABLE):
            out[f"global {name!r}"] = globs[name]
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, _MUTABLE):
            out[f"variable {name!r}"] = value
    snapshot = {}
    for k, v in out.items():
        try:
            snapshot[k] = copy.deepcopy(v)
        except Exception:  # noqa: BLE001 (an uncopyable value is just not watched)
            continue
    return snapshot


def _same(a, b) -> bool:
    try:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return np.array_equal(a, b)
        return type(a) is type(b) and a == b
    except Exception:  # noqa: BLE001
        return True


def _jaxpr_fingerprint(closed) -> tuple:
    consts = [np.asarray(c) for c in closed.consts if hasattr(c, "shape")]
    return str(closed.jaxpr), tuple(c.tobytes() + str(c.shape).encode() for c in consts)


def _fingerprints(fitness, template, key) -> tuple | None:
    """Two traces of ``fitness``, to compare; ``None`` if that cannot be done.

    ``checkify`` numbers its checks with a global counter, so traces of a checkified
    function always differ; ``checkify.check`` is made a no-op for these two traces
    instead. A fitness that imported ``check`` by name cannot be traced that way and is
    not compared.
    """

    def trace():
        return jax.make_jaxpr(lambda g, k: fitness(g, k))(template, key)

    def no_check(*args, **kwargs):
        return None

    original = checkify.check
    checkify.check = no_check
    try:
        return _jaxpr_fingerprint(trace()), _jaxpr_fingerprint(trace())
    except Exception:  # noqa: BLE001 (the checkified traces already passed)
        return None
    finally:
        checkify.check = original


def check_fitness(fitness: Callable, genome_template, name: str = "fitness") -> None:
    """Trace ``fitness(genome, key)`` and raise :class:`FitnessError` on a usual mistake.

    Checked (the message says what was wrong and how to fix it):

    * **not jittable**: Python control flow on a traced value, ``float()``/``int()`` or
      numpy on a traced value, data-dependent shapes;
    * **not a scalar loss**: an output that is not one real number of shape ``()``;
    * **Python side effects**: a traced value escaping the function (appended to a list,
      stored in a global); plain Python values the function reads from globals or closure
      cells that change while it is traced (a counter, a list it appends to); a function
      whose computation differs between two traces (it reads Python state that changes,
      numpy or ``random`` draws, the clock);
    * **vmap**: the population is evaluated with ``jax.vmap``; a fitness that cannot be
      batched (e.g. ``jax.pure_callback`` without ``vmap_method``) is reported.

    Not detectable: side effects that leave no trace in the computation and no change in
    the values the function reads (printing, writing files, mutating state deep inside
    other objects), and globals changed later by someone else: a jitted fitness keeps the
    values it saw when it was traced.
    """
    what = f"the fitness {name!r}" if name != "fitness" else "the fitness"
    key = jax.random.PRNGKey(0)
    template = jax.tree.map(jnp.asarray, genome_template)

    def tracer():
        # a fresh function for every trace: make_jaxpr and checkify cache traces by function
        def traced(genome, k):
            fresh = checkify.checkify(lambda g, k_: fitness(g, k_), errors=checkify.user_checks)
            return fresh(genome, k)[1]

        return traced

    before = _python_state(fitness)
    try:
        with jax.checking_leaks():
            first = jax.make_jaxpr(tracer())(template, key)
    except FitnessError:
        raise
    except Exception as err:  # noqa: BLE001 (any trace failure is reported in one line)
        if "leak" in str(err).lower() and "tracer" in str(err).lower():
            raise FitnessError(
                f"{what} has a Python side effect{_user_frame(err, fitness)}: a traced value"
                " escaped the function (appended to a list or stored in a global or an"
                " object); a jitted fitness runs its Python code once, when traced. Return"
                " values instead of storing them"
            ) from None
        raise _trace_error(err, fitness, what) from None
    after = _python_state(fitness)
    changed = [k for k in before if k in after and not _same(before[k], after[k])]
    if changed:
        raise FitnessError(
            f"{what} changes Python state when called ({changed[0]} changed): a jitted fitness"
            " runs its Python code once, when traced, not at every evaluation; keep it a pure"
            " function of (genome, key)"
        )
    fingerprints = _fingerprints(fitness, template, key)
    out = first.out_avals
    if len(out) != 1:
        raise FitnessError(
            f"{what} must return one scalar loss, got {len(out)} outputs; return only the loss"
            " (e.g. `return loss`, not `return loss, aux`)"
        )
    aval = out[0]
    if aval.shape != () or not (
        jnp.issubdtype(aval.dtype, jnp.floating) or jnp.issubdtype(aval.dtype, jnp.integer)
    ):
        raise FitnessError(
            f"{what} must return a scalar loss (one real number, shape ()), got shape"
            f" {tuple(aval.shape)} and dtype {aval.dtype}; reduce it, e.g. jnp.mean(...) or"
            " jnp.sum(...)"
        )
    if fingerprints is not None and fingerprints[0] != fingerprints[1]:
        raise FitnessError(
            f"{what} gives a different computation each time it is traced: it reads Python"
            " state that changes between calls (a global, a counter, numpy or `random` draws,"
            " the clock); a jitted fitness keeps what it saw when traced. Pass changing values"
            " in the genome, draw random numbers with jax.random and the key"
        )
    population = jax.tree.map(lambda x: jnp.stack([x, x]), template)
    try:
        jax.eval_shape(jax.vmap(tracer(), in_axes=(0, None)), population, key)
    except Exception as err:  # noqa: BLE001
        raise FitnessError(
            f"{what} cannot be batched over the population with jax.vmap"
            f"{_user_frame(err, fitness)}: {type(err).__name__}: {_first_line(err)}"
        ) from None


__all__ = [
    "PYTHON_PREFIX",
    "CheckedFamily",
    "FitnessError",
    "FitnessTask",
    "check_fitness",
    "genome_from_config",
    "genome_rule",
    "is_import_path",
    "is_task_family",
    "load_factory",
    "make_imported",
    "wrap",
]
