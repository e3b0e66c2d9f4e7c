"""Supervised few-shot task families: ``sinusoid`` regression and ``digits`` classification.

A fresh layered network sees the support examples of an instance online, one per step,
for ``epochs`` passes. At every step it responds to ``x``, the output error
``e = target - y`` (regression) or ``e = onehot - softmax(y)`` (classification) is
delivered to the output neurons, reaches hidden neurons through the network's feedback
pathway, and every synapse changes by the rule. The loss is the query-set error after the
last step: mean squared error, or cross-entropy (with accuracy as a metric).

* ``sinusoid`` (Lindsey & Litwin-Kumar 2020, "Learning to learn with feedback and local
  plasticity"; after Finn et al. 2017): ``y = A sin(x + phi)``, ``A ~ U[0.1, 5]``,
  ``phi ~ U[0, pi]``, ``x ~ U[-5, 5]``; K support points. Meta-test instances are
  held-out amplitude/phase draws (a disjoint key stream). The network sees
  ``input_scale * x`` and, with ``bias: true``, a constant input 1 as well: without it a
  layered network (odd activations, no biases) computes an odd function of ``x`` and can
  fit at most the odd part ``A cos(phi) sin(x)`` of a sinusoid.
* ``digits``: N-way K-shot classification on scikit-learn's bundled 8x8 digits (no
  download). Meta-train tasks draw their classes from ``train_classes``, meta-test tasks
  from the disjoint ``test_classes``. With ``label_fraction < 1`` only that fraction of
  support examples carry a label (the error is zero on the others; Gu et al. 2019's
  neuron-local semi-supervised setting).

:func:`backprop_step` gives the SGD/Adam baselines on the same network, initial weights,
examples and number of steps.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .. import networks
from ..networks.layered import LayeredNetwork
from .base import split_key


@struct.dataclass
class SupervisedTask:
    """One instance: support stream ``xs, ys`` (with label ``mask``), query set, weight key."""

    xs: jax.Array  # support inputs [K, n_in]
    ys: jax.Array  # support targets [K, n_out]
    mask: jax.Array  # [K] 1 where the example carries a label
    qx: jax.Array  # query inputs [Q, n_in]
    qy: jax.Array  # query targets [Q, n_out]
    weight_key: jax.Array


class _Supervised:
    """The online inner loop shared by the supervised families."""

    classification = False

    def error(self, y, target):
        if self.classification:
            return target - jax.nn.softmax(y)
        return target - y

    def query(self, ws, task: SupervisedTask):
        out = jax.vmap(lambda x: self.network.forward(ws, x)[-1])(task.qx)
        if self.classification:
            loss = -jnp.mean(jnp.sum(task.qy * jax.nn.log_softmax(out), axis=-1))
            acc = jnp.mean(jnp.argmax(out, -1) == jnp.argmax(task.qy, -1))
            return loss, {"accuracy": acc}
        mse = jnp.mean((out - task.qy) ** 2)
        return mse, {"mse": mse}

    def _stream(self, task: SupervisedTask):
        reps = (self.epochs, 1)
        return jnp.tile(task.xs, reps), jnp.tile(task.ys, reps), jnp.tile(task.mask, self.epochs)

    def inner_loop(self, rule, genome, task: SupervisedTask, key=None):
        """Learn the support stream online with the rule; the query loss and metrics."""
        del key
        net = self.network
        # what never changes (fixed feedback; a static rule's weights) is a constant of
        # the scan, not part of its carry
        carried, constants = net.split_constants(
            net.initial_state(task.weight_key, rule, genome), rule
        )

        def body(carried, item):
            state = net.join_constants(carried, constants)
            x, target, m = item
            acts = net.forward(state.ws, x)
            err = m * self.error(acts[-1], target)
            return net.split_constants(net.plasticity(state, acts, rule, genome, error=err), rule)[
                0
            ], None

        carried, _ = jax.lax.scan(body, carried, self._stream(task))
        return self.query(net.join_constants(carried, constants).ws, task)

    @property
    def steps(self) -> int:
        """Inner-loop steps: ``epochs * support_size``."""
        return self.epochs * self.support_size

    # The stepwise inner-loop API (meta-gradients, truncated unrolls). ``inner_loop`` equals
    # ``init_inner``, ``inner_step`` for t = 0 .. steps - 1, and ``score``; step ``t`` sees
    # support example ``t % support_size`` (the stream repeats the support set every epoch).

    def init_inner(self, task: SupervisedTask, key=None, rule=None):
        """The network state before step 0: the instance's random initial weights (and
        ``rule``'s initial state, which a stateful rule needs)."""
        del key
        return self.network.init(task.weight_key, rule)

    def inner_step(self, rule, genome, task: SupervisedTask, state, t):
        """Step ``t`` (may be traced): respond to one support example, then learn from it.

        A rule that encodes the initial weights (``network.learn_init``) puts them in place
        at step 0, before the first response.
        """
        if rule.weights is not None:
            init = tuple(rule.weights(genome))
            ws = tuple(jnp.where(t == 0, w0, w) for w0, w in zip(init, state.ws, strict=True))
            state = state.replace(ws=ws)
        i = t % self.support_size
        x, target, m = task.xs[i], task.ys[i], task.mask[i]
        acts = self.network.forward(state.ws, x)
        err = m * self.error(acts[-1], target)
        return self.network.plasticity(state, acts, rule, genome, error=err)

    def score(self, task: SupervisedTask, state):
        """``(loss, metrics)`` on the query set of a network state."""
        return self.query(state.ws, task)


def backprop_step(family, optimizer, init_ws, task: SupervisedTask):
    """Train the family's network on the support stream with backprop and ``optimizer``.

    Same network, initial weights, examples and number of steps as the plastic inner loop;
    returns the query ``(loss, metrics)``. This is the SGD/Adam baseline (with weight
    transport: backprop is not local). ``init_ws`` replaces the instance's random initial
    weights (e.g. by a meta-learned initialization).
    """
    net = family.network

    def example_loss(ws, x, target, m):
        y = net.forward(ws, x)[-1]
        if family.classification:
            return -m * jnp.sum(target * jax.nn.log_softmax(y))
        return m * 0.5 * jnp.sum((y - target) ** 2)

    ws = tuple(init_ws) if init_ws is not None else net.init(task.weight_key).ws
    opt_state = optimizer.init(ws)

    def body(carry, item):
        ws, opt_state = carry
        grads = jax.grad(example_loss)(ws, *item)
        updates, opt_state = optimizer.update(grads, opt_state, ws)
        return (jax.tree.map(jnp.add, ws, updates), opt_state), None

    (ws, _), _ = jax.lax.scan(body, (ws, opt_state), family._stream(task))
    return family.query(ws, task)


@dataclasses.dataclass(frozen=True)
class SinusoidFamily(_Supervised):
    """Few-shot sinusoid regression, learned online from ``support_size`` examples."""

    network: LayeredNetwork
    support_size: int = 10
    query_size: int = 50
    epochs: int = 1
    amp_min: float = 0.1
    amp_max: float = 5.0
    input_scale: float = 0.2
    bias: bool = False

    metric_names = ("mse",)

    def __post_init__(self):
        if min(self.support_size, self.query_size, self.epochs) < 1:
            raise ValueError("task.support_size, task.query_size and task.epochs must be >= 1")
        if not 0 < self.amp_min <= self.amp_max:
            raise ValueError("task.amp_min: must satisfy 0 < amp_min <= amp_max")
        if not self.input_scale > 0:
            raise ValueError(f"task.input_scale: must be > 0, got {self.input_scale}")

    def sample(self, key: jax.Array, split: str) -> SupervisedTask:
        """One task instance of ``split``."""
        k = jax.random.split(split_key(key, split), 4)
        amp = jax.random.uniform(k[0], minval=self.amp_min, maxval=self.amp_max)
        phase = jax.random.uniform(k[1], maxval=jnp.pi)
        x = jax.random.uniform(k[2], (self.support_size + self.query_size, 1), minval=-5, maxval=5)
        y = amp * jnp.sin(x + phase)
        x = self.input_scale * x  # default 0.2: inputs in [-1, 1]
        if self.bias:
            x = jnp.concatenate([x, jnp.ones_like(x)], axis=-1)
        s = self.support_size
        return SupervisedTask(
            xs=x[:s], ys=y[:s], mask=jnp.ones(s), qx=x[s:], qy=y[s:], weight_key=k[3]
        )

    @classmethod
    def create(cls, network: dict | None = None, **params) -> SinusoidFamily:
        """Make the family; ``network`` holds :class:`LayeredNetwork` options."""
        n_in = 2 if params.get("bias", cls.bias) else 1
        return cls(network=networks.from_options(network, n_in, 1), **params)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class DigitsFamily(_Supervised):
    """N-way K-shot online classification of 8x8 digits with disjoint class splits."""

    network: LayeredNetwork
    ways: int = 5
    shots: int = 5
    query_per_class: int = 10
    epochs: int = 1
    train_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    test_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    label_fraction: float = 1.0

    metric_names = ("accuracy",)
    classification = True

    def __post_init__(self):
        if set(self.train_classes) & set(self.test_classes):
            raise ValueError("task.test_classes: must be disjoint from task.train_classes")
        for name in ("train_classes", "test_classes"):
            classes = getattr(self, name)
            if len(classes) < self.ways or not set(classes) <= set(range(10)):
                raise ValueError(f"task.{name}: needs >= {self.ways} distinct digits in 0..9")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError("task.label_fraction: must be in (0, 1]")

    @property
    def support_size(self) -> int:
        """Support examples per instance: ``ways * shots``."""
        return self.ways * self.shots

    def sample(self, key: jax.Array, split: str) -> SupervisedTask:
        """One task instance of ``split``."""
        x_all, y_all = _digits()
        classes = jnp.asarray(self.train_classes if split == "train" else self.test_classes)
        k = jax.random.split(split_key(key, split), 5)
        chosen = jax.random.permutation(k[0], classes)[: self.ways]
        n = self.shots + self.query_per_class
        # for each chosen class, a random ordering of its examples; take the first n
        scores = jax.random.uniform(k[1], (self.ways, y_all.shape[0]))
        member = jnp.asarray(y_all)[None, :] == chosen[:, None]
        idx = jnp.argsort(jnp.where(member, scores, 2.0), axis=1)[:, :n]  # [ways, n]
        x = jnp.asarray(x_all)[idx]  # [ways, n, 64]
        onehot = jnp.broadcast_to(jnp.eye(self.ways)[:, None, :], (self.ways, n, self.ways))
        sx, sy = x[:, : self.shots].reshape(-1, 64), onehot[:, : self.shots].reshape(-1, self.ways)
        order = jax.random.permutation(k[2], self.support_size)
        mask = (jax.random.uniform(k[3], (self.support_size,)) < self.label_fraction).astype(
            jnp.float32
        )
        return SupervisedTask(
            xs=sx[order],
            ys=sy[order],
            mask=mask,
            qx=x[:, self.shots :].reshape(-1, 64),
            qy=onehot[:, self.shots :].reshape(-1, self.ways),
            weight_key=k[4],
        )

    @classmethod
    def create(cls, network: dict | None = None, **params) -> DigitsFamily:
        """Make the family; ``network`` holds :class:`LayeredNetwork` options."""
        for name in ("train_classes", "test_classes"):
            if name in params:
                params[name] = tuple(params[name])
        return cls(
            network=networks.from_options(network, 64, params.get("ways", cls.ways)), **params
        )
