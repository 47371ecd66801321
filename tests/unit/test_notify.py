"""Pure logic of notifications: signatures (checked with the Standard Webhooks reference
library), backoff decisions, Retry-After, the email text, settings and the notify schema."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from taskflow.adapters.outbox import Delivery, new_secret
from taskflow.api.notify_schemas import RedriveSpec, SubscriptionSpec
from taskflow.api.schemas import JobSpec
from taskflow.config import ConfigError, NotifyRetry, load_settings, settings_from_dict
from taskflow.notifier.backoff import (
    MAX_RETRY_AFTER, Attempted, decide, parse_retry_after, retry_delay,
)
from taskflow.notifier.email import compose
from taskflow.notifier.webhook import message_id, sign, webhook_body

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def delivery(**fields) -> Delivery:
    body = msgspec.json.encode({
        "id": "01a2-job", "task": "charge", "queue": "billing", "state": "failed",
        "attempts": 3, "max_attempts": 3, "error": "card declined", "tenant": "acme",
        "created_at": "2026-11-30T11:00:00Z", "finished_at": "2026-11-30T11:59:00Z",
        "workflow_id": None}).decode()
    base = dict(id=7, message_id=uuid.UUID(int=7), event="job.failed", tenant="acme",
                job_id=uuid.UUID(int=1), workflow_id=None, channel="webhook",
                target="https://hooks.example/x", subscription_id=None, body=body,
                attempts=1, created_at=NOW, secret=None, subscribed=True)
    return Delivery(**{**base, **fields})


def test_signature_verifies_with_the_reference_library():
    secret = new_secret()
    item = delivery()
    body = webhook_body(item)
    stamp = int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": message_id(item), "webhook-timestamp": str(stamp),
               "webhook-signature": sign(secret, message_id(item), stamp, body)}
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "job.failed"
    assert payload["timestamp"] == "2026-11-30T12:00:00Z"
    assert payload["data"]["error"] == "card declined"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"declined", b"accepted"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_message_id_is_stable_per_row():
    assert message_id(delivery(attempts=1)) == message_id(delivery(attempts=5))
    assert message_id(delivery()) != message_id(delivery(message_id=uuid.UUID(int=8)))


def test_retry_delay_grows_exponentially_up_to_the_cap():
    policy = NotifyRetry(base_delay=5, factor=2, max_delay=60, jitter=0)
    assert [retry_delay(n, policy) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_retry_delay_jitter_stays_within_bounds():
    policy = NotifyRetry(base_delay=10, factor=2, max_delay=600, jitter=0.2)
    rng = random.Random(1)
    delays = [retry_delay(1, policy, rng) for _ in range(500)]
    assert min(delays) >= 8 and max(delays) <= 12
    assert len({round(d, 3) for d in delays}) > 100  # spread, not one value


def test_decisions():
    policy = NotifyRetry(base_delay=1, factor=2, max_delay=100, jitter=0)
    assert decide(Attempted.delivered(), 1, 3, policy).outcome == "delivered"
    assert decide(Attempted.give_up("HTTP 404"), 1, 3, policy).outcome == "failed"
    retried = decide(Attempted.retry("HTTP 500"), 2, 3, policy)
    assert (retried.outcome, retried.delay) == ("retried", 2.0)
    assert decide(Attempted.retry("HTTP 500"), 3, 3, policy).outcome == "failed"
    forever = decide(Attempted.retry("broker down"), 10_000, None, policy)
    assert (forever.outcome, forever.delay) == ("retried", 100)
    honoured = decide(Attempted.retry("HTTP 429", retry_after=42), 1, 3, policy)
    assert honoured.delay == 42
    capped = decide(Attempted.retry("HTTP 503", retry_after=10**9), 1, 3, policy)
    assert capped.delay == MAX_RETRY_AFTER
    shorter = decide(Attempted.retry("HTTP 503", retry_after=0), 3, 5, policy)
    assert shorter.delay == 4  # the backoff still applies


def test_retry_after_forms():
    assert parse_retry_after("120") == 120
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("\u00b2") is None  # a digit float() refuses
    when = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(when, now=NOW) == 90
    past = (NOW - timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(past, now=NOW) == 0


def test_email_names_the_job_and_links_to_it():
    msg = compose(delivery(channel="email", target="a@example.com,b@example.com"),
                  "taskflow@example.com", "https://taskflow.example/")
    text = msg.get_content()
    assert msg["To"] == "a@example.com, b@example.com"
    assert msg["Subject"] == "[taskflow] job.failed: charge 01a2-job"
    assert msg["Message-ID"] == f"<{uuid.UUID(int=7)}@taskflow>"
    for words in ("Job 01a2-job ended failed", "Task:     charge", "Queue:    billing",
                  "Attempts: 3 of 3", "Error:    card declined",
                  "Details: https://taskflow.example/tasks/01a2-job"):
        assert words in text


@pytest.mark.parametrize(("data", "message"), [
    ({"notify": {"webhook_secret": "plain"}}, "notify.webhook_secret"),
    ({"notify": {"smtp": {"tls": True, "starttls": True}}}, "notify.smtp.starttls"),
    ({"notify": {"max_attempts": 0}}, "'notify.max_attempts'"),
    ({"notify": {"retry": {"factor": 0.5}}}, "'notify.retry.factor'"),
    ({"dlq": {"backend": "sqs"}}, "'dlq.backend'"),
    ({"dlq": {"kafka": {"topic": "bad topic"}}}, "'dlq.kafka.topic'"),
])
def test_bad_notify_settings_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data)
    assert message in str(info.value)


def test_dlq_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("TASKFLOW_DLQ__BACKEND", "kafka")
    monkeypatch.setenv("TASKFLOW_DLQ__KAFKA__BOOTSTRAP_SERVERS", "10.0.0.5:9092")
    monkeypatch.setenv("TASKFLOW_DLQ__KAFKA__TOPIC", "ops.dead")
    monkeypatch.setenv("TASKFLOW_DLQ__RABBITMQ__QUEUE", "ops.dead.q")
    monkeypatch.setenv("TASKFLOW_NOTIFY__SMTP__FROM", "jobs@example.com")
    settings = load_settings()
    assert settings.dlq.backend == "kafka"
    assert settings.dlq.kafka.bootstrap_servers == "10.0.0.5:9092"
    assert settings.dlq.kafka.topic == "ops.dead"
    assert settings.dlq.rabbitmq.queue == "ops.dead.q"
    assert settings.notify.smtp.sender == "jobs@example.com"
    monkeypatch.delenv("TASKFLOW_DLQ__BACKEND")
    defaults = load_settings()
    assert defaults.dlq.backend == "none" and defaults.notify.metrics_port == 9102
    assert defaults.notify.retry.base_delay >= 1


def test_notify_spec_defaults_and_rules():
    spec = msgspec.json.decode(b'{"task": "t", "notify": {"email": ["a@b.example"]}}',
                               type=JobSpec)
    assert spec.notify is not None and spec.notify.on == ["failed"]
    for bad in (b'{"task": "t", "notify": {}}',
                b'{"task": "t", "notify": {"email": ["a@b.example"], "on": ["lost"]}}',
                b'{"task": "t", "notify": {"webhook": "javascript:alert(1)"}}'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=JobSpec)


def test_subscription_and_redrive_bodies_are_one_thing_or_the_other():
    with pytest.raises(msgspec.ValidationError, match="either `webhook`"):
        msgspec.convert({"events": ["job.failed"]}, SubscriptionSpec)
    with pytest.raises(msgspec.ValidationError, match="either `ids` or `filter`"):
        msgspec.convert({"dry_run": True}, RedriveSpec)
    ok = msgspec.convert({"filter": {"task": "charge"}}, RedriveSpec)
    assert ok.limit == 1000 and not ok.dry_run
