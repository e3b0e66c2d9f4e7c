import jax
import jax.numpy as jnp
import numpy as np

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
