"""Execution backends. ``local`` (in process) is the default; ``ray`` spreads shards.

A backend runs an outer loop (:class:`~evoplastic.meta.base.OuterLoop`) and knows nothing
else about it: ask, evaluate every shard of the work (here, or on Ray actors), combine the
shards in a fixed order, tell. Both backends run the same compiled pieces
(:class:`GenerationStep`), so for the same config, seed and ``evaluation.shard_size`` they
produce the same numbers. :func:`open_step` gives the step of either.
"""

import contextlib

from .errors import BackendError, MemberError, WorkersLost
from .local import (
    GenerationStep,
    evaluate_genome,
    evaluate_population,
    generation_keys,
    make_generation_step,
    make_genome_evaluator,
    member_keys,
    sanitize,
    shard_layout,
    stack_results,
    strong_types,
    task_fitness,
)

BACKENDS = ("local", "ray")


@contextlib.contextmanager
def open_step(exp, warn=None):
    """The generation step of ``exp`` on the backend its config names.

    ``local`` yields ``exp.generation_step()``. ``ray`` connects to ``config.ray.address``
    (or starts a local Ray instance), starts the actors, yields their step, and stops
    them (and the instance it started) on exit; every outer loop runs there. The Ray
    backend's module (and Ray) is imported only in that case.
    """
    if exp.config.backend == "ray":
        from .ray_backend import open_experiment_step

        with open_experiment_step(exp, warn=warn) as step:
            yield step
    else:
        yield exp.generation_step()


def preflight(cfg) -> None:
    """Raise :class:`BackendError` (one line) if the config's backend cannot start: Ray not
    installed, or a cluster address that does not answer. Cheap, and starts nothing; for
    commands that write files before the backend opens (``compare``)."""
    if cfg.backend != "ray":
        return
    try:
        import ray  # noqa: F401  (only whether it can be imported)
    except ImportError:
        raise BackendError(
            "backend: ray needs Ray, which is not installed (pip install 'ray[default]')"
        ) from None
    if cfg.ray.address:
        from .ray_backend import check_reachable

        check_reachable(cfg.ray.address)


__all__ = [
    "BACKENDS",
    "BackendError",
    "GenerationStep",
    "MemberError",
    "WorkersLost",
    "evaluate_genome",
    "evaluate_population",
    "generation_keys",
    "make_generation_step",
    "make_genome_evaluator",
    "member_keys",
    "open_step",
    "preflight",
    "sanitize",
    "strong_types",
    "shard_layout",
    "stack_results",
    "task_fitness",
]
