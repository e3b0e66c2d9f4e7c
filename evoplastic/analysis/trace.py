"""Recording the inner loop: the local signals and weight change of every synapse, every step.

:func:`record_inner_loop` runs one task instance with a rule wrapped so that each call of
``rule.update`` also reports its inputs (``pre, post, w, err, mod``) and its output ``dw``
to the host (``jax.debug.callback``, in call order). It works with every task family and
rule, because it changes nothing but the rule: the family's own compiled inner loop runs
as it always does. The recorded trace feeds the rule heat maps, the weight trajectories
(:mod:`evoplastic.analysis.plots`) and the distillation of a rule into an equation
(:mod:`evoplastic.analysis.distill`).

Example::

    family = tasks.make("pca", dim=8, steps=200)
    rule = rules.polynomial(("pre*post", "post^2*w"))
    trace = record_inner_loop(family, rule, jnp.array([1.0, -1.0]), test_instance_keys(1)[0])
    trace.layers[0]["w"].shape        # (200, 1, 8): the weights before each step
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..rules.base import Rule, Signals

# the signals every network gives a rule (spiking networks add traces, not recorded here)
RECORDED = ("pre", "post", "w", "err", "mod", "dw")


@dataclasses.dataclass(frozen=True)
class _Tagged:
    """A layer's part of a genome, labelled with the layer it was selected for."""

    genome: object
    layer: int


@dataclasses.dataclass
class Trace:
    """The inner loop of one task instance, as the synapses saw it.

    Attributes:
      layers: one mapping per plastic layer, in layer order: ``pre [T, n_in]``,
        ``post [T, n_out]``, ``w [T, n_out, n_in]`` (the weights the rule saw, i.e. before
        each step's change), ``err [T, n_out]``, ``mod [T]`` and the rule's output
        ``dw [T, n_out, n_in]`` (before the network's step size is applied).
      loss: the instance's loss.
      metrics: the instance's task metrics.
    """

    layers: list[dict[str, np.ndarray]]
    loss: float
    metrics: dict[str, float]

    @property
    def steps(self) -> int:
        """Number of recorded rule calls of layer 0 (the inner-loop steps)."""
        return int(self.layers[0]["w"].shape[0]) if self.layers else 0


def recording_rule(rule: Rule, sink) -> Rule:
    """``rule`` with every ``update`` call also sent to ``sink(layer, pre, post, w, err,
    mod, dw)`` on the host, in call order. The weight changes are unchanged."""

    def select(genome, layer):
        return _Tagged(rule.select(genome, layer), layer)

    def update(genome, signals: Signals):
        layer = 0
        if isinstance(genome, _Tagged):
            genome, layer = genome.genome, genome.layer
        dw = rule.update(genome, signals)
        local = signals.broadcast()
        err = local["err"][:, 0]
        mod = jnp.asarray(local["mod"], signals.w.dtype)
        jax.debug.callback(
            functools.partial(sink, layer),
            signals.pre,
            signals.post,
            signals.w,
            err,
            mod,
            dw,
            ordered=True,
        )
        return dw

    # plastic: the recording sees every step, even of a rule that never changes weights
    return dataclasses.replace(rule, update=update, select=select, plastic=True)


def record_inner_loop(family, rule: Rule, genome, key: jax.Array, split: str = "test") -> Trace:
    """Run the instance of ``family`` drawn from ``key`` with ``rule(genome)`` and record it.

    Args:
      family: any task family (``sample`` and ``inner_loop``).
      rule: the rule; ``genome`` its genome.
      key: the instance key, e.g. ``test_instance_keys(n)[i]`` for held-out instance ``i``
        (the same instance :func:`evoplastic.backends.evaluate_genome` scores).
      split: ``"test"`` (held-out instances) or ``"train"``.

    Returns:
      The :class:`Trace` of every plastic layer.
    """
    return record_inner_loops(family, rule, genome, [key], split)[0]


def _as_float64(tree):
    """``tree`` with its floating-point leaves in float64 (other leaves unchanged)."""

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(jnp.float64) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(cast, tree)


def record_inner_loops(
    family, rule: Rule, genome, keys, split: str = "test", float64: bool = False
) -> list[Trace]:
    """:func:`record_inner_loop` for several instance keys (one compilation for all).

    With ``float64`` the instance is drawn as usual (the same instance the float32
    evaluation scores) and then run in float64: the genome, the instance's data and every
    signal are cast to double precision, so large but finite values do not overflow.
    """
    calls: dict[int, list[tuple]] = {}

    def sink(layer, *values):
        calls.setdefault(layer, []).append(tuple(np.asarray(v) for v in values))

    recorder = recording_rule(rule, sink)
    sample = jax.jit(lambda key: family.sample(key, split))

    @jax.jit
    def run(genome, task, key):
        return family.inner_loop(recorder, genome, task, key)

    traces = []
    for key in keys:
        calls.clear()
        task = sample(key)
        if float64:
            # the process-wide switch, restored after (the scoped context manager alone was
            # seen to leave the recording in float32 after some earlier computations)
            before = jax.config.jax_enable_x64
            jax.config.update("jax_enable_x64", True)
            try:
                with jax.enable_x64(True):
                    loss, metrics = jax.jit(run.__wrapped__)(
                        _as_float64(genome), _as_float64(task), key
                    )
                    jax.effects_barrier()
            finally:
                jax.config.update("jax_enable_x64", before)
        else:
            loss, metrics = run(genome, task, key)
            jax.effects_barrier()
        layers = []
        for layer in sorted(calls):
            columns = list(zip(*calls[layer], strict=True))
            layers.append({n: np.stack(c) for n, c in zip(RECORDED, columns, strict=True)})
        traces.append(
            Trace(
                layers=layers,
                loss=float(loss),
                metrics={k: float(np.asarray(v)) for k, v in metrics.items()},
            )
        )
    return traces


def typical_values(layer: dict[str, np.ndarray]) -> dict[str, float]:
    """The median ``w``, ``err`` and ``mod`` a layer's synapses saw (heat-map context; the
    finite values only, 0 if there are none)."""
    out = {}
    for name in ("w", "err", "mod"):
        v = np.asarray(layer[name])[np.isfinite(layer[name])]
        out[name] = float(np.median(v)) if v.size else 0.0
    return out


def synapse_samples(
    trace: Trace, layer: int | None = None, max_samples: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Flatten a trace into per-synapse samples ``{pre, post, w, err, mod, dw, layer}``.

    Every synapse at every step is one sample. ``layer`` keeps one layer (default: all);
    ``max_samples`` keeps a random subset of that many samples.
    """
    parts = []
    for index, rec in enumerate(trace.layers):
        if layer is not None and index != layer:
            continue
        steps, n_out, n_in = rec["w"].shape
        full = (steps, n_out, n_in)
        parts.append(
            {
                "pre": np.broadcast_to(rec["pre"][:, None, :], full),
                "post": np.broadcast_to(rec["post"][:, :, None], full),
                "w": rec["w"],
                "err": np.broadcast_to(rec["err"][:, :, None], full),
                "mod": np.broadcast_to(rec["mod"].reshape(steps, 1, 1), full),
                "dw": rec["dw"],
                "layer": np.full(full, index),
            }
        )
    if not parts:
        raise ValueError(f"the trace has no layer {layer}")
    out = {k: np.concatenate([p[k].reshape(-1) for p in parts]) for k in parts[0]}
    n = out["dw"].size
    if max_samples is not None and n > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
        out = {k: v[keep] for k, v in out.items()}
    return out
