from pathlib import Path

import pytest

from taskflow.adapters.sql import QUERIES
from taskflow.states import (
    ACTIVE, DISPATCHABLE, TERMINAL, TRANSITIONS, WAITING, InvalidTransition, JobState,
    can_transition, check_transition,
)

MIGRATIONS = Path(__file__).parents[2] / "migrations"
MIGRATION = (MIGRATIONS / "0001_jobs.sql").read_text()
# finish_jobs calls this function; its guards are in the function body.
FINISH_FUNCTION = (MIGRATIONS / "0002_dag.sql").read_text().partition(
    "CREATE FUNCTION taskflow_finish_jobs")[2]


def test_every_state_has_a_row_and_groups_partition_the_states():
    assert set(TRANSITIONS) == set(JobState)
    assert ACTIVE | TERMINAL == set(JobState) and not ACTIVE & TERMINAL
    assert DISPATCHABLE <= WAITING <= ACTIVE


def test_the_database_enum_lists_the_same_states():
    for state in JobState:
        assert f"'{state.value}'" in MIGRATION


@pytest.mark.parametrize("state", sorted(TERMINAL - {JobState.SUCCEEDED}))
def test_failed_and_cancelled_jobs_can_only_be_retried(state):
    assert TRANSITIONS[state] == {JobState.QUEUED}


def test_succeeded_is_final():
    assert TRANSITIONS[JobState.SUCCEEDED] == frozenset()


def test_only_dispatchable_jobs_start_running():
    starters = {s for s, targets in TRANSITIONS.items() if JobState.RUNNING in targets}
    assert starters == DISPATCHABLE


def test_every_non_terminal_state_can_be_cancelled():
    for state in ACTIVE:
        assert can_transition(state, JobState.CANCELLED)


def test_check_transition_names_both_states():
    with pytest.raises(InvalidTransition, match="a succeeded job cannot become running"):
        check_transition(JobState.SUCCEEDED, JobState.RUNNING)


# The guarded statements must follow the table: each names the states it leaves.
@pytest.mark.parametrize(
    ("query", "source", "targets"),
    [
        ("start_jobs", {JobState.QUEUED, JobState.SCHEDULED}, {JobState.RUNNING}),
        ("finish_jobs", {JobState.RUNNING},
         {JobState.SUCCEEDED, JobState.FAILED, JobState.SCHEDULED, JobState.QUEUED,
          JobState.CANCELLED}),
        ("hand_back_jobs", {JobState.RUNNING}, {JobState.QUEUED}),
        ("rescue_jobs", {JobState.RUNNING}, {JobState.QUEUED, JobState.FAILED}),
    ],
)
def test_guarded_queries_follow_the_transition_table(query, source, targets):
    sql = QUERIES[query]
    if query == "finish_jobs":
        assert "taskflow_finish_jobs" in sql
        sql = FINISH_FUNCTION
    if source == {JobState.RUNNING}:
        assert "j.state = 'running'" in sql and "lease_token = " in sql
    else:
        assert "j.state IN ('queued', 'scheduled')" in sql
    for s in source:
        for t in targets:
            assert can_transition(s, t), f"{query}: {s.value} -> {t.value}"
