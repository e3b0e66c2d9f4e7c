"""The Ray backend: the same generation, its shards evaluated by Ray actors.

Any outer loop runs here (:class:`~evoplastic.meta.base.OuterLoop`): an evolution
strategy's shards are groups of members, the meta-gradient's are groups of task instances
(data-parallel: each actor returns its shard's loss and gradient sums, the driver adds
them in shard order and takes the optimizer step), and a truncated estimator's shards
carry their members' network states in the work, so a lost shard is simply run again.

One actor per GPU (``num_gpus`` per actor) on a cluster with GPUs, one per CPU otherwise.
Each actor builds the run's :class:`~evoplastic.backends.local.GenerationStep` once and
compiles it in its constructor, with JAX's persistent compilation cache, so that an actor
restarted after a crash loads its executables instead of compiling them.

Per generation the driver ``ray.put`` s the meta-state once; each shard task carries
only a reference to it, the run key, the generation and the shard index. An actor
re-derives the work with the same ``ask`` (Salimans et al. 2017, "Evolution Strategies as
a Scalable Alternative to Reinforcement Learning": ship seeds, not parameters), evaluates
its shard and returns only its result (an ES: fitness values), so the bytes per ES
generation do not grow with population x genome size. There are more shards than actors;
each actor holds at most ``IN_FLIGHT`` of them, and finished shards are collected with
``ray.wait``, so a slow actor takes fewer shards instead of holding everyone up.

An actor that dies mid-generation loses its shards to the queue; they run on the next
free actor, and the dead one rejoins once Ray has restarted it (``max_restarts``). Shards
are pure functions of (state, key, generation, index), so the generation's result does not
change. The driver never waits unboundedly: it polls every ``POLL_S`` seconds, and when
nothing has come back it asks Ray which nodes are alive, so the actors of a node that is
gone (its raylet killed, its machine lost) are noticed within seconds, their shards re-run
elsewhere, and the loss is reported. An actor that stays unreachable for ``lost_timeout_s``
is given up. Where the number of actors is not fixed (``ray.workers`` unset), resources that
appear (a node that joins) get new actors at the next generation. When no actor is left,
:class:`~evoplastic.backends.errors.WorkersLost` is raised (the run saves a checkpoint and
stops with one line).

Ray is imported here and in :mod:`evoplastic.jobs` only.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import socket
import time
import warnings
from urllib.parse import urlparse

import jax
import numpy as np

from .errors import BackendError, WorkersLost
from .sharded import Pieces, ShardEvaluator, sharded_step

IN_FLIGHT = 2  # shards queued on one actor at a time
POLL_S = 1.0  # longest wait for a shard before the driver checks the actors' nodes


class WorkerStartFailed(BackendError):
    """A Ray worker raised or was lost while starting (tried twice before it is raised)."""


class Worker:
    """A Ray actor's body: one experiment's compiled ask and shard evaluation."""

    def __init__(self, factory, shared, cache_dir: str | None):
        if cache_dir:  # this process is ours: configure JAX's persistent cache for it
            jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        self.evaluator = ShardEvaluator(factory(shared))
        t0 = time.perf_counter()
        self.evaluator.warm_up()
        self.warm_up_s = time.perf_counter() - t0

    def ready(self) -> dict:
        import ray

        return {
            "pid": os.getpid(),
            "warm_up_s": self.warm_up_s,
            "device": str(jax.devices()[0]),
            "node": ray.get_runtime_context().get_node_id(),
        }

    def evaluate(self, payload, generation, shard, token):
        state, run_key = payload  # one object per generation, shared by its shards
        return self.evaluator.evaluate(state, run_key, generation, shard, token)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise :class:`BackendError` unless ``host:port`` of ``address`` accepts connections."""
    if address in ("auto", "local"):
        return
    url = urlparse(address if "://" in address else f"tcp://{address}")
    port = url.port or (10001 if url.scheme == "ray" else 6379)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", port), timeout=timeout):
            pass
    except OSError as err:
        raise BackendError(
            f"cannot reach the Ray cluster at {address!r}: {err.strerror or err}"
        ) from None


@contextlib.contextmanager
def connect(address: str | None):
    """Use the running Ray instance, connect to ``address``, or start a local one.

    Only what this function started or connected is shut down on exit.
    """
    try:
        import ray
    except ImportError:
        raise BackendError(
            "backend: ray needs Ray, which is not installed (pip install 'ray[default]')"
        ) from None

    # Ray starts its processes with fork + exec, which is safe; JAX warns at every fork of a
    # process it runs in, which would print a misleading line before each run's output
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    # a new local instance turns token authentication on and logs that it did: not news here
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set for a Ray job's driver
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError) as err:
            raise BackendError(f"cannot connect to the Ray cluster at {address!r}: {err}") from None
    else:
        ray.init(
            address="local",  # a new instance, even where another runs on this machine
            num_cpus=os.cpu_count(),
            _node_ip_address="127.0.0.1",  # the embedded instance stays on this machine
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def actor_resources(ray, workers: int | None, gpus_per_worker: float | None) -> dict:
    """``{"workers", "num_cpus", "num_gpus"}`` for the cluster, or :class:`BackendError`."""
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus else 0.0
    if gpus_per_worker > 0 and not gpus:
        raise BackendError(
            f"{gpus_per_worker:g} GPU(s) per worker were asked for, but the Ray cluster has"
            f" no GPUs ({cpus:g} CPUs); use gpus_per_worker 0 for CPU workers"
        )
    if workers is None:
        workers = int(gpus // gpus_per_worker) if gpus_per_worker else int(cpus)
    if gpus_per_worker and workers * gpus_per_worker > gpus:
        raise BackendError(
            f"{workers} workers x {gpus_per_worker:g} GPU(s) were asked for, but the Ray"
            f" cluster has {gpus:g} GPU(s)"
        )
    return {"workers": max(workers, 1), "num_cpus": 1, "num_gpus": gpus_per_worker}


class RayStep:
    """``step(state, run_key, generation) -> (state, metrics)`` evaluated by Ray actors.

    Use :func:`open_step` rather than this class directly. ``stats`` holds, per
    generation, the bytes sent (``bytes``) and the seconds spent in dispatch and gathering
    (``dispatch_s``); ``restarts`` counts the shards that were re-run after an actor died.
    """

    def __init__(
        self,
        ray,
        pieces: Pieces,
        factory,
        shared,
        resources: dict,
        max_restarts: int = 3,
        startup_timeout_s: float = 300.0,
        compilation_cache: str | None = None,
        grow: bool = False,
        warn=None,
        lost_timeout_s: float = 60.0,
    ):
        self.ray = ray
        self.grow = grow
        self.warn = warn or (lambda message: None)
        self.lost_timeout_s = lost_timeout_s
        self.pieces = pieces
        self.shards = pieces.step.shards
        res = resources
        # large task data: put once, not per actor or shard; kept referenced here, since a
        # restarted actor is constructed again from it
        self._shared_ref = shared_ref = None if shared is None else ray.put(shared)
        actor_cls = ray.remote(Worker).options(
            num_cpus=res["num_cpus"],
            num_gpus=res["num_gpus"],
            max_restarts=max_restarts,
            max_task_retries=0,  # lost shards are re-queued here, on any live actor
        )

        self._res = res
        self._new_actor = lambda: actor_cls.remote(factory, shared_ref, compilation_cache or None)

        def start():
            return [self._new_actor() for _ in range(res["workers"])]

        self.actors = start()
        try:
            self.info = self._wait_ready(startup_timeout_s)
        except WorkerStartFailed:  # e.g. a worker process lost while starting: once more
            self.actors = start()
            self.info = self._wait_ready(startup_timeout_s)
        self.nodes = [info.get("node") for info in self.info]  # each actor's Ray node
        self.dead: set[int] = set()  # actors given up for good
        self.lost: dict[int, float] = {}  # actor -> when it was lost (waiting for a restart)
        self.probes: dict = {}  # ref of a readiness probe -> actor (restarted or joining)
        self.joining: dict[int, float] = {}  # actor started on resources that appeared -> when
        self.startup_timeout_s = startup_timeout_s
        self.stats: list[dict] = []
        self.restarts = 0
        self._step = sharded_step(pieces.step, self._evaluate_shards)

    def _wait_ready(self, timeout: float) -> list[dict]:
        ray = self.ray
        refs = [a.ready.remote() for a in self.actors]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            for a in self.actors:
                ray.kill(a)
            raise BackendError(
                f"only {len(done)} of {len(refs)} Ray workers started within {timeout:g} s"
                f" (cluster resources: {ray.cluster_resources()}); ask for fewer workers"
            )
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as err:
            for a in self.actors:
                ray.kill(a)
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise WorkerStartFailed(f"a Ray worker failed to start: {last}") from None

    def __call__(self, state, run_key, generation):
        return self._step(state, run_key, generation)

    def _live(self) -> list[int]:
        return [
            i
            for i in range(len(self.actors))
            if i not in self.dead and i not in self.lost and i not in self.joining
        ]

    def _grow(self) -> None:
        """Start actors on resources that are free (a node that joined): they take shards
        once warm."""
        if not self.grow or self.lost or self.joining:
            return
        free = self.ray.available_resources()
        cpus, gpus = self._res["num_cpus"], self._res["num_gpus"]
        room = int(free.get("CPU", 0.0) // cpus) if cpus else 0
        if gpus:
            room = min(room, int(free.get("GPU", 0.0) // gpus))
        for _ in range(room):
            i = len(self.actors)
            self.actors.append(self._new_actor())
            self.nodes.append(None)
            self.joining[i] = time.monotonic()
            self.probes[self.actors[i].ready.remote()] = i
        if room:
            self.warn(f"Ray resources for {room} more worker(s) appeared; starting them")

    def _lose(self, i: int, why: str, pending: dict, queue, load: dict) -> None:
        """Actor ``i`` is gone: its shards go back to the queue."""
        for ref, (shard, j) in list(pending.items()):
            if j == i:
                del pending[ref]
                queue.appendleft(shard)
                self.restarts += 1
        load.pop(i, None)
        self.dead.add(i)
        self.lost.pop(i, None)
        self.joining.pop(i, None)
        for ref, j in list(self.probes.items()):
            if j == i:
                del self.probes[ref]
        with contextlib.suppress(Exception):
            self.ray.kill(self.actors[i], no_restart=True)

    def _check_nodes(self, generation, pending: dict, queue, load: dict) -> None:
        """Give up the actors of nodes that are gone, and those lost for too long."""
        try:
            alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
        except Exception:  # the GCS itself is unreachable: nothing to learn now
            return
        gone = [
            i
            for i in range(len(self.actors))
            if i not in self.dead and self.nodes[i] is not None and self.nodes[i] not in alive
        ]
        for node in sorted({self.nodes[i] for i in gone}):
            on_node = [i for i in gone if self.nodes[i] == node]
            for i in on_node:
                self._lose(i, "node", pending, queue, load)
            self.warn(
                f"Ray node {node[:12]} lost during generation {generation}: worker(s)"
                f" {', '.join(map(str, on_node))} gone, their shards re-run;"
                f" {len(self._live())} worker(s) left"
            )
        now = time.monotonic()
        for i, since in list(self.lost.items()):
            if now - since > self.lost_timeout_s:
                self._lose(i, "timeout", pending, queue, load)
                self.warn(
                    f"Ray worker {i} did not come back within {self.lost_timeout_s:g} s;"
                    f" given up ({len(self._live())} worker(s) left)"
                )
        for i, since in list(self.joining.items()):
            if now - since > self.startup_timeout_s:
                self._lose(i, "timeout", pending, queue, load)
                self.warn(f"a new Ray worker did not start within {self.startup_timeout_s:g} s")

    def _evaluate_shards(self, state, run_key, generation) -> list:
        ray = self.ray
        t0 = time.perf_counter()
        self._grow()
        payload = (jax.device_get(state), np.asarray(run_key))
        state_ref = ray.put(payload)
        token = state_ref.hex()
        sent = len(pickle.dumps(payload, protocol=5))
        queue = collections.deque(range(self.shards))
        load = dict.fromkeys(self._live(), 0)  # shards in flight per live actor
        pending: dict = {}  # ref -> (shard, actor index)
        results: dict[int, object] = {}
        received = 0
        checked = time.monotonic()
        while len(results) < self.shards:
            for i in sorted(load, key=load.get):
                while queue and load[i] < IN_FLIGHT:
                    shard = queue.popleft()
                    args = (int(generation), shard, token)
                    ref = self.actors[i].evaluate.remote(state_ref, *args)
                    sent += len(pickle.dumps(args)) + 28  # + the object reference's id
                    pending[ref] = (shard, i)
                    load[i] += 1
            if not pending and not self.probes:
                raise WorkersLost(
                    f"no Ray worker left during generation {generation}: all"
                    f" {len(self.actors)} are gone (killed, crashed or their node lost, and"
                    " restarts exhausted)"
                )
            ready, _ = ray.wait(list(pending) + list(self.probes), num_returns=1, timeout=POLL_S)
            if not ready or time.monotonic() - checked > POLL_S:
                # nothing back for POLL_S, or POLL_S since the last look: are the actors'
                # nodes still there?
                self._check_nodes(generation, pending, queue, load)
                checked = time.monotonic()
            if not ready:
                continue
            ref = ready[0]
            if ref not in pending and ref not in self.probes:
                continue  # its actor was given up just now, its shard queued again
            if ref in self.probes:
                i = self.probes.pop(ref)
                try:
                    info = ray.get(ref)
                except ray.exceptions.ActorUnavailableError:
                    self.probes[self.actors[i].ready.remote()] = i
                    continue
                except ray.exceptions.RayActorError:
                    self._lose(i, "dead", pending, queue, load)  # dead for good
                    continue
                self.nodes[i] = info.get("node")
                self.lost.pop(i, None)
                self.joining.pop(i, None)
                load[i] = 0  # restarted (or new) and warm
                continue
            shard, i = pending.pop(ref)
            try:
                values = ray.get(ref)
            except ray.exceptions.RayActorError:
                queue.appendleft(shard)
                self.restarts += 1
                if i in load:  # first lost shard of this actor: probe its restart
                    del load[i]
                    self.lost[i] = time.monotonic()
                    self.probes[self.actors[i].ready.remote()] = i
                    node = (self.nodes[i] or "?")[:12]
                    self.warn(
                        f"Ray worker {i} (node {node}) lost during generation {generation}; its"
                        f" shards re-run on the others ({len(self._live())} left) while Ray"
                        " restarts it"
                    )
                continue
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, BackendError):  # e.g. MemberError: one clear line
                    raise cause from None
                raise
            results[shard] = values
            received += sum(np.asarray(x).nbytes for x in jax.tree.leaves(values))
            if i in load:
                load[i] -= 1
        self.stats.append(
            {
                "generation": int(generation),
                "bytes": sent,
                "bytes_back": received,
                "dispatch_s": time.perf_counter() - t0,
            }
        )
        return [results[s] for s in range(self.shards)]

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(a)
        self.actors = []


@contextlib.contextmanager
def open_step(factory, shared=None, address=None, workers=None, gpus_per_worker=None, **options):
    """A :class:`RayStep` on the cluster at ``address`` (a running or new local instance if none).

    Args:
      factory: ``factory(shared) -> Pieces``, picklable; the driver and each actor call it
        once. Its step's ``shard_size`` sets the shards (several per actor is best).
      shared: large task data, put in Ray's object store once for all actors.
      address: a Ray address; ``None`` uses a running instance or starts a local one.
      workers, gpus_per_worker: actors and GPUs per actor (see :func:`actor_resources`).
      **options: ``max_restarts``, ``startup_timeout_s``, ``compilation_cache``.

    Example::

        pieces = lambda shared: Pieces(make_generation_step(es, p, fit, shard_size=8), init)
        with open_step(pieces, workers=2) as step:
            state, metrics = step(state, run_key, 0)
    """
    with connect(address) as ray:
        res = actor_resources(ray, workers, gpus_per_worker)
        with _running(ray, factory, shared, res, options) as step:
            yield step


@contextlib.contextmanager
def _running(ray, factory, shared, res, options):
    step = RayStep(ray, factory(shared), factory, shared, res, **options)
    try:
        yield step
    finally:
        step.close()


def default_shard_size(units: int, shards_per_worker: int, workers: int) -> int:
    """Units per shard when ``evaluation.shard_size`` is not set: ``shards_per_worker``
    shards per actor."""
    return -(-units // (shards_per_worker * workers))


@contextlib.contextmanager
def open_experiment_step(exp, warn=None):
    """The Ray step of an experiment, with its config's ``ray`` section's settings.

    An experiment built from its config alone travels as the config (each actor builds it
    again); one built with Python objects (a task family, a rule, a fitness function)
    travels as its outer loop, pickled. Without ``evaluation.shard_size`` the work is cut
    into ``shards_per_worker`` shards per actor, and ``warn`` is told that a local run
    reproduces the result only with that shard size set.
    """
    cfg = exp.config
    rc = cfg.ray
    with connect(rc.address) as ray:
        res = actor_resources(ray, rc.workers, rc.gpus_per_worker)
        if cfg.evaluation.shard_size is None:
            size = default_shard_size(exp.outer.units, rc.shards_per_worker, res["workers"])
            exp = exp.with_shard_size(size)
            cfg = exp.config
            if warn is not None:
                warn(
                    f"evaluation.shard_size is not set; the Ray backend uses {size}. Set it"
                    " in the config to get the same bits on every backend and worker count"
                )
        factory = exp.pieces_factory()
        options = {
            "max_restarts": rc.max_restarts,
            "startup_timeout_s": rc.startup_timeout_s,
            "compilation_cache": rc.compilation_cache,
            "grow": rc.workers is None,  # a fixed number of workers stays fixed
            "warn": warn,
        }
        with _running(ray, factory, None, res, options) as step:
            yield step
