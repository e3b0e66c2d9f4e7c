"""Backprop baselines on the same network, initial weights, examples and step budget.

For a supervised task family, SGD and Adam train the family's own network on each
instance's support stream (one example per step, as the plastic network sees it); their
learning rate is picked by a sweep on meta-train instances, then they are evaluated on
the same held-out instances as the rules. Backprop is the non-local reference: it uses
the transpose of forward weights (weight transport), which no plastic synapse may.

A family with a ``tune_split`` attribute (``mnist1d``: ``"validation"``) has the rates tuned
on instances of that split instead of meta-train ones.

Layer-local training (:func:`evaluate_layer_local`; Laskin et al. 2020, "Parallel training
of deep networks with local updates"): every hidden layer gets its own auxiliary linear
head to the classes and is trained by backprop through that head only; the input it
receives is a constant (``stop_gradient``), so no gradient passes between layers. The
output layer is trained on the task loss the same way. The heads are discarded after
training: the query set is scored on the network's own output.
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


def tune_split(family) -> str:
    """The split whose instances tune learning rates: the family's ``tune_split``, or train."""
    return getattr(family, "tune_split", "train")


def _losses(family, optimizer_name, lrs, keys, split, init_ws=None, step=None):
    factory = getattr(optax, optimizer_name)
    step = backprop_step if step is None else step

    def one(lr, key):
        return step(family, factory(lr), init_ws, family.sample(key, split))

    return jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))(
        jnp.asarray(lrs), keys
    )


def tune_learning_rate(
    family, optimizer_name: str, instances: int = 32, lrs=LEARNING_RATES, init_ws=None, step=None
):
    """The learning rate with the lowest mean query loss on meta-train instances (or on the
    family's ``tune_split``); ``step``: the training procedure (default backprop)."""
    base = jax.random.PRNGKey(TUNE_SEED)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(instances))
    loss, _ = _losses(family, optimizer_name, lrs, keys, tune_split(family), init_ws, step)
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
    loss = np.asarray(_rule_losses(family, name, etas, keys, tune_split(family))[0])
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


def _local_heads(net, key: jax.Array) -> tuple:
    """Auxiliary linear heads ``[n_out, n_hidden]`` of the hidden layers, initialized like the
    network's weights."""
    n_out = net.sizes[-1]
    heads = []
    for layer, n in enumerate(net.sizes[1:-1]):
        k = jax.random.fold_in(key, 1_000 + layer)
        heads.append(net.w_init_std * jax.random.normal(k, (n_out, n)) / jnp.sqrt(n))
    return tuple(heads)


def layer_local_loss(family, params, x, target, m):
    """The summed layer-local losses of one example: ``params = (ws, heads)``.

    Layer ``l`` sees its input as a constant (``stop_gradient``) and is scored through its
    own head (the output layer: through itself), so the gradient of this sum with respect
    to ``ws[l]`` involves layer ``l`` and its head alone.
    """
    from ..networks.rate import ACTIVATIONS

    net = family.network
    ws, heads = params
    a = x
    total = 0.0
    for layer, w in enumerate(ws):
        last = layer == len(ws) - 1
        f = ACTIVATIONS[net.output_activation if last else net.activation]
        a = f(w @ jax.lax.stop_gradient(a))
        y = a if last else heads[layer] @ a
        if family.classification:
            total = total - m * jnp.sum(target * jax.nn.log_softmax(y))
        else:
            total = total + m * 0.5 * jnp.sum((y - target) ** 2)
    return total


def layer_local_step(family, optimizer, init_ws, task):
    """Train the family's network on the support stream with layer-local backprop.

    Same network, initial weights, examples and steps as :func:`backprop_step`; returns the
    query ``(loss, metrics)`` of the network's own output.
    """
    net = family.network
    ws = tuple(init_ws) if init_ws is not None else net.init(task.weight_key).ws
    params = (ws, _local_heads(net, task.weight_key))
    opt_state = optimizer.init(params)

    def body(carry, item):
        params, opt_state = carry
        grads = jax.grad(lambda p: layer_local_loss(family, p, *item))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (jax.tree.map(jnp.add, params, updates), opt_state), None

    ((ws, _), _), _ = jax.lax.scan(*family.masked_scan(body, (params, opt_state), task))
    return family.query(ws, task)


def evaluate_layer_local(family, instances: int, optimizer_name: str = "sgd", init_ws=None):
    """Held-out loss and metrics of tuned layer-local training; ``lr`` holds the tuned rate."""
    lr = tune_learning_rate(family, optimizer_name, init_ws=init_ws, step=layer_local_step)
    keys = test_instance_keys(instances)
    loss, metrics = _losses(family, optimizer_name, [lr], keys, "test", init_ws, layer_local_step)
    return {"loss": loss[0], **{k: v[0] for k, v in metrics.items()}, "lr": np.array([lr])}
