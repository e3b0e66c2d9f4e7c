"""Checkpoints: atomic, checksummed, safe to load from someone else's run directory.

A checkpoint is a numpy ``.npz`` archive: the payload's arrays, and one entry ``__meta__``
holding JSON that describes the payload's structure (dicts, lists, numbers, text) and the
SHA-256 of every array. Loading it never executes code (``allow_pickle=False``), so a run
directory can be shared. It is written to a temporary file in the same directory, flushed
and fsynced, then renamed over its final name, so a crash or a full disk never leaves a
half-written checkpoint under a checkpoint's name. Loading takes the newest checkpoint whose
checksums match and warns about any that do not.

Checkpoints of evoplastic before this format are pickles (``ckpt-*.pkl``); they still
resume, with a warning, because unpickling can run code: load only your own.

Files are created with the permissions the umask allows (``0666 & ~umask``), like any
other file a program writes, so a colleague can read a run directory on a shared disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"evoplastic-checkpoint-v1\n"  # the older pickle format
FORMAT = "evoplastic-checkpoint-v2"
_NAME = re.compile(r"^ckpt-(\d{8})\.(npz|pkl)$")
PICKLE_WARNING = (
    "{path} is a pickle checkpoint of an older evoplastic: loading it can run code, so load"
    " only your own; the next checkpoints are written as .npz"
)


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old or the new bytes.

    The file gets the permissions of a plain ``open(path, "w")``: ``0666`` less the umask.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def path_for(directory: Path, generation: int) -> Path:
    """The file of the checkpoint written after ``generation`` generations."""
    return Path(directory) / f"ckpt-{generation:08d}.npz"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(generation, path)`` of every checkpoint file, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _encode(tree, arrays: dict[str, np.ndarray]):
    """The JSON description of ``tree``; its arrays go into ``arrays`` (``a0``, ``a1``, ...)."""
    if isinstance(tree, dict):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError("checkpoint payload: dict keys must be text")
        return {"dict": {k: _encode(v, arrays) for k, v in tree.items()}}
    if isinstance(tree, list | tuple):
        return {type(tree).__name__: [_encode(v, arrays) for v in tree]}
    if tree is None or isinstance(tree, bool | int | float | str):
        return {"value": tree}
    if isinstance(tree, np.ndarray | np.generic) or hasattr(tree, "__array__"):
        array = np.asarray(tree)
        if array.dtype == object:
            raise TypeError("checkpoint payload: object arrays cannot be stored")
        name = f"a{len(arrays)}"
        arrays[name] = array
        return {"array": name, "sha256": _digest(array)}
    raise TypeError(f"checkpoint payload: cannot store a {type(tree).__name__}")


def _decode(spec, archive, path):
    if "dict" in spec:
        return {k: _decode(v, archive, path) for k, v in spec["dict"].items()}
    if "list" in spec:
        return [_decode(v, archive, path) for v in spec["list"]]
    if "tuple" in spec:
        return tuple(_decode(v, archive, path) for v in spec["tuple"])
    if "value" in spec:
        return spec["value"]
    array = archive[spec["array"]]
    if _digest(array) != spec["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch in {spec['array']} (corrupt)")
    return array


def save(directory: Path, generation: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write the checkpoint of ``generation`` atomically and keep the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta = {"format": FORMAT, "payload": _encode(payload, arrays)}
    text = json.dumps(meta).encode()
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(text, dtype=np.uint8), **arrays)
    path = path_for(directory, generation)
    atomic_write(path, buffer.getvalue())
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _read_pickle(path: Path) -> dict[str, Any]:
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not an evoplastic checkpoint")
    rest = data[len(MAGIC) :]
    digest, sep, body = rest.partition(b"\n")
    if not sep or hashlib.sha256(body).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupt)")
    return pickle.loads(body)  # noqa: S301 (the older format; see PICKLE_WARNING)


def read(path: Path, warn=None) -> dict[str, Any]:
    """Read and verify one checkpoint; raises :class:`CheckpointError` if it is damaged.

    An older pickle checkpoint is read too, after a warning to ``warn``.
    """
    path = Path(path)
    if path.suffix == ".pkl":
        payload = _read_pickle(path)
        if warn is not None:
            warn(PICKLE_WARNING.format(path=path))
        return payload
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["__meta__"].tobytes().decode())
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not an evoplastic checkpoint")
            return _decode(meta["payload"], archive, path)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: damaged ({type(err).__name__}: {err})") from None


def load_latest(directory: Path, warn=None) -> dict[str, Any]:
    """The newest intact checkpoint in ``directory``; damaged ones are reported to ``warn``."""
    return latest_intact(directory, warn)[1]


def latest_intact(directory: Path, warn=None) -> tuple[Path, dict[str, Any]]:
    """``(path, payload)`` of the newest intact checkpoint in ``directory`` (damaged ones are
    reported to ``warn``); :class:`CheckpointError` if there is none."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, read(path, warn=warn)
        except (CheckpointError, OSError, pickle.UnpicklingError, EOFError) as err:
            if warn is not None:
                warn(f"skipping damaged checkpoint: {err}")
    raise CheckpointError(f"no intact checkpoint in {directory}")
