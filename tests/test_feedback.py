"""Feedback pathways (none, random, learned, synthetic) and network-computed
neuromodulation: every plastic synapse sees only local signals, and the genome-held parts
of the network are evolved by the outer loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import backends, build, config, rules
from evoplastic.networks import LayeredNetwork

from .test_rules import _locality_masks

SIZES = (3, 5, 4, 2)  # two hidden populations


def _setup(feedback, modulation="none", terms=("err*pre", "pre*post", "mod*pre")):
    net = LayeredNetwork(sizes=SIZES, feedback=feedback, modulation=modulation, lr=0.5)
    rule = rules.polynomial(terms)
    parts = net.genome_parts()
    if parts:
        rule = rules.with_parts(rule, parts)
    genome = rule.init(jax.random.PRNGKey(3))
    if parts:  # non-zero parts, so that every derivative below is informative
        genome = jax.tree.map(
            lambda g: g + 0.3 * jax.random.normal(jax.random.PRNGKey(g.size), g.shape), genome
        )
    else:
        genome = genome + 0.5
    state = net.init(jax.random.PRNGKey(0), rule)
    acts = net.forward(state.ws, jnp.array([0.5, -1.0, 0.3]))
    return net, rule, genome, state, acts


@pytest.mark.parametrize("feedback", ["none", "random", "learned", "synthetic"])
def test_every_synapse_sees_only_local_signals(feedback):
    """With the activities and the output error given, the new weights of a layer depend on
    no other layer's weights (no weight transport), on no other synapse of the same layer,
    and on the pathway's parameters only through the error delivered to their own post
    neuron (row i of B or of the predictor for synapse W[i, j])."""
    net, rule, genome, state, acts = _setup(feedback)
    error = jnp.array([0.7, -1.2])

    def new_ws(ws, genome):
        return net.plasticity(state.replace(ws=ws), acts, rule, genome, error=error).ws

    jac_all = jax.jit(jax.jacobian(new_ws, argnums=(0, 1)))(state.ws, genome)
    d_genome = [j[1] for j in jac_all]  # per output layer: d new W_layer / d genome
    for layer, (n_out, n_in) in enumerate(net.shapes):
        _, _, mask_w = _locality_masks(n_out, n_in)
        for other, jac in enumerate(jac_all[layer][0]):
            jac = np.asarray(jac)
            if other == layer:  # only its own weight (plus the identity of w += dw)
                assert np.all(jac[mask_w == 0] == 0.0)
            else:
                assert np.all(jac == 0.0), (layer, other)
    if feedback in ("learned", "synthetic"):
        key = "feedback" if feedback == "learned" else "synthetic"
        for i in range(2):  # hidden population i + 1, post of layer i
            for leaf in jax.tree.leaves(d_genome[i][key][i]):  # [n_out, n_in, n_i, ...]
                leaf = np.asarray(leaf)
                rows = np.arange(leaf.shape[0])
                own = leaf[rows, :, rows]  # d dW[i, j] / d part[i, ...]
                assert np.any(own != 0)
                others = leaf.copy()
                others[rows, :, rows] = 0
                assert np.all(others == 0)
            # the output layer never sees a hidden pathway's parameters
            assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(d_genome[-1][key]))
    errs = net.hidden_errors(state, error, acts, rule.parts(genome) if rule.parts else None)
    if feedback == "learned":
        np.testing.assert_allclose(errs[0], genome["feedback"][0] @ error, rtol=1e-6)
    if feedback == "synthetic":
        pred = genome["synthetic"][1]
        np.testing.assert_allclose(errs[1], pred["M"] @ acts[2] + pred["b"], rtol=1e-5)
    if feedback == "none":
        assert np.all(np.asarray(errs[0]) == 0)
    np.testing.assert_array_equal(errs[-1], error)


def _tiny_sinusoid(feedback):
    return config.parse(
        {
            "task": {
                "name": "sinusoid",
                "support_size": 10,
                "query_size": 20,
                "epochs": 5,
                "amp_min": 1.0,
                "amp_max": 2.0,
            },
            "network": {
                "hidden": [8],
                "activation": "tanh",
                "output_activation": "linear",
                "feedback": feedback,
                "lr": 1.0,
                "lr_decay": 0.0,
            },
            # a fixed rule: the genome is the feedback pathway alone
            "rule": {"name": "fa", "eta": 0.3},
            "strategy": {
                "name": "open_es",
                "population_size": 16,
                "std_init": 0.1,
                "optimizer": {"name": "adam", "learning_rate": 0.05},
            },
            "evaluation": {"instances": 8},
        }  # fmt: skip
    )


def test_learned_feedback_is_evolved_and_improves_fitness():
    """A few ES generations change the genome's feedback weights and lower the held-out
    loss; with the initial feedback put back, the loss returns to its initial value, so
    the improvement comes from the evolved feedback pathway."""
    exp = build(_tiny_sinusoid("learned"))
    assert set(exp.genome_template) == {"rule", "feedback"}
    assert exp.rule.num_params() == 8 * 1  # one hidden population of 8, one output
    step = exp.generation_step()
    state = exp.init_state(jax.random.PRNGKey(0))
    g0 = exp.mean_genome(state)
    for gen in range(15):
        state, _ = step(state, jax.random.PRNGKey(0), gen)
    g1 = exp.mean_genome(state)
    evaluator = backends.make_genome_evaluator(exp.family, exp.rule)

    def held(g):
        return float(
            np.mean(backends.evaluate_genome(exp.family, exp.rule, g, 32, evaluator)["loss"])
        )

    before, after = held(g0), held(g1)
    assert after < before - 0.02, (before, after)
    change = jnp.linalg.norm(g1["feedback"][0] - g0["feedback"][0]) / jnp.linalg.norm(
        g0["feedback"][0]
    )
    assert float(change) > 0.1
    np.testing.assert_allclose(
        held({"rule": g1["rule"], "feedback": g0["feedback"]}), before, rtol=1e-6
    )


def test_synthetic_predictor_receives_meta_gradients():
    """The synthetic-error predictor is on the meta-optimization path: the held-out loss has
    a non-zero gradient with respect to it (and ES perturbations of it change fitness)."""
    exp = build(_tiny_sinusoid("synthetic"))
    g0 = exp.genome_template
    assert [p["M"].shape for p in g0["synthetic"]] == [(8, 8)]
    fam, rule = exp.family, exp.rule
    task = fam.sample(jax.random.PRNGKey(1), "train")
    g = jax.tree.map(lambda x: x + 0.1, g0)
    grad = jax.grad(lambda g: fam.inner_loop(rule, g, task)[0])(g)
    assert float(jnp.abs(grad["synthetic"][0]["M"]).sum()) > 0
    assert float(jnp.abs(grad["synthetic"][0]["b"]).sum()) > 0


def test_network_modulation_gates_plasticity():
    """A modulatory neuron computes ``mod`` from the network's activity; a rule of the
    form mod*pre changes nothing when the gate is zero, and its dw scales with the gate."""
    net, rule, genome, state, acts = _setup("none", "network", terms=("mod*pre",))
    genome = {"rule": jnp.ones(1), "modulator": {"v": jnp.zeros_like(genome["modulator"]["v"]),
                                                "b": jnp.zeros(())}}  # fmt: skip
    error = jnp.array([0.7, -1.2])
    closed = net.plasticity(state, acts, rule, genome, error=error)
    for a, b in zip(closed.ws, state.ws, strict=True):
        np.testing.assert_array_equal(a, b)  # gate zero: no plasticity at all
    gates = []
    for bias in (0.2, 0.5):
        g = {
            "rule": genome["rule"],
            "modulator": {"v": genome["modulator"]["v"], "b": jnp.array(bias)},
        }
        new = net.plasticity(state, acts, rule, g, error=error)
        dw = np.asarray(new.ws[0] - state.ws[0])
        np.testing.assert_allclose(
            dw, 0.5 * np.tanh(bias) * np.broadcast_to(acts[0], dw.shape), rtol=1e-5
        )
        gates.append(float(net.modulator(acts, error, g)))
    assert gates[0] < gates[1]
    # the gate reads the network's activity and error: v changes it
    v = jnp.zeros_like(genome["modulator"]["v"]).at[-1].set(1.0)
    g = {"rule": genome["rule"], "modulator": {"v": v, "b": jnp.zeros(())}}
    np.testing.assert_allclose(net.modulator(acts, error, g), np.tanh(-1.2), rtol=1e-6)
    # built from config, the modulatory neuron is part of the genome
    cfg = config.parse(
        {
            "task": {"name": "sinusoid"},
            "network": {"modulation": "network", "hidden": [4]},
            "rule": {"name": "polynomial", "terms": ["mod*err*pre"]},
        }
    )
    assert set(build(cfg).genome_template) == {"rule", "modulator"}


def test_config_names_pathway_kind_and_modulation():
    for key, value in (("feedback", "learnt"), ("modulation", "reward"), ("kind", "spiking")):
        with pytest.raises(config.ConfigError, match=f"network.{key}"):
            config.parse({"network": {key: value}})
    with pytest.raises(config.ConfigError, match="network.kind: 'recurrent' does not fit"):
        build(config.parse({"network": {"kind": "recurrent"}}))  # pca has one neuron
    with pytest.raises(config.ConfigError, match="fixed rule"):
        build(config.parse({"task": {"name": "sinusoid"}, "rule": {"name": "fa"}}))
