"""``evoplastic bench``: how fast a generation is, and how close to the machine's limits.

Everything is measured in one process, side by side:

* for representative configs (pca; a multi-layer network with a Hebbian rule; an MLP rule;
  a control task): per-generation time (median, min, max; compile excluded), compile time,
  evaluations/s, synapse updates/s and the compiled step's memory (XLA's estimate);
* the same problem as a *minimal* loop -- jitted evosax ``ask``, a jitted ``vmap`` of the
  same inner loop, jitted ``tell`` and nothing else -- timed interleaved with the toolkit's
  fused generation, giving the overhead ratio toolkit / minimal. For pca the inner loop of
  the minimal loop is also written by hand (no rule or network abstraction);
* the machine's own limits: FLOP/s of a large matmul and the bandwidth of a streaming
  kernel, and the fraction of the relevant roofline that the multi-layer Hebbian inner
  loop reaches (FLOPs and bytes counted by hand per synapse and step, stated below);
* scaling: per-generation time at population 64, 256 and 1024;
* with ``--memory``, the memory of the meta-gradient (``jax.grad`` of the unrolled pca
  inner loop with respect to the genome) at several unroll lengths, for each checkpointing
  policy of :func:`evoplastic.meta.unroll.unroll`. The figures come from XLA's compiled
  memory analysis (``jax.jit(f).lower(...).compile().memory_analysis()``), not from a
  process measurement: ``temp`` is the working memory XLA allocates for the gradient (the
  saved residuals of the backward pass and scratch buffers), ``args`` the inputs, dominated
  by the instance's input stream (``4 * dim * steps`` bytes, the data itself). ``growth``
  is the ratio of ``temp`` to the shortest unroll's.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from .. import config
from ..backends import generation_keys
from ..experiment import Experiment, build

_CARTPOLE = {"name": "control", "env": "CartPole-v1", "max_steps": 200}
_LAYERED = {"activation": "tanh", "output_activation": "tanh", "lr": 1.0, "lr_decay": 0.0}

BENCH_CONFIGS = {
    "pca": {
        "task": {"name": "pca", "dim": 8, "steps": 2000},
        "strategy": {"name": "cma_es", "population_size": 64},
        "evaluation": {"instances": 8},
    },
    "hebbian": {  # multi-layer network, per-synapse ABCD rule
        "task": _CARTPOLE,
        "network": _LAYERED | {"hidden": [64, 64]},
        "rule": {"name": "abcd", "per_synapse": True},
        "strategy": {"name": "open_es", "population_size": 64, "std_init": 0.1},
        # shards of 64 members keep each shard's plastic state (~10 MiB) in the L3 cache,
        # so larger populations scale linearly instead of streaming from main memory
        "evaluation": {"instances": 2, "shard_size": 64},
    },
    "mlp_rule": {
        "task": _CARTPOLE,
        "network": _LAYERED | {"hidden": [32]},
        "rule": {"name": "mlp", "features": ["pre", "post", "w"], "hidden": [8]},
        "strategy": {"name": "open_es", "population_size": 64, "std_init": 0.1},
        "evaluation": {"instances": 2},
    },
    "control": {
        "task": _CARTPOLE | {"max_steps": 500},
        "network": _LAYERED | {"hidden": [16]},
        "rule": {"name": "abcd", "per_synapse": False},
        "strategy": {"name": "cma_es", "population_size": 64, "std_init": 0.5},
        "evaluation": {"instances": 4},
    },
}

# hand count for the Hebbian roofline, per synapse, inner step and instance (float32):
# forward 2 FLOPs (multiply-add); ABCD eta*(A*pre*post + B*pre + C*post + D) 9 FLOPs;
# w + lr*dw 2 FLOPs. Bytes: read and write the instance's w (8 bytes) and read the member's
# A, B, C, D, eta (20 bytes), which the member's instances share.
HEBB_FLOPS_PER_SYNAPSE_STEP = 13
HEBB_WEIGHT_BYTES = 8
HEBB_COEFFICIENT_BYTES = 20


def hebb_bytes_per_synapse_step(instances: int) -> float:
    return HEBB_WEIGHT_BYTES + HEBB_COEFFICIENT_BYTES / instances


def _synapses(exp: Experiment) -> int:
    net = exp.family.network
    if hasattr(net, "shapes"):
        return int(sum(o * i for o, i in net.shapes))
    return int(net.n_in * net.n_out)


def _steps(exp: Experiment) -> int:
    return int(exp.family.steps)


def _minimal_fitness(exp: Experiment):
    """``vmap`` over members of the mean inner-loop loss, nothing else."""
    family, rule, n = exp.family, exp.rule, exp.config.evaluation.instances

    def fitness(genome, key):
        def one(j):
            k = jax.random.fold_in(key, j)
            return family.inner_loop(rule, genome, family.sample(k, "train"), k)[0]

        return jnp.mean(jax.vmap(one)(jnp.arange(n)))

    return jax.jit(jax.vmap(fitness, in_axes=(0, None)))


def _hand_written_pca_fitness(exp: Experiment):
    """The pca inner loop written directly in jnp: sample, scan, score."""
    fam, net, n = exp.family, exp.family.network, exp.config.evaluation.instances
    d, steps = fam.dim, fam.steps

    def one(genome, key):
        k_normal, k_uniform = jax.random.split(jax.random.fold_in(key, 1))
        g = jax.random.normal(k_normal, (d * d + d + steps * d,))
        u = jax.random.uniform(k_uniform, (d,))
        q, _ = jnp.linalg.qr(g[: d * d].reshape(d, d))
        w0 = g[d * d : d * d + d]
        eig = (fam.scale_min + (fam.scale_max - fam.scale_min) * u[0]) * jnp.concatenate(
            [jnp.ones(1), fam.noise_eig_max * u[1:]]
        )
        xs = (g[d * d + d :].reshape(steps, d) * jnp.sqrt(eig)) @ q.T
        c = genome

        def body(carry, x):
            w, t = carry
            y = w @ x
            dw = (
                c[0] * y * x
                + c[1] * y * y * w
                + c[2] * x
                + c[3] * y
                + c[4] * w
                + c[5] * y * w
                + c[6]
                + c[7] * y * y
            )  # the default term library, by hand
            return (w + net.lr / (1.0 + net.lr_decay * t) * dw, t + 1), None

        (w, _), _ = jax.lax.scan(body, (net.w_init_norm * w0 / jnp.linalg.norm(w0), 0), xs)
        norm = jnp.linalg.norm(w)
        return 1.0 - jnp.abs(w @ q[:, 0]) / norm + fam.norm_penalty * (norm - 1.0) ** 2

    def fitness(genome, key):
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n))
        return jnp.mean(jax.vmap(lambda k: one(genome, k))(keys))

    return jax.jit(jax.vmap(fitness, in_axes=(0, None)))


class _Loop:
    """One generation per call, of the toolkit's fused step or of a minimal loop."""

    def __init__(self, exp: Experiment, fitness=None):
        self.exp, self.run_key, self.g = exp, jax.random.PRNGKey(0), 0
        self.state = exp.init_state(self.run_key)
        self.fused = fitness is None
        self.step = exp.generation_step() if self.fused else None
        self.fitness = fitness

    def __call__(self):
        if self.fused:
            self.state, m = self.step(self.state, self.run_key, self.g)
            jax.block_until_ready(m)
        else:
            es, p = self.exp.outer.strategy, self.exp.outer.es_params
            k_ask, k_eval, k_tell = generation_keys(self.run_key, self.g)
            pop, st = es.ask(k_ask, self.state, p)
            self.state, _ = es.tell(k_tell, pop, self.fitness(pop, k_eval), st, p)
            jax.block_until_ready(self.state)
        self.g += 1


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _step_memory(exp: Experiment) -> int | None:
    """Peak bytes of a generation's compiled pieces (ask, evaluate, tell), each counted as
    arguments + outputs + temporaries from XLA's memory analysis; the largest is the peak."""
    try:
        step = exp.generation_step()
        key = jax.random.PRNGKey(0)
        state = exp.init_state(key)
        work, asked = step.ask(state, key, 0)
        results = step.evaluate_all(work)
        lowered = (
            step.ask.lower(state, key, 0),
            step.evaluate.lower(work, 0),
            step.tell.lower(asked, work, results, key, 0),
        )
        peaks = []
        for low in lowered:
            m = low.compile().memory_analysis()
            peaks.append(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
        return int(max(peaks))
    except (AttributeError, NotImplementedError):  # a backend without memory analysis
        return None


def bench_config(
    name: str,
    reps: int,
    echo=print,
    population: int | None = None,
    shard_size: int | None = None,
) -> dict:
    """Time one config: the toolkit's generation against the minimal loop(s).

    Args:
      name: a key of :data:`BENCH_CONFIGS`.
      reps: timed generations (after one that compiles).
      echo: where to print.
      population: overrides the config's population size.
      shard_size: overrides ``evaluation.shard_size``; ``0`` evaluates the whole population
        as one batch (what a GPU wants).
    """
    raw = dict(BENCH_CONFIGS[name])
    if population:
        raw["strategy"] = raw["strategy"] | {"population_size": population}
    if shard_size is not None:
        raw["evaluation"] = raw["evaluation"] | {"shard_size": shard_size or None}
    exp = build(config.parse(raw))
    loops = {"toolkit": _Loop(exp), "minimal": _Loop(exp, _minimal_fitness(exp))}
    if name == "pca":
        loops["hand_written"] = _Loop(exp, _hand_written_pca_fitness(exp))
    compile_s = {k: _timed(loop) for k, loop in loops.items()}  # first call compiles
    times = {k: [] for k in loops}
    for _ in range(reps):  # interleaved, so every loop sees the same machine load
        for k, loop in loops.items():
            times[k].append(_timed(loop))
    med = {k: statistics.median(v) for k, v in times.items()}
    P, n = exp.config.strategy.population_size, exp.config.evaluation.instances
    synapses, steps = _synapses(exp), _steps(exp)
    result = {
        "config": name,
        "population": P,
        "synapses": synapses,
        "inner_steps": steps,
        "batch": P * n,
        "instances": n,
        "compile_s": compile_s["toolkit"],
        "gen_median_s": med["toolkit"],
        "gen_min_s": min(times["toolkit"]),
        "gen_max_s": max(times["toolkit"]),
        "minimal_median_s": med["minimal"],
        "overhead_ratio": med["toolkit"] / med["minimal"],
        "evals_per_s": P * n / med["toolkit"],
        "synapse_updates_per_s": P * n * synapses * steps / med["toolkit"],
        "step_memory_bytes": _step_memory(exp),
    }
    if "hand_written" in med:
        result["hand_written_median_s"] = med["hand_written"]
        result["overhead_ratio_hand_written"] = med["toolkit"] / med["hand_written"]
    return result


def stream_bandwidth(total_bytes: int) -> float:
    """Bytes/s of a streaming ``a*x + y`` whose three arrays hold ``total_bytes`` together.

    Sized like a kernel's working set, it measures the bandwidth of the memory level that
    holds that working set (a cache, or main memory).
    """
    n = max(int(total_bytes) // 12, 1024)
    x = jnp.ones((n,), jnp.float32)
    y = jnp.ones_like(x)
    axpy = jax.jit(lambda x, y: 1.0001 * x + y)
    jax.block_until_ready(axpy(x, y))
    reps = max(1, int(2e8 // (12 * n)))  # enough repetitions to time small arrays

    def many():
        out = y
        for _ in range(reps):
            out = axpy(x, out)
        jax.block_until_ready(out)

    t = min(_timed(many) for _ in range(5))
    return 3 * n * 4 * reps / t


def machine_limits(echo=print) -> dict:
    """Peak FLOP/s (a 2048^2 matmul) and bandwidth (a 256 MB streaming ``a*x + y``)."""
    n = 2048
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    mm = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(mm(a, a))
    t = min(_timed(lambda: jax.block_until_ready(mm(a, a))) for _ in range(5))
    flops = 2 * n**3 / t
    x = jnp.ones((64 * 1024 * 1024,), jnp.float32)
    y = jnp.ones_like(x)
    axpy = jax.jit(lambda x, y: 1.0001 * x + y)
    jax.block_until_ready(axpy(x, y))
    t = min(_timed(lambda: jax.block_until_ready(axpy(x, y))) for _ in range(5))
    bandwidth = 3 * x.size * 4 / t  # read x and y, write the result
    return {"matmul_flops_per_s": flops, "stream_bytes_per_s": bandwidth}


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache (Linux sysfs), or ``None`` if unknown."""
    from pathlib import Path

    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else None


def roofline(result: dict, limits: dict) -> dict:
    """Fraction of the relevant roofline reached by the Hebbian inner loop.

    FLOPs and bytes are counted by hand (see the constants at the top). Every inner step
    reads and writes the whole plastic state (weights and per-synapse coefficients of every
    member), so the loop is bandwidth-bound at the memory level that holds that working
    set: the relevant roof is ``min(compute peak, intensity * bandwidth)``, with the
    bandwidth of a streaming kernel of the same working-set size
    (``limits["working_set_bytes_per_s"]``; main-memory bandwidth is reported beside it).
    """
    achieved = result["synapse_updates_per_s"] * HEBB_FLOPS_PER_SYNAPSE_STEP
    per_step = hebb_bytes_per_synapse_step(result["instances"])
    intensity = HEBB_FLOPS_PER_SYNAPSE_STEP / per_step
    working_set = result["batch"] * result["synapses"] * per_step
    bandwidth = limits.get("working_set_bytes_per_s", limits["stream_bytes_per_s"])
    compute_roof = limits["matmul_flops_per_s"]
    relevant = min(compute_roof, intensity * bandwidth)
    cache = last_level_cache_bytes()
    return {
        "achieved_flops_per_s": achieved,
        "arithmetic_intensity": intensity,
        "working_set_bytes": working_set,
        "last_level_cache_bytes": cache,
        "working_set_bandwidth": bandwidth,
        "compute_fraction": achieved / compute_roof,
        "dram_roof_fraction": achieved / (intensity * limits["stream_bytes_per_s"]),
        "roofline_flops_per_s": relevant,
        "roofline_fraction": achieved / relevant,
        "bound": "bandwidth" if relevant < compute_roof else "compute",
    }


def compilation_cache(echo=print) -> dict:
    """Time to the first generation of `evoplastic run`, cold and then with a warm cache."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    config_path = Path(__file__).resolve().parents[1] / "experiments" / "oja.yaml"
    if not config_path.exists():
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, EVOPLASTIC_CACHE_DIR=str(Path(tmp) / "cache"))
        first = []
        for i in range(2):
            out = Path(tmp) / f"run{i}"
            cmd = [sys.executable, "-m", "evoplastic.cli", "run", str(config_path)]
            cmd += ["--out", str(out), "--quiet", "generations=2", "test.final_instances=2"]
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            line = (out / "metrics.jsonl").read_text().splitlines()[0]
            first.append(json.loads(line)["time_s"])
    echo(
        f"compilation cache: first generation {first[0]:.2f} s cold,"
        f" {first[1]:.2f} s on the second start ({first[0] / first[1]:.1f}x faster)"
    )
    return {"first_generation_cold_s": first[0], "first_generation_cached_s": first[1]}


def _fmt(r: dict) -> str:
    mem = r["step_memory_bytes"]
    text = (
        f"{r['config']:>9} pop {r['population']:>5}  gen {r['gen_median_s'] * 1e3:8.2f} ms"
        f" (min {r['gen_min_s'] * 1e3:.2f}, max {r['gen_max_s'] * 1e3:.2f})"
        f"  minimal {r['minimal_median_s'] * 1e3:8.2f} ms  ratio {r['overhead_ratio']:.3f}"
    )
    if "overhead_ratio_hand_written" in r:
        text += f" (hand-written {r['overhead_ratio_hand_written']:.3f})"
    text += (
        f"  compile {r['compile_s']:.1f} s  {r['evals_per_s']:,.0f} evals/s"
        f"  {r['synapse_updates_per_s']:.3g} syn-updates/s"
    )
    if mem is not None:
        text += f"  step memory {mem / 2**20:.1f} MiB"
    return text


MEMORY_LENGTHS = (100, 1000, 10000)


def meta_gradient_memory(steps: int, remat: str, dim: int = 8) -> dict:
    """XLA's memory analysis of the pca meta-gradient for an unroll of ``steps`` steps."""
    from ..meta.unroll import unroll_instance
    from ..rules import make as make_rule
    from ..tasks import make as make_task

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
    from ..meta.unroll import REMAT, nested_shape

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


# Large genomes: a per-synapse ABCD rule (5 numbers a synapse) on a 4-H-H-2 network, so
# that the genome holds about 1e5 (H = 138) and 1e6 (H = 444) numbers; short CartPole
# episodes keep the inner loop from hiding the strategy's own cost.
LARGE_HIDDEN = (138, 444)
LARGE_STRATEGIES = ("open_es", "snes")


# a member's plastic state per synapse: its weight and five ABCD coefficients (float32)
LARGE_BYTES_PER_SYNAPSE = 24
LARGE_SHARD_BYTES = 16 * 2**20


def large_shard_size(synapses: int, population: int) -> int:
    """Members per shard whose plastic state fits :data:`LARGE_SHARD_BYTES` (a power of
    two, at least 1): every inner step reads and writes a shard's whole state, which then
    stays in the last-level cache instead of streaming from main memory."""
    fit = max(1, LARGE_SHARD_BYTES // (synapses * LARGE_BYTES_PER_SYNAPSE))
    return min(population, 2 ** (int(fit).bit_length() - 1))


def large_config(hidden: int, strategy: str, population: int = 256, steps: int = 50) -> dict:
    """The config of one large-genome case (see :data:`LARGE_HIDDEN`)."""
    synapses = 4 * hidden + hidden * hidden + 2 * hidden
    return {
        "task": _CARTPOLE | {"max_steps": steps},
        "network": _LAYERED | {"hidden": [hidden, hidden]},
        "rule": {"name": "abcd", "per_synapse": True},
        "strategy": {"name": strategy, "population_size": population, "std_init": 0.1},
        "evaluation": {"instances": 1, "shard_size": large_shard_size(synapses, population)},
    }


def bench_large(
    reps: int = 3,
    echo=print,
    hidden=LARGE_HIDDEN,
    strategies=LARGE_STRATEGIES,
    population=256,
    steps: int = 50,
) -> list[dict]:
    """Time and memory per generation against genome size, for each diagonal strategy.

    Memory is XLA's estimate of the largest compiled piece (:func:`_step_memory`); the
    growth figures compare each size with the smallest.
    """
    rows = []
    for strategy in strategies:
        base = None
        for h in hidden:
            exp = build(config.parse(large_config(h, strategy, population, steps)))
            genome = int(sum(x.size for x in jax.tree.leaves(exp.genome_template)))
            loop = _Loop(exp)
            compile_s = _timed(loop)
            loop()  # state types settle
            wall, cpu = [], []
            for _ in range(reps):
                c0 = time.process_time()
                wall.append(_timed(loop))
                cpu.append(time.process_time() - c0)
            med, med_cpu = statistics.median(wall), statistics.median(cpu)
            mem = _step_memory(exp)
            r = {
                "strategy": strategy,
                "population": population,
                "hidden": h,
                "synapses": _synapses(exp),
                "genome": genome,
                "shard_size": exp.config.evaluation.shard_size,
                "gen_median_s": med,
                "gen_median_cpu_s": med_cpu,
                "compile_s": compile_s,
                "step_memory_bytes": mem,
            }
            base = base or r
            r["time_growth"] = med / base["gen_median_s"]
            r["cpu_time_growth"] = med_cpu / base["gen_median_cpu_s"]
            r["genome_growth"] = genome / base["genome"]
            if mem and base["step_memory_bytes"]:
                r["memory_growth"] = mem / base["step_memory_bytes"]
            rows.append(r)
            echo(
                f"large {strategy:>8} pop {population}  genome {genome:>9,}"
                f" ({r['synapses']:,} synapses, shards of {r['shard_size']})"
                f"  gen {med * 1e3:9.1f} ms (cpu {med_cpu * 1e3:.0f} ms)"
                f"  (x{r['time_growth']:.2f}, cpu x{r['cpu_time_growth']:.2f},"
                f" for x{r['genome_growth']:.2f} genome)"
                + (f"  step memory {mem / 2**20:.0f} MiB" if mem else "")
                + (f" (x{r['memory_growth']:.2f})" if "memory_growth" in r else "")
            )
    return rows


def run_only(
    names, population: int | None, shard_size: int | None, quick: bool = False, echo=print
) -> dict:
    """Time only the named configs, at one population size (e.g. a GPU-sized one).

    Prints each config's line (generation time, overhead against the minimal loop,
    evaluations/s and synapse updates/s); no roofline, scaling or cache sections.
    """
    unknown = [n for n in names if n not in BENCH_CONFIGS]
    if unknown:
        raise ValueError(
            f"bench --only: unknown config {unknown[0]!r}; choose from {', '.join(BENCH_CONFIGS)}"
        )
    reps = 5 if quick else 15
    device = jax.devices()[0]
    echo(f"evoplastic bench on {device.device_kind} ({jax.default_backend()}), {reps} generations")
    results = []
    for name in names:
        results.append(bench_config(name, reps, echo, population, shard_size))
        echo(_fmt(results[-1]))
    return {"device": str(device), "results": results}


def run_bench(quick: bool = False, echo=print, scaling: bool = True, memory: bool = False) -> dict:
    """Run the whole benchmark; results are printed through ``echo`` and returned.

    Args:
      quick: fewer repetitions of the generation timing.
      echo: where to print.
      scaling: also time populations 64, 256 and 1024.
      memory: also measure the meta-gradient's memory against unroll length
        (:func:`bench_memory`; compiles 9 gradients, about a minute on 2 cores).
    """
    reps = 5 if quick else 15
    device = jax.devices()[0]
    echo(f"evoplastic bench on {device.device_kind} ({jax.default_backend()}), {reps} generations")
    limits = machine_limits()
    echo(
        f"machine: matmul {limits['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s,"
        f" stream {limits['stream_bytes_per_s'] / 1e9:.1f} GB/s"
    )
    results = []
    for name in BENCH_CONFIGS:
        results.append(bench_config(name, reps, echo))
        echo(_fmt(results[-1]))
    hebb = next(r for r in results if r["config"] == "hebbian")
    per_step = hebb_bytes_per_synapse_step(hebb["instances"])
    working_set = hebb["batch"] * hebb["synapses"] * per_step
    limits["working_set_bytes_per_s"] = stream_bandwidth(working_set)
    roof = roofline(hebb, limits)
    echo(
        f"hebbian inner loop: {roof['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s (FLOPs and bytes"
        f" counted by hand), intensity {roof['arithmetic_intensity']:.2f} FLOP/byte, working set"
        f" {roof['working_set_bytes'] / 2**20:.1f} MiB streamed at"
        f" {roof['working_set_bandwidth'] / 1e9:.1f} GB/s -> {roof['bound']} roof"
        f" {roof['roofline_flops_per_s'] / 1e9:.1f} GFLOP/s: {100 * roof['roofline_fraction']:.1f}%"
        f" (of compute peak {100 * roof['compute_fraction']:.1f}%)"
    )
    out = {"device": str(device), "machine": limits, "results": results, "roofline": roof}
    out["compilation_cache"] = compilation_cache(echo)
    if scaling:
        rows = []
        for name in ("pca", "hebbian"):
            times = {}
            for pop in (64, 256, 1024):
                r = bench_config(name, max(5, reps // 2), echo, population=pop)
                times[pop] = r["gen_median_s"]
                rows.append(r)
            echo(
                f"scaling {name:>8}: "
                + "  ".join(f"pop {p}: {t * 1e3:.1f} ms" for p, t in times.items())
                + f"  (256 -> 1024: {times[1024] / times[256]:.2f}x)"
            )
        out["scaling"] = rows
    if memory:
        out["memory"] = bench_memory(echo=echo)
    return out


__all__ = ["BENCH_CONFIGS", "bench_config", "machine_limits", "roofline", "run_bench", "run_only"]
