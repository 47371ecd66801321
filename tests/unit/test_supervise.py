import asyncio

import pytest

from taskflow.supervise import supervised


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
    done, _ = await asyncio.wait({task}, timeout=2)
    if task not in done:  # clean up before failing
        task.cancel()
        await asyncio.wait({task})
    assert task in done, "the duty swallowed its cancellation and kept running"
    assert task.cancelled() and converted == 1
