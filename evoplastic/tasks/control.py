"""Task family ``control``: a network with random initial weights must learn to act.

Every episode starts from fresh random weights that change only through the rule, as in
Najarro & Risi 2020 ("Meta-learning through Hebbian plasticity in random networks"). The
environments are gymnax's classic-control ones (``CartPole-v1``, ``Acrobot-v1``,
``Pendulum-v1``); the loss is minus the episode return.

Adaptation tests the rule never saw in meta-training are task parameters:

* ``env_params``: changed physics, e.g. ``{"length": 1.0, "masspole": 0.2}`` for a longer,
  heavier pole (CartPole's derived constants are recomputed);
* ``invert_at``: from this step on, the sensors are inverted (``obs -> -obs``), which
  only a network that keeps learning survives.

``plastic_steps`` stops the rule after that many steps (the weights then stay as they
are), which tells a rule that keeps learning through the episode from one that only sets
up a controller at its start.

Discrete actions are read out as the most active output unit (``readout: argmax``, one
unit per action). For CartPole, ``readout: sign`` uses a single output unit instead, whose
sign picks the push (right when its output is positive): the synapses onto it then see
the action itself as their post activity, which is what a rule shared by every synapse
needs to relate an action to its consequences.

Meta-train and meta-test episodes differ in their reset states, initial weights and
environment noise (disjoint key streams, see :mod:`evoplastic.tasks.base`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from .. import networks
from ..networks.layered import LayeredNetwork
from .base import split_key

ENVS = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1")
READOUTS = ("argmax", "sign")


@functools.cache
def _env(name: str):
    import gymnax

    return gymnax.make(name)


def _check_readout(env_name: str, readout: str) -> None:
    if readout not in READOUTS:
        raise ValueError(
            f"task.readout: unknown readout {readout!r} (one of {', '.join(READOUTS)})"
        )
    if readout == "sign" and env_name != "CartPole-v1":
        raise ValueError(
            f"task.readout: 'sign' needs an environment with two actions (CartPole-v1), not"
            f" {env_name}"
        )


@struct.dataclass
class ControlTask:
    """One episode: the keys of its reset state, initial weights and environment noise."""

    reset_key: jax.Array
    weight_key: jax.Array
    step_key: jax.Array


@dataclasses.dataclass(frozen=True)
class ControlFamily:
    """Episodes of a gymnax environment, acted in by a plastic layered network.

    Attributes:
      network: the plastic network (input and output sizes come from the environment).
      env: the gymnax environment name.
      max_steps: episode length (0: the environment's own limit).
      invert_at: invert the sensors from this step on (-1: never).
      env_params: overrides of the environment's parameters.
      readout: how a discrete action is read from the output: ``argmax`` (one unit per
        action) or ``sign`` (one unit; two-action environments only).
      plastic_steps: the rule changes the weights during the first ``plastic_steps`` steps
        only (-1: the whole episode).
    """

    network: LayeredNetwork
    env: str = "CartPole-v1"
    max_steps: int = 0
    invert_at: int = -1
    env_params: dict = dataclasses.field(default_factory=dict)
    readout: str = "argmax"
    plastic_steps: int = -1

    metric_names = ("return",)

    def __post_init__(self):
        if self.env not in ENVS:
            raise ValueError(
                f"task.env: unknown environment {self.env!r} (one of {', '.join(ENVS)})"
            )
        _check_readout(self.env, self.readout)
        if self.plastic_steps < -1:
            raise ValueError(
                f"task.plastic_steps: must be >= 0 (or -1: the whole episode), got"
                f" {self.plastic_steps}"
            )
        env, params = _env(self.env)
        fields = set(params.__dataclass_fields__)
        for key in self.env_params:
            if key not in fields:
                raise ValueError(
                    f"task.env_params.{key}: {self.env} has no parameter {key!r}"
                    f" (parameters: {', '.join(sorted(fields))})"
                )

    @property
    def params(self):
        """The environment's parameters with ``env_params`` applied."""
        env, params = _env(self.env)
        params = params.replace(**self.env_params)
        if self.env == "CartPole-v1":  # keep CartPole's derived constants consistent
            params = params.replace(
                total_mass=params.masscart + params.masspole,
                polemass_length=params.masspole * params.length,
            )
        return params

    @property
    def steps(self) -> int:
        """Steps per episode."""
        return self.max_steps or int(self.params.max_steps_in_episode)

    def sample(self, key: jax.Array, split: str) -> ControlTask:
        """One episode of ``split`` (disjoint key streams for train and test)."""
        k = jax.random.split(split_key(key, split), 3)
        return ControlTask(reset_key=k[0], weight_key=k[1], step_key=k[2])

    def _action(self, y: jax.Array):
        env, params = _env(self.env)
        if self.env == "Pendulum-v1":
            return params.max_torque * y[:1]
        if self.readout == "sign":
            return (y[0] > 0).astype(jnp.int32)
        return jnp.argmax(y)

    def inner_loop(self, rule, genome, task: ControlTask, key: jax.Array | None = None):
        """Play one episode while the rule changes the weights; loss = minus the return."""
        del key
        env, _ = _env(self.env)
        params = self.params
        net = self.network
        obs, env_state = env.reset_env(task.reset_key, params)
        # what never changes (fixed feedback; a static rule's weights) is a constant of
        # the scan, not part of its carry
        carried, constants = net.split_constants(
            net.initial_state(task.weight_key, rule, genome), rule
        )

        def body(carry, t):
            carried, env_state, obs, done, ret = carry
            state = net.join_constants(carried, constants)
            if self.invert_at >= 0:
                obs = jnp.where(t >= self.invert_at, -obs, obs)
            acts = net.forward(state.ws, obs.astype(jnp.float32))
            obs, env_state, reward, finished, _ = env.step_env(
                jax.random.fold_in(task.step_key, t), env_state, self._action(acts[-1]), params
            )
            new = net.plasticity(state, acts, rule, genome)
            if self.plastic_steps >= 0:
                new = jax.tree.map(lambda a, b: jnp.where(t < self.plastic_steps, a, b), new, state)
            carried, _ = net.split_constants(new, rule)
            ret = ret + jnp.where(done, 0.0, reward)
            return (carried, env_state, obs, done | finished, ret), None

        init = (carried, env_state, obs, jnp.array(False), jnp.zeros(()))
        (_, _, _, _, ret), _ = jax.lax.scan(body, init, jnp.arange(self.steps))
        return -ret, {"return": ret}

    @classmethod
    def create(cls, network: dict | None = None, **params) -> ControlFamily:
        """Make the family; ``network`` holds :class:`LayeredNetwork` options (``hidden``...)."""
        env_name = params.get("env", cls.env)
        if env_name not in ENVS:
            raise ValueError(
                f"task.env: unknown environment {env_name!r} (one of {', '.join(ENVS)})"
            )
        env, env_params = _env(env_name)
        n_in = env.observation_space(env_params).shape[0]
        space = env.action_space(env_params)
        n_out = space.shape[0] if env_name == "Pendulum-v1" else space.n
        if params.get("readout") == "sign":  # checked against the environment on creation
            n_out = 1
        return cls(network=networks.from_options(network, n_in, n_out), **params)
