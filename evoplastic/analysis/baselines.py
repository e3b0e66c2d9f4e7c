"""Backprop baselines on the same network, initial weights, examples and step budget.

For a supervised task family, SGD and Adam train the family's own network on each
instance's support stream (one example per step, as the plastic network sees it); their
learning rate is picked by a sweep on meta-train instances, then they are evaluated on
the same held-out instances as the rules. Backprop is the non-local reference: it uses
the transpose of forward weights (weight transport), which no plastic synapse may.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..tasks import backprop_step, test_instance_keys

LEARNING_RATES = tuple(float(x) for x in np.logspace(-3, 0.5, 15))
TUNE_SEED = 1_414_213  # meta-train instances used for the learning-rate sweep


def supports_backprop(family) -> bool:
    """Whether the family has a supervised stream and query set to train with backprop."""
    return hasattr(family, "_stream") and hasattr(family, "query")


def _losses(family, optimizer_name, lrs, keys, split, init_ws=None):
    factory = getattr(optax, optimizer_name)

    def one(lr, key):
        return backprop_step(family, factory(lr), init_ws, family.sample(key, split))

    return jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))(
        jnp.asarray(lrs), keys
    )


def tune_learning_rate(
    family, optimizer_name: str, instances: int = 32, lrs=LEARNING_RATES, init_ws=None
):
    """The learning rate with the lowest mean query loss on meta-train instances."""
    base = jax.random.PRNGKey(TUNE_SEED)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(instances))
    loss, _ = _losses(family, optimizer_name, lrs, keys, "train", init_ws)
    loss = np.asarray(loss)
    mean = np.where(np.isfinite(loss).all(axis=1), loss.mean(axis=1), np.inf)
    return float(lrs[int(np.argmin(mean))])


def _rule_losses(family, name, etas, keys, split):
    from .. import rules

    def one(eta, key):
        rule = rules.make(name, eta=eta)
        return family.inner_loop(rule, jnp.zeros((0,)), family.sample(key, split), key)

    return jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))(
        jnp.asarray(etas), keys
    )


def evaluate_tuned_rule(family, name: str, instances: int, etas=LEARNING_RATES) -> dict:
    """A fixed rule with a step size ``eta`` (``fa``), tuned like the backprop baselines.

    ``eta`` is picked on meta-train instances (lowest mean loss, non-finite excluded),
    then the rule is evaluated on the held-out instances; ``lr`` holds the tuned ``eta``.
    """
    base = jax.random.PRNGKey(TUNE_SEED)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(32))
    loss = np.asarray(_rule_losses(family, name, etas, keys, "train")[0])
    mean = np.where(np.isfinite(loss).all(axis=1), loss.mean(axis=1), np.inf)
    eta = float(etas[int(np.argmin(mean))])
    loss, metrics = _rule_losses(family, name, [eta], test_instance_keys(instances), "test")
    return {"loss": loss[0], **{k: v[0] for k, v in metrics.items()}, "lr": np.array([eta])}


def evaluate_backprop(family, optimizer_name: str, instances: int, init_ws=None) -> dict:
    """Held-out loss and metrics of the tuned optimizer; ``lr`` holds the tuned rate.

    ``init_ws``: start from these weights (a meta-learned initialization, so that backprop
    starts where the plastic network does) instead of each instance's random ones.
    """
    lr = tune_learning_rate(family, optimizer_name, init_ws=init_ws)
    keys = test_instance_keys(instances)
    loss, metrics = _losses(family, optimizer_name, [lr], keys, "test", init_ws)
    return {"loss": loss[0], **{k: v[0] for k, v in metrics.items()}, "lr": np.array([lr])}
