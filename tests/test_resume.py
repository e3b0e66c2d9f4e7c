"""Resume after a real SIGKILL or SIGINT ends exactly like an uninterrupted run.

The runs that are stopped are real processes; the others run the same commands in this one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from evoplastic.trainer import TIMING_FIELDS as TIMING

from .conftest import cli_here, small_config


def _config():
    # ~50 ms a generation on 2 cores: slow enough to be killed mid-run
    return small_config(
        generations=80,
        task={"dim": 8, "steps": 1500},
        strategy={"population_size": 16},
        evaluation={"instances": 8},
        test={"every": 10, "instances": 8, "final_instances": 10},
        checkpoint={"every": 5, "keep": 3},
    )


def _metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def _latest_generation(run_dir):
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.npz"))
    return int(ckpts[-1].stem.split("-")[1]) if ckpts else -1


def _start_and_stop(cfg_path, run_dir, sig, after_generation):
    proc = subprocess.Popen(
        [sys.executable, "-m", "evoplastic.cli", "run", str(cfg_path), "--out", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    deadline = time.monotonic() + 240
    while _latest_generation(run_dir) < after_generation:
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory, request):
    base = tmp_path_factory.mktemp("resume")
    cfg_path = base / "cfg.yaml"
    cfg_path.write_text(json.dumps(_config()))
    run_dir = base / "uninterrupted"
    proc = cli_here("run", cfg_path, "--out", run_dir)
    assert proc.returncode == 0, proc.stderr
    return cfg_path, run_dir


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_resume_is_exact(reference, tmp_path, sig):
    cfg_path, ref_dir = reference
    run_dir = tmp_path / "stopped"
    code, out, err = _start_and_stop(cfg_path, run_dir, sig, after_generation=20)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130
        assert "interrupted after generation" in err and "evoplastic resume" in err
    stopped_at = len(_metrics(run_dir))
    assert 20 <= stopped_at < 80, "the run was not stopped mid-way"
    assert not (run_dir / "best_rule.json").exists()
    proc = cli_here("resume", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert "discovered rule" in proc.stdout
    assert _metrics(run_dir) == _metrics(ref_dir)
    got = json.loads((run_dir / "best_rule.json").read_text())
    want = json.loads((ref_dir / "best_rule.json").read_text())
    assert got["genome"] == want["genome"]
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads(
        (ref_dir / "eval.json").read_text()
    )


def test_resume_without_checkpoint_restarts_cleanly(write_config, tmp_path):
    """Killed before its first checkpoint: resume starts over without duplicate metrics."""
    cfg = small_config(generations=6, checkpoint={"every": 100})
    run_dir = tmp_path / "run"
    assert cli_here("run", write_config(cfg), "--out", run_dir, "--quiet").returncode == 0
    for p in (run_dir / "checkpoints").iterdir():
        p.unlink()
    (run_dir / "best_rule.json").unlink()
    proc = cli_here("resume", run_dir, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "starting again from generation 0" in proc.stderr
    assert [r["generation"] for r in _metrics(run_dir)] == list(range(6))


def test_resume_refuses_an_edited_config(write_config, tmp_path):
    run_dir = tmp_path / "run"
    cfg = small_config(generations=4)
    assert cli_here("run", write_config(cfg), "--out", run_dir, "--quiet").returncode == 0
    text = (run_dir / "config.yaml").read_text().replace("seed: 0", "seed: 1")
    (run_dir / "config.yaml").write_text(text)
    proc = cli_here("resume", run_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "differs from the config" in proc.stderr
