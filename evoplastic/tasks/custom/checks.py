"""Checking a user fitness before a run: traceable, a scalar loss, no Python side effects.

The usual mistakes become one :class:`~evoplastic.tasks.custom.errors.FitnessError` line
naming the user's own frame.
"""

from __future__ import annotations

import copy
import inspect
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from .errors import FitnessError, _first_line


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
