import jax
import jax.numpy as jnp
import numpy as np

from evoplastic import backends, rules, tasks


def test_pc1_is_the_leading_direction_of_the_stream():
    fam = tasks.make("pca", dim=6, steps=20000)
    task = fam.sample(jax.random.PRNGKey(0), "train")
    cov = np.cov(np.asarray(task.xs).T)
    eigvals, eigvecs = np.linalg.eigh(cov)
    assert abs(eigvecs[:, -1] @ np.asarray(task.pc1)) > 0.99
    assert eigvals[-1] > 2.5 * eigvals[-2]  # a distinct leading eigenvalue (gap >= 4x in law)


def test_splits_are_disjoint_and_deterministic():
    fam = tasks.make("pca", dim=5, steps=10)
    key = jax.random.PRNGKey(7)
    a = fam.sample(key, "train")
    b = fam.sample(key, "train")
    c = fam.sample(key, "test")
    np.testing.assert_array_equal(a.xs, b.xs)
    assert not np.allclose(a.pc1, c.pc1)
    test_keys = tasks.test_instance_keys(50)
    train_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(50))
    test_pcs = np.stack([np.asarray(fam.sample(k, "test").pc1) for k in test_keys])
    train_pcs = np.stack([np.asarray(fam.sample(k, "train").pc1) for k in train_keys])
    # no held-out instance equals a training one
    assert np.max(np.abs(test_pcs @ train_pcs.T)) < 0.999


def test_dimension_is_a_task_parameter():
    fam = tasks.make("pca", dim=12, steps=10)
    assert fam.sample(jax.random.PRNGKey(0), "test").xs.shape == (10, 12)
    assert fam.network.n_in == 12


def test_oja_solves_pca_and_hebb_does_not():
    """The task is solvable by Oja's rule at 8 and 40 dims; Hebb's rule diverges."""
    for dim in (8, 40):
        fam = tasks.make("pca", dim=dim)
        res = backends.evaluate_genome(fam, rules.oja(), jnp.zeros(0), 50)
        assert np.median(res["alignment"]) > 0.99
        assert abs(np.median(res["norm"]) - 1.0) < 0.02
    fam = tasks.make("pca", dim=8)
    res = backends.evaluate_genome(fam, rules.hebb(), jnp.zeros(0), 20)
    assert not np.all(np.isfinite(res["loss"])) or np.median(res["loss"]) > 1.0


def test_loss_rewards_alignment_and_unit_norm():
    fam = tasks.make("pca", dim=8, steps=500)
    rule = rules.polynomial(("pre*post", "post^2*w"))
    keys = tasks.test_instance_keys(16)
    ev = backends.make_genome_evaluator(fam, rule)
    oja_loss = np.mean(ev(jnp.array([1.0, -1.0]), keys)[0])
    half_loss = np.mean(ev(jnp.array([1.0, -4.0]), keys)[0])  # converges to |w| = 0.5
    none_loss = np.mean(ev(jnp.array([0.0, 0.0]), keys)[0])  # never learns
    assert oja_loss < 0.02 < half_loss and oja_loss < none_loss
