"""Task family ``metamaze``: find a reward whose place is new in every episode, then return.

gymnax's ``MetaMaze-misc`` (after Miconi et al. 2019, "Backpropamine", the maze
experiment): a 9 x 9 grid maze with walls on every other row and column; each episode draws
the reward's place, and the agent starts at the centre. When it steps onto the reward it
receives ``reward`` (10) and is moved to a random open cell; the reward stays where it is
until the episode ends (``max_steps`` steps, 200). Within an episode an agent that has found
the reward once can go back to it quickly, so an agent that learns where it is collects
many more rewards than one that searches anew each time.

The agent is a recurrent network (:class:`~evoplastic.networks.ModulatedRecurrentNetwork`,
the task's own kind) whose input at step ``t`` is the 3 x 3 neighbourhood of walls, the
one-hot of its previous action, the previous reward divided by ``reward`` (0 or 1), a
constant 1 and ``t / max_steps``; it samples one of four moves from the softmax of its
outputs. The loss is minus the episode's return; the metrics are the return and the number
of rewards collected.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from .. import networks
from ..networks.modulated_recurrent import ModulatedRecurrentNetwork
from .base import split_key

N_ACTIONS = 4


@functools.cache
def _env():
    import gymnax

    with jax.ensure_compile_time_eval():  # the maze is built eagerly, even if first asked
        return gymnax.make("MetaMaze-misc")  # for inside a traced function


@struct.dataclass
class MazeTask:
    """One episode: the keys of its reset (the reward's place), moves and teleports."""

    reset_key: jax.Array
    action_key: jax.Array
    step_key: jax.Array


@dataclasses.dataclass(frozen=True)
class MetaMazeFamily:
    """Episodes of gymnax's ``MetaMaze-misc`` (see the module docstring).

    Attributes:
      network: the agent (17 inputs, 4 outputs).
      max_steps: steps an episode (the environment's 200 by default).
    """

    network: ModulatedRecurrentNetwork
    max_steps: int = 200

    metric_names = ("return", "rewards")
    N_INPUTS = 9 + N_ACTIONS + 3  # walls around, previous action, previous reward, 1, time

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"task.max_steps: must be >= 1, got {self.max_steps}")

    @property
    def steps(self) -> int:
        """Steps an episode."""
        return self.max_steps

    def sample(self, key: jax.Array, split: str) -> MazeTask:
        """One episode of ``split`` (disjoint key streams for train and test)."""
        k = jax.random.split(split_key(key, split), 3)
        return MazeTask(reset_key=k[0], action_key=k[1], step_key=k[2])

    def _input(self, obs: jax.Array, t) -> jax.Array:
        _, params = _env()
        walls = obs[:9]
        action = obs[9 : 9 + N_ACTIONS]
        reward = obs[9 + N_ACTIONS] / params.reward
        extra = jnp.stack([reward, 1.0, t / self.max_steps])
        return jnp.concatenate([walls, action, extra]).astype(jnp.float32)

    def run(self, rule, genome, task: MazeTask):
        """Play an episode: ``(actions[T], rewards[T], modulator[T])``."""
        env, params = _env()
        net = self.network
        obs, env_state = env.reset_env(task.reset_key, params)

        def body(carry, t):
            state, env_state, obs = carry
            state, logits, mod = net.step(state, self._input(obs, t), rule, genome)
            a = jax.random.categorical(jax.random.fold_in(task.action_key, t), logits)
            obs, env_state, reward, _, _ = env.step_env(
                jax.random.fold_in(task.step_key, t), env_state, a, params
            )
            return (state, env_state, obs), (a, reward, mod)

        init = (net.init(rule), env_state, obs)
        _, out = jax.lax.scan(body, init, jnp.arange(self.max_steps))
        return out

    def inner_loop(self, rule, genome, task: MazeTask, key: jax.Array | None = None):
        """Play one episode; loss = minus the return."""
        del key
        _, rewards, _ = self.run(rule, genome, task)
        ret = jnp.sum(rewards)
        return -ret, {"return": ret, "rewards": jnp.sum(rewards > 0).astype(jnp.float32)}

    @classmethod
    def create(cls, network: dict | None = None, **params) -> MetaMazeFamily:
        """Make the family; ``network`` holds the agent's options."""
        net = networks.from_options(network, cls.N_INPUTS, N_ACTIONS, default="modulated_recurrent")
        return cls(network=net, **params)
