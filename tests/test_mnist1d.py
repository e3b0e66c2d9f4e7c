"""MNIST-1D: the task family, layer-local training, and a digits rule carried to it."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import build, tasks
from evoplastic.analysis import baselines, evaluation
from evoplastic.config import load
from evoplastic.tasks.mnist1d import _mnist1d

from .conftest import cli_here, run_cli

NET = {"hidden": [16, 16], "feedback": "random", "output_activation": "linear", "lr": 1.0,
       "lr_decay": 0.0, "w_init_std": 0.3}  # fmt: skip


def _pool_rows(split):
    return {row.tobytes() for row in _mnist1d()[split][0]}


def test_pools_are_disjoint_and_instances_come_from_their_own_pool():
    pools = {s: _pool_rows(s) for s in ("train", "validation", "test")}
    assert [len(p) for p in pools.values()] == [3000, 1000, 1000]
    assert not pools["train"] & pools["validation"]
    assert not pools["train"] & pools["test"] and not pools["validation"] & pools["test"]
    fam = tasks.make("mnist1d", network=NET, shots=3, query_per_class=4)
    for split in pools:
        t = fam.sample(jax.random.PRNGKey(7), split)
        assert t.xs.shape == (30, 40) and t.qx.shape == (40, 40) and t.ys.shape == (30, 10)
        rows = {np.asarray(r).tobytes() for r in np.concatenate([t.xs, t.qx])}
        assert rows <= pools[split] and len(rows) == 70  # no example twice in an instance
        np.testing.assert_array_equal(np.asarray(t.ys).sum(0), 3)  # 3 shots of each class
    with pytest.raises(ValueError, match="unknown split"):
        fam.sample(jax.random.PRNGKey(0), "val")


def test_labels_match_the_data_set():
    fam = tasks.make("mnist1d", network=NET, ways=4, shots=2, query_per_class=3)
    t = fam.sample(jax.random.PRNGKey(3), "test")
    x, y = _mnist1d()["test"]
    index = {row.tobytes(): label for row, label in zip(x, y, strict=True)}
    labels = [index[np.asarray(r).tobytes()] for r in np.concatenate([t.xs, t.qx])]
    onehot = np.concatenate([t.ys, t.qy]).argmax(1)
    # one digit per one-hot position, four distinct digits
    mapping = {}
    for label, pos in zip(labels, onehot, strict=True):
        assert mapping.setdefault(pos, label) == label
    assert len(set(mapping.values())) == 4


def test_bad_options_fail_with_one_line():
    for params, field in (({"ways": 11}, "task.ways"), ({"input_scale": 0.0}, "input_scale")):
        with pytest.raises(ValueError, match=field):
            tasks.make("mnist1d", network=NET, **params)


def _params(fam, key):
    ws = fam.network.init(key).ws
    return ws, baselines._local_heads(fam.network, key)


def test_layer_local_has_no_gradient_between_layers():
    """The update of layer l depends on layer l and its own head only: the Jacobian of
    layer 0's gradient with respect to later weights and heads is zero, and nonzero with
    respect to its own head (so the check can fail). A narrow network: the property does
    not depend on the widths, the Jacobians' cost does."""
    fam = tasks.make("mnist1d", network=dict(NET, hidden=[4, 4]))
    t = fam.sample(jax.random.PRNGKey(1), "train")
    params = _params(fam, t.weight_key)

    def grad_layer(p, layer):
        g = jax.grad(lambda q: baselines.layer_local_loss(fam, q, t.xs[0], t.ys[0], 1.0))(p)
        return g[0][layer]

    jac = jax.jacobian(grad_layer)(params, 0)
    (j_ws, j_heads) = jac
    assert float(jnp.abs(j_heads[0]).max()) > 1e-3  # its own head matters
    assert float(jnp.abs(j_ws[0]).max()) > 1e-3
    for later in (1, 2):
        assert float(jnp.abs(j_ws[later]).max()) == 0.0
    assert float(jnp.abs(j_heads[1]).max()) == 0.0
    # the middle layer: nothing from the output layer, nothing from the first head
    j_ws, j_heads = jax.jacobian(grad_layer)(params, 1)
    assert float(jnp.abs(j_ws[2]).max()) == 0.0 and float(jnp.abs(j_heads[0]).max()) == 0.0
    assert float(jnp.abs(j_heads[1]).max()) > 1e-3
    # end to end backprop does pass the output layer's weights to layer 0 (contrast)
    net = fam.network

    def full(ws):
        y = net.forward(ws, t.xs[0])[-1]
        return -jnp.sum(t.ys[0] * jax.nn.log_softmax(y))

    j_full = jax.jacobian(lambda ws: jax.grad(full)(ws)[0])(params[0])
    assert float(jnp.abs(j_full[2]).max()) > 1e-3


def test_layer_local_learns():
    """Layer-local SGD (rate tuned on validation instances) on 10-way 5-shot MNIST-1D:
    above chance (0.1) and above the untrained network, on 16 held-out instances."""
    fam = tasks.make("mnist1d", network=dict(NET, hidden=[32, 32]), epochs=2)
    step = baselines.layer_local_step
    lr = baselines.tune_learning_rate(fam, "sgd", 8, (0.01, 0.03, 0.1, 0.3), step=step)
    keys = tasks.test_instance_keys(16)
    _, trained = baselines._losses(fam, "sgd", [lr, 0.0], keys, "test", step=step)
    acc, untrained = (float(np.mean(a)) for a in trained["accuracy"])
    assert acc > 0.15 and acc > untrained + 0.04, (acc, untrained)


RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def test_task_change_replaces_the_task_section_and_keeps_the_episode_shape():
    cfg, changes = evaluation.config_with_task(
        RESULTS / "digits", ["task=mnist1d", "network.hidden=[64,64]", "input_scale=0.5"]
    )
    want = {"name": "mnist1d", "shots": 5, "query_per_class": 10, "epochs": 3, "input_scale": 0.5}
    assert {k: cfg.task[k] for k in want} == want
    assert cfg.task["ways"] == 10  # MNIST-1D's default, not the digits run's 5
    assert "train_classes" not in cfg.task
    assert tuple(cfg.network.hidden) == (64, 64)
    assert changes["task.name"] == "mnist1d"


def test_a_per_layer_rule_is_carried_to_a_deeper_network():
    """Hidden layers reuse the run's hidden-layer coefficients, the output layer keeps its
    own; a rule shared by every synapse passes unchanged."""
    src = build(load(RESULTS / "digits" / "config.yaml"))
    g = np.arange(16.0, dtype=np.float32).reshape(2, 8)
    cfg, _ = evaluation.config_with_task(RESULTS / "digits", ["network.hidden=[8,8,8]"])
    carried = np.asarray(evaluation.carry_genome(src, g, build(cfg)))
    np.testing.assert_array_equal(carried, g[[0, 0, 0, 1]])
    mlp = build(load(RESULTS / "digits_mlp" / "config.yaml"))
    cfg, _ = evaluation.config_with_task(RESULTS / "digits_mlp", ["network.hidden=[8,8]"])
    assert evaluation.carry_genome(mlp, mlp.genome_template, build(cfg)) is mlp.genome_template


def _carried(run, items, instances):
    """The committed rule of ``run``, unchanged, on its task with ``items`` changed: raw metrics
    of the first ``instances`` held-out instances."""
    source = build(load(run / "config.yaml"))
    flat = json.loads((run / "best_rule.json").read_text())["genome_flat"]
    cfg, _ = evaluation.config_with_task(run, items)
    exp = build(cfg)
    genome = evaluation.carry_genome(source, source.unflatten_genome(flat), exp)
    return tasks.evaluate_genome(exp.family, exp.rule, genome, instances)


@pytest.mark.parametrize("name", ["digits", "digits_horizons"])
def test_committed_transfer_to_mnist1d_reproduces(name):
    """A committed digits rule on MNIST-1D (hidden [64, 64], inputs x 0.02): the first
    8 held-out instances give the committed accuracies (tolerance 0.011: one query example
    of 100), none diverges; and the committed figures say what docs/results.md says."""
    committed = json.loads((RESULTS / name / "mnist1d.json").read_text())
    items = ["task=mnist1d", "network.hidden=[64,64]", "input_scale=0.02"]
    assert committed["task_overrides"] == {
        "task.name": "mnist1d", "network.hidden": "[64,64]", "task.input_scale": "0.02"
    }  # fmt: skip
    raw = _carried(RESULTS / name, items, 8)
    got = np.asarray(raw["accuracy"])
    np.testing.assert_allclose(got, committed["first_instances"]["accuracy"], atol=0.011)
    assert np.isfinite(np.asarray(raw["loss"])).all()
    acc = {k: v["accuracy"]["mean"] for k, v in committed["rules"].items()}
    assert acc["evolved"] >= acc["sgd"] and acc["evolved"] >= acc["adam"] - 0.05
    # seeds meeting the bar, as docs/results.md counts them (1 of 5 and 4 of 5)
    seeds = committed["seeds"]["results"]
    assert seeds["seed 0"]["accuracy"] == committed["rules"]["evolved"]["accuracy"]
    met = [
        s["accuracy"]["mean"] >= acc["sgd"] and s["accuracy"]["mean"] >= acc["adam"] - 0.05
        for s in seeds.values()
    ]
    assert len(met) == 5 and sum(met) == {"digits": 1, "digits_horizons": 4}[name], met


def test_eval_on_another_task_fails_with_one_line_on_bad_input():
    proc = cli_here("eval", RESULTS / "digits", "task=nosuch")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "task.name" in proc.stderr
    # learned feedback matrices are sized by the network: they cannot be carried
    proc = cli_here("eval", RESULTS / "sinusoid_learned_feedback", "network.hidden=[8,8]")
    assert proc.returncode == 2 and "cannot be carried" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_eval_carries_the_digits_rule_to_mnist1d_with_every_baseline():
    args = ["task=mnist1d", "network.hidden=[8,8]", "input_scale=0.02", "shots=2", "epochs=1"]
    proc = run_cli("eval", RESULTS / "digits", *args, "--instances", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)["rules"]
    for name in ("evolved", "fa", "sgd", "adam", "local_sgd", "local_adam"):
        assert res[name]["accuracy"]["n"] == 4
    assert res["evolved"]["loss"]["nonfinite"] == 0


@pytest.mark.slow  # 17 s: five seeds of two rules; committed transfers stay in the default tier
def test_committed_neural_rule_seeds_reproduce_and_count_as_docs_say():
    """experiments/results/digits_stateful/seeds.json (stateful against stateless MLP rule,
    5 seeds each): the committed seed-0 rules give the committed accuracies on the first 4
    held-out MNIST-1D instances and their committed digits figures; the counts stated in
    docs/results.md follow from the committed figures: the stateful rule ahead beyond both
    intervals on 3 of 5 seeds on digits and 1 of 5 on MNIST-1D, and no seed of either rule
    at tuned SGD's MNIST-1D figure."""
    committed = json.loads((RESULTS / "digits_stateful" / "seeds.json").read_text())
    items = ["task=mnist1d", "network.hidden=[64,64]", "input_scale=0.02"]
    for name in ("stateful", "mlp"):
        raw = _carried(RESULTS / f"digits_{name}", items, 4)
        want = committed["mnist1d_first_instances"]["accuracy"][f"digits_{name}"]
        np.testing.assert_allclose(np.asarray(raw["accuracy"]), want, atol=0.011)
        assert np.isfinite(np.asarray(raw["loss"])).all()
        own = json.loads((RESULTS / f"digits_{name}" / "eval.json").read_text())["trained"][
            "evolved"
        ]
        assert committed["seeds"][name]["seed 0"]["digits"] == own
    seeds = committed["seeds"]

    def ahead(task):
        out = []
        for s in range(5):
            a, b = (seeds[n][f"seed {s}"][task]["accuracy"] for n in ("stateful", "mlp"))
            out.append(a["mean"] - a["ci95"] > b["mean"] + b["ci95"])
        return out

    assert ahead("digits") == [True, True, False, True, False]
    assert ahead("mnist1d") == [False, False, False, True, False]
    sgd = json.loads((RESULTS / "digits" / "mnist1d.json").read_text())["rules"]["sgd"]
    for name in ("stateful", "mlp"):
        for s in seeds[name].values():
            assert s["mnist1d"]["accuracy"]["mean"] < sgd["accuracy"]["mean"]
