"""Queues and tenants, pure logic: declared queues and per-queue limits in settings, the
submit-time checks of a job spec, ``include=`` and the cap on metric label values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskflow import metrics
from taskflow.api.controllers.tasks import include_param
from taskflow.api.errors import ApiError
from taskflow.api.quotas import Quotas
from taskflow.api.schemas import JobSpec
from taskflow.config import ConfigError, load_settings, settings_from_dict
from taskflow.models import NewJob


def test_only_the_default_queue_is_declared_by_default():
    settings = load_settings()
    assert settings.queues == ("default",)
    assert settings.limits_for("default").max_active == 0
    assert settings.metrics.max_label_values == 100


def test_queue_limits_override_the_tenant_defaults_per_queue(monkeypatch):
    monkeypatch.setenv("TASKFLOW_QUEUES", '["default", "Emails"]')
    monkeypatch.setenv("TASKFLOW_TENANT_LIMITS__MAX_ACTIVE", "100")
    monkeypatch.setenv("TASKFLOW_QUEUE_LIMITS__Emails__MAX_PRIORITY", "5")
    settings = load_settings()
    assert settings.queues == ("default", "Emails")  # queue names keep their case
    assert settings.limits_for("Emails").max_priority == 5
    assert settings.limits_for("Emails").max_active == 100
    assert settings.limits_for("default").max_priority == 1000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"queue_limits": {"emails": {"max_active": 3}}},
         "'queue_limits.emails': not a declared queue"),
        ({"worker": {"queues": ["default", "emails"]}},
         "'worker.queues': 'emails' is not a declared queue"),
        ({"queues": []}, "'queues': Expected `array` of length >= 1"),
        ({"queues": ["a b"]}, "'queues[0]'"),
        ({"tenant_limits": {"max_priority": 2000}}, "'tenant_limits.max_priority'"),
        ({"metrics": {"max_label_values": 0}}, "'metrics.max_label_values'"),
    ],
)
def test_bad_queue_settings_are_refused_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings_from_dict(data)


def _quotas(**limits) -> Quotas:
    settings = settings_from_dict({
        "queues": ["default", "shared"], "queue_limits": {"shared": limits},
        "task_policies": {"slow": {"timeout": 30.0}, "slower": {"timeout": 300.0}},
    })
    return Quotas(settings, store=None)  # type: ignore[arg-type]


def _refused(quotas: Quotas, field: str, **spec) -> None:
    with pytest.raises(ApiError) as caught:
        quotas.check_spec(JobSpec(task="noop", **spec), "tasks[2].")
    assert caught.value.status == 422 and caught.value.field == f"tasks[2].{field}"


def test_a_spec_must_name_a_declared_queue_and_keep_to_its_limits():
    quotas = _quotas(max_priority=10, max_delay=3600, max_timeout=60)
    _refused(quotas, "queue", queue="emails")
    _refused(quotas, "priority", queue="shared", priority=11)
    _refused(quotas, "delay", queue="shared", delay=3601)
    _refused(quotas, "run_at", queue="shared",
             run_at=datetime.now(UTC) + timedelta(hours=2))
    _refused(quotas, "timeout", queue="shared", timeout=61)
    assert quotas.check_spec(JobSpec(task="noop", queue="shared", priority=10, delay=3600,
                                     timeout=5)) == 5
    # Unbounded elsewhere.
    assert quotas.check_spec(JobSpec(task="noop", priority=1000, delay=86_400)) is None


def test_a_job_without_a_timeout_gets_the_queues_bound_or_its_tasks_shorter_one():
    quotas = _quotas(max_timeout=60)
    assert quotas.check_spec(JobSpec(task="noop", queue="shared")) == 60
    assert quotas.check_spec(JobSpec(task="slow", queue="shared")) == 30
    assert quotas.check_spec(JobSpec(task="slower", queue="shared")) == 60


async def test_a_request_larger_than_the_active_limit_is_refused_before_counting():
    quotas = _quotas(max_active=2)  # no store: it must not be asked
    jobs = [NewJob(task="noop", max_attempts=1, queue="shared", tenant="a")] * 3
    with pytest.raises(ApiError) as caught:
        await quotas.check_active(jobs)
    assert caught.value.status == 422 and caught.value.field == "queue"
    await quotas.check_active([NewJob(task="noop", max_attempts=1, tenant="a")] * 3)


def test_include_names_payload_and_result_only():
    assert include_param(None) == frozenset()
    assert include_param("payload,result") == {"payload", "result"}
    assert include_param("result") == {"result"}
    for bad in ("", "payload,", "attempts", "payload, result"):
        with pytest.raises(ApiError) as caught:
            include_param(bad)
        assert caught.value.status == 422 and caught.value.field == "include"


def test_label_cap_admits_the_first_values_and_counts_the_rest_as_other(monkeypatch):
    cap = metrics.LabelCap(2)
    monkeypatch.setattr(metrics, "LABEL_CAP", cap)
    registry = metrics.Registry()
    counter = metrics.Counter("t_started", "x", ["queue", "task", "outcome"],
                              registry=registry)
    gauge = metrics.Gauge("t_depth", "x", ["queue", "set"], registry=registry)
    for i in range(10):
        counter.labels(f"q{i}", f"t{i}", "succeeded").inc()
        counter.labels(queue=f"q{i}", task="t0", outcome="failed").inc()
        gauge.labels(f"q{i}", "ready").set(i)
    text = registry.render()
    queues = {line.split('queue="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("t_started_total")}
    assert queues == {"q0", "q1", "other"}
    assert 't_started_total{outcome="succeeded",queue="other",task="other"} 8.0' in text
    assert 't_started_total{outcome="failed",queue="other",task="t0"} 8.0' in text
    assert 't_depth{queue="q1",set="ready"} 1.0' in text
    assert cap("queue", "q0") == "q0"  # admitted values stay admitted


def test_every_metric_with_a_queue_or_task_label_is_capped():
    # Every family is a taskflow.metrics one (whose labels() caps queue and task), and
    # no prometheus-client metric carries a client-chosen label.
    from prometheus_client import REGISTRY as client_registry

    labelled = [f for f in metrics.REGISTRY.families
                if metrics.CAPPED_LABELS & set(f.labelnames)]
    assert len(labelled) >= 8
    assert all(any(f._capped) for f in labelled)
    for family in client_registry.collect():
        for sample in family.samples:
            assert not metrics.CAPPED_LABELS & set(sample.labels), sample
