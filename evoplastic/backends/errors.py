"""Errors of the execution backends, importable without Ray."""

from __future__ import annotations


class BackendError(RuntimeError):
    """The backend cannot go on (cluster unreachable, workers lost, resources missing).

    The message is one line meant for the user. The trainer saves a checkpoint of the last
    finished generation before letting it propagate, so the run can be resumed.
    """


class WorkersLost(BackendError):
    """Every Ray worker died and none could be restarted."""
