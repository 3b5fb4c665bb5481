"""The task state machine is a table; the checks follow it."""

from __future__ import annotations

import itertools

import pytest

from hal9999.errors import TaskStateError
from hal9999.tasks.state import ACTIVE, FINAL, TRANSITIONS, TaskStatus, check_transition


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(TaskStatus)


def test_happy_path() -> None:
    path = ["queued", "provisioning", "preparing", "running", "collecting", "succeeded"]
    for a, b in itertools.pairwise(path):
        assert check_transition(a, b) == TaskStatus(b)


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_any_active_state_can_be_stopped_cancelled_or_interrupted(state: str) -> None:
    for target in ("stopped", "cancelled", "interrupted", "failed"):
        check_transition(state, target)


@pytest.mark.parametrize("state", sorted(FINAL))
def test_final_states_only_resume(state: str) -> None:
    assert TRANSITIONS[TaskStatus(state)] == {TaskStatus.QUEUED}
    with pytest.raises(TaskStateError, match="cannot become running"):
        check_transition(state, "running")
