"""Run directories made without training: a config and a chosen genome (fast analysis tests)."""

import json
from pathlib import Path

from evoplastic import config
from evoplastic.experiment import build
from evoplastic.trainer import prepare_run_dir, write_json


def fake_run(run_dir: Path, cfg: dict, genome=None, generations: int = 3):
    """A run directory holding ``cfg``, a few metric lines and ``genome`` as its rule.

    Returns ``(experiment, genome)``; ``genome`` defaults to the rule's initial genome.
    """
    cfg = dict(cfg, strategy=dict(cfg.get("strategy", {}), name="simple_es"))  # quick to build
    exp = build(config.parse(cfg))
    genome = exp.genome_template if genome is None else genome
    prepare_run_dir(Path(run_dir), exp)
    lines = [
        {"generation": g, "best_loss": 1.0 / (g + 1), "mean_loss": 2.0 / (g + 1)}
        for g in range(generations)
    ]
    (Path(run_dir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    write_json(Path(run_dir) / "best_rule.json", {"genome_flat": exp.flat_genome(genome)})
    return exp, genome
