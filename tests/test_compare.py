"""Wall-clock budgets and the ES-vs-backprop comparison (``evoplastic compare``)."""

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

import evoplastic as ep
from evoplastic import checkpoint, trainer
from evoplastic.cli import main
from evoplastic.config import ConfigError, experiment_dump, parse
from evoplastic.studies import compare

from .conftest import small_config

ROOT = Path(__file__).resolve().parents[1]
T_975 = {1: 12.7062047, 2: 4.30265273}  # Student t quantiles, from printed tables


def _train(run_dir, cfg, resume=False):
    exp = ep.build(parse(cfg))
    if not resume:
        trainer.prepare_run_dir(run_dir, exp)
    return exp, trainer.train(exp, run_dir, resume=resume)


def test_budget_stops_the_run_and_resume_keeps_to_it(tmp_path):
    cap = 1_000_000
    cfg = small_config(generations=cap, time_budget_s=1.5, checkpoint={"every": 100_000})
    cfg["test"]["every"] = 5
    run_dir = tmp_path / "run"
    exp, result = _train(run_dir, cfg)
    records = trainer.read_metrics(run_dir)
    walls = [r["wall_s"] for r in records]
    assert result.budget_stop and result.generations < cap
    assert [r["generation"] for r in records] == list(range(result.generations))
    # it stops at the first generation boundary at or after the budget, not before
    assert walls[-1] >= 1.5 and all(w < 1.5 for w in walls[:-1])
    assert all(b > a for a, b in zip(walls, walls[1:], strict=False))
    # compilation counts: the first generation (compiling its step) is on the clock
    assert walls[0] >= records[0]["time_s"]
    # the budget stop wrote the only checkpoint (checkpoint.every is far away)
    ckpts = checkpoint.list_checkpoints(run_dir / "checkpoints")
    assert [g for g, _ in ckpts] == [result.generations]
    summary = trainer.finalize(exp, run_dir, result.genome, records)
    best = json.loads((run_dir / "best_rule.json").read_text())
    assert best["generations"] == result.generations
    assert (run_dir / "eval.json").is_file()
    assert summary["eval"]["trained"]["evolved"]["loss"]["n"] == 8

    # resuming a run that has spent its budget runs nothing more
    _, again = _train(run_dir, cfg, resume=True)
    assert again.budget_stop and again.generations == result.generations
    assert trainer.read_metrics(run_dir) == records

    # a raised budget (not part of the config digest) lets it go on where it stopped
    raised = round(walls[-1] + 0.5, 3)
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(
        text.replace("time_budget_s: 1.5", f"time_budget_s: {raised}")
    )
    _, more = _train(run_dir, yaml.safe_load((run_dir / "config.yaml").read_text()), resume=True)
    longer = trainer.read_metrics(run_dir)
    assert more.budget_stop and more.generations > result.generations
    assert longer[: len(records)] == records
    assert [r["generation"] for r in longer] == list(range(more.generations))
    walls = [r["wall_s"] for r in longer]
    assert walls[len(records)] > walls[len(records) - 1]  # the clock went on, not from 0
    assert walls[-1] >= raised and all(w < raised for w in walls[:-1])


def test_budget_is_validated_and_left_out_of_the_digest():
    with pytest.raises(ConfigError, match="time_budget_s: must be > 0, got 0"):
        parse(small_config(time_budget_s=0))
    plain, budgeted = parse(small_config()), parse(small_config(time_budget_s=30))
    assert experiment_dump(plain) == experiment_dump(budgeted)
    assert trainer.config_digest(plain) == trainer.config_digest(budgeted)


def _synthetic_records():
    test_losses = [None, 0.5, "nan", 0.2, 0.09, 0.3, 0.05]  # None: no test that generation
    records = []
    for g, value in enumerate(test_losses):
        r = {"generation": g, "median_loss": 0.01, "wall_s": 1.5 * (g + 1), "time_s": 1.5}
        if value == "nan":
            r["test_loss"] = None  # how a non-finite held-out loss is stored
        elif value is not None:
            r["test_loss"] = value
        records.append(r)
    return records


def test_time_to_threshold_from_a_metrics_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _synthetic_records())
    )
    records = trainer.read_metrics(tmp_path)
    # the first held-out test at or below the threshold (the train loss never counts)
    assert compare.time_to_threshold(records, 0.1) == 7.5
    assert compare.time_to_threshold(records, 0.2) == 6.0  # "<=": equal counts
    assert compare.time_to_threshold(records, 0.6) == 3.0
    assert compare.time_to_threshold(records, 0.01) is None
    summary = compare.run_summary(tmp_path, 0.1)
    assert summary["time_to_threshold"] == 7.5 and not summary["finished"]
    assert summary["generations"] == 7 and summary["wall_s"] == 10.5


def test_seed_interval_is_the_student_t_interval():
    s = compare.seed_interval([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert s["n"] == 3 and s["mean"] == pytest.approx(7 / 3)
    assert s["ci95"] == pytest.approx(T_975[2] * sd / math.sqrt(3), rel=1e-6)
    # non-finite and missing values are left out; one value has no interval
    s = compare.seed_interval([3.0, None, float("nan"), 5.0])
    assert s["n"] == 2 and s["mean"] == 4.0
    assert s["ci95"] == pytest.approx(T_975[1] * math.sqrt(2) / math.sqrt(2), rel=1e-6)
    assert math.isnan(compare.seed_interval([3.0])["ci95"])


def test_compare_config_errors_name_the_field(tmp_path):
    def bad(**compare_section):
        return small_config(time_budget_s=5, compare=compare_section)

    with pytest.raises(ConfigError, match=r"compare\.methods\.x: strategy\.nmae: unknown key"):
        parse(bad(methods={"x": {"strategy": {"nmae": "snes"}}}))
    with pytest.raises(ConfigError, match=r"compare\.methods\.x\.seed: the same for every"):
        parse(bad(methods={"x": {"seed": 3}}))
    with pytest.raises(ConfigError, match=r"compare\.methods\.x: meta\.optimizer: unknown"):
        parse(bad(methods={"x": {"meta": {"optimizer": "grad"}}}))
    with pytest.raises(ConfigError, match="compare.seeds: a seed is listed twice"):
        parse(bad(methods={"x": {}}, seeds=[1, 1]))
    with pytest.raises(ConfigError, match="time_budget_s: required"):
        compare.plan(small_config(compare={"methods": {"x": {}}}), tmp_path)
    with pytest.raises(ConfigError, match="compare.methods: list the methods"):
        compare.plan(small_config(time_budget_s=5), tmp_path)


@pytest.mark.parametrize("task", ["pca", "sinusoid", "digits"])
def test_shipped_comparisons_build(task, tmp_path):
    data = yaml.safe_load((ROOT / f"experiments/es_vs_backprop_{task}.yaml").read_text())
    runs = compare.plan(data, tmp_path)
    base = parse(data)
    assert base.compare.threshold is not None and len(base.compare.seeds) >= 3
    assert {r.method for r in runs} == {"cma_es", "open_es", "backprop"}
    assert len(runs) == 3 * len(base.compare.seeds)
    for r in runs:
        assert r.config.time_budget_s == base.time_budget_s  # one budget for every method
        assert r.config.test.final_instances >= 100 and r.config.test.instances >= 100
        exp = ep.build(r.config)
        assert (exp.config.meta.optimizer == "gradient") == (r.method == "backprop")
        if r.method != "backprop":
            assert exp.config.strategy.name == r.method


def _row(out, method):
    lines = (out / "report.md").read_text().splitlines()
    return next(x for x in lines if x.startswith(f"| {method} |"))


def test_compare_runs_interleaved_and_reports_from_the_run_files(write_config, tmp_path):
    cfg = small_config(
        generations=1_000_000,
        time_budget_s=0.5,
        test={"every": 0},  # no periodic tests: thresholds are tested above
        compare={
            "seeds": [0, 1],
            "threshold": 0.5,
            "methods": {
                "cma": {"strategy": {"name": "cma_es"}},
                "backprop": {"meta": {"optimizer": "gradient", "gradient": {"remat": "none"}}},
            },
        },
    )
    out = tmp_path / "cmp"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        main(["compare", str(write_config(cfg)), "--out", str(out), "--quiet"])
    finally:
        signal.signal(signal.SIGTERM, handler)
    manifest = json.loads((out / "compare.json").read_text())["tasks"][0]
    order = [(r["seed"], r["method"]) for r in sorted(manifest["runs"], key=lambda r: r["order"])]
    first, second = manifest["methods"]  # as listed in the config
    assert order == [(0, first), (0, second), (1, second), (1, first)]
    losses = {}
    for run in manifest["runs"]:
        run_dir = Path(run["dir"])
        records = trainer.read_metrics(run_dir)
        assert records[-1]["wall_s"] >= 0.5  # stopped by the budget
        ev = json.loads((run_dir / "eval.json").read_text())["trained"]["evolved"]
        assert ev["loss"]["n"] == 8
        losses.setdefault(run["method"], []).append(ev["loss"]["mean"])
    tasks = compare.collect(out)
    for method, values in losses.items():
        row = compare.method_row(tasks[0]["results"][method])
        sd = np.std(values, ddof=1)
        assert row["loss"]["mean"] == pytest.approx(np.mean(values), rel=1e-9)
        assert row["loss"]["ci95"] == pytest.approx(T_975[1] * sd / math.sqrt(2), rel=1e-6)
        assert f"| {row['loss']['mean']:.4g} ± {row['loss']['ci95']:.2g} (" in _row(out, method)
    assert (out / "compare.png").stat().st_size > 10_000

    # the report is rebuilt from the files: change one run's eval.json, the table follows
    path = Path(manifest["runs"][0]["dir"]) / "eval.json"
    ev = json.loads(path.read_text())
    ev_before = ev["trained"]["evolved"]["loss"]["mean"]
    ev["trained"]["evolved"]["loss"]["mean"] = 123.0
    path.write_text(json.dumps(ev))
    main(["compare", "--out", str(out), "--report-only"])
    method = manifest["runs"][0]["method"]
    values = [123.0] + [v for v in losses[method] if v != ev_before]
    assert len(values) == 2
    assert f"| {np.mean(values):.4g} ± " in _row(out, method)


def test_a_second_comparison_into_the_same_directory_keeps_the_first_in_the_report(tmp_path):
    """Comparing configs one call at a time into one directory reports them all: each call's
    entries join the manifest; a config compared again replaces its own entry in place."""

    def entry(name, dirs):
        return {"name": name, "methods": ["m"], "runs": [{"dir": d} for d in dirs]}

    compare.write_manifest(tmp_path, [entry("a", ["a0"]), entry("b", ["b0"])])
    compare.write_manifest(tmp_path, [entry("c", ["c0"])])
    compare.write_manifest(tmp_path, [entry("b", ["b1"]), entry("d", ["d0"])])
    tasks = json.loads((tmp_path / compare.MANIFEST).read_text())["tasks"]
    assert [(t["name"], t["runs"][0]["dir"]) for t in tasks] == [
        ("a", "a0"),
        ("b", "b1"),
        ("c", "c0"),
        ("d", "d0"),
    ]


def test_compare_cli_bad_input_writes_nothing(write_config, tmp_path, capsys):
    cfg = small_config(compare={"methods": {"x": {}}})  # no time budget
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(write_config(cfg)), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: small: time_budget_s: required (the budget of every run)"
    assert not out.exists()


def test_a_run_whose_search_diverges_is_reported_and_the_comparison_goes_on(
    write_config, tmp_path, capsys
):
    """One method's search mean turns NaN (SearchDiverged): the comparison records that run
    with its last finite rule and still runs and reports the other method."""
    cfg = small_config(
        generations=2000,
        time_budget_s=60,
        test={"every": 0, "final_instances": 4},
        strategy={"name": "cma_es", "population_size": 8, "std_init": 0.1},
        compare={
            "seeds": [0],
            "methods": {
                "far": {},
                "near": {
                    "generations": 60,
                    "task": {"genome": [0.5, 0.5]},
                    "strategy": {"std_init": 0.5},
                },
            },
        },
    )
    cfg["task"] = {"name": "tests.custom_tasks:make_finite_near_zero", "genome": [5.0, 5.0]}
    cfg["generations"] = 400
    out = tmp_path / "cmp"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        main(["compare", str(write_config(cfg)), "--out", str(out)])
    finally:
        signal.signal(signal.SIGTERM, handler)
    printed = capsys.readouterr().out
    assert "far seed 0: stopped, generation" in printed
    assert "the search's mean genome became non-finite" in printed
    manifest = json.loads((out / "compare.json").read_text())["tasks"][0]
    for run in manifest["runs"]:
        ev = json.loads((Path(run["dir"]) / "eval.json").read_text())["trained"]["evolved"]
        if run["method"] == "far":  # its last finite rule, outside the finite region
            assert ev["loss"]["nonfinite"] == 4
        else:
            assert ev["loss"]["nonfinite"] == 0 and ev["loss"]["mean"] < 0.5
    assert "| far |" in (out / "report.md").read_text()
