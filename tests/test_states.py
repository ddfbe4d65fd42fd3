"""The closed value sets of the queue and their transition tables."""

from __future__ import annotations

import pytest

from dicom_node.states import (
    DISPATCH_TRANSITIONS,
    FINAL_JOB_STATES,
    JOB_ACTIONS,
    JOB_TRANSITIONS,
    Action,
    DispatchState,
    JobState,
    check_transition,
)


def test_the_values_are_the_strings_stored_in_the_database() -> None:
    assert [s.value for s in JobState] == [
        "queued",
        "running",
        "sending",
        "done",
        "failed",
        "dead_lettered",
    ]
    assert [s.value for s in DispatchState] == ["pending", "sending", "sent", "dead"]
    assert [a.value for a in Action] == ["forward", "enhance", "ignore", "reject"]
    assert JobState.DEAD_LETTERED == "dead_lettered" and str(JobState.QUEUED) == "queued"
    assert JobState("running") is JobState.RUNNING
    by_action: dict[str, int] = {Action.FORWARD: 1}
    assert by_action["forward"] == 1  # a str key finds its member


def test_final_states_and_job_actions() -> None:
    assert {JobState.DONE, JobState.FAILED, JobState.DEAD_LETTERED} == FINAL_JOB_STATES
    assert [s for s in JobState if s.is_final] == [
        JobState.DONE,
        JobState.FAILED,
        JobState.DEAD_LETTERED,
    ]
    assert {Action.FORWARD, Action.ENHANCE} == JOB_ACTIONS


def test_every_state_has_a_transition_entry() -> None:
    assert set(JOB_TRANSITIONS) == set(JobState)
    assert set(DISPATCH_TRANSITIONS) == set(DispatchState)
    assert JOB_TRANSITIONS[JobState.DONE] == frozenset()  # nothing leaves done
    for state in FINAL_JOB_STATES - {JobState.DONE}:  # only `jobs retry` leaves them
        assert JOB_TRANSITIONS[state] == {JobState.QUEUED, JobState.SENDING}


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.RUNNING, JobState.QUEUED),
        (JobState.RUNNING, JobState.DEAD_LETTERED),
        (JobState.SENDING, JobState.DONE),
        (JobState.FAILED, JobState.QUEUED),
        (DispatchState.PENDING, DispatchState.SENDING),
        (DispatchState.SENDING, DispatchState.DEAD),
        (DispatchState.DEAD, DispatchState.PENDING),
    ],
)
def test_allowed_transitions_pass(
    current: JobState | DispatchState, new: JobState | DispatchState
) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (JobState.DONE, JobState.QUEUED),
        (JobState.QUEUED, JobState.DONE),
        (JobState.SENDING, JobState.RUNNING),
        (DispatchState.SENT, DispatchState.DEAD),
        (DispatchState.PENDING, DispatchState.SENT),
    ],
)
def test_other_transitions_are_refused(
    current: JobState | DispatchState, new: JobState | DispatchState
) -> None:
    with pytest.raises(ValueError, match=f"from '{current.value}' to '{new.value}'"):
        check_transition(current, new)


def test_states_of_different_machines_do_not_mix() -> None:
    with pytest.raises(TypeError, match="JobState 'sending' to DispatchState 'sent'"):
        check_transition(JobState.SENDING, DispatchState.SENT)
