"""Plasticity rules: pure ``init``/``update`` pairs, and a registry to make them by name."""

from .base import SIGNAL_NAMES, Rule, Signals, with_learned_init, with_parts
from .fixed import bcm, fa
from .hebbian import COEFFICIENTS, abcd, static
from .mlp import mlp
from .polynomial import (
    DEFAULT_TERMS,
    REFERENCE_RULES,
    TermError,
    canonical,
    format_equation,
    hebb,
    oja,
    parse_term,
    polynomial,
    reference_genome,
)
from .stateful import stateful
from .trace import hebb_trace

RULES = {
    "polynomial": polynomial,
    "abcd": abcd,
    "mlp": mlp,
    "stateful": stateful,
    "static": static,
    "hebb": hebb,
    "oja": oja,
    "bcm": bcm,
    "fa": fa,
    "hebb_trace": hebb_trace,
}

FIXED_RULES = ("hebb", "oja", "bcm", "fa")  # baselines with empty genomes


def make(name: str, **kwargs) -> Rule:
    """Make a rule from the registry: ``make("polynomial", terms=("pre*post", "w"))``."""
    return RULES[name](**kwargs)


__all__ = [
    "COEFFICIENTS",
    "abcd",
    "mlp",
    "static",
    "stateful",
    "with_learned_init",
    "with_parts",
    "bcm",
    "fa",
    "FIXED_RULES",
    "DEFAULT_TERMS",
    "REFERENCE_RULES",
    "RULES",
    "SIGNAL_NAMES",
    "Rule",
    "Signals",
    "TermError",
    "canonical",
    "format_equation",
    "hebb",
    "hebb_trace",
    "make",
    "oja",
    "parse_term",
    "polynomial",
    "reference_genome",
]
