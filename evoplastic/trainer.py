"""The generation loop: ask, evaluate, tell; then log, test and checkpoint.

The trainer (with the checkpoint and plot helpers it calls) is the only library code
that writes files. A run directory holds::

    config.yaml        the resolved config
    metrics.jsonl      one line per generation
    checkpoints/       ckpt-<generation>.npz, the last few (atomic, checksummed, no pickles)
    best_rule.json     the final rule (search-distribution mean): coefficients and equation
    eval.json          held-out evaluation of the final rule (and reference rules)
    learning_curve.png, rule_vs_reference.png

Resuming loads the newest intact checkpoint, drops metric lines written after it and
continues; since every key is ``fold_in(run_key, generation, ...)`` and a generation is
one deterministic compiled step, a resumed run ends with the same genome and the same
metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import checkpoint, provenance
from .backends import BackendError, make_genome_evaluator
from .config import config_digest, dump
from .experiment import Experiment
from .loggers import open_loggers
from .tasks import test_instance_keys

TIMING_FIELDS = ("time_s", "evals_per_s", "wall_s", "test_s")


class ResumeError(RuntimeError):
    """A run directory that cannot be resumed as it stands."""


SKIP_STOP = 20  # a run stops after this many skipped meta-gradient steps in a row


class SearchDiverged(RuntimeError):
    """The search's mean genome became non-finite (an ES told only non-finite losses)."""


class Interrupted(Exception):
    """The run was stopped (SIGINT/SIGTERM) after a checkpoint of ``generation`` was saved."""

    def __init__(self, generation: int):
        super().__init__(f"interrupted after generation {generation}")
        self.generation = generation


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the run directory, final genome, records and generations done."""

    run_dir: Path
    genome: Any
    records: list[dict]
    generations: int
    budget_stop: bool = False  # stopped because ``time_budget_s`` was spent


class Reporter:
    """Progress callbacks; the CLI supplies a progress bar or plain lines."""

    def start(self, total: int, initial: int) -> None:
        """The run starts at generation ``initial`` of ``total``."""

    def update(self, record: dict) -> None:
        """A generation finished with this metrics record."""

    def close(self) -> None:
        """The run stopped (finished, interrupted or failed)."""

    def warn(self, message: str) -> None:
        """Something the user should know (e.g. a corrupt checkpoint was skipped)."""


def _finite_tree(tree) -> bool:
    """Whether every leaf of a pytree of arrays is finite."""
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def _scalar(x) -> float | int | None:
    """A JSON-safe scalar: non-finite floats become ``None`` (JSON has no NaN)."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return int(x)
    return float(x) if np.isfinite(x) else None


def read_metrics(run_dir: Path) -> list[dict]:
    """Every complete line of ``metrics.jsonl`` (a torn last line is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _truncate_metrics(run_dir: Path, generation: int) -> list[dict]:
    """Keep the metric lines of generations before ``generation`` (resume)."""
    kept = [r for r in read_metrics(run_dir) if r["generation"] < generation]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    checkpoint.atomic_write(Path(run_dir) / "metrics.jsonl", text.encode())
    return kept


def _plain_config(cfg) -> dict:
    import yaml

    return yaml.safe_load(dump(cfg))


def _state_leaves(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_summary(evaluator, genome, instances: int) -> dict[str, float]:
    """Mean loss and median of every task metric on the first held-out instances."""
    loss, metrics = evaluator(genome, test_instance_keys(instances))
    loss = np.asarray(loss)
    finite = np.isfinite(loss)
    out = {
        "test_loss": _scalar(np.mean(loss[finite])) if finite.any() else None,
        "test_nonfinite": int((~finite).sum()),
    }
    for name, values in metrics.items():
        values = np.asarray(values)[finite]
        out[f"test_{name}"] = _scalar(np.median(values)) if values.size else None
    return out


def prepare_run_dir(run_dir: Path, exp: Experiment) -> None:
    """Create a new run directory holding the resolved config (must not exist yet)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "checkpoints").mkdir()
    checkpoint.atomic_write(run_dir / "config.yaml", dump(exp.config).encode())
    provenance.write(run_dir)
    if exp.start is not None:  # rule.init_from: what the search started from
        from . import start

        start.write(run_dir, exp.start)


def train(
    exp: Experiment,
    run_dir: Path,
    reporter: Reporter | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    on_generation: Callable[[int], None] | None = None,
    step: Callable | None = None,
) -> TrainResult:
    """Run (or resume) the generation loop of ``exp`` in ``run_dir``.

    Args:
      exp: the built experiment.
      run_dir: a directory made by :func:`prepare_run_dir` (or an earlier run to resume).
      reporter: progress callbacks.
      resume: continue from the newest intact checkpoint (from generation 0 if none).
      stop_after: stop (with a checkpoint) after this generation; for tests and budgets.
        ``config.time_budget_s`` stops the run (with a checkpoint) at the first generation
        boundary where the run's training clock ``wall_s`` has reached the budget; see
        :func:`budget_spent`.
      on_generation: called with the number of finished generations (after the log line).
      step: ``step(state, run_key, generation) -> (state, metrics)``; default the local
        ``exp.generation_step()`` (the Ray backend passes its own, see
        :func:`evoplastic.backends.open_step`).

    Raises:
      Interrupted: on KeyboardInterrupt, after saving a checkpoint.
      ResumeError: if ``config.yaml`` changed since the checkpoints were written.
      BackendError: if the backend cannot go on, after saving a checkpoint.
    """
    cfg = exp.config
    reporter = reporter or Reporter()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    run_key = jax.random.PRNGKey(cfg.seed)
    state = exp.init_state(run_key)
    start = 0
    digest = config_digest(cfg)
    if resume:
        provenance.warn_if_changed(run_dir, reporter.warn)
    if resume and checkpoint.list_checkpoints(ckpt_dir):
        payload = checkpoint.load_latest(ckpt_dir, warn=reporter.warn)
        if payload.get("config_digest") != digest:
            raise ResumeError(
                f"{run_dir / 'config.yaml'} differs from the config the checkpoints were"
                " written with; restore it or start a new run"
            )
        treedef = jax.tree.structure(state)
        state = jax.tree.unflatten(treedef, [jax.numpy.asarray(x) for x in payload["state"]])
        start = int(payload["generation"])
    # drop metric lines newer than the state we continue from (all of them without one)
    records = _truncate_metrics(run_dir, start) if resume else []
    # the training clock (``wall_s``): from here, so compiling the step counts; it goes on
    # from the last kept line on resume and leaves out the periodic held-out tests
    clock0 = time.perf_counter() - ((records[-1].get("wall_s") or 0.0) if records else 0.0)
    tested_s = 0.0
    step = step or exp.generation_step()
    evaluator = make_genome_evaluator(exp.family, exp.rule)
    evals_per_gen = exp.evals_per_generation()
    end = cfg.generations if stop_after is None else min(cfg.generations, stop_after)

    def save(generation, st):
        checkpoint.save(
            ckpt_dir,
            generation,
            {
                "generation": generation,
                "seed": cfg.seed,
                "config_digest": digest,
                "state": _state_leaves(st),
                "genome": jax.tree.map(np.asarray, exp.mean_genome(st)),
            },
            keep=cfg.checkpoint.keep,
        )

    done = start
    budget_stop = budget_spent(cfg, records[-1] if records else None)
    if budget_stop:
        end = start
    reporter.start(cfg.generations, start)
    logger = open_loggers(cfg.logging, run_dir, params=_plain_config(cfg), name=cfg.name)
    skip_run = 0  # consecutive skipped meta-gradient steps
    try:
        for g in range(start, end):
            t0 = time.perf_counter()
            new_state, m = step(state, run_key, g)
            m = jax.device_get(m)
            if not _finite_tree(exp.mean_genome(new_state)):
                save(done, state)  # the last state whose mean is finite
                raise SearchDiverged(
                    f"generation {g}: the search's mean genome became non-finite (its"
                    " members' losses were non-finite, or its step size underflowed after"
                    " converging); start from gentler rules: lower"
                    " strategy.std_init, the rule's initial coefficients (rule.init,"
                    " rule.init_scale) or network.lr"
                )
            elapsed = time.perf_counter() - t0
            if "skipped" in m:  # a meta-gradient step is skipped when it is not finite
                skip_run = skip_run + 1 if int(m["nonfinite"]) else 0
                if skip_run >= SKIP_STOP:
                    save(done, state)
                    raise SearchDiverged(_skip_stop_message(g, records))
            record = {"generation": g, **{k: _scalar(v) for k, v in m.items()}}
            std = getattr(new_state, "std", None)
            if std is not None:
                record["sigma"] = float(np.mean(np.asarray(std)))
            record["wall_s"] = time.perf_counter() - clock0 - tested_s
            if cfg.test.every and (g + 1) % cfg.test.every == 0:
                t_test = time.perf_counter()
                record |= test_summary(evaluator, exp.mean_genome(new_state), cfg.test.instances)
                record["test_s"] = time.perf_counter() - t_test
                tested_s += record["test_s"]
            record["time_s"] = elapsed
            record["evals_per_s"] = evals_per_gen / max(elapsed, 1e-9)
            logger.log(record)
            state, done = new_state, g + 1
            records.append(record)
            reporter.update(record)
            budget_stop = budget_spent(cfg, record)
            if done % cfg.checkpoint.every == 0 or done == end or budget_stop:
                save(done, state)
            if on_generation is not None:
                on_generation(done)
            if budget_stop:
                break
    except KeyboardInterrupt:
        logger.close()
        reporter.close()
        save(done, state)
        raise Interrupted(done) from None
    except BackendError:
        logger.close()
        reporter.close()
        save(done, state)
        raise
    except SearchDiverged:
        logger.close()
        reporter.close()
        raise
    logger.close()
    reporter.close()
    skipped = records[-1].get("skipped") if records else None
    if skipped:
        reporter.warn(
            f"{skipped} of {done} meta-gradient steps were skipped (loss or gradient not"
            " finite; `skipped` in metrics.jsonl)"
        )
    return TrainResult(run_dir, exp.mean_genome(state), records, done, budget_stop)


def _skip_stop_message(generation: int, records: list[dict]) -> str:
    """Why a meta-gradient run stopped after ``SKIP_STOP`` skipped steps, and what to change:
    the start, if no step was ever taken; the learning rate, if the steps taken led there."""
    head = (
        f"generation {generation}: {SKIP_STOP} meta-gradient steps in a row were not finite"
        " (or had every instance at evaluation.loss_clip) and were skipped"
    )
    taken = sum(1 for r in records if not r.get("nonfinite"))
    if taken:
        return (
            f"{head}: {taken} earlier step{'s' if taken != 1 else ''} led the meta-gradient"
            " into rules that blow up on the meta-training instances, where they give no"
            " gradient; lower"
            " meta.gradient.optimizer.learning_rate (compare rates on a spare seed with"
            " --sweep, then `evoplastic report OUT --train-last 100`)"
        )
    return (
        f"{head} (the rule makes the inner loop diverge on the meta-training instances, so"
        " the genome cannot move); start from gentler rules: lower strategy.std_init,"
        " rule.init_scale or network.lr, or clip the weights"
    )


def budget_spent(cfg, record: dict | None) -> bool:
    """Whether a run whose last metric line is ``record`` has spent ``cfg.time_budget_s``.

    The clock is ``wall_s``: seconds since training started (summed over resumes), with
    compilation, generations, checkpoints and metric lines, but without the periodic
    held-out tests (measurements, which would otherwise charge a method for being tested
    more often). The final evaluation comes after the budget.
    """
    budget = getattr(cfg, "time_budget_s", None)
    return bool(budget and record and (record.get("wall_s") or 0.0) >= budget)


def latest_genome(run_dir: Path, warn=None):
    """The genome of the newest intact checkpoint of a run."""
    return checkpoint.load_latest(Path(run_dir) / "checkpoints", warn=warn)["genome"]


def write_json(path: Path, data) -> None:
    """Atomically write ``data`` as JSON (non-finite numbers become ``null``)."""
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"
    checkpoint.atomic_write(Path(path), text.encode())


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def draw_plots(exp: Experiment, run_dir: Path, records: list[dict], rule: dict) -> None:
    """``learning_curve.png`` and, for rules over a library with Oja's terms, the rule plot."""
    from . import rules
    from .analysis import plots

    plots.learning_curve(records, Path(run_dir) / "learning_curve.png", title=exp.config.name)
    if rule.get("cosine_to_oja") is not None:
        plots.rule_vs_reference(
            exp.rule.terms,
            rule["normalized"],
            rules.reference_genome("oja", exp.rule.terms),
            Path(run_dir) / "rule_vs_reference.png",
        )


def finalize(exp: Experiment, run_dir: Path, genome, records: list[dict]) -> dict:
    """Write ``best_rule.json``, ``eval.json`` and the plots; return the summary."""
    from .analysis import evaluate_final, rule_summary

    run_dir = Path(run_dir)
    summary = rule_summary(exp.rule, genome)
    genome_list = jax.tree.map(lambda x: np.asarray(x).tolist(), genome)
    best = summary | {
        "genome": genome_list,
        "genome_flat": exp.flat_genome(genome),
        "generations": records[-1]["generation"] + 1 if records else exp.config.generations,
    }
    results = evaluate_final(exp, genome, exp.config.test.final_instances)
    write_json(run_dir / "best_rule.json", best)
    write_json(run_dir / "eval.json", results)
    draw_plots(exp, run_dir, records, best)
    return {"rule": best, "eval": results}
