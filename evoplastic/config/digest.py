"""The digest of what a run computes: checkpoints record it, resume checks it."""

from __future__ import annotations

import hashlib

from .schema import Config
from .yaml_io import experiment_dump


def config_digest(cfg: Config) -> str:
    """A short hash of what the run computes; checkpoints record it, resume checks it.

    Where the run executes (``backend`` and the ``ray`` section) is left out, so a run can
    be resumed on either backend.
    """
    return hashlib.sha256(experiment_dump(cfg).encode()).hexdigest()[:16]
