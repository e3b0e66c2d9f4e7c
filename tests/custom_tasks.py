"""User-style task factories for the tests of configs that name a task by import path."""

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from evoplastic import tasks

NOT_A_FACTORY = 3


def make_quadratic(dim: int = 3, target: float = 1.0):
    """A fitness function: the squared distance to ``target`` in every coordinate."""
    assert dim > 0

    def fitness(genome, key):
        return jnp.sum((genome - target) ** 2)

    return fitness


def make_quadratic_task(dim: int = 3, target: float = 1.0):
    """The same fitness with its genome: a FitnessTask needs no ``task.genome``."""
    return tasks.FitnessTask(make_quadratic(dim, target), jnp.zeros(dim))


def make_pca_family(dim: int = 4, steps: int = 64, network: dict | None = None):
    """A task family (the built-in pca family, made by a user's factory)."""
    return tasks.make("pca", dim=dim, steps=steps, network=network)


def make_vector_loss():
    """A fitness that returns a vector instead of a scalar (a mistake)."""
    return lambda genome, key: genome**2


def make_python_if():
    """A fitness with a Python ``if`` on a traced value (not jittable)."""

    def fitness(genome, key):
        if genome[0] > 0:
            return jnp.sum(genome)
        return -jnp.sum(genome)

    return fitness


def make_raising():
    """A factory that fails."""
    raise ValueError("the data set is missing")


def make_checked(limit: float = 3.0, target: float = 10.0):
    """Pulls ``genome[0]`` towards ``target`` but checks ``genome[0] < limit``."""

    def fitness(genome, key):
        checkify.check(genome[0] < limit, "genome[0] = {g} is not below the limit", g=genome[0])
        return (genome[0] - target) ** 2 + jnp.sum(genome[1:] ** 2)

    return fitness


def raise_above(value, limit):
    if value >= limit:
        raise ValueError(f"host check failed: {float(value):.3f} >= {limit}")


def make_callback(limit: float = 3.0, target: float = 10.0):
    """Like :func:`make_checked`, but a host callback raises for the failing member."""

    def fitness(genome, key):
        jax.debug.callback(raise_above, genome[0], limit)
        return (genome[0] - target) ** 2 + jnp.sum(genome[1:] ** 2)

    return fitness


def make_finite_near_zero(radius: float = 1.0):
    """A fitness that is finite only within ``radius`` of the origin (NaN elsewhere): a
    stand-in for rules whose inner loop diverges."""

    def fitness(genome, key):
        loss = jnp.sum(genome**2)
        return jnp.where(jnp.max(jnp.abs(genome)) < radius, loss, jnp.nan)

    return fitness
