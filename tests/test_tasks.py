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


def test_train_scale_sets_the_meta_training_scale_only():
    """``train_scale_min/max`` draw the meta-training instances' leading eigenvalue from their
    own range; held-out instances, and the default, are those of ``scale_min .. scale_max``."""
    key = jax.random.PRNGKey(3)
    default = tasks.make("pca", dim=5, steps=10)
    same = tasks.make("pca", dim=5, steps=10, train_scale_min=0.5, train_scale_max=2.0)
    one = tasks.make("pca", dim=5, steps=10, train_scale_min=1.0, train_scale_max=1.0)
    fixed = tasks.make("pca", dim=5, steps=10, scale_min=1.0, scale_max=1.0)
    for split in ("train", "test"):  # the default's range given explicitly: bit-identical
        np.testing.assert_array_equal(default.sample(key, split).xs, same.sample(key, split).xs)
    np.testing.assert_array_equal(one.sample(key, "train").xs, fixed.sample(key, "train").xs)
    np.testing.assert_array_equal(one.sample(key, "test").xs, default.sample(key, "test").xs)
    assert not np.allclose(one.sample(key, "train").xs, default.sample(key, "train").xs)


def test_train_scale_needs_both_bounds_in_order():
    import pytest

    from evoplastic import config
    from evoplastic.config import ConfigError

    from .conftest import small_config

    with pytest.raises(ValueError, match="give both or neither"):
        tasks.make("pca", dim=5, steps=10, train_scale_min=1.0)
    with pytest.raises(ConfigError, match=r"^task.train_scale_min: must be <= train_scale_max"):
        config.parse(small_config(task={"name": "pca", "train_scale_min": 2.0,
                                        "train_scale_max": 1.0}))  # fmt: skip
