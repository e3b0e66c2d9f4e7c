"""Bandit algorithms on the held-out episodes of a ``bandit`` task family.

UCB1 (Auer, Cesa-Bianchi & Fischer 2002: pull each arm once, then the arm with the
largest ``mean + sqrt(2 ln t / n)``), Thompson sampling with ``Beta(1, 1)`` priors, and
uniformly random pulls, each on the same held-out episodes as an evolved agent
(:func:`~evoplastic.tasks.test_instance_keys`), with the same rewards: pull ``t`` of arm
``a`` pays iff ``uniforms[t, a] < p_a`` (see :mod:`evoplastic.tasks.bandit`). Their
metrics are the family's: the cumulative (pseudo-)regret (also the loss) and the total
reward. ``evoplastic eval`` and a run's ``eval.json`` list them beside the evolved agent.

Run as a module for a table on any bandit:
``python -m evoplastic.analysis.bandit_baselines --arms 5 --pulls 100 --instances 100``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from ..tasks.bandit import BanditTask
from ..tasks.base import test_instance_keys

ALGORITHMS = ("ucb1", "thompson", "uniform")


def _play(family, task: BanditTask, choose):
    """Play ``choose(t, counts, wins, key) -> arm`` for an episode: ``(regret, reward)``."""
    arms = family.arms

    def body(carry, t):
        counts, wins = carry
        a = choose(t, counts, wins, jax.random.fold_in(task.action_key, t))
        r = family.reward(task, t, a)
        counts = counts.at[a].add(1.0)
        wins = wins.at[a].add(r)
        return (counts, wins), (a, r)

    init = (jnp.zeros(arms), jnp.zeros(arms))
    _, (actions, rewards) = jax.lax.scan(body, init, jnp.arange(family.pulls))
    regret = jnp.sum(jnp.max(task.probs) - task.probs[actions])
    return regret, jnp.sum(rewards)


def ucb1(t, counts, wins, key):
    """UCB1: an arm not yet pulled first, else the largest upper confidence bound."""
    del key
    bound = wins / jnp.maximum(counts, 1.0) + jnp.sqrt(
        2.0 * jnp.log(jnp.maximum(t, 1.0)) / jnp.maximum(counts, 1.0)
    )
    return jnp.argmax(jnp.where(counts == 0, jnp.inf, bound))


def thompson(t, counts, wins, key):
    """Thompson sampling: a draw from each arm's ``Beta(1 + wins, 1 + losses)``."""
    del t
    return jnp.argmax(jax.random.beta(key, 1.0 + wins, 1.0 + counts - wins))


def uniform(t, counts, wins, key):
    """Uniformly random pulls."""
    del t, wins
    return jax.random.randint(key, (), 0, counts.shape[0])


def evaluate(family, instances: int, algorithms=ALGORITHMS) -> dict:
    """``{algorithm: {"loss", "regret", "reward": [instances]}}`` on the first
    ``instances`` held-out episodes of ``family``."""
    keys = test_instance_keys(instances)
    out = {}
    for name in algorithms:
        choose = globals()[name]

        @jax.jit
        def run(keys, choose=choose):
            return jax.vmap(lambda k: _play(family, family.sample(k, "test"), choose))(keys)

        regret, reward = run(keys)
        out[name] = {"loss": regret, "regret": regret, "reward": reward}
    return out


def main(argv=None) -> None:
    """Print the algorithms' regret on held-out bandits (mean ± 95% interval)."""
    from .. import tasks

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", type=int, default=2)
    p.add_argument("--pulls", type=int, default=100)
    p.add_argument("--env", default="independent")
    p.add_argument("--instances", type=int, default=100)
    args = p.parse_args(argv)
    try:
        family = tasks.make("bandit", arms=args.arms, pulls=args.pulls, env=args.env)
    except ValueError as err:
        p.exit(2, f"error: {err}\n")
    print(f"{args.env} bandit, {args.arms} arms, {args.pulls} pulls, {args.instances} held-out")
    for name, raw in evaluate(family, args.instances).items():
        s, w = _summary(raw["regret"]), _summary(raw["reward"])
        print(
            f"  {name:9s} regret {s[0]:.3f} ± {s[1]:.3f} (median {s[2]:.3f})"
            f"  reward {w[0]:.2f} ± {w[1]:.2f}"
        )


def _summary(values) -> tuple[float, float, float]:
    """Mean, half-width of its 95% interval and median (as ``analysis.report.summarize``)."""
    v = np.asarray(values, np.float64)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else float("nan")
    return float(v.mean()), float(half), float(np.median(v))


if __name__ == "__main__":
    main()
