"""Every error the API answers is a problem-details document (RFC 9457) with a message
naming the field and the rule; nothing a client sends yields a 500."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import asyncpg
import msgspec
import redis.exceptions
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from taskflow.api.schemas import Problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 500: "Internal Server Error",
    503: "Service Unavailable",
}


class ApiError(Exception):
    """An error answered as problem details."""

    def __init__(
        self, status: int, detail: str, *, field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.headers = headers or {}

    def problem(self) -> Problem:
        return Problem(_TITLES.get(self.status, "Error"), self.status, self.detail,
                       field=self.field)


class Unavailable(ApiError):
    """PostgreSQL, Redis or a key server cannot be reached."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, detail, headers={"Retry-After": "1"})


_AT = re.compile(r"^(.*) - at (`key` in )?`\$(.*)`$", re.DOTALL)


def invalid_body(exc: msgspec.ValidationError | msgspec.DecodeError) -> ApiError:
    """A 400 (not JSON) or 422 (JSON that breaks a rule) naming the field, from msgspec's
    message ("Expected `int` <= 1000 - at `$.priority`")."""
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        match = _AT.match(text)
        if match:
            rule, path = match.group(1), match.group(3).lstrip(".") or "(body)"
            if match.group(2):
                rule = f"a key: {rule}"
            return ApiError(422, f"{path}: {rule}", field=path)
        return ApiError(422, text)
    return ApiError(400, f"request body is not valid JSON: {text}")


# Failures that mean a store is unreachable or overloaded, not that the request was wrong.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def _response(problem: Problem, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        content=msgspec.json.encode(problem), status_code=problem.status,
        media_type=PROBLEM_JSON, headers=headers,
    )


def on_api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return _response(exc.problem(), exc.headers)


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's own errors (no route, wrong method, bad query parameter, body too
    large) in the same shape."""
    status = exc.status_code
    detail = exc.detail or _TITLES.get(status, "Error")
    field = None
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        parts = []
        for item in exc.extra:
            if isinstance(item, dict):
                key = item.get("key")
                field = field or key
                parts.append(f"{key}: {item.get('message')}" if key else str(item.get("message")))
        detail = "; ".join(parts) or detail
    if status == 413:
        detail = "request body exceeds the configured limit (api.max_body_bytes)"
    return _response(Problem(_TITLES.get(status, "Error"), status, detail, field=field),
                     exc.headers)


# Transient conflicts between concurrent transactions: the request may simply be repeated.
CONFLICT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, asyncpg.DataError):
        # A value PostgreSQL cannot store (a NUL character, say) that the request checks
        # did not catch: the client's input, so a 4xx, not a 500.
        return _response(Problem("Unprocessable Content", 422,
                                 f"a value in the request cannot be stored: {exc}"))
    if isinstance(exc, CONFLICT_ERRORS):
        log.warning("%s %s: transaction conflict: %r", request.method, request.url.path, exc)
        return _response(Problem("Service Unavailable", 503,
                                 "the request collided with a concurrent one; repeat it"),
                         {"Retry-After": "0"})
    if isinstance(exc, BACKEND_ERRORS):
        log.warning("%s %s: backend unavailable: %r", request.method, request.url.path, exc)
        return _response(
            Problem("Service Unavailable", 503,
                    f"a backing store is unavailable ({type(exc).__name__}); retry later"),
            {"Retry-After": "1"},
        )
    log.exception("%s %s failed", request.method, request.url.path)
    return _response(Problem("Internal Server Error", 500, "internal error; see the logs"))


EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}
