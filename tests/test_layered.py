import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import rules
from evoplastic.networks import LayeredNetwork


def test_forward_and_per_layer_plasticity_match_a_manual_step():
    net = LayeredNetwork(sizes=(4, 3, 2), activation="tanh", output_activation="linear", lr=0.5)
    state = net.init(jax.random.PRNGKey(0))
    assert [w.shape for w in state.ws] == [(3, 4), (2, 3)]
    rule = rules.abcd(shapes=net.shapes)
    genome = rule.init(jax.random.PRNGKey(1))
    x = jnp.array([0.3, -0.2, 1.0, 0.5])
    new, y = net.step(state, x, rule, genome)
    w0, w1 = (np.asarray(w) for w in state.ws)
    h = np.tanh(w0 @ np.asarray(x))
    np.testing.assert_allclose(y, w1 @ h, rtol=1e-5)
    for layer, (w, pre, post) in enumerate(((w0, np.asarray(x), h), (w1, h, w1 @ h))):
        g = {k: np.asarray(v) for k, v in genome[layer].items()}
        dw = g["eta"] * (
            g["A"] * np.outer(post, pre) + g["B"] * pre[None] + g["C"] * post[:, None] + g["D"]
        )
        np.testing.assert_allclose(new.ws[layer], w + 0.5 * dw, rtol=1e-4, atol=1e-6)
    assert int(new.t) == 1


def test_feedback_alignment_delivers_a_random_projection_of_the_error():
    net = LayeredNetwork(sizes=(3, 5, 2), feedback="random")
    state = net.init(jax.random.PRNGKey(0))
    e = jnp.array([1.0, -2.0])
    errs = net.hidden_errors(state, e)
    assert state.feedback[0].shape == (5, 2)
    np.testing.assert_allclose(errs[0], state.feedback[0] @ e, rtol=1e-6)
    np.testing.assert_array_equal(errs[1], e)
    # the feedback matrix is fixed and is not the transpose of the forward weights
    assert not np.allclose(state.feedback[0], np.asarray(state.ws[1]).T)
    none = LayeredNetwork(sizes=(3, 5, 2)).hidden_errors(state, e)
    np.testing.assert_array_equal(none[0], np.zeros(5))


def test_weight_clip():
    net = LayeredNetwork(sizes=(2, 2), w_clip=0.1, lr=10.0)
    state = net.init(jax.random.PRNGKey(0))
    new, _ = net.step(state, jnp.ones(2), rules.hebb(), None)
    assert float(jnp.max(jnp.abs(new.ws[0]))) <= 0.1 + 1e-7


def test_excitatory_weights_start_and_stay_non_negative():
    """``excitatory``: a rule that drives weights down stops them at zero, where the same
    rule on an unconstrained network makes them negative; positive updates pass as is."""
    rule = rules.polynomial(("1",))
    x = jnp.array([0.5, -1.0, 2.0])
    for excitatory in (True, False):
        net = LayeredNetwork(sizes=(3, 4, 2), lr=1.0, excitatory=excitatory)
        state = net.init(jax.random.PRNGKey(0))
        assert all(bool(jnp.all(w >= 0)) == excitatory for w in state.ws)
        down, _ = net.step(state, x, rule, jnp.array([-0.3]))
        for w0, w in zip(state.ws, down.ws, strict=True):
            want = jnp.maximum(w0 - 0.3, 0.0) if excitatory else w0 - 0.3
            np.testing.assert_allclose(w, want, rtol=1e-6)
        up, _ = net.step(state, x, rule, jnp.array([0.3]))
        for w0, w in zip(state.ws, up.ws, strict=True):
            np.testing.assert_allclose(w, w0 + 0.3, rtol=1e-6)


def test_traces_hold_earlier_activity_of_each_population():
    """With ``traces``, step t's rule sees the (decayed) activity of steps < t of its own
    pre and post populations: ``post_trace*pre - post_trace*pre_trace`` is then
    ``post(t-1) * (pre(t) - pre(t-1))`` at decay 0."""
    rule = rules.polynomial(("post_trace*pre", "post_trace*pre_trace"), per_layer=True,
                            shapes=((3, 4), (2, 3)))  # fmt: skip
    genome = jnp.array([[1.0, -1.0], [1.0, -1.0]])
    xs = jax.random.normal(jax.random.PRNGKey(3), (3, 4))
    for decay in (0.0, 0.6):
        net = LayeredNetwork(sizes=(4, 3, 2), lr=0.1, traces=True, trace_decay=decay)
        state = net.init(jax.random.PRNGKey(0))
        assert [t.shape for t in state.traces] == [(4,), (3,), (2,)]
        traces = [np.zeros(4), np.zeros(3), np.zeros(2)]
        for x in xs:
            acts = [np.asarray(a) for a in net.forward(state.ws, x)]
            new = net.plasticity(state, net.forward(state.ws, x), rule, genome)
            for layer, (pre, post) in enumerate(((0, 1), (1, 2))):
                want = np.outer(traces[post], acts[pre] - traces[pre])
                np.testing.assert_allclose(
                    new.ws[layer], np.asarray(state.ws[layer]) + 0.1 * want, rtol=1e-5, atol=1e-6
                )
            traces = [decay * tr + (1 - decay) * a for tr, a in zip(traces, acts, strict=True)]
            for got, want in zip(new.traces, traces, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            state = new
    # the first step's traces are zero, so this rule cannot change anything yet
    plain = LayeredNetwork(sizes=(4, 3, 2), traces=True)
    s0 = plain.init(jax.random.PRNGKey(0))
    s1 = plain.plasticity(s0, plain.forward(s0.ws, xs[0]), rule, genome)
    for a, b in zip(s0.ws, s1.ws, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="network.trace_decay"):
        LayeredNetwork(sizes=(4, 2), traces=True, trace_decay=1.0)


def test_abcd_without_c_and_d_relearns_inverted_inputs_exactly():
    """A rule odd in ``pre`` (ABCD with only A and B) on an odd network without biases:
    inverting the input and the first layer's weights changes nothing downstream, so the
    network's state after inversion is as good a start as any random one. With C or D
    the mirrored network drifts apart."""
    net = LayeredNetwork(sizes=(4, 5, 2), activation="tanh", output_activation="tanh")
    xs = jax.random.normal(jax.random.PRNGKey(7), (20, 4))

    def outputs(rule, genome, sign):
        state = net.init(jax.random.PRNGKey(0))
        state = state.replace(ws=(sign * state.ws[0], state.ws[1]))
        out = []
        for x in xs:
            state, y = net.step(state, sign * x, rule, genome)
            out.append(y)
        return np.asarray(out), state

    odd = rules.abcd(shapes=net.shapes, coefficients=("A", "B"), init_scale=0.5)
    full = rules.abcd(shapes=net.shapes, init_scale=0.5)
    for rule, same in ((odd, True), (full, False)):
        genome = rule.init(jax.random.PRNGKey(1))
        (y_pos, s_pos), (y_neg, s_neg) = outputs(rule, genome, 1.0), outputs(rule, genome, -1.0)
        assert np.allclose(y_pos, y_neg, atol=1e-5) == same
        if same:
            np.testing.assert_allclose(s_neg.ws[0], -s_pos.ws[0], rtol=1e-5, atol=1e-5)
    assert set(odd.init(jax.random.PRNGKey(0))[0]) == {"A", "B", "eta"}
    assert odd.num_params() == 3 * (20 + 10)
    with pytest.raises(ValueError, match="rule.coefficients"):
        rules.abcd(shapes=net.shapes, coefficients=("A", "E"))
