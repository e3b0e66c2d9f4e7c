"""The default experiment rediscovers Oja's rule (held-out instances, stated tolerances)."""

from pathlib import Path

import pytest

import evoplastic as ep

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *overrides):
    cfg = ep.config.load(ROOT / "experiments" / "oja.yaml", overrides)
    return ep.run(cfg, tmp_path / "run")


def _check(summary):
    rule = summary["rule"]
    assert rule["cosine_to_oja"] >= 0.95, rule["equation"]
    for variant in ("trained", "dim_x5"):
        evolved = summary["eval"][variant]["evolved"]
        assert evolved["alignment"]["n"] == 100
        assert evolved["alignment"]["median"] >= 0.99, (variant, evolved)
        assert abs(evolved["norm"]["median"] - 1.0) < 0.05


def test_default_experiment_rediscovers_oja(tmp_path):
    """`make run`'s config: cosine >= 0.95 to Oja; median |cos(w, PC1)| >= 0.99 at 8 and 40."""
    _check(_run(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rediscovers_oja_across_seeds(tmp_path, seed):
    _check(_run(tmp_path, f"seed={seed}"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sep_cma_es", "snes", "open_es"])
def test_rediscovers_oja_with_other_strategies(tmp_path, strategy):
    _check(_run(tmp_path, f"strategy.name={strategy}", "generations=400"))
