import asyncio

import pytest

from taskflow.supervise import cancel_and_wait, supervised
from tests.helpers import ends_within


async def test_a_failing_duty_is_restarted():
    runs = 0

    async def duty():
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervised("duty", duty, min_backoff=0.001))
    while runs < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancellation_turned_into_an_error_by_a_library_still_stops_the_duty():
    started = asyncio.Event()
    converted = 0

    async def duty():
        nonlocal converted
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if converted:
                raise
            converted += 1
            raise ConnectionError("connection interrupted") from None  # as some clients do

    task = asyncio.create_task(supervised("duty", duty, min_backoff=0.001))
    await started.wait()
    task.cancel()
    assert await ends_within(task, 2), "the duty swallowed its cancellation and kept running"
    assert task.cancelled() and converted == 1


async def test_a_cancellation_lost_inside_a_duty_is_delivered_again():
    # What Python 3.11's asyncio.wait_for does when the awaitable it wraps completes in
    # the loop iteration of the cancel: the cancel is dropped and the task goes on.
    started = asyncio.Event()
    cancels = 0

    async def duty():
        nonlocal cancels
        started.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # lost
                raise

    task = asyncio.create_task(supervised("duty", duty))
    await started.wait()
    stopping = asyncio.create_task(cancel_and_wait(task))
    assert await ends_within(stopping, 5, task), (
        "the duty kept running after its lost cancellation")
    assert task.cancelled() and cancels == 2


async def test_a_task_that_ends_when_cancelled_is_cancelled_once():
    cancels = 0
    cleaned = asyncio.Event()

    async def duty():
        nonlocal cancels
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancels += 1
            await asyncio.sleep(0.05)  # a short cleanup is not cut short
            cleaned.set()
            raise

    tasks = [asyncio.create_task(duty()) for _ in range(3)]
    await asyncio.sleep(0)
    await cancel_and_wait(*tasks, asyncio.create_task(asyncio.sleep(0)))
    assert cancels == 3 and cleaned.is_set()
    assert all(t.cancelled() for t in tasks)
