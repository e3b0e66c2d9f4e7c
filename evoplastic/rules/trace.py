"""The Hebbian trace of differentiable plasticity (Miconi, Clune & Stanley 2018,
"Differentiable plasticity: training plastic neural networks with backpropagation", ICML).

A synapse keeps a running average of the product of its pre- and postsynaptic rates,

``hebb <- (1 - eta) * hebb + eta * post * pre``,  i.e.  ``dw = eta * (pre * post - w)``,

where ``w`` is the trace the rule changes (in :class:`~evoplastic.networks.PlasticRecurrentNetwork`
the plastic component ``hebb`` of the effective weight ``w + alpha * hebb``). With
``oja=True`` the trace follows Oja's rule instead, ``dw = eta * post * (pre - post * w)``,
which keeps it bounded without decaying it between presentations (the paper's variant
for long episodes). The genome is the single learned rate ``{"eta": eta}``.

Example::

    rule = hebb_trace(eta_init=0.05)
    g = rule.init(jax.random.PRNGKey(0))          # {"eta": 0.05}
    dw = rule.update(g, Signals(pre=x, post=y, w=hebb))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import Genome, Rule, Signals


def hebb_trace(eta_init: float = 0.05, oja: bool = False) -> Rule:
    """Miconi's Hebbian trace with a learned rate ``eta`` (see the module docstring).

    Args:
      eta_init: the initial rate (the mean of the outer search).
      oja: Oja's form ``eta * post * (pre - post * w)`` instead of the decaying average.
    """

    def init(key: jax.Array) -> Genome:
        del key
        return {"eta": jnp.asarray(eta_init, jnp.float32)}

    def update(genome: Genome, signals: Signals) -> jax.Array:
        local = signals.broadcast()
        pre, post, w = local["pre"], local["post"], local["w"]
        if oja:
            return genome["eta"] * post * (pre - post * w)
        return genome["eta"] * (pre * post - w)

    def describe(genome: Genome) -> str:
        eta = float(genome["eta"])
        if oja:
            return f"dhebb = {eta:.4f}*post*(pre - post*hebb)  (Oja's form)"
        return f"hebb <- {1 - eta:.4f}*hebb + {eta:.4f}*pre*post"

    return Rule("hebb_trace", init, update, describe)
