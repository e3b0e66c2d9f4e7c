"""``evoplastic bench --ray``: the local backend against Ray with 1 and 2 actors.

Measured on a local Ray instance on this machine, with every step timed end to end
(``step`` returns after the tell):

* per-generation time of a compute-heavy pca config, local vs Ray with 1 and 2 CPU actors
  (the same shards, so the same numbers);
* per-step time of the meta-gradient (data-parallel: each actor returns its shards' loss
  and gradient sums) on a heavy pca config, local vs Ray with 2 CPU actors;
* dispatch overhead: Ray (2 actors) minus local on a near-empty fitness (a quadratic);
* bytes sent per generation by the driver (the state put once, plus each shard's
  arguments) and received (fitness values), for OpenAI-ES at a genome of 10,000 numbers
  and populations of 64 and 1024.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp

from .. import backends, meta
from ..backends.sharded import Pieces
from ..experiment import config_pieces

HEAVY = {
    "name": "bench-heavy",
    "task": {"name": "pca", "dim": 8, "steps": 12000},
    "strategy": {"name": "cma_es", "population_size": 256},
    "evaluation": {"instances": 32, "shard_size": 32},
}


# backprop through 12,000 inner steps of 128 instances, in 4 shards of 32 (local step >= 0.5 s)
HEAVY_GRADIENT = {
    "name": "bench-heavy-gradient",
    "task": {"name": "pca", "dim": 8, "steps": 12000},
    "meta": {"optimizer": "gradient", "gradient": {"remat": "none"}},
    "evaluation": {"instances": 128, "shard_size": 32},
}


def _quadratic(genome, key):
    return jnp.sum((genome - 1.0) ** 2)


def quadratic_pieces(strategy: str, population: int, dim: int, shard_size: int, shared=None):
    """Pieces of a near-empty problem: a quadratic fitness, no inner loop."""
    es, params = meta.make(strategy, population, jnp.zeros(dim), std_init=0.1)
    step = backends.make_generation_step(es, params, _quadratic, shard_size=shard_size)
    return Pieces(step, lambda key: es.init(key, jnp.zeros(dim), params))


def _time_steps(step, init_state, reps: int) -> list[float]:
    run_key = jax.random.PRNGKey(0)
    state, _ = step(init_state(run_key), run_key, 0)  # compile / warm
    times = []
    for g in range(1, reps + 1):
        t0 = time.perf_counter()
        state, m = step(state, run_key, g)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return times


def _compare(factory, reps: int, workers=(1, 2)) -> dict:
    from ..backends import ray_backend

    pieces = factory()
    out = {"local": _time_steps(pieces.step, pieces.init_state, reps)}
    stats = {}
    for n in workers:
        with ray_backend.open_step(factory, workers=n, gpus_per_worker=0) as step:
            out[f"ray{n}"] = _time_steps(step, pieces.init_state, reps)
            stats[f"ray{n}"] = step.stats[-1]
    return {"median_s": {k: statistics.median(v) for k, v in out.items()}, "stats": stats}


def gradient_case(reps: int, echo=print, config: dict | None = None) -> dict:
    """Meta-gradient per-step time, local vs Ray with 2 actors (needs a Ray connection)."""
    factory = functools.partial(config_pieces, config or HEAVY_GRADIENT)
    r = _compare(factory, reps, workers=(2,))
    m = r["median_s"]
    ratio = m["ray2"] / m["local"]
    echo(
        f"meta-gradient, pca 12,000 steps x 128 instances (4 shards): local {m['local']:.3f} s"
        f"  ray 2 actors {m['ray2']:.3f} s  (ray2/local {ratio:.3f}, target <= 1.15)"
    )
    return m | {"ratio_ray2_local": ratio}


CASES = ("heavy", "gradient", "dispatch", "bytes")


def run_ray_bench(quick: bool = False, echo=print, address=None, cases=None) -> dict:
    """Run the measurements (``cases``, default all four) on a new local Ray instance, or
    on the cluster at ``address`` (a head and a second node: the actors spread over both);
    returns and prints them."""
    from ..backends import ray_backend

    reps = 5 if quick else 15
    cases = tuple(cases or CASES)
    results = {}
    with ray_backend.connect(address) as ray:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        echo(f"Ray: {len(nodes)} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs")
        results["nodes"] = len(nodes)
        if "heavy" in cases:
            results["heavy"] = _heavy_case(reps, echo)
        if "gradient" in cases:
            results["gradient"] = gradient_case(reps, echo)
        if "dispatch" in cases:
            results["dispatch"] = _dispatch_case(reps, echo)
        if "bytes" in cases:
            results["bytes"] = _bytes_case(echo)
        if "bytes_large" in cases:  # asked for by name only (1 GB populations)
            results["bytes_large"] = _bytes_case(echo, LARGE_GENOME, (64, 256))
    return results


LARGE_GENOME = 1_000_000


def _heavy_case(reps: int, echo) -> dict:
    r = _compare(functools.partial(config_pieces, HEAVY), reps)
    m = r["median_s"]
    echo(
        f"heavy pca (pop 256, 8 shards): local {m['local']:.3f} s  ray 1 actor "
        f"{m['ray1']:.3f} s  ray 2 actors {m['ray2']:.3f} s  (ray2/local "
        f"{m['ray2'] / m['local']:.3f}, target <= 1.15)"
    )
    return m | {"ratio_ray2_local": m["ray2"] / m["local"]}


def _dispatch_case(reps: int, echo) -> dict:
    empty = functools.partial(quadratic_pieces, "cma_es", 64, 8, 8)
    r = _compare(empty, reps * 4, workers=(2,))
    m = r["median_s"]
    overhead = m["ray2"] - m["local"]
    echo(
        f"near-empty fitness (pop 64, 8 shards): local {m['local'] * 1e3:.2f} ms  ray 2 "
        f"actors {m['ray2'] * 1e3:.2f} ms  dispatch overhead {overhead * 1e3:.2f} ms"
        " (target <= 20 ms)"
    )
    return m | {"overhead_s": overhead}


def _bytes_case(echo, dim: int = 10_000, populations=(64, 1024)) -> dict:
    from ..backends import ray_backend

    sizes = {}
    small, large = populations
    for population in populations:
        factory = functools.partial(quadratic_pieces, "open_es", population, dim, population // 8)
        with ray_backend.open_step(factory, workers=2, gpus_per_worker=0) as step:
            _time_steps(step, factory().init_state, 2)
            sizes[population] = step.stats[-1]
    growth = sizes[large]["bytes"] / sizes[small]["bytes"] - 1
    echo(
        f"bytes per generation, OpenAI-ES, genome {dim:,}, 8 shards: "
        + "  ".join(
            f"pop {p}: sent {s['bytes']:,} B, fitness back {s['bytes_back']:,} B"
            for p, s in sizes.items()
        )
        + f"  (sent grows {growth * 100:+.2f}%, target within 10%)"
    )
    return {str(k): v for k, v in sizes.items()} | {"growth": growth}
