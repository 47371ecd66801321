"""The chaos suite: a mixed workload (retries, delays, workflows, jobs that fail for good)
on two ``taskflow work`` processes, and submits through ``taskflow serve``, while workers
are SIGKILLed and restarted, Redis is flushed and restarted and PostgreSQL is restarted,
all on servers of the run's own. One run per module; each invariant is its own test,
checked from PostgreSQL (and Redis for leases) once every job has finished.

The faults are seeded (CHAOS_SEED, printed); CHAOS_SECONDS sets how long they go on.
Longer runs with 100,000 jobs: ``make soak``.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.run import ChaosConfig, Report, run_chaos

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("CHAOS_SEED", "20261130"))
SECONDS = float(os.environ.get("CHAOS_SECONDS", "40"))


@pytest.fixture(scope="module")
async def chaos(request, tmp_path_factory) -> Report:
    logs = tmp_path_factory.mktemp("chaos-logs")
    report = await run_chaos(ChaosConfig(
        seed=SEED, seconds=SECONDS, jobs=1200, concurrency=8, workflows=4,
        recovery_timeout=25.0, drain_timeout=40.0, log_dir=logs))
    # The figures belong in every run's output, not only a failing one's.
    text = f"\n{report.summary()}\n  worker logs and the full report: {logs}"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(text, flush=True)
    else:
        with capture.global_and_fixture_disabled():
            print(text, flush=True)
    return report


def _held(report: Report, invariant: str) -> None:
    violations = report.failed(invariant)
    assert not violations, (f"chaos seed {report.seed} (CHAOS_SEED={report.seed} repeats "
                            f"it): {invariant} violated:\n" + "\n".join(violations)
                            + f"\n\nthe run:\n{report.summary()}")


def test_every_job_submitted_is_in_postgres(chaos):
    _held(chaos, "jobs_exist")


def test_nothing_is_left_running_or_waiting(chaos):
    _held(chaos, "nothing_unfinished")


def test_jobs_due_while_postgres_restarts_still_run(chaos):
    _held(chaos, "nothing_lost_to_postgres_restarts")


def test_every_job_ends_as_designed(chaos):
    """Jobs meant to succeed succeeded, jobs meant to fail failed, and the dependents of
    a workflow node that failed for good were cancelled without running."""
    _held(chaos, "expected_states")


def test_no_job_succeeds_twice(chaos):
    _held(chaos, "one_success_per_job")


def test_no_attempt_without_its_job(chaos):
    _held(chaos, "no_orphan_attempts")


def test_dependents_run_after_their_upstreams_succeed(chaos):
    _held(chaos, "dag_order")


def test_no_lease_is_left_behind_in_redis(chaos):
    _held(chaos, "no_lease_left")


def test_only_killed_workers_lose_attempts(chaos):
    """A Redis flush or restart charges no attempt: an attempt ends ``lost`` only when
    the worker running it was SIGKILLed (or a PostgreSQL restart came, below)."""
    _held(chaos, "lost_only_to_kills")


def test_a_postgres_restart_charges_no_attempt(chaos):
    """Nor does a PostgreSQL restart: a worker that cannot tell whether its jobs were
    started must not have them charged an attempt they never ran."""
    _held(chaos, "no_attempt_lost_to_postgres_restarts")


def test_workers_survive_every_fault(chaos):
    _held(chaos, "workers_stay_up")


def test_the_system_recovers_from_every_fault(chaos):
    _held(chaos, "every_fault_recovers")


def test_the_api_takes_submits_through_the_faults_without_duplicates(chaos):
    """A client repeating refused submits with their idempotency keys ends up with one job
    per key (test_every_job_submitted_is_in_postgres counts them), and the API takes
    submits again once the faults are over."""
    _held(chaos, "api_takes_submits")


def test_the_api_answers_503_while_a_store_is_down(chaos):
    """A submit that meets PostgreSQL or Redis down is a 503 the client may repeat, never
    a 500."""
    _held(chaos, "api_answers_503_not_500")
