import pytest
import yaml

from evoplastic import build, config
from evoplastic.config import ConfigError

from .conftest import small_config


def test_defaults_fill_in_and_round_trip():
    cfg = config.parse(small_config())
    assert cfg.network.lr == 0.1 and cfg.evaluation.common_instances is True
    again = config.parse(__import__("yaml").safe_load(config.dump(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"generatons": 3}, r"^generatons: unknown key \(did you mean 'generations'\?\)$"),
        (
            {"strategy": {"populaton_size": 3}},
            r"strategy.populaton_size: unknown key.*population_size",
        ),
        ({"task": {"name": "pca", "dimm": 3}}, r"task.dimm: unknown key.*'dim'"),
        ({"generations": "ten"}, r"^generations: expected an integer, got 'ten'$"),
        ({"generations": 2.5}, r"^generations: expected an integer"),
        ({"generations": 0}, r"^generations: must be > 0, got 0$"),
        ({"strategy": {"population_size": -4}}, r"^strategy.population_size: must be > 0"),
        ({"strategy": {"std_init": 0}}, r"^strategy.std_init: must be > 0"),
        (
            {"evaluation": {"common_instances": "yes"}},
            r"evaluation.common_instances: expected true or false",
        ),
        ({"task": {"name": "pcaa"}}, r"^task.name: unknown task 'pcaa' \(did you mean 'pca'\?\)$"),
        ({"task": {"name": "pca", "dim": 0}}, r"^task.dim: must be > 0"),
        ({"rule": {"name": "polynomal"}}, r"rule.name: unknown rule.*'polynomial'"),
        ({"network": {"activation": "sigmoid"}}, r"network.activation: unknown activation"),
        ({"network": {"lr": -1.0}}, r"network.lr: must be > 0"),
        ({"backend": "rayy"}, r"^backend: unknown backend"),
        ({"test": {"variants": {"big": {"dimx": 40}}}}, r"test.variants.big.dimx: unknown key"),
        ({"rule": {"name": "polynomial", "terms": "pre*post"}}, r"rule.terms: expected a list"),
        (
            {"evaluation": {"matmul_precision": "tf32"}},
            r"^evaluation.matmul_precision: unknown precision 'tf32'.*\(one of float32, ",
        ),
    ],
)
def test_bad_values_name_the_field(sections, message):
    with pytest.raises(ConfigError, match=message):
        config.parse(small_config(**sections))


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"strategy": {"name": "cmaes"}},
            r"^strategy.name: unknown strategy 'cmaes' \(did you mean 'cma_es'\?\)$",
        ),
        (
            {"strategy": {"name": "open_es", "population_size": 7}},
            r"^strategy.population_size: open_es: .*even",
        ),
        ({"strategy": {"params": {"c_mena": 1}}}, r"^strategy.params.c_mena: .*'c_mean'"),
        (
            {"rule": {"name": "polynomial", "terms": ["pre*post", "psot"]}},
            r"^rule.terms: term 'psot': unknown signal",
        ),
        (
            {"rule": {"name": "polynomial", "terms": ["pre*post", "post*pre"]}},
            r"^rule.terms: .*twice",
        ),
    ],
)
def test_build_errors_name_the_field(sections, message):
    with pytest.raises(ConfigError, match=message):
        build(config.parse(small_config(**sections)))


def test_fixed_rule_cannot_be_evolved():
    data = small_config()
    data["rule"] = {"name": "oja"}
    with pytest.raises(ConfigError, match=r"^rule.name: 'oja' is a fixed rule"):
        build(config.parse(data))


def test_overrides():
    data = small_config()
    config.set_override(data, "strategy.population_size=32")
    config.set_override(data, "test.variants={x5: {dim: 20}}")
    config.set_override(data, "rule.terms=[pre*post, w]")
    cfg = config.parse(data)
    assert cfg.strategy.population_size == 32
    assert cfg.test.variants == {"x5": {"dim": 20}}
    assert cfg.rule["terms"] == ("pre*post", "w")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.set_override(data, "population_size")
    with pytest.raises(ConfigError, match="generations is not a section"):
        config.set_override(data, "generations.x=1")


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        config.load(bad)


def test_matmul_precision_is_set_by_build_and_left_out_of_the_digest():
    """float32 matrix products by default (a GPU would otherwise round them to TF32); the
    default leaves a run's checkpoint digest as it was before the field existed."""
    import jax

    try:
        build(config.parse(small_config(evaluation={"matmul_precision": "bfloat16"})))
        assert jax.config.jax_default_matmul_precision == "bfloat16"
        cfg = config.parse(small_config())
        build(cfg)
        assert jax.config.jax_default_matmul_precision == "float32"
        assert "matmul_precision" not in config.experiment_dump(cfg)
        other = config.parse(small_config(evaluation={"matmul_precision": "default"}))
        assert "matmul_precision: default" in config.experiment_dump(other)
    finally:
        jax.config.update("jax_default_matmul_precision", "float32")


def test_yaml_1_2_numbers_in_files_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("network: {lr: 1e-3}\nstrategy: {std_init: 5E-1}\ngenerations: 3\n")
    data = config.load_data(path, ("evaluation.instances=4", "network.w_init_norm=2e+0"))
    assert data["network"] == {"lr": 0.001, "w_init_norm": 2.0}
    assert data["strategy"]["std_init"] == 0.5
    assert config.safe_load("a: 1e3\nb: '1e3'\nc: 7\nd: 1.5\ne: e3\n") == {
        "a": 1000.0,
        "b": "1e3",
        "c": 7,
        "d": 1.5,
        "e": "e3",
    }


@pytest.mark.parametrize(
    "path, spec, message",
    [
        ("meta.gradient.optimizer", {"name": "adamw", "learning_rate": "x"}, "expected a number"),
        ("meta.gradient.optimizer", {"name": "adamw", "lr": 0.1}, "not an argument of optax.adamw"),
        ("meta.gradient.optimizer", {"name": "adamx", "learning_rate": 0.1}, "did you mean"),
        ("meta.gradient.optimizer", {"name": "sgd", "learning_rate": -1.0}, "must be >= 0"),
        ("meta.gradient.optimizer", {"name": "adam"}, "rejects these arguments"),
        ("strategy.optimizer", {"name": "adam", "learning_rate": 0.1, "b1": [1]}, "a number"),
        ("strategy.optimizer", {"name": "sgd", "learning_rate": 0.1, "nesterov": 1}, "true or"),
        (
            "meta.gradient.optimizer",
            {"name": "adam", "learning_rate": {"schedule": "cosine", "init_value": 0.1}},
            r"learning_rate.schedule: expected an optax schedule .*cosine_decay_schedule",
        ),
        (
            "meta.gradient.optimizer",
            {"name": "adam", "learning_rate": {"schedule": "cosine_decay_schedule", "x": 1}},
            "learning_rate.x: not an argument of optax.cosine_decay_schedule",
        ),
        (
            "meta.gradient.optimizer",
            {"name": "adam", "learning_rate": {"schedule": "constant_schedule", "value": -1}},
            "rate at step 0 must be finite and >= 0",
        ),
    ],
)
def test_optimizer_sections_are_checked_before_use(path, spec, message):
    data = small_config(meta={"optimizer": "gradient"})
    node = data
    for key in path.split(".")[:-1]:
        node = node.setdefault(key, {})
    node[path.split(".")[-1]] = spec
    with pytest.raises(ConfigError, match=message) as err:
        config.parse(data)
    assert str(err.value).startswith(path)


def test_a_learning_rate_schedule_sets_each_steps_rate():
    """``learning_rate: {schedule: cosine_decay_schedule, ...}``: SGD's steps follow the
    schedule (0.1 at step 0, half of it halfway, 0 at the end)."""
    import jax.numpy as jnp

    from evoplastic.meta.strategies import make_optimizer

    spec = {"schedule": "cosine_decay_schedule", "init_value": 0.1, "decay_steps": 10}
    config.parse(small_config(meta={"optimizer": "gradient", "gradient": {
        "optimizer": {"name": "sgd", "learning_rate": spec}}}))  # fmt: skip
    tx = make_optimizer({"name": "sgd", "learning_rate": spec})
    state, steps = tx.init(jnp.zeros(1)), []
    for _ in range(11):
        update, state = tx.update(jnp.ones(1), state)
        steps.append(-float(update[0]))
    assert steps[0] == pytest.approx(0.1) and steps[5] == pytest.approx(0.05)
    assert steps[10] == pytest.approx(0.0, abs=1e-9)


def test_test_variants_are_checked_like_the_task():
    with pytest.raises(ConfigError, match=r"^test.variants.big.dim: must be > 0, got -7$"):
        config.parse(small_config(test={"variants": {"big": {"dim": -7}}}))
    with pytest.raises(ConfigError, match=r"^test.variants.w.scale_min: must be <= scale_max"):
        config.parse(small_config(test={"variants": {"w": {"scale_min": 3.0, "scale_max": 2.0}}}))


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "meta.gradient.optimizer={name: adamw, learning_rate: 1e-3, b2: high}",
            "error: meta.gradient.optimizer.b2: expected a number, got 'high'",
        ),
        ("test.variants.dim_x5.dim=-7", "error: test.variants.dim_x5.dim: must be > 0, got -7"),
    ],
)
def test_cli_nested_errors_are_one_line_exit_2_nothing_written(override, message, tmp_path):
    from .conftest import cli_here

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(small_config(meta={"optimizer": "gradient"})))
    out = cli_here("run", cfg, override, "--out", tmp_path / "run", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == message
    assert not (tmp_path / "run").exists()
