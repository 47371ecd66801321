"""The queue figures of ``GET /queues``, made from store rows without I/O."""

from datetime import UTC, datetime, timedelta

from taskflow.adapters.observe import LiveWorker
from taskflow.adapters.overview import Backlog, Finished, Running
from taskflow.api.ended import Hour
from taskflow.api.overview import overview

NOW = datetime(2030, 1, 1, 12, 30, 40, tzinfo=UTC)
MINUTE = datetime(2030, 1, 1, 12, 30, tzinfo=UTC)


def test_declared_queues_first_then_others_with_a_window_of_whole_minutes():
    backlog = [Backlog("zeta", 1, 0, 0, NOW - timedelta(seconds=5), 1),
               Backlog("default", 2, 3, 5, NOW - timedelta(seconds=90), 10)]
    finished = [Finished("default", MINUTE, "succeeded", 7),
                Finished("default", MINUTE - timedelta(minutes=2), "failed", 2),
                Finished("default", MINUTE - timedelta(minutes=40), "failed", 1),
                Finished("alpha", MINUTE, "cancelled", 1)]
    out = overview(["default", "empty"], backlog, Hour(finished, complete=False),
                   [LiveWorker("w2", ("default",)), LiveWorker("w1", ("default", "zeta"))],
                   Running({"default": 4, "busy": 1}, {"w1": 3}), NOW, 3, scan_limit=100)
    assert [q.name for q in out.queues] == ["default", "empty", "alpha", "busy", "zeta"]
    default = out.queues[0]
    assert (default.ready, default.scheduled, default.running, default.blocked) == (2, 3, 4, 5)
    assert default.oldest_ready_age == 90.0
    assert default.failed_last_hour == 3  # the whole hour, not only the window
    assert [m.minute for m in default.throughput] == [
        MINUTE - timedelta(minutes=2), MINUTE - timedelta(minutes=1), MINUTE]
    assert [(m.succeeded, m.failed) for m in default.throughput] == [(0, 2), (0, 0), (7, 0)]
    empty = out.queues[1]
    assert (empty.ready, empty.oldest_ready_age, empty.failed_last_hour) == (0, None, 0)
    assert [(w.name, w.running) for w in out.workers] == [("w1", 3), ("w2", 0)]
    assert (out.complete, out.hour_complete) == (True, False)


def test_a_backlog_counted_beyond_the_scan_limit_is_not_complete():
    """The store reads one job more than the limit: exactly the limit is a full count."""
    def complete(counted: int) -> bool:
        backlog = [Backlog("default", 60, 0, 0, None, 60),
                   Backlog("b", counted - 60, 0, 0, None, counted - 60)]
        return overview(["default"], backlog, Hour([], True), [], Running({}, {}), NOW, 1,
                        scan_limit=100).complete

    assert (complete(99), complete(100), complete(101)) == (True, True, False)


def test_a_workflow_list_entry_has_the_state_its_full_view_would_have():
    from taskflow.api.controllers.workflows import state_of_counts, workflow_state
    from taskflow.states import JobState as S

    cases = [[S.RUNNING, S.SUCCEEDED], [S.SUCCEEDED, S.SUCCEEDED], [S.FAILED, S.CANCELLED],
             [S.CANCELLED, S.SUCCEEDED], [S.BLOCKED], [S.FAILED, S.SUCCEEDED]]
    for states in cases:
        counts = (len(states), sum(s not in (S.SUCCEEDED, S.FAILED, S.CANCELLED) for s in states),
                  states.count(S.SUCCEEDED), states.count(S.FAILED))
        assert state_of_counts(*counts) is workflow_state(states), states
    assert [workflow_state(c).value for c in cases] == [
        "running", "succeeded", "failed", "cancelled", "running", "failed"]
