"""The guarded transition: it happens at most once, for the owner, and says so (SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from queue_rows import RuntimeFactory, add_dispatch, add_job, get, runtimes

from dicom_node.db import Dispatch, Job
from dicom_node.states import DispatchState, JobState
from dicom_node.transitions import ANY_OWNER, transition


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[RuntimeFactory]:
    yield from runtimes(tmp_path)


def test_a_transition_from_the_expected_state_takes_effect(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime)
    with runtime.session() as session, session.begin():
        assert transition(
            session,
            Job,
            job_id,
            JobState.QUEUED,
            JobState.RUNNING,
            held_by=ANY_OWNER,
            owner="me",
            attempts=1,
        )
    row = get(runtime, Job, job_id)
    assert (row.state, row.owner, row.attempts) == ("running", "me", 1)


def test_a_transition_that_lost_its_ownership_reports_false_and_changes_nothing(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime, state="running", owner="other-worker", attempts=1)
    with runtime.session() as session, session.begin():
        assert not transition(
            session,
            Job,
            job_id,
            JobState.RUNNING,
            JobState.QUEUED,
            held_by="me",  # another worker took the job over
            owner=None,
            error="mine",
        )
    row = get(runtime, Job, job_id)
    assert (row.state, row.owner, row.error) == ("running", "other-worker", None)


def test_a_transition_from_a_state_that_changed_reports_false_and_changes_nothing(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime, state="done")
    with runtime.session() as session, session.begin():
        assert not transition(
            session, Job, job_id, JobState.RUNNING, JobState.FAILED, held_by=ANY_OWNER, error="x"
        )
    row = get(runtime, Job, job_id)
    assert (row.state, row.error) == ("done", None)


def test_only_one_of_two_competing_transitions_takes_effect(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime)
    outcomes = []
    for owner in ("a", "b"):
        with runtime.session() as session, session.begin():
            outcomes.append(
                transition(
                    session,
                    Job,
                    job_id,
                    JobState.QUEUED,
                    JobState.RUNNING,
                    held_by=ANY_OWNER,
                    owner=owner,
                )
            )
    assert outcomes == [True, False]
    assert get(runtime, Job, job_id).owner == "a"


def test_held_by_none_matches_only_unowned_rows_and_several_states_may_be_expected(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime, state="sending")
    owned = add_dispatch(runtime, job_id, state="sending", owner="a")
    free = add_dispatch(runtime, job_id, state="sending", owner=None)
    expected = (DispatchState.PENDING, DispatchState.SENDING)
    with runtime.session() as session, session.begin():
        assert not transition(session, Dispatch, owned, expected, DispatchState.DEAD, held_by=None)
        assert transition(session, Dispatch, free, expected, DispatchState.DEAD, held_by=None)
    assert get(runtime, Dispatch, owned).state == "sending"
    assert get(runtime, Dispatch, free).state == "dead"


def test_a_transition_the_state_machine_does_not_have_is_refused(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime, state="done")
    with runtime.session() as session, session.begin():
        with pytest.raises(ValueError, match="from 'done' to 'queued'"):
            transition(session, Job, job_id, JobState.DONE, JobState.QUEUED, held_by=ANY_OWNER)
        with pytest.raises(TypeError, match="is not a JobState"):
            transition(
                session, Job, job_id, DispatchState.SENT, DispatchState.PENDING, held_by=ANY_OWNER
            )
        with pytest.raises(ValueError, match="'state' is set by `new`"):
            transition(
                session,
                Job,
                job_id,
                JobState.QUEUED,
                JobState.RUNNING,
                held_by=ANY_OWNER,
                state="done",
            )
    assert get(runtime, Job, job_id).state == "done"
