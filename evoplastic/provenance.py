"""Where a run came from: ``provenance.json`` in every run directory.

It records the versions of the packages that decide a run's numbers, the git commit of the
evoplastic source (and whether it had uncommitted changes), the device JAX ran on, the
Python version and the command line. ``evoplastic eval`` and ``resume`` compare it with the
current environment and warn where versions differ: figures may then differ in the last bits.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

FILE = "provenance.json"
PACKAGES = ("evoplastic", "jax", "jaxlib", "evosax", "flax", "optax", "numpy", "gymnax")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(source: Path) -> dict:
    """``{"commit", "dirty"}`` of the git checkout holding ``source``; nulls outside one."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def collect(argv: list[str] | None = None) -> dict:
    """The provenance of a run started now, in this process."""
    import jax

    device = jax.devices()[0]
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": list(sys.argv if argv is None else argv),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "git": _git(Path(__file__).parent),
        "device": {"platform": device.platform, "kind": device.device_kind},
    }


def write(run_dir: Path, argv: list[str] | None = None) -> None:
    from .checkpoint import atomic_write

    text = json.dumps(collect(argv), indent=2) + "\n"
    atomic_write(Path(run_dir) / FILE, text.encode())


def differences(run_dir: Path) -> list[str]:
    """``"jax 0.4.30 -> 0.10.2"`` for each package whose version differs from the run's."""
    path = Path(run_dir) / FILE
    try:
        recorded = json.loads(path.read_text()).get("packages", {})
    except (OSError, ValueError, AttributeError):
        return []
    return [
        f"{name} {then} -> {now}"
        for name, then in sorted(recorded.items())
        if (now := _version(name)) != then
    ]


def warn_if_changed(run_dir: Path, warn) -> None:
    """Warn (``warn(message)``) when the run was made with other package versions."""
    changed = differences(run_dir)
    if changed:
        warn(
            f"{run_dir} was made with other versions ({', '.join(changed)});"
            " figures may differ in the last bits"
        )
