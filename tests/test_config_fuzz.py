"""Property-based tests: any malformed config is one clear line with exit status 2.

The CLI reads a config with :func:`config.load` (YAML, then :func:`config.parse`) and
builds it (:func:`build`) before anything is written; every failure on the way must be a
``ConfigError``. Hypothesis drives the same functions in process (fast); two subprocess
runs check the real command.
"""

import copy
import dataclasses
import os
import tempfile
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evoplastic import build, config, meta
from evoplastic.config import ConfigError

from .conftest import run_cli, small_config

# values of every type YAML can hold, in and out of range
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["pca", "cma_es", "ray", "local", "linear", "adam", "pkg.mod:fn", "a:b"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)

SECTIONS = {f.name: f for f in dataclasses.fields(config.Config)}  # the top-level keys


def _keys(section: str) -> list[str]:
    """The valid keys of a section (some of them, for the dict sections)."""
    if section in ("task", "rule"):
        return ["name", "dim", "steps", "noise_eig_max", "terms", "genome", "scale_min"]
    tp = typing.get_type_hints(config.Config).get(section)
    if tp is not None and dataclasses.is_dataclass(tp):
        return [f.name for f in dataclasses.fields(tp)]
    return []


@st.composite
def mutated_configs(draw):
    """A valid small config with a few keys set to random values, or random keys added."""
    data = copy.deepcopy(small_config())
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(SECTIONS) + ["unknown_top"]))
        keys = _keys(section)
        if keys and draw(st.booleans()):
            node = data.get(section)
            if not isinstance(node, dict):
                node = data[section] = {}
            key = draw(st.sampled_from(keys + ["bogus_key"]))
            node[key] = draw(values)
        else:
            data[section] = draw(values)
    return data


TERMS = ["pre*post", "post^2*w", "w", "post", "1", "pre", "err*pre", "mod"]
BAD_VALUES = st.one_of(
    st.integers(-3, 0), st.floats(-10.0, 0.0), st.sampled_from([1e9, "x", "", "pre^^2", None])
)


@st.composite
def typed_configs(draw):
    """Well-typed configs that mostly parse (some fields perturbed out of range), to
    exercise build(): strategies, strategy params, rules, terms, gradient optimizers."""
    data = copy.deepcopy(small_config())
    names = sorted(meta.STRATEGIES) + sorted(meta.TRUNCATED_STRATEGIES)
    data["strategy"] = {
        "name": draw(st.sampled_from(names)),
        "population_size": draw(st.integers(1, 24)),
        "std_init": draw(st.floats(1e-3, 10.0)),
        "params": draw(
            st.dictionaries(
                st.sampled_from(["std_init", "c_mean", "lr", "T", "K", "x"]),
                st.floats(-1.0, 2.0),
                max_size=1,
            )
        ),
    }
    data["rule"] = {
        "name": draw(st.sampled_from(["polynomial", "polynomial", "mlp", "abcd", "hebb"])),
    }
    if data["rule"]["name"] == "polynomial":
        data["rule"]["terms"] = draw(st.lists(st.sampled_from(TERMS), min_size=1, max_size=4))
    data["task"] = {
        "name": "pca",
        "dim": draw(st.integers(2, 5)),
        "steps": draw(st.sampled_from([4, 8, 16])),
        "noise_eig_max": draw(st.floats(0.0, 0.9)),
    }
    data["evaluation"] = {
        "instances": draw(st.integers(1, 3)),
        "shard_size": draw(st.one_of(st.none(), st.integers(1, 30))),
    }
    data["meta"] = {
        "optimizer": draw(st.sampled_from(["es", "es", "gradient"])),
        "truncation": draw(st.sampled_from([0, 0, 2, 4])),
        "gradient": {
            "optimizer": {
                "name": draw(st.sampled_from(["adam", "sgd", "lion", "nope"])),
                "learning_rate": draw(st.floats(1e-4, 1.0)),
            },
            "remat": draw(st.sampled_from(["none", "step", "nested"])),
        },
    }
    if draw(st.booleans()):  # one field out of range or of a wrong value
        path = draw(
            st.sampled_from(
                [
                    ("strategy", "population_size"),
                    ("strategy", "std_init"),
                    ("task", "dim"),
                    ("task", "noise_eig_max"),
                    ("evaluation", "shard_size"),
                    ("meta", "truncation"),
                    ("rule", "name"),
                    ("strategy", "name"),
                ]
            )
        )
        data[path[0]][path[1]] = draw(BAD_VALUES)
    return data


def _cli_path(data) -> str:
    """What `evoplastic run` does before a run directory exists: parse, then build."""
    try:
        cfg = config.parse(data)
    except ConfigError as err:
        return str(err)
    try:
        build(cfg, check=True)
    except ConfigError as err:
        return str(err)
    return ""


def _one_line(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "\n" not in message, message
    assert "Traceback" not in message


FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FAST
@given(values)
def test_any_value_as_a_whole_config_is_valid_or_one_config_error(data):
    try:
        config.parse(data)
    except ConfigError as err:
        _one_line(str(err))


@FAST
@given(mutated_configs())
def test_mutated_configs_parse_or_fail_with_one_line(data):
    try:
        config.parse(copy.deepcopy(data))
    except ConfigError as err:
        _one_line(str(err))


BUILD = settings(max_examples=25, deadline=None, derandomize=True, database=None)


@BUILD
@given(typed_configs())
def test_typed_configs_out_of_range_build_or_fail_with_one_line(data):
    """Parsing and building (strategies, rules, tasks) never raise anything else."""
    message = _cli_path(yaml.safe_load(yaml.safe_dump(data)))  # what a YAML file can hold
    if message:
        _one_line(message)


@FAST
@given(st.text(max_size=60), st.lists(st.text(max_size=20), max_size=2))
def test_any_file_text_and_overrides_load_or_fail_with_one_line(text, overrides):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cfg.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            config.load(path, tuple(overrides))
        except ConfigError as err:
            _one_line(str(err))


@pytest.mark.parametrize(
    "text, message",
    [
        ("generations: [1, 2\nseed: 0\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping at the top level"),
    ],
)
def test_cli_subprocess_malformed_file_is_one_line_exit_2(text, message, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    proc = run_cli("run", path, "--out", tmp_path / "run")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


NESTED_PATHS = [
    ("meta", "gradient", "optimizer"),
    ("strategy", "optimizer"),
    ("test", "variants", "dim_x5"),
    ("strategy", "params"),
    ("strategy", "options"),
    ("ray",),
    ("evaluation",),
]
OPTAX_KEYS = ["name", "learning_rate", "b1", "b2", "eps", "weight_decay", "momentum", "nesterov"]
NESTED_KEYS = OPTAX_KEYS + ["dim", "steps", "scale_min", "scale_max", "workers", "shard_size"]
nested_values = st.one_of(
    values,
    st.sampled_from(["adam", "adamw", "sgd", "lion", "adamx", "1e-3", "3e-2", ".5", "1e400"]),
    st.floats(-1e3, 1e3),
)


@st.composite
def nested_configs(draw):
    """A valid small config with one nested section (optimizers, test variants, strategy
    params, ...) filled with keys that belong there and values of any type and range."""
    data = copy.deepcopy(small_config())
    data["meta"] = {"optimizer": draw(st.sampled_from(["es", "gradient"]))}
    path = draw(st.sampled_from(NESTED_PATHS))
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    section = (
        {"name": draw(st.sampled_from(["adam", "adamw", "sgd"]))} if "optimizer" in path else {}
    )
    for _ in range(draw(st.integers(1, 3))):
        section[draw(st.sampled_from(NESTED_KEYS))] = draw(nested_values)
    node[path[-1]] = section if draw(st.integers(0, 9)) else draw(values)
    return data


NESTED = settings(max_examples=200, deadline=None, derandomize=True, database=None)


def _use_what_was_accepted(data) -> None:
    """Use the nested sections of an accepted config as a run would, after its directory
    exists: step its optimizers once, sample an instance of each test variant."""
    import jax
    import numpy as np

    from evoplastic.meta import gradient, strategies

    cfg = config.parse(data)
    exp = build(cfg, check=True)
    zeros = np.zeros(3, np.float32)
    specs = [gradient.make_optimizer(cfg.meta.gradient.optimizer, cfg.meta.gradient.clip_norm)]
    if cfg.strategy.optimizer is not None:
        specs.append(strategies.make_optimizer(cfg.strategy.optimizer))
    for tx in specs:
        updates, _ = tx.update(zeros + 1, tx.init(zeros), zeros)
        assert np.all(np.isfinite(np.asarray(updates)))
    for overrides in cfg.test.variants.values():
        family = exp.family_variant(**overrides)
        jax.block_until_ready(family.sample(jax.random.key(0), "test"))


@NESTED
@given(nested_configs())
def test_nested_sections_parse_and_build_or_fail_with_one_line(data):
    """Whatever a nested section holds, parse + build either fail with one ConfigError line
    or give a config whose nested sections then work (nothing fails after the run starts)."""
    data = config.safe_load(yaml.safe_dump(data))
    message = _cli_path(data)
    if message:
        _one_line(message)
    else:
        _use_what_was_accepted(data)
