"""Loggers: metrics.jsonl always; MLflow's local file store holds the same records."""

import json
import sys

import pytest

from evoplastic import config, loggers
from evoplastic.experiment import build
from evoplastic.trainer import prepare_run_dir, read_metrics, train

from .conftest import small_config
from .test_plots import call


class Recorder:
    def __init__(self):
        self.records, self.closed = [], 0

    def log(self, record):
        self.records.append(dict(record))

    def close(self):
        self.closed += 1


def test_multi_logger_sends_every_record_to_each_logger(tmp_path):
    a, b = Recorder(), Recorder()
    jsonl = loggers.JsonlLogger(tmp_path / "m.jsonl")
    multi = loggers.MultiLogger([a, jsonl, b])
    records = [{"generation": g, "best_loss": 1.0 / (g + 1), "test_loss": None} for g in range(3)]
    for r in records:
        multi.log(r)
    multi.close()
    assert a.records == b.records == records and a.closed == b.closed == 1
    assert [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()] == records
    assert isinstance(a, loggers.Logger) and isinstance(multi, loggers.Logger)
    flat = loggers.flatten_params({"strategy": {"name": "cma_es", "params": {}}, "seed": 3})
    assert flat == {"strategy.name": "cma_es", "strategy.params": "{}", "seed": "3"}


def _cheap_step(state, run_key, generation):
    """A stand-in generation (nothing to compile): the trainer logs what it returns."""
    g = float(generation)
    metrics = {"best_loss": 1.0 / (g + 1), "mean_loss": 2.0 / (g + 1), "nonfinite": 0}
    if generation == 1:
        metrics["mean_loss"] = float("nan")  # stored as null, not logged to MLflow
    return state, metrics


def test_mlflow_file_store_holds_the_params_and_every_generation(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    cfg = small_config(logging={"mlflow": True}, generations=3, test={"every": 0})
    cfg["strategy"]["name"] = "simple_es"  # quick to build
    exp = build(config.parse(cfg))
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, exp)
    train(exp, run_dir, step=_cheap_step)
    records = read_metrics(run_dir)
    assert [r["generation"] for r in records] == [0, 1, 2]
    client = mlflow.tracking.MlflowClient(loggers.default_tracking_uri(run_dir))
    assert (run_dir / "mlruns").is_dir()
    run_id = (run_dir / loggers.MLFLOW_RUN_FILE).read_text().strip()
    run = client.get_run(run_id)
    assert run.data.params["strategy.population_size"] == "8"
    assert run.data.params["task.name"] == "pca" and run.data.params["seed"] == "0"
    assert records[1]["mean_loss"] is None
    for key in ("best_loss", "mean_loss", "sigma", "nonfinite", "time_s", "evals_per_s"):
        expected = {r["generation"]: r[key] for r in records if r.get(key) is not None}
        history = client.get_metric_history(run_id, key)
        assert {m.step: m.value for m in history} == pytest.approx(expected, rel=1e-6), key
        assert len(history) == len(expected), key
    assert run.info.status == "FINISHED"
    # a resumed run logs to the same MLflow run
    again = loggers.MLflowLogger(run_dir, {"seed": 0}, experiment="evoplastic")
    assert again.run_id == run_id
    again.log({"generation": 3, "best_loss": 0.25, "note": "text", "test_loss": None})
    again.close()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "best_loss")][-1] == (
        3,
        0.25,
    )


def test_mlflow_requested_but_missing_is_one_line_exit_2(
    write_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    path = write_config(small_config(logging={"mlflow": True}))
    out_dir = tmp_path / "run"
    assert call(["run", str(path), "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: logging.mlflow: the mlflow package is not installed")
    assert err.count("\n") == 1 and ".[mlflow]" in err
    assert not out_dir.exists()
