import os

import numpy as np
import pytest

from evoplastic import checkpoint


def _payload(g):
    return {"generation": g, "state": [np.arange(5.0) * g], "genome": np.ones(3) * g}


def test_save_keeps_the_newest(tmp_path):
    for g in range(1, 6):
        checkpoint.save(tmp_path, g, _payload(g), keep=2)
    assert [g for g, _ in checkpoint.list_checkpoints(tmp_path)] == [4, 5]
    assert checkpoint.load_latest(tmp_path)["generation"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_latest_falls_back_with_a_warning(tmp_path, damage):
    checkpoint.save(tmp_path, 10, _payload(10), keep=3)
    path = checkpoint.save(tmp_path, 20, _payload(20), keep=3)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        path.write_bytes(b"")
    warnings = []
    got = checkpoint.load_latest(tmp_path, warn=warnings.append)
    assert got["generation"] == 10
    np.testing.assert_array_equal(got["genome"], np.ones(3) * 10)
    assert len(warnings) == 1 and "ckpt-00000020" in warnings[0]


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 10, _payload(10))
    before = checkpoint.path_for(tmp_path, 10).read_bytes()

    def disk_full(fd, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 20, _payload(20))
    monkeypatch.undo()
    assert [g for g, _ in checkpoint.list_checkpoints(tmp_path)] == [10]
    assert checkpoint.path_for(tmp_path, 10).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert checkpoint.load_latest(tmp_path)["generation"] == 10


def test_no_checkpoint_is_an_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_latest(tmp_path)
