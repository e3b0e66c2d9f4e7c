import jax
import numpy as np
import pytest

from evoplastic import rules
from evoplastic.rules import Signals


def _signals(n_out=3, n_in=4, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return Signals(
        pre=jax.random.normal(k[0], (n_in,)),
        post=jax.random.normal(k[1], (n_out,)),
        w=jax.random.normal(k[2], (n_out, n_in)),
    )


@pytest.mark.parametrize("per_synapse", [True, False])
def test_abcd_matches_formula(per_synapse):
    rule = rules.abcd(shapes=((3, 4), (2, 3)), per_synapse=per_synapse)
    genome = rule.init(jax.random.PRNGKey(1))
    assert len(genome) == 2
    expected_shape = (3, 4) if per_synapse else ()
    assert all(np.shape(v) == expected_shape for v in genome[0].values())
    g = rule.select(genome, 0)
    sig = _signals()
    pre, post = np.asarray(sig.pre)[None, :], np.asarray(sig.post)[:, None]
    want = np.asarray(g["eta"]) * (
        np.asarray(g["A"]) * pre * post
        + np.asarray(g["B"]) * pre
        + np.asarray(g["C"]) * post
        + np.asarray(g["D"])
    )
    np.testing.assert_allclose(rule.update(g, sig), want, rtol=1e-5, atol=1e-7)
    n_params = 5 * (12 + 6) if per_synapse else 5 * 2
    assert rule.num_params() == n_params


def test_abcd_is_local():
    rule = rules.abcd(shapes=((3, 4),))
    g = rule.select(rule.init(jax.random.PRNGKey(2)), 0)
    sig = _signals()

    def f(pre, post, w):
        return rule.update(g, Signals(pre=pre, post=post, w=w))

    d_pre, d_post, d_w = jax.jacobian(f, argnums=(0, 1, 2))(sig.pre, sig.post, sig.w)
    mask_pre = np.broadcast_to(np.eye(4)[None], (3, 4, 4))
    mask_post = np.broadcast_to(np.eye(3)[:, None, :], (3, 4, 3))
    assert np.all(np.asarray(d_pre)[mask_pre == 0] == 0)
    assert np.all(np.asarray(d_post)[mask_post == 0] == 0)
    assert np.all(np.asarray(d_w) == 0)  # ABCD does not read the weight
    assert np.any(np.asarray(d_pre)[mask_pre == 1] != 0)


def test_static_rule_holds_weights():
    rule = rules.static(shapes=((3, 4), (2, 3)))
    genome = rule.init(jax.random.PRNGKey(0))
    assert [np.shape(w) for w in rule.weights(genome)] == [(3, 4), (2, 3)]
    assert np.all(np.asarray(rule.update(genome, _signals())) == 0)
