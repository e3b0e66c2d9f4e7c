"""Backprop baselines with the input scale tuned too: every advantage to the baseline.

``evoplastic eval RUN task=mnist1d input_scale=S`` compares a carried rule with SGD, Adam
and layer-local training on the same inputs (scale ``S``), their learning rates tuned on
MNIST-1D's validation pool. A rule may need small inputs (the committed digits rule
diverges on MNIST-1D's unit-variance inputs); gradient descent on the first layer is slowed
by them (its gradient and its effect both scale with the input). This module also tunes
the input scale for each optimizer, on the validation pool: for every scale, the learning
rate with the lowest validation loss; then the scale with the best validation accuracy at
its tuned rate; then held-out (test) figures at that scale and rate::

    python -m evoplastic.analysis.transfer RUN task=mnist1d network.hidden=[64,64] \\
        --scales 0.02,0.1,0.3,1,3

With ``--rules RUN...`` it evaluates instead the rules of several runs (e.g. the seeds of
one config), each carried unchanged to the task, on the held-out instances (no baselines)::

    python -m evoplastic.analysis.transfer task=mnist1d network.hidden=[64,64] \\
        input_scale=0.02 --rules experiments/results/digits runs/digits_s1 ...

(the same figures, as a table, from ``evoplastic eval experiments/results/digits
task=mnist1d network.hidden=[64,64] input_scale=0.02 --no-baselines --also runs/digits_s1``;
the committed result files made with ``--rules`` name it as their command.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .baselines import TUNE_SEED, _losses, tune_learning_rate, tune_split
from .report import summarize


def best_input_scale(run_dir, items, optimizer: str, scales, instances: int = 100) -> dict:
    """``{"scale", "lr", "validation_accuracy", "accuracy": summary, "by_scale"}`` for one
    optimizer: scale and rate chosen on validation instances, scored on held-out ones."""
    from ..experiment import build
    from ..tasks import test_instance_keys
    from .evaluation import config_with_task

    base = jax.random.PRNGKey(TUNE_SEED)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(32))
    by_scale = {}
    for scale in scales:
        cfg, _ = config_with_task(run_dir, [*items, f"input_scale={scale}"])
        family = build(cfg).family
        lr = tune_learning_rate(family, optimizer)
        _, metrics = _losses(family, optimizer, [lr], keys, tune_split(family))
        by_scale[scale] = (lr, float(np.mean(metrics["accuracy"][0])), family)
    scale = max(by_scale, key=lambda s: by_scale[s][1])
    lr, val_acc, family = by_scale[scale]
    _, metrics = _losses(family, optimizer, [lr], test_instance_keys(instances), "test")
    return {
        "scale": scale,
        "lr": lr,
        "validation_accuracy": val_acc,
        "accuracy": summarize(metrics["accuracy"][0]),
        "by_scale": {s: {"lr": v[0], "validation_accuracy": v[1]} for s, v in by_scale.items()},
    }


def carried_rule(run_dir, items, instances: int = 100) -> dict:
    """``{metric: summary}`` of a run's rule, carried unchanged to the changed task."""
    from ..config import parse, safe_load
    from ..experiment import build
    from .evaluation import carry_genome, config_with_task, evaluate_rule

    run_dir = Path(run_dir)
    source = build(parse(safe_load((run_dir / "config.yaml").read_text())))
    flat = json.loads((run_dir / "best_rule.json").read_text())["genome_flat"]
    genome = source.unflatten_genome(flat)
    cfg, _ = config_with_task(run_dir, items)
    exp = build(cfg)
    return evaluate_rule(exp, carry_genome(source, genome, exp), instances)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evoplastic.analysis.transfer")
    parser.add_argument("args", nargs="+", help="RUN TASK_PARAM=VALUE..., as for eval")
    parser.add_argument("--rules", nargs="+", type=Path, help="evaluate these runs' rules")
    parser.add_argument("--scales", default="0.02,0.1,0.3,1,3")
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--optimizers", default="sgd,adam")
    args = parser.parse_args(argv)
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        print(f"--scales: expected numbers separated by commas, got {args.scales!r}")
        return 2
    run_dirs = args.rules if args.rules else [Path(args.args[0])]
    items = args.args if args.rules else args.args[1:]
    for run_dir in run_dirs:
        if not (run_dir / "config.yaml").is_file():
            print(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
            return 2
    if args.rules:
        out = {str(r): carried_rule(r, items, args.instances) for r in run_dirs}
    else:
        out = {
            opt: best_input_scale(run_dirs[0], items, opt, scales, args.instances)
            for opt in args.optimizers.split(",")
        }
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
