"""Closed value sets of the queue: job and dispatch states, actions, transitions.

The values are the strings stored in the ``state`` and ``action`` columns (a
:class:`enum.StrEnum` member compares equal to its value), so the schema is
unchanged. The allowed transitions of each state machine are listed here, and
:func:`dicom_node.transitions.transition` refuses any other.

A job::

    queued ──claim──▶ running ──complete──▶ sending ──settle──▶ done
      ▲ │               │  └──complete (nothing to send)──────▶ done
      │ └─exhausted─┐   ├──PermanentError──▶ failed
      │             ▼   ├──attempts exhausted──▶ dead_lettered ◀──settle── sending
      └──retry, release, recovery (running → queued)
    failed, dead_lettered ──``jobs retry``──▶ queued or sending

A dispatch (one output for one destination)::

    pending ──claim──▶ sending ──stored──▶ sent
       ▲                  │
       └──failed, released, recovered──┘ ──attempts exhausted──▶ dead
    dead, sent ──``jobs retry`` or reprocessing──▶ pending
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """State of a :class:`~dicom_node.db.Job`."""

    QUEUED = "queued"
    """Waiting for a worker (``next_run_at`` says from when)."""
    RUNNING = "running"
    """Claimed by the worker named in ``owner`` until ``lease_until``."""
    SENDING = "sending"
    """Processed; its outputs wait in dispatches."""
    DONE = "done"
    """Every output was stored by its destination (or there was none, or a shadow
    rule kept them unsent: ``jobs.shadow``)."""
    FAILED = "failed"
    """A permanent error: retrying cannot fix it."""
    DEAD_LETTERED = "dead_lettered"
    """Its attempts (or those of one of its dispatches) are used up."""

    @property
    def is_final(self) -> bool:
        """Whether nothing more happens to the job without ``dicom-node jobs retry``."""
        return self in FINAL_JOB_STATES


class DispatchState(StrEnum):
    """State of a :class:`~dicom_node.db.Dispatch`."""

    PENDING = "pending"
    """Waiting to be sent (``next_attempt_at`` says from when)."""
    SENDING = "sending"
    """Claimed by the process named in ``owner`` until ``lease_until``."""
    SENT = "sent"
    """The destination stored it."""
    DEAD = "dead"
    """Its attempts are used up, or its destination is no longer configured."""


class Action(StrEnum):
    """What a job does: a routing rule's action on a received instance, or ``reject``."""

    FORWARD = "forward"
    """Send the received file unchanged."""
    ENHANCE = "enhance"
    """Run the generator and send the derived instance."""
    IGNORE = "ignore"
    """Keep the instance for the retention period; no job is created."""
    REJECT = "reject"
    """Send an IOCM rejection note made by ``dicom-node model recall`` (never a rule's action)."""


FINAL_JOB_STATES: frozenset[JobState] = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.DEAD_LETTERED}
)
"""Job states nothing leaves on its own (housekeeping may purge such jobs)."""

JOB_ACTIONS: frozenset[Action] = frozenset({Action.FORWARD, Action.ENHANCE})
"""Rule actions that create a job (``ignore`` creates none; ``reject`` jobs come from a recall)."""

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.DEAD_LETTERED}),
    JobState.RUNNING: frozenset(
        {
            JobState.SENDING,
            JobState.DONE,
            JobState.QUEUED,
            JobState.FAILED,
            JobState.DEAD_LETTERED,
        }
    ),
    JobState.SENDING: frozenset({JobState.DONE, JobState.DEAD_LETTERED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.SENDING}),
    JobState.DEAD_LETTERED: frozenset({JobState.QUEUED, JobState.SENDING}),
}
"""For each job state, the states it may move to."""

DISPATCH_TRANSITIONS: dict[DispatchState, frozenset[DispatchState]] = {
    # pending → pending: a reprocessed job resets its dispatch (attempts back to 0).
    DispatchState.PENDING: frozenset(
        {DispatchState.SENDING, DispatchState.PENDING, DispatchState.DEAD}
    ),
    DispatchState.SENDING: frozenset(
        {DispatchState.SENT, DispatchState.PENDING, DispatchState.DEAD}
    ),
    DispatchState.SENT: frozenset({DispatchState.PENDING}),
    DispatchState.DEAD: frozenset({DispatchState.PENDING}),
}
"""For each dispatch state, the states it may move to."""


def check_transition(current: JobState | DispatchState, new: JobState | DispatchState) -> None:
    """Check that a row may move from `current` to `new`.

    Raises
    ------
    TypeError
        If the two states belong to different state machines.
    ValueError
        If the state machine has no such transition.
    """
    if type(current) is not type(new):
        raise TypeError(
            f"Cannot move from {type(current).__name__} {current.value!r} "
            f"to {type(new).__name__} {new.value!r}."
        )
    allowed: frozenset[JobState] | frozenset[DispatchState]
    if isinstance(current, JobState):
        allowed = JOB_TRANSITIONS[current]
    else:
        allowed = DISPATCH_TRANSITIONS[current]
    if new not in allowed:
        raise ValueError(
            f"A {type(current).__name__} cannot move from {current.value!r} to {new.value!r}."
        )
