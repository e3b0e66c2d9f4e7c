"""A learned selection policy and the evolution strategy it drives (the meta-meta level).

The policy is a small network applied to each population member on its own. It sees only
that member's *fitness features* -- where its loss stands in the population -- and
outputs two numbers: a recombination logit and a step-size utility. Nothing about the
genomes reaches it: selection, the evolutionarily plausible part, is a function of
fitness alone. The features (:data:`FEATURES`) of member ``i`` among ``P``:

* ``centered_rank``: ``rank_i / (P - 1) - 1/2`` (best ``-1/2``; ties share their mean rank);
* ``z_score``: ``(f_i - mean f) / std f``, clipped to ``[-3, 3]``;
* ``normalized_loss``: ``(f_i - min f) / (max f - min f)``;
* ``top_half``: 1 if the member ranks in the better half, else 0.

Every feature is invariant to shifting and scaling the losses and equivariant to
reordering the members, so one policy serves any problem, loss scale and population size.

The strategy (:class:`LearnedSelectionES`) is a diagonal-Gaussian ES in evosax's ask/tell
form. ``ask`` draws ``x_i = m + s * z_i`` with ``z_i ~ N(0, I)``. ``tell`` computes the
recombination weights ``w = softmax(logits)`` and the step-size utilities ``u`` (centred,
``sum |u| = 1``), then

* mean: ``m' = m + c_m * s * sum_i w_i z_i``;
* global step size, cumulative step-size adaptation on the path of the weighted steps
  (Hansen & Ostermeier 2001): ``p' = (1 - c) p + sqrt(c (2 - c) mu_eff) sum_i w_i z_i``,
  ``log s' = log s + (c / d) (|p'| / E|N(0, I)| - 1)``;
* per-coordinate step size, as SNES (Schaul et al. 2011) with the learned utilities:
  ``log s'_k += eta / 2 * sum_i u_i (z_ik^2 - 1)``.

``c_m``, ``c``, ``d`` and ``eta`` start at the usual CMA-ES / SNES values times
``exp(log_*)`` with learned ``log_*`` (zero at initialization). The policy's weights are
trained by backprop through unrolled generations (:mod:`evoplastic.studies.selection_training`),
in the spirit of Lange et al. 2023, "Discovering Evolution Strategies via Meta-Black-Box
Optimization" (who evolve such a policy instead).

Example::

    policy = load_policy("experiments/selection/policy.npz")
    es = LearnedSelectionES(population_size=16, solution=jnp.zeros(8))
    params = es.default_params.replace(policy=policy)
    state = es.init(key, jnp.zeros(8), params)
    population, state = es.ask(k_ask, state, params)
    state, _ = es.tell(k_tell, population, fitness, state, params)
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from evosax.algorithms.distribution_based import base as _base
from flax import struct

from ..checkpoint import atomic_write

FEATURES = ("centered_rank", "z_score", "normalized_loss", "top_half")
OUTPUTS = ("recombination_logit", "step_size_utility")
SCALARS = ("log_lr_mean", "log_path_rate", "log_damping", "log_lr_std")
FORMAT = "evoplastic-selection-policy"
VERSION = 1
INIT_RANK_SLOPE = 6.0  # initial logit = -6 * centered rank: weights close to CMA-ES's
LOG_STD_STEP = 1.0  # the most log(std) may change in one generation
STD_RANGE = (1e-10, 1e4)

Policy = dict[str, jax.Array]


class PolicyFileError(ValueError):
    """A selection-policy file that cannot be used; the message names the file."""


# ----------------------------------------------------------------------------- features


def tie_ranks(fitness: jax.Array) -> jax.Array:
    """0-based ranks (0 = lowest loss), tied members sharing their mean rank."""
    less = jnp.sum(fitness[None, :] < fitness[:, None], axis=1)
    equal = jnp.sum(fitness[None, :] == fitness[:, None], axis=1)
    return less + 0.5 * (equal - 1)


def fitness_features(fitness: jax.Array) -> jax.Array:
    """Features ``[P, len(FEATURES)]`` of each member, computed from the losses alone."""
    fitness = jnp.asarray(fitness, jnp.float32)
    p = fitness.shape[0]
    rank = tie_ranks(fitness) / max(p - 1, 1)
    std = jnp.std(fitness)
    z = jnp.where(std > 0, (fitness - jnp.mean(fitness)) / jnp.where(std > 0, std, 1.0), 0.0)
    spread = jnp.max(fitness) - jnp.min(fitness)
    normalized = jnp.where(
        spread > 0, (fitness - jnp.min(fitness)) / jnp.where(spread > 0, spread, 1.0), 0.0
    )
    top = (rank < 0.5).astype(jnp.float32)
    return jnp.stack([rank - 0.5, jnp.clip(z, -3.0, 3.0), normalized, top], axis=-1)


# ------------------------------------------------------------------------------- policy


@functools.partial(jax.jit, static_argnames=("hidden", "scale"))
def init_policy(key: jax.Array, hidden: int = 16, scale: float = 0.1) -> Policy:
    """A fresh policy: a small random MLP plus a linear path that starts rank-based.

    The linear path gives logits ``-INIT_RANK_SLOPE * centered_rank`` and utilities
    ``-centered_rank`` at initialization, so an untrained policy already selects like a
    rank-based ES; training reshapes both.
    """
    k1, k2 = jax.random.split(key)
    f, o = len(FEATURES), len(OUTPUTS)
    linear = jnp.zeros((f, o)).at[0, 0].set(-INIT_RANK_SLOPE).at[0, 1].set(-1.0)
    policy = {
        "w1": scale * jax.random.normal(k1, (f, hidden)),
        "b1": jnp.zeros(hidden),
        "w2": scale * jax.random.normal(k2, (hidden, o)),
        "b2": jnp.zeros(o),
        "linear": linear,
    }
    policy |= {name: jnp.zeros(()) for name in SCALARS}
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), policy)


def policy_outputs(policy: Policy, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(logits[P], utilities[P])`` for the members' features ``[P, F]``."""
    h = jnp.tanh(features @ policy["w1"] + policy["b1"])
    out = h @ policy["w2"] + policy["b2"] + features @ policy["linear"]
    return out[:, 0], out[:, 1]


def selection_weights(policy: Policy, fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(weights, utilities)`` of a generation from its losses (and nothing else).

    ``weights`` are the recombination weights (non-negative, sum 1); ``utilities`` the
    step-size utilities (sum 0, ``sum |u| = 1``).
    """
    logits, util = policy_outputs(policy, fitness_features(fitness))
    weights = jax.nn.softmax(logits)
    centred = util - jnp.mean(util)
    utilities = centred / (jnp.sum(jnp.abs(centred)) + 1e-8)
    return weights, utilities


def hidden_size(policy: Policy) -> int:
    return int(np.shape(policy["b1"])[0])


# ------------------------------------------------------------------------ the ES update


@struct.dataclass
class State(_base.State):
    mean: jax.Array
    std: jax.Array
    path: jax.Array


@struct.dataclass
class Params(_base.Params):
    policy: Policy
    std_init: jax.Array


def expected_norm(d: int) -> float:
    """``E|N(0, I_d)|``, the usual approximation."""
    return float(np.sqrt(d) * (1.0 - 1.0 / (4.0 * d) + 1.0 / (21.0 * d * d)))


def update(policy: Policy, mean, std, path, z, fitness):
    """``(mean', std', path')`` after one generation with noise ``z[P, D]`` and losses ``fitness``.

    A pure function of arrays: the strategy's ``tell`` and the meta-training unroll both
    call it, so the policy is trained on exactly the update it drives.
    """
    d = mean.shape[-1]
    weights, utilities = selection_weights(policy, fitness)
    step = weights @ z  # [D]
    mu_eff = 1.0 / jnp.sum(weights**2)
    new_mean = mean + jnp.exp(policy["log_lr_mean"]) * std * step
    c_default = (mu_eff + 2.0) / (d + mu_eff + 5.0)
    c = jnp.minimum(c_default * jnp.exp(policy["log_path_rate"]), 0.95)
    damping = (
        1.0 + 2.0 * jnp.maximum(0.0, jnp.sqrt((mu_eff - 1.0) / (d + 1.0)) - 1.0) + c
    ) * jnp.exp(policy["log_damping"])
    new_path = (1.0 - c) * path + jnp.sqrt(c * (2.0 - c) * mu_eff) * step
    global_change = c / damping * (jnp.linalg.norm(new_path) / expected_norm(d) - 1.0)
    eta = (3.0 + np.log(d)) / (5.0 * np.sqrt(d)) * jnp.exp(policy["log_lr_std"])
    coord_change = 0.5 * eta * (utilities @ (z**2 - 1.0))
    change = jnp.clip(global_change + coord_change, -LOG_STD_STEP, LOG_STD_STEP)
    new_std = jnp.clip(std * jnp.exp(change), *STD_RANGE)
    return new_mean, new_std, new_path


class LearnedSelectionES(_base.DistributionBasedAlgorithm):
    """A diagonal-Gaussian ES whose selection and recombination are a learned policy.

    An evosax 0.3 distribution-based algorithm: ``init(key, mean, params)``,
    ``ask(key, state, params)``, ``tell(key, population, fitness, state, params)`` and
    ``get_mean(state)``, usable wherever the evosax strategies are. The policy lives in
    ``params.policy`` (a pytree), so the strategy itself holds nothing but shapes.
    """

    def __init__(self, population_size: int, solution, policy: Policy | None = None):
        super().__init__(population_size, solution, metrics_fn=_base.metrics_fn)
        self._policy = policy if policy is not None else init_policy(jax.random.PRNGKey(0))

    @property
    def _default_params(self) -> Params:
        return Params(policy=self._policy, std_init=jnp.asarray(1.0, jnp.float32))

    def _init(self, key: jax.Array, params: Params) -> State:
        d = self.num_dims
        return State(
            mean=jnp.full((d,), jnp.nan),
            std=params.std_init * jnp.ones(d),
            path=jnp.zeros(d),
            best_solution=jnp.full((d,), jnp.nan),
            best_fitness=jnp.inf,
            generation_counter=0,
        )

    def _ask(self, key: jax.Array, state: State, params: Params):
        z = jax.random.normal(key, (self.population_size, self.num_dims))
        return state.mean + state.std * z, state

    def _tell(self, key, population, fitness, state: State, params: Params) -> State:
        z = (population - state.mean) / state.std
        mean, std, path = update(params.policy, state.mean, state.std, state.path, z, fitness)
        return state.replace(mean=mean, std=std, path=path)


def make(population_size: int, solution, policy: Policy, std_init: float = 1.0):
    """``(strategy, es_params)`` of a :class:`LearnedSelectionES` with ``policy``."""
    strategy = LearnedSelectionES(population_size, solution, policy)
    params = strategy.default_params.replace(std_init=jnp.asarray(std_init, jnp.float32))
    return strategy, params


# ------------------------------------------------------------------------- policy files


def policy_bytes(policy: Policy, header: dict[str, Any] | None = None) -> bytes:
    """The ``.npz`` file of ``policy``: its arrays plus a JSON header (``__header__``)."""
    head = {
        "format": FORMAT,
        "version": VERSION,
        "features": list(FEATURES),
        "outputs": list(OUTPUTS),
        "architecture": {
            "hidden": hidden_size(policy),
            "activation": "tanh",
            "linear_path": True,
            "scalars": list(SCALARS),
        },
    } | (header or {})
    arrays = {k: np.asarray(v, np.float32) for k, v in policy.items()}
    arrays["__header__"] = np.frombuffer(json.dumps(head).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_policy(path: str | Path, policy: Policy, header: dict[str, Any] | None = None) -> None:
    """Atomically write ``policy`` to ``path`` (see :func:`policy_bytes`)."""

    atomic_write(Path(path), policy_bytes(policy, header))


def _expected_shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    f, o = len(FEATURES), len(OUTPUTS)
    shapes = {"w1": (f, hidden), "b1": (hidden,), "w2": (hidden, o), "b2": (o,), "linear": (f, o)}
    return shapes | {name: () for name in SCALARS}


def read_policy(path: str | Path) -> tuple[Policy, dict[str, Any]]:
    """``(policy, header)`` from a policy file; :class:`PolicyFileError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(f"selection policy file {str(path)!r} not found")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise PolicyFileError(
            f"{path}: not a selection policy file (unreadable .npz: {err})"
        ) from None
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise PolicyFileError(f"{path}: not a selection policy file (no JSON header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise PolicyFileError(f"{path}: not a selection policy file (format is not {FORMAT!r})")
    if header.get("version") != VERSION:
        raise PolicyFileError(
            f"{path}: policy file version {header.get('version')!r}; this evoplastic reads"
            f" version {VERSION}"
        )
    if header.get("features") != list(FEATURES):
        raise PolicyFileError(
            f"{path}: the policy uses features {header.get('features')!r}; this evoplastic"
            f" computes {list(FEATURES)}"
        )
    hidden = header.get("architecture", {}).get("hidden")
    if not isinstance(hidden, int) or hidden <= 0:
        raise PolicyFileError(f"{path}: header has no valid architecture.hidden")
    shapes = _expected_shapes(hidden)
    if set(arrays) != set(shapes):
        missing = sorted(set(shapes) - set(arrays))
        extra = sorted(set(arrays) - set(shapes))
        raise PolicyFileError(
            f"{path}: arrays do not match the header (missing {missing}, unexpected {extra})"
        )
    for name, shape in shapes.items():
        if arrays[name].shape != shape:
            raise PolicyFileError(
                f"{path}: array {name!r} has shape {arrays[name].shape}, expected {shape}"
            )
        if not np.all(np.isfinite(arrays[name])):
            raise PolicyFileError(f"{path}: array {name!r} holds non-finite values")
    policy = {k: jnp.asarray(arrays[k], jnp.float32) for k in shapes}
    return policy, header


def load_policy(path: str | Path) -> Policy:
    """The policy of a policy file (see :func:`read_policy`)."""
    return read_policy(path)[0]


__all__ = [
    "FEATURES",
    "OUTPUTS",
    "LearnedSelectionES",
    "Params",
    "PolicyFileError",
    "State",
    "fitness_features",
    "init_policy",
    "load_policy",
    "make",
    "policy_bytes",
    "read_policy",
    "save_policy",
    "selection_weights",
    "tie_ranks",
    "update",
]
