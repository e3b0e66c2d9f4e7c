"""The one run driver: open the backend, make the run directory, train, finish.

Every way of running an experiment goes through :func:`execute`: the CLI's ``run`` and
``resume`` (and so the cluster-job entry point, which runs ``evoplastic run``),
:func:`evoplastic.run`, :func:`evoplastic.evolve`, :func:`evoplastic.meta_gradient`,
``evoplastic compare`` and ``evoplastic compare-selection``. It honours the config's
``backend`` (``local`` or ``ray``, for every outer loop) and writes nothing before the
config, the experiment *and* the backend are built: a missing Ray, an unreachable cluster
or a bad ``ray`` option raises before the run directory exists.

Example::

    exp = evoplastic.build(evoplastic.config.load("experiments/oja.yaml"))
    outcome = execute(exp, Path("runs/oja"))
    print(outcome.summary["rule"]["equation"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import backends
from .checkpoint import list_checkpoints
from .experiment import Experiment
from .start import with_start
from .trainer import Reporter, TrainResult, finalize, prepare_run_dir, read_metrics, train


class RunDirExists(FileExistsError):
    """The run directory exists already and the run is not a resume."""


@dataclasses.dataclass
class Outcome:
    """What :func:`execute` returns: the training result and the finish's summary."""

    run_dir: Path | None
    genome: Any
    records: list[dict]
    generations: int
    budget_stop: bool
    summary: dict | None


def finish_full(exp: Experiment, run_dir: Path, result: TrainResult) -> dict:
    """``best_rule.json``, ``eval.json`` (with the reference rules) and the plots."""
    return finalize(exp, run_dir, result.genome, read_metrics(run_dir))


def execute(
    exp: Experiment,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    finish: Callable[[Experiment, Path, TrainResult], dict] | None = finish_full,
    stop_after: int | None = None,
    on_generation: Callable[[int], None] | None = None,
    on_ready: Callable[[Path], None] | None = None,
) -> Outcome:
    """Train ``exp`` on its config's backend in ``run_dir`` and finish it.

    Args:
      exp: the built experiment (:func:`evoplastic.build`).
      run_dir: a new directory, or with ``resume`` one holding an earlier run's
        ``config.yaml``; ``None`` trains in a temporary directory that is removed after
        (and nothing is finished).
      resume: continue ``run_dir`` from its newest checkpoint if it holds a run (a
        directory without ``config.yaml`` starts a new run).
      reporter: progress callbacks (:class:`~evoplastic.trainer.Reporter`).
      finish: ``finish(exp, run_dir, result) -> summary`` after training, with the
        backend closed; default :func:`finish_full`; ``None`` for none.
      stop_after, on_generation: as for :func:`~evoplastic.trainer.train`.
      on_ready: called with the run directory once the backend is up and the directory
        made (e.g. to print where the run goes).

    Raises:
      RunDirExists: ``run_dir`` exists and this is not a resume (nothing written).
      BackendError: the backend cannot start (nothing written) or cannot go on (after a
        checkpoint).
      ConfigError: ``rule.init_from`` names no usable rule (nothing written).
      ResumeError, Interrupted, SearchDiverged: from the trainer.
    """
    reporter = reporter or Reporter()
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "run"
        else:
            directory = Path(run_dir)
        existing = resume and (directory / "config.yaml").is_file()
        if not existing and directory.exists():
            raise RunDirExists(
                f"run directory {str(directory)!r} already exists"
                + ("" if resume else " (pass resume=True to continue it)")
            )
        if not (existing and list_checkpoints(directory / "checkpoints")):
            exp = with_start(exp)  # rule.init_from, read here (on the driver)
        with backends.open_step(exp, warn=reporter.warn) as step:
            if not existing:
                prepare_run_dir(directory, exp)
            if on_ready is not None and run_dir is not None:
                on_ready(directory)
            result = train(
                exp,
                directory,
                reporter=reporter,
                resume=existing,
                step=step,
                stop_after=stop_after,
                on_generation=on_generation,
            )
        summary = None
        if run_dir is not None and finish is not None:
            summary = finish(exp, directory, result)
    return Outcome(
        run_dir=None if run_dir is None else directory,
        genome=result.genome,
        records=list(result.records),
        generations=result.generations,
        budget_stop=result.budget_stop,
        summary=summary,
    )
