"""Checkpoints: atomic, checksummed, the last few kept.

A checkpoint is a pickle of plain Python and numpy values (no library classes), preceded
by a header line and the SHA-256 of the payload. It is written to a temporary file in the
same directory, flushed and fsynced, then renamed over its final name, so a crash or a
full disk never leaves a half-written checkpoint under a checkpoint's name. Loading takes
the newest checkpoint whose checksum matches and warns about any that do not.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"evoplastic-checkpoint-v1\n"
_NAME = re.compile(r"^ckpt-(\d{8})\.pkl$")


class CheckpointError(RuntimeError):
    """No usable checkpoint."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old or the new bytes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def path_for(directory: Path, generation: int) -> Path:
    """The file of the checkpoint written after ``generation`` generations."""
    return Path(directory) / f"ckpt-{generation:08d}.pkl"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(generation, path)`` of every checkpoint file, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save(directory: Path, generation: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write the checkpoint of ``generation`` atomically and keep the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    body = pickle.dumps(_to_numpy(payload), protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(body).hexdigest().encode()
    path = path_for(directory, generation)
    atomic_write(path, MAGIC + digest + b"\n" + body)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def read(path: Path) -> dict[str, Any]:
    """Read and verify one checkpoint; raises :class:`CheckpointError` if it is damaged."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not an evoplastic checkpoint")
    rest = data[len(MAGIC) :]
    digest, sep, body = rest.partition(b"\n")
    if not sep or hashlib.sha256(body).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupt)")
    return pickle.loads(body)


def load_latest(directory: Path, warn=None) -> dict[str, Any]:
    """The newest intact checkpoint in ``directory``; damaged ones are reported to ``warn``."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return read(path)
        except (CheckpointError, OSError, pickle.UnpicklingError, EOFError) as err:
            if warn is not None:
                warn(f"skipping damaged checkpoint: {err}")
    raise CheckpointError(f"no intact checkpoint in {directory}")


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_numpy(v) for v in tree)
    if hasattr(tree, "__array__") and not isinstance(tree, np.ndarray):
        return np.asarray(tree)
    return tree
