"""The one error of user fitness functions and task factories."""

from __future__ import annotations


class FitnessError(ValueError):
    """A user fitness that cannot be used as it is; the message says what and how to fix it."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
