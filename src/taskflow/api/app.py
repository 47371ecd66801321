"""Builds the Litestar app of ``taskflow serve``: routes, auth, errors, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from taskflow import __version__
from taskflow import metrics as job_metrics
from taskflow.api.auth import JwtAuthMiddleware, TokenVerifier, resolve_jwt_secret
from taskflow.api.context import ApiContext
from taskflow.api.controllers.health import HealthController
from taskflow.api.controllers.notifications import (
    DeadLetterController, JobNotificationController, SubscriptionController,
)
from taskflow.api.controllers.queues import QueueController
from taskflow.api.controllers.tasks import TaskController
from taskflow.api.controllers.workflows import WorkflowController
from taskflow.api.errors import EXCEPTION_HANDLERS, ApiError, invalid_body
from taskflow.api.metrics import ApiMetrics
from taskflow.api.openapi import use_msgspec_schemas
from taskflow.api.submit import KnownTasks, Submitter
from taskflow.config import Settings
from taskflow.console import console_routes
from taskflow.runtime import Stores
from taskflow.supervise import cancel_and_wait, supervised
from taskflow.worker.builtins import builtin_registry
from taskflow.worker.registry import Registry, default_registry, import_handler_modules


class StrictRequest(Request[Any, Any, Any]):
    """Decodes a JSON body straight into the handler's ``data`` type, strictly.

    Litestar's own path decodes to Python objects and then converts them leniently ("5"
    would pass as 5); here a wrong type is an error naming the field, and the body is
    decoded once.
    """

    __slots__ = ()

    async def json(self) -> Any:
        field = self.route_handler.parsed_fn_signature.parameters.get("data")
        if field is None:
            return await super().json()
        try:
            return msgspec.json.decode(await self.body(), type=field.annotation)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise invalid_body(exc) from None
        except RecursionError:  # ~1,000 levels of arrays and objects
            raise ApiError(400, "request body is not usable JSON: its arrays and objects "
                           "nest too deeply") from None


def known_tasks(settings: Settings) -> KnownTasks:
    """Built-ins, the handlers of ``worker.handler_modules`` and ``api.known_tasks``."""
    import_handler_modules(settings.worker.handler_modules)
    builtins, _ = builtin_registry(settings.outbound)  # its client opens no connection
    registry: Registry = builtins.merged(default_registry)
    return KnownTasks(registry, settings.api.known_tasks,
                      reject_unknown=settings.api.unknown_tasks == "reject")


def create_app(settings: Settings, stores: Stores, *, debug: bool = False,
               merged_metrics: Callable[[], Awaitable[bytes]] | None = None) -> Litestar:
    """The API over ``stores`` (opened and closed by the caller). ``merged_metrics``: where
    ``/metrics`` comes from in one of several API processes (their sum; see
    :mod:`taskflow.processes`), instead of this process's own page."""
    verifier = TokenVerifier(settings.auth, resolve_jwt_secret(settings),
                             settings.api.token_cache_size)
    metrics = ApiMetrics(merged_metrics)
    for queue in settings.queues:
        job_metrics.JOBS_SUBMITTED.labels(queue)  # 0 from the start (see worker.Worker)
    known = known_tasks(settings)
    submitter = Submitter(settings, stores, known)
    api = ApiContext(settings, stores, submitter, verifier, metrics)

    listening: list[asyncio.Task[None]] = []

    async def start() -> None:
        listening.append(asyncio.create_task(supervised("change feed", api.feed.run)))

    async def close() -> None:
        await cancel_and_wait(*listening)
        await submitter.close()
        await verifier.close()

    app = Litestar(
        route_handlers=[TaskController, WorkflowController, HealthController,
                        DeadLetterController, SubscriptionController,
                        JobNotificationController, QueueController, *console_routes()],
        state=State({"api": api}),
        request_class=StrictRequest,
        middleware=[
            metrics.middleware,
            # The console's files (and / that redirects to them) hold no data: the
            # console calls the API with the user's token like any client.
            DefineMiddleware(JwtAuthMiddleware, verifier=verifier,
                             exclude=["^/schema", "^/ui(/|$)", "^/$"]),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=settings.api.max_body_bytes,
        on_startup=[start],
        on_shutdown=[close],
        openapi_config=OpenAPIConfig(
            title="taskflow",
            version=__version__,
            description="Submit, inspect, cancel and retry jobs; list and redrive dead "
                        "letters; subscribe to job events. Errors are RFC 9457 problem "
                        "details. Authenticate with a bearer JWT (scopes tasks:read, "
                        "tasks:write, subscriptions:write, admin).",
            components=Components(security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}),
            security=[{"bearer": []}],
            path="/schema",
        ),
        logging_config=None,  # the CLI configured logging already
        debug=debug,
    )
    use_msgspec_schemas(app, known.names if known.reject_unknown else None, settings.queues,
                        settings.api.max_wait)
    return app

