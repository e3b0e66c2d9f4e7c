"""Task family ``bandit``: learn within an episode which arm of a new bandit pays most.

The independent Bernoulli bandit of Wang et al. 2016 ("Learning to reinforcement learn"):
each episode draws every arm's pay probability uniformly in ``[0, 1]``; the agent pulls
``pulls`` times and receives reward 1 with the pulled arm's probability, else 0. With
``env: BernoulliBandit-misc`` the probabilities come from gymnax's environment of that name
instead (two arms, one paying with probability 0.1 and the other 0.9, which is which drawn
per episode by its ``reset``); its rewards are Bernoulli draws of the pulled arm's
probability, as its ``step``'s.

The agent is a recurrent network (:class:`~evoplastic.networks.ModulatedRecurrentNetwork`)
whose input at pull ``t`` is the one-hot of its previous action, the previous reward, a
constant 1 and (``time_input``) the fraction ``t / pulls``; it samples its action from the
softmax of its outputs. Which arm is good is known only once an episode starts, so no
fixed policy can be good: the agent must learn within the episode, by plasticity or in its
activities.

The loss is the cumulative (pseudo-)regret ``sum_t (max_a p_a - p_{a_t})``; the metrics are
the regret and the total reward. An episode draws its rewards as ``u[t, a] < p_a`` from
uniforms ``u[pulls, arms]`` held in the task, so the baselines of
:mod:`evoplastic.analysis.bandit_baselines` (UCB1, Thompson sampling) pull the same arms'
same rewards on the same held-out episodes.
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

ENVS = ("independent", "BernoulliBandit-misc")


@functools.cache
def _gymnax_bandit():
    import gymnax

    return gymnax.make("BernoulliBandit-misc")


@struct.dataclass
class BanditTask:
    """One episode: the arms' pay probabilities, the reward uniforms, the action key."""

    probs: jax.Array  # [arms]
    uniforms: jax.Array  # [pulls, arms]: pull t of arm a pays iff uniforms[t, a] < probs[a]
    action_key: jax.Array


def bandit_input(arms: int, pulls: int, t, action, reward, time_input: bool) -> jax.Array:
    """The agent's input at pull ``t``: one-hot of the previous action (zeros at ``t = 0``,
    ``action = -1``), the previous reward, a constant 1 and (``time_input``) ``t / pulls``."""
    onehot = jax.nn.one_hot(action, arms)  # all zeros for action -1
    parts = [onehot, jnp.reshape(reward, (1,)).astype(jnp.float32), jnp.ones(1)]
    if time_input:
        parts.append(jnp.reshape(t / pulls, (1,)).astype(jnp.float32))
    return jnp.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class BanditFamily:
    """Bernoulli bandits, a new one every episode (see the module docstring).

    Attributes:
      network: the agent (inputs ``arms + 2 (+1)``, one output per arm).
      arms: number of arms (2 for ``BernoulliBandit-misc``).
      pulls: pulls an episode.
      env: ``independent`` (uniform probabilities) or ``BernoulliBandit-misc`` (gymnax).
      time_input: give the agent ``t / pulls``.
    """

    network: ModulatedRecurrentNetwork
    arms: int = 2
    pulls: int = 100
    env: str = "independent"
    time_input: bool = True

    metric_names = ("regret", "reward")

    def __post_init__(self):
        if self.env not in ENVS:
            raise ValueError(f"task.env: unknown bandit {self.env!r} (one of {', '.join(ENVS)})")
        if self.arms < 2:
            raise ValueError(f"task.arms: must be >= 2, got {self.arms}")
        if self.env == "BernoulliBandit-misc" and self.arms != 2:
            raise ValueError(f"task.arms: BernoulliBandit-misc has 2 arms, got {self.arms}")
        if self.pulls < 1:
            raise ValueError(f"task.pulls: must be >= 1, got {self.pulls}")

    @staticmethod
    def n_inputs(arms: int, time_input: bool) -> int:
        """Inputs of the agent: previous action (one-hot), previous reward, 1, time."""
        return arms + 2 + int(time_input)

    @property
    def steps(self) -> int:
        """Pulls an episode."""
        return self.pulls

    def sample(self, key: jax.Array, split: str) -> BanditTask:
        """One episode of ``split``: probabilities, reward uniforms and action key."""
        k_p, k_u, k_a = jax.random.split(split_key(key, split), 3)
        if self.env == "independent":
            probs = jax.random.uniform(k_p, (self.arms,))
        else:
            env, params = _gymnax_bandit()
            _, state = env.reset_env(k_p, params)
            probs = jnp.asarray(state.reward_probs, jnp.float32)
        uniforms = jax.random.uniform(k_u, (self.pulls, self.arms))
        return BanditTask(probs=probs, uniforms=uniforms, action_key=k_a)

    def reward(self, task: BanditTask, t, action) -> jax.Array:
        """The reward (0 or 1) of pulling ``action`` at pull ``t``."""
        return (task.uniforms[t, action] < task.probs[action]).astype(jnp.float32)

    def run(self, rule, genome, task: BanditTask):
        """Play an episode: ``(actions[pulls], rewards[pulls], modulator[pulls], hebb norms)``."""
        net = self.network

        def body(carry, t):
            state, action, reward = carry
            x = bandit_input(self.arms, self.pulls, t, action, reward, self.time_input)
            state, logits, mod = net.step(state, x, rule, genome)
            a = jax.random.categorical(jax.random.fold_in(task.action_key, t), logits)
            r = self.reward(task, t, a)
            return (state, a, r), (a, r, mod, jnp.sum(jnp.abs(state.hebb)))

        init = (net.init(rule), jnp.array(-1), jnp.zeros(()))
        _, out = jax.lax.scan(body, init, jnp.arange(self.pulls))
        return out

    def inner_loop(self, rule, genome, task: BanditTask, key: jax.Array | None = None):
        """Play one episode; loss = cumulative regret, metrics: regret and total reward."""
        del key
        actions, rewards, _, _ = self.run(rule, genome, task)
        regret = jnp.sum(jnp.max(task.probs) - task.probs[actions])
        return regret, {"regret": regret, "reward": jnp.sum(rewards)}

    @classmethod
    def create(cls, network: dict | None = None, **params) -> BanditFamily:
        """Make the family; ``network`` holds the agent's options (``kind:
        modulated_recurrent``, the task's own; ``hidden``, ``modulation``, ``plastic``)."""
        arms = params.get("arms", cls.arms)
        if not isinstance(arms, int) or arms < 2:
            raise ValueError(f"task.arms: must be an integer >= 2, got {arms!r}")
        n_in = cls.n_inputs(arms, params.get("time_input", cls.time_input))
        net = networks.from_options(network, n_in, arms, default="modulated_recurrent")
        return cls(network=net, **params)
