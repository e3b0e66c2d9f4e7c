import jax
import jax.numpy as jnp
import numpy as np

from evoplastic import rules
from evoplastic.networks import RateNetwork


def test_step_applies_rule_with_decaying_rate():
    net = RateNetwork(n_in=3, n_out=1, lr=0.1, lr_decay=0.5)
    state = net.init(jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.linalg.norm(state.w), net.w_init_norm, rtol=1e-6)
    x = jnp.array([0.5, -1.0, 2.0])
    w = np.asarray(state.w)
    for t in range(3):
        state, y = net.step(state, x, rules.oja(), None)
        yy = float(w[0] @ np.asarray(x))
        w = w + 0.1 / (1 + 0.5 * t) * (yy * np.asarray(x)[None] - yy**2 * w)
        np.testing.assert_allclose(y, [yy], rtol=1e-5)
    np.testing.assert_allclose(state.w, w, rtol=1e-5)


def test_run_equals_python_loop():
    net = RateNetwork(n_in=4, n_out=2, activation="tanh", lr=0.05)
    rule = rules.polynomial(("pre*post", "post^2*w", "w"))
    genome = jnp.array([1.0, -0.5, -0.1])
    xs = jax.random.normal(jax.random.PRNGKey(3), (20, 4))
    s0 = net.init(jax.random.PRNGKey(1))
    final, ys = net.run(s0, xs, rule, genome)
    s = s0
    for t in range(20):
        s, y = net.step(s, xs[t], rule, genome)
        np.testing.assert_allclose(ys[t], y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final.w, s.w, rtol=1e-5, atol=1e-6)
