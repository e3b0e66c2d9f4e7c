"""Retroactive neuromodulation: the modulated recurrent network's eligibility traces
(``network.plastic.eligibility``, Miconi et al. 2019)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import rules
from evoplastic.config import ConfigError, parse
from evoplastic.experiment import build
from evoplastic.networks import ModulatedRecurrentNetwork

N_IN, N_OUT, HIDDEN, T = 5, 3, 4, 12


def _agent(net, seed=0, **values):
    rule = rules.with_parts(
        rules.polynomial(("mod*pre*post",), init={"mod*pre*post": 1.0}), net.genome_parts()
    )
    genome = rule.init(jax.random.PRNGKey(seed))
    k = jax.random.PRNGKey(seed + 1)
    genome = genome | {  # plastic and modulated from the first step, the modulator's sign varying
        "alpha": 0.5 * jax.random.normal(k, genome["alpha"].shape),
        "b_mod": jnp.asarray(0.2),
    }
    return rule, genome | {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def _inputs(seed=2):
    return jax.random.normal(jax.random.PRNGKey(seed), (T, N_IN))


def _play(net, rule, genome, xs):
    state = net.init(rule)
    out = []
    for x in xs:
        state, logits, mod = net.step(state, x, rule, genome)
        out.append((state, logits, mod))
    return out


def _by_hand(genome, xs, eta, lr=0.7, clip=0.3):
    """The network written out in numpy: E = (1-eta) E + eta * c * post pre^T,
    hebb = clip(hebb + lr * mod * E)."""
    g = {k: np.asarray(v, np.float64) for k, v in genome.items() if k != "rule"}
    c = float(np.asarray(genome["rule"]).ravel()[0])
    h = np.zeros(HIDDEN)
    hebb = np.zeros((HIDDEN, N_IN + HIDDEN))
    elig = np.zeros_like(hebb)
    out = []
    for x in np.asarray(xs, np.float64):
        z = np.concatenate([x, h])
        h = np.tanh((g["w"] + g["alpha"] * hebb) @ z + g["b"])
        mod = np.tanh(g["w_mod"] @ np.concatenate([h, x]) + g["b_mod"])
        elig = (1 - eta) * elig + eta * c * np.outer(h, z)
        hebb = np.clip(hebb + lr * mod * elig, -clip, clip)
        out.append((h, mod, elig, hebb, g["w_out"] @ h + g["b_out"]))
    return out


def test_trace_follows_the_eligibility_recursion_for_fixed_and_evolved_eta():
    """Step by step, the eligibility trace and the Hebbian trace are the recursion
    ``E = (1-eta) E + eta * pre*post``, ``hebb = clip(hebb + lr * mod * E)`` (numpy, by hand),
    with a fixed eta and with eta = sigmoid(eta_logit) held in the genome."""
    xs = _inputs()
    opts = {"n_in": N_IN, "n_out": N_OUT, "hidden": HIDDEN, "lr": 0.7, "w_clip": 0.3}
    fixed = ModulatedRecurrentNetwork(**opts, eligibility=True, eta=0.3)
    evolved = ModulatedRecurrentNetwork(**opts, eligibility=True, eta="evolved")
    assert "eta_logit" not in fixed.genome_parts() and "eta_logit" in evolved.genome_parts()
    assert evolved.num_weights() == fixed.num_weights() + 1
    rule, genome = _agent(fixed)
    rule_e, genome_e = _agent(evolved, eta_logit=np.log(0.3 / 0.7))
    want = _by_hand(genome, xs, eta=0.3)
    assert np.ptp([w[1] for w in want]) > 0.05  # the modulator varies over the steps
    for net, r, g in ((fixed, rule, genome), (evolved, rule_e, genome_e)):
        got = _play(net, r, g, xs)
        for (state, logits, mod), (h, m, elig, hebb, lg) in zip(got, want, strict=True):
            np.testing.assert_allclose(state.h, h, atol=1e-5)
            np.testing.assert_allclose(mod, m, atol=1e-5)
            np.testing.assert_allclose(state.elig, elig, atol=1e-5)
            np.testing.assert_allclose(state.hebb, hebb, atol=1e-5)
            np.testing.assert_allclose(logits, lg, atol=1e-5)
    # the trace carries earlier steps: eta = 0.3 differs from crediting the current step only
    now = _by_hand(genome, xs, eta=1.0)
    assert np.abs(want[-1][3] - now[-1][3]).max() > 1e-2


def test_eta_one_is_the_simple_modulated_rule():
    """With eta = 1 the network with eligibility traces plays exactly as the one without
    (``hebb += lr * mod * pre * post``), on the same genome."""
    xs = _inputs(5)
    opts = {"n_in": N_IN, "n_out": N_OUT, "hidden": HIDDEN, "lr": 1.0, "w_clip": 1.0}
    plain = ModulatedRecurrentNetwork(**opts)
    elig = ModulatedRecurrentNetwork(**opts, eligibility=True, eta=1.0)
    assert plain.genome_parts().keys() == elig.genome_parts().keys()
    rule, genome = _agent(plain)
    assert plain.init(rule).elig == ()
    for (a, la, _), (b, lb, _) in zip(
        _play(plain, rule, genome, xs), _play(elig, rule, genome, xs), strict=True
    ):
        np.testing.assert_allclose(a.hebb, b.hebb, atol=1e-6)
        np.testing.assert_allclose(la, lb, atol=1e-6)
    assert np.abs(np.asarray(a.hebb)).max() > 0.05  # the traces did change


def test_eligibility_trace_is_local():
    """The new eligibility trace of synapse [i, j] depends on its own old trace only
    (Jacobian through the network's step, activities and modulator given by the state)."""
    net = ModulatedRecurrentNetwork(N_IN, N_OUT, HIDDEN, eligibility=True, eta=0.4)
    rule, genome = _agent(net)
    state = net.init(rule)
    x = _inputs()[0]

    def new_elig(elig):
        return net.step(state.replace(elig=elig), x, rule, genome)[0].elig

    n = HIDDEN * (N_IN + HIDDEN)
    jac = np.asarray(jax.jacobian(new_elig)(jnp.ones((HIDDEN, N_IN + HIDDEN)))).reshape(n, n)
    np.testing.assert_allclose(jac, 0.6 * np.eye(n), atol=1e-6)


@pytest.mark.parametrize(
    "plastic,extra,match",
    [
        ({"eligibility": True}, {"modulation": "none"}, "network.plastic.eligibility"),
        ({"eligibility": True, "enabled": False}, {}, "network.plastic.eligibility"),
        ({"eligibility": "yes"}, {}, "network.plastic.eligibility"),
        ({"eligibility": True, "eta": 1.5}, {}, "network.plastic.eta"),
        ({"eligibility": True, "eta": 0}, {}, "network.plastic.eta"),
        ({"eligibility": True, "eta": "learned"}, {}, "network.plastic.eta"),
    ],
)
def test_bad_eligibility_options_are_refused(plastic, extra, match):
    net = {"kind": "modulated_recurrent", "modulation": "network", "plastic": plastic} | extra
    cfg = {"task": {"name": "metamaze"}, "network": net, "rule": {"name": "polynomial"}}
    with pytest.raises((ConfigError, ValueError), match=match):
        build(parse(cfg))


def test_fixed_rule_baselines_drop_the_trace_with_the_modulator():
    """The fixed-rule rows of a run with eligibility traces are played by the same network
    without modulator and so without traces (a fixed rule has no genome to hold them)."""
    from pathlib import Path

    from evoplastic.analysis.report import _baseline_family
    from evoplastic.config import load

    exp = build(load(Path(__file__).resolve().parents[1] / "experiments" / "metamaze_elig.yaml"))
    assert exp.family.network.eligibility and exp.family.network.eta == "evolved"
    net = _baseline_family(exp, {}).network
    assert net.modulation == "none" and not net.eligibility
    assert net.hidden == exp.family.network.hidden and net.plastic
