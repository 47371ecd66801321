"""Named, supervised background duties: one that dies is logged and restarted; and
stopping tasks so that they do stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def supervised(
    name: str,
    duty: Callable[[], Awaitable[None]],
    *,
    min_backoff: float = 0.1,
    max_backoff: float = 10.0,
) -> None:
    """Run ``duty()`` until cancelled, restarting it with capped backoff when it raises
    (or returns: a duty is meant to run forever)."""
    backoff = min_backoff
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        try:
            await duty()
            log.warning("%s returned; restarting", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A library turned our cancellation into an error of its own (a client
                # interrupted mid-command): we were asked to stop, so stop.
                raise asyncio.CancelledError() from None
            log.exception("%s failed; restarting in %.1fs", name, backoff)
        if loop.time() - began > max_backoff:
            backoff = min_backoff  # it ran well for a while: this is a new failure
        await asyncio.sleep(backoff)
        backoff = min(max_backoff, backoff * 2)


async def every(interval: float, step: Callable[[], Awaitable[object]]) -> None:
    """Call ``step()`` every ``interval`` seconds (for use under :func:`supervised`)."""
    while True:
        await step()
        await asyncio.sleep(interval)


# How long a cancelled task gets to end before it is cancelled again.
RECANCEL_AFTER = 0.5


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any still
    running after :data:`RECANCEL_AFTER` seconds.

    A cancellation can be lost: on Python 3.11 ``asyncio.wait_for`` returns the result of
    an awaitable that completed in the same loop iteration as the cancel, dropping the
    cancel (fixed in 3.12), and redis-py sends every command through it when a socket
    timeout is set. The task then goes on as if never asked to stop, e.g. into a pub/sub
    read that waits for ever. A task still running a while later is asked again, as
    AnyIO's cancel scopes do; cleanup code a task runs when cancelled must end within
    that while or be shielded."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
        for task in pending:
            log.debug("%r still running after its cancellation: cancelling it again", task)
            task.cancel()
    # Retrieved, so an error they ended with is not reported as never retrieved.
    await asyncio.gather(*tasks, return_exceptions=True)
