"""``mnist1d``: few-shot online classification of MNIST-1D (Greydanus 2020).

MNIST-1D ("Scaling down deep learning", Greydanus 2020) is a procedurally generated 1-D
analogue of MNIST: ten 12-point templates, padded, sheared, translated, scaled, with
correlated and i.i.d. noise, resampled to 40 points. The ``mnist1d`` package generates it
offline (``make_dataset`` with its published default arguments, seed 42: 4000 training and
1000 test examples, centred and scaled to unit standard deviation); nothing is downloaded.

Instances are drawn like the ``digits`` family's: ``ways`` classes (all 10 by default), in
a random order, ``shots`` support examples and ``query_per_class`` query examples each, the
support stream shown online for ``epochs`` passes. The examples come from three disjoint
pools: ``train`` instances from the first 3000 training examples, ``validation`` instances
(for tuning the baselines' learning rates) from the last 1000, and ``test`` (held-out)
instances from the 1000 test examples. The family carries ``tune_split = "validation"``,
so :mod:`evoplastic.analysis.baselines` tunes SGD, Adam, feedback alignment and layer-local
training on MNIST-1D's own validation pool.

Its purpose is transfer: a rule meta-trained on 8x8 digits, evaluated unchanged on data it
never saw, with its own input size (40) and a network of any shape
(``evoplastic eval RUN task=mnist1d network.hidden=[64,64]``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import networks
from .base import split_key
from .supervised import SupervisedTask, _Supervised

N_IN = 40
N_CLASSES = 10
TRAIN_POOL = 3000  # the first 3000 training examples; the last 1000 are the validation pool
MNIST1D_SPLITS = ("train", "validation", "test")


@functools.lru_cache(maxsize=1)
def _mnist1d() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three example pools ``{split: (x [n, 40], y [n])}``, generated offline."""
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # make_dataset seeds numpy's global generator
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    x, y = data["x"].astype(np.float32), data["y"].astype(np.int32)
    return {
        "train": (x[:TRAIN_POOL], y[:TRAIN_POOL]),
        "validation": (x[TRAIN_POOL:], y[TRAIN_POOL:]),
        "test": (data["x_test"].astype(np.float32), data["y_test"].astype(np.int32)),
    }


@dataclasses.dataclass(frozen=True)
class MNIST1DFamily(_Supervised):
    """N-way K-shot online classification of MNIST-1D with disjoint example pools."""

    network: networks.LayeredNetwork
    ways: int = N_CLASSES
    shots: int = 5
    query_per_class: int = 10
    epochs: int = 1
    input_scale: float = 1.0
    input_offset: float = 0.0
    epochs_max: int = 0  # > 0: meta-training instances draw epochs .. epochs_max passes
    shots_max: int = 0  # > 0: and shots .. shots_max support examples per class

    metric_names = ("accuracy",)
    classification = True
    tune_split = "validation"

    def __post_init__(self):
        if not 2 <= self.ways <= N_CLASSES:
            raise ValueError(f"task.ways: must be in 2..{N_CLASSES}, got {self.ways}")
        if min(self.shots, self.query_per_class, self.epochs) < 1:
            raise ValueError("task.shots, task.query_per_class and task.epochs must be >= 1")
        self._check_horizons()
        if (
            max(self.shots, self.shots_max) + self.query_per_class > 80
        ):  # the smallest class pool has 89 examples
            raise ValueError("task.shots + task.query_per_class: must be <= 80")
        if not self.input_scale > 0:
            raise ValueError(f"task.input_scale: must be > 0, got {self.input_scale}")
        if not np.isfinite(self.input_offset):
            raise ValueError(f"task.input_offset: must be finite, got {self.input_offset}")

    @property
    def support_size(self) -> int:
        """Support examples per instance: ``ways * shots``."""
        return self.ways * self.shots

    def sample(self, key: jax.Array, split: str) -> SupervisedTask:
        """One task instance of ``split`` (``train``, ``validation`` or ``test``)."""
        if split not in MNIST1D_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {MNIST1D_SPLITS}")
        # train and test keys as every family folds them; validation gets a third stream
        key = jax.random.fold_in(key, 3) if split == "validation" else split_key(key, split)
        x_all, y_all = _mnist1d()[split]
        k = jax.random.split(key, 4)
        chosen = jax.random.permutation(k[0], N_CLASSES)[: self.ways]
        shots = self._horizon_shots(split)
        n = shots + self.query_per_class
        scores = jax.random.uniform(k[1], (self.ways, y_all.shape[0]))
        member = jnp.asarray(y_all)[None, :] == chosen[:, None]
        idx = jnp.argsort(jnp.where(member, scores, 2.0), axis=1)[:, :n]  # [ways, n]
        x = self.input_scale * jnp.asarray(x_all)[idx] + self.input_offset  # [ways, n, 40]
        onehot = jnp.broadcast_to(jnp.eye(self.ways)[:, None, :], (self.ways, n, self.ways))
        sx = x[:, :shots].reshape(-1, N_IN)
        sy = onehot[:, :shots].reshape(-1, self.ways)
        size = self.ways * shots
        order = jax.random.permutation(k[2], size)
        return SupervisedTask(
            xs=sx[order],
            ys=sy[order],
            mask=jnp.ones(size),
            qx=x[:, shots:].reshape(-1, N_IN),
            qy=onehot[:, shots:].reshape(-1, self.ways),
            weight_key=k[3],
            active=self._active(key, split, (jnp.arange(size) % shots)[order]),
        )

    @classmethod
    def create(cls, network: dict | None = None, **params) -> MNIST1DFamily:
        """Make the family; ``network`` holds :class:`LayeredNetwork` options."""
        ways = params.get("ways", cls.ways)
        return cls(network=networks.from_options(network, N_IN, ways), **params)
