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


def test_checkpoints_load_without_pickles_and_keep_structure(tmp_path, monkeypatch):
    payload = {
        "generation": 7,
        "seed": 3,
        "config_digest": "abc",
        "state": [np.arange(4, dtype=np.float32), np.array(2, np.uint32), (np.ones(2), None)],
        "genome": {"w": np.eye(2), "b": np.zeros(0)},
    }
    path = checkpoint.save(tmp_path, 7, payload)
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as archive:  # a plain npz, readable by numpy
        assert "__meta__" in archive.files
    monkeypatch.setattr(checkpoint.pickle, "loads", lambda *a: pytest.fail("unpickled"))
    got = checkpoint.load_latest(tmp_path)
    assert got["generation"] == 7 and got["config_digest"] == "abc"
    assert isinstance(got["state"][2], tuple) and got["state"][2][1] is None
    np.testing.assert_array_equal(got["state"][0], payload["state"][0])
    assert got["state"][0].dtype == np.float32 and got["state"][1].dtype == np.uint32
    np.testing.assert_array_equal(got["genome"]["w"], np.eye(2))
    with pytest.raises(TypeError, match="cannot store a"):
        checkpoint.save(tmp_path, 8, {"x": object()})


def test_a_changed_array_is_caught_by_its_checksum(tmp_path):
    path = checkpoint.save(tmp_path, 5, _payload(5))
    with np.load(path, allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    entries["a0"] = entries["a0"] + 1  # a valid archive whose array was altered
    with open(path, "wb") as f:
        np.savez(f, **entries)
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        checkpoint.read(path)


def test_older_pickle_checkpoints_resume_with_a_warning(tmp_path):
    import hashlib
    import pickle

    body = pickle.dumps(_payload(4))
    digest = hashlib.sha256(body).hexdigest().encode()
    (tmp_path / "ckpt-00000004.pkl").write_bytes(checkpoint.MAGIC + digest + b"\n" + body)
    warnings = []
    got = checkpoint.load_latest(tmp_path, warn=warnings.append)
    assert got["generation"] == 4 and len(warnings) == 1
    assert "pickle checkpoint of an older evoplastic" in warnings[0]
    checkpoint.save(tmp_path, 6, _payload(6), keep=3)  # a newer one: npz, read first
    assert checkpoint.load_latest(tmp_path, warn=warnings.append)["generation"] == 6


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = checkpoint.save(tmp_path, 1, _payload(1))
        text = tmp_path / "config.yaml"
        checkpoint.atomic_write(text, b"x: 1\n")
    finally:
        os.umask(old)
    for p in (path, text):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_provenance_is_written_and_version_changes_are_warned(tmp_path, monkeypatch):
    import json
    from importlib import metadata

    from evoplastic import provenance

    provenance.write(tmp_path, ["evoplastic", "run", "cfg.yaml"])
    data = json.loads((tmp_path / "provenance.json").read_text())
    assert data["command"] == ["evoplastic", "run", "cfg.yaml"]
    assert data["packages"]["jax"] == metadata.version("jax")
    assert data["device"]["platform"] == "cpu" and data["python"].startswith("3.")
    assert set(data["git"]) == {"commit", "dirty"}
    warnings = []
    provenance.warn_if_changed(tmp_path, warnings.append)
    assert warnings == []
    data["packages"]["jax"] = "0.0.1"
    (tmp_path / "provenance.json").write_text(json.dumps(data))
    provenance.warn_if_changed(tmp_path, warnings.append)
    assert len(warnings) == 1 and f"jax 0.0.1 -> {metadata.version('jax')}" in warnings[0]
