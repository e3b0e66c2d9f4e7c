"""Errors of evaluation and execution (a leaf module: importable from every layer, without Ray)."""

from __future__ import annotations


class BackendError(RuntimeError):
    """The backend cannot go on (cluster unreachable, workers lost, resources missing).

    The message is one line meant for the user. The trainer saves a checkpoint of the last
    finished generation before letting it propagate, so the run can be resumed.
    """


class WorkersLost(BackendError):
    """Every Ray worker died and none could be restarted."""


class MemberError(BackendError):
    """One member's evaluation failed: a ``checkify`` check in the fitness, or an error
    raised at run time (e.g. by a host callback).

    Attributes:
      generation: the generation (0-based) being evaluated.
      member: the index of the first failing member in the population.
      reason: what the fitness reported.
    """

    def __init__(self, generation: int, member: int, reason: str):
        super().__init__(
            f"the fitness failed for member {member} of generation {generation}: {reason}"
        )
        self.generation, self.member, self.reason = generation, member, reason

    def __reduce__(self):  # picklable, so that a Ray worker can send it to the driver
        return MemberError, (self.generation, self.member, self.reason)
