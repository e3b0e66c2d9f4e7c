"""BCM and feedback alignment as the baselines of `evoplastic eval` / `report`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import build, config, tasks
from evoplastic.analysis import baselines, baselines_for
from evoplastic.analysis.report import CANDIDATE_NAMES, _baseline_family


def test_baselines_follow_the_task():
    pca = build(config.parse({"task": {"name": "pca", "dim": 4, "steps": 16}}))
    assert baselines_for(pca.family) == ("oja", "hebb", "bcm")
    sup = config.parse(
        {"task": {"name": "sinusoid"}, "network": {"feedback": "learned", "hidden": [4]},
         "rule": {"name": "polynomial", "terms": ["err*pre"]}}
    )  # fmt: skip
    exp = build(sup)
    assert baselines_for(exp.family) == ("oja", "hebb", "fa")
    assert baselines_for(object()) == ("oja", "hebb")  # e.g. control: neither applies
    # fixed rules have no genome to hold learned feedback: they get fixed random feedback
    plain = _baseline_family(exp, {})
    assert plain.network.feedback == "random" and exp.family.network.feedback == "learned"
    assert {"bcm", "fa"} <= set(CANDIDATE_NAMES)


def test_feedback_alignment_rule_learns_a_linear_map():
    """``fa`` (``dw = eta*err*pre``, the error reaching the hidden layer through fixed random
    feedback) fits a linear target online: the query error drops far below the frozen
    network's."""
    from evoplastic import rules
    from evoplastic.tasks.supervised import SupervisedTask

    net = {"hidden": [8], "feedback": "random", "output_activation": "linear", "lr": 1.0,
           "lr_decay": 0.0, "w_init_std": 0.5}  # fmt: skip
    fam = tasks.make("sinusoid", network=net, epochs=20)
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    x = jax.random.uniform(k[0], (60, 1), minval=-1, maxval=1)
    y = 2.0 * x + 0.5
    task = SupervisedTask(
        xs=x[:10], ys=y[:10], mask=jnp.ones(10), qx=x[10:], qy=y[10:], weight_key=k[1]
    )
    mse = jax.jit(lambda eta: fam.inner_loop(rules.fa(eta=eta), jnp.zeros(0), task)[0])
    assert float(mse(0.1)) < 0.2 * float(mse(0.0))


@pytest.mark.slow
def test_feedback_alignment_baseline_is_tuned_and_learns():
    net = {"hidden": [8], "feedback": "random", "output_activation": "linear", "lr": 1.0,
           "lr_decay": 0.0}  # fmt: skip
    fam = tasks.make("digits", network=net, ways=3, shots=3, epochs=2, query_per_class=4)
    etas = (0.0, 0.1, 0.3)
    out = baselines.evaluate_tuned_rule(fam, "fa", 24, etas=etas)
    eta = float(out["lr"][0])
    # the sweep (on meta-train instances) picks a learning step over the frozen network,
    # and on held-out instances of unseen digits it classifies well above chance (1/3)
    assert eta in etas and eta > 0
    assert np.mean(out["accuracy"]) > 1 / 3 + 0.1  # measured: 0.476
    assert jnp.all(jnp.isfinite(out["loss"]))
