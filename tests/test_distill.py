"""Distillation: sparse regression recovers known rules from their inner-loop signals."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from evoplastic import rules, tasks
from evoplastic.analysis import distill
from evoplastic.analysis.trace import Trace, record_inner_loops
from evoplastic.backends import evaluate_genome
from evoplastic.rules import Signals

from .conftest import small_config
from .rundirs import fake_run
from .test_plots import call, config_with

OJA = {"pre*post": 1.0, "post^2*w": -1.0}


def coefficient(d, term):
    return float(d.coefficients[d.terms.index(term)]) if term in d.terms else 0.0


@pytest.fixture(scope="module")
def pca():
    return tasks.make("pca", dim=8, steps=200)


def test_term_library_is_every_monomial_up_to_the_degree():
    lib = distill.term_library(("pre", "post", "w"), 3)
    assert len(lib) == len(set(lib)) == 20  # C(3 + 3, 3) monomials of degree <= 3
    assert lib[0] == "1" and "post^2*w" in lib and "pre^3" in lib and "err" not in lib


def test_stlsq_recovers_a_sparse_sum_and_drops_the_rest():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    y = 2.0 * x[:, 1] - 0.5 * x[:, 4] + 1e-4 * rng.normal(size=500)
    coef = distill.stlsq(x, y, threshold=0.01)
    np.testing.assert_allclose(coef, [0, 2.0, 0, 0, -0.5, 0], atol=1e-3)
    assert np.count_nonzero(coef) == 2


def _mlp_like_oja(steps=600):
    """An MLP rule trained by regression to approximate Oja's rule on the signals' range."""
    rule = rules.mlp(features=("pre", "post", "w"), hidden=(32,), out_scale=1.0)
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    pre = jax.random.uniform(k[0], (2048,), minval=-2.5, maxval=2.5)
    post = jax.random.uniform(k[1], (2048,), minval=-3.0, maxval=3.0)
    w = jax.random.uniform(k[2], (2048,), minval=-1.0, maxval=1.0)
    target = pre * post - post**2 * w

    def one(g, p, q, v):
        return rule.update(g, Signals(pre=p[None], post=q[None], w=v[None, None]))[0, 0]

    def loss(g):
        return jnp.mean((jax.vmap(one, (None, 0, 0, 0))(g, pre, post, w) - target) ** 2)

    opt = optax.adam(2e-2)

    @jax.jit
    def train(g):
        def body(carry, _):
            g, s = carry
            grads = jax.grad(loss)(g)
            updates, s = opt.update(grads, s, g)
            return (optax.apply_updates(g, updates), s), None

        (g, _), _ = jax.lax.scan(body, (g, opt.init(g)), None, length=steps)
        return g, loss(g) / jnp.var(target)

    genome, rel = train(rule.init(jax.random.PRNGKey(0)))
    assert float(rel) < 0.01  # the MLP is a good approximation where it was fitted
    return rule, genome


@pytest.fixture(scope="module")
def mlp_like_oja():
    return _mlp_like_oja()


def test_distilling_an_mlp_rule_finds_the_polynomial_it_approximates(pca, mlp_like_oja):
    rule, genome = mlp_like_oja
    d = distill.distill_rule(pca, rule, genome, fit_instances=2, heldout_instances=2)
    assert d.r2 > 0.9, d.equation
    # the two dominant terms, by how much they move dw on the held-out signals
    assert set(d.dominant(2)) == set(OJA), (d.equation, d.importance)
    for term, value in OJA.items():
        assert coefficient(d, term) == pytest.approx(value, rel=0.15), d.equation
    # held-out PCA loss of the distilled rule within 0.005 of the MLP's (8 instances)
    original = np.mean(evaluate_genome(pca, rule, genome, 8)["loss"])
    distilled = np.mean(evaluate_genome(pca, distill.distilled_rule(d), d.genome(), 8)["loss"])
    assert abs(distilled - original) < 0.005, (original, distilled)


def test_distill_and_eval_commands(tmp_path, capsys):
    run_dir = tmp_path / "run"  # pca; terms pre*post, post^2*w, w, post; the rule is Oja's
    fake_run(run_dir, small_config(), jnp.array([1.0, -1.0, 0.0, 0.0]))
    args = ["--fit-instances", "2", "--heldout-instances", "2", "--eval-instances", "0"]
    assert call(["distill", str(run_dir), *args, "--target", "window"]) == 0
    out = capsys.readouterr().out
    assert "distilled: dw = pre*post - post^2*w" in out, out
    saved = distill.load(run_dir / "distilled.json")
    # Oja's terms and coefficients, everything else of the cubic library dropped
    # one sample per synapse and 20-step window: 4 synapses, 63 // 20 windows, 2 instances
    assert saved.r2 > 0.99 and saved.samples["heldout"] == 4 * 3 * 2 and saved.window == 20
    assert set(saved.terms) == set(OJA), saved.equation
    for term, value in OJA.items():
        assert coefficient(saved, term) == pytest.approx(value, rel=1e-3)
    assert saved.library == distill.term_library(("pre", "post", "w"), 3)  # err, mod: constant
    assert set(saved.dominant(2)) == set(OJA) and min(saved.importance) > 0.1
    # evaluated like any other rule: its held-out scores are those of the fixed Oja rule
    assert call(["eval", str(run_dir), "--rule", "distilled", "--instances", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["rules"]
    for metric in ("loss", "alignment", "norm"):
        for stat in ("mean", "median"):
            distilled, oja = report["evolved"][metric][stat], report["oja"][metric][stat]
            assert distilled == pytest.approx(oja, abs=1e-5), (metric, stat)


def test_distill_errors_are_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    fake_run(run_dir, config_with({"name": "polynomial", "terms": ["pre*post", "w"]}), jnp.zeros(2))
    assert call(["distill", str(run_dir), "--heldout-instances", "1", "--eval-instances", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "dw = 0" in err
    assert not (run_dir / "distilled.json").exists()
    assert call(["eval", str(run_dir), "--rule", "distilled"]) == 2
    err = capsys.readouterr().err
    assert "distilled.json not found" in err and err.count("\n") == 1


def test_distilling_a_polynomial_rule_recovers_its_coefficients(pca):
    """Any polynomial in the library is recovered exactly, whatever the window: the
    windowed sums of its terms add up to its windowed weight change."""
    terms = ("pre*post", "post^2*w", "w", "1")
    coefs = np.array([0.7, -1.3, 0.2, -0.05])
    rule = rules.polynomial(terms)
    for target, window in (("window", 1), ("window", 20), ("drift", 20)):
        d = distill.distill_rule(
            pca, rule, jnp.asarray(coefs), 2, 2, window=window, target=target
        )  # fmt: skip
        assert set(d.terms) == set(terms), d.equation
        for term, value in zip(terms, coefs, strict=True):
            assert coefficient(d, term) == pytest.approx(value, rel=1e-4), (window, d.equation)
        assert d.r2 > 0.9999 and d.window == window and d.target == target
        assert d.instances["diverged"] == 0


def test_signals_are_recorded_in_float64_on_the_same_instances(pca):
    rule = rules.polynomial(("pre*post", "post^2*w"))
    keys = tasks.test_instance_keys(2)
    low = record_inner_loops(pca, rule, jnp.array([1.0, -1.0]), keys)
    high = record_inner_loops(pca, rule, jnp.array([1.0, -1.0]), keys, float64=True)
    for a, b in zip(low, high, strict=True):
        assert a.layers[0]["w"].dtype == np.float32 and b.layers[0]["w"].dtype == np.float64
        np.testing.assert_allclose(a.layers[0]["pre"], b.layers[0]["pre"], rtol=1e-6)
        assert b.loss == pytest.approx(a.loss, rel=1e-3, abs=1e-5)


def _trace(w_last=1.0, loss=0.1):
    w = np.ones((5, 1, 2))
    w[-1] = w_last
    layer = {
        "pre": np.ones((5, 2)), "post": np.ones((5, 1)), "w": w, "err": np.zeros((5, 1)),
        "mod": np.zeros(5), "dw": np.zeros((5, 1, 2)),
    }  # fmt: skip
    return Trace(layers=[layer], loss=loss, metrics={})


def test_an_instance_diverged_if_its_weights_blow_up_or_are_not_finite():
    assert not distill.diverged(_trace())
    assert not distill.diverged(_trace(w_last=100.0))  # grew, but 100x is not divergence
    assert distill.diverged(_trace(w_last=1e5))
    assert distill.diverged(_trace(w_last=np.inf))
    assert distill.diverged(_trace(loss=float("nan")))


def test_a_divergent_rule_fails_with_one_line(tmp_path, capsys):
    """Hebb's rule with a large step grows the weights without bound on every instance:
    one line and exit code 2, never an equation fitted to overflowing numbers."""
    run_dir = tmp_path / "run"
    fake_run(run_dir, config_with({"name": "polynomial", "terms": ["pre*post"]}), jnp.ones(1) * 5)
    args = ["--fit-instances", "2", "--heldout-instances", "1", "--eval-instances", "0"]
    assert call(["distill", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    found = re.match(r"error: distill: the rule diverged on (\d+) of 12 held-out instances", err)
    assert found and int(found.group(1)) > 9, err  # 2 + 1 needed, 4 x 3 tried
    assert err.count("\n") == 1
    assert not (run_dir / "distilled.json").exists()


def test_sparsity_is_chosen_by_the_equations_task_loss(pca, mlp_like_oja):
    """Each candidate equation (one per sparsity) is run as a rule on instances of its own;
    the sparsest within 10% of the rule's loss is kept, else the best."""
    rule, genome = mlp_like_oja
    d = distill.distill_rule(pca, rule, genome, 2, 2, threshold=0.001, select_instances=8)
    sel = d.selection
    assert sel["instances"] == 8 and len(sel["candidates"]) >= 2, sel
    sizes = [c["terms"] for c in sel["candidates"]]
    assert sizes == sorted(sizes, reverse=True)  # larger thresholds, fewer terms
    chosen = next(c for c in sel["candidates"] if c["threshold"] == d.threshold)
    assert chosen["terms"] == len(d.terms)
    good = [c for c in sel["candidates"] if c["loss"] <= 1.1 * sel["rule_loss"]]
    if good:
        assert chosen["terms"] == min(c["terms"] for c in good)
    else:
        assert chosen["loss"] == min(c["loss"] for c in sel["candidates"])
    assert set(d.dominant(2)) == set(OJA), d.equation


def test_the_drift_is_the_expected_update_at_a_state_held_fixed():
    """Oja's rule's drift vanishes where it converges: at the end of its own inner loop
    (w near PC1, |w| near 1) it is a small fraction of what it is at the start, although
    single steps there are as large as ever; and the drift of a polynomial rule is the
    sum of its terms' drifts (the same states and inputs)."""
    pca = tasks.make("pca", dim=8, steps=1000)
    rule = rules.polynomial(("pre*post", "post^2*w"))
    genome = jnp.array([1.0, -1.0])
    keys = tasks.test_instance_keys(2)
    visited = distill.visited_states(pca, rule, genome, keys, every=100, inputs=200)
    mean = distill.drift(pca, rule, genome[None], visited)[0]  # [2, states, 8]
    size = np.linalg.norm(mean, axis=-1)
    assert np.all(size[:, -1] < 0.05 * size[:, 0]), size
    # single steps at the last state are not small: the average over inputs is what vanishes
    for seed in range(3):
        single = distill.visited_states(pca, rule, genome, keys, every=100, inputs=1, seed=seed)
        step = np.linalg.norm(distill.drift(pca, rule, genome[None], single)[0], axis=-1)
        assert np.all(step[:, -1] > 3 * size[:, -1]), (step[:, -1], size[:, -1])
    x, y = distill.drift_samples(pca, rule, genome, keys, ("pre*post", "post^2*w"), 100, 200)
    np.testing.assert_allclose(y, x @ np.array([1.0, -1.0]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(y.reshape(mean.shape), mean, rtol=1e-9, atol=1e-12)


def test_drift_needs_the_stepwise_inner_loop(pca):
    class Opaque:  # a family with only sample and inner_loop
        def sample(self, key, split):
            return pca.sample(key, split)

        def inner_loop(self, rule, genome, task, key=None):
            return pca.inner_loop(rule, genome, task, key)

    rule = rules.polynomial(("pre*post", "post^2*w"))
    with pytest.raises(distill.DistillError, match="no stepwise inner loop; use --target window"):
        distill.distill_rule(Opaque(), rule, jnp.array([1.0, -1.0]), 1, 1, target="drift")
    d = distill.distill_rule(Opaque(), rule, jnp.array([1.0, -1.0]), 1, 1)  # auto: window
    assert d.target == "window" and set(d.terms) == set(OJA)


def test_distill_fits_a_given_form_with_terms(tmp_path, capsys, pca):
    """``terms`` fits only the form asked for: the polynomial rule's own terms are
    recovered exactly; a form that leaves one out fits less well (its R² says by how
    much); a malformed term or an unrecorded signal is one line, nothing written."""
    coefs = np.array([0.7, -1.3, 0.2])
    rule = rules.polynomial(("pre*post", "post^2*w", "w"))
    both = distill.distill_rule(
        pca, rule, jnp.asarray(coefs), 2, 2, terms=("w*post^2", "pre*post", "w")
    )
    assert both.library == ("post^2*w", "pre*post", "w") and both.r2 > 0.9999
    assert coefficient(both, "post^2*w") == pytest.approx(-1.3, rel=1e-4)
    short = distill.distill_rule(pca, rule, jnp.asarray(coefs), 2, 2, terms=("pre*post", "w"))
    assert short.library == ("pre*post", "w") and short.r2 < 0.99
    run_dir = tmp_path / "run"
    fake_run(run_dir, small_config(), jnp.array([1.0, -1.0, 0.0, 0.0]))
    args = ["--fit-instances", "2", "--heldout-instances", "2", "--eval-instances", "0"]
    for terms, message in (("pre*post,post^x", "--terms: term"), ("pre*post,err*pre", "'err'")):
        assert call(["distill", str(run_dir), *args, "--terms", terms]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: distill: --terms") and err.count("\n") == 1, err
        assert message in err
        assert not (run_dir / "distilled.json").exists()
    assert call(["distill", str(run_dir), *args, "--terms", "pre*post, post^2*w"]) == 0
    assert "distilled: dw = pre*post - post^2*w" in capsys.readouterr().out
