"""Model networks whose synapses change only through a local plasticity rule."""

import dataclasses

from .layered import FEEDBACK, MODULATION, LayeredNetwork, LayeredState
from .lif import LIFNetwork, LIFState
from .modulated_recurrent import ModulatedRecurrentNetwork, ModulatedRecurrentState
from .plastic_recurrent import PlasticRecurrentNetwork, PlasticRecurrentState
from .rate import ACTIVATIONS, RateNetwork, RateState
from .recurrent import RecurrentNetwork

NETWORKS = {
    "rate": RateNetwork,
    "layered": LayeredNetwork,
    "recurrent": RecurrentNetwork,
    "lif": LIFNetwork,
    "plastic_recurrent": PlasticRecurrentNetwork,
    "modulated_recurrent": ModulatedRecurrentNetwork,
}
KINDS = ("default", *NETWORKS)


def from_options(options: dict | None, n_in: int, n_out: int, default: str = "layered"):
    """The network a task with ``n_in`` inputs and ``n_out`` outputs asks for, from the
    config's ``network`` options; ``kind`` picks the class (``default``: the task's own).

    Layer-wise kinds (``layered``, ``recurrent``) take ``hidden`` widths; one-layer kinds
    (``rate``, ``lif``) take the options of their class, and ``lif`` its ``lif`` mapping;
    ``plastic_recurrent`` (the ``patterns`` task's) its ``plastic`` mapping.

    Raises:
      ValueError: a kind that the task cannot use, or unknown ``lif`` options.
    """
    opts = dict(options or {})
    kind = opts.pop("kind", "default")
    kind = default if kind == "default" else kind
    lif = dict(opts.pop("lif", None) or {})
    if "plastic_recurrent" in (kind, default):  # one population, fed input by input
        if kind != default:
            raise ValueError(f"network.kind: {kind!r} does not fit this task")
        return PlasticRecurrentNetwork.from_options(opts, n_in)
    if "modulated_recurrent" in (kind, default):  # an agent: input and recurrent activity
        if kind != default:
            raise ValueError(f"network.kind: {kind!r} does not fit this task")
        return ModulatedRecurrentNetwork.from_options(opts, n_in, n_out)
    opts.pop("plastic", None)
    if kind in ("layered", "recurrent"):
        if default not in ("layered", "recurrent"):
            raise ValueError(f"network.kind: {kind!r} does not fit this task (use rate or lif)")
        return NETWORKS[kind].from_options(opts, n_in, n_out)
    if kind not in ("rate", "lif"):
        raise ValueError(f"network.kind: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    if default != "rate":
        raise ValueError(
            f"network.kind: {kind!r} does not fit this task (use layered or recurrent)"
        )
    cls = NETWORKS[kind]
    fields = {f.name for f in dataclasses.fields(cls)} - {"n_in", "n_out"}
    unknown = sorted(set(lif) - fields)
    if unknown or (lif and kind != "lif"):
        bad = unknown[0] if unknown else next(iter(lif))
        raise ValueError(
            f"network.lif.{bad}: unknown option (options: {', '.join(sorted(fields))})"
        )
    params = {k: v for k, v in opts.items() if k in fields} | lif
    return cls(n_in=n_in, n_out=n_out, **params)


__all__ = [
    "ACTIVATIONS",
    "FEEDBACK",
    "KINDS",
    "MODULATION",
    "NETWORKS",
    "LIFNetwork",
    "LIFState",
    "ModulatedRecurrentNetwork",
    "ModulatedRecurrentState",
    "PlasticRecurrentNetwork",
    "PlasticRecurrentState",
    "LayeredNetwork",
    "LayeredState",
    "RateNetwork",
    "RateState",
    "RecurrentNetwork",
    "from_options",
]
