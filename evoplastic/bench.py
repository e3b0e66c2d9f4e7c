"""``evoplastic bench``: generation speed, and the meta-gradient's memory against unroll length.

For a config, it times the toolkit's compiled generation (ask, evaluate, tell in one
jit) and a minimal loop written directly against evosax and JAX (jitted ask, a jitted
``vmap`` of the same inner loop, jitted tell), in the same process and interleaved, so
their ratio is measured side by side. Compile time is reported apart from the per
generation times.

``--memory`` adds the memory of the meta-gradient (``jax.grad`` of the unrolled pca inner
loop with respect to the genome) at several unroll lengths, for each checkpointing policy
of :func:`evoplastic.meta.unroll.unroll`. The figures come from XLA's compiled memory
analysis (``jax.jit(f).lower(...).compile().memory_analysis()``), not from a process
measurement: ``temp`` is the working memory XLA allocates for the gradient (the saved
residuals of the backward pass and scratch buffers), ``args`` the inputs, dominated by the
instance's input stream (``4 * dim * steps`` bytes, the data itself). ``growth`` is the
ratio of ``temp`` to the shortest unroll's.
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


MEMORY_LENGTHS = (100, 1000, 10000)


def meta_gradient_memory(steps: int, remat: str, dim: int = 8) -> dict:
    """XLA's memory analysis of the pca meta-gradient for an unroll of ``steps`` steps."""
    from .meta.unroll import unroll_instance
    from .rules import make as make_rule
    from .tasks import make as make_task

    family = make_task("pca", dim=dim, steps=steps)
    rule = make_rule("polynomial")
    task = family.sample(jax.random.PRNGKey(0), "train")
    genome = rule.init(jax.random.PRNGKey(0))

    def loss(genome, task):
        state = family.init_inner(task)
        return unroll_instance(family, rule, genome, task, state, 0, steps, remat)[0]

    t0 = time.perf_counter()
    compiled = jax.jit(jax.grad(loss)).lower(genome, task).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(genome, task))
    run_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    return {
        "steps": steps,
        "remat": remat,
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "compile_s": compile_s,
        "run_s": run_s,
    }


def bench_memory(lengths=MEMORY_LENGTHS, echo=print) -> list[dict]:
    """Meta-gradient memory at each unroll length, for every checkpointing policy."""
    from .meta.unroll import REMAT, nested_shape

    echo(
        "meta-gradient memory (XLA compiled memory analysis; temp = residuals + scratch,"
        " args = inputs incl. the input stream)"
    )
    rows = []
    for remat in REMAT:
        base = None
        for steps in lengths:
            r = meta_gradient_memory(steps, remat)
            base = base or r["temp_bytes"]
            r["growth"] = r["temp_bytes"] / base
            rows.append(r)
            levels, branching = nested_shape(steps)
            shape = f"levels x branching {levels} x {branching}" if remat == "nested" else ""
            echo(
                f"  remat {remat:>6}  steps {steps:>6}  temp {r['temp_bytes'] / 1024:9.1f} KiB"
                f"  (x{r['growth']:6.2f})  args {r['argument_bytes'] / 1024:8.1f} KiB"
                f"  grad {r['run_s'] * 1e3:8.1f} ms  {shape}"
            )
    for steps in lengths:
        by = {r["remat"]: r["temp_bytes"] for r in rows if r["steps"] == steps}
        echo(
            f"  steps {steps:>6}: none / nested = {by['none'] / by['nested']:6.1f}x,"
            f" step / nested = {by['step'] / by['nested']:6.1f}x"
        )
    return rows


def run_bench(quick: bool = False, echo=print, memory: bool = False) -> dict:
    """Run every bench config; returns the results (also printed through ``echo``).

    Args:
      quick: fewer repetitions of the generation timing.
      echo: where to print.
      memory: also measure the meta-gradient's memory against unroll length
        (:func:`bench_memory`; compiles 9 gradients, about a minute on 2 cores).
    """
    reps = 5 if quick else 20
    device = jax.devices()[0]
    echo(f"evoplastic bench on {device.device_kind} ({jax.default_backend()}), {reps} generations")
    results = {
        "device": str(jax.devices()[0]),
        "results": [bench_config(n, reps, echo) for n in BENCH_CONFIGS],
    }
    if memory:
        results["memory"] = bench_memory(echo=echo)
    return results
