import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import rules
from evoplastic.rules import Signals

ALL_TERMS = ("pre*post", "post^2*w", "pre", "post", "w", "post*w", "1", "err*pre", "mod*pre*post")


def test_parse_and_canonical():
    assert rules.parse_term("post^2*w") == (("post", 2), ("w", 1))
    assert rules.canonical("w*post^2") == "post^2*w"
    assert rules.canonical("post*post*w") == "post^2*w"
    assert rules.parse_term("1") == ()
    for bad in ("pree*post", "post^0", "post^x", "post^-1"):
        with pytest.raises(rules.TermError):
            rules.parse_term(bad)


def test_a_term_listed_twice_is_an_error_in_every_library():
    for per_layer in (False, True):
        with pytest.raises(rules.TermError, match=r"twice \('pre_trace\*post_trace'"):
            rules.polynomial(
                ("pre*post", "post_trace*pre_trace", "pre_trace*post_trace"),
                per_layer=per_layer,
                shapes=((2, 3),),
            )


def test_per_synapse_polynomial_weights_each_synapse_by_its_own_coefficients():
    shapes = ((3, 4), (2, 3))
    rule = rules.polynomial(("pre*post", "w", "pre"), per_synapse=True, shapes=shapes)
    genome = rule.init(jax.random.PRNGKey(0))
    assert [np.shape(g) for g in genome] == [(3, 3, 4), (3, 2, 3)]
    assert rule.num_params() == 3 * (12 + 6)
    genome = tuple(
        jax.random.normal(jax.random.PRNGKey(i), np.shape(g)) for i, g in enumerate(genome)
    )
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
    pre, post, w = (
        jax.random.normal(k1, (4,)),
        jax.random.normal(k2, (3,)),
        jax.random.normal(k3, (3, 4)),
    )
    c = np.asarray(rule.select(genome, 0))
    dw = rule.update(rule.select(genome, 0), Signals(pre=pre, post=post, w=w))
    want = c[0] * np.outer(post, pre) + c[1] * np.asarray(w) + c[2] * np.asarray(pre)[None]
    np.testing.assert_allclose(dw, want, rtol=1e-5, atol=1e-6)
    # local: dw[i, j] depends on pre[j], post[i] and w[i, j] only
    d_pre = np.asarray(
        jax.jacobian(lambda p: rule.update(rule.select(genome, 0), Signals(pre=p, post=post, w=w)))(
            pre
        )
    )
    assert np.all(d_pre[np.broadcast_to(np.eye(4)[None], (3, 4, 4)) == 0] == 0)
    assert "layer 1 (mean over synapses): dw = " in rule.describe(genome)
    with pytest.raises(ValueError, match="rule.per_synapse: needs"):
        rules.polynomial(("pre*post",), per_synapse=True)
    with pytest.raises(ValueError, match="not both"):
        rules.polynomial(("pre*post",), per_synapse=True, per_layer=True, shapes=shapes)


def test_polynomial_search_starts_from_the_given_coefficients():
    terms = ("err*pre", "pre*post", "w")
    shapes = ((3, 4), (2, 3))
    key = jax.random.PRNGKey(0)
    start = {"pre*err": 0.03, "w": -0.5}  # any spelling of a library term
    for kind in ({}, {"per_layer": True}, {"per_synapse": True}):
        plain = rules.polynomial(terms, init_scale=0.1, shapes=shapes, **kind).init(key)
        moved = rules.polynomial(terms, 0.1, shapes=shapes, init=start, **kind).init(key)
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(moved), strict=True):
            diff = np.moveaxis(np.asarray(b) - np.asarray(a), -1 if not kind.get("per_synapse")
                               else 0, 0)  # fmt: skip
            np.testing.assert_allclose(diff[0], 0.03, atol=1e-6)
            np.testing.assert_allclose(diff[1], 0.0, atol=1e-6)
            np.testing.assert_allclose(diff[2], -0.5, atol=1e-6)
    with pytest.raises(ValueError, match=r"rule.init: term 'post\^2' is not in the library"):
        rules.polynomial(terms, init={"post^2": 1.0})
    with pytest.raises(ValueError, match=r"rule.init: term 'psot' is not in the library"):
        rules.polynomial(terms, init={"psot": 1.0})


def test_polynomial_matches_formula():
    rule = rules.polynomial(("pre*post", "post^2*w", "w", "1"))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    pre, post = jax.random.normal(k1, (5,)), jax.random.normal(k2, (3,))
    w = jax.random.normal(k3, (3, 5))
    c = jnp.array([0.7, -1.3, 0.2, 0.05])
    dw = rule.update(c, Signals(pre=pre, post=post, w=w))
    expected = (
        0.7 * jnp.outer(post, pre)
        - 1.3 * (post**2)[:, None] * w
        + 0.2 * w
        + 0.05 * jnp.ones_like(w)
    )
    np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-6)


def test_fixed_rules_equal_reference_genomes():
    rule = rules.polynomial(rules.DEFAULT_TERMS)
    sig = Signals(pre=jnp.array([0.3, -1.0]), post=jnp.array([0.5]), w=jnp.array([[0.2, 0.4]]))
    for name in ("oja", "hebb"):
        g = rules.reference_genome(name, rule.terms)
        fixed = rules.make(name)
        np.testing.assert_allclose(rule.update(g, sig), fixed.update(jnp.zeros(0), sig), rtol=1e-6)
    np.testing.assert_allclose(
        rules.oja().update(None, sig), sig.pre[None] * 0.5 - 0.25 * sig.w, rtol=1e-6
    )


def test_reference_genome_needs_its_terms():
    with pytest.raises(KeyError):
        rules.reference_genome("oja", ("pre*post", "w"))


def test_format_equation_normalizes():
    eq = rules.format_equation(np.array([2.0, -1.98, 0.0]), ("pre*post", "post^2*w", "1"))
    assert eq == "dw = 1.00*pre*post - 0.99*post^2*w + 0.00"


def _jacobians(rule, genome, sig):
    def f(pre, post, w, err, mod):
        return rule.update(genome, Signals(pre=pre, post=post, w=w, err=err, mod=mod))

    return jax.jacobian(f, argnums=(0, 1, 2, 3))(sig.pre, sig.post, sig.w, sig.err, sig.mod)


def _random_signals(n_out=3, n_in=4, mod=0.7):
    k = jax.random.split(jax.random.PRNGKey(1), 4)
    return Signals(
        pre=jax.random.normal(k[0], (n_in,)),
        post=jax.random.normal(k[1], (n_out,)),
        w=jax.random.normal(k[2], (n_out, n_in)),
        err=jax.random.normal(k[3], (n_out,)),
        mod=jnp.asarray(mod),
    )


def _locality_masks(n_out, n_in):
    """Where dw[i, j] may depend on pre[j], post[i] (and err[i]) and w[i, j]."""
    mask_pre = np.broadcast_to(np.eye(n_in)[None, :, :], (n_out, n_in, n_in))
    mask_post = np.broadcast_to(np.eye(n_out)[:, None, :], (n_out, n_in, n_out))
    mask_w = np.einsum("ik,jl->ijkl", np.eye(n_out), np.eye(n_in))
    return mask_pre, mask_post, mask_w


@pytest.mark.parametrize("rule_name", ["polynomial", "oja", "hebb"])
def test_locality(rule_name):
    """dw[i, j] has zero derivative w.r.t. every signal of another synapse."""
    rule = rules.polynomial(ALL_TERMS) if rule_name == "polynomial" else rules.make(rule_name)
    genome = jnp.linspace(-1.0, 1.0, len(rule.terms)) if rule_name == "polynomial" else None
    sig = _random_signals()
    d_pre, d_post, d_w, d_err = _jacobians(rule, genome, sig)
    mask_pre, mask_post, mask_w = _locality_masks(3, 4)
    for jac, mask in ((d_pre, mask_pre), (d_post, mask_post), (d_w, mask_w), (d_err, mask_post)):
        assert np.all(np.asarray(jac)[mask == 0] == 0.0)
    # and it does depend on its own synapse's signals (the check is not vacuous)
    assert np.any(np.asarray(d_pre)[mask_pre == 1] != 0)
    if rule_name != "hebb":
        assert np.any(np.asarray(d_w)[mask_w == 1] != 0)


def test_locality_check_catches_a_nonlocal_rule():
    """The mask test above fails for a rule that mixes synapses (a weight-transport rule)."""

    def update(genome, sig):
        return jnp.outer(sig.post, sig.pre) - sig.w.sum(axis=1, keepdims=True)

    bad = rules.Rule("bad", lambda k: jnp.zeros(1), update, str)
    sig = Signals(
        pre=jnp.ones(3), post=jnp.ones(2), w=jnp.ones((2, 3)), err=jnp.zeros(2), mod=jnp.ones(())
    )
    _, _, d_w, _ = _jacobians(bad, None, sig)
    _, _, mask_w = _locality_masks(2, 3)
    assert np.any(np.asarray(d_w)[mask_w == 0] != 0)


def test_mlp_rule_is_local_and_evolvable():
    rule = rules.mlp(features=("pre", "post", "w", "err", "mod"), hidden=(8,))
    genome = rule.init(jax.random.PRNGKey(0))
    assert rule.num_params() == 5 * 8 + 8 + 8 + 1
    sig = _random_signals(mod=0.3)
    d_pre, d_post, d_w, d_err = _jacobians(rule, genome, sig)
    mask_pre, mask_post, mask_w = _locality_masks(3, 4)
    for jac, mask in ((d_pre, mask_pre), (d_post, mask_post), (d_w, mask_w), (d_err, mask_post)):
        assert np.all(np.asarray(jac)[mask == 0] == 0.0)
        assert np.any(np.asarray(jac)[mask == 1] != 0.0)
    # one synapse's dw is the MLP applied to that synapse's features alone
    alone = Signals(
        pre=sig.pre[1:2], post=sig.post[2:3], w=sig.w[2:3, 1:2], err=sig.err[2:3], mod=sig.mod
    )
    with jax.default_matmul_precision("float32"):  # GPUs otherwise round matmuls to TF32
        one = rule.update(genome, alone)
        np.testing.assert_allclose(one[0, 0], rule.update(genome, sig)[2, 1], rtol=1e-5)
    with pytest.raises(ValueError, match="unknown signal 'trace'"):
        rules.mlp(features=("pre", "trace"))


def test_mlp_rule_odd_in_post_and_w_mirrors_the_sign_of_the_weights():
    """With ``odd_in: [post, w]``: dw(pre, -post, -w) = -dw(pre, post, w) for any genome, the
    rule stays local, and a constant part of the MLP (its output bias) no longer moves w."""
    rule = rules.mlp(features=("pre", "post", "w"), hidden=(8,), odd_in=("post", "w"))
    plain = rules.mlp(features=("pre", "post", "w"), hidden=(8,))
    genome = rule.init(jax.random.PRNGKey(3))
    sig = _random_signals()
    flipped = Signals(pre=sig.pre, post=-sig.post, w=-sig.w, err=sig.err, mod=sig.mod)
    with jax.default_matmul_precision("float32"):
        dw = rule.update(genome, sig)
        np.testing.assert_allclose(rule.update(genome, flipped), -dw, rtol=1e-5, atol=1e-7)
        assert not np.allclose(plain.update(genome, flipped), -plain.update(genome, sig))
        biased = jax.tree.map(lambda x: x, genome)
        biased["Dense_1"]["bias"] = biased["Dense_1"]["bias"] + 5.0
        np.testing.assert_allclose(rule.update(biased, sig), dw, rtol=1e-5, atol=1e-6)
    d_pre, d_post, d_w, _ = _jacobians(rule, genome, sig)
    mask_pre, mask_post, mask_w = _locality_masks(3, 4)
    for jac, mask in ((d_pre, mask_pre), (d_post, mask_post), (d_w, mask_w)):
        assert np.all(np.asarray(jac)[mask == 0] == 0.0)
    with pytest.raises(ValueError, match="rule.odd_in: 'err' is not one of the features"):
        rules.mlp(features=("pre", "post", "w"), odd_in=("err",))


def test_stateful_and_fixed_rules_are_local():
    """BCM (with its per-neuron threshold state) and feedback alignment pass the Jacobian
    locality check; BCM's threshold of neuron i reaches only row i."""
    sig = _random_signals()
    mask_pre, mask_post, mask_w = _locality_masks(3, 4)
    for rule in (rules.bcm(tau=10.0), rules.fa(eta=0.5)):
        theta = jnp.array([0.2, -0.4, 1.1])

        def f(pre, post, w, err, state, rule=rule):
            s = Signals(pre=pre, post=post, w=w, err=err, mod=sig.mod, state=state)
            return rule.update(None, s)

        jacs = jax.jacobian(f, argnums=(0, 1, 2, 3, 4))(sig.pre, sig.post, sig.w, sig.err, theta)
        masks = (mask_pre, mask_post, mask_w, mask_post, mask_post)
        for jac, mask in zip(jacs, masks, strict=True):
            assert np.all(np.asarray(jac)[mask == 0] == 0.0)
        assert np.any(np.asarray(jacs[0])[mask_pre == 1] != 0)
    # BCM's next threshold of neuron i depends on post[i] and theta[i] only
    bcm = rules.bcm(tau=10.0)
    d_post, d_theta = jax.jacobian(
        lambda post, th: bcm.next_state(None, Signals(pre=sig.pre, post=post, w=sig.w, state=th)),
        argnums=(0, 1),
    )(sig.post, jnp.zeros(3))
    for jac in (d_post, d_theta):
        np.testing.assert_array_equal(np.asarray(jac) != 0, np.eye(3, dtype=bool))


def test_bcm_formula_and_sliding_threshold():
    rule = rules.bcm(tau=4.0, eta=2.0)
    sig = Signals(
        pre=jnp.array([1.0, -2.0]), post=jnp.array([3.0, 0.5]), w=jnp.zeros((2, 2)),
        state=jnp.array([1.0, 1.0]),
    )  # fmt: skip
    # dw = eta * pre * post * (post - theta): potentiation above theta, depression below
    want = 2.0 * np.array([[3.0 * 2.0], [0.5 * -0.5]]) * np.array([[1.0, -2.0]])
    np.testing.assert_allclose(rule.update(None, sig), want, rtol=1e-6)
    np.testing.assert_allclose(rule.next_state(None, sig), [1 + (9 - 1) / 4, 1 + (0.25 - 1) / 4])
    assert rule.num_params() == 0 and rule.init_state((2, 5)).shape == (2,)
    with pytest.raises(ValueError, match="rule.tau"):
        rules.bcm(tau=0.5)


def test_bcm_neuron_becomes_selective():
    """The classic BCM result: shown two input patterns, a neuron ends up responding to
    one of them only (Bienenstock et al. 1982), whichever wins from its initial weights."""
    from evoplastic.networks import RateNetwork

    pats = jnp.eye(4)[:2]
    xs = pats[jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, (2000,)).astype(int)]
    net = RateNetwork(n_in=4, n_out=1, activation="linear", lr=0.02, lr_decay=0.0)
    rule = rules.bcm(tau=20.0)
    winners = set()
    for seed in range(4):
        w0 = jnp.abs(jax.random.normal(jax.random.PRNGKey(seed), (1, 4))) + 0.3
        state, _ = net.run(net.init_from(w0, rule), xs, rule, None)
        responses = np.asarray(state.w[0, :2])
        assert responses.max() > 1.0 and responses.min() < 0.05, responses
        winners.add(int(responses.argmax()))
        # the threshold tracks the mean squared response: p * y_winner^2 with p = 1/2
        assert abs(float(state.rule_state[0]) - 0.5 * responses.max() ** 2) < 0.6
    assert winners == {0, 1}  # not a bias towards one input: the initial weights decide
    with pytest.raises(ValueError, match="keeps a state"):
        net.step(net.init_from(w0), xs[0], rule, None)  # started without the rule's state


def test_mlp_rule_l2_adds_its_prior_to_the_meta_training_loss_only():
    """``rule.l2``: the meta-training fitness is the task loss plus ``l2 * sum(W_in**2)``
    (the first layer's weights, exactly), on the same instances; held-out evaluation and
    the rule's updates are unchanged; a negative ``l2`` is an error naming the field."""
    import evoplastic as ep
    from evoplastic.tasks.evaluation import make_genome_evaluator, task_fitness

    from .conftest import small_config

    def build(**rule):
        cfg = small_config()
        cfg["rule"] = {"name": "mlp", "features": ["pre", "post", "w"], "hidden": [4], **rule}
        return ep.build(ep.config.parse(cfg))

    plain, prior = build(), build(l2=0.5)
    genome = plain.rule.init(jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(7)
    loss = task_fitness(plain.family, plain.rule, 4)(genome, key)
    with_prior = task_fitness(prior.family, prior.rule, 4)(genome, key)
    w_in = genome["Dense_0"]["kernel"]
    assert float(jnp.sum(w_in**2)) > 0.1
    np.testing.assert_allclose(with_prior, loss + 0.5 * jnp.sum(w_in**2), rtol=1e-6)
    keys = jax.random.split(key, 3)
    held_a = make_genome_evaluator(plain.family, plain.rule)(genome, keys)[0]
    held_b = make_genome_evaluator(prior.family, prior.rule)(genome, keys)[0]
    np.testing.assert_array_equal(held_a, held_b)
    with pytest.raises(ep.config.ConfigError, match="rule.l2: must be >= 0"):
        build(l2=-1.0)
