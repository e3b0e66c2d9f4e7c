"""A non-plastic recurrent baseline: an LSTM trained by backprop on the same episodes.

For a task family whose episodes are input streams scored on the final step (``patterns``:
:func:`evoplastic.tasks.patterns.completion_score`), an LSTM (flax's ``LSTMCell``, a
linear ``tanh`` readout of its last hidden state) is trained with Adam on exactly the
meta-train episodes the gradient outer loop sees (``generations`` steps of
``evaluation.instances`` episodes, the same keys) and evaluated on the same held-out
episodes. Its weights are fixed within an episode: whatever it stores of the episode's
patterns lives in its activities (Hochreiter & Schmidhuber 1997). Miconi et al. 2018
compare plastic networks with LSTMs this way.

The hidden size defaults to the smallest whose parameter count is at least the plastic
genome's; the learning rate is picked from a sweep by the loss on meta-train episodes
not used for training, at the full budget. The LSTM is trained on the task's own loss
(``task.loss``, ``task.margin``). The LSTM sees the bits themselves (``+-1``
and 0), not the ``input_scale``-times stronger drive of the plastic network's neurons.

Run ``python -m evoplastic.analysis.recurrent_baseline CONFIG [--out FILE]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..backends.local import generation_keys
from ..tasks import test_instance_keys
from .report import summarize

LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2)
VALIDATION_SEED = 1_414_213  # meta-train episodes that pick the learning rate


def lstm_params(n_in: int, hidden: int, n_out: int) -> int:
    """Parameters of an LSTM (four gates, recurrent biases) and its linear readout."""
    return 4 * (hidden * (n_in + hidden) + hidden) + hidden * n_out + n_out


def matching_hidden(n_in: int, n_out: int, at_least: int) -> int:
    """The smallest hidden size whose LSTM has at least ``at_least`` parameters."""
    h = 1
    while lstm_params(n_in, h, n_out) < at_least:
        h += 1
    return h


class LSTMReader(nn.Module):
    """An LSTM over the input stream; ``tanh`` of a linear readout of its last state."""

    hidden: int
    n_out: int

    @nn.compact
    def __call__(self, xs):
        cell = nn.scan(nn.LSTMCell, variable_broadcast="params", split_rngs={"params": False})(
            self.hidden
        )
        carry = cell.initialize_carry(jax.random.PRNGKey(0), xs[0].shape)
        (_, h), _ = cell(carry, xs)
        return jnp.tanh(nn.Dense(self.n_out)(h))


def _episodes(family, keys, split):
    return jax.vmap(lambda k: family.sample(k, split))(keys)


def train_lstm(family, score, hidden: int, lr: float, generations: int, instances: int, seed: int):
    """Adam on the episodes of the gradient outer loop's ``generations``; the parameters."""
    model = LSTMReader(hidden, family.n_bits)
    params = model.init(jax.random.PRNGKey(seed + 1), jnp.zeros((family.steps, family.n_bits)))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    run_key = jax.random.PRNGKey(seed)

    def loss_fn(p, tasks):
        y = jax.vmap(lambda t: model.apply(p, t.xs))(tasks)
        losses, _ = jax.vmap(score)(y, tasks)
        return jnp.mean(losses)

    @jax.jit
    def train(params):
        def body(carry, g):
            p, opt = carry
            _, k_eval, _ = generation_keys(run_key, g)
            keys = jax.vmap(lambda j: jax.random.fold_in(k_eval, j))(jnp.arange(instances))
            loss, grad = jax.value_and_grad(loss_fn)(p, _episodes(family, keys, "train"))
            updates, opt = tx.update(grad, opt, p)
            return (optax.apply_updates(p, updates), opt), loss

        (p, _), losses = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(generations))
        return p, losses

    return model, *train(params)


def evaluate_lstm(model, params, family, score, keys, split: str) -> dict:
    """Per-episode ``loss`` and metrics of the LSTM on the episodes of ``keys``."""

    @jax.jit
    def run(params, keys):
        tasks = _episodes(family, keys, split)
        y = jax.vmap(lambda t: model.apply(params, t.xs))(tasks)
        loss, metrics = jax.vmap(score)(y, tasks)
        return {"loss": loss, **metrics}

    return {k: np.asarray(v) for k, v in run(params, keys).items()}


def lstm_baseline(exp, hidden: int | None = None, lrs=LEARNING_RATES, instances: int = 100):
    """Tune, train and evaluate the LSTM baseline of an experiment; a JSON-ready dict."""
    from ..tasks.patterns import completion_score as score

    cfg, family = exp.config, exp.family
    completion_score = functools.partial(score, loss=family.loss, margin=family.margin)
    n_plastic = len(exp.flat_genome(exp.genome_template))
    hidden = hidden or matching_hidden(family.n_bits, family.n_bits, n_plastic)
    budget = {"generations": cfg.generations, "instances": cfg.evaluation.instances}
    val_base = jax.random.PRNGKey(VALIDATION_SEED)
    val_keys = jax.vmap(lambda i: jax.random.fold_in(val_base, i))(jnp.arange(64))
    sweep, trained = {}, {}
    start = time.perf_counter()
    for lr in lrs:
        model, params, _ = train_lstm(family, completion_score, hidden, lr, seed=cfg.seed, **budget)
        val = evaluate_lstm(model, params, family, completion_score, val_keys, "train")
        loss = float(np.mean(val["loss"]))
        sweep[str(lr)] = loss if np.isfinite(loss) else None
        trained[lr] = (model, params, loss if np.isfinite(loss) else np.inf)
    best = min(trained, key=lambda lr: trained[lr][2])
    model, params, _ = trained[best]
    raw = evaluate_lstm(
        model, params, family, completion_score, test_instance_keys(instances), "test"
    )
    return {
        "model": "lstm",
        "hidden": hidden,
        "params": lstm_params(family.n_bits, hidden, family.n_bits),
        "plastic_genome_params": n_plastic,
        "loss": family.loss,
        "margin": family.margin if family.loss == "hinge" else None,
        "episodes": budget["generations"] * budget["instances"],
        "optimizer_steps": budget["generations"],
        "learning_rate": best,
        "validation_loss_by_learning_rate": sweep,
        "test": {k: summarize(v) for k, v in raw.items()},
        "wall_s": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    """``python -m evoplastic.analysis.recurrent_baseline CONFIG [--out FILE]``."""
    from .. import build
    from ..config import ConfigError, load

    parser = argparse.ArgumentParser(
        prog="python -m evoplastic.analysis.recurrent_baseline",
        description="Train and evaluate the LSTM baseline of a patterns config.",
    )
    parser.add_argument("config", help="a config whose task is `patterns`")
    parser.add_argument("--out", help="write the JSON here (default: print it)")
    parser.add_argument("--hidden", type=int, help="hidden units (default: matched params)")
    parser.add_argument("--lr", type=float, action="append", help="learning rate(s) to sweep")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
        if cfg.task["name"] != "patterns":
            name = cfg.task["name"]
            raise ConfigError(f"task.name: the LSTM baseline needs task patterns, got {name!r}")
        if args.hidden is not None and args.hidden < 1:
            raise ConfigError(f"--hidden: must be >= 1, got {args.hidden}")
        if args.lr and min(args.lr) <= 0:
            raise ConfigError("--lr: learning rates must be > 0")
        if args.out and Path(args.out).exists():
            raise ConfigError(f"--out: {args.out!r} exists")
        exp = build(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = lstm_baseline(exp, args.hidden, tuple(args.lr or LEARNING_RATES))
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    acc = out["test"]["bit_accuracy"]
    print(
        f"LSTM ({out['hidden']} hidden, {out['params']} params, lr {out['learning_rate']}):"
        f" bit_accuracy {acc['mean']:.4f} ± {acc['ci95']:.4f} on {acc['n']} held-out episodes"
        f" ({out['wall_s']:.0f} s)"
    )
    if not args.out:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
