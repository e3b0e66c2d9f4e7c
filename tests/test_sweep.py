"""Seeds and sweeps: the grid, its run directories and index, and report's seed aggregates."""

import json
import re

import pytest
import yaml

from evoplastic import sweep
from evoplastic.config import ConfigError

from .conftest import cli_here, run_cli, small_config


def test_seeds_and_sweep_values_parse():
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("3,1,2-3") == [3, 1, 2]
    for bad in ("4-0", "a", "1-", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            sweep.parse_seeds(bad)
    axes = sweep.parse_sweep(
        [
            "strategy.name=cma_es,open_es",
            "meta.gradient.optimizer={name: sgd, learning_rate: 1e-2},"
            "{name: adam, learning_rate: 1}",
        ]
    )
    assert axes[0] == ("strategy.name", ["cma_es", "open_es"])
    assert axes[1][1] == [
        {"name": "sgd", "learning_rate": 0.01},
        {"name": "adam", "learning_rate": 1},
    ]
    for bad in (["strategy.name"], ["seed=1,2"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError, match="--sweep"):
            sweep.parse_sweep(bad)
    points = sweep.grid([0, 1], axes[:1])
    assert [p["name"] for p in points] == [
        "name=cma_es,seed=0",
        "name=cma_es,seed=1",
        "name=open_es,seed=0",
        "name=open_es,seed=1",
    ]


def _mean(run_dir, metric):
    ev = json.loads((run_dir / "eval.json").read_text())
    return ev["trained"]["evolved"][metric]["mean"]


def test_run_seeds_and_sweep_then_report_aggregates_over_seeds(tmp_path, write_config):
    cfg = write_config(small_config(generations=2, test={"every": 0, "final_instances": 8}))
    out = tmp_path / "sweep"
    res = cli_here(
        "run",
        cfg,
        "--seeds",
        "0-1",
        "--sweep",
        "strategy.name=cma_es,open_es",
        "--out",
        out,
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    index = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in index["points"]] == ["done"] * 4
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == sorted(p["dir"] for p in index["points"])
    for p in index["points"]:
        text = (out / p["dir"] / "config.yaml").read_text()
        assert f"seed: {p['seed']}" in text and f"name: {p['overrides']['strategy.name']}" in text
    report = cli_here("report", out)
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if "| trained |" in line]
    evolved = [r for r in rows if "| polynomial |" in r]
    assert len(evolved) == 4 + 2  # one per run, one per strategy over its two seeds
    aggregate = next(r for r in evolved if "name=cma_es (seeds 0, 1)" in r)
    metric = aggregate.split("|")[5].strip()
    shown = float(re.search(r"\| ([-\d.e+]+) ± ", aggregate).group(1))
    runs = [out / p["dir"] for p in index["points"] if p["overrides"]["strategy.name"] == "cma_es"]
    expected = sum(_mean(d, metric) for d in runs) / 2
    assert shown == pytest.approx(expected, rel=1e-3)
    assert all(f"| {p['dir']} |" in report.stdout for p in index["points"])


def test_a_bad_point_is_one_line_and_writes_nothing(tmp_path, write_config):
    cfg = write_config(small_config())
    out = tmp_path / "sweep"
    res = cli_here("run", cfg, "--sweep", "strategy.population_size=8,0", "--out", out)
    assert res.returncode == 2 and not out.exists()
    assert res.stderr.strip() == (
        "error: sweep point population_size=0: strategy.population_size: must be > 0, got 0"
    )
    res = cli_here("run", cfg, "--seeds", "3-1", "--out", out)
    assert res.returncode == 2 and "--seeds: empty range" in res.stderr and not out.exists()


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path, write_config):
    cfg = write_config(small_config())
    res = cli_here("run", cfg, "generations=7", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "generations: 7" in res.stdout and "population_size: 8" in res.stdout
    res = cli_here("run", cfg, "--seeds", "0-2", "--dry-run", cwd=tmp_path)
    assert res.stdout.splitlines()[-1] == "3 runs"
    assert not (tmp_path / "runs").exists()


@pytest.mark.ray
@pytest.mark.slow  # its feature keeps a faster test in the default run
def test_sweep_on_ray_tasks_gives_the_local_runs(tmp_path, write_config):
    """The same two seeds as Ray tasks (a local Ray instance) and here: identical metrics."""
    pytest.importorskip("ray")
    cfg = write_config(small_config(generations=2, test={"every": 0, "final_instances": 4}))
    for on in ("local", "ray"):
        res = run_cli(
            "run",
            cfg,
            "--seeds",
            "0-1",
            "--sweep-on",
            on,
            "--out",
            tmp_path / on,
            "--quiet",
            timeout=900,
        )
        assert res.returncode == 0, res.stderr
    index = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert [p["status"] for p in index["points"]] == ["done", "done"]
    for p in index["points"]:
        metrics = [
            (tmp_path / on / p["dir"] / "metrics.jsonl").read_text() for on in ("local", "ray")
        ]
        rows = [[json.loads(x) for x in m.splitlines()] for m in metrics]
        keep = ("generation", "best_loss", "mean_loss", "median_loss")
        assert [[r[k] for k in keep] for r in rows[0]] == [[r[k] for k in keep] for r in rows[1]]


def test_report_bar_counts_the_runs_that_meet_it(tmp_path):
    """``report --bar``: each run's evolved held-out mean against the bar, and how many of
    the runs meet it; a malformed bar or a metric no run reports is one line (exit 2)."""
    means = {"s0": 480.0, "s1": 470.0, "s2": 500.0}
    for name, mean in means.items():
        d = tmp_path / name
        d.mkdir()
        cfg = {"name": "cp", "seed": int(name[1]), "task": {"name": "control", "env": "E"},
               "rule": {"name": "abcd"}, "strategy": {"name": "open_es"}}  # fmt: skip
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        stats = {"mean": mean, "ci95": 3.0, "median": mean, "n": 100}
        ev = {v: {"evolved": {"return": stats, "loss": dict(stats, mean=-mean)},
                  "random": {"return": dict(stats, mean=9.0)}}
              for v in ("trained", "inverted")}  # fmt: skip
        (d / "eval.json").write_text(json.dumps(ev))
    dirs = [tmp_path / n for n in means]
    out = cli_here("report", *dirs, "--bar", "return>=475")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert (
        "s1: return 470 ± 3 misses the bar" in lines and "s0: return 480 ± 3 meets the bar" in lines
    )
    assert lines[-1].startswith("2 of 3 runs meet return >= 475 (variant trained")
    out = cli_here("report", *dirs, "--bar", "loss < -490", "--variant", "inverted")
    assert out.stdout.splitlines()[-1].startswith("1 of 3 runs meet loss < -490 (variant inverted")
    for bar, message in (
        ("return=475", "is not METRIC OP NUMBER"),
        ("mse<3", "no run reports 'mse'"),
    ):
        out = cli_here("report", *dirs, "--bar", bar)
        assert out.returncode == 2 and out.stdout == "", out.stdout
        assert out.stderr.count("\n") == 1 and message in out.stderr


def test_report_train_last_lists_every_point_by_its_meta_training_loss(tmp_path):
    """``report --train-last N``: per run (every sweep point, failed ones too) the mean of
    the last N generations' meta-training loss (``median_loss``), the lowest in bold,
    instead of the held-out table; with --bar it is one line (exit 2)."""
    out = tmp_path / "sweep"
    curves = {  # point -> (median losses, status)
        "lr=0.1": ([9.0, 8.0, 5.0, 4.0, 3.0], "done"),
        "lr=0.3": ([9.0, 2.0, 1.0, 2.0, 1.5], "done"),
        "lr=1": ([9.0, 10.0, 10.0], "failed: SearchDiverged: generation 3: 20 steps"),
    }
    points = []
    for name, (losses, status) in curves.items():
        d = out / name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({"name": "x", "seed": 0}))
        lines = [
            {"generation": g, "median_loss": x, "mean_loss": 99.0} for g, x in enumerate(losses)
        ]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        points.append({"overrides": {"lr": name[3:]}, "seed": 0, "name": name, "dir": name,
                       "status": status})  # fmt: skip
    (out / "sweep.json").write_text(json.dumps({"config": "c.yaml", "points": points}))
    res = cli_here("report", out, "--train-last", "3")
    assert res.returncode == 0, res.stderr
    rows = {line.split("|")[1].strip(): line for line in res.stdout.splitlines()[2:]}
    assert set(rows) == set(curves)
    assert "| 5 | 4 | done |" in rows["lr=0.1"]  # mean of 5, 4, 3
    assert "| 5 | **1.5** | done |" in rows["lr=0.3"]  # mean of 1, 2, 1.5: the lowest
    assert "| 3 | 9.667 | failed: SearchDiverged" in rows["lr=1"]
    assert "mean of the last 3 generations" in res.stdout
    assert "held-out" not in res.stdout and "IQM" not in res.stdout
    bad = cli_here("report", out, "--train-last", "3", "--bar", "loss<1")
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1
    bad = cli_here("report", tmp_path / "nothing", "--train-last", "3")
    assert bad.returncode == 2 and "is not a run directory" in bad.stderr
