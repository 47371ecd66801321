"""Bad input to ``taskflow serve``: every case is a 4xx problem document naming the
field and the rule, never a 500, and nothing is created."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.api_stack import Client

pytestmark = pytest.mark.slow

BAD_SUBMITS = [
    # (body, status, field, words in the detail)
    (b'{"task": "noop"', 400, None, "not valid JSON"),
    (b"", 400, None, "request body is missing or not valid JSON"),
    (b'["noop"]', 422, None, "Expected `object`, got `array`"),
    (b'{"payload": {}}', 422, "task", "missing required field `task`"),
    (b'{"task": 7}', 422, "task", "Expected `str`, got `int`"),
    (b'{"task": "noop", "priority": "5"}', 422, "priority", "Expected `int`, got `str`"),
    (b'{"task": "noop", "priority": 1001}', 422, "priority", "<= 1000"),
    (b'{"task": "noop", "priority": -1001}', 422, "priority", ">= -1000"),
    (b'{"task": "noop", "max_attempts": 0}', 422, "max_attempts", ">= 1"),
    (b'{"task": "noop", "delay": -1}', 422, "delay", ">= 0"),
    (b'{"task": "noop", "timeout": 0}', 422, "timeout", "> 0"),
    (b'{"task": "noop", "queue": "no spaces"}', 422, "queue", "matching regex"),
    (b'{"task": "noop", "colour": "red"}', 422, "colour", "unknown field `colour`"),
    (b'{"task": "noop", "backoff": {"factor": 0.5}}', 422, "backoff.factor", ">= 1"),
    (b'{"task": "noop", "backoff": {"retries": 2}}', 422, "backoff.retries", "unknown field"),
    (b'{"task": "noop", "labels": {"k": 1}}', 422, "labels[...]", "Expected `str`"),
    (b'{"task": "noop", "run_at": "tomorrow"}', 422, "run_at", "Invalid RFC3339"),
    (b'{"task": "noop", "run_at": "2030-01-01T00:00:00"}', 422, "run_at", "timezone"),
    # PostgreSQL's -infinity to asyncpg, and year 0 in UTC: neither is a due time.
    (b'{"task": "noop", "run_at": "0001-01-01T00:00:00Z"}', 422, "run_at", "not before 1970"),
    (b'{"task": "noop", "run_at": "0001-01-01T00:00:00+01:00"}', 422, "run_at",
     "not before 1970"),
    (b'{"task": "noop", "delay": 5, "run_at": "2030-01-01T00:00:00Z"}', 422, None,
     "`delay` and `run_at` are exclusive"),
    (b'{"task": "no-such-task"}', 422, "task", "no worker knows the task 'no-such-task'"),
    (b'{"task": "sleep", "payload": {"seconds": "long"}}', 422, "payload.seconds",
     "Expected `float`, got `str`"),
    (b'{"task": "sleep", "payload": {}}', 422, "payload.seconds",
     "missing required field `seconds`"),
    (b'{"task": "sleep", "payload": {"seconds": 1, "x": 2}}', 422, "payload.x",
     "unknown field `x`"),
    (b'{"task": "noop", "payload": {"blob": "' + b"x" * 5000 + b'"}}', 413, "payload",
     "api.max_payload_bytes"),
    # Too deep to be read back (Python's recursion limit), or to be decoded at all.
    (b'{"task": "noop", "payload": ' + b"[" * 101 + b"]" * 101 + b"}", 422, "payload",
     "nested more than 100 levels"),
    (b'{"task": "noop", "payload": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400, None,
     "nest too deeply"),
    # PostgreSQL cannot store NUL: a clear 422, not a 500 (and not for anyone else)
    (b'{"task": "noop", "payload": {"a": "x\\u0000y"}}', 422, "payload", "NUL character"),
    (b'{"task": "noop", "labels": {"k": "x\\u0000"}}', 422, "labels.k", "NUL character"),
    (b'{"task": "noop", "idempotency_key": "\\u0000"}', 422, "idempotency_key", "NUL"),
    (b'{"task": "noop", "notify": {"email": ["a\\u0000@example.com"]}}', 422,
     "notify.email[0]", "matching regex"),
    (b'{"task": "noop", "notify": {"webhook": "http://example.com/\\u0000"}}', 422,
     "notify.webhook", "matching regex"),
]


@pytest.mark.parametrize("body,status,field,words", BAD_SUBMITS,
                         ids=[c[3][:30] for c in BAD_SUBMITS])
async def test_bad_submit_is_a_4xx_naming_the_problem(client: Client, body, status, field,
                                                       words):
    reply = await client.post("/tasks", data=body,
                              headers={"Content-Type": "application/json"})
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.body["status"] == status and reply.body["title"]
    assert words in reply.body["detail"], reply.body
    if field is not None:
        assert reply.body.get("field") == field, reply.body
    assert (await client.get("/tasks")).body["items"] == []


async def test_body_over_the_limit_is_413(client: Client):
    specs = [{"task": "noop", "payload": {"pad": "x" * 3000}} for _ in range(700)]
    reply = await client.post("/tasks/batch", json={"tasks": specs})  # ~2.1 MB > 2 MB
    assert reply.status == 413, reply
    assert "api.max_body_bytes" in reply.body["detail"]


async def test_batch_errors_name_the_job_and_field(client: Client):
    for body, field in [({"tasks": [{"task": "noop"}, {"payload": {}}]}, "tasks[1].task"),
                        ({"tasks": [{"task": "noop", "colour": 1}]}, "tasks[0].colour"),
                        ({"tasks": [{"task": "sleep", "payload": {"seconds": "x"}}]},
                         "tasks[0].payload.seconds"),
                        ({"tasks": [{"task": "noop"}], "extra": 1}, "extra")]:
        reply = await client.post("/tasks/batch", json=body)
        assert reply.status == 422 and reply.body["field"] == field, (body, reply)


async def test_batch_limits(client: Client):
    empty = await client.post("/tasks/batch", json={"tasks": []})
    assert empty.status == 422 and empty.body["field"] == "tasks"
    huge = await client.post("/tasks/batch", json={"tasks": [{"task": "noop"}] * 5001})
    assert huge.status == 422 and "length <= 5000" in huge.body["detail"]
    bad = await client.post("/tasks/batch", json={"tasks": [{"task": "noop"}, {"task": "zzz"}]})
    assert bad.status == 422 and bad.body["field"] == "tasks[1].task"


@pytest.mark.parametrize("params,field,words", [
    ({"limit": "0"}, "limit", ">= 1"),
    ({"limit": "-5"}, "limit", ">= 1"),
    ({"limit": "1001"}, "limit", "<= 1000"),
    ({"limit": "ten"}, "limit", "Expected `int`"),
    ({"state": "sleeping"}, "state", "'sleeping'"),
    ([("state", "queued"), ("state", "bogus")], "state", "'bogus'"),
    ({"cursor": "!!!"}, "cursor", "next_cursor"),
    ({"cursor": "x" * 65}, "cursor", "length <= 64"),
    ({"queue": "q" * 129}, "queue", "length <= 128"),
    ({"task": "t" * 201}, "task", "length <= 200"),
    ({"label": "no-equals-sign"}, "label", "key=value"),
    ({"created_after": "yesterday"}, "created_after", "RFC 3339"),
    ({"created_before": "2030-01-01T00:00:00"}, "created_before", "RFC 3339"),
])
async def test_bad_list_parameters_are_422_naming_the_parameter(client: Client, params,
                                                                field, words):
    """The same rule as a body's: a parameter that breaks a rule is a 422 whose field is
    the parameter's name as the client wrote it."""
    reply = await client.get("/tasks", params=params)
    assert reply.status == 422, reply
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.body["field"] == field, reply.body
    assert reply.body["detail"].startswith(f"{field}: ") and words in reply.body["detail"]


async def test_unknown_routes_ids_and_methods_are_problem_documents(client: Client):
    for method, path, status in [("GET", "/tasks/not-a-uuid", 404),
                                 ("GET", f"/tasks/{uuid.uuid4()}", 404),
                                 ("GET", "/nowhere", 404), ("DELETE", "/tasks", 405)]:
        reply = await client.call(method, path)
        assert reply.status == status, (method, path, reply)
        assert reply.headers["content-type"] == "application/problem+json"


async def test_nul_in_a_list_filter_is_a_4xx(client: Client):
    reply = await client.get("/tasks?queue=a%00b")
    assert reply.status == 422, reply
    assert "NUL character" in reply.body["detail"], reply.body
    assert "$" not in reply.body["detail"]  # not asyncpg's dump of the arguments
    reply = await client.get("/tasks?created_after=9999-12-31T23:59:59-01:00")
    assert reply.status == 422, reply
    assert "outside what PostgreSQL can store" in reply.body["detail"], reply.body
