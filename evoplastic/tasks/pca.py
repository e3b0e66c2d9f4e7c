"""Task family ``pca``: a plastic linear neuron should find the first principal component.

Each instance draws a random orthogonal basis ``Q`` and a spectrum with a distinct
leading eigenvalue ``lambda_1 = s`` (``s ~ U[scale_min, scale_max]``) and the rest
``s * U[0, noise_eig_max]``; the input stream is ``x_t ~ N(0, Q diag(lambda) Q^T)``.
The overall scale ``s`` varies between instances, so a rule can only keep ``|w| = 1``
everywhere by normalizing with the neuron's own activity, as Oja's rule does
(Oja 1982, J. Math. Biol. 15:267-273).

The loss of an instance is ``1 - |cos(w_T, PC1)| + norm_penalty * (|w_T| - 1)^2`` for
the final weights ``w_T``; non-finite weights give a non-finite loss, which the outer
loop ranks worst.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from .. import networks
from ..networks.rate import RateNetwork, RateState
from .base import split_key


@struct.dataclass
class PCATask:
    """One instance: the input stream, its first principal component, the initial weights."""

    xs: jax.Array  # [steps, dim]
    pc1: jax.Array  # [dim]
    w0: jax.Array  # [1, dim], direction of the initial weights


@dataclasses.dataclass(frozen=True)
class PCAFamily:
    """Principal-component extraction by a single plastic neuron.

    Attributes:
      network: the plastic layer (``n_in = dim``, ``n_out = 1``).
      dim: input dimension.
      steps: length of the input stream (inner-loop steps).
      noise_eig_max: upper bound of the non-leading eigenvalues, relative to the leading one.
      scale_min, scale_max: range of the leading eigenvalue.
      norm_penalty: weight of ``(|w| - 1)^2`` in the loss.
      train_scale_min, train_scale_max: the leading eigenvalue's range for the
        meta-training instances only (``split="train"``); held-out instances keep
        ``scale_min .. scale_max``. ``None`` (default): the same range for both. A rule
        meta-trained at one scale (``train_scale_min = train_scale_max = 1``) has no
        reason to change its step with the input scale, and is tested on all scales.
    """

    network: RateNetwork
    dim: int = 8
    steps: int = 2000
    noise_eig_max: float = 0.25
    scale_min: float = 0.5
    scale_max: float = 2.0
    norm_penalty: float = 1.0
    train_scale_min: float | None = None
    train_scale_max: float | None = None

    metric_names = ("alignment", "norm")

    def __post_init__(self):
        if self.dim < 2 or self.steps < 1:
            raise ValueError(
                f"task.dim must be >= 2 and task.steps >= 1, got {self.dim}, {self.steps}"
            )
        if not 0.0 <= self.noise_eig_max < 1.0:
            raise ValueError(f"task.noise_eig_max: must be in [0, 1), got {self.noise_eig_max}")
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ValueError(
                f"task.scale_min: must satisfy 0 < scale_min <= scale_max,"
                f" got {self.scale_min} and {self.scale_max}"
            )
        if (self.train_scale_min is None) != (self.train_scale_max is None):
            raise ValueError("task.train_scale_min and task.train_scale_max: give both or neither")
        if self.train_scale_min is not None and not (
            0.0 < self.train_scale_min <= self.train_scale_max
        ):
            raise ValueError(
                f"task.train_scale_min: must satisfy 0 < train_scale_min <= train_scale_max,"
                f" got {self.train_scale_min} and {self.train_scale_max}"
            )
        if self.norm_penalty < 0:
            raise ValueError(f"task.norm_penalty: must be >= 0, got {self.norm_penalty}")

    def sample(self, key: jax.Array, split: str) -> PCATask:
        """One instance of ``split``: a random covariance, its input stream and PC1."""
        # two draws for the whole instance: fewer random-number call sites compile faster
        k_normal, k_uniform = jax.random.split(split_key(key, split))
        d = self.dim
        g = jax.random.normal(k_normal, (d * d + d + self.steps * d,))
        u = jax.random.uniform(k_uniform, (d,))
        q, _ = jnp.linalg.qr(g[: d * d].reshape(d, d))
        w0 = g[d * d : d * d + d].reshape(1, d)
        z = g[d * d + d :].reshape(self.steps, d)
        lo, hi = self.scale_min, self.scale_max
        if split == "train" and self.train_scale_min is not None:
            lo, hi = self.train_scale_min, self.train_scale_max
        scale = lo + (hi - lo) * u[0]
        eig = scale * jnp.concatenate([jnp.ones(1), self.noise_eig_max * u[1:]])
        xs = (z * jnp.sqrt(eig)) @ q.T
        return PCATask(xs=xs, pc1=q[:, 0], w0=w0)

    def inner_loop(self, rule, genome, task: PCATask, key: jax.Array | None = None):
        """Learn from the whole stream; ``(loss, {alignment, norm})`` of the final weights."""
        del key  # the instance carries all of its randomness
        state = self.init_inner(task, rule=rule)
        state, _ = self.network.run(state, task.xs, rule, genome)
        return self.score(task, state)

    # The stepwise inner-loop API (truncated unrolls, checkpointed meta-gradients). The
    # inner loop above equals ``init_inner``, ``inner_step`` for t = 0 .. steps - 1, and
    # ``score``; tests/test_unroll.py checks that they agree.

    def init_inner(self, task: PCATask, key: jax.Array | None = None, rule=None) -> RateState:
        """The network state before step 0 of an instance (with ``rule``'s initial state,
        which a stateful rule such as ``bcm`` needs)."""
        del key
        return self.network.init_from(task.w0, rule)

    def inner_step(self, rule, genome, task: PCATask, state: RateState, t) -> RateState:
        """Step ``t`` of the inner loop (``t`` may be traced): learn from input ``xs[t]``."""
        state, _ = self.network.step(state, task.xs[t], rule, genome)
        return state

    def score(self, task: PCATask, state: RateState):
        """``(loss, metrics)`` of a network state; the inner loop's loss at its last step."""
        w = state.w[0]
        norm = jnp.linalg.norm(w)
        alignment = jnp.abs(w @ task.pc1) / norm
        loss = 1.0 - alignment + self.norm_penalty * (norm - 1.0) ** 2
        return loss, {"alignment": alignment, "norm": norm}

    @classmethod
    def create(cls, network: dict | None = None, **params) -> PCAFamily:
        """Make the family; ``network`` holds :class:`RateNetwork` options
        (``kind: lif`` and its ``lif`` options for a spiking neuron)."""
        dim = params.get("dim", cls.dim)
        return cls(network=networks.from_options(network, dim, 1, default="rate"), **params)
