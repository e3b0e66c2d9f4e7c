"""Fixed baseline rules with a sliding threshold or an error: BCM and feedback alignment.

Both have empty genomes (nothing to evolve) and serve as baselines next to ``hebb`` and
``oja``:

* ``bcm`` (Bienenstock, Cooper & Munro 1982; the sliding threshold of Intrator & Cooper
  1992): ``dw = eta * pre * post * (post - theta)``, where each post neuron's threshold
  ``theta`` tracks the running mean of its ``post^2``,
  ``theta <- theta + (post^2 - theta) / tau``. ``theta`` is the rule's state (one value
  per post neuron), carried by the network between steps.
* ``fa``, feedback alignment as a fixed local rule (Lillicrap et al. 2016):
  ``dw = eta * err * pre``, the delta rule at every layer. ``err`` is the error delivered
  to the post neuron: the output error at the output layer and, at hidden layers, the
  output error sent through the network's fixed random feedback weights
  (``network.feedback: random``), so no synapse needs the transpose of another layer's
  weights. The task's error is ``target - output``, so ``+err*pre`` descends the loss
  (the textbook ``-eta * dL/dy * pre``). The activation's derivative is left out: for
  ``tanh`` units it is positive and only rescales each neuron's step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import Genome, Rule, Signals


def bcm(tau: float = 100.0, eta: float = 1.0, theta0: float = 0.0) -> Rule:
    """The BCM rule with a sliding threshold (fixed; its genome is empty).

    Args:
      tau: time constant (in steps) of the threshold's running mean of ``post^2``.
      eta: scale of ``dw`` (the network's ``lr`` multiplies it too).
      theta0: the threshold before the first step.
    """
    if tau < 1.0:
        raise ValueError(f"rule.tau: must be >= 1 (steps), got {tau}")

    def init_state(shape: tuple[int, int]) -> jax.Array:
        return jnp.full((shape[0],), theta0, jnp.float32)

    def update(genome: Genome, signals: Signals) -> jax.Array:
        del genome
        theta = signals.state
        post = signals.post
        return eta * (post * (post - theta))[:, None] * signals.pre[None, :]

    def next_state(genome: Genome, signals: Signals) -> jax.Array:
        del genome
        return signals.state + (signals.post**2 - signals.state) / tau

    def describe(genome: Genome) -> str:
        return f"dw = {eta:g}*pre*post*(post - theta), theta <- theta + (post^2 - theta)/{tau:g}"

    return Rule(
        "bcm",
        lambda key: jnp.zeros((0,)),
        update,
        describe,
        init_state=init_state,
        next_state=next_state,
    )


def fa(eta: float = 1.0) -> Rule:
    """Feedback alignment's local delta rule ``dw = eta * err * pre`` (fixed; empty genome)."""

    def update(genome: Genome, signals: Signals) -> jax.Array:
        del genome
        local = signals.broadcast()
        return eta * local["err"] * local["pre"]

    return Rule("fa", lambda key: jnp.zeros((0,)), update, lambda g: f"dw = {eta:g}*err*pre")
