import re
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
    # back in line, or back to waiting for upstream jobs
    assert TRANSITIONS[state] == {JobState.QUEUED, JobState.BLOCKED}


def test_succeeded_is_final():
    assert TRANSITIONS[JobState.SUCCEEDED] == frozenset()


def test_only_dispatchable_or_released_jobs_start_running():
    # blocked -> running: the flush that releases a job may start it for its worker.
    starters = {s for s, targets in TRANSITIONS.items() if JobState.RUNNING in targets}
    assert starters == DISPATCHABLE | {JobState.BLOCKED}


def test_every_non_terminal_state_can_be_cancelled():
    for state in ACTIVE:
        assert can_transition(state, JobState.CANCELLED)


def test_check_transition_names_both_states():
    with pytest.raises(InvalidTransition, match="a succeeded job cannot become running"):
        check_transition(JobState.SUCCEEDED, JobState.RUNNING)


# The guarded statements must follow the table. Sources and targets are read from the SQL
# itself: the states its WHERE guard accepts, and every state its SET state may write.
_STATE = "|".join(s.value for s in JobState)
_SET = re.compile(r"(?:SET|,)\s+state = (.*?)(?:,\s*$|\n\s*\w+ = )", re.S | re.M)
_GUARD = re.compile(r"WHERE [^;]*?\bj?\.?state (?:= '(\w+)'|IN \(([^)]*)\))", re.S)


def _states(text: str) -> set[JobState]:
    return {JobState(m) for m in re.findall(rf"'({_STATE})'", text)}


def _sql(name: str) -> str:
    if name == "finish_jobs":
        assert "taskflow_finish_jobs" in QUERIES[name]
        return FINISH_FUNCTION.partition("RETURN QUERY")[0]
    return QUERIES[name]


@pytest.mark.parametrize("query", [
    "start_jobs", "finish_jobs", "hand_back_jobs", "rescue_jobs", "unstart_jobs",
    "cancel_waiting_job",
    "request_running_job_cancel", "retry_job",
    # not here: cancel_workflow_jobs, whose CASE leaves running jobs running (flagged)
    # and cancels waiting ones; its integration test covers it.
])
def test_guarded_queries_follow_the_transition_table(query):
    sql = _sql(query)
    guard = _GUARD.search(sql)
    assert guard, f"{query} has no state guard"
    sources = _states(guard.group(0))
    assert sources, query
    set_clause = _SET.search(sql)
    targets = _states(set_clause.group(1)) if set_clause else set()
    if query == "finish_jobs":  # the target comes in as a parameter; these are what it sends
        targets |= {JobState.SUCCEEDED, JobState.FAILED, JobState.SCHEDULED, JobState.QUEUED}
    if JobState.RUNNING in sources and targets:
        assert "lease_token = " in sql, f"{query} ends running attempts without fencing"
    for source in sources:
        for target in targets - {source}:
            assert can_transition(source, target), f"{query}: {source.value} -> {target.value}"


def test_the_guard_reader_sees_what_it_claims():
    # start_jobs: queued|scheduled -> running
    sql = QUERIES["start_jobs"]
    assert _states(_GUARD.search(sql).group(0)) == {JobState.QUEUED, JobState.SCHEDULED}
    assert _states(_SET.search(sql).group(1)) == {JobState.RUNNING}
    assert _states(_SET.search(QUERIES["rescue_jobs"]).group(1)) == {
        JobState.CANCELLED, JobState.FAILED, JobState.QUEUED}
