"""The ``evoplastic`` command line: run, resume, eval, plot, list, bench, submit, jobs.

Bad input prints one line, ``error: <what is wrong>``, and exits with code 2; nothing is
written before a config has been fully validated.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import click

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class UserError(click.ClickException):
    exit_code = EXIT_BAD_INPUT

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def _fail(message: str):
    raise UserError(message)


def _num(value) -> str:
    """A metric for a progress line; non-finite values are stored as ``None``."""
    return "nan" if value is None else f"{value:.4g}"


class _Plain:
    """Progress as plain lines (when stdout is not a terminal)."""

    def __init__(self, every: int | None = None):
        self.every = every
        self.t0 = time.perf_counter()

    def start(self, total, initial):
        self.total, self.initial = total, initial
        self.every = self.every or max(1, total // 20)
        self.t0 = time.perf_counter()

    def update(self, r):
        g = r["generation"] + 1
        if g % self.every and g != self.total and "test_loss" not in r:
            return
        done = g - self.initial
        eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - g)
        line = (
            f"gen {g:>5}/{self.total}  best {_num(r['best_loss'])}  mean {_num(r['mean_loss'])}"
            f"  evals/s {r['evals_per_s']:,.0f}  eta {eta:.0f}s"
        )
        if r.get("nonfinite"):
            line += f"  nonfinite {r['nonfinite']}"
        if "test_loss" in r:
            line += f"  test {_num(r['test_loss'])}"
        click.echo(line)

    def close(self):
        pass

    def warn(self, message):
        click.echo(f"warning: {message}", err=True)


class _Bar(_Plain):
    """A rich progress bar: generation, best and mean loss, evaluations/s, ETA."""

    def start(self, total, initial):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("gen"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("run", total=total, completed=initial, stats="")
        self.progress.start()

    def update(self, r):
        stats = (
            f"best {_num(r['best_loss'])} mean {_num(r['mean_loss'])}"
            f" {r['evals_per_s']:,.0f} evals/s"
        )
        if r.get("nonfinite"):
            stats += f" nonfinite {r['nonfinite']}"
        self.progress.update(self.task, completed=r["generation"] + 1, stats=stats)

    def close(self):
        self.progress.stop()


def _reporter(quiet: bool):
    from .trainer import Reporter

    if quiet:  # no progress, but warnings still reach stderr

        class Quiet(Reporter):
            def warn(self, message):
                click.echo(f"warning: {message}", err=True)

        return Quiet()
    return _Bar() if sys.stdout.isatty() else _Plain()


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for this process (CLI runs only).

    The directory is ``$EVOPLASTIC_CACHE_DIR`` or ``~/.cache/evoplastic/jax``; setting
    ``EVOPLASTIC_CACHE_DIR=off`` disables it. A second start of the same config then loads
    its compiled generation instead of compiling it again.
    """
    import os

    path = os.environ.get("EVOPLASTIC_CACHE_DIR") or str(
        Path.home() / ".cache" / "evoplastic" / "jax"
    )
    if path.lower() in ("off", "0", "none"):
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _sigterm_as_interrupt():
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _load_config(path, overrides=(), seed=None):
    from .config import ConfigError, load

    try:
        overrides = tuple(overrides) + ((f"seed={seed}",) if seed is not None else ())
        return load(path, overrides)
    except ConfigError as err:
        _fail(str(err))


def _build(cfg):
    from .config import ConfigError
    from .experiment import build

    try:
        return build(cfg)
    except ConfigError as err:
        _fail(str(err))


def _start(exp):
    """``exp`` starting from its ``rule.init_from`` (read and checked now, before anything
    is written)."""
    from .config import ConfigError
    from .start import with_start

    try:
        return with_start(exp)
    except ConfigError as err:
        _fail(str(err))


def _print_summary(summary: dict, run_dir: Path) -> None:
    rule = summary["rule"]
    click.echo(f"\ndiscovered rule: {rule['equation']}")
    if rule.get("cosine_to_oja") is not None:
        click.echo(f"cosine to Oja's rule (dw = pre*post - post^2*w): {rule['cosine_to_oja']:.4f}")
    for variant, by_rule in summary["eval"].items():
        evolved = by_rule["evolved"]
        n = evolved["loss"]["n"]
        parts = []
        for metric, s in evolved.items():
            if metric != "loss" or len(evolved) == 1:  # a fitness function has the loss only
                parts.append(
                    f"{metric} mean {s['mean']:.4g} ± {s['ci95']:.2g}, median {s['median']:.4g}"
                )
        click.echo(f"held-out [{variant}, {n} instances]: " + "; ".join(parts))
        metric = next((m for m in evolved if m != "loss"), "loss")
        others = [
            f"{name} {res[metric]['median']:.4g}"
            for name, res in by_rule.items()
            if name != "evolved" and metric in res
        ]
        click.echo(f"  baselines (median {metric}): " + ", ".join(others))
    click.echo(f"run directory: {run_dir}")


def _with_backend(cfg, backend, address):
    """``cfg`` with the CLI's ``--backend``/``--address`` (an address implies ``ray``)."""
    import dataclasses

    if address:
        backend = backend or "ray"
        if backend != "ray":
            _fail("--address needs --backend ray")
        cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, address=address))
    if backend:
        cfg = dataclasses.replace(cfg, backend=backend)
    return cfg


def _preflight(cfg):
    """Fail early (before anything is written) if the config's backend cannot start: Ray
    not installed, or a Ray address that does not answer."""
    from .backends import BackendError, preflight

    try:
        preflight(cfg)
    except BackendError as err:
        _fail(str(err))


def _check_logging(cfg):
    """Fail early (before a run directory exists) if a requested logger is not installed."""
    if cfg.logging.mlflow:
        from .loggers import LoggerError, require_mlflow

        try:
            require_mlflow()
        except LoggerError as err:
            _fail(str(err))


def _backend_options(f):
    f = click.option(
        "--address",
        help="Ray cluster address (HOST:PORT, ray://HOST:10001 or auto); implies --backend ray.",
    )(f)
    return click.option(
        "--backend",
        type=click.Choice(["local", "ray"]),
        help="Where to evaluate (default: the config's `backend`, local).",
    )(f)


def _train_and_finish(exp, run_dir: Path, resume: bool, quiet: bool, announce: bool = False):
    """Run ``exp`` through the run driver; every failure is one line (exit 2 or 130)."""
    from .backends import BackendError
    from .runner import execute
    from .trainer import Interrupted, ResumeError, SearchDiverged

    _sigterm_as_interrupt()
    enable_compilation_cache()
    reporter = _reporter(quiet)
    try:
        ready = (lambda d: click.echo(f"run directory: {d}")) if announce and not quiet else None
        outcome = execute(exp, run_dir, resume=resume, reporter=reporter, on_ready=ready)
    except ResumeError as err:
        _fail(str(err))
    except BackendError as err:
        if not (run_dir / "config.yaml").is_file():  # the backend did not start: nothing written
            _fail(str(err))
        _fail(f"{err}; the last checkpoint is intact. Resume with: evoplastic resume {run_dir}")
    except SearchDiverged as err:
        _fail(f"{err} (checkpoint kept in {run_dir})")
    except Interrupted as stop:
        click.echo(
            f"\ninterrupted after generation {stop.generation}; checkpoint saved."
            f" Resume with: evoplastic resume {run_dir}",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        if not (run_dir / "config.yaml").is_file():
            click.echo("\ninterrupted before the run started; nothing written", err=True)
            sys.exit(EXIT_INTERRUPTED)
        click.echo(
            f"\ninterrupted during the final evaluation; training is complete and saved."
            f" Finish with: evoplastic resume {run_dir}",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    except OSError as err:
        if (run_dir / "config.yaml").is_file():
            raise
        _fail(f"cannot create run directory {str(run_dir)!r}: {err.strerror or err}")
    if outcome.budget_stop and not quiet:
        click.echo(
            f"time budget of {exp.config.time_budget_s:g} s reached after generation"
            f" {outcome.generations}"
        )
    if not quiet:
        _print_summary(outcome.summary, run_dir)
    return outcome.summary


def _default_run_dir(name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evoplastic")
def cli():
    """evoplastic: discover plasticity rules by evolution strategies or backprop."""


@cli.command()
@click.argument("config_path", metavar="CONFIG")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (must not exist).")
@click.option("--seed", type=int, help="Seed (overrides the config's).")
@click.option("--quiet", is_flag=True, help="No progress and no summary.")
@click.option("--seeds", help="Run these seeds (0-4, or 0,2,5), one run directory each.")
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    metavar="KEY=V1,V2",
    help="Also sweep KEY over these values (repeatable): one run per combination.",
)
@click.option(
    "--sweep-on",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the runs of --seeds/--sweep go: one after the other here, or as Ray tasks.",
)
@click.option("--dry-run", is_flag=True, help="Print the resolved config (or sweep) and exit.")
@_backend_options
def run(
    config_path, overrides, out, seed, quiet, seeds, sweeps, sweep_on, dry_run, backend, address
):
    """Run the experiment in CONFIG (a YAML file), with optional KEY=VALUE overrides."""
    if seeds or sweeps:
        if seed is not None:
            _fail("--seed and --seeds: give one of them")
        return _run_sweep(config_path, overrides, out, seeds, sweeps, sweep_on, dry_run, quiet)
    cfg = _with_backend(_load_config(config_path, overrides, seed), backend, address)
    exp = _start(_build(cfg))
    if dry_run:
        from .config import dump

        click.echo(dump(cfg), nl=False)
        return
    _preflight(cfg)
    _check_logging(cfg)
    run_dir = out or _default_run_dir(cfg.name)
    if run_dir.exists():
        _fail(f"run directory {str(run_dir)!r} already exists (choose another --out)")
    _train_and_finish(exp, run_dir, resume=False, quiet=quiet, announce=True)


def _run_sweep(config_path, overrides, out, seeds, sweeps, sweep_on, dry_run, quiet):
    """``run --seeds/--sweep``: every point checked first, then one run directory each."""
    from . import sweep
    from .config import ConfigError, load_data

    try:
        data = load_data(config_path, overrides)
        points = sweep.grid(sweep.parse_seeds(seeds) if seeds else None, sweep.parse_sweep(sweeps))
        cfgs = sweep.plan(data, points, lambda cfg: _start(_build(cfg)).config)
    except ConfigError as err:
        _fail(str(err))
    if dry_run:
        for p in points:
            click.echo(p["name"])
        click.echo(f"{len(points)} runs")
        return
    out = out or _default_run_dir(f"{cfgs[0].name}-sweep")
    if out.exists():
        _fail(f"sweep directory {str(out)!r} already exists (choose another --out)")
    enable_compilation_cache()
    click.echo(f"sweep of {len(points)} runs: {out}")

    def run_one(point):
        status = sweep.run_point(data, str(out), point)
        if not quiet:
            click.echo(f"  {point['name']}: {status}")
        return status

    if sweep_on == "ray":
        from .backends import BackendError
        from .backends.ray_backend import connect

        try:
            with connect(cfgs[0].ray.address):
                done = sweep.run_points(
                    out, config_path, points, sweep.runner_for(data, out), "ray"
                )
        except BackendError as err:
            _fail(str(err))
    else:
        done = sweep.run_points(out, config_path, points, run_one)
    failed = [p for p in done if p["status"] != "done"]
    click.echo(f"{len(done) - len(failed)} of {len(done)} runs done; index: {out / sweep.INDEX}")
    click.echo(f"report: evoplastic report {out}")
    if failed:
        _fail(f"{len(failed)} run(s) failed, first: {failed[0]['name']}: {failed[0]['status']}")


def _run_dir_config(run_dir: Path):
    if not (run_dir / "config.yaml").is_file():
        _fail(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    return _load_config(run_dir / "config.yaml")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress and no summary.")
@_backend_options
def resume(run_dir, quiet, backend, address):
    """Continue an interrupted run from its newest intact checkpoint (on either backend)."""
    from .checkpoint import list_checkpoints

    exp = _build(_with_backend(_run_dir_config(run_dir), backend, address))
    _check_logging(exp.config)
    if not list_checkpoints(run_dir / "checkpoints"):
        click.echo("warning: no checkpoint yet; starting again from generation 0", err=True)
        exp = _start(exp)
    _train_and_finish(exp, run_dir, resume=True, quiet=quiet)


def _run_genome(run_dir: Path, exp):
    from .checkpoint import CheckpointError
    from .trainer import latest_genome

    best = run_dir / "best_rule.json"
    if best.is_file():
        try:
            return exp.unflatten_genome(json.loads(best.read_text())["genome_flat"])
        except (KeyError, ValueError, TypeError) as err:
            _fail(f"{best}: not a readable rule ({err})")
    try:
        return latest_genome(run_dir, warn=lambda m: click.echo(f"warning: {m}", err=True))
    except CheckpointError as err:
        _fail(str(err))


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1, metavar="[TASK_PARAM=VALUE]...")
@click.option("--instances", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--rule",
    "which",
    type=click.Choice(["best", "distilled"]),
    default="best",
    show_default=True,
    help="The run's rule, or its distilled equation (distilled.json, from `evoplastic distill`).",
)
@click.option(
    "--sweep",
    metavar="TASK_PARAM=V1,V2,...",
    help="Evaluate at every value of one task parameter (e.g. shots=5,10,20) and plot the "
    "headline metric against it for the rule and every baseline.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --sweep: where to draw the figure (default RUN_DIR/sweep_PARAM.png).",
)
@click.option(
    "--also",
    "others",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="RUN",
    help="Also evaluate RUN's rule, alone, on the same task (with --sweep: at every value); "
    "repeatable, e.g. the other seeds of the config; the baselines are RUN_DIR's.",
)
@click.option(
    "--no-baselines",
    "no_baselines",
    is_flag=True,
    help="The rule (and --also's rules) alone: no fixed rules, no tuned SGD/Adam.",
)
def eval_(run_dir, overrides, instances, as_json, which, sweep, plot_path, others, no_baselines):
    """Evaluate a run's rule on held-out instances, next to Oja's and Hebb's rules.

    TASK_PARAM=VALUE changes the task, e.g. `dim=40` for five times the input dimension;
    --sweep evaluates along one task parameter, e.g. `--sweep shots=5,10,20`; --also RUN adds
    another run's rule (e.g. another seed's) on the same instances.
    `task=mnist1d network.hidden=[64,64]` carries a digits rule, unchanged, to MNIST-1D on a
    wider and deeper network.
    """
    from .analysis import evaluation
    from .config import ConfigError
    from .provenance import warn_if_changed

    source_cfg = _run_dir_config(run_dir)
    warn_if_changed(run_dir, lambda m: click.echo(f"warning: {m}", err=True))
    others = [(other, _run_dir_config(other)) for other in others]
    if sweep is not None:
        _eval_sweep(
            run_dir,
            source_cfg,
            sweep,
            overrides,
            instances,
            as_json,
            which,
            plot_path,
            others,
            not no_baselines,
        )
        return
    if plot_path is not None:
        _fail("--plot goes with a sweep: give --sweep TASK_PARAM=V1,V2,... with it")
    try:
        cfg, task = evaluation.config_with_task(run_dir, overrides)
        other_cfgs = [
            (other, other_source, evaluation.config_with_task(other, overrides)[0])
            for other, other_source in others
        ]
    except ConfigError as err:
        _fail(str(err))
    exp = _build(cfg)
    genome = _eval_genome(run_dir, source_cfg, exp)
    if which == "distilled":
        exp, genome = _distilled(run_dir, cfg, genome)
    results = evaluation.evaluate_run(exp, genome, instances, not no_baselines)
    for other, other_source, other_cfg in other_cfgs:
        click.echo(f"{other}'s rule", err=True)
        results[f"evolved ({other})"] = _also_rule(other, other_source, other_cfg, which, instances)
    if as_json:
        from .trainer import _json_safe

        report = {"run_dir": str(run_dir), "instances": instances, "task_overrides": task}
        click.echo(json.dumps(_json_safe(report | {"rules": results}), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    changed = ", ".join(f"{k}={v}" for k, v in task.items())
    title = f"{run_dir} on {instances} held-out instances" + (f" ({changed})" if changed else "")
    title += " (evolved: the distilled rule)" if which == "distilled" else ""
    columns, rows = evaluation.table(results)
    out = Table(title=title)
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*row)
    Console(width=160).print(out)


def _eval_genome(run_dir, source_cfg, exp):
    """The run's rule for ``exp``: as saved, or carried, unchanged, to another task or
    network."""
    from .analysis import evaluation

    cfg = exp.config
    if cfg.task == source_cfg.task and cfg.network == source_cfg.network:
        return _run_genome(run_dir, exp)
    source = _build(source_cfg)
    try:
        return evaluation.carry_genome(source, _run_genome(run_dir, source), exp)
    except ValueError as err:
        _fail(str(err))


def _also_rule(run_dir, source_cfg, cfg, which, instances) -> dict:
    """``eval --also RUN``: RUN's rule (or its distilled equation), alone, on ``cfg``'s task."""
    from .analysis import evaluation

    exp = _build(cfg)
    genome = _eval_genome(run_dir, source_cfg, exp)
    if which == "distilled":
        exp, genome = _distilled(run_dir, exp.config, genome)
    return evaluation.evaluate_rule(exp, genome, instances)


def _eval_sweep(
    run_dir,
    source_cfg,
    sweep,
    overrides,
    instances,
    as_json,
    which,
    plot_path,
    others=(),
    baselines=True,
):
    """``eval --sweep``: every value's config (the other runs' too) is checked before
    anything is evaluated or written; then a table (or JSON) and the figure."""
    from .analysis import evaluation
    from .config import ConfigError

    try:
        param, configs = evaluation.sweep_configs(run_dir, sweep, overrides)
        other_configs = [
            (other, cfg, evaluation.sweep_configs(other, sweep, overrides)[1])
            for other, cfg in others
        ]
    except ConfigError as err:
        _fail(str(err))
    name = param.removeprefix("task.")
    path = plot_path or Path(run_dir) / f"sweep_{name}.png"
    if not path.parent.is_dir():
        _fail(f"--plot {path}: the folder {path.parent} does not exist")
    exps = [(value, _build(cfg)) for value, cfg in configs]
    by_value = {}
    for value, exp in exps:
        genome = _eval_genome(run_dir, source_cfg, exp)
        if which == "distilled":
            exp, genome = _distilled(run_dir, exp.config, genome)
        click.echo(f"{name}={value}: evaluating on {instances} held-out instances", err=True)
        by_value[value] = evaluation.evaluate_run(exp, genome, instances, baselines)
    for other, other_source, per_value in other_configs:
        for value, cfg in per_value:
            click.echo(f"{name}={value}: {other}'s rule", err=True)
            by_value[value][f"evolved ({other})"] = _also_rule(
                other, other_source, cfg, which, instances
            )
    from .analysis.plots import sweep_curves

    metric = evaluation.headline_metric(next(iter(by_value.values())))
    title = f"{Path(run_dir).name}: held-out {metric} against {name} ({instances} instances)"
    sweep_curves(param, by_value, metric, path, title=title)
    if as_json:
        from .trainer import _json_safe

        report = {"run_dir": str(run_dir), "instances": instances, "sweep": param}
        keeps = {n: evaluation.keeps_learning(by_value, n) for n in next(iter(by_value.values()))}
        report |= {"values": by_value, "keeps_learning": keeps}
        click.echo(json.dumps(_json_safe(report), indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        out = Table(title=f"{run_dir} on {instances} held-out instances, {name} swept")
        columns, rows = evaluation.sweep_table(param, by_value)
        for column in columns:
            out.add_column(column)
        for row in rows:
            out.add_row(*row)
        Console(width=200).print(out)
    click.echo(f"wrote {path}", err=True)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def plot(run_dir):
    """Draw a run's learning curve, its rule (dw over pre x post) and weight trajectories.

    The heat map and the trajectories come from the rule's inner loop on held-out
    instance 0: rule_heatmap.png, weight_trajectories.png.
    """
    from .analysis import plots, rule_summary
    from .trainer import draw_plots, read_metrics

    exp = _build(_run_dir_config(run_dir))
    records = read_metrics(run_dir)
    if not records:
        _fail(f"{str(run_dir)!r} has no metrics yet")
    genome = _run_genome(run_dir, exp)
    draw_plots(exp, run_dir, records, rule_summary(exp.rule, genome))
    plots.rule_plots(exp.family, exp.rule, genome, run_dir)
    click.echo(f"wrote plots to {run_dir}")


def _distilled(run_dir: Path, cfg, genome):
    from .analysis import distill
    from .config import ConfigError

    try:
        return distill.distilled_experiment(cfg, distill.load(run_dir / distill.FILE_NAME), genome)
    except (distill.DistillError, ConfigError) as err:
        _fail(str(err))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--degree", type=click.IntRange(1, 5), default=3, show_default=True)
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.01,
    show_default=True,
    help="Drop terms that move dw by less than this fraction of its RMS.",
)
@click.option("--fit-instances", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--heldout-instances", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--eval-instances",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Held-out instances to score both rules on (0: skip).",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Steps whose weight change one sample sums (1: single steps).",
)
@click.option(
    "--select-instances",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Choose the sparsity (--threshold and larger) by the equation's task loss on this"
    " many held-out instances of its own (0: keep --threshold).",
)
@click.option(
    "--target",
    type=click.Choice(["auto", "drift", "window"]),
    default="auto",
    show_default=True,
    help="What is fitted: the expected weight change at the states the network visits"
    " (drift), or the weight change over --window steps along its path (window); auto:"
    " drift where the task allows it.",
)
@click.option(
    "--terms",
    help="Fit only these comma-separated terms (a form to test, e.g. 'pre*post,post^2*w')"
    " instead of every product up to --degree.",
)
def distill(
    run_dir, degree, threshold, fit_instances, heldout_instances, eval_instances, window,
    select_instances, target, terms,
):  # fmt: skip
    """Fit a run's rule with a sparse polynomial of local signals; write distilled.json.

    Signals (pre, post, w, err, mod) and the rule's dw are recorded in float64 on held-out
    task instances (those on which the rule diverges are skipped); the equation is fitted
    to what the rule did to each weight over windows of --window steps, and its R² is
    measured on other held-out instances than it was fitted on. Evaluate the result with
    `evoplastic eval RUN_DIR --rule distilled`.
    """
    from .analysis import distill as dist
    from .config import ConfigError

    cfg = _run_dir_config(run_dir)
    exp = _build(cfg)
    genome = _run_genome(run_dir, exp)
    try:
        d = dist.distill_rule(
            exp.family,
            exp.rule,
            genome,
            fit_instances=fit_instances,
            heldout_instances=heldout_instances,
            degree=degree,
            threshold=threshold,
            window=window,
            select_instances=select_instances,
            target=target,
            terms=None if terms is None else tuple(t.strip() for t in terms.split(",")),
        )
        dexp, dgenome = dist.distilled_experiment(cfg, d, genome)
    except (dist.DistillError, ConfigError) as err:
        _fail(str(err))
    click.echo(f"rule:      {exp.rule.describe(genome)}")
    click.echo(f"distilled: {d.equation}")
    order = sorted(zip(d.importance, d.terms, strict=True), reverse=True)[:5]
    click.echo("largest terms (share of dw's RMS): " + ", ".join(f"{t} {v:.2f}" for v, t in order))
    if d.target == "drift":
        what = (
            f"drift: weight x state every {d.drift['every']} steps, averaged over"
            f" {d.drift['inputs']} inputs"
        )
    else:
        what = f"synapse x {window}-step window"
    click.echo(
        f"R² {d.r2:.4f} on {d.samples['heldout']} held-out samples ({what}) from"
        f" {heldout_instances} held-out instances; fit on {fit_instances} others:"
        f" R² {d.r2_fit:.4f}"
    )
    if d.r2_window is not None:
        click.echo(f"(the same equation against {window}-step windows: R² {d.r2_window:.4f})")
    if d.selection:
        tried = ", ".join(
            f"{c['terms']} terms {c['loss']:.4g}"
            if c["loss"] is not None
            else f"{c['terms']} terms diverged"
            for c in d.selection["candidates"]
        )
        click.echo(
            f"sparsity chosen by task loss on {d.selection['instances']} instances"
            f" (rule {d.selection['rule_loss'] or float('inf'):.4g}; {tried}):"
            f" threshold {d.threshold}"
        )
    if d.instances.get("diverged"):
        click.echo(f"skipped {d.instances['diverged']} held-out instances where the rule diverged")
    if eval_instances:
        losses = dist.heldout_losses(
            {"rule": (exp, genome), "distilled": (dexp, dgenome)}, eval_instances
        )
        for name, mean in losses.items():
            click.echo(f"held-out loss ({name}, {eval_instances} instances): mean {mean:.4g}")
    path = dist.save(d, run_dir / dist.FILE_NAME)
    click.echo(f"wrote {path} (evaluate it: evoplastic eval {run_dir} --rule distilled)")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Also write the table here.")
@click.option("--plot", type=click.Path(path_type=Path), help="Draw a bar chart here (PNG).")
@click.option(
    "--bar",
    help="Check each run's evolved rule against a bar on its held-out mean, e.g."
    " 'return>=475' or 'loss<0.01', and count the runs (seeds) that meet it.",
)
@click.option(
    "--variant", default="trained", show_default=True, help="The task variant --bar checks."
)
@click.option(
    "--train-last",
    type=click.IntRange(min=1),
    metavar="N",
    help="Instead of the held-out table, each run's meta-training loss over its last N"
    " generations (every sweep point, failed ones too): to choose settings, such as a"
    " learning rate, without looking at the held-out instances.",
)
def report(run_dirs, out, plot, bar, variant, train_last):
    """A markdown table of finished runs (or sweep directories): one row per run, named by its
    directory, and one per group of seeds (mean and t-interval across seeds)."""
    from .analysis import markdown_table, report_rows, seed_rows
    from .analysis.report import ReportError, bar_lines, load_runs, train_rows, train_table

    if train_last:
        if bar or plot:
            _fail("--train-last: not with --bar or --plot (they read the held-out figures)")
        try:
            table = train_table(train_rows(run_dirs, train_last), train_last)
        except ReportError as err:
            _fail(str(err))
        click.echo(table, nl=False)
        if out:
            from .checkpoint import atomic_write

            atomic_write(out, table.encode())
        return
    try:
        runs = load_runs(run_dirs, warn=lambda m: click.echo(f"warning: {m}", err=True))
        rows = report_rows(runs)
        checked = bar_lines(rows, bar, variant) if bar else []
    except ReportError as err:
        _fail(str(err))
    rows += seed_rows(rows)
    table = markdown_table(rows)
    click.echo(table, nl=False)
    for line in checked:
        click.echo(line)
    if out:
        from .checkpoint import atomic_write

        atomic_write(out, table.encode())
    if plot:
        from .analysis import plots

        plots.report_bars(rows, plot)


@cli.command()
@click.argument("config_paths", nargs=-1, metavar="CONFIG...")
@click.option("--out", type=click.Path(path_type=Path), help="Output directory (default runs/).")
@click.option("--seeds", help="Comma-separated seeds (replaces compare.seeds).")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), help="Seconds per run.")
@click.option("--report-only", is_flag=True, help="Only rebuild report.md and the plot of --out.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def compare(config_paths, out, seeds, budget, report_only, quiet):
    """Run each config's compare.methods x seeds at one wall-clock budget; report them."""
    from .studies import compare as cmp

    if report_only:
        if out is None or not (out / cmp.MANIFEST).is_file():
            _fail("--report-only needs --out DIR of an earlier comparison (with compare.json)")
        for path in cmp.write_report(out):
            click.echo(f"wrote {path}")
        return
    if not config_paths:
        _fail("give at least one CONFIG with a compare section")
    try:
        seed_list = tuple(int(s) for s in seeds.split(",")) if seeds else None
    except ValueError:
        _fail(f"--seeds: expected comma-separated integers, got {seeds!r}")
    from .backends import BackendError
    from .config import ConfigError, load_data

    out = out or _default_run_dir("compare")
    runs, entries = [], []
    for path in config_paths:
        try:
            data = load_data(path, (f"time_budget_s={budget}",) if budget else ())
            planned = cmp.plan(data, out, seed_list)
        except ConfigError as err:
            _fail(str(err))
        for r in planned:
            _build(r.config)  # every config error before anything is written
            _preflight(r.config)
        runs += planned
        entries.append(cmp.manifest_entry(data, planned))
    out.mkdir(parents=True, exist_ok=True)
    cmp.write_manifest(out, entries)
    echo = (lambda m: None) if quiet else click.echo
    _sigterm_as_interrupt()
    try:
        cmp.run_all(runs, _build, echo=echo)
    except BackendError as err:
        _fail(f"{err}; run the same command again to finish {out}")
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; run the same command again to finish {out}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    for path in cmp.write_report(out):
        click.echo(f"wrote {path}")


@cli.command(name="list")
def list_():
    """List the available rules, tasks and strategies."""
    from . import meta, rules, tasks

    click.echo("rules:      " + ", ".join(rules.RULES))
    click.echo("signals:    " + ", ".join(rules.SIGNAL_NAMES) + "  (terms: products like post^2*w)")
    click.echo("tasks:      " + ", ".join(tasks.TASKS))
    click.echo("strategies: " + ", ".join(meta.STRATEGIES))
    click.echo("truncated:  " + ", ".join(meta.TRUNCATED_STRATEGIES) + "  (meta.truncation > 0)")
    click.echo("meta:       es, gradient  (meta.optimizer)")
    click.echo("selection:  strategy, learned  (meta.selection, meta.selection_policy)")
    click.echo("backends:   local, ray")


@cli.command()
@click.option("--quick", is_flag=True, help="Fewer repetitions.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write JSON here.")
@click.option(
    "--memory",
    is_flag=True,
    help="Also measure the meta-gradient's memory against unroll length (100 to 10,000 steps)"
    " with and without checkpointing.",
)
@click.option("--no-scaling", is_flag=True, help="Skip the population-scaling runs.")
@click.option("--ray", "with_ray", is_flag=True, help="Also time local vs Ray with 1 and 2 actors.")
@click.option(
    "--only",
    multiple=True,
    help="Time only this config (repeatable): pca, hebbian, mlp_rule, control.",
)
@click.option(
    "--ray-address",
    help="With --ray: time on this Ray cluster (HOST:PORT) instead of a new local instance,"
    " e.g. a head and a second node, whose actors then spread over both.",
)
@click.option(
    "--ray-case",
    "ray_cases",
    multiple=True,
    type=click.Choice(["heavy", "gradient", "dispatch", "bytes", "bytes_large"]),
    help="With --ray: only these measurements (repeatable; default all but bytes_large,"
    " the bytes at a genome of 1e6 numbers).",
)
@click.option("--population", type=click.IntRange(min=2), help="Population size, with --only.")
@click.option(
    "--shard-size",
    type=click.IntRange(min=0),
    help="evaluation.shard_size, with --only; 0 evaluates the whole population at once.",
)
@click.option(
    "--peers",
    is_flag=True,
    help="Only the comparison with EvoJAX and hand-written JAX loops (CartPole, OpenAI-ES;"
    " needs the `peers` extra).",
)
@click.option(
    "--large",
    is_flag=True,
    help="Only the large genomes: time and memory per generation of OpenAI-ES and SNES on"
    " per-synapse rules of about 1e5 and 1e6 numbers (population 256).",
)
@click.option(
    "--to-result",
    is_flag=True,
    help="Only the seconds until a run meets its result's bar (experiments/oja.yaml;"
    " the shared CartPole rule reaching 475).",
)
def bench(
    quick,
    json_path,
    memory,
    no_scaling,
    with_ray,
    ray_address,
    ray_cases,
    only,
    population,
    shard_size,
    peers,
    large,
    to_result,
):
    """Generation time against a minimal loop, machine limits, roofline and scaling.

    With --only, times just the named configs (at --population, --shard-size), e.g. on a GPU:
    ``evoplastic bench --only hebbian --population 4096 --shard-size 0``.
    """
    from .studies.bench import run_bench, run_only

    if (population or shard_size is not None) and not only:
        _fail("bench: --population and --shard-size need --only NAME")
    if (ray_address or ray_cases) and not with_ray:
        _fail("bench: --ray-address and --ray-case need --ray")
    if large or to_result:
        from .studies.bench import bench_large
        from .studies.to_result import run_to_result

        results = {}
        if large:
            results["large"] = bench_large(reps=2 if quick else 3, echo=click.echo)
        if to_result:
            results["to_result"] = run_to_result(echo=click.echo)
        if json_path:
            json_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
        return
    if peers:
        from .studies import peers as peer_bench

        try:
            results = {"peers": peer_bench.run_peers(quick=quick, echo=click.echo)}
        except peer_bench.EvoJAXMissing as err:
            _fail(str(err))
        if json_path:
            json_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
        return
    if with_ray and ray_cases and not only:  # the Ray measurements alone
        from .backends import BackendError
        from .studies.bench_ray import run_ray_bench

        try:
            results = {"ray": run_ray_bench(quick, click.echo, ray_address, ray_cases)}
        except BackendError as err:
            _fail(str(err))
        if json_path:
            json_path.write_text(json.dumps(results, indent=2) + "\n")
        return
    if only:
        try:
            results = run_only(only, population, shard_size, quick=quick, echo=click.echo)
        except ValueError as err:
            _fail(str(err))
    else:
        results = run_bench(quick=quick, echo=click.echo, memory=memory, scaling=not no_scaling)
    if with_ray:
        from .studies.bench_ray import run_ray_bench

        results["ray"] = run_ray_bench(quick, click.echo, ray_address, ray_cases or None)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")


def _read_yaml(path) -> dict:
    import yaml

    from .config import safe_load

    path = Path(path)
    if not path.is_file():
        _fail(f"config file {str(path)!r} not found")
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError:
        _fail(f"{path}: not valid YAML")
    if not isinstance(data, dict):
        _fail(f"{path}: expected a mapping at the top level")
    return data


@cli.command(name="train-selection")
@click.argument("config_path", metavar="CONFIG")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(path_type=Path), help="Policy file (default: output).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def train_selection(config_path, overrides, out, quiet):
    """Train a learned selection policy (meta.selection: learned) and write its file."""
    from .config import ConfigError, set_override
    from .meta import selection
    from .studies import selection_training

    data = _read_yaml(config_path)
    try:
        for assignment in overrides:
            set_override(data, assignment)
        cfg = selection_training.parse_config(data)
    except ConfigError as err:
        _fail(str(err))
    path = out or Path(cfg.output)
    if not path.parent.is_dir():
        _fail(f"output: directory {str(path.parent)!r} does not exist")
    _sigterm_as_interrupt()
    enable_compilation_cache()
    try:
        result = selection_training.train(cfg, echo=None if quiet else click.echo)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; no policy file written", err=True)
        sys.exit(EXIT_INTERRUPTED)
    selection.save_policy(path, result.policy, selection_training.header(cfg, result))
    click.echo(
        f"validation meta-loss {result.initial_validation:.4f} -> {result.final_validation:.4f};"
        f" policy written to {path}"
    )


@cli.command(name="compare-selection")
@click.argument("config_path", metavar="CONFIG")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the table here.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Raw results (JSON).")
def compare_selection(config_path, overrides, out, json_path):
    """Learned selection vs evosax strategies at equal budget on held-out problems."""
    from .config import ConfigError, set_override
    from .meta import selection
    from .studies import selection_compare

    data = _read_yaml(config_path)
    try:
        for assignment in overrides:
            set_override(data, assignment)
        cfg, specs = selection_compare.parse_config(data)
    except ConfigError as err:
        _fail(str(err))
    policy = None
    if {selection_compare.LEARNED, selection_compare.UNTRAINED} & set(cfg.strategies):
        try:
            policy = selection.load_policy(cfg.policy)
        except selection.PolicyFileError as err:
            _fail(f"policy: {err}")
    tasks = {s.name: _load_config(s.config) for s in specs if s.config is not None}
    for task in tasks.values():
        _build(task)
        _preflight(task)
    enable_compilation_cache()
    from .backends import BackendError

    try:
        results = selection_compare.compare(cfg, specs, tasks, policy, echo=click.echo)
    except BackendError as err:
        _fail(str(err))
    table = selection_compare.markdown_table(results, cfg)
    click.echo("\n" + table, nl=False)
    from .checkpoint import atomic_write

    if out:
        atomic_write(out, table.encode())
    if json_path:
        atomic_write(json_path, (json.dumps(results, indent=2) + "\n").encode())


RAY_HINT = "pip install 'ray[default]>=2.40' into this environment (make install has it)"


def _jobs_call(fn, *args, **kwargs):
    import logging

    try:
        import ray.job_submission  # noqa: F401  (its loggers exist once it is imported)
    except ImportError:
        _fail(f"cluster jobs need Ray, which is not installed: {RAY_HINT}")

    from .jobs import JobError

    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no SDK chatter in the CLI output
    # "'.venv' is now ignored by default": the project's excludes list it already
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    try:
        return fn(*args, **kwargs)
    except JobError as err:
        _fail(str(err))


def _report_status(job_id, info):
    if info["status"] == "FAILED":
        lines = [line for line in info["message"].strip().splitlines() if line.strip()]
        _fail(f"job {job_id} failed: {lines[-1].strip() if lines else 'no message'}")
    click.echo(f"{job_id}  {info['status']}  {info['message']}".rstrip())


_ADDRESS = click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    help="Ray dashboard address, http://HEAD:8265 (or $RAY_API_SERVER_ADDRESS).",
)


@cli.command()
@click.argument("config_path", metavar="CONFIG")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@_ADDRESS
@click.option("--workers", type=click.IntRange(min=1), help="Ray actors (default: one per GPU).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="GPUs per actor.")
@click.option("--out", help="Run directory on the cluster (default ~/evoplastic-runs/<job id>).")
@click.option(
    "--project",
    type=click.Path(path_type=Path),
    default=".",
    show_default=True,
    help="Directory uploaded as the job's working directory (holds CONFIG).",
)
@click.option(
    "--env",
    "job_env",
    default="pip",
    show_default=True,
    help="The job's environment: pip or uv (evoplastic and its pinned requirements, installed "
    "by Ray), cluster (the cluster's own python), or image:URI (a container image).",
)
@click.option("--wait", is_flag=True, help="Follow the job's logs until it has finished.")
def submit(config_path, overrides, address, workers, gpus_per_worker, out, project, job_env, wait):
    """Run CONFIG on a Ray cluster as a job (the project is uploaded as its working dir)."""
    from . import jobs

    try:
        jobs.parse_env(job_env)
    except jobs.JobError as err:
        _fail(str(err))
    cfg = _load_config(config_path, overrides)
    _build(cfg)
    job_id = _jobs_call(
        jobs.submit,
        address,
        Path(config_path),
        overrides,
        project=project,
        out=out,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        name=cfg.name,
        env=job_env,
    )
    click.echo(f"submitted job {job_id}")
    if wait:
        _jobs_call(jobs.follow, address, job_id, lambda text: click.echo(text, nl=False))
        _report_status(job_id, _jobs_call(jobs.status, address, job_id, wait=True))


@cli.group(name="jobs")
def jobs_():
    """Ray cluster jobs: list, status, logs, stop."""


@jobs_.command(name="list")
@_ADDRESS
def jobs_list(address):
    """List the cluster's jobs."""
    from . import jobs

    for j in _jobs_call(jobs.list_jobs, address):
        click.echo(f"{j['id']}  {j['status']}  {j['entrypoint']}")


@jobs_.command(name="status")
@click.argument("job_id")
@_ADDRESS
@click.option("--wait", is_flag=True, help="Wait until the job has finished.")
def jobs_status(job_id, address, wait):
    """A job's status; a failed job is an error (exit 2)."""
    from . import jobs

    _report_status(job_id, _jobs_call(jobs.status, address, job_id, wait=wait))


@jobs_.command(name="logs")
@click.argument("job_id")
@_ADDRESS
@click.option("--follow", "-f", is_flag=True, help="Stream the logs until the job has finished.")
def jobs_logs(job_id, address, follow):
    """Print a job's logs."""
    from . import jobs

    if follow:
        _jobs_call(jobs.follow, address, job_id, lambda text: click.echo(text, nl=False))
    else:
        click.echo(_jobs_call(jobs.logs, address, job_id), nl=False)


@jobs_.command(name="stop")
@click.argument("job_id")
@_ADDRESS
def jobs_stop(job_id, address):
    """Stop a running job."""
    from . import jobs

    stopped = _jobs_call(jobs.stop, address, job_id)
    click.echo(f"{job_id}: {'stopping' if stopped else 'not running'}")


def main(argv=None):
    """Entry point: click with one-line errors (exit 2) instead of usage dumps."""
    # Ctrl-C / SIGINT always interrupts a run (with a checkpoint), even where the process
    # was started with SIGINT ignored, as background jobs of non-interactive shells are
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="evoplastic")
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except UserError as err:
        err.show()
        sys.exit(err.exit_code)
    except click.UsageError as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
