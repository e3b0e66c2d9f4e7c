"""The bandit task family, the modulated plastic agent and the bandit baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoplastic import rules, tasks
from evoplastic.analysis import bandit_baselines
from evoplastic.config import ConfigError, parse
from evoplastic.experiment import build
from evoplastic.networks import ModulatedRecurrentNetwork

NET = {"kind": "modulated_recurrent", "hidden": [6], "lr": 1.0, "w_clip": 1.0}


def _family(modulation="network", plastic=True, **params):
    net = NET | {"modulation": modulation, "plastic": {"enabled": plastic}}
    return tasks.make("bandit", network=net, **params)


def _agent(family, terms=("mod*pre*post",), **part_values):
    rule = rules.with_parts(
        rules.polynomial(terms, init={t: 1.0 for t in terms}), family.network.genome_parts()
    )
    genome = rule.init(jax.random.PRNGKey(3))
    genome = genome | {k: jnp.full_like(genome[k], v) for k, v in part_values.items()}
    return rule, genome


def test_episodes_split_and_pay_by_their_probabilities():
    family = _family(arms=3, pulls=4000)
    key = jax.random.PRNGKey(0)
    train, test = family.sample(key, "train"), family.sample(key, "test")
    assert not np.allclose(train.probs, test.probs)
    assert np.all((test.probs >= 0) & (test.probs <= 1))
    for a in range(3):
        rewards = jax.vmap(lambda t, a=a: family.reward(test, t, a))(jnp.arange(4000))
        assert abs(float(rewards.mean()) - float(test.probs[a])) < 0.03
    gym = _family(env="BernoulliBandit-misc")
    probs = np.stack([gym.sample(jax.random.PRNGKey(i), "test").probs for i in range(20)])
    np.testing.assert_allclose(np.sort(probs, axis=1), [[0.1, 0.9]] * 20, atol=1e-6)
    assert 0 < np.mean(probs[:, 0] > 0.5) < 1  # which arm pays is drawn per episode


def test_ucb1_and_thompson_beat_uniform_pulls_and_their_regret_grows_sublinearly():
    """On the same held-out bandits UCB1 and Thompson sampling have far less regret than
    uniform pulls, and four times the pulls cost UCB1 less than three times the regret
    (uniform pulls: four times)."""
    out = {}
    for pulls, algorithms in ((100, bandit_baselines.ALGORITHMS), (400, ("ucb1", "uniform"))):
        family = tasks.make("bandit", arms=2, pulls=pulls)
        raw = bandit_baselines.evaluate(family, 200, algorithms)
        out[pulls] = {k: float(np.mean(v["regret"])) for k, v in raw.items()}
    short, long = out[100], out[400]
    assert short["ucb1"] < 0.5 * short["uniform"]
    assert short["thompson"] < short["ucb1"]  # Thompson's known edge on Bernoulli arms
    assert long["ucb1"] < 3.0 * short["ucb1"]
    assert long["uniform"] == pytest.approx(4.0 * short["uniform"], rel=0.15)


def test_bad_bandits_are_refused_in_one_line():
    for params in ({"arms": 1}, {"pulls": 0}, {"env": "GaussianBandit"}):
        with pytest.raises(ValueError, match=r"^task\.\w+: "):
            tasks.make("bandit", **params)
    with pytest.raises(ValueError, match="2 arms"):
        tasks.make("bandit", arms=3, env="BernoulliBandit-misc")
    with pytest.raises(ValueError, match="network.plastic.gain"):
        _family(plastic=True).network.from_options({"plastic": {"gain": 1}}, 4, 2)


def test_traces_change_only_when_the_network_releases_its_modulator():
    """With the rule ``mod*pre*post``, a modulatory neuron held at zero leaves every trace
    at zero through an episode; released (bias 1), the traces change. Without a modulator
    the same rule does nothing; without plasticity the traces are never touched."""
    family = _family(arms=2, pulls=30)
    task = family.sample(jax.random.PRNGKey(1), "test")
    for b_mod, changes in ((0.0, False), (1.0, True)):
        rule, genome = _agent(family, w_mod=0.0, b_mod=b_mod, alpha=0.5)
        _, _, mod, hebb = family.run(rule, genome, task)
        np.testing.assert_allclose(mod, np.tanh(b_mod), rtol=1e-6)
        assert (float(hebb[-1]) > 0) == changes
    for fam in (_family(modulation="none"), _family(plastic=False)):
        rule, genome = _agent(fam)
        _, _, _, hebb = fam.run(rule, genome, fam.sample(jax.random.PRNGKey(1), "test"))
        assert np.all(np.asarray(hebb) == 0)


def test_modulated_trace_update_is_local():
    """With the activities, input and modulator given, the change of trace ``[i, j]``
    depends on no other synapse's trace (Jacobian of the rule's update as the network
    calls it), and it is ``mod * pre[j] * post[i]``."""
    net = ModulatedRecurrentNetwork(n_in=4, n_out=2, hidden=3)
    rule = rules.with_parts(rules.polynomial(("mod*pre*post", "w")), net.genome_parts())
    genome = rule.init(jax.random.PRNGKey(0)) | {"rule": jnp.array([0.7, -0.2])}
    z = jnp.array([1.0, 0.0, 1.0, 0.3, 0.2, -0.5, 0.9])
    h = jnp.array([0.1, -0.4, 0.8])

    def new_hebb(hebb, mod):
        sig = rules.Signals(pre=z, post=h, w=hebb, mod=mod)
        return hebb + rule.update(rule.select(genome, 0), sig)

    hebb = jax.random.normal(jax.random.PRNGKey(1), (3, 7))
    jac = np.asarray(jax.jacobian(new_hebb)(hebb, 0.5)).reshape(21, 21)
    np.testing.assert_allclose(jac, np.eye(21) * 0.8, atol=1e-6)  # 1 - 0.2, own synapse
    np.testing.assert_allclose(
        new_hebb(hebb, 0.5) - 0.8 * hebb, 0.7 * 0.5 * np.outer(h, z), atol=1e-6
    )


def test_network_modulation_option_and_parts():
    full = _family(arms=5).network
    assert {"alpha", "w_mod", "b_mod"} <= set(full.genome_parts())
    memory = _family(arms=5, modulation="none", plastic=False).network
    assert not {"alpha", "w_mod", "b_mod"} & set(memory.genome_parts())
    assert memory.n_in == full.n_in == 5 + 3 and memory.n_out == 5
    with pytest.raises(ConfigError, match="network.kind"):
        build(parse({"task": {"name": "bandit"}, "network": {"kind": "layered"}}))


def test_evolution_lowers_the_regret_of_the_modulated_agent(tmp_path):
    """Forty generations of OpenAI-ES take the agent from uniform-like regret (the search's
    initial draw, "random") to well below it on held-out bandits; UCB1 and Thompson are
    listed beside it."""
    from evoplastic import run

    cfg = {
        "seed": 0,
        "generations": 40,
        "task": {"name": "bandit", "arms": 2, "pulls": 50},
        "network": NET | {"modulation": "network", "hidden": [6]},
        "rule": {"name": "polynomial", "terms": ["mod*pre*post"], "init": {"mod*pre*post": 1.0}},
        "strategy": {
            "name": "open_es",
            "population_size": 32,
            "std_init": 0.05,
            "optimizer": {"name": "adam", "learning_rate": 0.05},
        },
        "evaluation": {"instances": 16, "common_instances": True},
        "test": {"every": 0, "instances": 8, "final_instances": 100},
    }
    ev = run(cfg, tmp_path / "run")["eval"]["trained"]
    evolved = ev["evolved"]["regret"]["mean"]
    assert ev["random"]["regret"]["mean"] > 0.8 * ev["uniform"]["regret"]["mean"]
    assert evolved < 0.75 * ev["uniform"]["regret"]["mean"]
    assert evolved < 0.75 * ev["random"]["regret"]["mean"]
    assert {"ucb1", "thompson", "uniform"} <= set(ev)


def test_metamaze_episodes_have_their_own_reward_place_and_pay_per_reward():
    family = tasks.make(
        "metamaze", network=NET | {"modulation": "network", "hidden": [4]}, max_steps=100
    )
    assert family.network.n_in == 16 and family.network.n_out == 4
    env, params = tasks.metamaze._env()
    goals = {
        tuple(
            np.asarray(
                env.reset_env(family.sample(jax.random.PRNGKey(i), s).reset_key, params)[1].goal
            )
        )
        for i in range(10)
        for s in ("train", "test")
    }
    assert len(goals) > 5  # the reward's place is drawn per episode
    rule, genome = _agent(family)
    evaluate = jax.jit(
        jax.vmap(lambda k: family.inner_loop(rule, genome, family.sample(k, "test"))[1])
    )
    m = evaluate(jax.random.split(jax.random.PRNGKey(0), 64))
    np.testing.assert_allclose(m["return"], params.reward * m["rewards"])
    assert 0 < float(m["rewards"].mean()) < 5  # a random agent stumbles on it now and then
    with pytest.raises(ValueError, match="task.max_steps"):
        tasks.make("metamaze", max_steps=0)
