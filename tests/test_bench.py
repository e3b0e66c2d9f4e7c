import jax
import numpy as np

from evoplastic import backends, build, config
from evoplastic.studies import bench


def test_minimal_loops_solve_the_same_problem():
    """The hand-written pca loop and the toolkit's fitness agree member by member."""
    exp = build(config.parse(bench.BENCH_CONFIGS["pca"] | {"task": {"name": "pca", "steps": 300}}))
    pop = np.zeros((4, 8), np.float32)
    pop[:, 0], pop[:, 1] = 1.0, -1.0  # Oja's rule ...
    pop[1:, 2:] = 0.05 * np.random.default_rng(0).normal(size=(3, 6))  # ... and neighbours
    key = jax.random.PRNGKey(3)
    toolkit = backends.evaluate_population(exp.fitness(), pop, key, True)
    np.testing.assert_allclose(bench._hand_written_pca_fitness(exp)(pop, key), toolkit, rtol=1e-4)
    np.testing.assert_allclose(bench._minimal_fitness(exp)(pop, key), toolkit, rtol=1e-5)


def test_bench_config_reports_consistent_figures():
    r = bench.bench_config("control", reps=2, echo=lambda *_: None, population=8)
    assert r["overhead_ratio"] == r["gen_median_s"] / r["minimal_median_s"]
    expected = 8 * 4 * r["synapses"] * r["inner_steps"] / r["gen_median_s"]
    assert np.isclose(r["synapse_updates_per_s"], expected)
    assert r["synapses"] == 4 * 16 + 16 * 2
    # the evaluation holds at least every member-instance's weights
    assert r["step_memory_bytes"] >= 8 * 4 * r["synapses"] * 4


def test_roofline_picks_the_relevant_roof():
    result = {"synapse_updates_per_s": 1e9, "batch": 4, "synapses": 10, "instances": 2}
    slow = {"matmul_flops_per_s": 1e11, "stream_bytes_per_s": 1e10}
    r = bench.roofline(result, slow)
    assert r["bound"] == "bandwidth"
    assert np.isclose(r["arithmetic_intensity"], 13 / 18)  # 8 B of weights + 20 B / 2 shared
    assert np.isclose(r["roofline_flops_per_s"], 13 / 18 * 1e10)
    assert np.isclose(r["roofline_fraction"], 13e9 / (13 / 18 * 1e10))
    fast = slow | {"working_set_bytes_per_s": 1e13}  # a cache-resident working set
    r = bench.roofline(result, fast)
    assert r["bound"] == "compute" and np.isclose(r["roofline_fraction"], 13e9 / 1e11)


def test_stream_bandwidth_is_plausible():
    bw = bench.stream_bandwidth(3.5 * 2**20)  # a working set in bytes may be fractional
    assert 1e8 < bw < 1e13
