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

The package is split by concern: :mod:`.loading` (import paths, genomes from configs),
:mod:`.adapters` (:class:`FitnessTask`, :class:`CheckedFamily`, :func:`wrap`),
:mod:`.checks` (:func:`check_fitness`) and :mod:`.errors` (:class:`FitnessError`).
"""

from .adapters import (
    CheckedFamily,
    FitnessTask,
    failed,
    genome_rule,
    is_task_family,
    nan_on_failed_check,
    wrap,
)
from .checks import check_fitness
from .errors import FitnessError
from .loading import (
    PYTHON_PREFIX,
    genome_from_config,
    is_import_path,
    load_factory,
    make_imported,
)

__all__ = [
    "PYTHON_PREFIX",
    "CheckedFamily",
    "FitnessError",
    "FitnessTask",
    "check_fitness",
    "failed",
    "genome_from_config",
    "genome_rule",
    "is_import_path",
    "is_task_family",
    "load_factory",
    "make_imported",
    "nan_on_failed_check",
    "wrap",
]
