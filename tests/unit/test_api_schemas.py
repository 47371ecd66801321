"""The submit body's rules as decoding enforces them, and the paging cursor."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from taskflow.api.controllers.tasks import decode_cursor, encode_cursor
from taskflow.api.errors import ApiError, invalid_body
from taskflow.api.schemas import JobSpec
from taskflow.ids import uuid7


def decode(body: bytes) -> JobSpec:
    return msgspec.json.decode(body, type=JobSpec)


def test_defaults():
    spec = decode(b'{"task": "noop"}')
    assert (spec.payload, spec.queue, spec.priority, spec.labels) == ({}, "default", 0, {})


@pytest.mark.parametrize("body,field", [
    (b'{"task": "noop", "priority": 1001}', "priority"),
    (b'{"task": "noop", "priority": true}', "priority"),
    (b'{"task": "noop", "labels": {"bad key": "v"}}', "labels"),
    (b'{"task": "noop", "run_at": "2030-01-01T00:00:00"}', "run_at"),
    (b'{"task": "noop", "backoff": {"jitter": 2}}', "backoff.jitter"),
])
def test_rule_violations_name_the_field(body, field):
    with pytest.raises(msgspec.ValidationError) as info:
        decode(body)
    error = invalid_body(info.value)
    assert error.status == 422 and error.field == field and error.detail.startswith(field)


def test_delay_and_run_at_are_exclusive():
    with pytest.raises(msgspec.ValidationError, match="exclusive"):
        decode(b'{"task": "noop", "delay": 1, "run_at": "2030-01-01T00:00:00Z"}')


def test_malformed_json_is_400():
    with pytest.raises(msgspec.DecodeError) as info:
        decode(b'{"task": ')
    assert invalid_body(info.value).status == 400


def test_cursor_round_trip_and_garbage():
    job_id = uuid7()
    assert decode_cursor(encode_cursor(job_id)) == job_id
    for bad in ("!!", "abc", encode_cursor(uuid.uuid4())[:-3]):
        with pytest.raises(ApiError):
            decode_cursor(bad)
