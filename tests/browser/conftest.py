"""The console in a real browser: Debian's Chromium driven by Playwright, against
``taskflow serve`` and ``taskflow work`` as processes over real PostgreSQL and Redis.

They run with ``make test-browser`` (RUN_BROWSER_TESTS=1), not in ``make test``. Without
a Chromium at /usr/bin/chromium (or CHROMIUM) or without the playwright package, they
skip saying which is missing. Screenshots go to test-results/browser/ (BROWSER_OUTPUT).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskflow.api.scopes import ADMIN, READ, WRITE
from tests.e2e.api_stack import Isolated, start_api, stop, token
from tests.e2e.conftest import http, tenant  # noqa: F401 (the same fixtures here)
from tests.e2e.processes import Role

if not os.environ.get("RUN_BROWSER_TESTS"):
    collect_ignore_glob = ["test_*.py"]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(os.environ.get("BROWSER_OUTPUT",
                             Path(__file__).resolve().parents[2] / "test-results" / "browser"))
QUEUES = '["default", "parked"]'  # the worker serves default only: parked jobs stay ready


class Stack:
    """A live API and worker; ``token(tenant, ...)`` mints tokens it accepts."""

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url = url
        self.env = env

    @staticmethod
    def token(name: str, *scopes: str) -> str:
        return token(name, scopes or (READ, WRITE))

    @staticmethod
    def admin() -> str:
        return token("ops", [ADMIN])


@pytest.fixture(scope="session")
def chromium() -> str:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; or set CHROMIUM)")
    if shutil.which("playwright") is None:
        try:
            import playwright  # noqa: F401
        except ImportError:
            pytest.skip("the playwright package is not installed (make test-browser installs it)")
    return CHROMIUM


@pytest.fixture(scope="module")
async def live(servers) -> AsyncIterator[Stack]:
    # mkdtemp, not tmp_path: concurrent pytest sessions prune /tmp/pytest-of-<user>.
    folder = Path(tempfile.mkdtemp(prefix="taskflow-browser-"))
    iso = Isolated(servers, folder)
    await iso.create()
    env = {"TASKFLOW_JWT_SECRET": "e2e-secret-" + "x" * 32,
           "TASKFLOW_AUTH__ISSUER": "https://issuer.test", "TASKFLOW_AUTH__AUDIENCE": "taskflow-e2e",
           "TASKFLOW_REDIS_PREFIX": iso.prefix, "TASKFLOW_QUEUES": QUEUES,
           "TASKFLOW_API__EVENTS_HEARTBEAT": "1"}
    api, url = await start_api(iso, folder / "api.log", **env)
    worker = Role(iso, ["work", "-q", "default", "--concurrency", "8"], folder / "worker.log",
                  **env)
    try:
        yield Stack(url, env)
    finally:
        stop(api, worker)
        await iso.drop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
async def browser(chromium: str):
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        engine = await p.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield engine
        finally:
            await engine.close()


@pytest.fixture
def shots(request) -> Path:
    """This test's screenshot folder."""
    folder = OUTPUT / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
