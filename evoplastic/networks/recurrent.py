"""A recurrent rate network with plastic input, recurrent and output weights.

For each input ``x`` the hidden population settles for ``settle`` steps from rest,

``h^0 = 0``, ``h^{k+1} = f(W_in x + W_rec h^k)``, ``y = g(W_out h^K)``,

and then every weight matrix changes by the rule, with only its own synapse's signals:

* ``W_in``  (pre ``x``,  post ``h^K``),
* ``W_rec`` (pre ``h^{K-1}``, the recurrent input that produced ``h^K``; post ``h^K``),
* ``W_out`` (pre ``h^K``, post ``y``).

The recurrent weights are plastic like the others. Since the hidden state starts from rest
for every input, a response depends on the weights and the input only, so the network
plugs into every task that uses :class:`LayeredNetwork` (``network.kind: recurrent``):
its genome layers are ``(W_in, W_rec, W_out)``, the output error reaches the hidden
neurons through the same feedback pathways (``none``, ``random``, ``learned``,
``synthetic``), and ``modulation: network`` works the same way.
"""

from __future__ import annotations

import dataclasses

import jax

from .layered import LayeredNetwork
from .rate import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class RecurrentNetwork(LayeredNetwork):
    """``sizes = (n_in, n_hidden, n_out)``; see the module docstring.

    Attributes:
      settle: recurrent steps per input (>= 2, so that ``W_rec`` takes part).
    """

    settle: int = 3

    def __post_init__(self):
        super().__post_init__()
        if len(self.sizes) != 3:
            raise ValueError(
                f"network.hidden: a recurrent network has one hidden layer, got {self.sizes[1:-1]}"
            )
        if self.settle < 2:
            raise ValueError(f"network.settle: must be >= 2, got {self.settle}")

    @property
    def populations(self) -> tuple[int, ...]:
        """Sizes of the populations in ``acts``: input, settled hidden state, the hidden
        state one settling step earlier, output."""
        n_in, n_h, n_out = self.sizes
        return (n_in, n_h, n_h, n_out)  # x, h^K, h^{K-1}, y

    @property
    def wiring(self) -> tuple[tuple[int, int], ...]:
        """``(pre, post)`` population indices of each plastic matrix: input, recurrent, output."""
        return ((0, 1), (2, 1), (1, 3))  # W_in, W_rec, W_out

    def forward(self, ws, x: jax.Array) -> list[jax.Array]:
        """Settle the hidden state from rest for ``settle`` steps; the activities of every
        population (see :attr:`populations`)."""
        w_in, w_rec, w_out = ws
        f = ACTIVATIONS[self.activation]
        drive = w_in @ x
        h_prev = h = jax.numpy.zeros(self.sizes[1], x.dtype)
        for _ in range(self.settle):
            h_prev, h = h, f(drive + w_rec @ h)
        y = ACTIVATIONS[self.output_activation](w_out @ h)
        return [x, h, h_prev, y]
