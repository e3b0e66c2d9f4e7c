"""``evoplastic bench --peers``: the toolkit against EvoJAX and a hand-written JAX loop.

Every setup is one generation of OpenAI-ES (antithetic, Adam with learning rate 0.03,
``std`` 0.1, centered ranks) on gymnax ``CartPole-v1``, full 500-step episodes, with a
``tanh`` network of the given sizes, timed three ways, interleaved so that every side sees
the same machine load:

* **toolkit**: :meth:`Experiment.generation_step` of the config :func:`toolkit_config`
  builds (rule ``static``: the genome is the weights; rule ``abcd``: per-synapse Hebbian
  coefficients on weights that start random at every episode);
* **EvoJAX** 0.2.17, as its users write it: ``SimManager`` rolling out a ``PolicyNetwork``
  (``MLPPolicy`` for static networks; for plastic ones a ``PolicyNetwork`` whose policy
  state carries the weights, the way EvoJAX holds recurrent state) on gymnax CartPole
  wrapped as a ``VectorizedTask``, with an ``OpenES`` ``NEAlgorithm`` (ask, evaluate,
  tell: the loop of EvoJAX's ``Trainer``);
* **expert**: the loop a JAX expert writes by hand: a flat genome, one ``jax.jit`` of the
  whole generation (evosax ask, ``vmap`` of a ``lax.scan`` episode, evosax tell), a static
  network's weights closed over by the scan (never carried), nothing drawn that is not
  used. It draws its episodes from the same keys as the toolkit, so from the same genome
  it computes the same fitness (tests/test_peers.py checks it).

**The EvoJAX shim.** EvoJAX 0.2.17's ``OpenES`` wraps the evosax API before 0.3
(``evosax.OpenES(popsize=..., num_dims=...)``), which our evosax (0.3) no longer has, so
importing ``evojax.algo.OpenES`` works but constructing it fails. :class:`EvoJAXOpenES`
is that class ported to evosax 0.3 line for line (jitted evosax ``ask``/``tell``, a fresh
key split per call, centered-rank fitness shaping, maximization); EvoJAX's policy, task
interface and ``SimManager`` are used unchanged.

Differences that remain: EvoJAX's ``MLPPolicy`` has biases (the toolkit's networks have
none), so its genome is slightly larger; the toolkit also sanitizes non-finite losses and
computes a generation's metrics.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import config
from ..experiment import build
from ..meta.base import generation_keys
from ..tasks.base import split_key

STEPS = 500
STD = 0.1
LEARNING_RATE = 0.03


@dataclasses.dataclass(frozen=True)
class Setup:
    """One workload: rule ``static`` or ``abcd`` (per synapse), hidden widths, population,
    episodes per member."""

    rule: str
    hidden: tuple[int, ...]
    population: int
    episodes: int

    @property
    def name(self) -> str:
        net = "-".join(str(n) for n in (4, *self.hidden, 2))
        kind = "static" if self.rule == "static" else "plastic"
        return f"{kind} {net} {self.population}x{self.episodes}"

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        sizes = (4, *self.hidden, 2)
        return tuple((o, i) for i, o in zip(sizes[:-1], sizes[1:], strict=True))


# static and plastic networks, small and large, 256 members x 4 episodes and 1024 x 1
# (the same 1024 episodes per generation, shared four ways or not at all)
SETUPS = tuple(
    Setup(rule, hidden, pop, episodes)
    for rule in ("static", "abcd")
    for hidden in ((16,), (64, 64))
    for pop, episodes in ((256, 4), (1024, 1))
)


def toolkit_config(setup: Setup) -> dict:
    """The toolkit's config of a setup (as a user would write it in YAML)."""
    rule = {"name": "static", "init_scale": 0.5}
    if setup.rule == "abcd":
        rule = {"name": "abcd", "per_synapse": True, "init_scale": 0.1}
    return {
        "task": {"name": "control", "env": "CartPole-v1", "max_steps": STEPS},
        "network": {
            "hidden": list(setup.hidden),
            "activation": "tanh",
            "output_activation": "tanh",
            "lr": 1.0,
            "lr_decay": 0.0,
        },
        "rule": rule,
        "strategy": {
            "name": "open_es",
            "population_size": setup.population,
            "std_init": STD,
            "optimizer": {"name": "adam", "learning_rate": LEARNING_RATE},
        },
        "evaluation": {"instances": setup.episodes, "common_instances": True},
    }


# -- the expert's hand-written loop ---------------------------------------------------------


def _cartpole():
    import gymnax

    return gymnax.make("CartPole-v1")


def expert_fitness(setup: Setup) -> Callable:
    """``fitness(population [P, D], eval_key) -> loss [P]``, written directly in jnp.

    The flat genome of a member holds, layer by layer, the weights (``static``) or the
    coefficients ``A, B, C, D, eta`` of every synapse (``abcd``), in the order
    ``jax.flatten_util.ravel_pytree`` gives the toolkit's genome. Episode ``j`` comes from
    ``fold_in(eval_key, j)``, as in the toolkit, and every member plays the same episodes.
    """
    env, params = _cartpole()
    shapes, plastic = setup.shapes, setup.rule == "abcd"
    sizes = [o * i for o, i in shapes]
    per_layer = [5 * s for s in sizes] if plastic else sizes
    bounds = np.cumsum([0, *per_layer])

    def unflatten(flat):
        parts = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if plastic:  # per layer: A, B, C, D, eta, each [o, i]
            return [p.reshape(5, *s) for p, s in zip(parts, shapes, strict=True)]
        return [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]

    def forward(ws, obs):
        acts = [obs]
        for w in ws:
            acts.append(jnp.tanh(w @ acts[-1]))
        return acts

    def episode(layers, key):
        reset_key, weight_key, step_key = jax.random.split(split_key(key, "train"), 3)
        obs, env_state = env.reset_env(reset_key, params)
        if plastic:
            ws0 = []
            for layer, (o, i) in enumerate(shapes):
                k_w, _ = jax.random.split(jax.random.fold_in(weight_key, layer))
                ws0.append(jax.random.normal(k_w, (o, i)) / jnp.sqrt(i))
        else:
            ws0 = []

        def body(carry, t):
            ws, env_state, obs, done, ret = carry
            acts = forward(ws if plastic else layers, obs)
            obs, env_state, reward, finished, _ = env.step_env(
                jax.random.fold_in(step_key, t), env_state, jnp.argmax(acts[-1]), params
            )
            if plastic:
                new = []
                for w, c, pre, post in zip(ws, layers, acts[:-1], acts[1:], strict=True):
                    a, b, cc, d, eta = c
                    hebb = a * post[:, None] * pre[None, :] + b * pre[None, :]
                    new.append(w + eta * (hebb + cc * post[:, None] + d))
                ws = new
            ret = ret + jnp.where(done, 0.0, reward)
            return (ws, env_state, obs, done | finished, ret), None

        init = (ws0, env_state, obs, jnp.array(False), jnp.zeros(()))
        (_, _, _, _, ret), _ = jax.lax.scan(body, init, jnp.arange(STEPS))
        return ret

    def member(flat, eval_key):
        layers = unflatten(flat)
        keys = jax.vmap(lambda j: jax.random.fold_in(eval_key, j))(jnp.arange(setup.episodes))
        return -jnp.mean(jax.vmap(lambda k: episode(layers, k))(keys))

    return jax.vmap(member, in_axes=(0, None))


def expert_strategy(setup: Setup, dims: int):
    from evosax.algorithms import Open_ES

    es = Open_ES(
        population_size=setup.population,
        solution=jnp.zeros(dims),
        optimizer=optax.adam(LEARNING_RATE),
        std_schedule=optax.constant_schedule(STD),
    )
    return es, es.default_params


class ExpertLoop:
    """One jitted generation: ask, evaluate, tell (state donated)."""

    def __init__(self, setup: Setup, mean: jax.Array, run_key: jax.Array):
        es, es_params = expert_strategy(setup, mean.size)
        fitness = expert_fitness(setup)

        def generation(state, g):
            k_ask, k_eval, k_tell = generation_keys(run_key, g)
            pop, state = es.ask(k_ask, state, es_params)
            loss = fitness(pop, k_eval)
            state, _ = es.tell(k_tell, pop, loss, state, es_params)
            return state, loss

        self.step = jax.jit(generation, donate_argnums=0)
        self.state = es.init(jax.random.PRNGKey(1), mean, es_params)
        self.g = 0

    def __call__(self):
        self.state, loss = self.step(self.state, self.g)
        jax.block_until_ready(loss)
        self.g += 1
        return loss


# -- EvoJAX ---------------------------------------------------------------------------------


class EvoJAXMissing(RuntimeError):
    """EvoJAX is not installed (``pip install evoplastic[peers]``)."""


def _evojax():
    try:
        import evojax  # noqa: F401
        from evojax.algo.base import NEAlgorithm
        from evojax.policy import MLPPolicy
        from evojax.policy.base import PolicyNetwork, PolicyState
        from evojax.sim_mgr import SimManager
        from evojax.task.base import TaskState, VectorizedTask
    except ImportError as err:
        raise EvoJAXMissing(
            f"bench --peers needs EvoJAX ({err}); install it with `pip install evoplastic[peers]`"
        ) from None
    return NEAlgorithm, MLPPolicy, PolicyNetwork, PolicyState, SimManager, TaskState, VectorizedTask


def evojax_pieces(setup: Setup, seed: int = 0):
    """``(solver, sim_manager)`` of a setup, built with EvoJAX's own classes."""
    import logging

    from flax import struct

    NEAlgorithm, MLPPolicy, PolicyNetwork, PolicyState, SimManager, TaskState, VectorizedTask = (
        _evojax()
    )
    env, env_params = _cartpole()
    quiet = logging.getLogger("evoplastic.peers")
    quiet.setLevel(logging.WARNING)

    @struct.dataclass
    class CartPoleState(TaskState):
        obs: jax.Array
        env_state: object
        key: jax.Array

    class GymnaxCartPole(VectorizedTask):
        """gymnax CartPole-v1 as an EvoJAX task (as EvoJAX's own tasks are written)."""

        def __init__(self, test: bool = False):
            self.max_steps, self.obs_shape, self.act_shape, self.test = STEPS, (4,), (2,), test

            def reset_fn(key):
                k_reset, k_next = jax.random.split(key)
                obs, state = env.reset_env(k_reset, env_params)
                return CartPoleState(obs=obs, env_state=state, key=k_next)

            def step_fn(state, action):
                k_next, k_step = jax.random.split(state.key)
                obs, env_state, reward, done, _ = env.step_env(
                    k_step, state.env_state, jnp.argmax(action), env_params
                )
                new = CartPoleState(obs=obs, env_state=env_state, key=k_next)
                return new, reward, done.astype(jnp.int32)

            self._reset_fn = jax.jit(jax.vmap(reset_fn))
            self._step_fn = jax.jit(jax.vmap(step_fn))

        def reset(self, key):
            return self._reset_fn(key)

        def step(self, state, action):
            return self._step_fn(state, action)

    @struct.dataclass
    class HebbianState(PolicyState):
        ws: tuple

    class HebbianPolicy(PolicyNetwork):
        """Per-synapse ABCD plasticity, the weights carried in the policy state (random at
        every episode), as an EvoJAX user writes a plastic policy."""

        def __init__(self, shapes):
            self.shapes = shapes
            self.num_params = 5 * sum(o * i for o, i in shapes)
            bounds = np.cumsum([0, *(5 * o * i for o, i in shapes)])
            self._bounds = list(zip(bounds[:-1], bounds[1:], strict=True))

        def reset(self, states):
            keys = jax.vmap(lambda k: jax.random.fold_in(k, 7))(states.key)

            def draw(key):
                return tuple(
                    jax.random.normal(jax.random.fold_in(key, n), s) / jnp.sqrt(s[1])
                    for n, s in enumerate(self.shapes)
                )

            return HebbianState(keys=keys, ws=jax.vmap(draw)(keys))

        def get_actions(self, t_states, params, p_states):
            def one(flat, obs, ws):
                acts, new = [obs], []
                for w in ws:
                    acts.append(jnp.tanh(w @ acts[-1]))
                for (a0, a1), s, w, pre, post in zip(
                    self._bounds, self.shapes, ws, acts[:-1], acts[1:], strict=True
                ):
                    a, b, c, d, eta = flat[a0:a1].reshape(5, *s)
                    hebb = a * post[:, None] * pre[None, :] + b * pre[None, :]
                    new.append(w + eta * (hebb + c * post[:, None] + d))
                return acts[-1], tuple(new)

            actions, ws = jax.vmap(one)(params, t_states.obs, p_states.ws)
            return actions, p_states.replace(ws=ws)

    class EvoJAXOpenES(NEAlgorithm):
        """EvoJAX 0.2.17's ``OpenES``, ported to evosax 0.3 (see the module docstring)."""

        def __init__(self, param_size: int, pop_size: int, seed: int = 0):
            from evosax.algorithms import Open_ES
            from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn

            self.param_size, self.pop_size = param_size, pop_size
            self.rand_key = jax.random.PRNGKey(seed)
            self.es = Open_ES(
                population_size=pop_size,
                solution=jnp.zeros(param_size),
                optimizer=optax.adam(LEARNING_RATE),
                std_schedule=optax.constant_schedule(STD),
                # EvoJAX shapes fitness itself (centered ranks, maximized); evosax must not
                fitness_shaping_fn=lambda population, fitness, state, params: fitness,
            )
            self.es_params = self.es.default_params
            self.rand_key, init_key = jax.random.split(self.rand_key)
            self.es_state = self.es.init(init_key, jnp.zeros(param_size), self.es_params)
            self._shape = jax.jit(
                lambda pop, fit: centered_rank_fitness_shaping_fn(pop, -fit, None, None)
            )

        def ask(self):
            self.rand_key, ask_key = jax.random.split(self.rand_key)
            self.params, self.es_state = self.es.ask(ask_key, self.es_state, self.es_params)
            return self.params

        def tell(self, fitness):
            self.rand_key, tell_key = jax.random.split(self.rand_key)
            shaped = self._shape(self.params, fitness)
            self.es_state, _ = self.es.tell(
                tell_key, self.params, shaped, self.es_state, self.es_params
            )

        @property
        def best_params(self):
            return jnp.array(self.es_state.mean, copy=True)

    if setup.rule == "static":
        policy = MLPPolicy(4, list(setup.hidden), 2, "tanh", logger=quiet)
    else:
        policy = HebbianPolicy(setup.shapes)
    solver = EvoJAXOpenES(policy.num_params, setup.population, seed)
    sim = SimManager(
        n_repeats=setup.episodes,
        test_n_repeats=1,
        pop_size=setup.population,
        n_evaluations=1,
        policy_net=policy,
        train_vec_task=GymnaxCartPole(),
        valid_vec_task=GymnaxCartPole(test=True),
        seed=seed,
        logger=quiet,
    )
    return solver, sim


class EvoJAXLoop:
    """One generation of EvoJAX's ``Trainer`` loop: ask, ``SimManager.eval_params``, tell."""

    def __init__(self, setup: Setup):
        self.solver, self.sim = evojax_pieces(setup)

    def __call__(self):
        params = self.solver.ask()
        scores, _ = self.sim.eval_params(params=params, test=False)
        self.solver.tell(fitness=scores)
        jax.block_until_ready(self.solver.es_state)
        return scores


class ToolkitLoop:
    """One generation of the toolkit's compiled step."""

    def __init__(self, setup: Setup):
        self.exp = build(config.parse(toolkit_config(setup)))
        self.step = self.exp.generation_step()
        self.run_key = jax.random.PRNGKey(0)
        self.state = self.exp.init_state(self.run_key)
        self.g = 0

    def __call__(self):
        self.state, m = self.step(self.state, self.run_key, self.g)
        jax.block_until_ready(m)
        self.g += 1
        return m


def _timed(fn) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one call; the process's CPU time is less disturbed than
    wall time by other jobs on a shared machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_setup(setup: Setup, reps: int, sides=("toolkit", "evojax", "expert")) -> dict:
    """Median wall and CPU seconds per generation of each side, timed interleaved (the
    order rotating every repetition), compile excluded."""
    loops = {}
    for side in sides:
        if side == "toolkit":
            loops[side] = ToolkitLoop(setup)
        elif side == "evojax":
            loops[side] = EvoJAXLoop(setup)
        else:
            tk = loops.get("toolkit") or ToolkitLoop(setup)
            mean = jax.flatten_util.ravel_pytree(tk.exp.genome_template)[0]
            loops[side] = ExpertLoop(setup, jnp.zeros_like(mean), jax.random.PRNGKey(0))
    compile_s = {k: _timed(loop)[0] for k, loop in loops.items()}
    for loop in loops.values():  # a second call: state types settle (e.g. weak -> strong)
        loop()
    wall, cpu = {k: [] for k in loops}, {k: [] for k in loops}
    names = list(loops)
    for rep in range(reps):  # interleaved: every side sees the same load
        for k in names[rep % len(names) :] + names[: rep % len(names)]:
            w, c = _timed(loops[k])
            wall[k].append(w)
            cpu[k].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    out = {
        "setup": setup.name,
        "compile_s": compile_s,
        "times_s": wall,
        "cpu_times_s": cpu,
        "median_s": med,
        "median_cpu_s": med_cpu,
    }
    if "toolkit" in med:
        for k in med:
            if k != "toolkit":
                out[f"toolkit/{k}"] = med["toolkit"] / med[k]
                out[f"toolkit/{k} cpu"] = med_cpu["toolkit"] / med_cpu[k]
    return out


def _fmt(r: dict) -> str:
    med = r["median_s"]
    text = f"{r['setup']:>26}  " + "  ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in med.items())
    for k in ("evojax", "expert"):
        if f"toolkit/{k}" in r:
            text += f"  toolkit/{k} {r[f'toolkit/{k}']:.2f} (cpu {r[f'toolkit/{k} cpu']:.2f})"
    return text


def run_peers(quick: bool = False, echo=print, setups=SETUPS) -> dict:
    """Every setup, the three sides interleaved; prints a line per setup with the ratios."""
    _evojax()  # fail before anything runs
    reps = 3 if quick else 7
    device = jax.devices()[0]
    echo(
        f"evoplastic bench --peers on {device.device_kind} ({jax.default_backend()}),"
        f" {reps} generations per side, interleaved; CartPole-v1, {STEPS} steps, OpenAI-ES;"
        " medians of wall time (and of the process's CPU time)"
    )
    rows = []
    for setup in setups:
        rows.append(bench_setup(setup, reps))
        echo(_fmt(rows[-1]))
    for k in ("evojax", "expert"):
        worst = max(rows, key=lambda r: r[f"toolkit/{k}"])
        echo(f"worst toolkit/{k}: {worst[f'toolkit/{k}']:.2f} ({worst['setup']})")
    return {"device": str(device), "reps": reps, "setups": rows}


__all__ = [
    "SETUPS",
    "EvoJAXLoop",
    "EvoJAXMissing",
    "ExpertLoop",
    "Setup",
    "ToolkitLoop",
    "bench_setup",
    "expert_fitness",
    "run_peers",
    "toolkit_config",
]
