"""The committed results reproduce: each genome under ``experiments/results/`` is evaluated
again on its 100 held-out instances and must give the figure of its ``eval.json`` and the
claim of docs/results.md (targets met, or the measured shortfall, with stated tolerances).
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import backends, build
from evoplastic.analysis import evaluate_final, summarize
from evoplastic.config import load

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def _load(name: str):
    """The committed run ``name``: its experiment, final genome and evaluation."""
    run_dir = RESULTS / name
    exp = build(load(run_dir / "config.yaml"))
    flat = json.loads((run_dir / "best_rule.json").read_text())["genome_flat"]
    committed = json.loads((run_dir / "eval.json").read_text())
    return exp, exp.unflatten_genome(flat), committed


def _evaluate(name: str, baselines=()):
    exp, genome, committed = _load(name)
    return evaluate_final(exp, genome, 100, baselines=baselines), committed


def _evolved(name: str, variants=("trained",), metric="return"):
    """The evolved genome's held-out summaries on some variants only (no baselines), and
    the committed evaluation."""
    exp, genome, committed = _load(name)
    out = {}
    for variant in variants:
        overrides = dict(exp.config.test.variants).get(variant, {})
        family = exp.family_variant(**overrides) if overrides else exp.family
        raw = backends.evaluate_genome(family, exp.rule, genome, 100)
        out[variant] = summarize(raw[metric])
    return out, committed


def _mean(results, variant, rule, metric):
    return results[variant][rule][metric]["mean"]


# (run, variant, metric, lower bound on the evolved rule's held-out mean: the target
# where it is met; where it is not, the committed shortfall is what this pins)
CONTROL = [
    ("cartpole_abcd", "trained", "return", 490.0),
    ("cartpole_abcd", "long_heavy_pole", "return", 450.0),
    ("acrobot_abcd", "trained", "return", -100.0),
    ("pendulum_abcd", "trained", "return", -200.0),
    ("cartpole_trace_synapse", "inverted_at_250", "return", 400.0),
    ("cartpole_shared_excitatory", "trained", "return", 475.0),  # one rule per layer
]


@pytest.mark.parametrize("name,variant,metric,bound", CONTROL)
def test_control_targets_reproduce(name, variant, metric, bound):
    results, committed = _evolved(name, (variant,), metric)
    got = results[variant]["mean"]
    want = committed[variant]["evolved"][metric]["mean"]
    assert got == pytest.approx(want, rel=1e-3, abs=0.5)  # the committed figure
    assert got >= bound


def test_plastic_network_outlasts_static_weights_when_the_sensors_invert():
    """Target: with the sensors inverted at step 250 the plastic network scores >= 400 and
    weights evolved directly (same network and strategy) score lower; both fall or not on
    the same 100 held-out episodes, so the comparison is paired."""
    inv = "inverted_at_250"
    plastic, _ = _evolved("cartpole_trace_synapse", (inv,))
    static, committed = _evolved("cartpole_trace_synapse_static", ("trained", inv))
    got = static[inv]["mean"]
    assert got == pytest.approx(committed[inv]["evolved"]["return"]["mean"], rel=1e-3, abs=0.5)
    assert static["trained"]["mean"] >= 475  # a good static controller
    p, q = plastic[inv], static[inv]
    assert p["mean"] - p["ci95"] > q["mean"] + q["ci95"]  # apart beyond both intervals


def test_shared_rule_keeps_the_network_learning_through_the_episode():
    """The shared-rule CartPole network balances because its rule keeps working: with the
    same random initial weights kept (no plasticity), or the rule stopped at step 100, it
    falls much earlier (paired: the same 100 held-out episodes)."""
    variants = ("trained", "no_plasticity", "rule_stops_at_100")
    got, committed = _evolved("cartpole_shared_excitatory", variants)
    for v in variants:
        assert got[v]["mean"] == pytest.approx(
            committed[v]["evolved"]["return"]["mean"], rel=1e-3, abs=0.5
        )
    full = got["trained"]
    for v in variants[1:]:
        assert full["mean"] - full["ci95"] > got[v]["mean"] + got[v]["ci95"], v


@pytest.mark.slow  # re-tunes SGD and Adam (21 s); the default tier keeps the horizons rule's
# re-evaluation against the committed SGD figure (tests/test_horizons.py)
def test_sinusoid_rule_beats_tuned_sgd_on_held_out_instances():
    """Target: the learned local rule's test MSE is below tuned SGD's (same network,
    initial weights, examples and steps), and below predicting zero (it learns)."""
    results, committed = _evaluate("sinusoid")
    rule = results["trained"]["evolved"]["mse"]
    sgd = results["trained"]["sgd"]["mse"]
    assert rule["mean"] == pytest.approx(committed["trained"]["evolved"]["mse"]["mean"], rel=1e-3)
    assert rule["nonfinite"] == 0
    assert rule["mean"] + rule["ci95"] < sgd["mean"]  # below SGD beyond the 95% interval
    # predicting zero scores the mean of A^2 sin^2: about 4.2 for A ~ U[0.1, 5]
    assert rule["mean"] < 0.6 * 4.2


@pytest.mark.slow  # digits compiles for 10-50 s on 2 cores
def test_digits_rule_at_least_tuned_sgd():
    results, committed = _evaluate("digits")
    acc = _mean(results, "trained", "evolved", "accuracy")
    assert acc == pytest.approx(committed["trained"]["evolved"]["accuracy"]["mean"], rel=1e-3)
    assert acc >= _mean(results, "trained", "sgd", "accuracy")


def test_every_result_has_its_config_genome_and_evaluation():
    names = sorted(p.name for p in RESULTS.iterdir() if p.is_dir())
    assert {"cartpole_abcd", "cartpole_trace_synapse", "sinusoid", "digits"} <= set(names)
    for name in names:
        files = {p.name for p in (RESULTS / name).iterdir()}
        assert {"config.yaml", "best_rule.json", "eval.json"} <= files, name
        flat = json.loads((RESULTS / name / "best_rule.json").read_text())["genome_flat"]
        assert np.all(np.isfinite(flat)), name


def test_mlp_rule_rediscovers_oja_without_a_term_library():
    """Target: an MLP of pre, post and w (no polynomial terms), evolved by CMA-ES at dim 8,
    aligns the neuron with PC1 (median |cos| >= 0.99) at dim 8 and at dim 40; so does the
    same MLP, made odd in (post, w), meta-trained by backprop."""
    variants = ("trained", "dim_x5")
    for name, bounds in (("oja_mlp", (0.99, 0.99)), ("oja_mlp_backprop", (0.99, 0.99))):
        got, committed = _evolved(name, variants, metric="alignment")
        for variant, bound in zip(variants, bounds, strict=True):
            median = got[variant]["median"]
            want = committed[variant]["evolved"]["alignment"]["median"]
            assert median == pytest.approx(want, abs=1e-4), (name, variant)
            assert median >= bound, (name, variant, median)
            assert got[variant]["nonfinite"] == 0


def _check_unit_scale_bars(variants):
    got, committed = _evolved("oja_mlp_unit_scale", variants, metric="alignment")
    for variant in variants:
        median = got[variant]["median"]
        want = committed[variant]["evolved"]["alignment"]["median"]
        assert median == pytest.approx(want, abs=1e-4), variant
        assert median >= 0.99 and got[variant]["nonfinite"] == 0, (variant, median)


def test_unit_scale_mlp_rule_distills_into_ojas_rule():
    """Target (issue 14, item 2): the MLP rule meta-trained at one input scale meets the
    Oja bar at dim 8 (at scale 1 and at oja.yaml's scales 0.5..2; dim 40: the slow test
    below), and its committed distillate has Oja's two terms largest, held-out R² >= 0.9,
    and a held-out loss (100 instances, re-evaluated here) not more than 10% above the
    rule's."""
    from evoplastic.analysis import distill as dist

    _check_unit_scale_bars(("trained", "scales"))
    exp, genome, _ = _load("oja_mlp_unit_scale")
    d = dist.load(RESULTS / "oja_mlp_unit_scale" / dist.FILE_NAME)
    assert set(d.dominant(2)) == {"pre*post", "post^2*w"}
    assert d.r2 >= 0.9
    oja = dict(zip(d.terms, d.coefficients, strict=True))
    assert oja["pre*post"] > 0 > oja["post^2*w"]
    dexp, dgenome = dist.distilled_experiment(exp.config, d, genome)
    losses = dist.heldout_losses({"rule": (exp, genome), "distilled": (dexp, dgenome)}, 100)
    assert losses["distilled"] <= 1.1 * losses["rule"], losses


@pytest.mark.slow  # dim 40 and a distillation: about a minute on 2 cores
def test_unit_scale_mlp_distillation_reproduces():
    """The Oja bar at dim 40 (scale 1 and scales 0.5..2), and ``evoplastic distill`` on the
    committed rule (8 fit and 8 held-out instances, the sparsity chosen by task loss on 16)
    gives the committed equation and held-out R² again."""
    from evoplastic.analysis import distill as dist

    _check_unit_scale_bars(("dim_x5", "dim_x5_scales"))
    exp, genome, _ = _load("oja_mlp_unit_scale")
    want = dist.load(RESULTS / "oja_mlp_unit_scale" / dist.FILE_NAME)
    d = dist.distill_rule(
        exp.family, exp.rule, genome, fit_instances=8, heldout_instances=8, select_instances=16
    )
    assert d.terms == want.terms
    np.testing.assert_allclose(d.coefficients, want.coefficients, rtol=1e-3, atol=1e-5)
    assert d.r2 == pytest.approx(want.r2, abs=1e-3) and d.r2 >= 0.9


# lower bounds on the held-out bit accuracy: the target (0.99), met by both (hinge loss)
PATTERNS_BOUND = {"patterns": 0.99, "patterns_es": 0.99}


@pytest.mark.parametrize("name", ["patterns", "patterns_es"])
def test_patterns_plastic_network_completes_the_zeroed_bits(name):
    """Target: on 100 held-out episodes (N = 100, P = 5) the plastic network completes
    >= 99% of the zeroed bits (the committed figure, re-evaluated; see PATTERNS_BOUND)."""
    results, committed = _evolved(name, metric="bit_accuracy")
    got = results["trained"]
    want = committed["trained"]["evolved"]["bit_accuracy"]["mean"]
    assert got["mean"] == pytest.approx(want, abs=1e-4)
    assert got["mean"] >= PATTERNS_BOUND[name]


def test_patterns_lstm_baseline_stays_below_the_plastic_network():
    """The LSTM with at least as many parameters, trained on the same episodes and
    optimizer steps (its committed evaluation), completes fewer bits, beyond both
    intervals."""
    exp, _, committed = _load("patterns")
    lstm = json.loads((RESULTS / "patterns" / "lstm.json").read_text())
    assert (
        lstm["params"] >= lstm["plastic_genome_params"] == len(exp.flat_genome(exp.genome_template))
    )
    assert lstm["optimizer_steps"] == exp.config.generations
    assert (lstm["loss"], lstm["margin"]) == (exp.family.loss, exp.family.margin)
    assert lstm["episodes"] == exp.config.generations * exp.config.evaluation.instances
    p = committed["trained"]["evolved"]["bit_accuracy"]
    q = lstm["test"]["bit_accuracy"]
    assert p["mean"] - p["ci95"] > q["mean"] + q["ci95"]


@pytest.mark.slow  # digits with a network per synapse: about a minute on 2 cores
@pytest.mark.parametrize("suffix", ["_horizons", ""])  # the results page's pair; one horizon
def test_stateful_rule_beats_the_stateless_mlp_rule_of_its_size_on_digits(suffix):
    """Target: the stateful rule (GRU cell, 117 parameters) beats the stateless MLP rule of
    the same signals and size (115 parameters) on unseen digits, beyond both intervals."""
    got = {}
    for name in (f"digits_stateful{suffix}", f"digits_mlp{suffix}"):
        results, committed = _evaluate(name)
        acc = results["trained"]["evolved"]["accuracy"]
        want = committed["trained"]["evolved"]["accuracy"]["mean"]
        assert acc["mean"] == pytest.approx(want, rel=1e-3), name
        got[name] = acc
    s, m = got[f"digits_stateful{suffix}"], got[f"digits_mlp{suffix}"]
    assert s["mean"] - s["ci95"] > m["mean"] + m["ci95"], (s, m)


# (run, arms): the evolved agent's cumulative regret <= UCB1's on the same 100 held-out
# bandits (the target), re-evaluated from the committed genome
BANDITS = [
    ("bandit2", 2),
    pytest.param("bandit5", 5, marks=pytest.mark.slow),  # 17-18 s; bandit2 and misc stay
    ("bandit_misc", 2),
]


@pytest.mark.parametrize("name,arms", BANDITS)
def test_bandit_agent_regret_is_at_most_ucb1s(name, arms):
    """Target: on 100 held-out bandits (100 pulls; independent, or gymnax's
    BernoulliBandit-misc for bandit_misc) the evolved modulated plastic agent's mean
    cumulative regret is at most UCB1's; both figures and Thompson's are the committed
    ones."""
    from evoplastic.analysis import bandit_baselines

    exp, genome, committed = _load(name)
    assert exp.family.arms == arms and exp.family.pulls == 100
    assert exp.family.env == ("BernoulliBandit-misc" if name == "bandit_misc" else "independent")
    raw = backends.evaluate_genome(exp.family, exp.rule, genome, 100)
    got = summarize(raw["regret"])
    want = committed["trained"]
    assert got["mean"] == pytest.approx(want["evolved"]["regret"]["mean"], abs=1e-3)
    base = bandit_baselines.evaluate(exp.family, 100, ("ucb1", "thompson"))
    for algo in ("ucb1", "thompson"):
        mean = float(np.mean(base[algo]["regret"]))
        assert mean == pytest.approx(want[algo]["regret"]["mean"], abs=1e-3)
    assert got["mean"] <= float(np.mean(base["ucb1"]["regret"]))


def test_metamaze_plastic_agent_collects_more_than_the_non_plastic_one():
    """MetaMaze: both committed agents give their committed returns on the 100 held-out
    episodes, and the non-plastic one has at least the plastic one's number of evolved
    values. Target: the plastic agent collects more, 95% intervals apart. On the 100
    episodes they overlap; on 1,000 held-out episodes they are apart (seed 0, the committed
    run; 3 of 5 seeds meet it, experiments/results/metamaze/seeds.json)."""
    got = {}
    for name in ("metamaze", "metamaze_memory"):
        exp, genome, committed = _load(name)
        raw = backends.evaluate_genome(exp.family, exp.rule, genome, 1000)
        first = summarize(raw["return"][:100])
        want = committed["trained"]["evolved"]["return"]["mean"]
        assert first["mean"] == pytest.approx(want, abs=1e-3), name
        got[name] = summarize(raw["return"]) | {"params": len(exp.flat_genome(genome))}
    p, m = got["metamaze"], got["metamaze_memory"]
    assert m["params"] >= p["params"]
    assert p["mean"] - p["ci95"] > m["mean"] + m["ci95"], (p, m)


def test_error_gated_rule_beats_tuned_sgd_with_40_percent_of_labels():
    """Target (semi-supervised digits): a learned rule >= tuned SGD with the same 40% of
    labels. The committed error-gated rule gives its committed held-out figure and is above
    the committed SGD figure beyond both intervals, on 5 of 5 committed seeds; every term
    carries the error, so on an instance without labels it leaves the network untouched."""
    import dataclasses

    from evoplastic.tasks import test_instance_keys

    exp, genome, committed = _load("digits_semisupervised_err")
    assert exp.family.label_fraction == 0.4
    raw = backends.evaluate_genome(exp.family, exp.rule, genome, 100)
    got = summarize(raw["accuracy"])
    want = committed["trained"]["evolved"]["accuracy"]
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-3) and got["nonfinite"] == 0
    sgd = committed["trained"]["sgd"]["accuracy"]
    seeds = json.loads((RESULTS / "digits_semisupervised_err" / "seeds.json").read_text())
    assert seeds["seeds"]["seed 0"] == committed["trained"]["evolved"]
    met = [
        s["accuracy"]["mean"] - s["accuracy"]["ci95"] > sgd["mean"] + sgd["ci95"]
        for s in seeds["seeds"].values()
    ]
    assert met == [True] * 5
    # no labels: the query loss is the untrained network's
    task = exp.family.sample(test_instance_keys(1)[0], "test")
    unlabelled = dataclasses.replace(task, mask=jnp.zeros_like(task.mask))
    loss, _ = exp.family.inner_loop(exp.rule, genome, unlabelled)
    untrained, _ = exp.family.query(exp.family.network.init(task.weight_key).ws, task)
    assert float(loss) == pytest.approx(float(untrained), rel=1e-6)
    trained, _ = exp.family.inner_loop(exp.rule, genome, task)
    assert float(trained) < float(untrained) - 0.1  # with its labels it learns
