"""Errors of the execution backends (defined in :mod:`evoplastic.errors`), without Ray."""

from ..errors import BackendError, MemberError, WorkersLost

__all__ = ["BackendError", "MemberError", "WorkersLost"]
