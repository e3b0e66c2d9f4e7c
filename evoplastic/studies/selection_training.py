"""Training a selection policy by backprop through unrolled ES generations.

A *problem* is a cheap differentiable function with its minimum 0 at a random point
``x*``, seen through a random rotation ``R`` (``y = R (x - x*)``):

* ``quadratic``: ``sum_k s_k y_k^2 / sum_k s_k``, scales ``s`` log-uniform up to a random
  condition number (at most ``condition_max``);
* ``rosenbrock``: ``sum_k b (v_{k+1} - v_k^2)^2 + (1 - v_k)^2`` with ``v = y + 1``, ``b``
  log-uniform in ``[1, rosenbrock_max]`` (a curved valley);
* ``rastrigin``: ``mean_k y_k^2 + A (1 - cos(2 pi y_k))``, ``A`` uniform in
  ``[0, rastrigin_max]`` (a bowl with ripples: local minima once ``A`` is not small).

The search starts from ``m_0 = 0`` with ``x*`` at a log-uniform distance and a log-uniform
initial step size; each member's observed loss carries multiplicative log-normal noise of a
random level (up to ``noise_max``), as the fitness of plasticity tasks is noisy.

The meta-loss of a policy on a problem is the mean over the ``T`` unrolled generations of
``log(f(m_t) / f(m_0) + 1e-8)``: the loss of the search *mean* relative to where it began,
on a log scale so that every problem and every stage of the search counts. Sampling is
reparameterized (``x_i = m + s * z_i``, ``z_i`` independent of the policy), and the
observed losses enter the update as data (``stop_gradient``): the policy gets the gradient
of where its weighting moves the mean and step size, generation after generation, through
``lax.scan`` (``jax.grad`` of the whole unroll). Policies are trained with optax on a batch
of problems of every dimension per step; a step with a non-finite gradient is skipped and
counted.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ..meta import selection

KINDS = ("quadratic", "rosenbrock", "rastrigin")
INITS = ("rank", "uniform")
SPLITS = ("train", "test", "validation")  # problem key streams (disjoint by fold_in)
TEST_SEED = 3_141_592  # base seed of held-out comparison problems
VALIDATION_SEED = 1_618_033  # base seed of the validation problems of training


def problem_key(base_seed: int, split: str, index) -> jax.Array:
    """The key of problem ``index`` of a split: ``fold_in(fold_in(PRNGKey(seed), split), i)``."""
    return jax.random.fold_in(stream_key(base_seed, split), index)


# ------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class ProblemsConfig:
    """The distribution of training problems (ranges are log-uniform unless stated)."""

    kinds: tuple[str, ...] = KINDS
    dims: tuple[int, ...] = (2, 4, 8, 16)
    condition_max: float = 1000.0
    rosenbrock_max: float = 100.0
    rastrigin_max: float = 1.0  # uniform
    distance: tuple[float, ...] = (0.3, 3.0)
    std_init: tuple[float, ...] = (0.03, 1.0)
    noise_max: float = 0.2  # uniform


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The optimization of the policy."""

    steps: int = 300
    generations: int = 64  # ES generations unrolled per problem
    truncation: int = 8  # generations a gradient flows back (0: the whole unroll)
    population_size: int = 16
    batch: int = 8  # problems per dimension and step
    optimizer: dict = dataclasses.field(
        default_factory=lambda: {"name": "adam", "learning_rate": 0.01}
    )
    clip_norm: float = 1.0
    validation_problems: int = 16  # per dimension
    log_every: int = 25


@dataclasses.dataclass(frozen=True)
class SelectionTrainConfig:
    """The config of ``evoplastic train-selection`` (a YAML file)."""

    name: str = "selection"
    seed: int = 0
    output: str = "selection_policy.npz"
    hidden: int = 16
    init: str = "rank"  # rank: start from rank-based weights; uniform: from no selection at all
    problems: ProblemsConfig = dataclasses.field(default_factory=ProblemsConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)


def parse_config(data: Any) -> SelectionTrainConfig:
    """Validate a ``train-selection`` mapping; :class:`~evoplastic.config.ConfigError` if bad."""
    from ..config import ConfigError
    from ..config.fields import _from_dict, _positive

    cfg = _from_dict(SelectionTrainConfig, data, "")
    p, t = cfg.problems, cfg.training
    _positive("hidden", cfg.hidden)
    if cfg.init not in INITS:
        raise ConfigError(f"init: unknown initial policy {cfg.init!r} (one of {', '.join(INITS)})")
    if not p.kinds:
        raise ConfigError(f"problems.kinds: list at least one of {', '.join(KINDS)}")
    for kind in p.kinds:
        if kind not in KINDS:
            raise ConfigError(
                f"problems.kinds: unknown problem {kind!r} (one of {', '.join(KINDS)})"
            )
    if not p.dims or any(d < 2 for d in p.dims):
        raise ConfigError(f"problems.dims: dimensions must be >= 2, got {list(p.dims)}")
    for field in ("distance", "std_init"):
        lo_hi = getattr(p, field)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ConfigError(f"problems.{field}: expected [low, high] with 0 < low <= high")
    if p.condition_max < 1 or p.rosenbrock_max < 1:
        raise ConfigError("problems.condition_max and problems.rosenbrock_max: must be >= 1")
    _positive("problems.rastrigin_max", p.rastrigin_max, strict=False)
    _positive("problems.noise_max", p.noise_max, strict=False)
    for field in ("steps", "generations", "batch", "validation_problems", "log_every"):
        _positive(f"training.{field}", getattr(t, field))
    _positive("training.truncation", t.truncation, strict=False)
    if t.population_size < 2:
        raise ConfigError(f"training.population_size: must be >= 2, got {t.population_size}")
    _positive("training.clip_norm", t.clip_norm, strict=False)
    if not isinstance(t.optimizer.get("name"), str):
        raise ConfigError("training.optimizer.name: required (an optax optimizer, e.g. adam)")
    if not cfg.output:
        raise ConfigError("output: required (where to write the policy file)")
    return cfg


# ---------------------------------------------------------------------------- problems


@struct.dataclass
class Problem:
    """One cheap problem: ``loss(problem, x) >= 0``, zero at ``optimum``."""

    kind: jax.Array  # index into KINDS
    rotation: jax.Array  # [D, D]
    optimum: jax.Array  # [D]
    scales: jax.Array  # [D] (quadratic)
    coef: jax.Array  # rosenbrock b or rastrigin A
    noise: jax.Array  # std of the log-normal observation noise
    std_init: jax.Array


def _log_uniform(u, lo, hi):
    """``u ~ U[0, 1)`` mapped log-uniformly onto ``[lo, hi)``."""
    return jnp.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))


def sample_problem(key: jax.Array, dim: int, p: ProblemsConfig) -> Problem:
    """A random problem of dimension ``dim`` from the distribution ``p``.

    Two draws for the whole problem (one normal, one uniform vector), sliced: fewer
    random-number call sites compile faster.
    """
    k_normal, k_uniform = jax.random.split(key)
    g = jax.random.normal(k_normal, (dim * dim + dim,))
    u = jax.random.uniform(k_uniform, (7 + dim,))
    kinds = jnp.asarray([KINDS.index(k) for k in p.kinds])
    kind = kinds[jnp.minimum((u[0] * len(kinds)).astype(jnp.int32), len(kinds) - 1)]
    rotation, _ = jnp.linalg.qr(g[: dim * dim].reshape(dim, dim))
    direction = g[dim * dim :] / jnp.linalg.norm(g[dim * dim :])
    condition = _log_uniform(u[2], 1.0, p.condition_max)
    rosen = _log_uniform(u[3], 1.0, p.rosenbrock_max)
    coef = jnp.where(kind == KINDS.index("rosenbrock"), rosen, u[3] * p.rastrigin_max)
    return Problem(
        kind=kind,
        rotation=rotation,
        optimum=_log_uniform(u[1], *p.distance) * direction,
        scales=condition ** u[7:],
        coef=coef,
        noise=u[4] * p.noise_max,
        std_init=_log_uniform(u[5], *p.std_init),
    )


def fixed_problem(
    key: jax.Array,
    kind: str,
    dim: int,
    distance: float,
    condition: float = 1.0,
    coef: float = 0.0,
) -> Problem:
    """A held-out problem of a given kind and difficulty; rotation and optimum from ``key``."""
    k1, k2 = jax.random.split(key)
    rotation, _ = jnp.linalg.qr(jax.random.normal(k1, (dim, dim)))
    direction = jax.random.normal(k2, (dim,))
    return Problem(
        kind=jnp.asarray(KINDS.index(kind)),
        rotation=rotation,
        optimum=distance * direction / jnp.linalg.norm(direction),
        scales=condition ** jnp.linspace(0.0, 1.0, dim),
        coef=jnp.asarray(coef, jnp.float32),
        noise=jnp.asarray(0.0),
        std_init=jnp.asarray(1.0),
    )


def problem_loss(problem: Problem, x: jax.Array) -> jax.Array:
    """The loss of ``x`` (``>= 0``, zero at the optimum)."""
    y = problem.rotation @ (x - problem.optimum)
    quadratic = jnp.sum(problem.scales * y**2) / jnp.sum(problem.scales)
    v = y + 1.0
    if y.shape[0] > 1:
        rosen = problem.coef * (v[1:] - v[:-1] ** 2) ** 2 + (1.0 - v[:-1]) ** 2
        rosenbrock = jnp.mean(rosen)
    else:
        rosenbrock = (1.0 - v[0]) ** 2
    rastrigin = jnp.mean(y**2 + problem.coef * (1.0 - jnp.cos(2.0 * jnp.pi * y)))
    return jnp.stack([quadratic, rosenbrock, rastrigin])[problem.kind]


# ------------------------------------------------------------------------------ unroll


def unroll(
    policy, problem: Problem, key: jax.Array, generations: int, population: int, truncation=0
):
    """``log(f(m_t) / f(m_0) + 1e-8)`` for ``t = 1 .. generations``, differentiable in ``policy``.

    With ``truncation = K > 0`` the gradient flows back at most ``K`` generations: the ES
    state is treated as data (``stop_gradient``) every ``K`` generations.
    """
    dim = problem.optimum.shape[0]
    start = jnp.zeros(dim)
    f0 = problem_loss(problem, start)

    def generation(carry, inputs):
        k, t = inputs
        if truncation:
            cut = t % truncation == 0
            carry = jax.tree.map(lambda a: jnp.where(cut, jax.lax.stop_gradient(a), a), carry)
        mean, std, path = carry
        g = jax.random.normal(k, (population, dim + 1))  # one draw: noise z and fitness noise
        z = g[:, :dim]
        x = mean + std * z
        f = jax.vmap(lambda xi: problem_loss(problem, xi))(x)
        observed = jax.lax.stop_gradient(f * jnp.exp(problem.noise * g[:, dim]))
        observed = jnp.where(jnp.isfinite(observed), observed, jnp.finfo(jnp.float32).max)
        mean, std, path = selection.update(policy, mean, std, path, z, observed)
        rel = jnp.log(problem_loss(problem, mean) / f0 + 1e-8)
        return (mean, std, path), rel

    carry = (start, problem.std_init * jnp.ones(dim), jnp.zeros(dim))
    inputs = (jax.random.split(key, generations), jnp.arange(generations))
    _, rel = jax.lax.scan(generation, carry, inputs)
    return rel


def meta_loss(
    policy, problems: Problem, key, generations: int, population: int, truncation: int = 0
) -> jax.Array:
    """Mean meta-loss of ``policy`` over a batch of problems of one dimension."""
    keys = jax.random.split(key, problems.kind.shape[0])
    rel = jax.vmap(lambda pr, k: unroll(policy, pr, k, generations, population, truncation))(
        problems, keys
    )
    return jnp.mean(rel)


def stream_key(base_seed: int, split: str) -> jax.Array:
    """The key of a split's problem stream (problem ``i`` is ``fold_in(stream, i)``)."""
    return jax.random.fold_in(jax.random.PRNGKey(base_seed), 1 + SPLITS.index(split))


@functools.partial(jax.jit, static_argnames=("cfg", "n", "dim"))
def problem_batch(cfg: ProblemsConfig, stream: jax.Array, start, n: int, dim: int) -> Problem:
    """Problems ``start .. start + n - 1`` of dimension ``dim`` of a stream (jitted)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(stream, i), dim))(
        start + jnp.arange(n)
    )
    return jax.vmap(lambda k: sample_problem(k, dim, cfg))(keys)


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainResult:
    policy: dict
    history: list[dict]  # one record per logged step
    initial_validation: float
    final_validation: float  # of the policy kept: the best validation meta-loss
    kept_step: int  # the step whose policy is kept (0: the initial one)
    skipped: int
    seconds: float


def start_policy(cfg: SelectionTrainConfig):
    """The policy training starts from: rank-based weights, or uniform ones (no selection)."""
    policy = selection.init_policy(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0), cfg.hidden)
    if cfg.init == "uniform":
        policy["linear"] = jnp.zeros_like(policy["linear"])
        policy["w2"] = jnp.zeros_like(policy["w2"])
    return policy


def train(
    cfg: SelectionTrainConfig,
    echo: Callable[[str], None] | None = None,
    policy=None,
) -> TrainResult:
    """Train a selection policy; ``echo`` receives progress lines.

    Returns the policy with the lowest validation meta-loss seen at the logged steps. The
    validation problems (``validation_problems`` per dimension, rounded up to a multiple of
    ``batch``) come from their own key stream, disjoint from training and from the held-out
    comparison problems.

    The policy starts from :func:`start_policy` unless one is given. Step ``s`` trains on
    problems ``s * batch ..`` of the train stream of ``seed``, one batch per dimension.
    """
    from ..meta.gradient import make_optimizer

    t, p = cfg.training, cfg.problems
    echo = echo or (lambda line: None)
    if policy is None:
        policy = start_policy(cfg)
    tx = make_optimizer(t.optimizer, t.clip_norm)
    opt_state = tx.init(policy)
    train_stream = stream_key(cfg.seed, "train")
    val_stream = stream_key(VALIDATION_SEED, "validation")

    def batch(stream, start):
        return [problem_batch(p, stream, start, t.batch, d) for d in p.dims]

    def total_loss(pol, problems, key):
        losses = [
            meta_loss(
                pol,
                probs,
                jax.random.fold_in(key, d),
                t.generations,
                t.population_size,
                t.truncation,
            )
            for d, probs in zip(p.dims, problems, strict=True)
        ]
        return jnp.mean(jnp.stack(losses))

    # one compiled function for training and validation (same shapes)
    loss_and_grad = jax.jit(jax.value_and_grad(total_loss))

    @jax.jit
    def apply(pol, opt_state, loss, grads):
        updates, new_opt = tx.update(grads, opt_state, pol)
        new_pol = optax.apply_updates(pol, updates)
        leaves = jax.tree.leaves(grads) + [loss]
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        return pick(new_pol, pol), pick(new_opt, opt_state), ~ok

    chunks = -(-t.validation_problems // t.batch)
    val_key = jax.random.fold_in(val_stream, 2**30)

    def validate(pol) -> float:
        losses = [
            loss_and_grad(pol, batch(val_stream, c * t.batch), jax.random.fold_in(val_key, c))[0]
            for c in range(chunks)
        ]
        return float(np.mean(losses))

    t0 = time.perf_counter()
    initial = validate(policy)
    echo(f"step     0/{t.steps}  validation meta-loss {initial:.4f}")
    history, skipped, running = [], 0, []
    best, best_policy, best_step = initial, policy, 0
    noise_key = jax.random.fold_in(train_stream, 2**30)
    for step in range(t.steps):
        problems = batch(train_stream, step * t.batch)
        loss, grads = loss_and_grad(policy, problems, jax.random.fold_in(noise_key, step))
        policy, opt_state, bad = apply(policy, opt_state, loss, grads)
        skipped += int(bad)
        running.append(float(loss))
        if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
            val = validate(policy)
            record = {
                "step": step + 1,
                "train_meta_loss": float(np.mean(running)),
                "validation_meta_loss": val,
                "skipped": skipped,
                "time_s": time.perf_counter() - t0,
            }
            history.append(record)
            running = []
            if val < best:
                best, best_policy, best_step = val, policy, step + 1
            eta = record["time_s"] / (step + 1) * (t.steps - step - 1)
            echo(
                f"step {step + 1:>5}/{t.steps}  train {record['train_meta_loss']:.4f}"
                f"  validation {val:.4f}  skipped {skipped}  eta {eta:.0f}s"
            )
    echo(f"kept the policy of step {best_step} (validation meta-loss {best:.4f})")
    return TrainResult(
        best_policy, history, initial, best, best_step, skipped, time.perf_counter() - t0
    )


def header(cfg: SelectionTrainConfig, result: TrainResult) -> dict:
    """What a policy file records about its training (JSON-safe)."""
    from ..config import plain

    return {
        "training": {
            "config": plain(dataclasses.asdict(cfg)),
            "initial_validation_meta_loss": result.initial_validation,
            "final_validation_meta_loss": result.final_validation,
            "kept_step": result.kept_step,
            "skipped_steps": result.skipped,
            "seconds": round(result.seconds, 1),
        }
    }


__all__ = [
    "KINDS",
    "Problem",
    "ProblemsConfig",
    "SelectionTrainConfig",
    "TrainResult",
    "TrainingConfig",
    "fixed_problem",
    "header",
    "meta_loss",
    "parse_config",
    "problem_batch",
    "problem_key",
    "problem_loss",
    "sample_problem",
    "start_policy",
    "stream_key",
    "train",
    "unroll",
]
