import uuid

import pytest

from taskflow.adapters.sql import parse_queries
from taskflow.config import OutboundSettings
from taskflow.ids import uuid7
from taskflow.outbound import AddressGuard, BlockedDestination
from taskflow.worker.runner import _describe


def test_uuid7_is_version_7_and_time_ordered():
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids == sorted(ids, key=str)  # text order too (Redis ties, paging)


def test_named_queries_parse_and_reject_duplicates():
    text = "-- name: a\nSELECT 1;\n\n-- name: b\n-- comment\nSELECT 2;\n"
    assert parse_queries(text) == {"a": "SELECT 1;", "b": "-- comment\nSELECT 2;"}
    with pytest.raises(ValueError, match="'a' is defined twice"):
        parse_queries(text + "-- name: a\nSELECT 3;")


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1",
    "::ffff:127.0.0.1", "0.0.0.0", "fc00::1",
    # IPv6 forms that carry an internal IPv4 address
    "64:ff9b::10.0.0.5", "64:ff9b::127.0.0.1", "::127.0.0.1", "2002:0a00:0005::1",
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
])
def test_outbound_refuses_internal_addresses_by_default(address):
    guard = AddressGuard(OutboundSettings())
    assert not guard.permits(address)
    with pytest.raises(BlockedDestination, match="outbound.allowed_networks"):
        guard.check("example", [address])


def test_outbound_allows_public_and_operator_allowed_networks():
    guard = AddressGuard(OutboundSettings(allowed_networks=("10.0.0.0/8",)))
    assert guard.permits("93.184.216.34")
    assert guard.permits("64:ff9b::93.184.216.34")  # NAT64 of a public address
    assert guard.permits("2606:4700::1111")
    assert guard.permits("10.9.9.9")
    assert not guard.permits("127.0.0.1")
    assert AddressGuard(OutboundSettings(allow_private=True)).permits("127.0.0.1")


def test_a_scheduled_due_time_is_rounded_up_and_a_queued_one_down():
    from datetime import datetime, timezone

    from taskflow.models import DispatchEntry
    from taskflow.states import JobState

    at = datetime(2030, 1, 1, 0, 0, 0, 894_801, tzinfo=timezone.utc)
    later = DispatchEntry(uuid7(), "q", 0, at, JobState.SCHEDULED)
    assert later.due_ms / 1000 >= at.timestamp()  # never claimed before its run_at
    assert later.due_ms - at.timestamp() * 1000 < 1
    ready = DispatchEntry(uuid7(), "q", 0, at, JobState.QUEUED)
    assert ready.due_ms / 1000 <= at.timestamp()  # due already: ready at once
    # PostgreSQL's -infinity and infinity, as asyncpg reads them back (naive): at once,
    # and after every real time; .timestamp() raised for both.
    assert DispatchEntry(uuid7(), "q", 0, datetime.min, JobState.QUEUED).due_ms == 0
    last = DispatchEntry(uuid7(), "q", 0, datetime.max, JobState.SCHEDULED).due_ms
    assert last > DispatchEntry(uuid7(), "q", 0, datetime(9999, 12, 31, 23, 59, 59,
                                                          tzinfo=timezone.utc),
                                JobState.SCHEDULED).due_ms


def _deep(n: int) -> None:
    if n == 0:
        raise ValueError("no more \x00 depth")
    _deep(n - 1)


def test_an_error_names_the_exception_and_the_last_five_frames_with_their_source():
    try:
        _deep(8)
    except ValueError as exc:
        text = _describe(exc)
    first, *frames = text.splitlines()
    assert first == "ValueError: no more \\x00 depth"  # PostgreSQL text holds no NUL
    assert len(frames) == 10  # five frames, each with its source line
    assert all(f.startswith(f'  File "{__file__}", line ') for f in frames[::2])
    assert frames[-2].endswith(", in _deep")
    assert frames[-1] == '    raise ValueError("no more \\x00 depth")'


async def test_log_context_names_the_job_of_its_own_task_only():
    import asyncio

    from taskflow import logs

    logs.bind(worker="w1", tenant="from-the-request")

    async def job(job_id: str, tenant: str) -> dict:
        logs.bind_job(job_id, "noop", "default", 1, tenant)
        await asyncio.sleep(0)  # the other job's task binds meanwhile
        return logs.context()

    first, second = await asyncio.gather(job("j1", "t1"), job("j2", "t2"))
    assert list(first.items()) == [("job_id", "j1"), ("task", "noop"), ("queue", "default"),
                                   ("attempt", 1), ("worker", "w1"), ("tenant", "t1")]
    assert second["job_id"] == "j2" and second["tenant"] == "t2"
    assert logs.context() == {"worker": "w1", "tenant": "from-the-request"}
