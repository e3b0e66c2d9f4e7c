import json
import os
from pathlib import Path

import pytest
import yaml

from evoplastic import meta
from evoplastic.cli import main

from .conftest import run_cli, small_config


def _call(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def _cli(argv, capsys):
    """``(exit code, stdout, stderr)`` of the command line run in this process."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


BAD = [
    ({"generatons": 3}, [], "generatons: unknown key (did you mean 'generations'?)"),
    ({"generations": "many"}, [], "generations: expected an integer"),
    ({"strategy": {"population_size": 0}}, [], "strategy.population_size: must be > 0"),
    ({"strategy": {"name": "open_es", "population_size": 9}}, [], "strategy.population_size"),
    ({"strategy": {"name": "cmaes"}}, [], "did you mean 'cma_es'"),
    ({"task": {"name": "pcb"}}, [], "task.name: unknown task 'pcb'"),
    ({}, ["strategy.std_init=-1"], "strategy.std_init: must be > 0"),
    ({}, ["nonsense"], "expected KEY=VALUE"),
    ({"task": {"name": "pca", "noise_eig_max": 2.0}}, [], "task.noise_eig_max"),
]


@pytest.mark.parametrize("cfg, extra, message", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(
    cfg, extra, message, write_config, tmp_path, capsys
):
    path = write_config(small_config(**cfg))
    out_dir = tmp_path / "run"
    code, out, err = _call(["run", str(path), *extra, "--out", str(out_dir)], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in out + err
    assert not out_dir.exists()


def test_missing_file_and_existing_run_dir(write_config, tmp_path, capsys):
    code, _, err = _call(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "not found" in err and err.count("\n") == 1
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    code, _, err = _call(["run", str(write_config(small_config())), "--out", str(existing)], capsys)
    assert code == 2 and "already exists" in err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert (existing / "keep.txt").read_text() == "precious"
    code, _, err = _call(["resume", str(tmp_path)], capsys)
    assert code == 2 and "not a run directory" in err
    code, _, err = _call(["run"], capsys)
    assert code == 2 and err.startswith("error: Missing argument")


def test_subprocess_error_has_no_traceback(write_config, tmp_path):
    proc = run_cli(
        "run", write_config(small_config(strategy={"name": "snes", "population_size": -2}))
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: strategy.population_size: must be > 0, got -2"
    ]


def test_list_names_every_strategy(capsys):
    main(["list"])
    out = capsys.readouterr().out
    for name in meta.STRATEGIES:
        assert name in out
    assert "pca" in out and "polynomial" in out


def test_run_eval_plot_end_to_end(write_config, tmp_path, capsys):
    """The run through the real entry point; then eval, report and plot on its directory
    (in this process: the same commands, without a new interpreter each)."""
    cfg = small_config(generations=6, test={"variants": {"wide": {"dim": 8}}})
    run_dir = tmp_path / "run"
    proc = run_cli("run", write_config(cfg), "--out", run_dir, "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert any(Path(os.environ["EVOPLASTIC_CACHE_DIR"]).iterdir())  # compilation cache on
    assert "discovered rule: dw = " in proc.stdout
    assert "cosine to Oja's rule" in proc.stdout
    assert "held-out [wide, 8 instances]" in proc.stdout
    assert f"run directory: {run_dir}" in proc.stdout
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["task"]["steps"] == 64
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["generation"] for x in lines] == list(range(6))
    best = json.loads((run_dir / "best_rule.json").read_text())
    assert best["terms"] == cfg["rule"]["terms"] and len(best["genome"]) == 4
    assert best["equation"].startswith("dw = ")
    for png in ("learning_curve.png", "rule_vs_reference.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "ckpt-00000004.npz",
        "ckpt-00000006.npz",
    ]
    code, out, err = _cli(["eval", str(run_dir), "--instances", "12", "--json", "dim=6"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["task_overrides"] == {"task.dim": "6"} and report["instances"] == 12
    res = report["rules"]
    assert set(res) == {"evolved", "random", "oja", "hebb", "bcm"}  # bcm: pca is unsupervised
    assert res["evolved"]["alignment"]["n"] == 12
    assert res["oja"]["alignment"]["median"] > 0.9  # Oja's rule does PCA at dim 6 as well
    code, out, _ = _cli(["eval", str(run_dir), "--instances", "5"], capsys)
    assert code == 0 and "evolved" in out and "oja" in out
    code, _, err = _cli(["eval", str(run_dir), "dimm=6"], capsys)
    assert code == 2 and "task.dimm: unknown key" in err
    code, out, err = _cli(["report", str(run_dir), "--plot", str(tmp_path / "report.png")], capsys)
    assert code == 0, err
    # rows are named by the run's directory, not by the config's name
    assert f"| {run_dir.name} | pca | trained | polynomial | alignment |" in out
    assert f"| {run_dir.name} | pca | wide | hebb (fixed) |" in out
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = _cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "not a run directory" in err
    (run_dir / "learning_curve.png").unlink()
    code, _, err = _cli(["plot", str(run_dir)], capsys)
    assert code == 0 and (run_dir / "learning_curve.png").exists(), err


def test_report_names_rules_and_baselines():
    from evoplastic.analysis import markdown_table, report_rows

    summary = {"mean": 500.0, "ci95": 0.0, "median": 500.0, "n": 100}
    run = {
        "dir": "d",
        "config": {
            "name": "cp",
            "task": {"name": "control", "env": "CartPole-v1"},
            "rule": {"name": "abcd", "per_synapse": True},
            "strategy": {"name": "open_es"},
        },
        "eval": {
            "trained": {
                "evolved": {"loss": {"mean": -500.0, "nonfinite": 0}, "return": summary},
                "sgd": {"loss": {"mean": 1.0}, "return": summary, "lr": {"mean": 0.1}},
            }
        },
    }
    table = markdown_table(report_rows([run]))
    # named by its directory ("d"), not by the config's name
    assert "| d | control CartPole-v1 | trained | abcd per synapse | return | 500 ± 0 |" in table
    assert "| SGD (backprop), lr 0.1 | return |" in table
