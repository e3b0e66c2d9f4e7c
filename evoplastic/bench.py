"""``evoplastic bench``: the toolkit's generation step against a minimal hand-written loop.

For a config, it times the toolkit's compiled generation (ask, evaluate, tell in one
jit) and a minimal loop written directly against evosax and JAX (jitted ask, a jitted
``vmap`` of the same inner loop, jitted tell), in the same process and interleaved, so
their ratio is measured side by side. Compile time is reported apart from the per
generation times.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from . import config
from .experiment import build

BENCH_CONFIGS = {
    "pca": {
        "task": {"name": "pca", "dim": 8, "steps": 2000},
        "strategy": {"name": "cma_es", "population_size": 64},
        "evaluation": {"instances": 8},
    },
}


def _minimal_pca_fitness(dim, steps, lr, lr_decay, w_init_norm, instances, terms_fn):
    """The pca inner loop written by hand: sample, scan the rule, score the final weights."""

    def one(genome, key):
        k_normal, k_uniform = jax.random.split(jax.random.fold_in(key, 1))
        g = jax.random.normal(k_normal, (dim * dim + dim + steps * dim,))
        u = jax.random.uniform(k_uniform, (dim,))
        q, _ = jnp.linalg.qr(g[: dim * dim].reshape(dim, dim))
        w0 = g[dim * dim : dim * dim + dim]
        z = g[dim * dim + dim :].reshape(steps, dim)
        eig = (0.5 + 1.5 * u[0]) * jnp.concatenate([jnp.ones(1), 0.25 * u[1:]])
        xs = (z * jnp.sqrt(eig)) @ q.T

        def body(carry, x):
            w, t = carry
            y = w @ x
            dw = terms_fn(genome, x, y, w)
            return (w + lr / (1.0 + lr_decay * t) * dw, t + 1), None

        w = w_init_norm * w0 / jnp.linalg.norm(w0)
        (w, _), _ = jax.lax.scan(body, (w, 0), xs)
        norm = jnp.linalg.norm(w)
        return 1.0 - jnp.abs(w @ q[:, 0]) / norm + (norm - 1.0) ** 2

    def fitness(genome, key):
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(instances))
        return jnp.mean(jax.vmap(lambda k: one(genome, k))(keys))

    return fitness


def _default_terms(c, x, y, w):
    # pre*post, post^2*w, pre, post, w, post*w, 1, post^2 -- the default library, by hand
    return (
        c[0] * y * x
        + c[1] * y * y * w
        + c[2] * x
        + c[3] * y
        + c[4] * w
        + c[5] * y * w
        + c[6]
        + c[7] * y * y
    )


def _time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_config(name: str, reps: int, echo=print) -> dict:
    cfg = config.parse(BENCH_CONFIGS[name])
    exp = build(cfg)
    run_key = jax.random.PRNGKey(0)
    P = cfg.strategy.population_size

    step = exp.generation_step()
    box = {"state": exp.init_state(run_key), "g": 0}

    def toolkit():
        box["state"], m = step(box["state"], run_key, box["g"])
        jax.block_until_ready(m)
        box["g"] += 1

    es, es_params = exp.strategy, exp.es_params
    net = cfg.network
    fit = jax.jit(
        jax.vmap(
            _minimal_pca_fitness(
                cfg.task["dim"],
                cfg.task["steps"],
                net.lr,
                net.lr_decay,
                net.w_init_norm,
                cfg.evaluation.instances,
                _default_terms,
            ),
            in_axes=(0, None),
        )
    )
    mbox = {"state": exp.init_state(run_key), "g": 0}

    def minimal():
        key_g = jax.random.fold_in(run_key, mbox["g"])
        k_ask, k_eval, k_tell = jax.random.split(key_g, 3)
        pop, st = es.ask(k_ask, mbox["state"], es_params)
        f = fit(pop, k_eval)
        mbox["state"], _ = es.tell(k_tell, pop, f, st, es_params)
        jax.block_until_ready(mbox["state"])
        mbox["g"] += 1

    t0 = time.perf_counter()
    toolkit()
    compile_toolkit = time.perf_counter() - t0
    t0 = time.perf_counter()
    minimal()
    compile_minimal = time.perf_counter() - t0
    tk, mn = [], []
    for _ in range(reps):  # interleaved, so both see the same machine load
        tk += _time(toolkit, 1)
        mn += _time(minimal, 1)
    evals = P * cfg.evaluation.instances
    synapses = cfg.task["dim"]
    med_tk, med_mn = statistics.median(tk), statistics.median(mn)
    result = {
        "config": name,
        "population": P,
        "compile_s": compile_toolkit,
        "compile_minimal_s": compile_minimal,
        "gen_median_s": med_tk,
        "gen_min_s": min(tk),
        "gen_max_s": max(tk),
        "minimal_median_s": med_mn,
        "overhead_ratio": med_tk / med_mn,
        "evals_per_s": evals / med_tk,
        "synapse_updates_per_s": evals * synapses * cfg.task["steps"] / med_tk,
    }
    echo(
        f"{name:>6}  pop {P:>5}  gen {med_tk * 1e3:8.2f} ms (min {min(tk) * 1e3:.2f}, "
        f"max {max(tk) * 1e3:.2f})  minimal {med_mn * 1e3:8.2f} ms"
        f"  ratio {result['overhead_ratio']:.3f}  compile {compile_toolkit:.1f}s"
        f"  {result['synapse_updates_per_s']:.3g} syn-updates/s"
    )
    return result


def run_bench(quick: bool = False, echo=print) -> dict:
    """Run every bench config; returns the results (also printed through ``echo``)."""
    reps = 5 if quick else 20
    device = jax.devices()[0]
    echo(f"evoplastic bench on {device.device_kind} ({jax.default_backend()}), {reps} generations")
    return {
        "device": str(jax.devices()[0]),
        "results": [bench_config(n, reps, echo) for n in BENCH_CONFIGS],
    }
