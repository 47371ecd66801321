"""Named, supervised background duties: one that dies is logged and restarted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

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
