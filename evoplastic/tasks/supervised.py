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

**Random horizons** (``epochs_max``, and ``shots_max`` or ``support_size_max``): each
meta-training instance (split ``train``) draws its number of passes uniformly from
``epochs .. epochs_max`` and its number of support examples (per class) from
``shots .. shots_max``. Shapes stay static: the instance holds the maximum support set
and the stream runs the maximum number of passes, and ``SupervisedTask.active`` ([passes,
support]) switches off every step beyond the drawn horizon (the network state, the rule's
state included, is left exactly as it was). Validation and test instances keep the fixed
``shots`` and ``epochs``, so held-out figures and ``eval --sweep`` mean what they say.
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
    # [passes, K]: 1 where step (pass p, example i) runs; None: every step of ``epochs``
    # passes runs (a fixed horizon)
    active: jax.Array | None = None


class _Supervised:
    """The online inner loop shared by the supervised families."""

    classification = False
    shots_name = "shots"  # the per-class support count a horizon draws (sinusoid: support_size)

    @property
    def shots_max_value(self) -> int:
        return getattr(self, f"{self.shots_name}_max")

    @property
    def draws_horizons(self) -> bool:
        """Whether meta-training instances draw their horizon (passes and/or shots)."""
        return bool(self.epochs_max or self.shots_max_value)

    def _check_horizons(self):
        for name in ("epochs", self.shots_name):
            hi = getattr(self, f"{name}_max")
            if not isinstance(hi, int) or isinstance(hi, bool) or hi < 0:
                raise ValueError(f"task.{name}_max: must be an integer >= 0 (0: fixed), got {hi!r}")
            if hi and hi < getattr(self, name):
                raise ValueError(
                    f"task.{name}_max: must be 0 (fixed) or >= task.{name}"
                    f" ({getattr(self, name)}), got {hi}"
                )

    def _horizon_shots(self, split: str) -> int:
        """Support examples per class an instance of ``split`` holds (the maximum if drawn)."""
        base = getattr(self, self.shots_name)
        return max(base, self.shots_max_value) if split == "train" else base

    def _active(self, key, split: str, shot_index):
        """The ``active`` flags of an instance of ``split`` whose support example ``i`` is
        shot ``shot_index[i]`` of its class (None: fixed horizon)."""
        if split != "train" or not self.draws_horizons:
            return None
        base = getattr(self, self.shots_name)
        passes = max(self.epochs, self.epochs_max)
        k_shots, k_passes = jax.random.split(jax.random.fold_in(key, 7))
        shots = jax.random.randint(k_shots, (), base, max(base, self.shots_max_value) + 1)
        epochs = jax.random.randint(k_passes, (), self.epochs, passes + 1)
        example = shot_index < shots
        return ((jnp.arange(passes) < epochs)[:, None] & example[None, :]).astype(jnp.float32)

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
        passes = self.epochs if task.active is None else task.active.shape[0]
        reps = (passes, 1)
        return jnp.tile(task.xs, reps), jnp.tile(task.ys, reps), jnp.tile(task.mask, passes)

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

        if task.active is None:
            carried, _ = jax.lax.scan(body, carried, self._stream(task))
        else:  # a drawn horizon: steps beyond it leave the state exactly as it was
            carried, _ = jax.lax.scan(
                lambda c, item: (_keep_if(item[1], body(c, item[0])[0], c), None),
                carried,
                (self._stream(task), task.active.reshape(-1)),
            )
        return self.query(net.join_constants(carried, constants).ws, task)

    def masked_scan(self, body, init, task: SupervisedTask):
        """``jax.lax.scan`` arguments running ``body`` over the support stream, skipping the
        steps beyond a drawn horizon (for the baselines' training loops)."""
        if task.active is None:
            return body, init, self._stream(task)

        def gated(carry, item):
            return _keep_if(item[1], body(carry, item[0])[0], carry), None

        return gated, init, (self._stream(task), task.active.reshape(-1))

    @property
    def steps(self) -> int:
        """Inner-loop steps: ``epochs * support_size``."""
        return self.epochs * self.support_size

    @property
    def train_steps(self) -> int:
        """Inner-loop steps of a meta-training instance: ``steps``, or with random horizons
        the longest horizon (the maximum passes over the maximum support set; the steps
        beyond an instance's drawn horizon leave its state as it was)."""
        if not self.draws_horizons:
            return self.steps
        per_shot = self.support_size // getattr(self, self.shots_name)
        return max(self.epochs, self.epochs_max) * per_shot * self._horizon_shots("train")

    # The stepwise inner-loop API (meta-gradients, truncated unrolls). ``inner_loop`` equals
    # ``init_inner``, ``inner_step`` for t = 0 .. steps - 1 (``train_steps`` for a
    # meta-training instance), and ``score``; step ``t`` sees support example ``t % K`` for
    # the instance's K support examples (the stream repeats the support set every epoch),
    # and a step beyond a drawn horizon leaves the state as it was.

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
        i = t % task.xs.shape[0]
        x, target, m = task.xs[i], task.ys[i], task.mask[i]
        acts = self.network.forward(state.ws, x)
        err = m * self.error(acts[-1], target)
        new = self.network.plasticity(state, acts, rule, genome, error=err)
        if task.active is None:
            return new
        return _keep_if(task.active.reshape(-1)[t], new, state)

    def score(self, task: SupervisedTask, state):
        """``(loss, metrics)`` on the query set of a network state."""
        return self.query(state.ws, task)


def _keep_if(active, new, old):
    """``new`` where the step is active, else ``old`` (leaf by leaf)."""
    return jax.tree.map(lambda n, o: jnp.where(active > 0, n, o), new, old)


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

    (ws, _), _ = jax.lax.scan(*family.masked_scan(body, (ws, opt_state), task))
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
    epochs_max: int = 0  # > 0: meta-training instances draw epochs .. epochs_max passes
    support_size_max: int = 0  # > 0: and support_size .. support_size_max examples

    metric_names = ("mse",)
    shots_name = "support_size"

    def __post_init__(self):
        if min(self.support_size, self.query_size, self.epochs) < 1:
            raise ValueError("task.support_size, task.query_size and task.epochs must be >= 1")
        self._check_horizons()
        if not 0 < self.amp_min <= self.amp_max:
            raise ValueError("task.amp_min: must satisfy 0 < amp_min <= amp_max")
        if not self.input_scale > 0:
            raise ValueError(f"task.input_scale: must be > 0, got {self.input_scale}")

    def sample(self, key: jax.Array, split: str) -> SupervisedTask:
        """One task instance of ``split``."""
        key = split_key(key, split)
        k = jax.random.split(key, 4)
        s = self._horizon_shots(split)
        amp = jax.random.uniform(k[0], minval=self.amp_min, maxval=self.amp_max)
        phase = jax.random.uniform(k[1], maxval=jnp.pi)
        x = jax.random.uniform(k[2], (s + self.query_size, 1), minval=-5, maxval=5)
        y = amp * jnp.sin(x + phase)
        x = self.input_scale * x  # default 0.2: inputs in [-1, 1]
        if self.bias:
            x = jnp.concatenate([x, jnp.ones_like(x)], axis=-1)
        return SupervisedTask(
            xs=x[:s],
            ys=y[:s],
            mask=jnp.ones(s),
            qx=x[s:],
            qy=y[s:],
            weight_key=k[3],
            active=self._active(key, split, jnp.arange(s)),
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
    epochs_max: int = 0  # > 0: meta-training instances draw epochs .. epochs_max passes
    shots_max: int = 0  # > 0: and shots .. shots_max support examples per class

    metric_names = ("accuracy",)
    classification = True

    def __post_init__(self):
        self._check_horizons()
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
        key = split_key(key, split)
        k = jax.random.split(key, 5)
        chosen = jax.random.permutation(k[0], classes)[: self.ways]
        shots = self._horizon_shots(split)
        n = shots + self.query_per_class
        # for each chosen class, a random ordering of its examples; take the first n
        scores = jax.random.uniform(k[1], (self.ways, y_all.shape[0]))
        member = jnp.asarray(y_all)[None, :] == chosen[:, None]
        idx = jnp.argsort(jnp.where(member, scores, 2.0), axis=1)[:, :n]  # [ways, n]
        x = jnp.asarray(x_all)[idx]  # [ways, n, 64]
        onehot = jnp.broadcast_to(jnp.eye(self.ways)[:, None, :], (self.ways, n, self.ways))
        sx, sy = x[:, :shots].reshape(-1, 64), onehot[:, :shots].reshape(-1, self.ways)
        size = self.ways * shots
        order = jax.random.permutation(k[2], size)
        mask = (jax.random.uniform(k[3], (size,)) < self.label_fraction).astype(jnp.float32)
        return SupervisedTask(
            xs=sx[order],
            ys=sy[order],
            mask=mask,
            qx=x[:, shots:].reshape(-1, 64),
            qy=onehot[:, shots:].reshape(-1, self.ways),
            weight_key=k[4],
            active=self._active(key, split, (jnp.arange(size) % shots)[order]),
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
