"""The HTTP paths each role really serves, read from the code (for the chart's probes)."""

from __future__ import annotations


def api_paths() -> set[str]:
    from litestar.handlers import HTTPRouteHandler

    from taskflow.api.controllers.health import HealthController

    handlers = [h for h in vars(HealthController).values() if isinstance(h, HTTPRouteHandler)]
    return {path for h in handlers for path in h.paths}


def worker_paths() -> set[str]:
    from taskflow.ops_http import PATHS

    return set(PATHS)
