"""Evaluation backends. ``local`` (in-process, one compiled generation) is the default."""

from .local import (
    evaluate_genome,
    evaluate_population,
    generation_keys,
    make_generation_step,
    make_genome_evaluator,
    member_keys,
    sanitize,
    strong_types,
    task_fitness,
)

BACKENDS = ("local",)

__all__ = [
    "BACKENDS",
    "evaluate_genome",
    "evaluate_population",
    "generation_keys",
    "make_generation_step",
    "make_genome_evaluator",
    "member_keys",
    "sanitize",
    "strong_types",
    "task_fitness",
]
