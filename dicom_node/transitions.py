"""The one guarded state change of jobs and dispatches.

Every state change of a :class:`~dicom_node.db.Job` or a
:class:`~dicom_node.db.Dispatch` is a conditional ``UPDATE … WHERE id = :id
AND state = :expected [AND owner = :owner]``. Several processes may share the
database: the condition makes the change happen at most once, and only for
the process that still owns the row. :func:`transition` reports whether it
took effect; a caller that gets ``False`` has lost the row (another process
recovered it, or its state changed) and must not act as if it had moved it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from typing import Any, Final

from sqlalchemy import update
from sqlalchemy.orm import Session

from dicom_node.db import Dispatch, Job, rowcount
from dicom_node.states import DispatchState, JobState, check_transition


class _AnyOwner(enum.Enum):
    ANY_OWNER = "any owner"


ANY_OWNER: Final = _AnyOwner.ANY_OWNER
"""Pass as `held_by` to change the row whoever owns it (recovery, settling, admin)."""

Owner = str | None | _AnyOwner


def transition(
    session: Session,
    table: type[Job] | type[Dispatch],
    row_id: int,
    expected: JobState | DispatchState | Collection[JobState] | Collection[DispatchState],
    new: JobState | DispatchState,
    *,
    held_by: Owner,
    **values: Any,
) -> bool:
    """Move one row from an expected state to `new`, if it is still as expected.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        The session whose transaction the change belongs to.
    table : type[Job] | type[Dispatch]
        The table of the row.
    row_id : int
        The row's id.
    expected : JobState | DispatchState | collection of them
        The state(s) the row must be in for the change to happen.
    new : JobState | DispatchState
        The state it moves to.
    held_by : str | None | ANY_OWNER
        The ``owner`` the row must have (``None``: no owner); :data:`ANY_OWNER`
        does not look at the owner.
    **values
        Other columns to set in the same ``UPDATE`` (``owner=`` included).

    Returns
    -------
    bool
        ``True`` if the row changed; ``False`` if it was not in an expected
        state or not held by `held_by` (nothing was changed).

    Raises
    ------
    TypeError
        If a state does not belong to `table`'s state machine.
    ValueError
        If a transition from an expected state to `new` is not allowed, or
        `expected` is empty, or `values` sets ``state``.
    """
    state_type: type[JobState] | type[DispatchState] = JobState if table is Job else DispatchState
    states: tuple[JobState | DispatchState, ...] = (
        (expected,) if isinstance(expected, JobState | DispatchState) else tuple(expected)
    )
    if not states:
        raise ValueError(f"expected: no state given for {table.__name__} {row_id}.")
    if "state" in values:
        raise ValueError(f"values: 'state' is set by `new` ({new!r}), not by a keyword.")
    for state in (*states, new):
        if not isinstance(state, state_type):
            raise TypeError(f"{state!r} is not a {state_type.__name__} ({table.__name__} state).")
    for state in states:
        check_transition(state, new)
    conditions = [table.id == row_id, table.state.in_([s.value for s in states])]
    if held_by is None:
        conditions.append(table.owner.is_(None))
    elif not isinstance(held_by, _AnyOwner):
        conditions.append(table.owner == held_by)
    statement = update(table).where(*conditions).values(state=new.value, **values)
    return rowcount(session.execute(statement)) == 1
