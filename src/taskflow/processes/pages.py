"""The metrics pages of a supervisor's processes.

Each child serves its own page on a unix socket in the supervisor's private folder (no
port to pick or to collide, nothing reachable from outside the pod). At each scrape the
supervisor fetches them all and serves their sum with its own page (:mod:`.merge`): the
role keeps its one metrics port. A child that does not answer in time counts with the
page it last gave; a child that exited leaves its counts behind (:meth:`PageCollector.retire`),
so the sum never goes down when a child is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from taskflow.ops_http import Render
from taskflow.processes import merge

log = logging.getLogger(__name__)


def socket_path(folder: str | Path, slot: int) -> str:
    """Where the child in ``slot`` serves its page."""
    return os.path.join(folder, f"{slot}.sock")


def merged_socket_path(folder: str | Path) -> str:
    """Where the supervisor serves the merged page to its children (``serve --workers``:
    the child that gets a scrape on the API port answers with the whole pod's page)."""
    return os.path.join(folder, "merged.sock")


@contextlib.asynccontextmanager
async def serve_page(path: str, render: Render) -> AsyncIterator[None]:
    """Serve ``GET /metrics`` (what ``render`` returns) on the unix socket ``path``."""
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=await render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.UnixSite(runner, path).start()
        yield
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # aiohttp leaves the socket file behind


async def fetch_page(path: str, timeout: float) -> bytes:
    """The page served on the unix socket ``path``."""
    connector = aiohttp.UnixConnector(path=path)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get("http://localhost/metrics") as resp:
            resp.raise_for_status()
            return await resp.read()


class PageCollector:
    """The sum of the supervisor's own page and its ``slots`` children's pages."""

    def __init__(self, folder: str | Path, slots: int, own: Callable[[], bytes],
                 timeout: float = 2.0) -> None:
        self.folder = folder
        self.slots = slots
        self.own = own
        self.timeout = timeout
        self.latest: dict[int, merge.Page] = {}
        self.retired: merge.Page = {}
        # Bumped when a slot's child exits: a fetch begun before must not store the old
        # child's page after its counts were retired (they would count twice).
        self._generation = [0] * slots

    def retire(self, slot: int) -> None:
        """The child in ``slot`` exited: keep its counts, drop its gauges."""
        self._generation[slot] += 1
        page = self.latest.pop(slot, None)
        if page is not None:
            self.retired = merge.merge([self.retired, merge.cumulative(page)])

    async def _fetch(self, slot: int) -> None:
        generation = self._generation[slot]
        try:
            text = await fetch_page(socket_path(self.folder, slot), self.timeout)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            # Starting, restarting or too busy to answer: its last page stands in.
            log.debug("no metrics from process %d (%r)", slot, exc)
            return
        page = await asyncio.to_thread(merge.parse, text.decode())
        if generation == self._generation[slot]:
            self.latest[slot] = page

    async def page(self) -> bytes:
        """Fetch every child's page, then the merged page."""
        await asyncio.gather(*(self._fetch(slot) for slot in range(self.slots)))
        children = [self.latest[s] for s in sorted(self.latest)]
        return await asyncio.to_thread(self._merged, children, self.retired)

    def _merged(self, children: list[merge.Page], retired: merge.Page) -> bytes:
        own = merge.parse(self.own().decode())
        return merge.render(merge.merge([own, retired, *children])).encode()
