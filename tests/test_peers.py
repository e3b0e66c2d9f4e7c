"""`bench --peers` (EvoJAX and a hand-written loop) and the static network's scan carry."""

import dataclasses
import sys

import jax
import numpy as np
import pytest
from click.testing import CliRunner
from jax.flatten_util import ravel_pytree

from evoplastic import backends, build, config
from evoplastic.cli import cli
from evoplastic.studies import peers


def _scan_shapes(exp):
    """``(consts, carry)`` shapes of the inner loop's scan over time."""
    fam, rule = exp.family, exp.rule

    def loss(genome, key):
        return fam.inner_loop(rule, genome, fam.sample(key, "train"), key)[0]

    jaxpr = jax.make_jaxpr(loss)(exp.genome_template, jax.random.PRNGKey(0))
    (scan,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    nc, ncarry = scan.params["num_consts"], scan.params["num_carry"]
    shapes = [tuple(v.aval.shape) for v in scan.invars]
    return shapes[:nc], shapes[nc : nc + ncarry]


@pytest.mark.parametrize("rule", ["static", "abcd"])
def test_only_plastic_weights_are_carried_by_the_scan(rule):
    exp = build(config.parse(peers.toolkit_config(peers.Setup(rule, (16,), 4, 1))))
    consts, carry = _scan_shapes(exp)
    weights = [(16, 4), (2, 16)]
    if rule == "static":  # constants of the loop, never rewritten
        assert not [s for s in carry if len(s) == 2], carry
        assert all(w in consts for w in weights)
    else:
        assert all(w in carry for w in weights)


def test_fixed_weights_give_the_same_episodes_as_carried_ones():
    """The constant-weights path equals the old one (weights carried, zero update)."""
    exp = build(config.parse(peers.toolkit_config(peers.Setup("static", (8,), 4, 1))))
    carried = dataclasses.replace(exp.rule, plastic=True)  # the path before the fix
    genome = exp.rule.init(jax.random.PRNGKey(5))
    fam = exp.family
    for i in range(3):
        k = jax.random.PRNGKey(i)
        task = fam.sample(k, "train")
        fixed = fam.inner_loop(exp.rule, genome, task, k)[0]
        old = fam.inner_loop(carried, genome, task, k)[0]
        assert float(fixed) == float(old)


@pytest.mark.parametrize("rule", ["static", "abcd"])
def test_expert_loop_computes_the_toolkits_fitness(rule):
    setup = peers.Setup(rule, (8,), 6, 2)
    exp = build(config.parse(peers.toolkit_config(setup)))
    g = exp.genome_template
    noise = jax.random.normal(jax.random.PRNGKey(1), (6, ravel_pytree(g)[0].size))
    flat = ravel_pytree(g)[0][None] + 0.5 * noise
    unravel = ravel_pytree(g)[1]
    pop = jax.vmap(unravel)(flat)
    key = jax.random.PRNGKey(3)
    toolkit = backends.evaluate_population(exp.fitness(), pop, key, True)
    expert = jax.jit(peers.expert_fitness(setup))(flat, key)
    assert len(set(np.asarray(toolkit).tolist())) > 1  # members differ
    np.testing.assert_allclose(np.asarray(expert), np.asarray(toolkit), rtol=1e-6)


def test_peers_bench_times_every_side_and_prints_ratios():
    pytest.importorskip("evojax")
    r = peers.bench_setup(peers.Setup("static", (4,), 4, 1), reps=1)
    med = r["median_s"]
    assert set(med) == {"toolkit", "evojax", "expert"}
    assert r["toolkit/evojax"] == med["toolkit"] / med["evojax"]
    assert r["toolkit/expert"] == med["toolkit"] / med["expert"]
    line = peers._fmt(r)
    assert "static 4-4-2 4x1" in line and f"toolkit/evojax {r['toolkit/evojax']:.2f} (cpu" in line


def test_evojax_loop_learns_with_its_own_classes():
    """The EvoJAX side evaluates full episodes: scores are returns in [0, 500]."""
    pytest.importorskip("evojax")
    loop = peers.EvoJAXLoop(peers.Setup("abcd", (4,), 4, 2))
    scores = np.asarray(loop())
    assert scores.shape == (4,) and np.all((scores >= 8) & (scores <= 500))


def test_bench_peers_without_evojax_is_one_line_and_exit_2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "evojax", None)  # import evojax raises ImportError
    out = tmp_path / "b.json"
    res = CliRunner().invoke(cli, ["bench", "--peers", "--json", str(out)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "EvoJAX" in lines[0] and "peers" in lines[0]
    assert not out.exists()


def test_large_genome_shards_keep_the_plastic_state_in_cache():
    from evoplastic.studies import bench

    budget = bench.LARGE_SHARD_BYTES // bench.LARGE_BYTES_PER_SYNAPSE
    for synapses in (19_872, 199_800, 1_000_000, 10 * budget):
        size = bench.large_shard_size(synapses, 256)
        assert size >= 1 and size & (size - 1) == 0  # a power of two
        assert size == 1 or size * synapses <= budget < 2 * size * synapses
    assert bench.large_shard_size(10, 256) == 256  # never more than the population


def test_bench_large_reports_growth_against_the_smallest_genome():
    from evoplastic.studies import bench

    rows = bench.bench_large(
        reps=1, echo=lambda *_: None, hidden=(4, 8), strategies=("open_es",), population=4, steps=3
    )
    small, big = rows
    for r, h in ((small, 4), (big, 8)):
        assert r["synapses"] == 4 * h + h * h + 2 * h
        assert r["genome"] == 5 * r["synapses"]  # A, B, C, D, eta per synapse
    assert big["genome_growth"] == big["genome"] / small["genome"]
    assert big["time_growth"] == big["gen_median_s"] / small["gen_median_s"]
    assert big["memory_growth"] > 1.0
