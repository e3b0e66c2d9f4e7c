"""``evoplastic eval --sweep``: one task parameter swept, a table, JSON and a figure."""

import json

import jax.numpy as jnp
import pytest

from evoplastic.analysis import evaluation
from evoplastic.config import ConfigError

from .conftest import small_config
from .rundirs import fake_run
from .test_plots import call


@pytest.fixture
def oja_run(tmp_path):
    """A pca run whose rule is exactly Oja's (terms pre*post, post^2*w, w, post)."""
    run_dir = tmp_path / "run"
    fake_run(run_dir, small_config(), jnp.array([1.0, -1.0, 0.0, 0.0]))
    return run_dir


def test_sweep_evaluates_every_value_and_draws_the_figure(oja_run, tmp_path, capsys):
    """The run's rule and every baseline at every value, a table and a figure; ``--also
    RUN`` adds another run's rule (here Hebb's, ``dw = pre*post``), alone, at every value."""
    hebb = tmp_path / "hebb"
    fake_run(hebb, small_config(), jnp.array([1.0, 0.0, 0.0, 0.0]))
    figure = tmp_path / "dims.png"
    argv = ["eval", str(oja_run), "--sweep", "dim=3,6", "--instances", "6", "--json"]
    assert call([*argv, "--also", str(hebb), "--plot", str(figure)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sweep"] == "task.dim" and list(report["values"]) == ["3", "6"]
    also = f"evolved ({hebb})"
    for value in ("3", "6"):
        rules = report["values"][value]
        assert list(rules)[0] == "evolved" and rules["evolved"]["loss"]["n"] == 6
        assert rules[also]["loss"]["n"] == 6
        # the run's rule is Oja's and the other run's Hebb's: at every value each scores
        # what the fixed rule scores on the same instances
        for name, fixed in (("evolved", "oja"), (also, "hebb")):
            for stat in ("mean", "median"):
                assert rules[name]["alignment"][stat] == pytest.approx(
                    rules[fixed]["alignment"][stat], abs=1e-5
                )
        assert rules[also]["alignment"]["mean"] != rules["evolved"]["alignment"]["mean"]
    # the task really changed between values (a 3-dim and a 6-dim problem differ)
    assert report["values"]["3"]["random"]["loss"] != report["values"]["6"]["random"]["loss"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table the command prints without --json: a row per rule, a column per value
    columns, rows = evaluation.sweep_table("task.dim", report["values"])
    assert columns == ["rule", "dim=3 loss", "dim=6 loss", "diverged", "keeps learning"]
    assert also in [row[0] for row in rows]
    oja = next(row for row in rows if row[0] == "oja")
    loss = report["values"]["6"]["oja"]["loss"]
    assert oja[2] == f"{loss['mean']:.4g} ± {loss['ci95']:.2g}" and oja[3] == "0"
    # keeps learning: nothing diverged and the loss at every later value at most the first's
    for name, keeps in report["keeps_learning"].items():
        losses = [report["values"][v][name]["loss"] for v in ("3", "6")]
        want = all(x["nonfinite"] == 0 for x in losses) and losses[1]["mean"] <= losses[0]["mean"]
        assert keeps == want, name
        assert next(row for row in rows if row[0] == name)[-1] == ("yes" if want else "no")
    assert set(report["keeps_learning"].values()) == {True, False}  # both verdicts occur


def test_no_baselines_evaluates_the_rules_alone(oja_run, tmp_path, capsys):
    """``--no-baselines``: the run's rule and ``--also``'s, nothing else, same figures."""
    hebb = tmp_path / "hebb"
    fake_run(hebb, small_config(), jnp.array([1.0, 0.0, 0.0, 0.0]))
    argv = ["eval", str(oja_run), "--sweep", "dim=3,6", "--instances", "6", "--json"]
    assert (
        call([*argv, "--also", str(hebb), "--no-baselines", "--plot", str(tmp_path / "a.png")]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    for value in ("3", "6"):
        assert list(report["values"][value]) == ["evolved", f"evolved ({hebb})"]
    assert call(["eval", str(oja_run), "--instances", "6", "--json", "--no-baselines"]) == 0
    alone = json.loads(capsys.readouterr().out)["rules"]
    assert list(alone) == ["evolved"] and alone["evolved"]["loss"]["n"] == 6


def test_also_without_a_sweep_adds_each_rule_on_the_same_changed_task(oja_run, tmp_path, capsys):
    """``eval RUN TASK_PARAM=V --also RUN2``: RUN2's rule, carried to the same changed task,
    scored on the same instances as RUN's rule and the baselines (one table for several
    seeds' rules)."""
    hebb = tmp_path / "hebb"
    fake_run(hebb, small_config(), jnp.array([1.0, 0.0, 0.0, 0.0]))
    argv = ["eval", str(oja_run), "dim=6", "--instances", "6", "--json", "--also", str(hebb)]
    assert call(argv) == 0
    report = json.loads(capsys.readouterr().out)
    rules = report["rules"]
    also = f"evolved ({hebb})"
    assert list(rules)[0] == "evolved" and list(rules)[-1] == also and "oja" in rules
    for name, fixed in (("evolved", "oja"), (also, "hebb")):
        assert rules[name]["alignment"]["n"] == 6
        for stat in ("mean", "median"):
            assert rules[name]["alignment"][stat] == pytest.approx(
                rules[fixed]["alignment"][stat], abs=1e-5
            )
    assert call([*argv, "--no-baselines"]) == 0
    alone = json.loads(capsys.readouterr().out)["rules"]
    assert list(alone) == ["evolved", also]
    assert alone[also]["alignment"] == pytest.approx(rules[also]["alignment"])
    # the override reaches the other run too: at dim 3 its figures differ
    assert (
        call(
            [
                "eval",
                str(oja_run),
                "dim=3",
                "--instances",
                "6",
                "--json",
                "--also",
                str(hebb),
                "--no-baselines",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["rules"][also] != alone[also]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--also", "/nonexistent"], "/nonexistent"),
        (["--also", "/nonexistent", "dim=6"], "/nonexistent"),
        (["--sweep", "dim=4,8", "--also", "/nonexistent"], "/nonexistent"),
        (["--sweep", "dim=4"], "two values at least"),
        (["--sweep", "dim"], "expected TASK_PARAM=V1,V2"),
        (["--sweep", "dimm=4,8"], "task.dimm: unknown key"),
        (["--sweep", "dim=4,-1"], "task.dim"),
        (["--plot", "x.png"], "--plot goes with a sweep"),
        (["--sweep", "dim=4,8", "--plot", "/nonexistent/x.png"], "does not exist"),
    ],
)
def test_bad_sweeps_are_one_line_and_write_nothing(oja_run, argv, message, capsys):
    before = sorted(p.name for p in oja_run.iterdir())
    assert call(["eval", str(oja_run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in oja_run.iterdir()) == before


def test_parse_sweep():
    assert evaluation.parse_sweep("shots=5, 10,20") == ("task.shots", ["5", "10", "20"])
    assert evaluation.parse_sweep("task.epochs=1,2") == ("task.epochs", ["1", "2"])
    with pytest.raises(ConfigError):
        evaluation.parse_sweep("=1,2")
