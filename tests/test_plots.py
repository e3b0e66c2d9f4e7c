"""Rule analysis plots: the heat-map data is the rule's update on the grid; files are drawn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import rules, tasks
from evoplastic.analysis import plots
from evoplastic.analysis.trace import Trace, record_inner_loop, typical_values
from evoplastic.cli import main
from evoplastic.rules import Signals

from .conftest import small_config
from .rundirs import fake_run

PRE = np.linspace(-2.0, 2.0, 7)
POST = np.linspace(-1.5, 1.0, 5)


def test_dw_grid_of_oja_is_its_equation():
    rule = rules.polynomial(("pre*post", "post^2*w", "w"))
    genome = jnp.array([0.8, -0.6, 0.1])
    grid = plots.dw_grid(rule, genome, PRE, POST, w=0.3)
    q, p = np.meshgrid(POST, PRE, indexing="ij")
    np.testing.assert_allclose(grid, 0.8 * p * q - 0.6 * q**2 * 0.3 + 0.1 * 0.3, atol=1e-6)


def test_dw_grid_of_an_mlp_rule_is_its_update_at_each_point():
    rule = rules.mlp(features=("pre", "post", "w", "err"), hidden=(8,))
    genome = rule.init(jax.random.PRNGKey(3))
    grid = plots.dw_grid(rule, genome, PRE, POST, w=-0.4, err=0.2)
    # the same numbers from one layer whose synapse (i, j) sees pre[j], post[i]
    layer = Signals(
        pre=jnp.asarray(PRE, jnp.float32),
        post=jnp.asarray(POST, jnp.float32),
        w=jnp.full((POST.size, PRE.size), -0.4),
        err=jnp.full((POST.size,), 0.2),
    )
    np.testing.assert_allclose(grid, rule.update(genome, layer), rtol=1e-5, atol=1e-7)
    assert np.ptp(grid) > 1e-4  # a non-trivial rule


def test_dw_grid_of_a_per_synapse_rule_averages_its_synapses():
    rule = rules.abcd(((3, 2), (2, 3)), per_synapse=True, init_scale=0.5)
    genome = rule.init(jax.random.PRNGKey(0))
    grid = plots.dw_grid(rule, genome, PRE, POST, layer=1, shape=(2, 3))
    g = genome[1]
    q, p = np.meshgrid(POST, PRE, indexing="ij")
    per_synapse = g["eta"] * (
        g["A"] * p[..., None, None] * q[..., None, None]
        + g["B"] * p[..., None, None]
        + g["C"] * q[..., None, None]
        + g["D"]
    )
    np.testing.assert_allclose(grid, per_synapse.mean(axis=(-2, -1)), rtol=1e-5, atol=1e-7)


def test_heatmap_data_uses_the_recorded_ranges_and_typical_values():
    family = tasks.make("pca", dim=4, steps=64)
    rule = rules.polynomial(("pre*post", "post^2*w"))
    genome = jnp.array([1.0, -1.0])
    trace = record_inner_loop(family, rule, genome, tasks.test_instance_keys(1)[0])
    d = plots.heatmap_data(rule, genome, trace, grid=9)
    rec = trace.layers[0]
    fixed = typical_values(rec)
    assert fixed["w"] == pytest.approx(float(np.median(rec["w"])))
    assert d["pre"][0] == pytest.approx(np.percentile(rec["pre"], 1))
    assert d["post"][-1] == pytest.approx(np.percentile(rec["post"], 99))
    q, p = np.meshgrid(d["post"], d["pre"], indexing="ij")
    np.testing.assert_allclose(d["dw"], p * q - q**2 * fixed["w"], atol=1e-5)
    # the trajectory is the weights the rule saw, step after step
    lr = 0.1 / (1 + 0.02 * np.arange(63))
    stepped = rec["w"][:-1] + lr[:, None, None] * rec["dw"][:-1]
    np.testing.assert_allclose(rec["w"][1:], stepped, atol=1e-5)
    index, w = plots.trajectory_data(trace, synapses=3)
    assert [rec["w"][:, i, j].tolist() for i, j in index] == w.T.tolist()


def call(argv) -> int:
    """The CLI's exit code (0 when it returns)."""
    try:
        main(argv)
    except SystemExit as stop:
        return stop.code
    return 0


def config_with(rule: dict, task: dict | None = None, **sections) -> dict:
    """The small test config with its rule (and task) section replaced."""
    cfg = small_config(**sections)
    cfg["rule"] = rule
    cfg["task"] = task or cfg["task"]
    return cfg


RULE_FAMILIES = {
    "polynomial": small_config(),
    "abcd": config_with(
        {"name": "abcd", "per_synapse": True},
        task={"name": "sinusoid", "support_size": 5, "query_size": 5},
        network={"hidden": [4]},
    ),
    "mlp": config_with({"name": "mlp", "hidden": [4]}),
}


@pytest.mark.parametrize("name", sorted(RULE_FAMILIES))
def test_plot_command_draws_every_figure_for_every_rule_family(name, tmp_path, capsys):
    run_dir = tmp_path / name
    fake_run(run_dir, RULE_FAMILIES[name])
    assert call(["plot", str(run_dir)]) == 0, capsys.readouterr().err
    for png in ("learning_curve.png", "rule_heatmap.png", "weight_trajectories.png"):
        data = (run_dir / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000, png


def test_heat_map_of_a_divergent_inner_loop_is_still_drawn(tmp_path):
    steps, n_out, n_in = 6, 2, 3
    w = np.ones((steps, n_out, n_in), np.float32)
    w[3:] = np.inf  # the weights overflowed at step 3
    w[5] = np.nan
    layer = {
        "pre": np.linspace(-1, 1, steps * n_in).reshape(steps, n_in),
        "post": np.full((steps, n_out), np.nan),
        "w": w,
        "err": np.zeros((steps, n_out)),
        "mod": np.zeros(steps),
        "dw": np.zeros_like(w),
    }
    trace = Trace(layers=[layer], loss=float("nan"), metrics={})
    rule = rules.polynomial(("pre*post", "post^2*w"))
    d = plots.heatmap_data(rule, jnp.array([1.0, -1.0]), trace, grid=5)
    assert d["fixed"]["w"] == 1.0  # the median of the finite weights
    np.testing.assert_allclose(d["post"], np.linspace(-1, 1, 5))  # no finite post: unit range
    path = plots.rule_heatmap(rule, jnp.array([1.0, -1.0]), trace, tmp_path / "h.png")
    assert path.read_bytes().startswith(b"\x89PNG")
